"""Checkpoints that pickle training metadata from packages that are not installed: the weights load without
trusting anything, and the objects are named as inert stand-ins."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types

import torch

from cli_checks import run_cli
from vared_convert.baseline import tiny_c3d
from vared_convert.checkpoint import load_model, read_raw_checkpoint
from vared_convert.pickles import StandIn, load_without_objects


class TrainState:
    """Training metadata of a package the reader does not have (its module is faked while saving only)."""

    def __init__(self):
        self.best_top1 = 0.71
        self.history = [torch.ones(2), {"lr": 0.1}]


class Config(dict):
    """A yacs-like config node: a dict subclass from a package that is not installed."""


def _save_with_absent_classes(obj: object, path) -> None:
    """``torch.save`` ``obj`` with TrainState and Config pickled as ``not_installed_pkg.sub`` classes."""
    fake = types.ModuleType("not_installed_pkg.sub")
    saved = {}
    for cls in (TrainState, Config):
        saved[cls] = (cls.__module__, cls.__qualname__)
        cls.__module__ = "not_installed_pkg.sub"
        setattr(fake, cls.__name__, cls)
    sys.modules["not_installed_pkg"], sys.modules["not_installed_pkg.sub"] = types.ModuleType("not_installed_pkg"), fake
    try:
        torch.save(obj, path)
    finally:
        del sys.modules["not_installed_pkg"], sys.modules["not_installed_pkg.sub"]
        for cls, (module, _) in saved.items():
            cls.__module__ = module


def _training_checkpoint(path, sd):
    cfg = Config(MODEL=Config(ARCH="i3d", NUM_CLASSES=6))
    _save_with_absent_classes({"model_state": sd, "train_state": TrainState(), "cfg": cfg, "epoch": 30}, path)


def test_weights_load_without_trust_and_the_stand_ins_are_named(tmp_path):
    sd = tiny_c3d(num_classes=6).state_dict()
    ckpt = tmp_path / "train.pth"
    _training_checkpoint(ckpt, sd)
    assert "not_installed_pkg" not in sys.modules
    raw = read_raw_checkpoint(ckpt)
    assert sorted(raw.stand_ins) == ["not_installed_pkg.sub.Config", "not_installed_pkg.sub.TrainState"]
    state = raw.content["train_state"]
    assert isinstance(state, StandIn) and state.state["best_top1"] == 0.71  # recorded, not run
    assert raw.content["cfg"].items["MODEL"].items["ARCH"] == "i3d"
    out = tmp_path / "o.pth"
    outcome = run_cli("convert", ckpt, "--out", out, "--input-shape", "3,8,32,32", "--json")
    assert outcome.returncode == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    note = report["checkpoint"]["stand_ins"]
    assert note.startswith("pickled objects were read as inert stand-ins, without running their code (")
    assert "not_installed_pkg.sub.Config" in note and "not_installed_pkg.sub.TrainState" in note
    assert report["checkpoint"]["where"] == "['model_state']" and report["max_abs_error"] == 0.0
    assert "not_installed_pkg" not in sys.modules


def test_trust_pickle_names_the_missing_module_and_still_reads_the_weights(tmp_path):
    sd = tiny_c3d(num_classes=6).state_dict()
    ckpt = tmp_path / "train.pth"
    _training_checkpoint(ckpt, sd)
    raw = read_raw_checkpoint(ckpt, trust_pickle=True)
    assert raw.missing_module == "not_installed_pkg"
    assert raw.describe().startswith("module 'not_installed_pkg' is not installed, so pickled objects were read as "
                                     "inert stand-ins")
    model = load_model(ckpt, "vared:tiny_c3d", num_classes=6, trust_pickle=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


def test_the_config_of_an_absent_package_still_gives_the_hint(tmp_path):
    sd = {k: v for k, v in tiny_c3d(num_classes=6).state_dict().items() if "block2" not in k}
    ckpt = tmp_path / "train.pth"
    _training_checkpoint(ckpt, sd)
    outcome = run_cli("convert", ckpt, "--out", tmp_path / "o.pth")
    assert outcome.returncode == 1
    assert "the checkpoint carries a PySlowFast cfg: MODEL.ARCH=i3d, MODEL.NUM_CLASSES=6" in outcome.stderr
    assert "not_installed_pkg.sub.Config" in outcome.stderr  # and what was not loaded


def test_a_whole_pickled_model_converts_without_its_code(tmp_path):
    model = tiny_c3d(num_classes=5).eval()
    ckpt = tmp_path / "whole.pth"
    torch.save(model, ckpt)
    outcome = run_cli("convert", ckpt, "--out", tmp_path / "o.pth", "--input-shape", "3,8,32,32", "--json")
    assert outcome.returncode == 0, outcome.stderr
    loaded = json.loads(outcome.stdout)["checkpoint"]
    assert loaded["where"] == "pickled model" and loaded["arch"] == "vared:tiny_c3d"
    assert "vared_convert.baseline.TinyC3D" in loaded["stand_ins"]


class _Calls:
    """Unpickling this would call ``os.system`` (if the reader trusted the file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_nothing_the_file_names_is_called(tmp_path):
    marker = tmp_path / "ran"
    sd = tiny_c3d(num_classes=6).state_dict()
    def plain_pickle(obj, path):
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)

    for save in (torch.save, lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
                 plain_pickle):
        path = tmp_path / "evil.pth"
        save({"state_dict": sd, "hook": _Calls(marker)}, path)
        content, replaced = load_without_objects(path)
        assert "posix.system" in replaced and isinstance(content["hook"], StandIn)
        assert not marker.exists()
