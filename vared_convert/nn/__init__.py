"""Building blocks of an adaptive (VA-RED²) video model."""

from .block import AdaptiveBlock, op_kind
from .dynamic_conv import ConvOption, DynamicConv3d, channel_count, conv_output_frames
from .gate import SoftModulationGate, default_gate_hidden
from .layer import (
    INFER,
    TRACE,
    TRAIN,
    AdaptiveLayer,
    Decided,
    Decision,
    DecisionLog,
    adaptive_layers,
    decide,
    execution,
    recording,
    set_execution,
)
from .policy import dynamic_convs, forced_policy, option_index, runs_cheap_ops, set_policy, set_temperature
from .rebuild import ChannelRebuild, FrameRebuild, memory_format_of
from .stage import AdaptiveStage, StageBranch

__all__ = [
    "AdaptiveBlock",
    "AdaptiveLayer",
    "AdaptiveStage",
    "ChannelRebuild",
    "ConvOption",
    "Decided",
    "Decision",
    "DecisionLog",
    "DynamicConv3d",
    "FrameRebuild",
    "INFER",
    "SoftModulationGate",
    "StageBranch",
    "TRACE",
    "TRAIN",
    "adaptive_layers",
    "channel_count",
    "conv_output_frames",
    "decide",
    "default_gate_hidden",
    "dynamic_convs",
    "execution",
    "forced_policy",
    "memory_format_of",
    "op_kind",
    "option_index",
    "recording",
    "runs_cheap_ops",
    "set_execution",
    "set_policy",
    "set_temperature",
]
