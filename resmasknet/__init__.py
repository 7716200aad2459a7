"""ResMaskingNet, configurable: each stage's masking block on or off, its U-Net's depth, width,
activation and application set by config; the paper's network is the `resmasknet_paper` preset and
loads the authors' checkpoints.

Example:
    >>> import resmasknet
    >>> model = resmasknet.create_model("resmasknet_cpu", **{"mask1.enabled": False})
    >>> logits, taps = model.forward_taps(model.prepare_input(faces_uint8))
    >>> taps["mask2"].shape, taps["refine2"].shape
"""

from resmasknet.checkpoint import load_checkpoint, save_checkpoint
from resmasknet.config import ConfigError, MaskConfig, NetConfig
from resmasknet.model import ResMaskNet, count_macs, count_parameters
from resmasknet.original import CheckpointMismatch, export_original, load_original
from resmasknet.pretrained import load_imagenet_backbone
from resmasknet.registry import create_model, get_config, list_models

__all__ = [
    "CheckpointMismatch",
    "ConfigError",
    "MaskConfig",
    "NetConfig",
    "ResMaskNet",
    "count_macs",
    "count_parameters",
    "create_model",
    "export_original",
    "get_config",
    "list_models",
    "load_checkpoint",
    "load_imagenet_backbone",
    "load_original",
    "save_checkpoint",
]
