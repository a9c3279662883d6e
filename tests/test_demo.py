"""`vared demo --quick`: every step runs for real (PyAV videos, training, convert, finetune, profile, ONNX)."""

from __future__ import annotations

import json

import onnx
import torch

from cli_checks import assert_one_line_error
from vared_convert.checkpoint import load_model


def test_quick_demo_runs_every_step_and_summarises(run_vared, tmp_path):
    out = tmp_path / "demo"
    proc = run_vared("demo", "--quick", "--out", out, "--json", tmp_path / "summary.json", check=True, timeout=900)
    for title in ("1. Data", "2. Baseline", "3. Convert", "4. Finetune", "5. Evaluate and profile", "6. Export",
                  "Summary", "What each class chose", "The same steps on your own model"):
        assert title in proc.stdout, title
    assert "training the baseline" not in proc.stdout + proc.stderr  # a pipe or a log gets no progress bars
    summary = json.loads((tmp_path / "summary.json").read_text())

    # the baseline is what a user holds: a plain state_dict, loadable without unpickling code
    state = torch.load(out / "baseline.pth", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # the full path of the adaptive model is the original network (same weights, exact conversion)
    assert summary["full_path_top1"] == summary["original_top1"]
    # the finetuned gates save FLOPs on the validation clips, and decide per class
    assert summary["flops_ratio"] < 0.9 and summary["adaptive_gflops"] < summary["original_gflops"]
    assert set(summary["class_temporal_share"]) == set(summary["classes"]) and len(summary["classes"]) == 8
    assert summary["latency"]["original_ms"] > 0 and summary["latency"]["adaptive_ms"] > 0
    # beside the adaptive model: the best static policy a user could run instead at the same FLOPs
    assert summary["static_kind"] in ("searched", "most frequent", "random", "uniform")
    assert 0 <= summary["static_top1"] <= 100 and summary["static_detail"]
    if summary["static_kind"] != "uniform":  # those run on the adaptive model's decisions: its cost
        assert abs(summary["static_flops_ratio"] - summary["flops_ratio"]) < 0.1
    assert "best static policy at FLOPs" in proc.stdout and f"target {summary['target_flops']:g}" in proc.stdout
    adaptive = load_model(out / "adaptive.pth")
    assert adaptive.vared_info.class_names == summary["classes"]
    dynamic = onnx.load(out / "adaptive.onnx")
    assert any(node.op_type == "If" for node in dynamic.graph.node)
    for name in ("savings.png", "decisions.png", "adaptive_static.onnx"):
        assert (out / name).stat().st_size > 0, name
    for command in ("vared convert", "vared finetune", "vared profile", "vared export"):
        assert any(line.startswith(command) for line in summary["commands"]), command

    assert_one_line_error(run_vared("demo", "--quick", "--out", out), "--force")
