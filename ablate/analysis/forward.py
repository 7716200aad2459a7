"""One forward pass of the unmodified model per batch, shared by everything that needs it.

The probe needs every tap (``layerN``, ``maskN``, ``refineN``), the interventions need the unmodified
logits as their reference and the stage input of the mask they replace, attributions need the
predicted class and deletion curves the probability of the unmodified face. Running the network
once per batch for each of them repeats the most expensive thing the analysis does, so
:func:`shared_forward` runs ``model.forward_taps`` once per batch, hands the batch (logits and taps)
to every consumer, keeps the logits of all images (a :class:`Reference`: a few floats per face) and
drops the taps when the batch is done (memory stays bounded by the batch size).

:func:`forward_after` continues the network from a stage's pre-mask features with a given mask, so
an intervention on stage k re-runs only stages k..4 and the head: the same numbers as a full
forward pass with the mask replaced (tested), at a fraction of the cost (the stage-1 mask alone is
over a third of the paper network's arithmetic).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ablate.analysis.common import batch_slices, check_images, eval_mode, model_device
from resmasknet.config import NUM_STAGES
from resmasknet.model import ResMaskNet

__all__ = ["Batch", "Consumer", "Reference", "forward_after", "shared_forward"]


@dataclass
class Batch:
    """One batch of the shared pass: positions ``sl`` in the images, the prepared input ``x``, true
    ``labels`` (or None), the unmodified model's float32 ``logits`` and every tap."""

    sl: slice
    x: Tensor
    labels: Tensor | None
    logits: Tensor
    taps: dict[str, Tensor]

    @property
    def preds(self) -> Tensor:
        return self.logits.argmax(1)


class Consumer(Protocol):
    """Anything that reads the shared pass batch by batch."""

    def update(self, batch: Batch) -> None: ...


@dataclass
class Reference:
    """The unmodified model's outputs on every analysed face: logits float32 [N, K]."""

    logits: np.ndarray

    @property
    def preds(self) -> np.ndarray:
        return self.logits.argmax(1).astype(np.int64)

    @property
    def probs(self) -> np.ndarray:
        z = self.logits.astype(np.float64)
        z = np.exp(z - z.max(1, keepdims=True))
        return (z / z.sum(1, keepdims=True)).astype(np.float32)


def forward_after(model: ResMaskNet, stage: int, features: Tensor, mask: Tensor | None) -> Tensor:
    """Logits from stage ``stage``'s pre-mask features (the ``layerN`` tap) and a mask for that stage:
    refine with ``mask``, then the later stages (with their own masks) and the head. Equal to the full
    forward pass with stage ``stage``'s mask output replaced by ``mask``."""
    _, _, refine = model.stage(stage)
    x = refine(features, mask)
    for i in range(stage + 1, NUM_STAGES + 1):
        layer, mod, ref = model.stage(i)
        x = layer(x)
        x = ref(x, mod(x) if mod is not None else None)
    return model.forward_head(x).float()


def shared_forward(model: ResMaskNet, images: np.ndarray, labels: np.ndarray | None,
                   consumers: Sequence[Consumer], *, batch_size: int = 64,
                   device: str | torch.device | None = None, progress: bool = False,
                   desc: str = "forward") -> Reference:
    """Run the unmodified model once per batch over uint8 faces [N, H, W] in eval mode without
    gradients, give each batch to every consumer in order, and return the logits of all faces."""
    images, labels_arr = check_images(images, labels)
    dev = model_device(model, device)
    n = images.shape[0]
    k = int(model.config.num_classes)
    logits = np.empty((n, k), np.float32)
    with eval_mode(model), torch.inference_mode():
        for sl in tqdm(batch_slices(n, batch_size), desc=desc, disable=not progress, leave=False):
            x = model.prepare_input(torch.from_numpy(images[sl]).to(dev))
            out, taps = model.forward_taps(x)
            out = out.float()
            lab = None if labels_arr is None else torch.from_numpy(labels_arr[sl]).to(dev)
            batch = Batch(sl=sl, x=x, labels=lab, logits=out, taps=taps)
            for c in consumers:
                c.update(batch)
            logits[sl] = out.cpu().numpy()
    return Reference(logits=logits)
