"""Building blocks of an adaptive (VA-RED²) video model."""

from .dynamic_conv import ConvOption, DynamicConv3d, channel_count, conv_output_frames
from .gate import SoftModulationGate, default_gate_hidden
from .policy import dynamic_convs, forced_policy, option_index, set_policy, set_temperature
from .rebuild import ChannelRebuild, FrameRebuild, eager_inference, memory_format_of

__all__ = [
    "ChannelRebuild",
    "ConvOption",
    "DynamicConv3d",
    "FrameRebuild",
    "SoftModulationGate",
    "channel_count",
    "conv_output_frames",
    "default_gate_hidden",
    "dynamic_convs",
    "eager_inference",
    "forced_policy",
    "memory_format_of",
    "option_index",
    "set_policy",
    "set_temperature",
]
