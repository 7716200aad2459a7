"""Our checkpoint format: weights, config and metadata in one file, loadable with `weights_only=True`.

The network is rebuilt from the stored config alone, so a checkpoint needs no preset name or code
version to load. Writes are atomic (`runtime.atomic_write`: temporary file, then rename): an interrupted
save never leaves a half-written checkpoint that looks complete. A file that cannot be read says why (empty,
not a PyTorch file at all, or a damaged one).

Example:
    >>> save_checkpoint("best.pt", model, classes=CLASSES, metadata={"epoch": 12, "val_acc": 0.71})
    >>> model, ckpt = load_checkpoint("best.pt")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from resmasknet.config import ConfigError, NetConfig
from resmasknet.model import ResMaskNet
from resmasknet.original import CheckpointMismatch, check_state_dict
from resmasknet.runtime import atomic_write

FORMAT = "resmasknet-checkpoint/1"
# How torch.save files begin: a zip archive (the format since torch 1.6) or a pickle (the legacy format).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def unreadable_reason(path: str | os.PathLike, exc: BaseException | None = None) -> str:
    """Why `path` is not a loadable checkpoint, in words: empty, not a PyTorch file (with its first bytes),
    or a PyTorch file torch could not load (the error, or its type when the error has no message)."""
    name = os.fspath(path)
    try:
        size = os.path.getsize(name)
        with open(name, "rb") as fh:
            head = fh.read(16)
    except OSError as err:
        return f"{name}: cannot read the file ({err.strerror or err})"
    if size == 0:
        return f"{name}: empty file (0 bytes), not a checkpoint"
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        return f"{name}: not a PyTorch file (it starts with {head!r}), not a checkpoint"
    detail = f"{type(exc).__name__}: {exc}" if exc is not None and str(exc) else type(exc).__name__
    if head.startswith(_ZIP_MAGIC):
        return f"{name}: damaged or truncated PyTorch file ({size:,} bytes; {detail})"
    return f"{name}: cannot load this PyTorch file ({detail})"


def save_checkpoint(path: str | os.PathLike, model: ResMaskNet, *, classes: Sequence[str],
                    preprocessing: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> None:
    """`extra` holds training state (optimizer, scheduler, RNG) for resuming; plain values and tensors only."""
    cfg = model.config
    payload = {
        "format": FORMAT,
        "config": cfg.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "classes": list(classes),
        "preprocessing": preprocessing or default_preprocessing(cfg),
        "metadata": metadata or {},
    }
    if extra:
        payload["extra"] = extra
    atomic_torch_save(payload, path)


def default_preprocessing(cfg: NetConfig) -> dict[str, Any]:
    return {"face_size": 48, "input_size": cfg.input_size, "in_chans": cfg.in_chans, "scale": "x/255",
            "normalize": None, "resize": "bilinear"}


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointMismatch(unreadable_reason(path, exc)) from exc
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        hint = " (it looks like an authors' checkpoint: use resmasknet.load_original)" \
            if isinstance(obj, dict) and "net" in obj else ""
        raise CheckpointMismatch(f"{path!r} is not a {FORMAT} checkpoint{hint}")
    return obj


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> tuple[ResMaskNet, dict[str, Any]]:
    """Rebuild the network from the stored config and load its weights; returns (model in eval mode, payload)."""
    ckpt = read_checkpoint(path, map_location)
    try:
        cfg = NetConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointMismatch(f"{os.fspath(path)!r}: stored config is invalid: {exc}") from exc
    model = ResMaskNet(cfg)
    check_state_dict(model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt
