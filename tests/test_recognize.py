"""`vared convert CKPT --out OUT` without --arch: the registry architecture recognised from the weights."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from cli_checks import assert_refused, run_cli
from vared_convert.arch import KNOWN_ARCHS, ArchSpec, build_model
from vared_convert.baseline import tiny_c3d
from vared_convert.checkpoint import load_model
from vared_convert.errors import UnrecognisedArchError
from vared_convert.nn.policy import forced_policy
from vared_convert.recognize import SAME_WEIGHTS, carried_config, recognise, signature


def _meta_state_dict(name: str, num_classes: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_model(ArchSpec(name, num_classes)).state_dict()


@pytest.mark.parametrize("name", list(KNOWN_ARCHS))
def test_every_registry_architecture_is_recognised_from_its_keys_and_shapes(name):
    found = recognise(_meta_state_dict(name, 5), file_name=f"/ckpts/{name.split(':')[1]}_kinetics.pth")
    assert found.spec == ArchSpec(name, 5)
    assert found.describe().startswith(f"recognised {name} (num_classes=5) from its weights")


# one real conversion per family: torchvision, pytorchvideo X3D, SlowFast, I3D-style ResNets, vared's own
FAMILIES = [
    ("torchvision:mc3_18", "3,4,32,32"),
    ("pytorchvideo:x3d_xs", "3,4,32,32"),
    ("pytorchvideo:slowfast_r50", "3,8,32,32"),
    ("pytorchvideo:i3d_r50", "3,8,32,32"),
    ("vared:tiny_c3d", "3,8,32,32"),
]


@pytest.mark.parametrize("name,shape", FAMILIES, ids=[n for n, _ in FAMILIES])
def test_convert_without_arch_converts_each_family_exactly(tmp_path, name, shape):
    model = build_model(ArchSpec(name, 3)).eval()
    ckpt = tmp_path / f"{name.split(':')[1]}_trained.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 7}, ckpt)
    out = tmp_path / "out.pth"
    outcome = run_cli("convert", ckpt, "--out", out, "--input-shape", shape, "--json")
    assert outcome.returncode == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["checkpoint"]["arch"] == name and report["checkpoint"]["num_classes"] == 3
    assert report["checkpoint"]["recognised"].startswith(f"recognised {name} (num_classes=3) from its weights")
    assert report["max_abs_error"] == 0.0
    converted = load_model(out)
    assert converted.vared_info.arch == ArchSpec(name, 3)
    clip = torch.randn(1, *map(int, shape.split(",")))
    with torch.no_grad(), forced_policy(converted, (1, 1.0)):
        assert torch.equal(converted(clip), model(clip))  # the checkpoint's weights, not a fresh network's


def test_the_report_says_what_was_recognised(tmp_path):
    ckpt = tmp_path / "weights.pth"
    torch.save(tiny_c3d(num_classes=6).state_dict(), ckpt)
    outcome = run_cli("convert", ckpt, "--out", tmp_path / "o.pth", "--input-shape", "3,8,32,32")
    assert outcome.returncode == 0, outcome.stderr
    assert "recognised vared:tiny_c3d (num_classes=6) from its weights" in outcome.stdout


def test_arch_wins_over_recognition(tmp_path):
    ckpt = tmp_path / "tiny.pth"
    torch.save(tiny_c3d(num_classes=3).state_dict(), ckpt)  # recognised as vared:tiny_c3d without --arch
    outcome = run_cli("convert", ckpt, "--arch", "models_for_tests:tiny", "--num-classes", "3", "--out",
                      tmp_path / "o.pth", "--input-shape", "3,8,32,32", "--json")
    assert_refused(outcome, "checkpoint does not fit models_for_tests:tiny")  # built as named, not as recognised
    named = run_cli("convert", ckpt, "--arch", "vared:tiny_c3d", "--num-classes", "3", "--out", tmp_path / "o.pth",
                    "--input-shape", "3,8,32,32", "--json")
    assert named.returncode == 0, named.stderr
    loaded = json.loads(named.stdout)["checkpoint"]
    assert loaded["arch"] == "vared:tiny_c3d" and loaded["recognised"] is None


# ---------------------------------------------------------------------------------------------- same weights
X3D_TWINS = ["pytorchvideo:x3d_xs", "pytorchvideo:x3d_s", "pytorchvideo:x3d_m"]


def test_the_only_registry_architectures_with_the_same_weights_are_the_declared_ones():
    by_weights: dict[frozenset, list[str]] = {}
    for name in KNOWN_ARCHS:
        by_weights.setdefault(signature(name).key_set(), []).append(name)
    assert sorted(sorted(g) for g in by_weights.values() if len(g) > 1) == [sorted(g) for g in SAME_WEIGHTS]


@pytest.mark.parametrize("input_shape,expected", [((3, 4, 160, 160), "x3d_xs"), ((3, 13, 160, 160), "x3d_s"),
                                                  ((3, 16, 224, 224), "x3d_m")])
def test_x3d_twins_are_told_apart_by_the_input_shape(input_shape, expected):
    found = recognise(_meta_state_dict("pytorchvideo:x3d_s", 400), input_shape=input_shape, file_name="model.pth")
    assert found.spec.name == f"pytorchvideo:{expected}"
    assert "by --input-shape" in found.describe()
    assert sorted(found.twins + [found.spec.name]) == sorted(X3D_TWINS)


@pytest.mark.parametrize("file_name,expected", [("X3D_XS.pyth", "x3d_xs"), ("x3d-s_k400.pth", "x3d_s"),
                                                ("x3d_m_16x5x1_facebook-kinetics400-rgb.pth", "x3d_m")])
def test_x3d_twins_are_told_apart_by_the_file_name(file_name, expected):
    found = recognise(_meta_state_dict("pytorchvideo:x3d_m", 400), file_name=file_name)
    assert found.spec.name == f"pytorchvideo:{expected}" and "by the file's name" in found.describe()


def test_x3d_twins_default_to_x3d_m_and_say_so():
    found = recognise(_meta_state_dict("pytorchvideo:x3d_xs", 400), input_shape=(3, 8, 112, 112),
                      file_name="weights.pth")
    assert found.spec == ArchSpec("pytorchvideo:x3d_m", 400)
    assert "x3d_xs, x3d_s have the same weights: chose x3d_m (the default" in found.describe()


# ---------------------------------------------------------------------------------------------- not recognised
def test_unknown_weights_name_the_nearest_candidates(tmp_path):
    sd = {k: v for k, v in tiny_c3d(num_classes=6).state_dict().items() if not k.startswith("block3")}
    ckpt = tmp_path / "pruned.pth"
    torch.save(sd, ckpt)
    outcome = run_cli("convert", ckpt, "--out", tmp_path / "o.pth")
    assert_refused(outcome, "pruned.pth: the weights match no registry architecture (share of keys that match: "
                            "vared:tiny_c3d 77%")
    assert "name the network with --arch" in outcome.stderr
    assert not (tmp_path / "o.pth").exists()
    with pytest.raises(UnrecognisedArchError, match="no architecture shares its keys"):
        recognise({"encoder.layer.weight": torch.zeros(3, 3)})


def test_a_wrong_shape_is_not_recognised():
    sd = _meta_state_dict("torchvision:r3d_18", 4)
    sd["layer1.0.conv1.0.weight"] = torch.empty(64, 64, 1, 3, 3, device="meta")  # another temporal kernel
    with pytest.raises(UnrecognisedArchError, match=r"torchvision:r3d_18 99%"):
        recognise(sd)


def test_pyslowfast_cfg_gives_a_hint(tmp_path):
    sd = {"module." + k: v for k, v in tiny_c3d(num_classes=6).state_dict().items() if "block1" not in k}
    ckpt = tmp_path / "slowfast.pyth"
    cfg = "TRAIN:\n  BATCH_SIZE: 64\nMODEL:\n  ARCH: slowfast\n  MODEL_NAME: SlowFast\n  NUM_CLASSES: 6\n"
    torch.save({"epoch": 196, "model_state": sd, "optimizer_state": {}, "cfg": cfg}, ckpt)
    outcome = run_cli("convert", ckpt, "--out", tmp_path / "o.pth")
    assert_refused(outcome, "the checkpoint carries a PySlowFast cfg: MODEL.ARCH=slowfast, MODEL.MODEL_NAME=SlowFast, "
                            "MODEL.NUM_CLASSES=6; name the network with --arch")


def test_mmengine_meta_gives_a_hint():
    cfg = ("model = dict(\n    type='Recognizer3D',\n    backbone=dict(type='X3D', gamma_w=1),\n"
           "    cls_head=dict(type='X3DHead', num_classes=400))\n")
    raw = {"meta": {"mmengine_version": "0.10.4", "cfg": cfg}, "state_dict": {}}
    assert carried_config(raw) == ("the checkpoint carries an mmengine config: model type=Recognizer3D, backbone "
                                   "type=X3D, cls_head type=X3DHead")
    assert carried_config({"meta": {"epoch": 3}}) == "the checkpoint carries an mmengine meta entry (no config in it)"
    assert carried_config({"state_dict": {}}) is None
