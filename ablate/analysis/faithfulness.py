"""Deletion and insertion curves: does a saliency ordering point at what the model uses?

For each face and each saliency map, pixels are ranked from most to least salient. *Deletion*
replaces the top fraction t of pixels by a baseline (t = 0, 1/steps, ..., 1) and records the model's
probability for the class the map explains: a faithful map makes it fall fast (low AUC).
*Insertion* starts from the baseline and puts the top pixels back: a faithful map makes it rise
fast (high AUC). A seeded random ordering is the reference every map must beat.

Which class is scored: the one each map explains (``targets``: the class the attributions were
computed for, by default the unmodified model's prediction). Scoring the true class instead would
grade a map of "why fear" by what happens to "sad" on every misclassified face. The true-class
curves come from the same forward passes (another column of the same softmax), so they are
reported too, in columns and curves whose names end in ``_true``.

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
from ablate.analysis.common import (
    batch_slices,
    check_images,
    eval_mode,
    faces_to_float,
    model_device,
    upsample_maps,
)
from ablate.analysis.masks import ATTENDED

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
    """table: one row per map with mean deletion and insertion AUC of the explained class's
    probability, their standard errors, ``difference`` = insertion - deletion (higher is better),
    the same relative to the random ordering (``*_vs_random``), the true-class versions
    (``deletion_auc_true``, ``insertion_auc_true``, ``difference_true``), ``scored_class`` and
    ``orientation``. curves: {"deletion"|"insertion"|"deletion_true"|"insertion_true": {map:
    [N, steps + 1]}}; fractions: the x axis [steps + 1]; targets: the explained class per face."""

    table: pd.DataFrame
    curves: dict[str, dict[str, np.ndarray]]
    fractions: np.ndarray
    options: dict[str, object] = field(default_factory=dict)
    targets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


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
    targets: np.ndarray | None = None,
    target_name: str = "pred",
    reference_probs: np.ndarray | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> FaithfulnessResult:
    """Deletion and insertion curves for every map in ``saliency`` ({name: [N, h, w]}, upsampled
    bilinearly to the face size when smaller) on uint8 faces [N, H, W] with true ``labels``.

    targets: the class each face's maps explain [N] (``AttributionResult.targets``); None: the
    unmodified model's prediction (``target_name`` labels the choice in the table).
    reference_probs: the unmodified model's probabilities [N, K] when the caller has them (the
    shared forward pass); the t = 0 end of the curves then needs no forward pass of its own.
    ``batch_size`` is the number of perturbed faces per forward pass; faces are grouped so that all
    of a face's intermediate steps go through in the same passes. Memory: O(batch_size) images.
    """
    images, labels_arr = check_images(images, labels)
    assert labels_arr is not None
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    dev = model_device(model, device)
    n, h, w = images.shape
    if reference_probs is not None and np.asarray(reference_probs).shape[0] != n:
        raise ValueError(f"reference_probs has {np.asarray(reference_probs).shape[0]} rows for {n} images")
    if targets is not None:
        targets = np.asarray(targets, np.int64)
        if targets.shape != (n,):
            raise ValueError(f"targets must have shape ({n},), got {targets.shape}")
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
    kinds = ("deletion", "insertion", "deletion_true", "insertion_true")
    curves = {c: {k: np.zeros((n, steps + 1), np.float32) for k in names} for c in kinds}
    explained = np.empty(n, np.int64)
    ranks = {k: saliency_ranks(sal[k], np.random.default_rng([seed, i])) for i, k in enumerate(names)}

    per_face = 2 * len(inner)
    group = max(1, batch_size // max(1, per_face))
    with eval_mode(model), torch.inference_mode():
        fm_forward = _prob_fn(model, batch_size)
        for sl in tqdm(batch_slices(n, group), desc="deletion/insertion", disable=not progress, leave=False):
            x = faces_to_float(images[sl], dev)  # [B, 1, H, W]
            b = x.shape[0]
            base = baseline_faces(x, baseline, blur_sigma=blur_sigma)
            if reference_probs is None:
                ends = fm_forward(torch.cat([x, base]))
                p_orig, p_base = ends[:b], ends[b:]
            else:
                p_orig = torch.as_tensor(np.asarray(reference_probs[sl], np.float32), device=dev)
                p_base = fm_forward(base)
            tgt = p_orig.argmax(1) if targets is None else torch.from_numpy(targets[sl]).to(dev)
            explained[sl] = tgt.cpu().numpy()
            lab = torch.from_numpy(labels_arr[sl]).to(dev)
            xf, bf = x.reshape(b, 1, p), base.reshape(b, 1, p)
            cnt = torch.from_numpy(inner).to(dev)[None, :, None]  # [1, T, 1]
            for k in names:
                r = torch.from_numpy(ranks[k][sl]).to(dev)[:, None, :]  # [B, 1, P]
                top = r < cnt  # [B, T, P]: pixel is among the top-count salient
                deleted = torch.where(top, bf, xf)
                inserted = torch.where(top, xf, bf)
                batch = torch.cat([deleted, inserted], 1).reshape(-1, 1, h, w)
                probs = fm_forward(batch).reshape(b, 2, len(inner), -1)  # [B, 2, T, K]
                for suffix, cls in (("", tgt), ("_true", lab)):
                    c = cls.clamp(0, probs.shape[-1] - 1)
                    mid = probs.gather(3, c[:, None, None, None].expand(b, 2, len(inner), 1)).squeeze(3)
                    po, pb = p_orig.gather(1, c[:, None]), p_base.gather(1, c[:, None])
                    dcurve = torch.cat([po, mid[:, 0], pb], 1)
                    icurve = torch.cat([pb, mid[:, 1], po], 1)
                    curves["deletion" + suffix][k][sl] = dcurve.cpu().numpy()
                    curves["insertion" + suffix][k][sl] = icurve.cpu().numpy()

    def sem(a: np.ndarray) -> float:
        return float(a.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")

    rows = []
    for k in names:
        row: dict[str, object] = {"map": k, "n": n, "scored_class": f"explained ({target_name})",
                                  "orientation": ATTENDED}
        for suffix in ("", "_true"):
            d = auc(curves["deletion" + suffix][k], fractions)
            i = auc(curves["insertion" + suffix][k], fractions)
            row.update({f"deletion_auc{suffix}": d.mean() if n else np.nan, f"deletion_sem{suffix}": sem(d),
                        f"insertion_auc{suffix}": i.mean() if n else np.nan, f"insertion_sem{suffix}": sem(i),
                        f"difference{suffix}": (i - d).mean() if n else np.nan})
        rows.append(row)
    table = pd.DataFrame(rows)
    if random_baseline and not table.empty:
        ref = table.set_index("map").loc["random"]
        for suffix in ("", "_true"):
            for kind in ("deletion", "insertion"):
                table[f"{kind}_vs_random{suffix}"] = table[f"{kind}_auc{suffix}"] - ref[f"{kind}_auc{suffix}"]
    table["n_explained_not_true"] = int((explained != labels_arr).sum())
    return FaithfulnessResult(table=table, curves=curves, fractions=fractions, targets=explained,
                              options=dict(steps=steps, baseline=baseline, blur_sigma=blur_sigma, seed=seed,
                                           target=target_name))


def _prob_fn(model: nn.Module, chunk: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """faces [M, 1, H, W] (float, [0, 1]) -> class probabilities [M, K], in chunks of ``chunk``
    faces so memory stays bounded."""

    def run(faces: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, faces.shape[0], chunk):
            logits = model(model.prepare_input(faces[s:s + chunk])).float()  # type: ignore[operator]
            out.append(torch.softmax(logits, 1))
        return torch.cat(out)

    return run
