"""vared finetune: the FLOPs ratio moves to the target, Ctrl-C then --resume is exact, DDP ranks agree."""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

from finetune_helpers import CLIP, converted_tiny, ddp_worker, tiny_dataset
from vared_convert.arch import ArchSpec, build_model
from vared_convert.checkpoint import load_model, save_model
from vared_convert.convert import convert
from vared_convert.errors import VaredError
from vared_convert.train.finetune import finetune
from vared_convert.train.state import load_training_state


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    data = tiny_dataset(root / "data", train_per_class=3, val_per_class=1)
    model = converted_tiny(root / "tiny_vared.pth")
    return root, data, model


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_flops_ratio_moves_toward_the_target(setup, tmp_path):
    _, data, model = setup
    result = finetune(model, dict(CLIP, data=str(data), epochs=4, target_flops=0.45, lr=2e-2, flops_weight=20,
                                  run_dir=str(tmp_path / "run")))
    train = [m for m in _metrics(result.run_dir) if m["kind"] == "train"]
    val = [m for m in _metrics(result.run_dir) if m["kind"] == "val"]
    first, last = sum(m["flops_ratio"] for m in train[:3]) / 3, sum(m["flops_ratio"] for m in train[-3:]) / 3
    assert first > 0.6 and last < first - 0.1, (first, last)
    assert abs(val[-1]["flops_ratio"] - 0.45) < abs(val[0]["flops_ratio"] - 0.45) or val[-1]["flops_ratio"] < 0.55
    for name in ("config.yaml", "metrics.jsonl", "last.pth", "best.pth", "final.pth"):
        assert (result.run_dir / name).exists(), name
    final = load_model(result.out)  # ready for profile / export: a plain vared model file
    assert final.vared_info.class_names == sorted(final.vared_info.class_names) and len(final.vared_info.class_names) == 8
    assert {"top1", "top1_full", "flops_ratio", "class_option_counts"} <= set(val[-1])


def test_ctrl_c_saves_and_resume_is_exact(setup, tmp_path):
    _, data, model = setup
    opts = dict(CLIP, data=str(data), epochs=2, target_flops=0.5, lr=1e-2, warmup_epochs=0)
    reference = finetune(model, dict(opts, run_dir=str(tmp_path / "reference")))
    steps_per_epoch = load_training_state(reference.run_dir / "last.pth")["step"] // 2

    def ctrl_c_at_step_3(kind, data):
        if kind in ("step", "tick") and data["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered mid-epoch

    interrupted = finetune(model, dict(opts, run_dir=str(tmp_path / "run")), on_event=ctrl_c_at_step_3)
    assert interrupted.interrupted and interrupted.out is None
    state = load_training_state(tmp_path / "run" / "last.pth")
    assert state["step"] == 3 and 0 < state["step_in_epoch"] < steps_per_epoch
    resumed = finetune(model, {}, resume=tmp_path / "run" / "last.pth")
    assert not resumed.interrupted and resumed.out is not None
    expected, got = reference.model.state_dict(), resumed.model.state_dict()
    assert set(expected) == set(got)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_end_with_identical_weights(setup, tmp_path):
    _, data, model = setup
    mp.spawn(ddp_worker, args=(2, _free_port(), str(model), str(data), str(tmp_path / "run"), str(tmp_path)),
             nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    changed = False
    start = load_model(model).state_dict()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        changed |= not torch.equal(rank0[key], start[key])
    assert changed, "training changed nothing"
    assert (tmp_path / "run" / "final.pth").exists()  # rank 0 saved


def test_cli_under_torchrun_and_ctrl_c(setup, run_vared, tmp_path):
    _, data, model = setup
    common = ["--data", data, "--frames", "4", "--stride", "2", "--size", "28", "--batch-size", "4",
              "--workers", "1", "--target-flops", "0.5", "--device", "cpu"]
    proc = run_vared("finetune", model, *common, "--epochs", "1", "--run-dir", tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(os.path.dirname(__file__)), OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port()), "-m", "vared_convert", "finetune", str(model), *map(str, common), "--epochs", "1",
                "--run-dir", str(tmp_path / "torchrun")]
    done = subprocess.run(torchrun, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "torchrun" / "final.pth").exists()
    assert done.stdout.count("epoch 1: val top-1") == 1  # only rank 0 prints

    cmd = [sys.executable, "-m", "vared_convert", "finetune", str(model), *map(str, common), "--epochs", "50",
           "--run-dir", str(tmp_path / "sigint"), "--log-every", "1"]
    run = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "sigint" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.1)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 130, err
    assert "--resume" in err and (tmp_path / "sigint" / "last.pth").exists()  # the one line on stderr


def test_bad_inputs(setup, tmp_path):
    root, data, model = setup
    plain = tmp_path / "plain.pth"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(VaredError, match="not a"):
        finetune(plain, dict(CLIP, data=str(data)))
    with pytest.raises(VaredError, match="at or below the cheapest"):
        finetune(model, dict(CLIP, data=str(data), target_flops=0.05, run_dir=str(tmp_path / "a")))
    with pytest.raises(VaredError, match="--data"):
        finetune(model, dict(CLIP))
    with pytest.raises(VaredError, match="target-flops"):
        finetune(model, dict(CLIP, data=str(data), target_flops=1.5))
    with pytest.raises(VaredError, match="unknown finetune option"):
        finetune(model, dict(CLIP, data=str(data), learning_rate=1.0))
    other = converted_tiny(tmp_path / "five.pth")
    raw = torch.load(other, weights_only=True)
    raw["class_names"] = ["a", "b", "c", "d", "e", "f", "g", "h"]
    torch.save(raw, other)
    with pytest.raises(VaredError, match="checker"):  # the data has classes the model does not know
        finetune(other, dict(CLIP, data=str(data), run_dir=str(tmp_path / "b")))
    finetune(model, dict(CLIP, data=str(data), epochs=1, max_steps=1, run_dir=str(tmp_path / "c")))
    with pytest.raises(VaredError, match="already holds a run"):
        finetune(model, dict(CLIP, data=str(data), run_dir=str(tmp_path / "c")))


def test_batch_one_trains_and_each_video_is_decided_alone(setup, tmp_path):
    """Per-GPU batch 1 is common for big clips: the gates' normalisation uses running statistics only, so training
    works at batch 1 and a video's decision never depends on the other videos in its batch."""
    from vared_convert.nn import adaptive_layers

    _, data, model = setup
    result = finetune(model, dict(CLIP, data=str(data), batch_size=1, epochs=1, max_steps=3,
                                  run_dir=str(tmp_path / "b1")))
    assert result.run_dir.joinpath("last.pth").exists()
    trained = load_model(model)
    for _, layer in adaptive_layers(trained):
        torch.nn.init.normal_(layer.gate.fc2.weight)  # gates that actually discriminate
    trained.train()
    gate = adaptive_layers(trained)[0][1].gate
    clips = torch.randn(4, gate.in_channels, CLIP["frames"], 8, 8)
    twin = copy.deepcopy(gate)  # the same state: a training call updates the running estimates afterwards
    alone = gate(clips[:1])
    in_batch = twin(clips)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)


def test_divergence_keeps_a_finite_resumable_checkpoint(setup, tmp_path):
    _, data, model = setup
    run = tmp_path / "div"
    with pytest.raises(VaredError, match="stopped") as caught:
        finetune(model, dict(CLIP, data=str(data), epochs=6, lr=1e12, train="all", backbone_lr_scale=1.0,
                             run_dir=str(run)))
    message = str(caught.value)
    if (run / "last.pth").exists():
        assert str(run / "last.pth") in message and "resume it with a lower --lr" in message
        state = load_training_state(run / "last.pth")
        assert all(torch.isfinite(v).all() for v in state["model"]["state_dict"].values() if v.is_floating_point())
    else:
        assert "no checkpoint was saved" in message and "last.pth" not in message


def test_a_refused_resume_leaves_the_run_untouched(setup, tmp_path):
    _, data, model = setup
    run = tmp_path / "run"
    finetune(model, dict(CLIP, data=str(data), epochs=1, max_steps=1, run_dir=str(run)))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    other = converted_tiny(tmp_path / "other.pth", width=4)
    with pytest.raises(VaredError, match="does not match"):
        finetune(other, dict(CLIP, data=str(data), lr=0.5), resume=run / "last.pth", force=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_static_option_that_runs_no_cheap_op_is_refused_in_one_line(setup, tmp_path):
    """A run (as a residual block or a stage) at a channel option with every frame rebuilds nothing: with every
    gate fixed, `--train gates` would train nothing (and backward would fail on a loss without gradient). The
    refusal comes before any step; a temporal option trains the run's φ_t."""
    _, data, _ = setup
    torch.manual_seed(0)
    spec = ArchSpec("vared:tiny_c3d", 8, {"width": 8})
    result = convert(build_model(spec), (3, CLIP["frames"], CLIP["size"], CLIP["size"]), arch=spec,
                     granularity="stage", skip=["block1"])
    assert [d.kind for d in result.report.converted_blocks] == ["run"] and not result.report.converted
    path = save_model(result.model, tmp_path / "run.pth")
    with pytest.raises(VaredError, match="--static-option 1,0.5: no layer .* nothing to learn"):
        finetune(path, dict(CLIP, data=str(data), static_option="1,0.5", run_dir=str(tmp_path / "a")))
    assert not (tmp_path / "a").exists()
    trained = finetune(path, dict(CLIP, data=str(data), static_option="2,1", epochs=1, max_steps=2,
                                  run_dir=str(tmp_path / "b")))
    assert trained.last is not None and (trained.run_dir / "final.pth").exists()
