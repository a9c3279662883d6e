"""What every adaptive layer shares: how it decides (its policy), how it runs (its execution), and how its
decisions come back to the caller (a :class:`DecisionLog`, a value, never read off the layer afterwards).

An adaptive layer (:class:`~vared_convert.nn.DynamicConv3d`, one conv; :class:`~vared_convert.nn.AdaptiveBlock`,
a run of layers) has a gate that picks one of its options per video, ``run_option(x, o)`` that computes only
what option ``o`` needs and rebuilds the rest, and three ways to run, chosen explicitly once (as pytorchvideo's
``convert()`` of efficient blocks and timm's ``set_exportable`` do) rather than read from autograd or tracer
state on every call:

* ``"train"`` (``model.train()``): Gumbel decisions; the reference formulation of the cheap ops, which autograd
  differentiates.
* ``"infer"`` (``model.eval()``): argmax per video, only the chosen slice computed, a mixed batch grouped by
  decision, the cheap ops' fast eager routes; no autograd.
* ``"trace"`` (:func:`set_execution` / :func:`execution`): the reference formulation with no in-place writes and
  no cached weight slices, for fvcore's tracer and ``torch.export``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .gate import SoftModulationGate
from .kernels import onednn_conv3d
from .rebuild import memory_format_of

__all__ = [
    "TRAIN",
    "INFER",
    "TRACE",
    "AdaptiveLayer",
    "Decision",
    "DecisionLog",
    "Decided",
    "adaptive_layers",
    "set_execution",
    "execution",
    "recording",
    "decide",
]

TRAIN, INFER, TRACE = "train", "infer", "trace"
EXECUTIONS = (TRAIN, INFER, TRACE)
Policy = int | str | torch.Tensor | None  # a forced option, "random", option probabilities, or None: the gate


@dataclass
class Decision:
    """One adaptive layer's decisions in one forward: the option index per video, the relaxed weights (training
    only) and the layer's input shape."""

    choice: torch.Tensor  # (N,)
    weights: torch.Tensor | None  # (N, n_options)
    input_shape: tuple[int, ...]


class DecisionLog:
    """The decisions of every adaptive layer during the forwards run inside :func:`recording`."""

    def __init__(self) -> None:
        self._by_layer: dict[int, Decision] = {}

    def record(self, layer: nn.Module, decision: Decision) -> None:
        self._by_layer[id(layer)] = decision

    def __getitem__(self, layer: nn.Module) -> Decision:
        try:
            return self._by_layer[id(layer)]
        except KeyError:
            raise KeyError(f"no decision recorded for {type(layer).__name__}: did it run?") from None

    def __len__(self) -> int:
        return len(self._by_layer)

    def choices(self, layers: Sequence[nn.Module]) -> list[torch.Tensor]:
        """Each layer's option per video, in the order of ``layers``."""
        return [self[layer].choice for layer in layers]

    def weights(self, layers: Sequence[nn.Module]) -> list[torch.Tensor]:
        """Each layer's relaxed option weights (N, n_options): one-hot for forced and inference decisions."""
        out = []
        for layer in layers:
            d = self[layer]
            out.append(d.weights if d.weights is not None else F.one_hot(d.choice, layer.num_options).float())
        return out


class _StraightThroughGate(torch.autograd.Function):
    """The layer's output passes through unchanged; the gate's weights get the straight-through gradient
    ``dL/dw[n, o] = <dL/dout[n], y_o[n]>`` for every option ``o``, with ``y_o`` recomputed in the backward pass
    by ``values(o)`` (without autograd), so nothing is kept for the options that were not chosen."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor, weights: torch.Tensor, values: Callable[[int], torch.Tensor]) -> torch.Tensor:
        ctx.values = values
        ctx.options = weights.shape[1]
        return out.view_as(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        grad_weights = None
        if ctx.needs_input_grad[1]:
            with torch.no_grad():
                columns = [(grad * ctx.values(o)).flatten(1).sum(1) for o in range(ctx.options)]
            grad_weights = torch.stack(columns, 1)
        ctx.values = None
        return grad, grad_weights, None


class AdaptiveLayer(nn.Module):
    """Base of the layers a gate steers. Subclasses define ``options``, ``gate``, ``width`` (the channel count a
    channel ratio applies to), :meth:`run_option`, :meth:`output_frames`, and, when every option's output can
    be derived from the full computation (``derivable``), :meth:`_full` and :meth:`_derive`."""

    options: tuple
    gate: SoftModulationGate
    width: int
    derivable: bool = True

    def __init__(self) -> None:
        super().__init__()
        self.policy: Policy = None
        self.temperature: float = 1.0
        self.relaxation: str = "hard"  # training: "hard" (straight-through one-hot) or "soft" (Gumbel mixture)
        self.execution: str = TRAIN  # nn.Module starts in training mode
        self.conv_kernel: str = "aten"  # eager inference's conv kernel (nn.kernels.set_conv_kernel)
        self._log: DecisionLog | None = None

    # ------------------------------------------------------------------ execution
    def train(self, mode: bool = True) -> "AdaptiveLayer":
        super().train(mode)
        self.execution = TRAIN if mode else INFER
        return self

    @property
    def num_options(self) -> int:
        return len(self.options)

    @property
    def fast(self) -> bool:
        """Whether the cheap ops may take their in-place eager routes (inference only)."""
        return self.execution == INFER

    def conv3d_function(self, fast: bool) -> Callable[..., torch.Tensor]:
        """The conv an option runs with: the chosen kernel on the fast (eager inference) route, else ``F.conv3d``."""
        return onednn_conv3d if fast and self.conv_kernel == "onednn" else F.conv3d

    def run_option(self, x: torch.Tensor, option: int, conv3d: Callable[..., torch.Tensor] | None = None,
                   fast: bool | None = None) -> torch.Tensor:
        raise NotImplementedError

    def output_frames(self, frames: int) -> int:
        raise NotImplementedError

    def _full(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _derive(self, full: torch.Tensor, option: int, frames: int, fast: bool = False) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.execution == INFER:
            with torch.no_grad():
                return self._forward(x)
        return self._forward(x)

    def _record(self, x: torch.Tensor, choice: torch.Tensor, weights: torch.Tensor | None) -> None:
        if self._log is not None:
            self._log.record(self, Decision(choice, weights, tuple(x.shape)))

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        policy, training = self.policy, self.execution == TRAIN
        if isinstance(policy, int):
            if self._log is not None:
                self._record(x, torch.full((x.shape[0],), policy, dtype=torch.long, device=x.device), None)
            return self.run_option(x, policy)
        if isinstance(policy, torch.Tensor) or policy == "random":
            if isinstance(policy, torch.Tensor):  # each video's option drawn from these probabilities
                choice = torch.multinomial(policy.float(), x.shape[0], replacement=True).to(x.device)
            else:
                choice = torch.randint(self.num_options, (x.shape[0],), device=x.device)
            self._record(x, choice, None)
            return self._forward_decided(x, choice) if not training else self._forward_chosen(x, choice)
        if policy is not None:
            raise ValueError(f"unknown policy {policy!r}")
        logits = self.gate.infer(x) if self.execution == INFER else self.gate(x)
        if not training:
            choice = logits.argmax(dim=1)
            self._record(x, choice, None)
            return self._forward_decided(x, choice)
        if self.relaxation == "soft":
            weights = F.gumbel_softmax(logits, tau=self.temperature, hard=False, dim=-1)
            self._record(x, weights.detach().argmax(dim=1), weights)
            return self._forward_mixture(x, weights)
        weights = SoftModulationGate.straight_through(logits, self.temperature)
        choice = weights.detach().argmax(dim=1)
        self._record(x, choice, weights)
        return self._forward_straight_through(x, weights, choice)

    def _forward_decided(self, x: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Inference: each video pays only for its own option; a mixed batch is grouped by decision."""
        if x.shape[0] == 1:
            return self.run_option(x, int(choice))  # the host sync the decision needs
        counts = torch.bincount(choice, minlength=self.num_options).tolist()  # the one host sync
        present = [o for o, c in enumerate(counts) if c]
        if len(present) == 1:
            return self.run_option(x, present[0])
        order = torch.argsort(choice, stable=True)
        out = None
        for index, option in zip(torch.split(order, [counts[o] for o in present]), present):
            part = self.run_option(x[index], option)  # advanced indexing keeps x's memory layout
            if out is None:
                out = torch.empty((x.shape[0], *part.shape[1:]), dtype=part.dtype, device=part.device,
                                  memory_format=memory_format_of(part))
            out[index] = part
        return out

    def _forward_chosen(self, x: torch.Tensor, choice: torch.Tensor,
                        full: torch.Tensor | None = None) -> torch.Tensor:
        """Training: each video's chosen option, with autograd (derived from ``full`` when given)."""
        frames = self.output_frames(x.shape[2])
        counts = torch.bincount(choice, minlength=self.num_options).tolist()
        present = [o for o, c in enumerate(counts) if c]

        def run(o: int, index: torch.Tensor | None) -> torch.Tensor:
            if full is not None:
                return self._derive(full if index is None else full.index_select(0, index), o, frames)
            return self.run_option(x if index is None else x.index_select(0, index), o)

        if len(present) == 1:
            return run(present[0], None)
        out = None
        for o in present:
            index = (choice == o).nonzero().squeeze(1)
            part = run(o, index)
            if out is None:
                out = part.new_zeros((x.shape[0], *part.shape[1:]))
            out = out.index_copy(0, index, part)
        return out

    def _forward_straight_through(self, x: torch.Tensor, weights: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        """Training with the straight-through estimator: the chosen options run with autograd; the gate's gradient
        needs every option's output, which the backward pass recomputes without autograd (for a derivable layer,
        cheaply from the full computation, which the chosen options' autograd keeps anyway)."""
        frames = self.output_frames(x.shape[2])
        if self.derivable:
            full = self._full(x)
            out = self._forward_chosen(x, choice, full)
            kept = full.detach()

            def values(o: int) -> torch.Tensor:
                return self._derive(kept, o, frames, fast=True)
        else:
            out = self._forward_chosen(x, choice)
            kept = x.detach()

            def values(o: int) -> torch.Tensor:
                return self.run_option(kept, o, fast=True)

        return _StraightThroughGate.apply(out, weights, values)

    def _forward_mixture(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Training with the soft relaxation: the Gumbel-softmax mixture of every option's output.

        Unlike the straight-through estimator, the mixture differs from the full path whenever a cheaper option
        has weight, so the task and distillation losses always tell the gate what each option costs in accuracy.
        """
        frames = self.output_frames(x.shape[2])
        full = self._full(x) if self.derivable else None
        out = None
        for o in range(self.num_options):
            y = self._derive(full, o, frames) if full is not None else self.run_option(x, o)
            term = y * weights[:, o].view(-1, *([1] * (y.dim() - 1)))
            out = term if out is None else out + term
        return out


def adaptive_layers(model: nn.Module) -> list[tuple[str, AdaptiveLayer]]:
    """Every adaptive layer (dynamic conv or adaptive block) of ``model`` with its qualified name, in order."""
    model = getattr(model, "module", model) if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return [(name, m) for name, m in model.named_modules() if isinstance(m, AdaptiveLayer)]


def set_execution(model: nn.Module, mode: str) -> None:
    """Choose how every adaptive layer of ``model`` runs: ``"train"``, ``"infer"`` or ``"trace"``.

    ``model.train()`` and ``model.eval()`` choose ``"train"`` and ``"infer"``; ``"trace"`` is for tracers and
    exporters (fvcore, ``torch.export``).
    """
    if mode not in EXECUTIONS:
        raise ValueError(f"execution must be one of {', '.join(EXECUTIONS)}, got {mode!r}")
    for _, layer in adaptive_layers(model):
        layer.execution = mode


@contextlib.contextmanager
def execution(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """Run every adaptive layer of ``model`` in ``mode`` inside the block, then restore each one's own."""
    saved = [(layer, layer.execution) for _, layer in adaptive_layers(model)]
    set_execution(model, mode)
    try:
        yield model
    finally:
        for layer, before in saved:
            layer.execution = before


@contextlib.contextmanager
def recording(model: nn.Module) -> Iterator[DecisionLog]:
    """Collect the decisions of every adaptive layer of ``model`` during the forwards run inside the block::

        with recording(model) as log:
            logits = model(clips)
        choices = log.choices([layer for _, layer in adaptive_layers(model)])
    """
    log = DecisionLog()
    layers = [layer for _, layer in adaptive_layers(model)]
    saved = [layer._log for layer in layers]
    for layer in layers:
        layer._log = log
    try:
        yield log
    finally:
        for layer, before in zip(layers, saved):
            layer._log = before


@dataclass
class Decided:
    """A forward's output with the decisions that produced it."""

    output: torch.Tensor
    decisions: DecisionLog


def decide(model: nn.Module, x: torch.Tensor) -> Decided:
    """Run ``model`` on ``x`` and return its output together with every adaptive layer's decisions."""
    with recording(model) as log:
        out = model(x)
    return Decided(out, log)
