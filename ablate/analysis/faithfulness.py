"""Deletion and insertion curves: does a saliency ordering point at what the model uses?

For each face and each saliency map, pixels are ranked from most to least salient. *Deletion*
replaces the top fraction t of pixels by a baseline (t = 0, 1/steps, ..., 1) and records the model's
probability for the true class: a faithful map makes it fall fast (low AUC). *Insertion* starts from
the baseline and puts the top pixels back: a faithful map makes it rise fast (high AUC). A seeded
random ordering is the reference every map must beat.

Baseline ``blur`` (default): a Gaussian-blurred copy of the face, so deleted pixels stay in the
range of natural faces instead of creating sharp grey holes (which a CNN can react to in itself).
``mean``: each face's mean grey. Ties in a map (flat regions, all-zero maps) are broken at random,
seeded, so a flat map behaves like the random baseline instead of deleting in raster order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ablate.analysis.attribution import baseline_faces
from ablate.analysis.probe import (
    batch_slices,
    check_images,
    eval_mode,
    faces_to_float,
    resolve_device,
    upsample_maps,
)

__all__ = ["FaithfulnessResult", "auc", "deletion_insertion", "saliency_ranks"]


def auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Area under each curve [N, T] over ``fractions`` [T] in [0, 1] (trapezoid rule) -> [N]."""
    c = np.asarray(curves, np.float64)
    dx = np.diff(np.asarray(fractions, np.float64))
    return ((c[..., 1:] + c[..., :-1]) * 0.5 * dx).sum(axis=-1)


def saliency_ranks(maps: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For maps [N, P] (flattened), the rank of every pixel (0 = most salient) [N, P], ties broken
    by a random key from ``rng``."""
    n, p = maps.shape
    tie = rng.random((n, p))
    order = np.lexsort((tie, -np.nan_to_num(maps.astype(np.float64), nan=-np.inf)), axis=-1)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(p)[None, :].repeat(n, 0), axis=-1)
    return ranks


@dataclass
class FaithfulnessResult:
    """table: one row per map with mean deletion and insertion AUC (of the true-class probability),
    their standard errors, ``insertion_auc - deletion_auc`` (higher is better), and the same numbers
    relative to the random ordering. curves: {"deletion"|"insertion": {map: [N, steps + 1]}};
    fractions: the x axis [steps + 1]."""

    table: pd.DataFrame
    curves: dict[str, dict[str, np.ndarray]]
    fractions: np.ndarray
    options: dict[str, object] = field(default_factory=dict)


def deletion_insertion(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    saliency: Mapping[str, np.ndarray],
    *,
    steps: int = 20,
    baseline: str = "blur",
    blur_sigma: float = 4.0,
    random_baseline: bool = True,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FaithfulnessResult:
    """Deletion and insertion curves for every map in ``saliency`` ({name: [N, h, w]}, upsampled
    bilinearly to the face size when smaller) on uint8 faces [N, H, W] with true ``labels``.

    ``batch_size`` is the number of perturbed faces per forward pass; faces are grouped so that all
    of a face's intermediate steps go through in the same passes. Memory: O(batch_size) images.
    """
    images, labels_arr = check_images(images, labels)
    assert labels_arr is not None
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    dev = resolve_device(model, device)
    n, h, w = images.shape
    p = h * w
    names = list(saliency)
    sal = {}
    for k in names:
        a = np.asarray(saliency[k], np.float32)
        if a.shape[0] != n:
            raise ValueError(f"saliency {k!r} has {a.shape[0]} maps for {n} images")
        sal[k] = (a if a.shape[1:] == (h, w) else upsample_maps(a, h)).reshape(n, p)
    rng = np.random.default_rng(seed)
    if random_baseline:
        sal["random"] = rng.random((n, p)).astype(np.float32)
        names.append("random")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * p).astype(np.int64)
    inner = counts[1:-1]  # steps 1..steps-1; the ends are the same for every map
    curves = {c: {k: np.zeros((n, steps + 1), np.float32) for k in names} for c in ("deletion", "insertion")}
    ranks = {k: saliency_ranks(sal[k], np.random.default_rng([seed, i])) for i, k in enumerate(names)}

    per_face = 2 * len(inner)
    group = max(1, batch_size // max(1, per_face))
    with eval_mode(model), torch.inference_mode():
        fm_forward = _prob_fn(model, batch_size)
        for sl in tqdm(batch_slices(n, group), desc="deletion/insertion", disable=not progress, leave=False):
            x = faces_to_float(images[sl], dev)  # [B, 1, H, W]
            b = x.shape[0]
            base = baseline_faces(x, baseline, blur_sigma=blur_sigma)
            lab = torch.from_numpy(labels_arr[sl]).to(dev)
            ends = fm_forward(torch.cat([x, base]), torch.cat([lab, lab]))
            p_orig, p_base = ends[:b], ends[b:]
            xf, bf = x.reshape(b, 1, p), base.reshape(b, 1, p)
            cnt = torch.from_numpy(inner).to(dev)[None, :, None]  # [1, T, 1]
            for k in names:
                r = torch.from_numpy(ranks[k][sl]).to(dev)[:, None, :]  # [B, 1, P]
                top = r < cnt  # [B, T, P]: pixel is among the top-count salient
                deleted = torch.where(top, bf, xf)
                inserted = torch.where(top, xf, bf)
                batch = torch.cat([deleted, inserted], 1).reshape(-1, 1, h, w)
                probs = fm_forward(batch, lab.repeat_interleave(2 * len(inner))).reshape(b, 2, len(inner))
                dcurve = torch.cat([p_orig[:, None], probs[:, 0], p_base[:, None]], 1)
                icurve = torch.cat([p_base[:, None], probs[:, 1], p_orig[:, None]], 1)
                curves["deletion"][k][sl] = dcurve.cpu().numpy()
                curves["insertion"][k][sl] = icurve.cpu().numpy()

    rows = []
    for k in names:
        d, i = auc(curves["deletion"][k], fractions), auc(curves["insertion"][k], fractions)
        rows.append({"map": k, "n": n, "deletion_auc": d.mean() if n else np.nan,
                     "deletion_sem": d.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
                     "insertion_auc": i.mean() if n else np.nan,
                     "insertion_sem": i.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan,
                     "difference": (i - d).mean() if n else np.nan})
    table = pd.DataFrame(rows)
    if random_baseline and not table.empty:
        ref = table.set_index("map").loc["random"]
        table["deletion_vs_random"] = table["deletion_auc"] - ref["deletion_auc"]
        table["insertion_vs_random"] = table["insertion_auc"] - ref["insertion_auc"]
    return FaithfulnessResult(table=table, curves=curves, fractions=fractions,
                              options=dict(steps=steps, baseline=baseline, blur_sigma=blur_sigma, seed=seed))


def _prob_fn(model: nn.Module, chunk: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """faces [M, 1, H, W] (float, [0, 1]) and classes [M] -> the probability of that class [M],
    in chunks of ``chunk`` faces so memory stays bounded."""

    def run(faces: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, faces.shape[0], chunk):
            logits = model(model.prepare_input(faces[s:s + chunk])).float()  # type: ignore[operator]
            out.append(torch.softmax(logits, 1).gather(1, cls[s:s + chunk, None]).squeeze(1))
        return torch.cat(out) if out else torch.zeros(0, device=faces.device)

    return run
