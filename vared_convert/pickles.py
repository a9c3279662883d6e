"""Read the tensors of a pickled checkpoint without its objects: every global the file names is replaced by an
inert stand-in, except torch's tensor rebuild functions and a few plain containers.

Training checkpoints pickle more than weights: a PySlowFast ``CfgNode``, mmengine's log buffers, numpy scalars,
a whole ``nn.Module``. ``torch.load(weights_only=True)`` refuses them, and a full load imports and runs what the
file names (and fails when that package is not installed). :func:`load_without_objects` does neither: a stand-in
records what the file asked for (its arguments, state and items) and does nothing else, so the weights come out
and nothing from the file runs. A pickled ``nn.Module`` becomes a stand-in whose recorded state still holds its
``_parameters``, ``_buffers`` and ``_modules``: :func:`module_state_dict` reads its state_dict from them.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
import types
import zipfile
from collections import Counter, OrderedDict
from typing import Any, Callable

import torch

__all__ = ["StandIn", "load_without_objects", "module_state_dict", "stand_in_name"]


class StandIn:
    """An inert replacement for an object of a class (or a call of a function) the file names.

    It keeps what unpickling gave it -- constructor arguments, ``__setstate__`` state, items and appended
    values -- and never calls anything.
    """

    _stand_in_for = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "StandIn":
        self = object.__new__(cls)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)
        object.__setattr__(self, "state", None)
        object.__setattr__(self, "items", {})
        object.__setattr__(self, "values", [])
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.values.append(value)

    def extend(self, values: Any) -> None:
        self.values.extend(values)

    def __repr__(self) -> str:
        return f"<stand-in for {self._stand_in_for}>"


def stand_in_name(obj: Any) -> str | None:
    """``module.name`` of the global a stand-in replaced, ``None`` for anything else."""
    return obj._stand_in_for if isinstance(obj, StandIn) else None


def _plain_tensor(func: Callable[..., Any], args: tuple) -> Any:
    """Call a rebuild function only if it is one of ours; a stand-in ``func`` stays a stand-in."""
    if func in _REBUILDERS.values() or (isinstance(func, type) and issubclass(func, StandIn)):
        return func(*args)
    return StandIn()


def _guarded(rebuild: Callable[..., Any]) -> Callable[..., Any]:
    """A rebuild function that gives a stand-in when its arguments are not what it needs (stand-ins themselves)."""
    def call(*args: Any) -> Any:
        try:
            return rebuild(*args)
        except (TypeError, AttributeError, ValueError, RuntimeError):
            return StandIn()
    return call


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, hooks: Any,
                       metadata: Any = None) -> torch.Tensor:
    # backward hooks are objects from the file: dropped; metadata (e.g. the conjugate bit) is torch's own
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict(), metadata)


def _rebuild_parameter(data: Any, requires_grad: bool, hooks: Any, state: Any = None) -> torch.Tensor:
    return torch.nn.Parameter(data, requires_grad) if isinstance(data, torch.Tensor) else StandIn()


def _rebuild_from_type_v2(func: Any, new_type: Any, args: tuple, state: Any) -> Any:
    # a tensor subclass (or a tensor with attributes): the plain tensor, without the subclass or its state
    return _plain_tensor(func, tuple(args))


_REBUILDERS: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _guarded(torch._utils._rebuild_tensor),
    "torch._utils._rebuild_tensor_v2": _guarded(_rebuild_tensor_v2),
    "torch._utils._rebuild_parameter": _guarded(_rebuild_parameter),
    "torch._utils._rebuild_parameter_with_state": _guarded(_rebuild_parameter),
    "torch._tensor._rebuild_from_type_v2": _guarded(_rebuild_from_type_v2),
}


def _reconstructor(cls: Any, base: Any, state: Any = None) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 objects) for stand-ins only: it never calls ``base``."""
    return cls() if isinstance(cls, type) and issubclass(cls, StandIn) else StandIn()


_PLAIN: dict[str, Any] = {
    "collections.OrderedDict": OrderedDict,
    "collections.Counter": Counter,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": bytearray,
    "builtins.complex": complex,
    "builtins.object": object,
    "_codecs.encode": lambda text, encoding="latin1": (str(text).encode(encoding) if encoding in TEXT_CODECS
                                                       else StandIn()),  # how protocol 2 writes bytes
    "copyreg._reconstructor": _reconstructor,
    "torch.Size": torch.Size,
    "torch.device": torch.device,
}
TEXT_CODECS = ("latin1", "latin-1", "utf-8", "utf8", "ascii")


def _allowed(module: str, name: str) -> Any:
    """The object behind an allowlisted global, or ``None``."""
    full = f"{module}.{name}"
    if full in _REBUILDERS:
        return _REBUILDERS[full]
    if full in _PLAIN:
        return _PLAIN[full]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    return None


def _pickle_module(replaced: Counter) -> types.SimpleNamespace:
    """A ``pickle_module`` for ``torch.load`` whose unpickler resolves globals as described above."""
    classes: dict[tuple[str, str], type] = {}

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _compat_pickle.NAME_MAPPING:  # protocol 2 names builtins as Python 2 did
                module, name = _compat_pickle.NAME_MAPPING[module, name]
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            found = _allowed(module, name)
            if found is not None:
                return found
            full = f"{module}.{name}"
            if full == "torch.storage._load_from_bytes":  # a storage in a plain pickle: torch.save bytes, read alike
                return _guarded(lambda data: torch.load(io.BytesIO(data), map_location="cpu", weights_only=False,
                                                        pickle_module=namespace))
            replaced[full] += 1
            if (module, name) not in classes:
                classes[module, name] = type(str(name), (StandIn,), {"_stand_in_for": full, "__module__": "vared"})
            return classes[module, name]

    def load(file: Any, **kwargs: Any) -> Any:
        return Unpickler(file, **kwargs).load()

    namespace = types.SimpleNamespace(Unpickler=Unpickler, load=load, __name__="vared_convert.pickles")
    return namespace


def _is_torchscript(path: str | os.PathLike) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return any(n.endswith("/constants.pkl") for n in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_without_objects(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """Unpickle a ``torch.save`` file (zip or legacy) or a plain pickle, replacing every global but the tensor
    allowlist by a :class:`StandIn`. Returns ``(content, replaced)``: ``replaced`` names each global stood in
    for, most used first.

    Raises ``ValueError`` for a TorchScript archive (which ``torch.load`` would hand to ``torch.jit.load``), and
    whatever unpickling raises for a file that is not a readable checkpoint.
    """
    if _is_torchscript(path):
        raise ValueError("a TorchScript archive (load it with torch.jit.load); vared reads state_dicts")
    replaced: Counter = Counter()
    module = _pickle_module(replaced)
    try:
        content = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except RuntimeError as exc:
        if "magic number" not in str(exc):
            raise
        replaced.clear()
        with open(path, "rb") as fh:  # a plain pickle.dump file, not torch.save's format
            content = module.load(fh)
    return content, [name for name, _ in replaced.most_common()]


MAX_MODULES = 100_000  # a pickled model with more (sub)module visits than this is not read as one


def module_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """The state_dict of a pickled ``nn.Module`` read as a stand-in (from its recorded ``_parameters``,
    ``_buffers`` and ``_modules``, as ``nn.Module.state_dict`` walks them); ``None`` if ``obj`` is not one."""
    found: dict[str, torch.Tensor] = {}
    visits = 0

    def walk(module: Any, prefix: str, ancestors: tuple[int, ...]) -> bool:
        nonlocal visits
        state = module.state if isinstance(module, StandIn) else None
        visits += 1
        if not isinstance(state, dict) or not isinstance(state.get("_parameters"), dict):
            return False
        if id(module) in ancestors or visits > MAX_MODULES:  # a cycle, or a crafted blow-up
            raise ValueError("a pickled model whose modules contain themselves")
        skip = state.get("_non_persistent_buffers_set")
        skip = skip if isinstance(skip, (set, frozenset)) else set()
        for group in ("_parameters", "_buffers"):
            for name, value in (state.get(group) or {}).items():
                if isinstance(value, torch.Tensor) and not (group == "_buffers" and name in skip):
                    found[prefix + str(name)] = value.detach()
        children = state.get("_modules")
        for name, child in (children.items() if isinstance(children, dict) else ()):
            walk(child, f"{prefix}{name}.", (*ancestors, id(module)))
        return True

    try:
        return found if walk(obj, "", ()) and found else None
    except ValueError:
        return None
