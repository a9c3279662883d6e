"""Reading the checkpoints people hold, and the safe self-describing format vared writes.

Inputs: a plain ``state_dict``; the usual wrappers (``state_dict``, ``model_state``, ``model``, ``module``,
``state_dict_ema``); keys under a prefix (``module.``, ``backbone.``, ..., see :mod:`~vared_convert.keys`);
``.safetensors``. Tensors load with ``torch.load(weights_only=True)``; other pickled objects (training metadata,
a whole pickled model) are read as inert stand-ins (:mod:`~vared_convert.pickles`), and loaded themselves only
with ``trust_pickle=True``.

Output: a dict of plain data and tensors (loads with ``weights_only=True``)::

    {"format": "vared", "format_version": 1, "arch": {...}, "recipe": {...} | None,
     "class_names": [...] | None, "state_dict": {...}}
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .arch import ArchSpec, build_model, is_registered
from .errors import NotConvertedError, UntrustedArchError, VaredError
from .files import atomic_output
from .keys import KeyRule, apply_key_map, fit_keys, listing
from .pickles import load_without_objects, module_state_dict, stand_in_name
from .recipe import ModelInfo, Recipe, apply_recipe, model_info

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "read_checkpoint",
    "read_raw_checkpoint",
    "RawCheckpoint",
    "LoadReport",
    "load_plain_checkpoint",
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


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class RawCheckpoint:
    """A checkpoint file's content as read, and the pickled objects read as inert stand-ins instead."""

    content: Any
    stand_ins: list[str] = field(default_factory=list)  # the globals the file names, most used first
    missing_module: str | None = None  # with trust_pickle: the module a full load could not import

    def describe(self) -> str | None:
        """One line on the objects that were not loaded, ``None`` when there were none."""
        if not self.stand_ins:
            return None
        why = (f"module {self.missing_module!r} is not installed, so " if self.missing_module else "")
        return (f"{why}pickled objects were read as inert stand-ins, without running their code "
                f"({listing(self.stand_ins, 3)})")


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> Any:
    """Load a checkpoint file's raw content safely; every failure becomes a one-line :class:`VaredError`."""
    return read_raw_checkpoint(path, trust_pickle).content


def read_raw_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> RawCheckpoint:
    """Load a checkpoint file's content safely, as a :class:`RawCheckpoint`.

    Tensors and plain containers load with ``torch.load(weights_only=True)``; a file that also pickles other
    objects (training metadata, a whole model) is read with those objects replaced by inert stand-ins
    (:mod:`~vared_convert.pickles`), so its tensors come out and nothing from it runs. ``trust_pickle`` loads
    the objects themselves (running the code they name); one whose module is not installed is read as with
    stand-ins, naming the module. Every failure becomes a one-line :class:`VaredError`.
    """
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
            return RawCheckpoint(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise VaredError(f"{path}: not a readable .safetensors file ({_first_line(exc)})") from exc
    try:
        return RawCheckpoint(torch.load(path, map_location="cpu", weights_only=not trust_pickle))
    except (ModuleNotFoundError, AttributeError) as exc:
        if not trust_pickle:
            raise VaredError(f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)})") from exc
        missing = exc.name if isinstance(exc, ModuleNotFoundError) else _first_line(exc)
        return _read_without_objects(path, missing)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and _is_pickle_or_torch_zip(path):
            return _read_without_objects(path)
        raise VaredError(f"{path}: not a PyTorch checkpoint ({_first_line(exc)})") from exc
    except Exception as exc:  # garbage bytes make the unpickler fail in many ways; all mean the same to a user
        raise VaredError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt ({_first_line(exc)})") from exc


def _read_without_objects(path: Path, missing_module: str | None = None) -> RawCheckpoint:
    try:
        content, replaced = load_without_objects(path)
    except ValueError as exc:
        raise VaredError(f"{path}: {exc}") from exc
    except Exception as exc:  # as above: a file the unpickler cannot finish
        raise VaredError(f"{path}: not a readable PyTorch checkpoint, truncated or corrupt "
                         f"({_first_line(exc)})") from exc
    return RawCheckpoint(content, replaced, missing_module)


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


def _weights_in(obj: Any) -> dict[str, torch.Tensor] | None:
    """The weights ``obj`` holds: a state_dict, a pickled model, or a pickled model read as a stand-in."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return dict(obj)
    return module_state_dict(obj) or None


def extract_state_dict(obj: Any) -> tuple[dict[str, torch.Tensor], str]:
    """Find the weights in a loaded checkpoint; returns ``(state_dict, where)``, keys as stored (see
    :func:`~vared_convert.keys.fit_keys` for mapping them onto a network)."""
    found = _weights_in(obj)
    if found is not None:
        return found, ("state_dict" if _is_state_dict(obj) else "pickled model")
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = _weights_in(obj.get(key))
            if inner is not None:
                return inner, f"[{key!r}]" + ("" if _is_state_dict(obj.get(key)) else " (pickled model)")
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        objects = sorted({f"[{k!r}] is a pickled {n}" for k, v in obj.items() if (n := stand_in_name(v))})
        unread = (f"; {', '.join(objects[:3])}, read as an inert stand-in (if you trust the file's source, "
                  "--trust-pickle loads it)") if objects else ""
        raise VaredError(f"no weights found: top-level keys are {keys}; expected a state_dict or one of "
                         f"{WRAPPER_KEYS}{unread}")
    what = stand_in_name(obj) or type(obj).__name__
    raise VaredError(f"no weights found: the file holds a {what}, not a state_dict")


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
        problems.append(f"{len(missing)} missing keys ({listing(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({listing(unexpected)})")
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
        model = apply_recipe(model, recipe)
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
    key_map: Sequence[KeyRule] = (),
) -> nn.Module:
    """Rebuild a model from a checkpoint, in eval mode, with its :class:`ModelInfo` as ``model.vared_info``.

    A vared checkpoint describes itself; if its architecture is user code (``module.path:factory``), that code
    runs only when ``arch`` names it. Any other checkpoint needs ``arch`` (and ``num_classes`` when the head
    differs from the architecture's default); the result is then the plain, unconverted network. ``key_map``
    rewrites a plain checkpoint's key prefixes first (:func:`~vared_convert.keys.apply_key_map`).
    """
    raw = read_raw_checkpoint(path, trust_pickle=trust_pickle)
    return model_from_checkpoint(raw, str(path), arch, num_classes, class_names, key_map)


def model_from_checkpoint(
    raw: Any,
    source: str,
    arch: str | ArchSpec | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    key_map: Sequence[KeyRule] = (),
) -> nn.Module:
    """:func:`load_model` on a checkpoint's content already read (:func:`read_checkpoint` or
    :func:`read_raw_checkpoint`)."""
    content = raw.content if isinstance(raw, RawCheckpoint) else raw
    if isinstance(content, Mapping) and content.get("format") == "vared-train" and is_vared_checkpoint(
            content.get("model")):
        content = content["model"]  # a finetune run's last.pth: its model
    if is_vared_checkpoint(content):
        if key_map:
            raise VaredError(f"{source}: a vared model file, whose keys are vared's own: --key-map is for plain "
                             "checkpoints")
        if isinstance(arch, str) and num_classes is not None:
            arch = ArchSpec(arch, num_classes)
        model = model_from_payload(content, source, arch=arch)
        if class_names and not model.vared_info.class_names:
            model.vared_info.class_names = list(class_names)
        return model
    if arch is None:
        note = raw.describe() if isinstance(raw, RawCheckpoint) else None
        raise NotConvertedError(
            f"{source}: a plain checkpoint; say which network it is with --arch (e.g. torchvision:r3d_18)"
            + (f"; {note}" if note else "")
        )
    return load_plain_checkpoint(raw, source, arch, num_classes, class_names=class_names, key_map=key_map)[0]


@dataclass
class LoadReport:
    """How a plain checkpoint's weights were read: where in the file, as which architecture (and whether it was
    recognised from the weights), which key prefixes were rewritten, which pickled objects were stand-ins."""

    where: str
    arch: str
    num_classes: int | None
    recognised: str | None = None
    keys: str | None = None
    stand_ins: str | None = None

    def lines(self) -> list[str]:
        """The report's one-line notes, for people."""
        return [text for text in (self.recognised, self.keys, self.stand_ins) if text]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_plain_checkpoint(
    raw: RawCheckpoint | Any,
    source: str,
    arch: str | ArchSpec | None = None,
    num_classes: int | None = None,
    *,
    class_names: list[str] | None = None,
    key_map: Sequence[KeyRule] = (),
    input_shape: Sequence[int] | None = None,
) -> tuple[nn.Module, LoadReport]:
    """Build the network of a plain (not vared) checkpoint and load its weights strictly.

    ``arch`` names the network; ``None`` recognises a registry architecture from the weights
    (:func:`~vared_convert.recognize.recognise`; ``input_shape`` and the file's name choose among architectures
    with the same weights). ``key_map`` rewrites key prefixes first; then the prefix rewrites that map the keys
    onto the network are found (:func:`~vared_convert.keys.fit_keys`). Keys still missing or unexpected are one
    :class:`VaredError` line.
    """
    if not isinstance(raw, RawCheckpoint):
        raw = RawCheckpoint(raw)
    try:
        return _load_plain(raw, source, arch, num_classes, class_names, key_map, input_shape)
    except VaredError as exc:
        note = raw.describe()
        if note and exc.args:  # what did not load may be why: say it in the same line
            exc.args = (f"{exc.args[0]}; {note}", *exc.args[1:])
        raise


def _load_plain(raw: RawCheckpoint, source: str, arch: str | ArchSpec | None, num_classes: int | None,
                class_names: list[str] | None, key_map: Sequence[KeyRule],
                input_shape: Sequence[int] | None) -> tuple[nn.Module, LoadReport]:
    state_dict, where = extract_state_dict(raw.content)
    if key_map:
        state_dict = apply_key_map(state_dict, key_map)
    recognised = None
    if arch is None:
        from .recognize import carried_config, recognise

        found = recognise(state_dict, source, input_shape=input_shape, file_name=source,
                          hint=carried_config(raw.content))
        spec = ArchSpec(found.spec.name, num_classes if num_classes is not None else found.spec.num_classes)
        fit, recognised = found.fit, found.describe()
        model = build_model(spec)
    else:
        spec = arch if isinstance(arch, ArchSpec) else ArchSpec(arch, num_classes)
        model = build_model(spec)
        fit = fit_keys(state_dict, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    load_weights(model, fit.state_dict, spec.name)
    content = raw.content
    names = class_names or (content.get("class_names") if isinstance(content, Mapping) else None)
    model.vared_info = ModelInfo(spec, None, [str(n) for n in names] if isinstance(names, list) else None)
    report = LoadReport(where, spec.name, spec.num_classes, recognised, fit.describe(), raw.describe())
    return model.eval(), report
