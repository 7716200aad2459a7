"""Spatial comparisons of maps: against ground-truth evidence regions, and against each other.

Localisation (generated data only, where ``regions`` marks the pixels that carry the class
evidence). Every map is read as "larger = attended more" (mask maps are oriented so, see
:mod:`ablate.analysis.masks`) and shifted by its own minimum first (``map - min(map)`` per image):
a softmax max-over-channels map never falls below 1/C, and that floor alone would spread mass
evenly over the face and cap the mass score. Then

* ``mass``      the fraction of the shifted map's total inside the region (energy-based pointing
                game); a map that ignores the region scores about the region's area fraction;
* ``mass_ratio``  mass / area fraction: 1 = no better than spreading evenly, > 1 = concentrated on
                the evidence (comparable across images whose regions differ in size);
* ``pointing``  1 if the map's maximum lies inside the region dilated by ``tolerance`` pixels
                (a small dilation forgives the one-pixel blur of upsampled low-resolution maps).

Baselines: ``random`` (seeded uniform noise maps: mass ~ area fraction, pointing ~ dilated area
fraction), ``uniform`` (a flat map, scored analytically: mass = area fraction, pointing = the
chance a random pixel hits the dilated region) and ``prior`` (the data prior: the mean evidence
region over the data set's images, one image-independent map for every face). On generated faces
the evidence sits in roughly the same places on every face, so an image-independent centred blob
already beats random by a wide margin: "beats random" proves nothing, and the gain over the prior
(``mass_gain_vs_prior``, ``pointing_gain_vs_prior``; paired per image, with standard errors) is
the number that says a map looks at *this* face's evidence. The prior itself scores gain 0 and a
map equal to the ground truth scores the largest gain possible, 1 - mass(prior).

Agreement between a mask reduction and an attribution map: Spearman rank correlation over the
pixels and the IoU of their top-k% pixels, per image and then averaged; ``iou_topK_chance`` is the
IoU two independent random top-k sets have on average, k / (2 - k).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from ablate.analysis.common import upsample_maps
from ablate.analysis.masks import orientation

__all__ = ["BASELINE_MAPS", "data_prior", "dilate", "localisation", "localisation_scores", "map_agreement",
           "spearman_rows", "topk_iou"]

#: The rows of the localisation table that are references, not maps of the model.
BASELINE_MAPS = ("random", "uniform", "prior")


def dilate(regions: np.ndarray, tolerance: int) -> np.ndarray:
    """Binary dilation of regions [N, H, W] by a (2t+1)-square: a max-pool, fast for thousands of maps."""
    r = np.asarray(regions) > 0
    if tolerance <= 0:
        return r
    t = torch.from_numpy(r.astype(np.float32)).unsqueeze(1)
    k = 2 * tolerance + 1
    return (F.max_pool2d(t, k, stride=1, padding=tolerance).squeeze(1) > 0).numpy()


def data_prior(regions: np.ndarray) -> np.ndarray:
    """The data prior [H, W]: the fraction of the data set's images whose evidence region covers each
    pixel. Image-independent by construction."""
    r = np.asarray(regions) > 0
    if r.ndim != 3 or r.shape[0] == 0:
        raise ValueError(f"regions must be [N, H, W] with N >= 1, got {r.shape}")
    return r.mean(0).astype(np.float64)


def localisation_scores(maps: np.ndarray, regions: np.ndarray, *, tolerance: int = 1
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (mass [N], pointing [N]) of maps [N, H, W] against regions [N, H, W] (see module
    docstring; each map is shifted by its own minimum first). NaN where undefined: an empty region
    or a flat map (no mass after the shift, no maximum to point with)."""
    m = np.nan_to_num(np.asarray(maps, np.float64))
    r = np.asarray(regions) > 0
    if m.shape != r.shape:
        if m.shape[0] != r.shape[0] or m.ndim != 3:
            raise ValueError(f"maps {m.shape} and regions {r.shape} do not match")
        m = upsample_maps(m, r.shape[-1]).astype(np.float64)
    n = m.shape[0]
    flat, rf = m.reshape(n, -1), r.reshape(n, -1)
    flat = flat - flat.min(1, keepdims=True)
    total = flat.sum(1)
    has_region = rf.any(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.where((total > 0) & has_region, (flat * rf).sum(1) / total, np.nan)
    dil = dilate(r, tolerance).reshape(n, -1)
    arg = flat.argmax(1)
    hit = dil[np.arange(n), arg].astype(np.float64)
    flat_map = flat.max(1) <= 0
    pointing = np.where(has_region & ~flat_map, hit, np.nan)
    return mass, pointing


def _sem(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else float("nan")


def _mean(a: np.ndarray) -> float:
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def localisation(maps: Mapping[str, np.ndarray], regions: np.ndarray, *, tolerance: int = 1,
                 baselines: bool = True, seed: int = 0, n_random: int = 8,
                 prior: np.ndarray | None = None) -> pd.DataFrame:
    """One row per map (plus the ``random``, ``uniform`` and ``prior`` baselines): mean mass,
    mass_ratio and pointing with standard errors, the mean region area fraction, how many images
    were scored, each map's paired gain over the prior and over random (``mass_gain_vs_prior``,
    ``mass_gain_vs_prior_sem``, ``pointing_gain_vs_prior``, ``..._vs_random``), ``baseline`` (True
    for reference rows) and ``orientation``.

    prior: the data prior [H, W] (:func:`data_prior` of the data set's regions); default: the prior
    of ``regions`` themselves. The random baseline averages ``n_random`` seeded noise maps per
    image, so its own noise does not pass for an effect on small samples."""
    r = np.asarray(regions) > 0
    n = r.shape[0]
    area = r.reshape(n, -1).mean(1)
    dil_area = dilate(r, tolerance).reshape(n, -1).mean(1)
    valid_area = np.where(area > 0, area, np.nan)
    scores: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, a in maps.items():
        scores[name] = localisation_scores(a, r, tolerance=tolerance)
    refs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rng = np.random.default_rng(seed)
    draws = [localisation_scores(rng.random(r.shape), r, tolerance=tolerance) for _ in range(max(1, n_random))]
    refs["random"] = (np.mean([d[0] for d in draws], 0), np.mean([d[1] for d in draws], 0))
    has = area > 0
    refs["uniform"] = (np.where(has, area, np.nan), np.where(has, dil_area, np.nan))
    pr = data_prior(r) if prior is None else np.asarray(prior, np.float64)
    if pr.shape != r.shape[1:]:
        pr = upsample_maps(pr[None], r.shape[-1])[0].astype(np.float64)
    refs["prior"] = localisation_scores(np.broadcast_to(pr, r.shape), r, tolerance=tolerance)

    def row(name: str, mass: np.ndarray, pointing: np.ndarray, baseline: bool) -> dict[str, object]:
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = mass / valid_area
        out: dict[str, object] = {
            "map": name, "baseline": baseline, "orientation": orientation(name) if not baseline else "reference",
            "n": n, "n_mass": int(np.isfinite(mass).sum()), "n_pointing": int(np.isfinite(pointing).sum()),
            "mass": _mean(mass), "mass_sem": _sem(mass), "mass_ratio": _mean(ratio),
            "pointing": _mean(pointing), "pointing_sem": _sem(pointing), "area": _mean(valid_area)}
        for ref in ("prior", "random"):
            for col, mine, theirs in (("mass", mass, refs[ref][0]), ("pointing", pointing, refs[ref][1])):
                d = mine - theirs  # paired per image
                out[f"{col}_gain_vs_{ref}"] = _mean(d)
                out[f"{col}_gain_vs_{ref}_sem"] = _sem(d)
        return out

    rows = [row(name, *sc, False) for name, sc in scores.items()]
    if baselines:
        rows += [row(name, *sc, True) for name, sc in refs.items()]
    return pd.DataFrame(rows)


def _centred_ranks(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise average ranks, centred, and their norms: computed once per map for all pairs."""
    r = rankdata(a, axis=1)
    r = r - r.mean(1, keepdims=True)
    return r, np.sqrt((r * r).sum(1))


def _spearman_from_ranks(ra: tuple[np.ndarray, np.ndarray], rb: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    den = ra[1] * rb[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra[0] * rb[0]).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of rows of a, b [N, P] -> [N] (ties get average ranks;
    NaN where either row is constant)."""
    return _spearman_from_ranks(_centred_ranks(a), _centred_ranks(b))


def _top_set(a: np.ndarray, k: float) -> np.ndarray:
    n, p = a.shape
    m = max(1, int(round(k * p)))
    t = np.zeros((n, p), bool)
    np.put_along_axis(t, np.argpartition(-a, m - 1, axis=1)[:, :m], True, axis=1)
    return t


def _iou_from_sets(ta: np.ndarray, tb: np.ndarray, const: np.ndarray) -> np.ndarray:
    inter = (ta & tb).sum(1)
    union = (ta | tb).sum(1)
    return np.where(const, np.nan, inter / np.maximum(union, 1))


def _constant_rows(a: np.ndarray) -> np.ndarray:
    return a.max(1) <= a.min(1)


def topk_iou(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """IoU of the top ``k`` fraction of pixels of each pair of rows of a, b [N, P] -> [N] (NaN where
    either row is constant: its top set would be arbitrary)."""
    return _iou_from_sets(_top_set(a, k), _top_set(b, k), _constant_rows(a) | _constant_rows(b))


def map_agreement(mask_maps: Mapping[str, np.ndarray], attr_maps: Mapping[str, np.ndarray], *,
                  top_k: Sequence[float] = (0.1, 0.2), size: int = 48) -> pd.DataFrame:
    """Agreement of every mask map with every attribution map (both [N, h, w], upsampled bilinearly
    to ``size``): one row per pair with mean Spearman correlation (and its standard error), mean
    top-k% IoU for each k, the chance IoU, and the number of images with a defined value.
    Ranks and top sets are computed once per map, so many pairs stay cheap."""

    def prep(v: np.ndarray) -> dict[str, object]:
        a = np.nan_to_num(upsample_maps(v, size).reshape(len(v), -1).astype(np.float64))
        return {"n": a.shape[0], "ranks": _centred_ranks(a), "const": _constant_rows(a),
                "top": {k: _top_set(a, k) for k in top_k}}

    attrs = {k: prep(v) for k, v in attr_maps.items()}
    rows = []
    for mk, mv in mask_maps.items():
        m = prep(mv)
        for ak, a in attrs.items():
            if a["n"] != m["n"]:
                raise ValueError(f"{mk!r} has {m['n']} maps but {ak!r} has {a['n']}")
            rho = _spearman_from_ranks(m["ranks"], a["ranks"])  # type: ignore[arg-type]
            row: dict[str, float | str | int] = {
                "mask_map": mk, "attribution": ak, "orientation": orientation(mk), "n": int(np.isfinite(rho).sum()),
                "spearman": float(np.nanmean(rho)) if np.isfinite(rho).any() else float("nan"),
                "spearman_sem": _sem(rho)}
            const = m["const"] | a["const"]  # type: ignore[operator]
            for k in top_k:
                iou = _iou_from_sets(m["top"][k], a["top"][k], const)  # type: ignore[index]
                pct = int(round(100 * k))
                row[f"iou_top{pct}"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
                row[f"iou_top{pct}_chance"] = k / (2 - k)
            rows.append(row)
    return pd.DataFrame(rows)
