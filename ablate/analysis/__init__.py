"""Mask and attribution analysis for ResMaskingNet: probes, Captum, interventions, faithfulness,
localisation and figures.

The pieces (each usable alone, all batched with bounded memory):

* :func:`probe` -> :class:`ProbeResult`: per-stage mask reductions that mean something for a
  softmax-over-channels mask (max, channel entropy, KL from uniform), the effective gain map,
  per-stage and per-class statistics and mean maps;
* :func:`attribute` -> :class:`AttributionResult`: IG, saliency, SmoothGrad, occlusion, DeepLift on
  the 48-px face, GradCAM at every stage, attribution to every mask;
* :func:`map_agreement`: mask maps vs attribution maps (Spearman, top-k IoU);
* :func:`intervene` -> :class:`InterventionResult`: replace a stage's mask (zero, uniform, shuffle,
  class mean) and measure the change;
* :func:`deletion_insertion` -> :class:`FaithfulnessResult`: deletion/insertion AUC vs random;
* :func:`localisation`: mass and pointing game against ground-truth regions (generated data);
* :mod:`ablate.analysis.plots`: figures that return (Figure, arrays); :func:`save_figure`.

:func:`analyse` runs them all and returns an :class:`AnalysisResult`: plain dicts of pandas tables,
numpy arrays and figure-making functions, with ``save(folder)``. The report and ``ablate explain``
build on that object.

Example:
    >>> from resmasknet import create_model
    >>> from resmasknet.data import load_data
    >>> from ablate.analysis import analyse
    >>> d = load_data("generated:n=600,seed=0").select("test")
    >>> result = analyse(create_model("resmasknet_tiny").eval(), d, n_images=32)
    >>> result.tables["interventions"].head()
    >>> result.save("reports/analysis")
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ablate.analysis.attribution import (
    DEFAULT_METHODS,
    INPUT_METHODS,
    LAYER_METHODS,
    AttributionResult,
    FaceModel,
    attribute,
    baseline_faces,
    input_attribution,
    layer_attribution,
    predict,
    reused_modules,
)
from ablate.analysis.faithfulness import FaithfulnessResult, auc, deletion_insertion
from ablate.analysis.interventions import (
    DEFAULT_INTERVENTIONS,
    INTERVENTIONS,
    InterventionResult,
    intervene,
    replace_mask,
    replacement_mask,
)
from ablate.analysis.localisation import localisation as localisation_table
from ablate.analysis.localisation import localisation_scores, map_agreement, spearman_rows, topk_iou
from ablate.analysis.plots import (
    agreement_plot,
    captum_panel,
    class_mean_grid,
    faithfulness_plot,
    intervention_plot,
    localisation_plot,
    mask_gallery,
    save_figure,
    stage_summary_plot,
)
from ablate.analysis.probe import (
    REDUCTIONS,
    MaskStage,
    ProbeResult,
    channels_last,
    gain_map,
    gini,
    mask_stages,
    probe,
    reduce_mask,
    relative_change,
    spatial_entropy,
    upsample_maps,
)
from resmasknet.model import ResMaskNet

localisation = localisation_table  # the public name; aliased so `analyse(localisation=...)` can shadow it

__all__ = [
    "DEFAULT_INTERVENTIONS",
    "DEFAULT_METHODS",
    "INPUT_METHODS",
    "INTERVENTIONS",
    "LAYER_METHODS",
    "REDUCTIONS",
    "AnalysisResult",
    "AttributionResult",
    "FaceModel",
    "FaithfulnessResult",
    "InterventionResult",
    "MaskStage",
    "ProbeResult",
    "agreement_plot",
    "analyse",
    "attribute",
    "auc",
    "baseline_faces",
    "captum_panel",
    "class_mean_grid",
    "deletion_insertion",
    "faithfulness_plot",
    "gain_map",
    "gini",
    "input_attribution",
    "intervene",
    "intervention_plot",
    "layer_attribution",
    "localisation",
    "localisation_plot",
    "localisation_scores",
    "map_agreement",
    "mask_gallery",
    "mask_stages",
    "predict",
    "probe",
    "reduce_mask",
    "relative_change",
    "replace_mask",
    "replacement_mask",
    "reused_modules",
    "save_figure",
    "spatial_entropy",
    "spearman_rows",
    "stage_summary_plot",
    "topk_iou",
    "upsample_maps",
]

FigureFn = Callable[[], tuple[Any, dict[str, np.ndarray]]]


@dataclass
class AnalysisResult:
    """Everything :func:`analyse` measured, as plain containers.

    tables: {name: DataFrame}: ``stages``, ``classes`` (probe), ``attribution`` (per map summary),
    ``agreement``, ``interventions``, ``faithfulness``, ``localisation`` (when computed), ``timing``.
    arrays: {name: ndarray}: ``images``, ``labels``, ``preds``, ``index`` (positions in the data
    given), ``regions`` (if any), ``attr/<map>`` [N, 48, 48], ``mask/<maskN>/<map>`` [N, h, w]
    native, ``class_mean/<maskN>/<map>`` [K, h, w], ``class_diff/...``, ``curves/<kind>/<map>``
    [N, steps + 1]. figures: {name: () -> (Figure, arrays)}, drawn on demand. meta: options,
    model config, timings. parts: the per-step result objects, for notebooks.
    """

    tables: dict[str, pd.DataFrame]
    arrays: dict[str, np.ndarray]
    figures: dict[str, FigureFn] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    parts: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: str | Path, *, figures: bool = True, dpi: int = 120) -> Path:
        """Write ``tables/<name>.csv``, ``tables.json`` (all tables as records), ``arrays.npz``,
        ``meta.json`` and, with ``figures``, ``figures/<name>.png`` + ``.npy``/``.npz``."""
        folder = Path(folder)
        (folder / "tables").mkdir(parents=True, exist_ok=True)
        records = {}
        for name, df in self.tables.items():
            df.to_csv(folder / "tables" / f"{name}.csv", index=False)
            records[name] = json.loads(df.to_json(orient="records"))
        (folder / "tables.json").write_text(json.dumps(records, indent=1))
        np.savez_compressed(folder / "arrays.npz",
                            **{k.replace("/", "__"): np.asarray(v) for k, v in self.arrays.items()})  # type: ignore[arg-type]
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=1, default=str))
        if figures:
            for name, make in self.figures.items():
                fig, arrays = make()
                save_figure(fig, arrays, folder / "figures", name, dpi=dpi)
        return folder


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(t: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``t``: on a shared machine the CPU time is the steadier number."""
    return time.perf_counter() - t[0], time.process_time() - t[1]


def _unpack(data: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """images, labels, regions, classes from a FaceData-like object or a tuple."""
    if isinstance(data, (tuple, list)):
        images, labels = data[0], data[1]
        regions = data[2] if len(data) > 2 else None
        return np.asarray(images), np.asarray(labels), None if regions is None else np.asarray(regions), None
    regions = getattr(data, "regions", None)
    classes = getattr(data, "classes", None)
    return (np.asarray(data.images), np.asarray(data.labels), None if regions is None else np.asarray(regions),
            None if classes is None else tuple(classes))


def analyse(
    model: ResMaskNet,
    data_split: Any,
    *,
    n_images: int = 500,
    methods: Sequence[str] = DEFAULT_METHODS,
    interventions: bool = True,
    faithfulness: bool = True,
    localisation: bool | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 32,
    steps: int = 20,
    faithfulness_maps: Sequence[str] | None = None,
    intervention_kinds: Sequence[str] = DEFAULT_INTERVENTIONS,
    target: str = "pred",
    seed: int = 0,
    progress: bool = True,
    attribution_options: dict[str, Any] | None = None,
) -> AnalysisResult:
    """Run the whole analysis on one data split and return tables, arrays and figure functions.

    data_split: a ``FaceData`` (``d.select("test")``) or ``(images, labels[, regions])``. When it has
    more than ``n_images`` faces a seeded random subset is analysed (sorted, so ``index`` maps back).
    localisation: default True exactly when the data has ``regions`` (generated data).
    faithfulness_maps: which maps get deletion/insertion curves (the costliest step: 2 * (steps-1)
    forward passes per face per map); default: each stage's primary mask reduction, the input
    methods and GradCAM at every stage, plus the random ordering.
    The ``class_mean`` intervention uses class means from the same faces (see ``interventions``).
    """
    t_all = _now()
    images, labels, regions, classes = _unpack(data_split)
    n_all = images.shape[0]
    if n_all == 0 or n_images < 1:
        raise ValueError(f"nothing to analyse: {n_all} faces given, n_images={n_images} "
                         "(an empty split? generated data needs n >= 100 for a non-empty test split)")
    if n_all > n_images:
        index = np.sort(np.random.default_rng(seed).choice(n_all, n_images, replace=False))
    else:
        index = np.arange(n_all)
    images, labels = np.ascontiguousarray(images[index]), labels[index].astype(np.int64)
    regions = None if regions is None else np.ascontiguousarray(regions[index])
    do_loc = (regions is not None) if localisation is None else bool(localisation)
    if do_loc and regions is None:
        raise ValueError("localisation=True needs data with regions (generated data)")
    timing: dict[str, tuple[float, float]] = {}
    tables: dict[str, pd.DataFrame] = {}
    arrays: dict[str, np.ndarray] = {"images": images, "labels": labels, "index": index}
    parts: dict[str, Any] = {}
    n = images.shape[0]
    if n == 0:
        raise ValueError("analyse: the data split holds no images")

    with channels_last(model):  # the faces' layout: a third faster on CPU; restored afterwards
        t = _now()
        pr = probe(model, images, labels, batch_size=max(batch_size, 64), device=device, max_keep=n,
                   classes=classes, progress=progress)
        timing["probe"] = _since(t)
        parts["probe"] = pr
        tables["stages"] = pr.stage_table()
        tables["classes"] = pr.class_table()
        arrays["preds"] = pr.preds
        arrays["probs"] = pr.probs
        if regions is not None:
            arrays["regions"] = regions
        for st in pr.stages:
            for name, a in pr.maps[st.name].items():
                arrays[f"mask/{st.name}/{name}"] = a
            for name, a in pr.class_mean_maps[st.name].items():
                arrays[f"class_mean/{st.name}/{name}"] = a
        for s, d in pr.class_diff_maps().items():
            for name, a in d.items():
                arrays[f"class_diff/{s}/{name}"] = a

        t = _now()
        attrs = attribute(model, images, labels, methods=methods, target=target, batch_size=min(batch_size, 16),
                          device=device, progress=progress, **(attribution_options or {}))
        timing["attribution"] = _since(t)
        parts["attribution"] = attrs
        tables["attribution"] = attrs.table()
        for k, a in attrs.maps.items():
            arrays[f"attr/{k}"] = a

        t = _now()
        mask_maps = pr.all_maps(size=images.shape[-1])
        tables["agreement"] = (map_agreement(mask_maps, attrs.maps, size=images.shape[-1]) if attrs.maps
                               else pd.DataFrame())
        timing["agreement"] = _since(t)

        if interventions and pr.stages:
            t = _now()
            ir = intervene(model, images, labels, kinds=intervention_kinds, class_masks=pr,
                           batch_size=max(batch_size, 64), device=device, seed=seed, progress=progress)
            timing["interventions"] = _since(t)
            parts["interventions"] = ir
            tables["interventions"] = ir.table

        if faithfulness:
            t = _now()
            available = dict(pr.primary_maps(size=images.shape[-1]))
            available.update({f"{k}": v for k, v in mask_maps.items()})
            available.update(attrs.maps)
            if faithfulness_maps is None:
                chosen = list(pr.primary_maps(size=None)) + [k for k in attrs.maps if not k.startswith("mask_attr/")]
            else:
                missing = [k for k in faithfulness_maps if k not in available]
                if missing:
                    raise ValueError(f"unknown faithfulness map(s) {missing}; available: {sorted(available)}")
                chosen = list(faithfulness_maps)
            fr = deletion_insertion(model, images, labels, {k: available[k] for k in chosen}, steps=steps,
                                    seed=seed, device=device, progress=progress)
            timing["faithfulness"] = _since(t)
            parts["faithfulness"] = fr
            tables["faithfulness"] = fr.table
            for kind, d in fr.curves.items():
                for k, c in d.items():
                    arrays[f"curves/{kind}/{k}"] = c
            arrays["curves/fractions"] = fr.fractions

        if do_loc:
            t = _now()
            assert regions is not None
            loc_maps = dict(mask_maps)
            loc_maps.update(attrs.maps)
            tables["localisation"] = localisation_table(loc_maps, regions, seed=seed)
            timing["localisation"] = _since(t)

    timing["total"] = _since(t_all)
    tables["timing"] = pd.DataFrame([{"step": k, "seconds": w, "cpu_seconds": c, "n_images": n}
                                     for k, (w, c) in timing.items()])

    figures: dict[str, FigureFn] = {}
    for st in pr.stages:
        figures[f"mask_gallery_{st.name}"] = functools.partial(mask_gallery, pr, images, st.stage)
    if pr.stages:
        figures["class_means"] = lambda: class_mean_grid(pr)
        figures["class_diffs"] = lambda: class_mean_grid(pr, diff=True)
        figures["class_gain"] = lambda: class_mean_grid(pr, map_name="gain")
        figures["stage_summary"] = lambda: stage_summary_plot(pr)
    if any(not k.startswith("mask_attr/") for k in attrs.maps):
        figures["captum_panel"] = lambda: captum_panel(images, attrs)
    if any(k.startswith("mask_attr/") for k in attrs.maps):
        figures["mask_attr_panel"] = lambda: captum_panel(
            images, attrs, keys=[k for k in attrs.maps if k.startswith("mask_attr/")])
    if "agreement" in tables and not tables["agreement"].empty:
        figures["agreement"] = lambda: agreement_plot(tables["agreement"])
    if "interventions" in tables and not tables["interventions"].empty:
        figures["interventions"] = lambda: intervention_plot(tables["interventions"])
    if "faithfulness" in parts:
        figures["faithfulness"] = lambda: faithfulness_plot(parts["faithfulness"])
    if "localisation" in tables:
        figures["localisation"] = lambda: localisation_plot(tables["localisation"])

    cfg = getattr(model, "config", None)
    meta = {
        "n_images": n, "n_available": n_all, "seed": seed, "methods": list(methods), "target": target,
        "steps": steps, "interventions": list(intervention_kinds) if interventions else [],
        "localisation": do_loc, "device": str(next(model.parameters()).device),
        "accuracy": pr.accuracy, "seconds": {k: w for k, (w, _) in timing.items()}, "classes": list(pr.classes),
        "config": cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None,
        "attribution_options": attrs.options,
        "notes": [
            "class_mean intervention: class means from the analysed faces (true labels), chosen per face by "
            "the unmodified model's prediction",
            "mask maps upsampled bilinearly to the face for agreement, faithfulness and localisation",
        ],
    }
    return AnalysisResult(tables=tables, arrays=arrays, figures=figures, meta=meta, parts=parts)
