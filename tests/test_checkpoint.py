"""Reading the checkpoint formats people hold, safely; writing ours atomically."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from models_for_tests import tiny
from vared_convert.arch import ArchSpec
from vared_convert.checkpoint import extract_state_dict, load_model, read_checkpoint, read_raw_checkpoint, save_model
from vared_convert.convert import convert
from vared_convert.errors import VaredError
from vared_convert.files import atomic_output

ARCH = "models_for_tests:tiny"


def _weights():
    return tiny().state_dict()


def _same_weights(model, state_dict):
    return all(torch.equal(model.state_dict()[k], v) for k, v in state_dict.items())


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model_state": sd, "optimizer_state": {}, "cfg": "x"},  # PySlowFast
        lambda sd: {"model": sd},
        lambda sd: {"state_dict_ema": sd},
        lambda sd: {"module." + k: v for k, v in sd.items()},  # DataParallel / DDP
        lambda sd: {"_orig_mod." + k: v for k, v in sd.items()},  # torch.compile
        lambda sd: {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}},
    ],
    ids=["plain", "state_dict", "model_state", "model", "state_dict_ema", "module.", "_orig_mod.", "nested"],
)
def test_common_wrappers_and_prefixes(tmp_path, wrap):
    sd = _weights()
    path = tmp_path / "w.pth"
    torch.save(wrap(sd), path)
    model = load_model(path, ARCH, num_classes=4)
    assert _same_weights(model, sd)


def test_safetensors(tmp_path):
    sd = _weights()
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    assert _same_weights(load_model(path, ARCH, num_classes=4), sd)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(VaredError, match="not a readable .safetensors"):
        read_checkpoint(path)


def test_whole_pickled_model_loads_its_weights_without_its_code(tmp_path):
    model = tiny()
    path = tmp_path / "whole.pth"
    torch.save(model, path)
    raw = read_raw_checkpoint(path)
    assert "vared_convert.baseline.TinyC3D" in raw.stand_ins and not isinstance(raw.content, torch.nn.Module)
    assert _same_weights(load_model(path, ARCH, num_classes=4), model.state_dict())
    loaded = load_model(path, ARCH, num_classes=4, trust_pickle=True)
    assert _same_weights(loaded, model.state_dict())


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": _RunsCode(marker)}, fh)
    assert read_raw_checkpoint(path).stand_ins == ["posix.system"]
    with pytest.raises(VaredError, match="pickled posix.system, read as an inert stand-in.*--trust-pickle"):
        load_model(path, ARCH)
    assert not marker.exists()
    torch.save({"state_dict": _RunsCode(marker)}, path)  # the zip-based format too
    with pytest.raises(VaredError, match="system"):
        load_model(path, ARCH)
    assert not marker.exists()


def test_bad_files(tmp_path):
    with pytest.raises(VaredError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pth")
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(VaredError, match="empty file"):
        read_checkpoint(empty)
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")
    with pytest.raises(VaredError, match="not a"):
        read_checkpoint(text)
    good = tmp_path / "good.pth"
    torch.save(_weights(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VaredError, match="truncated or corrupt"):
        read_checkpoint(truncated)
    with pytest.raises(VaredError, match="directory"):
        read_checkpoint(tmp_path)


def test_mismatched_keys_are_listed(tmp_path):
    sd = _weights()
    sd["extra.weight"] = torch.zeros(1)
    del sd["fc.weight"], sd["block1.0.weight"]
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(VaredError) as info:
        load_model(path, ARCH, num_classes=4)
    message = str(info.value)
    assert "2 missing keys" in message and "fc.weight" in message and "block1.0.weight" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "\n" not in message


def test_head_mismatch_suggests_num_classes(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(tiny(num_classes=7).state_dict(), path)
    with pytest.raises(VaredError, match="--num-classes 7"):
        load_model(path, ARCH, num_classes=4)


def test_no_weights_inside(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(VaredError, match="no weights found"):
        load_model(path, ARCH)
    with pytest.raises(VaredError, match="no weights"):
        extract_state_dict([1, 2])


def test_plain_checkpoint_needs_arch(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(_weights(), path)
    with pytest.raises(VaredError, match="--arch"):
        load_model(path)


def test_vared_checkpoint_round_trip_keeps_class_names(tmp_path):
    model = tiny()
    model.vared_info = None
    result = convert(model, (3, 8, 32, 32), arch=ArchSpec(ARCH, 4), class_names=["a", "b", "c", "d"])
    path = save_model(result.model, tmp_path / "m.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["class_names"] == ["a", "b", "c", "d"]
    assert raw["recipe"]["input_shape"] == [3, 8, 32, 32]
    with pytest.raises(VaredError, match="user code .*models_for_tests:tiny.* name it with --arch"):
        load_model(path)  # its architecture is the user's code: built only when named
    loaded = load_model(path, ARCH)
    assert loaded.vared_info.class_names == ["a", "b", "c", "d"]
    assert [layer.name for layer in loaded.vared_info.recipe.layers] == [d.name for d in result.report.converted]
    with pytest.raises(VaredError, match="exists"):
        save_model(result.model, path)
    save_model(result.model, path, force=True)


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.pth"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target, force=True) as tmp:
            tmp.write_bytes(b"new")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_an_interrupt_right_after_a_temporary_file_is_created_leaves_nothing(tmp_path, monkeypatch):
    """A signal raised as an exception (Ctrl-C, or SIGTERM in the CLI) can land between any two bytecodes: right
    after the output's temporary file or the folder probe's file is created is the narrowest place; both must
    still be removed."""
    import vared_convert.files as files

    create = files._create
    for stage in ("probe", "output"):
        def interrupted(path, stage=stage):
            create(path)
            if path.name.startswith(".vared-probe.") == (stage == "probe"):
                raise KeyboardInterrupt

        monkeypatch.setattr(files, "_create", interrupted)
        with pytest.raises(KeyboardInterrupt):
            with atomic_output(tmp_path / "out.pth") as tmp:
                tmp.write_bytes(b"never")
        assert list(tmp_path.iterdir()) == [], stage
