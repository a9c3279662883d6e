"""Checkpoint key names: the user's prefix rewrites (``--key-map OLD=NEW``) and the prefix rewrites that map a
checkpoint's keys onto an architecture's, found from the keys themselves.

Training tools save the network under a prefix (``module.`` for DataParallel, ``_orig_mod.`` for
``torch.compile``, ``model.``, ``encoder.``), or split it (mmaction2: ``backbone.*`` and ``cls_head.fc_cls.*``).
:func:`fit_keys` finds the rewrites that map a checkpoint's keys onto a network's, in two steps:

1. strip a prefix: the one that maps the most remaining keys onto unclaimed keys of the network, repeated while
   one maps any (``module.``, ``module.backbone.``, ``backbone.``);
2. rename a whole module: a checkpoint module whose leaves (``weight``, ``bias``, ...) and shapes -- the first
   dimension aside, which is a classifier's class count -- match exactly one remaining module of the network
   (``cls_head.fc_cls.`` -> ``fc.``).

What is left is reported as missing and unexpected keys. timm's ``clean_state_dict`` and mmengine's
``revise_keys`` do the same with fixed rules.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .errors import ArgumentError

__all__ = ["KeyRule", "KeyFit", "parse_key_map", "apply_key_map", "fit_keys", "is_optional_key", "listing",
           "shapes_fit"]

KeyRule = tuple[str, str]  # (old prefix, new prefix)
Shape = tuple[int, ...]
MAX_RENAMED_MODULES = 4  # step 2 renames only a few modules: heads and necks, not a whole network


def is_optional_key(key: str) -> bool:
    """Keys a network may or may not save (BatchNorm's step counter): never reported missing or unexpected."""
    return key.endswith("num_batches_tracked")


def listing(keys: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` keys and how many more."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def parse_key_map(items: Sequence[str]) -> list[KeyRule]:
    """``--key-map OLD=NEW`` values as ``(old, new)`` prefix rules; ``NEW`` may be empty (strip ``OLD``)."""
    rules = []
    for item in items:
        old, sep, new = str(item).partition("=")
        if not sep or not old or "=" in new or any(c.isspace() for c in item):
            raise ArgumentError("--key-map", str(item), "expected OLD=NEW: a key prefix and what replaces it "
                                "(NEW may be empty), e.g. --key-map backbone.= or --key-map cls_head.fc_cls.=fc.")
        rules.append((old, new))
    return rules


def _prefixes_of(keys: Sequence[str], limit: int = 4) -> str:
    counts = Counter(k.split(".")[0] + ("." if "." in k else "") for k in keys)
    return ", ".join(p for p, _ in counts.most_common(limit))


def apply_key_map(state_dict: Mapping[str, torch.Tensor], rules: Sequence[KeyRule]) -> dict[str, torch.Tensor]:
    """Rewrite each key by the first rule whose ``old`` prefix it starts with. A rule that matches no key, or
    rewrites that give two tensors one name, are an :class:`ArgumentError`."""
    out: dict[str, torch.Tensor] = {}
    used = [0] * len(rules)
    for key, value in state_dict.items():
        new_key = key
        for i, (old, new) in enumerate(rules):
            if key.startswith(old):
                new_key, used[i] = new + key[len(old):], used[i] + 1
                break
        if new_key in out:
            raise ArgumentError("--key-map", " ".join(f"{o}={n}" for o, n in rules),
                                f"gives two tensors the name {new_key!r}")
        out[new_key] = value
    for (old, new), n in zip(rules, used):
        if not n:
            raise ArgumentError("--key-map", f"{old}={new}", f"no key starts with {old!r} (the checkpoint's keys "
                                f"start with {_prefixes_of(list(state_dict))})")
    return out


@dataclass
class KeyFit:
    """The checkpoint's weights under the network's key names, the rewrites that did it, and what is left."""

    state_dict: dict[str, torch.Tensor]
    rewrites: list[tuple[str, str, int]] = field(default_factory=list)  # (old prefix, new prefix, keys)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def describe(self) -> str | None:
        """One line: the rewrites applied, or ``None`` when the keys fitted as they were."""
        if not self.rewrites:
            return None
        parts = [f"{old!r} -> {new!r} ({n} keys)" if new else f"stripped {old!r} ({n} keys)"
                 for old, new, n in self.rewrites]
        return "checkpoint keys: " + ", ".join(parts)

    def problems(self) -> str | None:
        """One line: the missing and unexpected keys left, first few and counts; ``None`` when none is left."""
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} missing keys ({listing(self.missing)})")
        if self.unexpected:
            found.append(f"{len(self.unexpected)} unexpected keys ({listing(self.unexpected)})")
        return "; ".join(found) or None


def _module_of(key: str) -> tuple[str, str]:
    module, _, leaf = key.rpartition(".")
    return module, leaf


def shapes_fit(a: Shape, b: Shape) -> bool:
    """Same shape, or the same but for the first dimension (a classifier with another class count)."""
    return len(a) == len(b) and a[1:] == b[1:]


def fit_keys(state_dict: Mapping[str, torch.Tensor], target: Mapping[str, Shape]) -> KeyFit:
    """Map ``state_dict``'s keys onto ``target``'s (the network's keys and shapes) by the rewrites described in
    the module docstring; keys that fit as they are stay. Shapes are not checked in step 1 (a wrong shape is
    reported when the weights are loaded)."""
    assigned: dict[str, str] = {k: k for k in state_dict if k in target}
    claimed = set(assigned.values())
    rewrites: list[tuple[str, str, int]] = []

    while True:  # step 1: strip the prefix that maps the most keys
        counts: Counter = Counter()
        for key in state_dict:
            if key in assigned:
                continue
            parts = key.split(".")
            for i in range(1, len(parts)):
                prefix = ".".join(parts[:i]) + "."
                rest = key[len(prefix):]
                if rest in target and rest not in claimed:
                    counts[prefix] += 1
        if not counts:
            break
        prefix, _ = max(counts.items(), key=lambda kv: (kv[1], len(kv[0])))
        n = 0
        for key in state_dict:
            rest = key[len(prefix):]
            if key not in assigned and key.startswith(prefix) and rest in target and rest not in claimed:
                assigned[key], n = rest, n + 1
                claimed.add(rest)
        rewrites.append((prefix, "", n))

    # step 2: rename whole modules whose leaves and shapes match exactly one remaining module of the network
    left: dict[str, dict[str, Shape]] = defaultdict(dict)
    for key, value in state_dict.items():
        if key not in assigned and not is_optional_key(key):
            module, leaf = _module_of(key)
            left[module][leaf] = tuple(value.shape)
    free: dict[str, dict[str, Shape]] = defaultdict(dict)
    for key, shape in target.items():
        if key not in claimed and not is_optional_key(key):
            module, leaf = _module_of(key)
            free[module][leaf] = tuple(shape)

    def fits(a: dict[str, Shape], b: dict[str, Shape]) -> bool:
        return set(a) == set(b) and all(shapes_fit(a[leaf], b[leaf]) for leaf in a)

    if 0 < len(left) <= MAX_RENAMED_MODULES and 0 < len(free) <= MAX_RENAMED_MODULES:
        for module, leaves in left.items():
            matches = [m for m, other in free.items() if fits(leaves, other)]
            if len(matches) != 1 or sum(fits(v, free[matches[0]]) for v in left.values()) != 1:
                continue
            old, new = (module + "." if module else ""), (matches[0] + "." if matches[0] else "")
            n = 0
            for key in state_dict:
                if key not in assigned and key.startswith(old) and key.count(".") == old.count("."):
                    name = new + key[len(old):]
                    if name in target and name not in claimed:
                        assigned[key], n = name, n + 1
                        claimed.add(name)
            rewrites.append((old, new, n))

    fitted = {assigned.get(k, k): v for k, v in state_dict.items()}
    missing = [k for k in target if k not in claimed and not is_optional_key(k)]
    unexpected = [k for k in state_dict if k not in assigned and not is_optional_key(k)]
    for key in [k for k in state_dict if k not in assigned and is_optional_key(k)]:
        del fitted[key]  # a step counter the network does not keep
    return KeyFit(fitted, rewrites, missing, unexpected)

