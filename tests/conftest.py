"""Shared fixtures: small inputs, seeded randomness, and a way to run the real `vared` console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS_DIR = Path(__file__).parent


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture
def run_vared(tmp_path):
    """Run the installed `vared` entry point in a subprocess, as a user would; returns CompletedProcess."""

    def run(*args: str, cwd: Path | None = None, check: bool = False, timeout: int = 600):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
                   COLUMNS="200")
        cmd = [sys.executable, "-m", "vared_convert", *map(str, args)]
        proc = subprocess.run(cmd, cwd=cwd or tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"vared {' '.join(map(str, args))} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run
