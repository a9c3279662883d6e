"""benchmarks/bench_granularity.py --quick: the residual net trains, converts at block and stage granularity and
finetunes end to end on a tiny dataset; the rows say what each granularity made of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_granularity.py"


def test_quick_bench_granularity_runs_block_and_stage(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--out", str(out), "--targets", "0.6",
                           "--granularities", "block,stage"], capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "granularity_block_stage.json").read_text())
    rows = {r["granularity"]: r for r in summary["rows"]}
    assert set(rows) == {"block", "stage"}
    # six residual blocks in three stages: one gate per block, or one per stage
    assert rows["block"]["gates"] == 6 and rows["stage"]["gates"] == 3
    for row in rows.values():
        assert row["target"] == 0.6 and 0 < row["flops_ratio"] < 1.01 and 0 <= row["top1"] <= 100
    assert "block" in proc.stdout and "stage" in proc.stdout
