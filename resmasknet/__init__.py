"""ResMaskingNet, configurable: each stage's masking block on or off, its U-Net's depth, width,
activation and application set by config; the paper's network is the `resmasknet_paper` preset and
loads the authors' checkpoints.

Example:
    >>> import resmasknet
    >>> model = resmasknet.create_model("resmasknet_cpu", **{"mask1.enabled": False})
    >>> logits, taps = model.forward_taps(model.prepare_input(faces_uint8))
    >>> taps["mask2"].shape, taps["refine2"].shape
    >>> data = resmasknet.load_data("generated:n=700")
    >>> res = resmasknet.train(model, data, out_dir="runs/x")
    >>> resmasknet.evaluate(model, data.select("test")).accuracy

The names below load on first use, so `import resmasknet.runtime` does not import torch (OpenMP settings
such as `runtime.configure_threads` must be in place before torch loads). `resmasknet.train` and
`resmasknet.evaluate` are the functions; their modules are `sys.modules["resmasknet.train"]` etc., as
`from resmasknet.train import TrainConfig` finds them.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from resmasknet.checkpoint import load_checkpoint, save_checkpoint
    from resmasknet.config import ConfigError, MaskConfig, NetConfig
    from resmasknet.data import FaceData, load_data
    from resmasknet.evaluate import evaluate
    from resmasknet.model import ResMaskNet, count_macs, count_parameters
    from resmasknet.original import CheckpointMismatch, export_original, load_original
    from resmasknet.pretrained import load_imagenet_backbone
    from resmasknet.registry import create_model, get_config, list_models
    from resmasknet.train import train

# public name -> the module that defines it
_LAZY = {
    "load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint",
    "ConfigError": "config", "MaskConfig": "config", "NetConfig": "config",
    "FaceData": "data", "load_data": "data",
    "evaluate": "evaluate",
    "ResMaskNet": "model", "count_macs": "model", "count_parameters": "model",
    "CheckpointMismatch": "original", "export_original": "original", "load_original": "original",
    "load_imagenet_backbone": "pretrained",
    "create_model": "registry", "get_config": "registry", "list_models": "registry",
    "train": "train",
}
# Functions named like the module that defines them: importing that module must not replace the function.
_SHADOWED = frozenset(name for name, module in _LAZY.items() if name == module)

__all__ = [
    "CheckpointMismatch",
    "ConfigError",
    "FaceData",
    "MaskConfig",
    "NetConfig",
    "ResMaskNet",
    "count_macs",
    "count_parameters",
    "create_model",
    "evaluate",
    "export_original",
    "get_config",
    "list_models",
    "load_checkpoint",
    "load_data",
    "load_imagenet_backbone",
    "load_original",
    "save_checkpoint",
    "train",
]
assert sorted(__all__) == sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if not name.startswith("_"):  # a submodule not imported yet (`resmasknet.registry.REGISTRY`)
            try:
                return importlib.import_module(f"resmasknet.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"resmasknet.{name}":
                    raise
        raise AttributeError(f"module 'resmasknet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"resmasknet.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # the import system sets `resmasknet.train = <module>` after loading the submodule: keep the function
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
