"""Finding a network's blocks with torch.fx, and rewriting the modules that hold them.

A **block** is a linear run of the network's own modules that one gate can steer as a unit
(:class:`~vared_convert.nn.AdaptiveBlock`):

* a **residual** branch: the run of single-input, single-use ops from a conv to a residual add, when it holds at
  least two convs (an inner width to shrink) and every op in it can be shrunk (convs, BatchNorm, activations,
  squeeze-excitation);
* otherwise a **chain**: one conv and the per-channel ops right after it (BatchNorm, activations), up to the
  next op that mixes channels or frames (the next conv, a pool, an add, a fork). Inception-style branches are
  chains of this kind, one per conv.

At stage granularity, chain blocks that follow each other at one resolution (each feeds only the next, and every
one after the first has stride 1) form a **run** (:func:`find_runs`), which one gate steers as a unit.

The module that holds a block (the deepest one containing all its ops: torchvision's ``BasicBlock``,
pytorchvideo's ``BottleneckBlock``, a ``Sequential``) is re-traced alone and rewritten as an fx ``GraphModule``
in which the block's ops are one call of the adaptive block; the original submodules stay registered under
their names, so every state_dict key survives and the block reaches them by reference. A run whose blocks only the
network's top-level forward connects is held by the network itself: the network is then rewritten, and the
placing functions return the new one.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .nn import AdaptiveBlock, AdaptiveLayer, DynamicConv3d, adaptive_layers, op_kind
from .nn.block import block_problem
from .nn.stage import RESERVED_NAMES, AdaptiveStage, StageBranch

__all__ = ["BlockSite", "BlockTracer", "RewrittenModule", "StageSite", "block_members", "block_module_name",
           "find_blocks", "find_runs", "find_stages", "group_by_owner", "place_blocks", "place_owner", "place_stage",
           "rewrite_owner"]

_ADDS = {operator.add, operator.iadd, torch.add}
TOP_LEVEL = "its ops are called by the model's top-level forward (no module holds them)"


class BlockTracer(fx.Tracer):
    """Leaves: convs (plain and dynamic), the ops a block can shrink (squeeze-excitation, pytorchvideo's Swish),
    and torch.nn's own modules."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, (nn.Conv3d, AdaptiveLayer, StageBranch)):
            return True
        if op_kind(m) is not None:
            return True
        return super().is_leaf_module(m, module_qualified_name)


@dataclass
class BlockSite:
    """A block as the analysis saw it: its ops (qualified names), kind, the module holding it, and shapes."""

    ops: list[str]
    kind: str
    owner: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    is_stem: bool = False
    problem: str | None = None  # why it cannot run as a block (its convs fall back to per-conv)
    name: str = ""  # the adaptive block's qualified name once placed
    conv_names: list[str] = field(default_factory=list)
    reads: str = ""  # the graph node the block reads, and the one it writes (and whether only one op reads that)
    writes: str = ""
    sole_reader: bool = False


def block_module_name(index: int) -> str:
    """The name of the ``index``-th adaptive block inside its owner: ``adaptive``, ``adaptive_1``, ..."""
    return "adaptive" if index == 0 else f"adaptive_{index}"


def _is_add(node: fx.Node) -> bool:
    if node.op == "call_function" and node.target in _ADDS:
        return True
    return node.op == "call_method" and node.target in ("add", "add_")


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [n for n in node.all_input_nodes if n.op != "get_attr"]


def _run_from(node: fx.Node) -> list[fx.Node]:
    """The linear run starting at ``node``: each next node is the sole user of the previous one and reads only it."""
    run = [node]
    while len(run[-1].users) == 1:
        user = next(iter(run[-1].users))
        if _is_add(user) or user.op == "output" or _tensor_inputs(user) != [run[-1]]:
            break
        run.append(user)
    return run


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _owner(names: Sequence[str]) -> str:
    """The deepest module path containing every name in ``names``."""
    parents = [name.split(".")[:-1] for name in names]
    common = []
    for parts in zip(*parents):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _describe(node: fx.Node, gm: fx.GraphModule) -> str:
    m = _module(gm, node)
    return type(m).__name__ if m is not None else f"{node.op} {getattr(node.target, '__name__', node.target)}"


def find_blocks(model: nn.Module, example: torch.Tensor) -> list[BlockSite]:
    """Every block of ``model`` (residual branches and chains), in graph order; raises if fx cannot trace it."""
    tracer = BlockTracer()
    graph = tracer.trace(model)
    gm = fx.GraphModule(tracer.root, graph)
    ShapeProp(gm).propagate(example)
    after_conv: dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:
        is_conv = isinstance(_module(gm, node), nn.Conv3d)
        after_conv[node] = is_conv or any(after_conv[i] for i in node.all_input_nodes)
    taken: set[fx.Node] = set()
    sites: list[BlockSite] = []
    for node in gm.graph.nodes:
        if node in taken or not isinstance(_module(gm, node), nn.Conv3d):
            continue
        run = [n for n in _run_from(node) if n not in taken]
        end = run[-1]
        users = list(end.users)
        residual = len(users) == 1 and _is_add(users[0])
        modules = [_module(gm, n) for n in run]
        convs = [n for n, m in zip(run, modules) if isinstance(m, nn.Conv3d)]
        problem = None
        if residual and len(convs) >= 2:
            kind, ops = "residual", run
            unshrinkable = [n for n, m in zip(run, modules) if m is None or op_kind(m) is None]
            if unshrinkable:
                problem = f"{_describe(unshrinkable[0], gm)} cannot be shrunk"
        else:
            kind, ops = "chain", [node]
            for n, m in zip(run[1:], modules[1:]):
                if m is None or op_kind(m) not in ("norm", "pointwise"):
                    break
                ops.append(n)
        names = [str(n.target) for n in ops if n.op == "call_module"]
        if problem is None:
            problem = block_problem([gm.get_submodule(t) for t in names], kind)
        owner = _owner(names) if names else ""
        if problem is None and not owner:
            problem = TOP_LEVEL
        taken.update(ops)
        sites.append(BlockSite(
            ops=names, kind=kind, owner=owner,
            input_shape=tuple(node.args[0].meta["tensor_meta"].shape),
            output_shape=tuple(ops[-1].meta["tensor_meta"].shape),
            is_stem=not any(after_conv[i] for i in node.all_input_nodes),
            problem=problem,
            conv_names=[str(n.target) for n in convs if n in ops or kind == "residual"],
            reads=node.args[0].name, writes=ops[-1].name, sole_reader=len(ops[-1].users) == 1,
        ))
    _merge_nested_owners(sites)
    return sites


def _merge_nested_owners(sites: list[BlockSite]) -> None:
    """Where one block's owner lies inside another's, both are rewritten in the outer one (:func:`group_by_owner`;
    blocks that no module holds keep no owner)."""
    for outer, group in group_by_owner([s for s in sites if s.owner]).items():
        for site in group:
            site.owner = outer


def find_runs(model: nn.Module, sites: Sequence[BlockSite]) -> list[BlockSite]:
    """The runs of ``sites`` (found by :func:`find_blocks` on ``model``): two or more chain blocks in a row, each
    feeding only the next, every one after the first starting with a stride-1 conv (one resolution, as a stage of a
    residual network starts with its only strided block). Stems start no run. A run of blocks that only the top-level
    forward connects is held by ``model`` itself (owner ``""``)."""
    def joinable(site: BlockSite) -> bool:
        return site.kind == "chain" and not site.is_stem and site.problem in (None, TOP_LEVEL)

    groups: list[list[BlockSite]] = []
    for site in sites:
        previous = groups[-1][-1] if groups else None
        if (previous is not None and joinable(previous) and joinable(site) and previous.sole_reader
                and site.reads == previous.writes and tuple(model.get_submodule(site.ops[0]).stride) == (1, 1, 1)):
            groups[-1].append(site)
        else:
            groups.append([site])
    runs = []
    for group in (g for g in groups if len(g) >= 2):
        ops = [op for site in group for op in site.ops]
        runs.append(BlockSite(
            ops=ops, kind="run", owner=_owner(ops), input_shape=group[0].input_shape,
            output_shape=group[-1].output_shape, problem=block_problem([model.get_submodule(o) for o in ops], "run"),
            conv_names=[c for site in group for c in site.conv_names], reads=group[0].reads, writes=group[-1].writes,
            sole_reader=group[-1].sole_reader,
        ))
    return runs


class RewrittenModule(fx.GraphModule):
    """A module rewritten to hold adaptive blocks. A deep copy keeps its class name and the plain attributes set on
    it (the :class:`~vared_convert.recipe.ModelInfo` of a network rewritten as a whole), as copying any module
    does."""

    def __deepcopy__(self, memo: dict[int, Any]) -> "RewrittenModule":
        copied = super().__deepcopy__(memo)
        extra = {k: v for k, v in self.__dict__.items() if k not in copied.__dict__}
        copied.__dict__.update(copy.deepcopy(extra, memo))
        type(copied).__name__ = type(self).__name__  # each instance has a class of its own
        return copied


def rewrite_owner(owner: nn.Module, blocks: Sequence[tuple[Sequence[str], nn.Module]]) -> RewrittenModule:
    """``owner`` as a GraphModule in which each block's ops (names relative to ``owner``) are one call of its
    adaptive block (``blocks``: ``(ops, block)`` pairs, named :func:`block_module_name` in order).

    Every submodule, parameter and buffer of ``owner`` stays registered under its name.
    """
    tracer = BlockTracer()
    graph = tracer.trace(owner)
    attributes: dict[str, Any] = {}
    for index, (ops, block) in enumerate(blocks):
        nodes = _linear_run(graph, ops, type(owner).__name__)
        target = block_module_name(index)
        attributes[target] = block
        with graph.inserting_before(nodes[0]):
            call = graph.call_module(target, (nodes[0].args[0],))
        nodes[-1].replace_all_uses_with(call)
        for n in reversed(nodes):
            graph.erase_node(n)
    graph.lint()
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr") and n.target not in attributes:
            attributes[n.target] = _get(owner, n.target)
    rewritten = RewrittenModule(attributes, graph, class_name=f"Adaptive{type(owner).__name__}")
    for name, child in owner.named_children():
        rewritten.add_module(name, child)
    for name, param in owner.named_parameters(recurse=False):
        rewritten.register_parameter(name, param)
    for name, buffer in owner.named_buffers(recurse=False):
        rewritten.register_buffer(name, buffer)
    for index in range(len(blocks)):
        rewritten.add_module(block_module_name(index), blocks[index][1])
    rewritten.train(owner.training)
    return rewritten


def _linear_run(graph: fx.Graph, ops: Sequence[str], owner: str) -> list[fx.Node]:
    """The call nodes of ``ops`` in ``graph``: the one call of the first, then each next op as the sole user of
    the one before (a module called elsewhere too, like an activation reused after the residual add, is matched
    by its place in the run, not by its name)."""
    calls = [n for n in graph.nodes if n.op == "call_module" and str(n.target) == ops[0]]
    if len(calls) != 1:
        raise ValueError(f"{ops[0]} is called {len(calls)} times in {owner}.forward (a block starts with one call)")
    nodes = calls
    for name in ops[1:]:
        users = list(nodes[-1].users)
        after = users[0] if len(users) == 1 else None
        if (after is None or after.op != "call_module" or str(after.target) != name
                or _tensor_inputs(after) != [nodes[-1]]):
            raise ValueError(f"{' → '.join(ops)} is not a linear run in {owner}.forward")
        nodes.append(after)
    return nodes


def _get(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def group_by_owner(specs: Sequence[Any]) -> dict[str, list[Any]]:
    """``specs`` (objects with ``owner``) grouped by the module to rewrite: where one owner lies inside another
    (the model itself, ``""``, holds every other), both groups are rewritten in the outer one. Order is kept."""
    owners = sorted({spec.owner for spec in specs}, key=len)

    def outermost(owner: str) -> str:
        return next(o for o in owners if o == owner or not o or owner.startswith(o + "."))

    groups: dict[str, list[Any]] = {}
    for spec in specs:
        groups.setdefault(outermost(spec.owner), []).append(spec)
    return groups


def place_blocks(model: nn.Module, specs: Sequence[Any]) -> tuple[nn.Module, list[str]]:
    """Make each block of ``specs`` (objects with ``owner``, ``ops`` (qualified names), ``kind``, ``options`` and
    ``gate_hidden``; a stage's also ``branches``) adaptive in ``model``, in place unless the model itself must be
    rewritten; returns the model and the blocks' qualified names."""
    names = []
    for spec in specs:
        if spec.kind == "stage":
            names.append(place_stage(model, spec.owner, spec.branches, spec.options, spec.gate_hidden))
    for owner_name, group in group_by_owner([s for s in specs if s.kind != "stage"]).items():
        model, placed = place_owner(model, owner_name, group)
        names += placed
    return model, names


def place_owner(model: nn.Module, owner_name: str, specs: Sequence[Any],
                build: Any = None) -> tuple[nn.Module, list[str]]:
    """Make the blocks ``specs``, all held by module ``owner_name``, adaptive: that module is rewritten (see
    :func:`rewrite_owner`) and put back in ``model``; where the owner is the model itself (``""``), the rewritten
    one replaces it. Returns the model and the blocks' qualified names. ``build(spec, ops, members)``, when given,
    makes each block's module (a stage's branches); by default an adaptive block."""
    from .recipe import replace_module

    owner = model.get_submodule(owner_name)
    made = []
    for spec in specs:
        relative = [op[len(owner_name) + 1:] for op in spec.ops] if owner_name else list(spec.ops)
        ops = [owner.get_submodule(r) for r in relative]
        if build is not None:
            made.append((relative, build(spec, ops, relative)))
            continue
        param = next(ops[0].parameters())
        block = AdaptiveBlock(ops, spec.kind, spec.options, spec.gate_hidden, members=relative)
        block = block.to(device=param.device, dtype=param.dtype)
        block.init_cheap_ops()
        made.append((relative, block))
    rewritten = rewrite_owner(owner, made)
    if not owner_name:
        return rewritten, [block_module_name(i) for i in range(len(made))]
    replace_module(model, owner_name, rewritten)
    return model, [f"{owner_name}.{block_module_name(i)}" for i in range(len(made))]


def block_members(model: nn.Module) -> set[str]:
    """The qualified names of the modules that adaptive blocks and stages run, and of their submodules (they are
    counted in the block's or stage's row)."""
    members = set()
    for name, layer in adaptive_layers(model):
        if isinstance(layer, AdaptiveStage):  # everything inside a stage
            members.update(f"{name}.{sub}" for sub, _ in layer.named_modules() if sub)
        if isinstance(layer, AdaptiveBlock):
            owner = name.rpartition(".")[0]
            for member, op in zip(layer.members, layer._ops):
                base = f"{owner}.{member}" if owner else member
                members.update(f"{base}.{sub}" if sub else base for sub, _ in op.named_modules())
    return members


# ---------------------------------------------------------------------------------------------------- stages
@dataclass
class StageSite:
    """A stage as the analysis saw it: the module running two or more residual blocks in a row, the blocks'
    branches (each a residual :class:`BlockSite`), its shapes, and the temporal factors it can run at."""

    name: str
    branches: list[BlockSite]
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    keeps_frames: bool = False  # every R-th frame in gives every R-th frame out: the stage can run on them
    problem: str | None = None


def _frames_out(module: nn.Module, shape: Sequence[int], frames: int) -> int | None:
    param = next(module.parameters())
    x = torch.zeros(1, shape[1], frames, *shape[3:], dtype=param.dtype, device=param.device)
    try:
        with torch.no_grad():
            return int(module(x).shape[2])
    except Exception:  # too few frames for some op: no temporal option
        return None


def find_stages(model: nn.Module, example: torch.Tensor, sites: Sequence[BlockSite],
                factors: Sequence[int] = (2,)) -> list[StageSite]:
    """The stages of ``model`` (the innermost modules that run two or more of the residual ``sites``), each with
    its shapes and whether it keeps the frame count at ``factors``; ``model`` is run once on ``example``."""
    residual = [s for s in sites if s.kind == "residual"]
    holders = {}
    for name, m in model.named_modules():
        if not name or isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            continue
        inside = [s for s in residual if s.owner == name or s.owner.startswith(name + ".")]
        if len(inside) >= 2:
            holders[name] = inside
    innermost = [n for n in holders if not any(o != n and o.startswith(n + ".") for o in holders)]
    shapes: dict[str, list[tuple]] = {n: [] for n in innermost}

    def keep(name: str, args: tuple, out: Any) -> None:
        shapes[name].append((tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else (),
                             tuple(out.shape) if isinstance(out, torch.Tensor) else ()))

    hooks = [model.get_submodule(n).register_forward_hook(lambda m, args, out, n=n: keep(n, args, out))
             for n in innermost]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    stages = []
    for name in innermost:
        calls = shapes[name]
        problem = None
        if len(calls) != 1 or len(calls[0][0]) != 5 or len(calls[0][1]) != 5:
            problem = "it is not called once on one clip-shaped tensor"
        elif any(s.problem for s in holders[name]):
            problem = next(s.problem for s in holders[name] if s.problem)
        elif any(n in dict(model.get_submodule(name).named_children()) for n in RESERVED_NAMES):
            problem = f"it has a submodule named {RESERVED_NAMES[0]!r} or {RESERVED_NAMES[1]!r}"
        in_shape, out_shape = calls[0] if calls else ((), ())
        keeps = False
        if problem is None:
            frames = in_shape[2]
            stage = model.get_submodule(name)
            out = out_shape[2]  # with a temporal stride inside, every R-th frame in must give every R-th frame out
            keeps = all(_frames_out(stage, in_shape, -(-frames // r)) == -(-out // r) for r in factors if frames >= r)
        stages.append(StageSite(name, holders[name], in_shape, out_shape, keeps, problem))
    return stages


def place_stage(model: nn.Module, name: str, branches: Sequence[Sequence[str]], options: Sequence[Sequence[int]],
                gate_hidden: int | None) -> str:
    """Make the stage at ``name`` adaptive in ``model``, in place: each residual branch (its ops' qualified
    names) becomes a :class:`~vared_convert.nn.stage.StageBranch` in its module, then the stage module is held
    by an :class:`~vared_convert.nn.stage.AdaptiveStage` put in its place. Returns ``name``."""
    from .nn import channel_count
    from .recipe import replace_module

    stage = model.get_submodule(name)
    width = next(m for m in (model.get_submodule(op) for op in branches[0]) if isinstance(m, nn.Conv3d)).out_channels

    def build(spec: Any, ops: Sequence[nn.Module], members: Sequence[str]) -> StageBranch:
        own = next(m for m in ops if isinstance(m, nn.Conv3d)).out_channels
        counts = [channel_count(o[1] / width, own) for o in options]
        return StageBranch(ops, counts, members)

    by_owner: dict[str, list[Any]] = {}
    for ops in branches:
        spec = BlockSite(ops=list(ops), kind="residual", owner=_owner(list(ops)), input_shape=(), output_shape=())
        by_owner.setdefault(spec.owner, []).append(spec)
    for owner_name, group in by_owner.items():
        place_owner(model, owner_name, group, build)  # inside the stage: never the model itself
    param = next(stage.parameters())
    adaptive = AdaptiveStage(stage, options, gate_hidden)
    adaptive = adaptive.to(device=param.device, dtype=param.dtype)
    adaptive.train(stage.training)
    replace_module(model, name, adaptive)
    return name

