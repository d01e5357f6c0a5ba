"""Scalable residual U-Nets (STU-Net, 14M to 1.4B parameters) for nnU-Net v2."""
from stunet.config import STUNetConfig
from stunet.network import STUNet
from stunet.registry import create_model, list_models, register_model
from stunet import presets  # noqa: F401  (registers the presets)

__version__ = "0.1.0"
__all__ = ["STUNet", "STUNetConfig", "create_model", "list_models", "register_model", "__version__"]
