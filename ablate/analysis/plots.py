"""Figures of masks, attributions and the analysis numbers.

Every figure function returns ``(Figure, arrays)``: the matplotlib Figure and a dict of the raw
numpy arrays drawn in it, so a paper figure can be redrawn from the numbers without rerunning the
model. ``save_figure`` writes ``name.png`` and, beside it, ``name.npy`` (one array) or ``name.npz``.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot): no global backend switch,
no figure leaks in long loops, and they still display in Jupyter and save as PNG (Agg). Colour
scales are shared wherever panels show the same quantity (a row of one stage's maps, a column of
one attribution method), with one colour bar per shared scale.

(A little over 400 lines on purpose: one small independent function per figure, and the figures
share colour-scale helpers; splitting them would scatter those helpers.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import cm, colors
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ablate.analysis.attribution import AttributionResult
from ablate.analysis.common import upsample_maps
from ablate.analysis.faithfulness import FaithfulnessResult
from ablate.analysis.probe import ProbeResult

__all__ = [
    "agreement_plot",
    "captum_panel",
    "class_mean_grid",
    "faithfulness_plot",
    "intervention_plot",
    "localisation_plot",
    "mask_gallery",
    "sanity_plot",
    "save_figure",
    "stage_summary_plot",
]

SEQ_CMAP = "magma"
DIV_CMAP = "RdBu_r"
_TITLE = 10
_LABEL = 9

MAP_LABELS = {
    "max": "max over channels",
    "entropy": "channel entropy / log C",
    "kl": "KL from uniform (nats)",
    "mean": "mean over channels",
    "gain": "gain ||x(1+m)||/||x||",
}


def _limits(arrays: Sequence[np.ndarray] | np.ndarray, *, pct: float = 99.0, symmetric: bool = False
            ) -> tuple[float, float]:
    """A shared colour range for panels of one quantity: robust (percentile) so one hot pixel does
    not wash out the rest; symmetric around 0 for signed maps."""
    vals = np.concatenate([np.ravel(a) for a in arrays]) if isinstance(arrays, (list, tuple)) else np.ravel(arrays)
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return (0.0, 1.0)
    if symmetric:
        v = float(np.percentile(np.abs(vals), pct)) or 1e-12
        return (-v, v)
    lo, hi = float(np.percentile(vals, 100 - pct)), float(np.percentile(vals, pct))
    if hi <= lo:
        hi = lo + 1e-12
    return (lo, hi)


def _off(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _colorbar(fig: Figure, axes: np.ndarray | list[Axes], vmin: float, vmax: float, cmap: str, label: str,
              orientation: str = "vertical") -> None:
    sm = cm.ScalarMappable(norm=colors.Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=list(np.asarray(axes, dtype=object).ravel()), orientation=orientation, shrink=0.9,
                      pad=0.01)
    cb.set_label(label, fontsize=_LABEL)
    cb.ax.tick_params(labelsize=_LABEL - 1)


def _overlay(ax: Axes, face: np.ndarray, heat: np.ndarray, vmin: float, vmax: float, cmap: str, alpha: float) -> None:
    """The face in grey with the heat map alpha-blended on top (heat already at the face's size)."""
    ax.imshow(face, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.imshow(heat, cmap=cmap, vmin=vmin, vmax=vmax, alpha=alpha, interpolation="bilinear")
    _off(ax)


# ---------------------------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------------------------
def mask_gallery(probe: ProbeResult, images: np.ndarray, stage: int | str, *, n: int = 8, alpha: float = 0.55,
                 start: int = 0) -> tuple[Figure, dict[str, np.ndarray]]:
    """One stage's mask for ``n`` faces: the faces, then for each reduction (and the gain) a row at
    the stage's native resolution and a row upsampled bilinearly to 48 px and blended over the face.
    ``images`` are the faces given to ``probe`` (the kept maps are its first images)."""
    st = probe.stage(stage)
    maps = probe.maps.get(st.name, {})
    k = len(probe.kept)
    n = max(0, min(n, k - start))
    if n == 0:
        raise ValueError("the probe kept no per-image maps in that range: rerun probe with keep_maps=True")
    idx = probe.kept[start:start + n]
    faces = np.asarray(images)[idx]
    names = list(maps)
    rows = 1 + 2 * len(names)
    fig = Figure(figsize=(1.25 * n + 1.6, 1.3 * rows + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, n, squeeze=False))
    arrays: dict[str, np.ndarray] = {"faces": faces, "index": idx}
    for j in range(n):
        axes[0, j].imshow(faces[j], cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(f"#{int(idx[j])} {probe.classes[probe.labels[idx[j]]]}"
                             f"\npred {probe.classes[probe.preds[idx[j]]]}", fontsize=_LABEL - 1)
        _off(axes[0, j])
    axes[0, 0].set_ylabel("face", fontsize=_LABEL)
    for r, name in enumerate(names):
        native = maps[name][start:start + n]
        up = upsample_maps(native, faces.shape[-1])
        arrays[name] = native
        arrays[f"{name}_up"] = up
        vmin, vmax = _limits([native])
        for j in range(n):
            ax = axes[1 + 2 * r, j]
            ax.imshow(native[j], cmap=SEQ_CMAP, vmin=vmin, vmax=vmax, interpolation="nearest")
            _off(ax)
            _overlay(axes[2 + 2 * r, j], faces[j], up[j], vmin, vmax, SEQ_CMAP, alpha)
        label = MAP_LABELS.get(name, name)
        axes[1 + 2 * r, 0].set_ylabel(f"{name}\n{native.shape[-1]}px", fontsize=_LABEL)
        axes[2 + 2 * r, 0].set_ylabel(f"{name}\nover face", fontsize=_LABEL)
        _colorbar(fig, axes[1 + 2 * r:3 + 2 * r, :], vmin, vmax, SEQ_CMAP, label)
    flag = "" if st.applied else " (UNAPPLIED: never reaches the features)"
    fig.suptitle(f"{st.name}: {st.activation} mask, {st.application}, C={st.channels}, {st.size}px{flag}",
                 fontsize=_TITLE + 1)
    return fig, arrays


def class_mean_grid(probe: ProbeResult, *, map_name: str | None = None, diff: bool = False
                    ) -> tuple[Figure, dict[str, np.ndarray]]:
    """Per-class mean mask maps: one row per stage, one column per class (plus the all-class mean
    when ``diff`` is False). ``map_name``: a reduction or ``gain`` (default: each stage's primary
    reduction). ``diff=True`` draws class minus all-class mean on a symmetric diverging scale.
    The colour scale is shared along each row (one stage, one quantity)."""
    stages = probe.stages
    if not stages:
        raise ValueError("the model has no masks to draw")
    k = len(probe.classes)
    cols = k + (0 if diff else 1)
    fig = Figure(figsize=(1.3 * cols + 1.8, 1.45 * len(stages) + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(stages), cols, squeeze=False))
    arrays: dict[str, np.ndarray] = {"class_counts": probe.class_counts}
    diffs = probe.class_diff_maps() if diff else {}
    for r, st in enumerate(stages):
        name = map_name or st.primary
        if name not in probe.class_mean_maps.get(st.name, {}):
            raise KeyError(f"{st.name} has no map {name!r}; maps: {list(probe.class_mean_maps.get(st.name, {}))}")
        per_class = diffs[st.name][name] if diff else probe.class_mean_maps[st.name][name]
        panels = list(per_class) + ([] if diff else [probe.mean_maps[st.name][name]])
        arrays[f"{st.name}/{name}"] = per_class
        if not diff:
            arrays[f"{st.name}/{name}/all"] = probe.mean_maps[st.name][name]
        vmin, vmax = _limits(panels, pct=100.0, symmetric=diff)
        cmap = DIV_CMAP if diff else SEQ_CMAP
        for c in range(cols):
            ax = axes[r, c]
            ax.imshow(panels[c], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            _off(ax)
            if r == 0:
                title = "all" if c == k else f"{probe.classes[c]}\n(n={int(probe.class_counts[c])})"
                ax.set_title(title, fontsize=_LABEL)
        axes[r, 0].set_ylabel(f"{st.name}\n{st.size}px", fontsize=_LABEL)
        label = f"{name} - all" if diff else MAP_LABELS.get(name, name)
        _colorbar(fig, axes[r, :], vmin, vmax, cmap, label)
    fig.suptitle("Per-class mean mask" + (" minus the all-class mean" if diff else "")
                 + " (classes by true label)", fontsize=_TITLE + 1)
    return fig, arrays


def stage_summary_plot(probe: ProbeResult) -> tuple[Figure, dict[str, np.ndarray]]:
    """Per-image distributions, per stage, of the mean effective gain, the channel peakedness
    (normalised entropy for softmax, else mean) and the relative feature change: box plots."""
    import seaborn as sns

    df = probe.image_stats
    fig = Figure(figsize=(11, 3.4), layout="constrained")
    axes = fig.subplots(1, 3)
    arrays: dict[str, np.ndarray] = {"stage": df["stage"].to_numpy()}
    specs = [("gain_mean", "mean effective gain per image"),
             ("entropy_mean" if "entropy_mean" in df else "mean_mean", "channel entropy / log C (softmax)"
              if "entropy_mean" in df else "mask mean over channels"),
             ("rel_change", "||refine - layer|| / ||layer||")]
    for ax, (col, title) in zip(axes, specs):
        if col in df:
            sub = df[["stage", col]].dropna()
            sns.boxplot(data=sub, x="stage", y=col, ax=ax, color="#8fb3d9", fliersize=1.5)
            arrays[col] = df[col].to_numpy()
        ax.set_title(title, fontsize=_TITLE)
        ax.set_xlabel("stage", fontsize=_LABEL)
        ax.set_ylabel(col, fontsize=_LABEL)
        ax.tick_params(labelsize=_LABEL)
    unapplied = [s.name for s in probe.stages if not s.applied]
    note = f" (unapplied: {', '.join(unapplied)})" if unapplied else ""
    fig.suptitle(f"Mask statistics per stage, {probe.n} images{note}", fontsize=_TITLE + 1)
    return fig, arrays


# ---------------------------------------------------------------------------------------------
# attributions
# ---------------------------------------------------------------------------------------------
def captum_panel(images: np.ndarray, attributions: AttributionResult, *, n: int = 6,
                 keys: Sequence[str] | None = None, start: int = 0, alpha: float = 0.6
                 ) -> tuple[Figure, dict[str, np.ndarray]]:
    """Faces (rows) by attribution method (columns): the face, then each input method and GradCAM at
    each stage, blended over the face. Each column shares one colour scale (0 to its 99th
    percentile over the drawn faces) with a colour bar underneath; the row title gives the true and
    the explained (target) class."""
    faces_all = np.asarray(images)
    if keys is None:
        keys = [k for k in attributions.maps if not k.startswith("mask_attr/")]
    keys = [k for k in keys if k in attributions.maps]
    n = max(0, min(n, faces_all.shape[0] - start))
    if n == 0 or not keys:
        raise ValueError("nothing to draw: no faces in range or no attribution maps")
    idx = np.arange(start, start + n)
    faces = faces_all[idx]
    cols = 1 + len(keys)
    fig = Figure(figsize=(1.5 * cols + 0.4, 1.55 * n + 1.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, cols, squeeze=False))
    arrays: dict[str, np.ndarray] = {"faces": faces, "index": idx, "targets": attributions.targets[idx]}
    for i in range(n):
        axes[i, 0].imshow(faces[i], cmap="gray", vmin=0, vmax=255)
        _off(axes[i, 0])
        lab = attributions.labels[idx[i]] if attributions.labels is not None else None
        axes[i, 0].set_ylabel(f"#{int(idx[i])}" + (f" true {int(lab)}" if lab is not None else "")
                              + f"\ntarget {int(attributions.targets[idx[i]])}", fontsize=_LABEL - 1)
    axes[0, 0].set_title("face", fontsize=_LABEL)
    for c, key in enumerate(keys, start=1):
        a = attributions.maps[key][idx]
        arrays[key] = a
        vmin, vmax = 0.0, _limits([a])[1]
        for i in range(n):
            _overlay(axes[i, c], faces[i], a[i], vmin, vmax, SEQ_CMAP, alpha)
        axes[0, c].set_title(key.replace("/", "\n"), fontsize=_LABEL)
        _colorbar(fig, axes[:, c], vmin, vmax, SEQ_CMAP, "", orientation="horizontal")
    fig.suptitle("Attributions on the 48-px face (|attribution| summed over channels; GradCAM with ReLU)",
                 fontsize=_TITLE)
    return fig, arrays


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
def intervention_plot(table: pd.DataFrame) -> tuple[Figure, dict[str, np.ndarray]]:
    """Change in accuracy and mean |delta logit| per stage and intervention kind (bars)."""
    import seaborn as sns

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, col, title in zip(axes, ("delta_accuracy", "mean_abs_dlogit", "flip_rate"),
                              ("accuracy - unmodified", "mean |delta logit|", "flipped predictions")):
        sns.barplot(data=table, x="mask", y=col, hue="kind", ax=ax, errorbar=None)
        ax.set_title(title, fontsize=_TITLE)
        ax.set_xlabel("")
        ax.set_ylabel(col, fontsize=_LABEL)
        ax.tick_params(labelsize=_LABEL)
        ax.axhline(0, color="k", lw=0.6)
        if ax is not axes[-1] and ax.get_legend() is not None:
            ax.get_legend().remove()
    leg = axes[-1].get_legend()
    if leg is not None:
        leg.set_title("replacement")
    base = float(table["base_accuracy"].iloc[0]) if len(table) else float("nan")
    n = int(table["n"].iloc[0]) if len(table) else 0
    fig.suptitle(f"Mask interventions (unmodified accuracy {base:.3f}, n={n})", fontsize=_TITLE + 1)
    arrays = {c: table[c].to_numpy() for c in ("stage", "delta_accuracy", "mean_abs_dlogit", "flip_rate",
                                                "mean_dlogit_true", "accuracy")}
    arrays["kind"] = table["kind"].to_numpy().astype(str)
    return fig, arrays


def faithfulness_plot(result: FaithfulnessResult, *, maps: Sequence[str] | None = None
                      ) -> tuple[Figure, dict[str, np.ndarray]]:
    """Mean deletion and insertion curves (probability of the class the maps explain vs fraction of
    pixels changed), AUC in the legend; the random ordering is dashed black."""
    names = list(maps) if maps is not None else list(result.curves["deletion"])
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    arrays: dict[str, np.ndarray] = {"fractions": result.fractions}
    t = result.table.set_index("map")
    palette = [colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]  # type: ignore[attr-defined]
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for i, name in enumerate(names):
            mean = result.curves[kind][name].mean(0)
            arrays[f"{kind}/{name}"] = mean
            a = t.loc[name, f"{kind}_auc"] if name in t.index else float("nan")
            style = dict(color="k", ls="--", lw=1.4) if name == "random" else dict(
                lw=1.2, color=palette[i % len(palette)])
            ax.plot(result.fractions, mean, label=f"{name} ({a:.3f})", **style)
        ax.set_title(f"{kind} (AUC {'lower' if kind == 'deletion' else 'higher'} is better)", fontsize=_TITLE)
        ax.set_xlabel("fraction of pixels " + ("deleted" if kind == "deletion" else "inserted"), fontsize=_LABEL)
        ax.tick_params(labelsize=_LABEL)
    axes[0].set_ylabel(f"probability of the explained class ({result.options.get('target', 'pred')})",
                       fontsize=_LABEL)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="map (AUC)")
    fig.suptitle(f"Deletion / insertion, baseline: {result.options.get('baseline')}", fontsize=_TITLE + 1)
    return fig, arrays


def localisation_plot(table: pd.DataFrame) -> tuple[Figure, dict[str, np.ndarray]]:
    """Mass inside the evidence region and pointing-game hit rate per map, baselines dashed."""
    fig = Figure(figsize=(10, 0.32 * len(table) + 1.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    maps = table[~table["map"].isin(["random", "uniform", "prior"])]
    y = np.arange(len(maps))
    for ax, col in zip(axes, ("mass", "pointing")):
        ax.barh(y, maps[col], xerr=maps[f"{col}_sem"], color="#5b8fc9")
        for base, ls in (("random", "--"), ("uniform", ":"), ("prior", "-")):
            v = table.loc[table["map"] == base, col]
            if len(v):
                ax.axvline(float(v.iloc[0]), color="k", ls=ls, lw=1, label=f"{base} {float(v.iloc[0]):.3f}")
        ax.set_title(col + (" inside region" if col == "mass" else " game hit rate"), fontsize=_TITLE)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
        ax.tick_params(labelsize=_LABEL)
    axes[0].set_yticks(y, maps["map"].tolist(), fontsize=_LABEL - 1)
    axes[0].invert_yaxis()
    fig.suptitle("Localisation against the ground-truth evidence regions (maps minus their minimum; "
                 "beat the data prior, not only random)", fontsize=_TITLE + 1)
    return fig, {c: table[c].to_numpy() for c in ("mass", "mass_sem", "pointing", "pointing_sem", "area")} | {
        "map": table["map"].to_numpy().astype(str)}


def agreement_plot(table: pd.DataFrame, *, value: str = "spearman") -> tuple[Figure, dict[str, np.ndarray]]:
    """Heat map of mask map (rows) x attribution (columns) agreement (Spearman by default)."""
    import seaborn as sns

    pivot = table.pivot(index="mask_map", columns="attribution", values=value)
    pivot = pivot.reindex(index=pd.unique(table["mask_map"]), columns=pd.unique(table["attribution"]))
    fig = Figure(figsize=(1.0 * pivot.shape[1] + 3.5, 0.45 * pivot.shape[0] + 2.2), layout="constrained")
    ax = fig.subplots()
    symmetric = value == "spearman"
    vmax = float(np.nanmax(np.abs(pivot.to_numpy()))) if np.isfinite(pivot.to_numpy()).any() else 1.0
    sns.heatmap(pivot, ax=ax, annot=True, fmt=".2f", annot_kws={"fontsize": 7},
                cmap=DIV_CMAP if symmetric else SEQ_CMAP, vmin=-vmax if symmetric else 0, vmax=vmax or 1.0,
                cbar_kws={"label": value})
    ax.set_title(f"Agreement of mask maps with attributions ({value}, per image then averaged)", fontsize=_TITLE)
    ax.set_xlabel("attribution", fontsize=_LABEL)
    ax.set_ylabel("mask map", fontsize=_LABEL)
    ax.tick_params(labelsize=_LABEL - 1)
    return fig, {"values": pivot.to_numpy(), "rows": pivot.index.to_numpy().astype(str),
                 "cols": pivot.columns.to_numpy().astype(str)}


# ---------------------------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------------------------
def save_figure(fig: Figure, arrays: Mapping[str, np.ndarray], folder: str | Path, name: str, *,
                dpi: int = 120, close: bool = True) -> dict[str, Path]:
    """Write ``folder/name.png`` and the figure's raw arrays beside it: ``name.npy`` when there is
    exactly one array, else ``name.npz`` (keys as given, '/' replaced by '__' for portability).
    Returns the written paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / f"{name}.png"
    fig.savefig(png, dpi=dpi)
    out = {"png": png}
    clean = {k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()}
    if len(clean) == 1:
        p = folder / f"{name}.npy"
        np.save(p, next(iter(clean.values())), allow_pickle=False)
        out["npy"] = p
    elif clean:
        p = folder / f"{name}.npz"
        np.savez_compressed(p, **clean)  # type: ignore[arg-type]
        out["npz"] = p
    if close:
        fig.clear()
    return out


def sanity_plot(steps: pd.DataFrame, *, threshold: float = 0.5) -> tuple[Figure, dict[str, np.ndarray]]:
    """Cascading randomisation: mean Spearman (trained vs randomised map) per map after each step,
    the flagging threshold dashed; ``steps`` is ``SanityResult.table``."""
    order = steps.drop_duplicates("step").sort_values("step_index")
    names = list(pd.unique(steps["map"]))
    values = steps.pivot(index="map", columns="step", values="spearman").reindex(index=names, columns=order["step"])
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    palette = [colors.to_hex(c) for c in matplotlib.colormaps["tab20"].colors]  # type: ignore[attr-defined]
    x = np.arange(values.shape[1])
    for i, name in enumerate(names):
        ax.plot(x, values.loc[name].to_numpy(), marker="o", lw=1.2, ms=3, color=palette[i % len(palette)], label=name)
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"flag above {threshold}")
    ax.set_xticks(x, [f"+{s}" for s in order["step"]], fontsize=_LABEL)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("Spearman, trained vs randomised map", fontsize=_LABEL)
    ax.set_xlabel("randomised so far (cascading, from the head down)", fontsize=_LABEL)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle("Sanity check: model-parameter randomisation (Adebayo et al. 2018)", fontsize=_TITLE + 1)
    return fig, {"spearman": values.to_numpy(), "map": np.array(names), "step": order["step"].to_numpy().astype(str)}

