"""Prefixed checkpoints: the prefix rewrites found from the keys, and --key-map for the rest."""

from __future__ import annotations

import json

import pytest
import torch

from cli_checks import assert_refused, run_cli
from vared_convert.baseline import tiny_c3d
from vared_convert.checkpoint import load_model
from vared_convert.errors import ArgumentError
from vared_convert.keys import apply_key_map, fit_keys, parse_key_map


def _weights(num_classes: int = 6) -> dict[str, torch.Tensor]:
    return tiny_c3d(num_classes=num_classes).state_dict()


def _target(sd: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in sd.items()}


def _mmaction2(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mmaction2's layout: the network under ``backbone.``, its classifier as ``cls_head.fc_cls``."""
    return {("cls_head.fc_cls." + k[3:] if k.startswith("fc.") else "backbone." + k): v for k, v in sd.items()}


@pytest.mark.parametrize("prefix", ["module.", "model.", "encoder.", "module._orig_mod.", "student.model."])
def test_a_common_prefix_is_stripped(prefix):
    sd = _weights()
    fit = fit_keys({prefix + k: v for k, v in sd.items()}, _target(sd))
    assert fit.state_dict.keys() == sd.keys() and not fit.missing and not fit.unexpected
    assert fit.describe() == f"checkpoint keys: stripped {prefix!r} ({len(sd)} keys)"


def test_mmaction2_backbone_and_cls_head_are_mapped_onto_the_network():
    sd = _weights()
    fit = fit_keys(_mmaction2(sd), _target(sd))
    assert all(torch.equal(fit.state_dict[k], v) for k, v in sd.items()) and fit.state_dict.keys() == sd.keys()
    assert fit.describe() == (f"checkpoint keys: stripped 'backbone.' ({len(sd) - 2} keys), "
                              "'cls_head.fc_cls.' -> 'fc.' (2 keys)")


def test_keys_that_fit_are_left_alone_and_the_rest_reported():
    sd = _weights()
    fit = fit_keys(sd, _target(sd))
    assert fit.describe() is None and fit.problems() is None
    partial = {k: v for k, v in sd.items() if not k.startswith("block3")}
    partial["aux_head.weight"] = torch.zeros(3)
    fit = fit_keys(partial, _target(sd))
    assert fit.unexpected == ["aux_head.weight"]
    assert fit.problems() == ("5 missing keys (block3.0.weight, block3.1.weight, block3.1.bias, "
                              "block3.1.running_mean, block3.1.running_var); 1 unexpected keys (aux_head.weight)")


def test_key_map_rules():
    assert parse_key_map(["backbone.=", "cls_head.fc_cls.=fc."]) == [("backbone.", ""), ("cls_head.fc_cls.", "fc.")]
    for bad in ["backbone.", "=fc.", "a=b=c", "a b=c"]:
        with pytest.raises(ArgumentError, match="--key-map .*expected OLD=NEW"):
            parse_key_map([bad])
    sd = {"a.x": torch.zeros(1), "a.y": torch.zeros(1), "ab.z": torch.zeros(1)}
    assert list(apply_key_map(sd, [("a.", "b."), ("a", "c")])) == ["b.x", "b.y", "cb.z"]  # the first rule wins
    with pytest.raises(ArgumentError, match="no key starts with 'q.' .*start with a., ab."):
        apply_key_map(sd, [("q.", "")])
    with pytest.raises(ArgumentError, match="gives two tensors the name 'a.x'"):
        apply_key_map({"a.x": torch.zeros(1), "b.x": torch.zeros(1)}, [("b.", "a.")])


def test_convert_maps_an_mmaction2_checkpoint_and_says_so(tmp_path):
    sd = _weights()
    ckpt = tmp_path / "tiny_mmaction2.pth"
    torch.save({"meta": {"epoch": 12}, "state_dict": _mmaction2(sd)}, ckpt)
    out = tmp_path / "o.pth"
    outcome = run_cli("convert", ckpt, "--out", out, "--input-shape", "3,8,32,32")
    assert outcome.returncode == 0, outcome.stderr
    assert "recognised vared:tiny_c3d (num_classes=6) from its weights" in outcome.stdout
    assert "checkpoint keys: stripped 'backbone.' (24 keys), 'cls_head.fc_cls.' -> 'fc.' (2 keys)" in outcome.stdout
    loaded = load_model(ckpt, "vared:tiny_c3d", num_classes=6)  # the other readers of plain checkpoints too
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


def test_key_map_renames_what_the_fitting_cannot(tmp_path):
    sd = _weights()
    renamed = {k.replace("block", "stage").replace("fc.", "classifier."): v for k, v in sd.items()}
    ckpt = tmp_path / "renamed.pth"
    torch.save({"module." + k: v for k, v in renamed.items()}, ckpt)
    out = tmp_path / "o.pth"
    refused = run_cli("convert", ckpt, "--arch", "vared:tiny_c3d", "--num-classes", "6", "--out", out)
    assert_refused(refused, "checkpoint does not fit vared:tiny_c3d: 17 missing keys (block1.0.weight")
    outcome = run_cli("convert", ckpt, "--out", out, "--input-shape", "3,8,32,32", "--json",  # then module.stem
                      "--key-map", "module.stage=block", "--key-map", "module.classifier.=fc.")
    assert outcome.returncode == 0, outcome.stderr
    report = json.loads(outcome.stdout)
    assert report["checkpoint"]["arch"] == "vared:tiny_c3d"
    assert report["checkpoint"]["keys"] == "checkpoint keys: stripped 'module.' (6 keys)"
    assert report["max_abs_error"] == 0.0
