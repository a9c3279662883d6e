"""vared: input-dependent (VA-RED²) video models from any pretrained 3D CNN."""

__version__ = "0.1.0"

from .arch import ArchSpec, build_model
from .checkpoint import load_model, save_model
from .convert import Conversion, ConversionReport, convert
from .errors import VaredError
from .export import export_model
from .nn import (AdaptiveBlock, DynamicConv3d, adaptive_layers, decide, dynamic_convs, forced_policy, recording,
                 set_execution, set_policy, set_temperature)
from .nn.kernels import conv_kernel, set_conv_kernel
from .predict import EvalReport, evaluate
from .recipe import ModelInfo, Recipe, model_info
from .recognize import recognise

__all__ = [
    "AdaptiveBlock",
    "ArchSpec",
    "Conversion",
    "ConversionReport",
    "DynamicConv3d",
    "EvalReport",
    "ModelInfo",
    "Recipe",
    "VaredError",
    "build_model",
    "adaptive_layers",
    "conv_kernel",
    "convert",
    "decide",
    "dynamic_convs",
    "evaluate",
    "export_model",
    "forced_policy",
    "load_model",
    "model_info",
    "recognise",
    "recording",
    "save_model",
    "set_conv_kernel",
    "set_execution",
    "set_policy",
    "set_temperature",
]
