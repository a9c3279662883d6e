"""Hostile and broken inputs, every command: each case must end with the right exit code, no traceback, one
`error:` line on stderr naming the problem, nothing created, changed or left behind in the workspace, and no code
run from a file (an attack would create the file PWNED).

The cases run the console script's entry point in this process (tests/cli_checks.py::run_cli); the signal cases,
which need a process to interrupt, run the real `vared` in a subprocess.
"""

from __future__ import annotations

import os
import pickle
import shutil
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_checks import assert_refused, run_cli, snapshot
from finetune_helpers import converted_tiny, tiny_dataset
from videos import write_broken_files
from vared_convert.baseline import tiny_c3d

MARKER = "PWNED"  # what every code-running payload below would create in the workspace


class _RunsCode:
    """Pickles into a call of os.system: loading it with full pickle trust would create the marker."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _vared_payload(model_path: Path, **arch) -> dict:
    raw = torch.load(model_path, weights_only=True)
    raw["arch"] = {"name": "vared:tiny_c3d", "num_classes": 8, "kwargs": {"width": 8}, **arch}
    return raw


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace holding a model, a dataset and one of each broken or hostile file."""
    root = tmp_path_factory.mktemp("hostile")
    marker = root / MARKER
    tiny_dataset(root / "data", train_per_class=1, val_per_class=1)
    for split in ("train", "val"):  # a dataset of 2 of those classes: the model's head scores 8
        for cls in sorted(p.name for p in (root / "data" / split).iterdir() if p.is_dir())[:2]:
            shutil.copytree(root / "data" / split / cls, root / "two_classes" / split / cls)
    model = converted_tiny(root / "model.pth")
    torch.save(tiny_c3d(num_classes=8).state_dict(), root / "plain.pth")  # what --arch vared:tiny_c3d builds
    (root / "garbage.pth").write_bytes(b"\x00\x01 not a checkpoint " * 40)
    (root / "truncated.pth").write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    (root / "empty.pth").write_bytes(b"")
    (root / "folder.pth").mkdir()
    os.symlink(root / "loop_b.pth", root / "loop_a.pth")
    os.symlink(root / "loop_a.pth", root / "loop_b.pth")
    torch.save({"state_dict": tiny_c3d(8, 8).state_dict(), "extra": _RunsCode(f"touch {marker}")},
               root / "pickle_attack.pth")
    with open(root / "raw_pickle_attack.pth", "wb") as fh:  # a bare pickle (no torch zip) that runs code
        pickle.dump(_RunsCode(f"touch {marker}"), fh, protocol=2)
    attacks = {
        "arch_subprocess.pth": dict(name="subprocess:run", kwargs={"args": ["touch", str(marker)]}),
        "arch_os_system.pth": dict(name="os:system", num_classes=None, kwargs={"command": f"touch {marker}"}),
        "arch_builtins.pth": dict(name="builtins:exec", num_classes=None, kwargs={}),
        "arch_traversal.pth": dict(name="torchvision:../../os:system"),
        "arch_download.pth": dict(name="torchvision:r3d_18", kwargs={"weights": "KINETICS400_V1"}),
        "arch_not_text.pth": dict(name=["subprocess", "run"]),
        "arch_user_code.pth": dict(name="models_for_tests:tiny", kwargs={}),
    }
    for name, arch in attacks.items():
        torch.save(_vared_payload(model, **arch), root / name)
    raw = torch.load(model, weights_only=True)
    torch.save({**raw, "format_version": 99}, root / "version99.pth")
    torch.save({**raw, "recipe": {"layers": "oops"}}, root / "bad_recipe.pth")
    torch.save({**raw, "state_dict": [1, 2, 3]}, root / "bad_weights.pth")
    blocks = raw["recipe"]["blocks"]
    torch.save({**raw, "recipe": {**raw["recipe"], "blocks": [{**blocks[0], "owner": "nope.conv"}, *blocks[1:]]}},
               root / "recipe_names_nothing.pth")
    video = next((root / "data" / "val").rglob("*.mp4"))
    for name, lines, encoding in [("latin1_list", ["a.mp4 caf\xe9", "b.mp4 na\xefve"], "latin-1"),
                                  ("negative_label", ["a.mp4 0", "b.mp4 -1"], "utf-8"),
                                  ("escaping_path", ["../../etc/passwd 0", "a.mp4 1"], "utf-8"),
                                  ("label_20", ["a.mp4 0", "b.mp4 20"], "utf-8")]:
        (root / name).mkdir()
        for copy in ("a.mp4", "b.mp4"):
            shutil.copy(video, root / name / copy)
        for split in ("train", "val"):
            (root / name / f"{split}.txt").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    for split in ("train", "val"):  # the same 8 classes, and nothing in it decodes
        for cls in sorted(p.name for p in (root / "data" / "val").iterdir() if p.is_dir()):
            write_broken_files(root / "all_corrupt" / split / cls)
    (root / "latin1_classes.txt").write_bytes("caf\xe9\nna\xefve\n".encode("latin-1"))
    (root / "bad.yaml").write_text("lr: abc\n")
    (root / "not_yaml.yaml").write_text("lr: [1, 2\n")
    (root / "list.yaml").write_text("- 1\n- 2\n")
    (root / "unknown.yaml").write_text("learning_rate: 0.1\n")
    from vared_convert.checkpoint import load_model
    from vared_convert.convert import convert
    from vared_convert.latency import measure_latency_table

    measure_latency_table(load_model(model), repeats=1, warmup=0).save(root / "table.json")  # at the recipe's clip
    other = convert(tiny_c3d(num_classes=8, width=8), (3, 4, 32, 32), granularity="conv").model
    measure_latency_table(other, repeats=1, warmup=0).save(root / "other_table.json")
    (root / "taken.onnx").write_bytes(b"precious")
    (root / "taken.json").write_bytes(b"precious")
    (root / "empty_data").mkdir()
    (root / "precious_folder").mkdir()
    (root / "precious_folder" / "thesis.txt").write_text("do not delete")
    assert not marker.exists()
    return root


def _check(ws: Path, args: tuple, needle: str, code: int = 1) -> None:
    before = snapshot(ws)
    outcome = run_cli(*args, cwd=ws)
    assert_refused(outcome, needle, code)
    assert snapshot(ws) == before, "the workspace changed"
    assert not (ws / MARKER).exists(), "a file ran code"


# ------------------------------------------------------------------------------------------- model files
MODEL_FILES = [
    ("missing.pth", "no such file"),
    ("folder.pth", "is a directory"),
    ("garbage.pth", "not a"),
    ("truncated.pth", "truncated or corrupt"),
    ("empty.pth", "empty file"),
    ("loop_a.pth", "leads nowhere"),
    # the objects are read as inert stand-ins, never run; the error names what the file pickles
    ("pickle_attack.pth", "posix.system"),
    ("raw_pickle_attack.pth", "posix.system"),
    ("arch_subprocess.pth", "user code ('subprocess:run')"),
    ("arch_os_system.pth", "user code ('os:system')"),
    ("arch_builtins.pth", "user code ('builtins:exec')"),
    ("arch_traversal.pth", "user code ('torchvision:../../os:system')"),
    ("arch_download.pth", "failed"),
    ("arch_not_text.pth", "malformed vared model file"),
    ("arch_user_code.pth", "user code ('models_for_tests:tiny')"),
    ("version99.pth", "format version 99"),
    ("bad_recipe.pth", "malformed vared model file"),
    ("bad_weights.pth", "malformed vared model file"),
    ("recipe_names_nothing.pth", "blocks do not fit this architecture: TinyC3D has no attribute `nope`"),
    ("plain.pth", ""),  # a plain checkpoint where a converted model is needed: each command says what to do
]
PLAIN_NEEDLE = {"profile": "--arch", "evaluate": "--arch", "export": "--arch", "finetune": "convert it first"}
MODEL_COMMANDS = {
    "profile": lambda m: ("profile", m),
    "evaluate": lambda m: ("evaluate", m, "--data", "data", "--workers", "0"),
    "export": lambda m: ("export", m, "--onnx", "out.onnx"),
    "finetune": lambda m: ("finetune", m, "--data", "data", "--workers", "0", "--run-dir", "run"),
}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
@pytest.mark.parametrize("file,needle", MODEL_FILES, ids=[f for f, _ in MODEL_FILES])
def test_model_files(ws, command, file, needle):
    if file.endswith("pickle_attack.pth") and command == "finetune":
        needle = ""  # read as a plain checkpoint (its objects as inert stand-ins): finetune says to convert it
    _check(ws, MODEL_COMMANDS[command](file), needle or PLAIN_NEEDLE[command])


CONVERT_FILES = [(f, n) for f, n in MODEL_FILES if f not in ("plain.pth",)]


@pytest.mark.parametrize("file,needle", CONVERT_FILES, ids=[f for f, _ in CONVERT_FILES])
def test_convert_inputs(ws, file, needle):
    # a vared file is refused as input whatever its record holds: the user names the architecture, so nothing in
    # the file can make convert build or run something else
    if file.startswith("arch_") or file in ("version99.pth", "bad_recipe.pth", "bad_weights.pth",
                                            "recipe_names_nothing.pth"):
        needle = "already a converted vared model"
    _check(ws, ("convert", file, "--arch", "vared:tiny_c3d", "--out", "out.pth", "--input-shape", "3,4,32,32"), needle)


ARCH_NAMES = [
    ("torchvision:r4d_18", "unknown torchvision architecture"),
    ("pytorchvideo:nope", "unknown pytorchvideo architecture"),
    ("vared:nope", "unknown vared architecture"),
    ("nosuchpkg.models:net", "cannot import module"),
    ("os:system", "failed"),  # named by the user, so it may be called: it fails cleanly, runs nothing harmful
    ("os:nope", "has no callable"),
    ("os:__dict__", "has no callable"),
    ("justaname", "expected SOURCE:NAME"),
    (":x", "expected SOURCE:NAME"),
    ("models_for_tests:not_a_module", "not an nn.Module"),
    ("a[b]:c", "cannot import module"),
]


@pytest.mark.parametrize("arch,needle", ARCH_NAMES, ids=[a for a, _ in ARCH_NAMES])
def test_convert_arch_names(ws, arch, needle):
    _check(ws, ("convert", "plain.pth", "--arch", arch, "--out", "out.pth", "--input-shape", "3,4,32,32"), needle)


# ------------------------------------------------------------------------------------------- shapes, options, numbers
BAD_ARGUMENTS = [
    # convert
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "3,8"), "C,T,H,W"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "3,a,32,32"), "integers"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "5,4,32,32"),
     "reads 3-channel clips"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "3,0,32,32"),
     "between 1 and"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "3,-4,32,32"),
     "between 1 and"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "3,4000,4000,4000"),
     "GiB"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--input-shape", "3,4,32,99999999"),
     "between 1 and"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--temporal", "2"), "--temporal"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--temporal", "1,0"), "--temporal"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--channel", "1,0"), "--channel"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--channel", "1,2"), "--channel"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--channel", "1,x"), "--channel"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--min-share", "2"), "--min-share"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--num-classes", "0"), "--num-classes"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--num-classes", "5"), "--num-classes 8"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--classes", "latin1_classes.txt"),
     "not UTF-8"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "o.pth", "--time-aware", "--time-device", "tpu"),
     "--device"),
    (("convert", "plain.pth", "--out", "o.pth", "--key-map", "block1."), "--key-map 'block1.': expected OLD=NEW"),
    (("convert", "plain.pth", "--out", "o.pth", "--key-map", "=fc."), "--key-map '=fc.': expected OLD=NEW"),
    (("convert", "plain.pth", "--out", "o.pth", "--key-map", "a=b=c"), "expected OLD=NEW"),
    (("convert", "plain.pth", "--out", "o.pth", "--key-map", "a b=c"), "expected OLD=NEW"),
    (("convert", "plain.pth", "--out", "o.pth", "--key-map", "nothing.=fc."),
     "--key-map 'nothing.=fc.': no key starts with 'nothing.'"),
    (("convert", "plain.pth", "--out", "o.pth", "--key-map", "block1.=block2."), "two tensors the name"),
    (("profile", "plain.pth", "--arch", "vared:tiny_c3d", "--key-map", "fc."), "--key-map 'fc.': expected OLD=NEW"),
    (("profile", "plain.pth", "--arch", "vared:tiny_c3d", "--key-map", "head.=fc."), "no key starts with 'head.'"),
    (("profile", "model.pth", "--key-map", "fc.=head."), "--key-map is for plain checkpoints"),
    (("convert", "model.pth", "--out", "o.pth", "--key-map", "fc.=head."), "already a converted vared model"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d"), "Missing option '--out'", 2),
    (("convert", "plain.pth", "--out", "o.pth", "--bogus"), "No such option", 2),
    # profile
    (("profile", "model.pth", "--option", "3,0.3"), "not in this model's search space"),
    (("profile", "model.pth", "--option", "2"), "--option '2'"),
    (("profile", "model.pth", "--option", "a,b"), "--option 'a,b'"),
    (("profile", "model.pth", "--repeats", "0"), "--repeats 0"),
    (("profile", "model.pth", "--repeats", "-3"), "--repeats -3"),
    (("profile", "model.pth", "--repeats", "abc"), "Invalid value for '--repeats'", 2),
    (("profile", "model.pth", "--latency", "--conv-kernel", "mkl"), "--conv-kernel 'mkl': expected one of auto, aten, onednn"),
    (("profile", "model.pth", "--input-shape", "5,4,32,32"), "reads 3-channel clips"),
    (("profile", "model.pth", "--input-shape", "3,4,32"), "C,T,H,W"),
    (("profile", "model.pth", "--device", "gpu7"), "--device"),
    (("profile", "model.pth", "--data", "data", "--clips", "0"), "--clips 0"),
    (("profile", "model.pth", "--data", "data", "--workers", "-1"), "--workers -1"),
    (("profile", "model.pth", "--data", "data", "--stride", "0"), "--stride 0"),
    (("profile", "model.pth", "--data", "empty_data"), "no videos"),
    (("profile", "model.pth", "--data", "nowhere"), "no such dataset directory"),
    (("profile", "plain.pth", "--arch", "vared:tiny_c3d", "--num-classes", "-2"), "--num-classes -2"),
    (("profile", "model.pth", "--latency-table", "taken.json"), "exists; pass --force"),
    (("profile", "model.pth", "--latency-table", "model.pth"), "is the input"),
    (("profile", "model.pth", "--latency-table", "folder.pth"), "is a directory"),
    (("profile", "model.pth", "--latency-table", "nowhere/t.json"), "does not exist"),
    (("profile", "model.pth", "--latency-table", "t.json", "--json", "t.json"), "give each output its own file"),
    (("profile", "plain.pth", "--arch", "vared:tiny_c3d", "--latency-table", "t.json"), "needs a converted model"),
    (("profile", "model.pth", "--latency-table", "t.json", "--threads", "0"), "--threads 0"),
    (("profile", "model.pth", "--latency-table", "t.json", "--threads", "x"), "Invalid value for '--threads'", 2),
    (("profile", "model.pth", "--latency-table", "t.json", "--repeats", "0"), "--repeats 0"),
    (("profile", "model.pth", "--latency-table", "t.json", "--device", "cuda:9"), "--device"),
    # evaluate
    (("evaluate", "model.pth", "--data", "data", "--frames", "0"), "--frames 0"),
    (("evaluate", "model.pth", "--data", "data", "--size", "-1"), "--size -1"),
    (("evaluate", "model.pth", "--data", "data", "--stride", "0"), "--stride 0"),
    (("evaluate", "model.pth", "--data", "data", "--batch-size", "0"), "--batch-size 0"),
    (("evaluate", "model.pth", "--data", "data", "--workers", "-1"), "--workers -1"),
    (("evaluate", "model.pth", "--data", "data", "--clips-per-video", "0"), "--clips-per-video 0"),
    (("evaluate", "model.pth", "--data", "data", "--split", "test"), "split"),
    (("evaluate", "model.pth", "--data", "data", "--layout", "weird"), "layout"),
    (("evaluate", "model.pth"), "Missing option '--data'", 2),
    (("evaluate", "model.pth", "--data", "two_classes"), "has 2 classes but the model's head has 8 outputs"),
    (("finetune", "model.pth", "--data", "two_classes"), "--reset-head"),
    # export
    (("export", "model.pth", "--onnx", "o.onnx", "--static-policy", "--option", "3,0.3"), "search space"),
    (("export", "model.pth", "--onnx", "o.onnx", "--static-policy", "--option", "2,0.3"), "search space"),
    (("export", "model.pth", "--onnx", "o.onnx", "--static-policy"), "exactly one of --option"),
    (("export", "model.pth", "--onnx", "o.onnx", "--option", "2,0.5"), "add --static-policy"),
    (("export", "model.pth", "--onnx", "o.onnx", "--atol", "-1"), "--atol -1"),
    (("export", "model.pth", "--onnx", "o.onnx", "--atol", "nan"), "--atol nan"),
    (("export", "model.pth", "--onnx", "o.onnx", "--conv-lowering", "im2col"), "--conv-lowering"),
    (("export", "model.pth", "--onnx", "o.onnx", "--input-shape", "4,4,32,32"), "reads 3-channel clips"),
    (("export", "model.pth", "--onnx", "o.onnx", "--static-policy", "--data", "data", "--max-clips", "0"),
     "--max-clips 0"),
    (("export", "model.pth", "--onnx", "o.onnx", "--static-policy", "--data", "data", "--batch-size", "0"),
     "--batch-size 0"),
    (("export", "model.pth", "--onnx", "o.onnx", "--static-policy", "--data", "data", "--workers", "-1"),
     "--workers -1"),
    (("export", "model.pth"), "nothing to write"),
    # finetune
    (("finetune", "model.pth", "--data", "data", "--lr", "-1"), "--lr -1"),
    (("finetune", "model.pth", "--data", "data", "--lr", "0"), "--lr 0"),
    (("finetune", "model.pth", "--data", "data", "--lr", "nan"), "--lr nan"),
    (("finetune", "model.pth", "--data", "data", "--lr", "inf"), "--lr inf"),
    (("finetune", "model.pth", "--data", "data", "--max-steps", "-1"), "--max-steps -1"),
    (("finetune", "model.pth", "--data", "data", "--epochs", "0"), "--epochs 0"),
    (("finetune", "model.pth", "--data", "data", "--batch-size", "0"), "--batch-size 0"),
    (("finetune", "model.pth", "--data", "data", "--workers", "-1"), "--workers -1"),
    (("finetune", "model.pth", "--data", "data", "--log-every", "0"), "--log-every 0"),
    (("finetune", "model.pth", "--data", "data", "--save-every", "-1"), "--save-every -1"),
    (("finetune", "model.pth", "--data", "data", "--target-flops", "2"), "--target-flops 2"),
    (("finetune", "model.pth", "--data", "data", "--target-flops", "0"), "--target-flops 0"),
    (("finetune", "model.pth", "--data", "data", "--target-flops", "0.01"), "cheapest this model can run"),
    (("finetune", "model.pth", "--data", "data", "--tau-end", "0"), "--tau-end 0"),
    (("finetune", "model.pth", "--data", "data", "--flops-weight", "-1"), "--flops-weight -1"),
    (("finetune", "model.pth", "--data", "data", "--warmup-epochs", "5", "--epochs", "2"), "--warmup-epochs 5"),
    (("finetune", "model.pth", "--data", "data", "--relaxation", "medium"), "--relaxation 'medium'"),
    (("finetune", "model.pth", "--data", "data", "--amp", "fp8"), "--amp 'fp8'"),
    (("finetune", "model.pth", "--data", "data", "--device", "npu"), "--device"),
    (("finetune", "model.pth", "--data", "data", "--frames", "0"), "--frames 0"),
    (("finetune", "model.pth", "--data", "data", "--calibrate-clips", "0"), "--calibrate-clips 0"),
    (("finetune", "model.pth", "--data", "data", "--static-option", "abc"), "--static-option 'abc'"),
    (("finetune", "model.pth", "--data", "data", "--static-option", "3,0.5"), "search space"),
    (("finetune", "model.pth", "--data", "data", "--config", "bad.yaml"), "--lr 'abc'"),
    (("finetune", "model.pth", "--data", "data", "--config", "not_yaml.yaml"), "not valid YAML"),
    (("finetune", "model.pth", "--data", "data", "--config", "list.yaml"), "expected a mapping"),
    (("finetune", "model.pth", "--data", "data", "--config", "unknown.yaml"), "unknown finetune option"),
    (("finetune", "model.pth", "--data", "data", "--config", "nowhere.yaml"), "no such file"),
    (("finetune", "model.pth", "--data", "data", "--resume", "plain.pth"), "not a vared training checkpoint"),
    (("finetune", "model.pth", "--data", "data", "--resume", "missing.pth"), "no such file"),
    (("finetune", "model.pth"), "--data"),
    (("finetune", "model.pth", "--data", "data", "--cost", "time"), "--cost 'time'"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "table.json",
      "--target-flops", "2.5"), "--target-flops 2.5: must be at most 2"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency"), "needs --latency-table PATH"),
    (("finetune", "model.pth", "--data", "data", "--latency-table", "table.json"), "only with --cost latency"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "missing.json"),
     "no such file"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "folder.pth"),
     "is a directory"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "taken.json"), "not JSON"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "latin1_classes.txt"),
     "not UTF-8 text"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "list.yaml"), "not JSON"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "other_table.json"),
     "measured on another model"),
    (("finetune", "model.pth", "--data", "data", "--cost", "latency", "--latency-table", "table.json"),
     "measured at clip 3,4,32,32 and this run uses 3,16,112,112"),
    (("finetune", "model.pth", "--data", "empty_data"), "no videos"),
    # demo
    (("demo", "--out", "precious_folder"), "is not empty"),
    (("demo", "--out", "precious_folder", "--force"), "did not write (thesis.txt)"),
    (("demo", "--out", "model.pth"), "is a file"),
    (("demo", "--out", "fresh", "--json", "taken.json"), "--force"),
    (("demo", "--out", "fresh", "--json", "nowhere/s.json"), "does not exist"),
    (("demo", "--out", "fresh", "--json", "fresh/s.json"), "inside --out"),
    (("demo", "--out", "nowhere/deeper"), "does not exist"),
    # data
    (("data", "check", "nowhere"), "no such dataset directory"),
    (("data", "check", "empty_data"), "no videos"),
    (("data", "check", "data", "--layout", "weird"), "layout"),
    # the command line itself
    (("nosuchcommand",), "No such command", 2),
]


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=[" ".join(c[0][:1] + c[0][2:])[:60] for c in BAD_ARGUMENTS])
def test_bad_arguments(ws, case):
    _check(ws, *case)


# ------------------------------------------------------------------------------------------- datasets
DATASETS = [
    ("nowhere", "no such dataset directory"),
    ("empty_data", "no videos"),
    ("latin1_list", "not UTF-8 text"),
    ("negative_label", "label -1"),
    ("escaping_path", "leaves the dataset folder"),
    ("all_corrupt", "decoded"),
]
DATA_COMMANDS = {
    "data check": lambda d: ("data", "check", d),
    "evaluate": lambda d: ("evaluate", "model.pth", "--data", d, "--workers", "0"),
    "profile": lambda d: ("profile", "model.pth", "--data", d, "--workers", "0"),
    "export": lambda d: ("export", "model.pth", "--onnx", "o.onnx", "--static-policy", "--data", d, "--workers", "0"),
    "finetune": lambda d: ("finetune", "model.pth", "--data", d, "--workers", "0", "--run-dir", "run"),
}


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
@pytest.mark.parametrize("folder,needle", DATASETS, ids=[d for d, _ in DATASETS])
def test_datasets(ws, command, folder, needle):
    if folder == "all_corrupt" and command in ("profile", "export"):
        needle = "no clip"
    _check(ws, DATA_COMMANDS[command](folder), needle)


def test_labels_beyond_the_head(ws):
    _check(ws, ("evaluate", "model.pth", "--data", "label_20", "--workers", "0"), "has 21 classes but the model's head")
    _check(ws, ("finetune", "model.pth", "--data", "label_20", "--workers", "0"), "--reset-head")


# ------------------------------------------------------------------------------------------- outputs
OUTPUTS = [
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "plain.pth"), "is the input"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "taken.onnx"), "--force"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "nowhere/o.pth"), "does not exist"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "data"), "is a directory"),
    (("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", "loop_a.pth"), "broken symbolic link"),
    (("profile", "model.pth", "--json", "model.pth"), "is the input"),
    (("profile", "model.pth", "--json", "model.pth", "--force"), "is the input"),
    (("profile", "model.pth", "--plot", "model.pth", "--force"), "is the input"),
    (("profile", "model.pth", "--json", "taken.json"), "--force"),
    (("profile", "model.pth", "--plot", "taken.json"), "--force"),
    (("profile", "model.pth", "--json", "r.json", "--plot", "r.json"), "give each output its own file"),
    (("profile", "model.pth", "--json", "nowhere/r.json"), "does not exist"),
    (("export", "model.pth", "--onnx", "model.pth", "--force"), "is the input"),
    (("export", "model.pth", "--pt2", "model.pth", "--force"), "is the input"),
    (("export", "model.pth", "--onnx", "taken.onnx"), "--force"),
    (("export", "model.pth", "--onnx", "o.x", "--pt2", "o.x"), "give each output its own file"),
    (("export", "model.pth", "--onnx", "nowhere/o.onnx"), "does not exist"),
    (("finetune", "model.pth", "--data", "data", "--out", "model.pth", "--force"), "is the input"),
    (("finetune", "model.pth", "--data", "data", "--out", "taken.onnx"), "--force"),
    (("finetune", "model.pth", "--data", "data", "--out", "nowhere/f.pth"), "does not exist"),
    (("finetune", "model.pth", "--data", "data", "--run-dir", "model.pth"), "is a file"),
]


@pytest.mark.parametrize("case", OUTPUTS, ids=[" ".join(c[0])[:70] for c in OUTPUTS])
def test_outputs(ws, case):
    _check(ws, *case)


def _readonly_folder(tmp_path: Path) -> Path:
    """A folder this process cannot write to: chmod'ed, or (as root, who ignores modes) a kernel folder."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys/kernel"), Path("/proc/self")):
        try:
            probe = candidate / ".vared-test-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError:
            return candidate
    pytest.skip("no read-only folder available to this user")


@pytest.mark.parametrize("command", ["convert", "profile", "export", "finetune", "demo"])
def test_read_only_output_folder_is_refused_before_any_work(ws, tmp_path, command):
    folder = _readonly_folder(tmp_path)
    args = {
        "convert": ("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", folder / "o.pth"),
        "profile": ("profile", "model.pth", "--json", folder / "r.json"),
        "export": ("export", "model.pth", "--onnx", folder / "o.onnx"),
        "finetune": ("finetune", "model.pth", "--data", "data", "--out", folder / "f.pth"),
        "demo": ("demo", "--out", "fresh", "--json", folder / "s.json"),
    }[command]
    _check(ws, args, "cannot write there")


def test_full_disk_during_a_save_leaves_nothing(ws, tmp_path):
    """A file-size limit makes every write past 64 KiB fail as a full disk would: one line, no partial file."""
    out = tmp_path / "o.pth"

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "vared_convert", "convert", ws / "plain.pth", "--arch",
                           "vared:tiny_c3d", "--out", out, "--input-shape", "3,4,32,32"],
                          capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and "could not write" in lines[0] and "nothing was written" in lines[0], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_outputs_follow_the_umask(ws, tmp_path):
    out = tmp_path / "o.pth"
    previous = os.umask(0o022)
    try:
        outcome = run_cli("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", out, "--input-shape",
                          "3,4,32,32", cwd=ws)
    finally:
        os.umask(previous)
    assert outcome.returncode == 0, outcome.stderr
    assert out.stat().st_mode & 0o777 == 0o644


def test_existing_outputs_are_replaced_only_with_force(ws, tmp_path):
    out = tmp_path / "o.pth"
    out.write_bytes(b"precious")
    args = ("convert", "plain.pth", "--arch", "vared:tiny_c3d", "--out", out, "--input-shape", "3,4,32,32")
    assert_refused(run_cli(*args, cwd=ws), "--force")
    assert out.read_bytes() == b"precious"
    assert run_cli(*args, "--force", cwd=ws).returncode == 0
    assert torch.load(out, weights_only=True)["format"] == "vared"


def test_user_code_runs_when_the_user_names_it(ws, tmp_path):
    """The same user-code model file opens once its architecture is named on the command line."""
    outcome = run_cli("profile", "arch_user_code.pth", "--arch", "models_for_tests:tiny", "--json", "-", cwd=ws)
    assert outcome.returncode == 0, outcome.stderr
    assert '"mode": "static"' in outcome.stdout


# ------------------------------------------------------------------------------------------- signals
def _start(args: list, cwd: Path) -> subprocess.Popen:
    """``vared ARGS`` as a process of its own, with Ctrl-C's default disposition as a terminal gives it: a test run
    started in the background by a shell (``cmd &``) ignores SIGINT, which its children would inherit, and Python
    leaves an inherited ignored SIGINT ignored."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "vared_convert", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_when(proc: subprocess.Popen, folder: Path, pattern: str, signum: int, timeout: float = 240) -> bool:
    """Send ``signum`` as soon as a file matching ``pattern`` appears in ``folder`` (True), or when the process
    ends first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if any(folder.glob(pattern)):
            proc.send_signal(signum)
            return True
        time.sleep(0.0005)
    return False


@pytest.fixture(scope="module")
def r3d_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint big enough (130 MB converted) that a save takes long enough to be interrupted in."""
    import torchvision

    path = tmp_path_factory.mktemp("r3d") / "r3d.pth"
    torch.save(torchvision.models.video.r3d_18(num_classes=4).state_dict(), path)
    return path


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_convert_save(r3d_checkpoint, tmp_path, signum):
    proc = _start(["convert", r3d_checkpoint, "--arch", "torchvision:r3d_18", "--num-classes", "4", "--input-shape",
                   "3,4,32,32", "--out", tmp_path / "o.pth"], tmp_path)
    hit = _signal_when(proc, tmp_path, ".o.pth.*.tmp", signum)
    _, err = proc.communicate(timeout=120)
    assert hit, "the save ended before the signal could be sent"
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == (130 if signum == signal.SIGINT else 143) and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert list(tmp_path.iterdir()) == [], "a partial or temporary file was left"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_export(ws, tmp_path, signum):
    proc = _start(["export", ws / "model.pth", "--onnx", tmp_path / "m.onnx"], tmp_path)
    hit = _signal_when(proc, tmp_path, ".m.onnx.*.tmp", signum)
    _, err = proc.communicate(timeout=120)
    assert hit, "the export ended before the signal could be sent"
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == (130 if signum == signal.SIGINT else 143) and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_finetune_saves_a_resumable_run(ws, tmp_path, signum):
    run = tmp_path / "run"
    proc = _start(["finetune", ws / "model.pth", "--data", ws / "data", "--workers", "0", "--frames", "4",
                   "--size", "32", "--stride", "2", "--batch-size", "2", "--epochs", "50", "--log-every", "1",
                   "--run-dir", run], tmp_path)
    assert _signal_when(proc, run, "metrics.jsonl", signum), "the run ended before it could be interrupted"
    out, err = proc.communicate(timeout=300)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == (130 if signum == signal.SIGINT else 143) and "Traceback" not in out + err, err
    assert len(lines) == 1 and "--resume" in lines[0], err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "last.pth", "metrics.jsonl"]
    assert torch.load(run / "last.pth", weights_only=True)["format"] == "vared-train"
