"""Batch augmentation and test-time augmentation, on the training device, seeded.

The authors' recipe: horizontal flip with p=0.5, then rotation uniform in [-30, 30] degrees with
black fill (their imgaug `Fliplr(0.5)` + `Affine(rotate=(-30, 30))`, applied after resizing to the
network's input size). Here one `affine_grid` + `grid_sample` call augments a whole batch on its
device; the random draws come from a CPU `torch.Generator`, so the same seed gives the same batch on
any device and no per-sample Python loop runs.

Example:
    >>> gen = torch.Generator().manual_seed(0)
    >>> x = augment_batch(model, faces_uint8_on_device, gen)         # prepare_input + flip + rotate
    >>> probs = predict_proba(model, x_prepared, tta="flip")         # deterministic flip TTA
    >>> probs = predict_proba(model, x_prepared, tta="authors", generator=gen)  # 10 random draws
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmasknet.model import ResMaskNet
from resmasknet.runtime import autocast

__all__ = ["TTA_MODES", "augment_batch", "predict_proba", "random_affine", "random_affine_params"]

TTA_MODES = (None, "flip", "authors")
AUTHORS_TTA_DRAWS = 10


def random_affine_params(n: int, generator: torch.Generator, *, flip_p: float = 0.5,
                         max_degrees: float = 30.0) -> tuple[Tensor, Tensor]:
    """Draw (flip bool [n], angle in degrees [n]) on the CPU from `generator`."""
    gen_device = generator.device
    flip = torch.rand(n, generator=generator, device=gen_device) < flip_p
    angle = (torch.rand(n, generator=generator, device=gen_device) * 2 - 1) * max_degrees
    return flip.cpu(), angle.cpu()


def _theta(flip: Tensor, angle_deg: Tensor) -> Tensor:
    """[n, 2, 3] sampling matrices: output(p) = image(F @ R^-1 @ p), i.e. flip first, then rotate."""
    a = angle_deg.double() * (math.pi / 180.0)
    cos, sin = torch.cos(a), torch.sin(a)
    sx = 1.0 - 2.0 * flip.double()  # -1 mirrors the x axis
    theta = torch.zeros(flip.shape[0], 2, 3, dtype=torch.float64)
    # R^-1 = [[cos, sin], [-sin, cos]]; F scales the first row of the product by sx
    theta[:, 0, 0] = sx * cos
    theta[:, 0, 1] = sx * sin
    theta[:, 1, 0] = -sin
    theta[:, 1, 1] = cos
    return theta


def random_affine(x: Tensor, generator: torch.Generator, *, flip_p: float = 0.5, max_degrees: float = 30.0,
                  params: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Randomly flip and rotate a float batch [B, C, H, W] (one grid_sample call); black fill, bilinear.

    Identical channels (grey copied to RGB) are warped once and copied. `params` overrides the draw."""
    b, c, h, w = x.shape
    flip, angle = params if params is not None else random_affine_params(
        b, generator, flip_p=flip_p, max_degrees=max_degrees)
    theta = _theta(flip, angle).float()
    # on a GPU, pinned + non_blocking: the copy queues behind the GPU's work instead of the host waiting for it
    on_gpu = x.device.type == "cuda"
    theta = theta.pin_memory().to(x.device, non_blocking=True) if on_gpu else theta.to(x.device)
    # in_chans=3 inputs are one grey channel expanded: warp that channel alone (a third of the work)
    src = x[:, :1] if c > 1 and x.stride(1) == 0 else x
    grid = F.affine_grid(theta, [b, src.shape[1], h, w], align_corners=False)
    out = F.grid_sample(src.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if out.shape[1] != c:
        out = out.expand(-1, c, -1, -1)
    return out.to(x.dtype).contiguous(memory_format=torch.channels_last)


def augment_batch(model: ResMaskNet, images: Tensor, generator: torch.Generator | None, *, flip_p: float = 0.5,
                  max_degrees: float = 30.0) -> Tensor:
    """uint8 faces [B, H, W] on the device -> augmented network input [B, C, S, S], channels_last.

    `model.prepare_input` (scale, resize, grey->C copy), then flip/rotate (resize first, as the authors do);
    `generator=None` or `flip_p=0 and max_degrees=0` returns the plain input."""
    x = model.prepare_input(images)
    if generator is None or (flip_p <= 0 and max_degrees <= 0):
        return x
    grey = images.dim() == 3 or images.shape[1] == 1
    if grey and x.shape[1] > 1:  # the channels are one grey image copied: warp it once (a third of the work)
        x = x[:, :1].expand(-1, x.shape[1], -1, -1)
    return random_affine(x, generator, flip_p=flip_p, max_degrees=max_degrees)


def predict_proba(model: nn.Module, x: Tensor, tta: str | None = None, *, generator: torch.Generator | None = None,
                  draws: int = AUTHORS_TTA_DRAWS, precision: str = "fp32") -> Tensor:
    """Class probabilities [B, K] (float32) for a prepared input batch x, with optional TTA.

    tta=None: softmax of one pass. "flip": mean of the softmax of x and of x mirrored (deterministic).
    "authors": the authors' TTA, `draws` random flip/rotation draws of x, softmax outputs summed
    (divided by `draws` so rows sum to 1; the argmax is theirs). Call under no_grad/inference_mode.
    precision: "bf16" (bf16 autocast) or "fp32", as `runtime.precision_for` decided for the device."""
    if tta not in TTA_MODES:
        raise ValueError(f"tta={tta!r} is not allowed; choose one of None, 'flip', 'authors'")
    def probs(inp: Tensor) -> Tensor:
        with autocast(x.device, precision):
            logits = model(inp)
        return torch.softmax(logits.float(), dim=1)

    if tta is None:
        return probs(x)
    if tta == "flip":
        mirrored = torch.flip(x, dims=[-1]).contiguous(memory_format=torch.channels_last)
        return (probs(x) + probs(mirrored)) / 2
    if generator is None:
        raise ValueError("tta='authors' draws random augmentations: pass a torch.Generator")
    total = torch.zeros(())
    for _ in range(draws):
        total = total + probs(random_affine(x, generator))
    return total / draws
