"""Switching every adaptive layer of a model at once: forcing options, random warm-up, temperature."""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn

from .dynamic_conv import DynamicConv3d, channel_count
from .layer import AdaptiveLayer, Policy, adaptive_layers

__all__ = ["dynamic_convs", "set_policy", "forced_policy", "set_temperature", "option_index", "runs_cheap_ops"]


def dynamic_convs(model: nn.Module) -> list[tuple[str, DynamicConv3d]]:
    """Every :class:`DynamicConv3d` of ``model`` with its qualified name, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DynamicConv3d)]


def option_index(layer: AdaptiveLayer, temporal: int, channel_ratio: float) -> int:
    """The index of option ``(temporal, channel_ratio)`` in ``layer``.

    A layer that lacks the temporal factor (too few frames) falls back to the same channel ratio at full
    frame rate; one that lacks the channel ratio (a grouped conv) to the same factor with every channel.
    """
    k = channel_count(channel_ratio, layer.width)
    wanted = [(temporal, k), (1, k), (temporal, layer.width), (1, layer.width)]
    index = {(o.temporal, o.channels): i for i, o in enumerate(layer.options)}
    return next(index[w] for w in wanted if w in index)


def runs_cheap_ops(model: nn.Module, option: tuple[int, float]) -> bool:
    """Whether some adaptive layer of ``model`` rebuilds frames or channels (φ_t, φ_s) at ``option``: a residual
    block, a run or a stage at a channel option with every frame rebuilds nothing, so no cheap op runs there."""
    for _, layer in adaptive_layers(model):
        o = layer.options[option_index(layer, *option)]
        if o.temporal > 1 or (o.channels < layer.width and len(getattr(layer, "rebuild_channels", ()))):
            return True
    return False


def set_policy(model: nn.Module, policy: Policy | tuple[int, float]) -> None:
    """Set how every adaptive layer decides: ``None`` (its gate), ``"random"``, or ``(temporal, channel_ratio)``."""
    for _, layer in adaptive_layers(model):
        if isinstance(policy, tuple):
            layer.policy = option_index(layer, *policy)
        else:
            layer.policy = policy


@contextlib.contextmanager
def forced_policy(model: nn.Module, policy: Policy | tuple[int, float]) -> Iterator[nn.Module]:
    """Temporarily set every layer's policy (e.g. ``(1, 1.0)``: the full path, i.e. the original model)."""
    saved = [(layer, layer.policy) for _, layer in adaptive_layers(model)]
    set_policy(model, policy)
    try:
        yield model
    finally:
        for layer, policy_before in saved:
            layer.policy = policy_before


def set_temperature(model: nn.Module, temperature: float, relaxation: str | None = None) -> None:
    """Set the Gumbel-softmax temperature of every gate (and the relaxation: "hard" or "soft")."""
    for _, layer in adaptive_layers(model):
        layer.temperature = temperature
        if relaxation is not None:
            layer.relaxation = relaxation
