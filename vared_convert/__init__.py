"""vared: input-dependent (VA-RED²) video models from any pretrained 3D CNN."""

__version__ = "0.1.0"

from .arch import ArchSpec, build_model
from .checkpoint import load_model, save_model
from .convert import Conversion, ConversionReport, convert
from .errors import VaredError
from .export import export_model
from .nn import DynamicConv3d, dynamic_convs, forced_policy, set_policy, set_temperature
from .predict import EvalReport, evaluate
from .recipe import ModelInfo, Recipe, model_info

__all__ = [
    "ArchSpec",
    "Conversion",
    "ConversionReport",
    "DynamicConv3d",
    "EvalReport",
    "ModelInfo",
    "Recipe",
    "VaredError",
    "build_model",
    "convert",
    "dynamic_convs",
    "evaluate",
    "export_model",
    "forced_policy",
    "load_model",
    "model_info",
    "save_model",
    "set_policy",
    "set_temperature",
]
