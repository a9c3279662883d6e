"""benchmarks/bench_policy.py --quick: every method runs end to end on a tiny dataset, the table, JSON and plot."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_policy.py"


def _bench(*args: str, timeout: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_quick_bench_policy_runs_every_method(tmp_path):
    out = tmp_path / "bench"
    proc = _bench("--quick", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "policy.json").read_text())
    rows = summary["rows"]
    methods = {r["method"] for r in rows}
    named = {"original", "adaptive", "most frequent", "random", "uniform", "fewer frames", "smaller crop"}
    assert methods in (named, named | {"searched"})  # searched: when a static policy lies within ±0.03
    assert rows[0]["method"] == "original" and rows[0]["flops_ratio"] == 1.0 and rows[0]["time_ratio"] == 1.0
    by = {r["method"]: r for r in rows}
    # every method trained under one budget, on one data set, from one model: what the table says of each
    assert by["adaptive"]["detail"].startswith("calibrated")
    assert by["uniform"]["detail"].startswith("every layer ")
    if "searched" in by:
        assert abs(by["searched"]["flops_ratio"] - by["adaptive"]["flops_ratio"]) <= 0.03 + 1e-9
    assert by["fewer frames"]["flops_ratio"] < 1 and by["smaller crop"]["flops_ratio"] < 1
    for row in rows:
        assert 0 <= row["clip_top1"] <= 100 and 0 <= row["video_top1"] <= 100
        assert row["time_ratio"] > 0 and math.isfinite(row["time_ratio"]), row
    runs = {p.name for p in (out / "runs").iterdir()}
    assert any(name.startswith("adaptive_") for name in runs) and any(name.startswith("uniform_") for name in runs)
    assert (out / "policy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| target | method |" in proc.stdout
    assert "best static" in proc.stdout or "no static alternative" in proc.stdout
    # a second run into the same folder needs --force
    again = _bench("--quick", "--out", str(out), timeout=120)
    assert again.returncode != 0 and "not empty" in again.stderr
