"""Reading the checkpoints people hold, and the safe self-describing format vared writes.

Inputs: a plain ``state_dict``; the usual wrappers (``state_dict``, ``model_state``, ``model``, ``module``,
``state_dict_ema``) and prefixes (``module.``, ``_orig_mod.``); ``.safetensors``. Everything loads with
``torch.load(weights_only=True)``; a pickled whole model only with ``trust_pickle=True``.

Output: a dict of plain data and tensors (loads with ``weights_only=True``)::

    {"format": "vared", "format_version": 1, "arch": {...}, "recipe": {...} | None,
     "class_names": [...] | None, "state_dict": {...}}
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .arch import ArchSpec, build_model, is_registered
from .errors import NotConvertedError, UntrustedArchError, VaredError
from .files import atomic_output
from .recipe import ModelInfo, Recipe, apply_recipe, model_info

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "read_checkpoint",
    "extract_state_dict",
    "load_weights",
    "load_model",
    "model_from_checkpoint",
    "save_model",
    "model_payload",
    "model_from_payload",
    "save_torch_file",
]

FORMAT, FORMAT_VERSION = "vared", 1
WRAPPER_KEYS = ("state_dict", "model_state", "model", "module", "net", "state_dict_ema", "model_ema")
STRIPPED_PREFIXES = ("module.", "_orig_mod.")


# ---------------------------------------------------------------------------------------------- reading
def _describe_pickle_refusal(exc: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" (it references {found.group(1)})" if found else ""
    return (
        f"holds pickled Python objects{what}, which could run code when loaded; "
        "if you trust its source, rerun with --trust-pickle"
    )


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """Load a checkpoint file's raw content safely; every failure becomes a one-line :class:`VaredError`."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise VaredError(f"{path}: a symbolic link that leads nowhere (broken, or a loop)")
        raise VaredError(f"{path}: no such file")
    if path.is_dir():
        raise VaredError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise VaredError(f"{path}: empty file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise VaredError(f"{path}: not a readable .safetensors file ({_first_line(exc)})") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and _is_pickle_or_torch_zip(path):
            raise VaredError(f"{path}: {_describe_pickle_refusal(exc)}") from exc
        raise VaredError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from exc
    except Exception as exc:  # garbage bytes make the unpickler fail in many ways; all mean the same to a user
        raise VaredError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_first_line(exc)})") from exc


def _is_pickle_or_torch_zip(path: Path) -> bool:
    """True for files that are a pickle (protocol >= 2) or torch.save's zip: what the safe loader refused."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head[:1] == b"\x80" or head == b"PK"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = dict(state_dict)
    changed = True
    while changed:
        changed = False
        for prefix in STRIPPED_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix) :]: v for k, v in sd.items()}
                changed = True
    return sd


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Find the weights in a loaded checkpoint; returns ``(state_dict, where)`` with prefixes stripped."""
    if isinstance(obj, nn.Module):
        return _strip_prefixes(obj.state_dict()), "pickled model"
    if _is_state_dict(obj):
        return _strip_prefixes(obj), "state_dict"
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return _strip_prefixes(inner.state_dict()), f"[{key!r}] (pickled model)"
            if _is_state_dict(inner):
                return _strip_prefixes(inner), f"[{key!r}]"
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise VaredError(f"no weights found: top-level keys are {keys}; expected a state_dict or one of {WRAPPER_KEYS}")
    raise VaredError(f"no weights found: the file holds a {type(obj).__name__}, not a state_dict")


def _listing(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# Buffers a checkpoint may lack: counters, and the gates' calibration offsets (zero: not calibrated)
OPTIONAL_KEYS = ("num_batches_tracked", ".gate.logit_offset")


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], arch_name: str = "the model") -> None:
    """Load ``state_dict`` strictly, explaining mismatches (first keys and counts) in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and not k.endswith(OPTIONAL_KEYS)]
    unexpected = [k for k in state_dict if k not in own]
    wrong_shape = [k for k in state_dict if k in own and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys ({_listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_listing(unexpected)})")
    if wrong_shape:
        k = wrong_shape[0]
        hint = ""
        ckpt_shape, own_shape = tuple(state_dict[k].shape), tuple(own[k].shape)
        if len(ckpt_shape) in (1, 2) and ckpt_shape[1:] == own_shape[1:]:
            hint = f"; if that is the classifier, pass --num-classes {ckpt_shape[0]}"
        problems.append(
            f"{len(wrong_shape)} keys with another shape ({k}: {ckpt_shape} in the checkpoint, {own_shape} in "
            f"the model{hint})"
        )
    if problems:
        raise VaredError(f"checkpoint does not fit {arch_name}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=False)


# ---------------------------------------------------------------------------------------------- vared format
def is_vared_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def model_payload(model: nn.Module) -> dict[str, Any]:
    """The self-describing dict of ``model`` (format, arch, recipe, class names, state_dict), all plain data."""
    info = model_info(model)
    if info is None:
        raise VaredError("the model carries no vared info (arch, recipe); build it with convert() or load_model()")
    model = getattr(model, "module", model)  # DistributedDataParallel
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": info.arch.to_dict(),
        "recipe": info.recipe.to_dict() if info.recipe is not None else None,
        "class_names": list(info.class_names) if info.class_names else None,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def save_torch_file(obj: Any, path: str | os.PathLike, force: bool = False,
                    inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically (see :func:`~vared_convert.files.atomic_output`).

    The bytes are serialised in memory and written by Python, so that a full disk is an ``OSError`` naming its
    cause (torch's own file writer reports it as an opaque ``RuntimeError``).
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_output(path, force, inputs) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def save_model(model: nn.Module, path: str | os.PathLike, force: bool = False,
               inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Write ``model`` (with its :class:`ModelInfo`) atomically in the self-describing vared format; ``path``
    must not be one of ``inputs``."""
    return save_torch_file(model_payload(model), path, force, inputs)


def _recorded(raw: Mapping[str, Any], source: str) -> tuple[ArchSpec, Recipe | None]:
    """The architecture and recipe a vared payload records, checked to be plain data of the right shape."""
    try:
        spec = ArchSpec.from_dict(raw["arch"])
        recipe = Recipe.from_dict(raw["recipe"]) if raw.get("recipe") else None
        if not isinstance(raw["state_dict"], Mapping):
            raise TypeError("state_dict is not a mapping")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise VaredError(f"{source}: a malformed vared model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(spec.name, str):
        raise VaredError(f"{source}: a malformed vared model file (architecture name {spec.name!r})")
    return spec, recipe


def _spec_to_build(recorded: ArchSpec, arch: str | ArchSpec | None, source: str) -> ArchSpec:
    """What to build for a vared file: the user's ``arch`` if given, else the recorded one if it is registered.

    A recorded ``module.path:factory`` is code the file asks to run; it is built only when the user names it.
    """
    if arch is None:
        if not is_registered(recorded.name):
            raise UntrustedArchError(
                f"{source}: its architecture is user code ({recorded.name!r}), which vared never imports or runs on "
                "a file's word; if it is code you know and trust, name it with --arch"
            )
        return recorded
    if isinstance(arch, ArchSpec):
        return arch
    same = arch == recorded.name
    return ArchSpec(arch, recorded.num_classes, dict(recorded.kwargs) if same else {})


def model_from_payload(raw: Mapping[str, Any], source: str = "checkpoint",
                       arch: str | ArchSpec | None = None) -> nn.Module:
    """Rebuild a model from a vared payload: build the architecture, re-apply the recipe, load the weights.

    The recorded architecture is built only if it is a registry one (torchvision, pytorchvideo, vared); a
    ``module.path:factory`` runs only when ``arch`` names the architecture (the user's choice, not the file's).
    """
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise VaredError(f"{source}: vared format version {version!r} is not supported (this vared reads 1)")
    recorded, recipe = _recorded(raw, source)
    spec = _spec_to_build(recorded, arch, source)
    model = build_model(spec)
    if recipe is not None:
        apply_recipe(model, recipe)
    load_weights(model, raw["state_dict"], spec.name)
    names = raw.get("class_names")
    model.vared_info = ModelInfo(spec, recipe, [str(n) for n in names] if isinstance(names, list) else None)
    return model.eval()


def load_model(
    path: str | os.PathLike,
    arch: str | ArchSpec | None = None,
    num_classes: int | None = None,
    trust_pickle: bool = False,
    class_names: list[str] | None = None,
) -> nn.Module:
    """Rebuild a model from a checkpoint, in eval mode, with its :class:`ModelInfo` as ``model.vared_info``.

    A vared checkpoint describes itself; if its architecture is user code (``module.path:factory``), that code
    runs only when ``arch`` names it. Any other checkpoint needs ``arch`` (and ``num_classes`` when the head
    differs from the architecture's default); the result is then the plain, unconverted network.
    """
    raw = read_checkpoint(path, trust_pickle=trust_pickle)
    return model_from_checkpoint(raw, str(path), arch, num_classes, class_names)


def model_from_checkpoint(
    raw: Any,
    source: str,
    arch: str | ArchSpec | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> nn.Module:
    """:func:`load_model` on a checkpoint's content already read (:func:`read_checkpoint`)."""
    if isinstance(raw, Mapping) and raw.get("format") == "vared-train" and is_vared_checkpoint(raw.get("model")):
        raw = raw["model"]  # a finetune run's last.pth: its model
    if is_vared_checkpoint(raw):
        if isinstance(arch, str) and num_classes is not None:
            arch = ArchSpec(arch, num_classes)
        model = model_from_payload(raw, source, arch=arch)
        if class_names and not model.vared_info.class_names:
            model.vared_info.class_names = list(class_names)
        return model
    if arch is None:
        raise NotConvertedError(
            f"{source}: a plain checkpoint; say which network it is with --arch (e.g. torchvision:r3d_18)"
        )
    spec = arch if isinstance(arch, ArchSpec) else ArchSpec(arch, num_classes)
    state_dict, _ = extract_state_dict(raw)
    model = build_model(spec)
    load_weights(model, state_dict, spec.name)
    names = class_names or (raw.get("class_names") if isinstance(raw, Mapping) else None)
    model.vared_info = ModelInfo(spec, None, [str(n) for n in names] if isinstance(names, list) else None)
    return model.eval()
