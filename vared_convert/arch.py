"""Architecture registry: build the network a checkpoint belongs to, from a name, never downloading weights.

Names:

* ``torchvision:NAME`` -- ``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``s3d``;
* ``pytorchvideo:NAME`` -- ``i3d_r50``, ``slow_r50``, ``c2d_r50``, ``x3d_xs``, ``x3d_s``, ``x3d_m``, ``x3d_l``,
  ``r2plus1d_r50``, ``csn_r101``, ``slowfast_r50`` (needs the ``pytorchvideo`` extra);
* ``vared:tiny_c3d``, ``vared:demo_c3d`` -- vared's own small 3D CNNs (the second is the demo's baseline);
* ``module.path:factory`` -- any importable callable returning an ``nn.Module`` (your own architecture).

The first three kinds form the *registry*: building one runs only code that ships with torchvision, pytorchvideo
or vared. A ``module.path:factory`` name imports and calls that code, so a name read from a file is built only when
the user names it too (see :func:`is_registered` and ``checkpoint.load_model``).

pytorchvideo fixes its head's average pool to the native clip size; vared builds that pool as a global average
pool, which is the same at the native size and also works at any other clip size. SlowFast takes a list of two
pathways; :class:`SlowFastClip` feeds it from one clip tensor, keeping the original parameter names.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from .errors import VaredError

__all__ = ["ArchSpec", "KNOWN_ARCHS", "build_model", "default_input_shape", "is_registered", "SlowFastClip"]

# name -> (usual clip shape C,T,H,W, normalisation family)
KNOWN_ARCHS: dict[str, tuple[tuple[int, int, int, int], str]] = {
    "torchvision:r3d_18": ((3, 16, 112, 112), "torchvision"),
    "torchvision:mc3_18": ((3, 16, 112, 112), "torchvision"),
    "torchvision:r2plus1d_18": ((3, 16, 112, 112), "torchvision"),
    "torchvision:s3d": ((3, 16, 224, 224), "torchvision"),
    "pytorchvideo:i3d_r50": ((3, 8, 224, 224), "kinetics"),
    "pytorchvideo:slow_r50": ((3, 8, 224, 224), "kinetics"),
    "pytorchvideo:c2d_r50": ((3, 8, 224, 224), "kinetics"),
    "pytorchvideo:x3d_xs": ((3, 4, 160, 160), "kinetics"),
    "pytorchvideo:x3d_s": ((3, 13, 160, 160), "kinetics"),
    "pytorchvideo:x3d_m": ((3, 16, 224, 224), "kinetics"),
    "pytorchvideo:x3d_l": ((3, 16, 312, 312), "kinetics"),
    "pytorchvideo:r2plus1d_r50": ((3, 16, 224, 224), "kinetics"),
    "pytorchvideo:csn_r101": ((3, 32, 224, 224), "kinetics"),
    "pytorchvideo:slowfast_r50": ((3, 32, 224, 224), "kinetics"),
    "vared:tiny_c3d": ((3, 8, 56, 56), "kinetics"),
    "vared:demo_c3d": ((3, 8, 56, 56), "kinetics"),
}
# names earlier vared versions recorded for registry architectures
ALIASES = {"vared_convert.baseline:tiny_c3d": "vared:tiny_c3d"}
REGISTRY_SOURCES = ("torchvision", "pytorchvideo", "vared")
SLOWFAST_ALPHA = 4


@dataclass
class ArchSpec:
    """What is needed to rebuild a network: its name, head size and extra factory arguments."""

    name: str
    num_classes: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        return cls(data["name"], data.get("num_classes"), dict(data.get("kwargs") or {}))

    @property
    def normalization(self) -> str:
        """The mean/std family its pretrained weights expect (``torchvision`` or ``kinetics``)."""
        return KNOWN_ARCHS.get(ALIASES.get(self.name, self.name), (None, "kinetics"))[1]


def is_registered(name: str) -> bool:
    """True for registry architectures, whose building runs no code but torchvision's, pytorchvideo's or vared's."""
    return ALIASES.get(name, name) in KNOWN_ARCHS


def default_input_shape(name: str) -> tuple[int, int, int, int] | None:
    """The usual clip shape (C, T, H, W) of a known architecture, ``None`` for user code."""
    known = KNOWN_ARCHS.get(ALIASES.get(name, name))
    return known[0] if known else None


@torch.fx.wrap
def slow_pathway(clip: torch.Tensor, alpha: int) -> torch.Tensor:
    """Every ``alpha``-th frame, spread over the clip as pytorchvideo's ``PackPathway`` does."""
    frames = clip.shape[2]
    index = torch.linspace(0, frames - 1, max(1, frames // alpha), device=clip.device).long()
    return clip.index_select(2, index)


class SlowFastClip(nn.Module):
    """Run a pytorchvideo SlowFast on one clip tensor: the slow pathway takes every ``alpha``-th frame.

    It holds SlowFast's ``blocks`` directly, so parameter names (``blocks.0...``) match its checkpoints.
    """

    def __init__(self, slowfast: nn.Module, alpha: int = SLOWFAST_ALPHA):
        super().__init__()
        self.blocks = slowfast.blocks
        self.alpha = alpha

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        x: Any = [slow_pathway(clip, self.alpha), clip]
        for block in self.blocks:
            x = block(x)
        return x


def _global_head_pools(model: nn.Module) -> nn.Module:
    """Replace stride-1 ``AvgPool3d`` head pools (sized for one clip shape) with global average pools."""
    def triple(value: Any) -> tuple[int, ...]:
        return tuple(value) if isinstance(value, (tuple, list)) else (value,) * 3

    for name, module in list(model.named_modules()):
        if isinstance(module, nn.AvgPool3d) and triple(module.stride) == (1, 1, 1) and not any(triple(module.padding)):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if isinstance(parent, nn.ModuleList):
                parent[int(child)] = nn.AdaptiveAvgPool3d(1)
            else:
                setattr(parent, child, nn.AdaptiveAvgPool3d(1))
    return model


def _build_torchvision(name: str, spec: ArchSpec) -> nn.Module:
    import torchvision.models.video as tv_video

    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    return getattr(tv_video, name)(weights=None, **kwargs)


def _build_pytorchvideo(name: str, spec: ArchSpec) -> nn.Module:
    try:
        import pytorchvideo.models.hub as hub
    except ImportError as exc:
        raise VaredError(f"--arch pytorchvideo:{name} needs pytorchvideo: pip install 'vared[pytorchvideo]'") from exc
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["model_num_class"] = spec.num_classes
    model = _global_head_pools(getattr(hub, name)(pretrained=False, **kwargs))
    return SlowFastClip(model) if name.startswith("slowfast") else model


def _build_vared(name: str, spec: ArchSpec) -> nn.Module:
    from .baseline import demo_c3d, tiny_c3d

    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        kwargs["num_classes"] = spec.num_classes
    return {"tiny_c3d": tiny_c3d, "demo_c3d": demo_c3d}[name](**kwargs)


def _call_factory(spec: ArchSpec, factory: Any, what: str, kwargs: dict[str, Any]) -> nn.Module:
    """Call an architecture's factory; a failure is the architecture's arguments' fault, said in one line."""
    try:
        model = factory(**kwargs)
    except VaredError:
        raise
    except Exception as exc:  # any failure of the factory call means the same to a user: it cannot be built
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise VaredError(f"--arch {spec.name}: {what}({', '.join(f'{k}=...' for k in kwargs)}) failed "
                         f"({type(exc).__name__}: {first})") from exc
    if not isinstance(model, nn.Module):
        raise VaredError(f"--arch {spec.name}: {what}() returned {type(model).__name__}, not an nn.Module")
    return model


def _build_user(module_path: str, factory_name: str, spec: ArchSpec) -> nn.Module:
    try:
        module = importlib.import_module(module_path)
    except (ImportError, ValueError, TypeError) as exc:
        raise VaredError(f"--arch {spec.name}: cannot import module {module_path!r} ({exc})") from exc
    factory = getattr(module, factory_name, None) if factory_name.isidentifier() else None
    if not callable(factory):
        raise VaredError(f"--arch {spec.name}: module {module_path!r} has no callable {factory_name!r}")
    kwargs = dict(spec.kwargs)
    if spec.num_classes is not None:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "num_classes" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            raise VaredError(f"--arch {spec.name}: {factory_name}() takes no num_classes argument")
        kwargs["num_classes"] = spec.num_classes
    return _call_factory(spec, factory, factory_name, kwargs)


def build_model(spec: ArchSpec | str) -> nn.Module:
    """Build the (randomly initialised) network named by ``spec``; weights are loaded separately.

    A ``module.path:factory`` name imports and calls that code: pass only names that the user gave.
    """
    spec = ArchSpec(spec) if isinstance(spec, str) else spec
    if not isinstance(spec.name, str) or not isinstance(spec.kwargs, dict):
        raise VaredError(f"architecture {spec.name!r}: expected a SOURCE:NAME string and keyword arguments")
    source, sep, name = ALIASES.get(spec.name, spec.name).partition(":")
    if not sep or not source or not name:
        raise VaredError(f"--arch {spec.name!r}: expected SOURCE:NAME, e.g. torchvision:r3d_18 or mypkg.models:build")
    if source in REGISTRY_SOURCES:
        if f"{source}:{name}" not in KNOWN_ARCHS:
            known = ", ".join(k.split(":")[1] for k in KNOWN_ARCHS if k.startswith(source + ":"))
            raise VaredError(f"--arch {spec.name}: unknown {source} architecture (known: {known})")
        builder = {"torchvision": _build_torchvision, "pytorchvideo": _build_pytorchvideo, "vared": _build_vared}
        model = _call_factory(spec, lambda **_: builder[source](name, spec), name, spec.kwargs)
    else:
        model = _build_user(source, name, spec)
    return model.eval()
