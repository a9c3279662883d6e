"""vared: input-dependent (VA-RED²) video models from any pretrained 3D CNN."""

__version__ = "0.1.0"

from .arch import ArchSpec, build_model
from .checkpoint import load_model, save_model
from .convert import Conversion, ConversionReport, convert
from .errors import VaredError
from .nn import DynamicConv3d, dynamic_convs, forced_policy, set_policy, set_temperature
from .recipe import ModelInfo, Recipe, model_info

__all__ = [
    "ArchSpec",
    "Conversion",
    "ConversionReport",
    "DynamicConv3d",
    "ModelInfo",
    "Recipe",
    "VaredError",
    "build_model",
    "convert",
    "dynamic_convs",
    "forced_policy",
    "load_model",
    "model_info",
    "save_model",
    "set_policy",
    "set_temperature",
]
