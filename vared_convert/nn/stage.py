"""AdaptiveStage: one gate decides for a whole stage of residual blocks, residual stream included.

A **stage** is a module that runs two or more residual blocks in a row (pytorchvideo's ``ResStage``,
torchvision's ``layer1`` ... ``layer4``). Its options are ``(R, r)`` pairs as a block's are, but they apply to
everything inside the stage:

* Temporal option ``R``: the stage's input is subsampled once (every R-th frame), the whole stage runs on those
  frames (residual branches, shortcut convs, residual adds and activations), and φ_t rebuilds the frames once, at
  the stage's exit. Needs the stage to map ``ceil(T/R)`` input frames to ``ceil(T'/R)`` output frames where it maps
  ``T`` to ``T'`` (it keeps the frame count, or a temporal stride divides it).
* Channel option ``r``: every residual branch in the stage runs at inner width ``ceil(r·C)`` as an adaptive block's
  channel option does (:class:`StageBranch`); the residual stream keeps its width, so nothing is rebuilt.

The stage's own module is traced once with torch.fx; :meth:`AdaptiveStage.run_option` runs the code generated
from that graph, which looks each module up by name when it runs and hands each branch the option's index as an
argument (no state is set on the branches). The stage's submodules stay registered under their own names, so every
state_dict key survives.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .block import AdaptiveBlock, shrinks_channels
from .dynamic_conv import ConvOption, channel_count, conv_output_frames
from .gate import SoftModulationGate, default_gate_hidden
from .layer import AdaptiveLayer
from .rebuild import FrameRebuild

Conv3dFunction = Callable[..., torch.Tensor]

__all__ = ["AdaptiveStage", "StageBranch", "RESERVED_NAMES"]

RESERVED_NAMES = ("gate", "rebuild_frames")  # an adaptive stage's own submodules


class StageBranch(nn.Module):
    """A residual branch inside an adaptive stage: the branch's own modules (held by reference) run at the width
    its stage chose, passed with each call; no gate of its own. Called with one argument it runs in full."""

    def __init__(self, ops: Sequence[nn.Module], counts: Sequence[int], members: Sequence[str] = ()):
        super().__init__()
        ops = list(ops)
        width = next(m for m in ops if isinstance(m, nn.Conv3d)).out_channels
        counts = [c for c in dict.fromkeys(counts) if c < width] if shrinks_channels(ops, "residual") else []
        # the run of the branch's ops at each width: an adaptive block's, kept out of the module tree (its unused
        # gate is not a parameter of the model)
        self.__dict__["_run"] = AdaptiveBlock(ops, "residual", [(1, width)] + [(1, c) for c in counts])
        self.members = tuple(members)
        self.width = width
        self.in_channels = self._run.in_channels
        self.counts = [width, *counts]

    def index_of(self, ratio: float) -> int:
        """The option index of this branch for a channel ratio of its stage."""
        wanted = channel_count(ratio, self.width)
        return self.counts.index(wanted) if wanted in self.counts else 0

    def forward(self, x: torch.Tensor, spec: tuple[int, bool, Conv3dFunction] | None = None) -> torch.Tensor:
        """``spec``: the branch's option index, whether the eager inference route may be taken, and the conv to run
        (its stage passes them); without it the branch runs in full."""
        index, fast, conv3d = spec if spec is not None else (0, False, F.conv3d)
        return self._run.computed_part(x, index, conv3d, cached=fast)

    def extra_repr(self) -> str:
        ops = " → ".join(self.members) if self.members else f"{len(self._run._ops)} ops"
        return f"{ops}; widths {self.counts}"


class _StageTracer(fx.Tracer):
    """Leaves: stage branches, convs, and torch.nn's own modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (StageBranch, nn.Conv3d)):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _fetch(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


class AdaptiveStage(AdaptiveLayer):
    """A gate and the options of a stage of residual blocks (the stage's module and its :class:`StageBranch`
    modules, held by reference and registered under their own names)."""

    kind = "stage"
    derivable = False

    def __init__(
        self,
        stage: nn.Module,
        options: Sequence[ConvOption | Sequence[int]],
        gate_hidden: int | None = None,
    ):
        super().__init__()
        clash = [n for n in RESERVED_NAMES if n in dict(stage.named_children())]
        if clash:
            raise ValueError(f"the stage has a submodule named {clash[0]!r}, which an adaptive stage uses")
        self._stage = (stage,)
        self._graph: fx.Graph | None = None
        self._stage_code: Callable[..., torch.Tensor] | None = None
        self.branch_names = [str(n.target) for n in self._traced().nodes
                             if n.op == "call_module" and isinstance(_fetch(stage, str(n.target)), StageBranch)]
        if len(self.branch_names) < 2:
            raise ValueError("a stage runs at least two residual branches")
        branches = [_fetch(stage, name) for name in self.branch_names]
        for name, child in stage.named_children():  # the stage's keys stay as they were
            self.add_module(name, child)
        for name, param in stage.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in stage.named_buffers(recurse=False):
            self.register_buffer(name, buffer)
        # the first branch reads the stage's input; the last one's last conv writes its output width
        last_convs = [m for m in branches[-1]._run._ops if isinstance(m, nn.Conv3d)]
        self.in_channels, self.out_channels = branches[0].in_channels, last_convs[-1].out_channels
        self._frame_convs = tuple(m for m in branches[0]._run._ops if isinstance(m, nn.Conv3d))
        self.width = branches[0].width  # the channel ratio's reference: the first branch's inner width

        opts = [o if isinstance(o, ConvOption) else ConvOption(int(o[0]), int(o[1])) for o in options]
        opts = [ConvOption(o.temporal, o.channels or self.width) for o in opts]
        if opts[0] != ConvOption(1, self.width):
            raise ValueError(f"option 0 must be the full stage (1, {self.width}), got {opts[0]}")
        if len(set(opts)) != len(opts):
            raise ValueError(f"duplicate options: {opts}")
        for o in opts:
            if o.temporal < 1 or not 0 < o.channels <= self.width:
                raise ValueError(f"invalid option {o} for a stage of width {self.width}")
        self.options: tuple[ConvOption, ...] = tuple(opts)
        # each option's index in every branch (a ratio of the first branch's width, applied to each branch's)
        self._branch_index = [tuple(b.index_of(o.channels / self.width) for b in branches) for o in opts]
        self.temporal_factors = sorted({o.temporal for o in opts if o.temporal > 1})
        self.rebuild_frames = nn.ModuleList(FrameRebuild(self.out_channels, r) for r in self.temporal_factors)
        hidden = gate_hidden or default_gate_hidden(self.in_channels)
        self.gate = SoftModulationGate(self.in_channels, len(opts), hidden)
        self._stage_forward()
        self._shapes: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}

    # ------------------------------------------------------------------ running one option
    @property
    def stage(self) -> nn.Module:
        return self._stage[0]

    def branches(self) -> list[StageBranch]:
        return [_fetch(self, name) for name in self.branch_names]

    def static_modules(self) -> list[tuple[str, nn.Module]]:
        """The convs and BatchNorms of the stage outside its branches (shortcut convs and their norms)."""
        inside = {id(m) for b in self.branches() for op in b._run._ops for m in op.modules()}
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Conv3d, nn.BatchNorm3d))
                and id(m) not in inside and n.split(".")[0] not in RESERVED_NAMES]

    def input_shapes(self, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
        """The input shape of each branch and of each static module (by name) when the stage runs in full on an
        input of ``input_shape``; measured once per shape by running the stage on zeros."""
        key = tuple(int(s) for s in input_shape[1:])
        shapes = self._shapes.get(key)
        if shapes is None:
            shapes = {}
            watched = self.static_modules() + list(zip(self.branch_names, self.branches()))

            def keep(name: str, args: tuple) -> None:
                shapes.setdefault(name, tuple(args[0].shape[1:]))

            hooks = [m.register_forward_hook(lambda mod, args, out, n=n: keep(n, args)) for n, m in watched]
            param = next(self.stage.parameters())
            modes = [(m, m.training) for m in self.stage.modules()]
            self.stage.eval()  # zeros must not reach the BatchNorms' running statistics
            try:
                with torch.no_grad():
                    self.stage(torch.zeros(1, *key, device=param.device, dtype=param.dtype))
            finally:
                for h in hooks:
                    h.remove()
                for m, mode in modes:
                    m.training = mode
            self._shapes[key] = shapes
        return {n: (int(input_shape[0]), *s) for n, s in shapes.items()}

    def train(self, mode: bool = True) -> "AdaptiveStage":
        super().train(mode)
        self.stage.training = mode
        return self

    def output_frames(self, frames: int) -> int:
        """The stage's output frame count: its first branch's convs applied in turn (the residual stream follows
        the branch)."""
        for conv in self._frame_convs:
            frames = conv_output_frames(frames, conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0])
        return frames

    def _traced(self) -> fx.Graph:
        """The stage's forward as an fx graph, traced once (and again after a copy or unpickling)."""
        if self._graph is None:
            self._graph = _StageTracer().trace(self.stage)
        return self._graph

    def _stage_forward(self) -> Callable[..., torch.Tensor]:
        """The stage's forward as Python code ``forward(self, x, specs)``, generated from its graph with each
        branch called with its spec; it looks modules up on ``self`` when it runs (this stage registers the stage's
        modules under their names), so a module swapped in later (a conv kernel, a lowering) is the one that
        runs, and tracers see plain module calls."""
        if self._stage_code is None:
            graph = copy.deepcopy(self._traced())
            x = next(n for n in graph.nodes if n.op == "placeholder")
            with graph.inserting_after(x):
                specs = graph.placeholder("specs")
            branches = [n for n in graph.nodes if n.op == "call_module" and str(n.target) in self.branch_names]
            for node in branches:
                with graph.inserting_before(node):
                    spec = graph.call_function(operator.getitem, (specs, self.branch_names.index(str(node.target))))
                node.args = (node.args[0], spec)
            code = graph.python_code(root_module="self")
            namespace = dict(code.globals)
            exec(compile(code.src, f"<adaptive stage {type(self.stage).__name__}>", "exec"), namespace)
            self._stage_code = namespace["forward"]
        return self._stage_code

    def run_option(self, x: torch.Tensor, option: int, conv3d: Callable[..., torch.Tensor] | None = None,
                   fast: bool | None = None) -> torch.Tensor:
        """Run the stage at ``option``: on every R-th frame with its branches at the option's width, then rebuild
        the frames."""
        fast = self.fast if fast is None else fast
        conv3d = conv3d or self.conv3d_function(fast)
        o = self.options[option]
        specs = tuple((index, fast, conv3d) for index in self._branch_index[option])
        with torch.no_grad() if fast else contextlib.nullcontext():
            frames = self.output_frames(x.shape[2])
            y = self._stage_forward()(self, x[:, :, :: o.temporal] if o.temporal > 1 else x, specs)
            if o.temporal > 1:
                y = self.rebuild_frames[self.temporal_factors.index(o.temporal)].expand([y], frames, fast)
            return y

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_graph"] = state["_stage_code"] = None  # traced again from the copied stage
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._stage_forward()  # now, not inside a tracer that would see the tracing
    def extra_repr(self) -> str:
        opts = ", ".join(f"({o.temporal},{o.channels})" for o in self.options)
        return (f"stage: {len(self.branch_names)} branches; {self.in_channels}→{self.out_channels}, width "
                f"{self.width}, options=[{opts}]")


