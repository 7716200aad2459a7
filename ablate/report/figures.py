"""The report's own figures. Each function returns ``(Figure, arrays)``: the matplotlib Figure and the raw
numbers it draws (saved beside the PNG, so every figure can be checked or redrawn). The numbers come in
already computed (confusion matrices from `EvalResult`, intervals from the summary table); nothing here
recomputes a metric.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global backend switch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

__all__ = ["confusion_figure", "cost_scatter", "faces_strip", "forest_plot", "misclassified_grid",
           "new_figure", "row_normalise"]

Arrays = dict[str, np.ndarray]


def new_figure(**kw: Any) -> Figure:
    return Figure(layout="constrained", **kw)


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (recall per true class); rows without images stay 0."""
    s = cm.sum(axis=1, keepdims=True).astype(float)
    return np.divide(cm, s, out=np.zeros_like(cm, dtype=float), where=s > 0)


def cost_scatter(trials: pd.DataFrame, metric: str = "test_acc") -> tuple[Figure, Arrays]:
    """``metric`` (mean ± sd over seeds, in %) against parameters and MACs, one point per variant."""
    fig = new_figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    g = trials.groupby("variant", sort=False)
    agg = pd.DataFrame({"mean": g[metric].mean() * 100, "sd": g[metric].std(ddof=1).fillna(0) * 100,
                        "params": g["params"].mean(), "macs": g["macs"].mean()})
    for ax, col, label in ((axes[0], "params", "parameters"), (axes[1], "macs", "MACs per image")):
        for name, r in agg.iterrows():
            ax.errorbar(r[col], r["mean"], yerr=r["sd"], fmt="o", capsize=4, label=str(name))
            ax.annotate(str(name), (r[col], r["mean"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric} (%) mean ± sd over seeds")
        ax.grid(alpha=.3)
    axes[0].legend(fontsize=8)
    return fig, {"variants": np.array(agg.index.astype(str)),
                 "stats": agg[["mean", "sd", "params", "macs"]].to_numpy(dtype=float)}


def confusion_figure(cms: Mapping[str, np.ndarray], classes: Sequence[str], baseline: str | None,
                     counts: str = "counts (sum over seeds)") -> tuple[Figure, Arrays]:
    """Counts, row-normalised and (with a baseline among ``cms``) the difference to the baseline, per variant."""
    import seaborn as sns

    names = list(cms)
    rows = 3 if baseline in cms and len(names) > 1 else 2
    fig = new_figure(figsize=(4.2 * len(names) + 1, 3.9 * rows))
    axes = np.atleast_2d(fig.subplots(rows, len(names), squeeze=False))
    vmax = max(int(c.max()) for c in cms.values()) or 1
    diffs = ({n: row_normalise(cms[n]) - row_normalise(cms[str(baseline)]) for n in names} if rows == 3 else {})
    dmax = max([float(np.abs(d).max()) for d in diffs.values()] + [1e-9])
    kw: dict[str, Any] = {"square": True, "xticklabels": classes, "yticklabels": classes}
    for j, n in enumerate(names):
        last = j == len(names) - 1
        sns.heatmap(cms[n], ax=axes[0, j], annot=True, fmt="d", cmap="Blues", vmin=0, vmax=vmax, cbar=last,
                    annot_kws={"size": 7}, **kw)
        axes[0, j].set_title(f"{n}: {counts}")
        sns.heatmap(row_normalise(cms[n]), ax=axes[1, j], annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1,
                    cbar=last, annot_kws={"size": 6}, **kw)
        axes[1, j].set_title(f"{n}: row-normalised (recall)")
        if rows == 3:
            sns.heatmap(diffs[n], ax=axes[2, j], annot=True, fmt=".2f", cmap="RdBu_r", vmin=-dmax, vmax=dmax,
                        cbar=last, annot_kws={"size": 6}, **kw)
            axes[2, j].set_title(f"{n} − {baseline} (row-normalised)")
        for ax in axes[:, j]:
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.tick_params(labelsize=7)
    arrays = {f"counts/{n}": np.asarray(c) for n, c in cms.items()}
    arrays.update({f"diff/{n}": d for n, d in diffs.items()})
    return fig, arrays


def misclassified_grid(images: np.ndarray, confusion: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                       classes: Sequence[str], n_cells: int = 6, per_cell: int = 8) -> tuple[Figure | None, Arrays]:
    """The ``n_cells`` largest off-diagonal cells of ``confusion``, ``per_cell`` faces each. ``images[i]`` is the
    face of row i of ``labels`` / ``predictions``. (None, {}) when nothing is misclassified."""
    k = len(classes)
    off = sorted(((int(confusion[i, j]), i, j) for i in range(k) for j in range(k) if i != j and confusion[i, j]),
                 reverse=True)[:n_cells]
    if not off:
        return None, {}
    fig = new_figure(figsize=(1.1 * per_cell + 1.5, 1.25 * len(off) + .4))
    axes = np.atleast_2d(fig.subplots(len(off), per_cell, squeeze=False))
    idx_all = np.full((len(off), per_cell), -1)
    for r, (c, i, j) in enumerate(off):
        idx = np.flatnonzero((labels == i) & (predictions == j))[:per_cell]
        idx_all[r, :len(idx)] = idx
        for col in range(per_cell):
            ax = axes[r, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col < len(idx):
                ax.imshow(images[idx[col]], cmap="gray", vmin=0, vmax=255)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(f"{classes[i]}→{classes[j]}\n({c})", fontsize=8)
    fig.suptitle("most frequent confusions: true → predicted (count); first test images of each cell")
    return fig, {"index": idx_all, "cells": np.array([[c, i, j] for c, i, j in off])}


def forest_plot(table: pd.DataFrame, *, rope: float | None = None, baseline: str | None = None,
                metric: str = "test_acc", scale: float = 100.0, unit: str = "points") -> tuple[Figure, Arrays]:
    """Paired difference to the baseline with its interval, one row per variant, a line at 0 and the ±``rope``
    margin shaded. ``table``: the summary table (``variant, mean_diff, diff_ci_low, diff_ci_high`` in the
    metric's units); drawn times ``scale`` (fractions as percentage points); arrays in the table's units."""
    rows = table[table["variant"].astype(str) != str(baseline)] if baseline is not None else table
    rows = rows[pd.to_numeric(rows["mean_diff"], errors="coerce").notna()]
    names = [str(v) for v in rows["variant"]]
    mean = rows["mean_diff"].to_numpy(dtype=float)
    lo = pd.to_numeric(rows["diff_ci_low"], errors="coerce").to_numpy(dtype=float)
    hi = pd.to_numeric(rows["diff_ci_high"], errors="coerce").to_numpy(dtype=float)
    fig = new_figure(figsize=(7.5, 0.55 * max(len(names), 1) + 1.4))
    ax = fig.subplots()
    y = np.arange(len(names))[::-1]
    if rope:
        ax.axvspan(-rope * scale, rope * scale, color="#999", alpha=.2, lw=0, label=f"±{rope * scale:g} {unit} (ROPE)")
    ax.axvline(0, color="#333", lw=1)
    if len(names):
        err = np.vstack([mean - lo, hi - mean]) * scale
        ax.errorbar(mean * scale, y, xerr=np.where(np.isfinite(err), err, 0), fmt="o", color="#1f4e9c", capsize=4,
                    label="mean paired difference, CI")
    ax.set_yticks(y, names)
    ax.set_ylim(-0.7, max(len(names) - 0.3, 0.7))
    ax.set_xlabel(f"{metric} − {baseline or 'baseline'} ({unit})")
    ax.set_title(f"paired differences to {baseline or 'the baseline'} over seeds")
    ax.grid(axis="x", alpha=.3)
    ax.legend(fontsize=8, loc="best")
    return fig, {"variants": np.array(names), "mean_diff": mean, "diff_ci_low": lo, "diff_ci_high": hi,
                 "rope": np.array(float(rope) if rope else np.nan)}


def faces_strip(faces: np.ndarray, titles: Sequence[str]) -> tuple[Figure, Arrays]:
    """The faces given to the model in a row, each titled (e.g. with its predicted class)."""
    fig = new_figure(figsize=(1.6 * len(faces) + .5, 2.0))
    axes = np.atleast_1d(fig.subplots(1, len(faces), squeeze=False)[0])
    for ax, f, t in zip(axes, faces, titles):
        ax.imshow(f, cmap="gray", vmin=0, vmax=255)
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    return fig, {"faces": np.asarray(faces)}
