"""Recognise a plain checkpoint's architecture from its weights: key names and shapes, and the class count from
its classifier. Nothing from the file is imported or run: only registry architectures are built, on the meta
device (no memory, no initialisation work), to read their keys and shapes.

An architecture is recognised when the checkpoint's keys, after the prefix rewrites of
:func:`~vared_convert.keys.fit_keys`, are exactly its keys and every shape is its shape, the classifier's class
count aside. Some registry architectures have the same weights and differ only in their usual clip
(``x3d_xs``, ``x3d_s``, ``x3d_m``): the one whose clip is ``--input-shape``, else the one the file's name
names, else the documented default (``x3d_m``).
"""

from __future__ import annotations

import functools
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch

from .arch import KNOWN_ARCHS, ArchSpec, build_model, default_input_shape
from .errors import UnrecognisedArchError, VaredError
from .keys import KeyFit, Shape, fit_keys, is_optional_key, shapes_fit
from .pickles import StandIn

__all__ = ["ArchSignature", "Recognition", "signature", "recognise", "carried_config"]

# registry architectures with the same weights: pytorchvideo builds these X3Ds for different clips, which only
# size the head's pool (global in vared); tests check that these are the same and that no others are
SAME_WEIGHTS = (("pytorchvideo:x3d_xs", "pytorchvideo:x3d_s", "pytorchvideo:x3d_m"),)
_TWIN_OF = {name: group[-1] for group in SAME_WEIGHTS for name in group}  # the one whose signature is built
# in each group, the one chosen when neither --input-shape nor the file's name decides
TWIN_DEFAULTS = ("pytorchvideo:x3d_m",)
NEAREST_SHOWN = 3
PROBE_CLASSES = 1009  # the class count the signatures are built with: a prime no layer has as its width


@dataclass(frozen=True)
class ArchSignature:
    """A registry architecture's keys and shapes (its head built for :data:`PROBE_CLASSES` classes) and its
    classifier's keys."""

    name: str
    shapes: Mapping[str, Shape]
    head: tuple[str, ...]  # keys whose first dimension is the class count

    def key_set(self) -> frozenset[tuple[str, Shape]]:
        return frozenset((k, s) for k, s in self.shapes.items() if k not in self.head and not is_optional_key(k))


def _meta_shapes(spec: ArchSpec) -> dict[str, Shape]:
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(spec)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@functools.lru_cache(maxsize=None)
def signature(name: str) -> ArchSignature:
    """The :class:`ArchSignature` of a registry architecture, built on the meta device (cached)."""
    shapes = _meta_shapes(ArchSpec(name, PROBE_CLASSES))
    head = tuple(k for k, s in shapes.items() if s[:1] == (PROBE_CLASSES,))
    return ArchSignature(name, shapes, head)


def _likely_order(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Registry architectures, the likelier first (pytorchvideo names its stages ``blocks.N``): only the order in
    which they are tried, so a typical checkpoint builds a few signatures, not all."""
    pytorchvideo_style = any(re.search(r"(^|\.)blocks\.\d+\.", k) for k in state_dict)
    return sorted(KNOWN_ARCHS, key=lambda n: (n.startswith("pytorchvideo:") != pytorchvideo_style))


def _signatures(names: Sequence[str]) -> Iterator[ArchSignature | str]:
    """The signature of each architecture that can be built here, or the name of a source that cannot (not
    installed), once; one architecture per group of :data:`SAME_WEIGHTS`."""
    absent = set()
    for name in names:
        source = name.split(":")[0]
        if source in absent or _TWIN_OF.get(name, name) != name:
            continue
        try:
            yield signature(name)
        except VaredError as exc:  # pytorchvideo not installed: none of its architectures can be built
            if "pip install" in str(exc):
                absent.add(source)
                yield source


@dataclass
class _Match:
    sig: ArchSignature
    fit: KeyFit
    matched: int  # keys at the architecture's name and shape (the classifier's class count aside)
    total: int
    exact: bool
    num_classes: int | None


def _match(state_dict: Mapping[str, torch.Tensor], sig: ArchSignature) -> _Match:
    fit = fit_keys(state_dict, sig.shapes)
    matched = 0
    for key, value in fit.state_dict.items():
        want = sig.shapes.get(key)
        if want is None or is_optional_key(key):
            continue
        shape = tuple(value.shape)
        matched += shape == want or (key in sig.head and shapes_fit(shape, want))
    counts = {int(fit.state_dict[k].shape[0]) for k in sig.head if k in fit.state_dict and fit.state_dict[k].dim()}
    total = max(sum(not is_optional_key(k) for k in sig.shapes), sum(not is_optional_key(k) for k in state_dict))
    exact = matched == total and not fit.missing and not fit.unexpected and len(counts) <= 1
    return _Match(sig, fit, matched, total, exact, counts.pop() if len(counts) == 1 else None)


@dataclass
class Recognition:
    """What :func:`recognise` found: the architecture to build, the weights under its key names, and why."""

    spec: ArchSpec
    fit: KeyFit
    twins: list[str]  # other registry architectures with the same weights
    chosen_by: str | None  # what picked ``spec`` among its twins

    def describe(self) -> str:
        text = f"recognised {self.spec.name} (num_classes={self.spec.num_classes}) from its weights"
        if self.twins:
            short = ", ".join(t.split(":")[1] for t in self.twins)
            text += f"; {short} have the same weights: chose {self.spec.name.split(':')[1]} {self.chosen_by}"
        return text


def _pick_twin(names: list[str], input_shape: Sequence[int] | None, file_name: str | None) -> tuple[str, str]:
    if input_shape is not None:
        by_shape = [n for n in names if default_input_shape(n) == tuple(input_shape)]
        if len(by_shape) == 1:
            return by_shape[0], "by --input-shape (its usual clip)"
    if file_name:
        stem = Path(file_name).name.lower().replace("-", "_")
        named = [n for n in names if re.search(rf"(?<![a-z0-9]){re.escape(n.split(':')[1])}(?![a-z0-9])", stem)]
        if len(named) == 1:
            return named[0], "by the file's name"
    default = next(n for n in names if n in TWIN_DEFAULTS)
    return default, "(the default; name another with --arch or --input-shape)"


def _recognised(match: _Match, input_shape: Sequence[int] | None, file_name: str | None) -> Recognition:
    names = next((list(group) for group in SAME_WEIGHTS if match.sig.name in group), [match.sig.name])
    name, why = _pick_twin(names, input_shape, file_name) if len(names) > 1 else (names[0], None)
    return Recognition(ArchSpec(name, match.num_classes), match.fit, [n for n in names if n != name], why)


def recognise(
    state_dict: Mapping[str, torch.Tensor],
    source: str = "checkpoint",
    *,
    input_shape: Sequence[int] | None = None,
    file_name: str | None = None,
    hint: str | None = None,
) -> Recognition:
    """Find the registry architecture whose weights ``state_dict`` holds (see the module docstring).

    Architectures are tried the likelier first and the first exact match is the answer (two different registry
    networks cannot both match exactly; those with the same weights are :data:`SAME_WEIGHTS`). Raises
    :class:`UnrecognisedArchError` naming the nearest architectures (by the share of keys that match) when none
    matches; ``hint`` (e.g. :func:`carried_config`) is added to it.
    """
    matches, absent = [], []
    for found in _signatures(_likely_order(state_dict)):
        if isinstance(found, str):
            absent.append(found)
            continue
        match = _match(state_dict, found)
        if match.exact:
            return _recognised(match, input_shape, file_name)
        matches.append(match)
    nearest = sorted(matches, key=lambda m: -m.matched / m.total)[:NEAREST_SHOWN]
    shown = ", ".join(f"{m.sig.name} {100 * m.matched / m.total:.0f}%" for m in nearest
                      if m.matched >= 0.05 * m.total)
    text = f"{source}: the weights match no registry architecture"
    text += f" (share of keys that match: {shown})" if shown else " (no architecture shares its keys)"
    if absent:
        text += f"; {', '.join(absent)} is not installed, so its architectures were not tried"
    if hint:
        text += f"; {hint}"
    raise UnrecognisedArchError(text + "; name the network with --arch (e.g. torchvision:r3d_18, or "
                                "mypkg.models:build for your own code)")


# ---------------------------------------------------------------------------------------------- carried configs
def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, StandIn):  # a pickled config object (yacs CfgNode is a dict subclass): its items
        return obj.items.get(key)
    return obj.get(key) if isinstance(obj, Mapping) else None


def _yaml_value(text: str, key: str) -> str | None:
    found = re.search(rf"^\s+{key}:\s*['\"]?([\w.\-]+)", text, re.M)
    return found.group(1) if found else None


def _python_type(text: str, field: str) -> str | None:
    found = re.search(rf"\b{field}\s*=\s*dict\(\s*type\s*=\s*['\"]([\w.\-]+)['\"]", text)
    return found.group(1) if found else None


def carried_config(raw: Any) -> str | None:
    """A hint from the config a training checkpoint carries (PySlowFast's ``cfg``, mmengine/mmcv's ``meta``), read
    as data; ``None`` when it carries none."""
    cfg = _get(raw, "cfg")
    if cfg is not None:
        if isinstance(cfg, str):
            values = {k: _yaml_value(cfg, k) for k in ("ARCH", "MODEL_NAME", "NUM_CLASSES")}
        else:
            model = _get(cfg, "MODEL")
            values = {k: _get(model, k) for k in ("ARCH", "MODEL_NAME", "NUM_CLASSES")}
        said = ", ".join(f"MODEL.{k}={v}" for k, v in values.items() if isinstance(v, (str, int)))
        return "the checkpoint carries a PySlowFast cfg" + (f": {said}" if said else "")
    meta = _get(raw, "meta")
    if meta is not None:
        text = _get(meta, "cfg") or _get(meta, "config")
        if isinstance(text, str):
            said = ", ".join(f"{f} type={t}" for f in ("model", "backbone", "cls_head")
                             if (t := _python_type(text, f)))
            return "the checkpoint carries an mmengine config" + (f": {said}" if said else "")
        return "the checkpoint carries an mmengine meta entry (no config in it)"
    return None
