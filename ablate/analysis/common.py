"""Small generic helpers every module of ``ablate.analysis`` uses: device placement, eval mode,
memory layout, batching, input checks and map resizing.

Nothing here knows about masks or attributions. Device names are checked by
``resmasknet.runtime.resolve_device`` and class names come from ``resmasknet.data.CLASSES``, so the
analysis and the rest of the toolkit cannot disagree about either.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmasknet.data import CLASSES
from resmasknet.runtime import resolve_device

__all__ = [
    "batch_slices",
    "channels_last",
    "check_images",
    "default_classes",
    "eval_mode",
    "faces_to_float",
    "model_device",
    "predict_classes",
    "upsample_maps",
]


def default_classes(num_classes: int) -> tuple[str, ...]:
    """The data layer's class names (``resmasknet.data.CLASSES``) when the counts match, else
    ``class0..``: tables need names."""
    if len(CLASSES) == num_classes:
        return tuple(CLASSES)
    return tuple(f"class{i}" for i in range(num_classes))


def model_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device to run on: the model's own when ``device`` is None, else ``device`` (checked by
    ``resmasknet.runtime.resolve_device``; the model is moved there, because every analysis needs
    model and inputs on one device)."""
    current = next(model.parameters()).device
    if device is None:
        return current
    dev = resolve_device(device)
    if dev != current:
        model.to(dev)
    return dev


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run in eval mode (BatchNorm running statistics, no dropout) and restore the previous mode:
    analyses must be deterministic and must not leave a training model switched to eval."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """Hold the weights in channels_last (the layout ``prepare_input`` gives the faces; a third faster on
    CPU than mixing layouts) and restore the previous layout afterwards. Values are unchanged."""
    conv = next((m.weight for m in model.modules()  # a weight whose two layouts differ (C > 1, k > 1)
                 if isinstance(m, nn.Conv2d) and m.weight.shape[1] > 1 and m.weight.shape[2:].numel() > 1), None)
    was_cl = conv is None or (conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous())
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        if not was_cl:
            model.to(memory_format=torch.contiguous_format)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices covering ``range(n)``: every analysis runs batched to bound memory."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return [slice(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]


def check_images(images: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 faces [N, H, W] and int64 labels [N]; errors name the problem (wrong dtype or shape
    would otherwise surface deep inside torch)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must be uint8 [N, H, W], got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (0-255 grey faces), got {images.dtype}")
    if labels is not None:
        labels = np.asarray(labels).astype(np.int64)
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
    return images, labels


def faces_to_float(images: np.ndarray, device: torch.device) -> Tensor:
    """uint8 [B, H, W] -> float [B, 1, H, W] in [0, 1]: the face space attributions live in."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).unsqueeze(1).float() / 255.0


def upsample_maps(maps: np.ndarray | Tensor, size: int = 48, mode: str = "bilinear") -> np.ndarray:
    """Maps [N, h, w] -> float32 [N, size, size] (bilinear by default): mask reductions live at the
    stage's native resolution; comparing them with pixel attributions needs the face's grid."""
    t = torch.as_tensor(np.asarray(maps) if not isinstance(maps, Tensor) else maps).float()
    if t.ndim != 3:
        raise ValueError(f"maps must be [N, h, w], got shape {tuple(t.shape)}")
    if t.shape[-1] == size and t.shape[-2] == size:
        return t.cpu().numpy().astype(np.float32, copy=False)
    kw: dict[str, Any] = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(t.unsqueeze(1), size=(size, size), mode=mode, **kw).squeeze(1)
    return out.cpu().numpy().astype(np.float32, copy=False)


def predict_classes(model: nn.Module, images: np.ndarray, *, batch_size: int = 64,
                    device: str | torch.device | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes int64 [N], probabilities float32 [N, K]) of uint8 faces, through
    ``resmasknet.evaluate.predict`` (no TTA). Inside :func:`ablate.analysis.analyse` the predictions
    come from the shared forward pass instead; this is for callers that have none."""
    from resmasknet.evaluate import predict

    images, _ = check_images(images)
    dev = model_device(model, device)
    probs = predict(model, images, batch_size=batch_size, device=dev).float().cpu().numpy()  # type: ignore[arg-type]
    return probs.argmax(1).astype(np.int64), probs
