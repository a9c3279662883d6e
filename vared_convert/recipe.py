"""The recipe a conversion records, and applying it to a freshly built network.

A recipe lists the convolutions that became dynamic and the blocks that became adaptive, with their options,
plus the search space and the clip shape used for analysis. Applying it to the original architecture rebuilds the adaptive model's structure
exactly, so a saved state_dict loads into it: a checkpoint needs no pickled code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from .arch import ArchSpec
from .errors import VaredError
from .nn import DynamicConv3d

__all__ = ["LayerRecipe", "BlockRecipe", "Recipe", "ModelInfo", "apply_recipe", "replace_module", "model_info"]


@dataclass
class LayerRecipe:
    """One converted conv: its qualified name, its options ``[[R, k], ...]`` and its gate width."""

    name: str
    options: list[list[int]]
    gate_hidden: int
    macs: int = 0  # the original conv's MACs at the recipe's input shape, batch 1


@dataclass
class BlockRecipe:
    """One adaptive block: its qualified name, the module holding it, its ops (qualified names), kind, options
    ``[[R, k], ...]`` (``k`` channels of its width) and gate width."""

    name: str
    owner: str
    ops: list[str]
    kind: str
    options: list[list[int]]
    gate_hidden: int
    macs: int = 0  # the original ops' MACs at the recipe's input shape, batch 1
    branches: list[list[str]] = field(default_factory=list)  # a stage's residual branches (their ops)


@dataclass
class Recipe:
    """How a model was converted (stored in every vared checkpoint)."""

    input_shape: list[int]  # C, T, H, W used for analysis and verification
    temporal: list[int]
    channel: list[float]
    layers: list[LayerRecipe]
    original_macs: int  # the whole original model at input_shape, batch 1 (fvcore)
    extra: dict[str, Any] = field(default_factory=dict)
    granularity: str = "conv"  # "conv" (one gate per conv), "block" or "stage" (one gate per block or stage)
    blocks: list[BlockRecipe] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        layers = [LayerRecipe(**layer) for layer in data["layers"]]
        blocks = [BlockRecipe(**block) for block in data.get("blocks") or []]
        fields = {k: v for k, v in data.items() if k not in ("layers", "blocks")}
        return cls(layers=layers, blocks=blocks, **fields)

    @property
    def converted_macs(self) -> int:
        return sum(layer.macs for layer in self.layers) + sum(block.macs for block in self.blocks)

    @property
    def converted_share(self) -> float:
        """Share of the original model's FLOPs that sits in converted convs."""
        return self.converted_macs / self.original_macs if self.original_macs else 0.0


@dataclass
class ModelInfo:
    """What travels with a model: how to rebuild it, how it was converted, what its outputs mean."""

    arch: ArchSpec
    recipe: Recipe | None = None
    class_names: list[str] | None = None


def model_info(model: nn.Module) -> ModelInfo | None:
    """The :class:`ModelInfo` attached by ``convert`` or ``load_model``, if any (unwraps DDP)."""
    model = getattr(model, "module", model)
    return getattr(model, "vared_info", None)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at qualified name ``name`` inside ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.ModuleList, nn.Sequential)) and child.isdigit():
        parent[int(child)] = new
    else:
        setattr(parent, child, new)


def apply_recipe(model: nn.Module, recipe: Recipe) -> nn.Module:
    """Rebuild ``recipe``'s adaptive blocks (rewriting the modules that hold them) and swap each conv it names
    for a :class:`DynamicConv3d` with the recorded options, in place; returns the model (a new one where a block
    is held by the model's own forward, which is then rewritten)."""
    if recipe.blocks:
        from .blocks import place_blocks

        try:
            model, _ = place_blocks(model, recipe.blocks)
        except (AttributeError, ValueError, TypeError, KeyError, IndexError) as exc:
            raise VaredError(f"the recipe's blocks do not fit this architecture: {exc}") from exc
    for layer in recipe.layers:
        try:
            conv = model.get_submodule(layer.name)
        except AttributeError as exc:
            raise VaredError(f"recipe names {layer.name!r}, which this architecture does not have") from exc
        if not isinstance(conv, nn.Conv3d):
            raise VaredError(f"recipe names {layer.name!r}, a {type(conv).__name__}, not a Conv3d")
        try:
            dynamic = DynamicConv3d.from_conv(conv, layer.options, layer.gate_hidden)
        except (ValueError, TypeError) as exc:
            raise VaredError(f"recipe does not fit this architecture at {layer.name!r}: {exc}") from exc
        replace_module(model, layer.name, dynamic)
    return model
