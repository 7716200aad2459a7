"""The one-call analysis: :func:`analyse` runs every step on one data split and returns an
:class:`AnalysisResult` of plain tables, arrays and figure functions.

Order and sharing: one forward pass of the unmodified model per batch feeds the probe (every tap),
the interventions (their reference logits and each stage's pre-mask features) and the cached
reference logits (:mod:`ablate.analysis.forward`); attributions take their explained class and the
deletion curves their t = 0 probabilities from that cache. Only ``class_mean`` (which needs every
face's class mean first), the attributions' own gradient passes, the perturbed faces of the
deletion curves and the randomised copies of the sanity checks run the network again.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ablate.analysis import plots
from ablate.analysis.attribution import DEFAULT_METHODS, UNAPPLIED_NOTE, attribute
from ablate.analysis.common import channels_last, model_device
from ablate.analysis.faithfulness import deletion_insertion
from ablate.analysis.forward import Consumer, shared_forward
from ablate.analysis.interventions import DEFAULT_INTERVENTIONS, InterventionAccumulator, intervene
from ablate.analysis.localisation import data_prior, map_agreement
from ablate.analysis.localisation import localisation as localisation_table
from ablate.analysis.masks import ATTENDED, mask_stages
from ablate.analysis.probe import ProbeAccumulator
from ablate.analysis.sanity import SANITY_THRESHOLD, sanity_checks
from resmasknet.model import ResMaskNet

__all__ = ["AnalysisResult", "analyse"]

log = logging.getLogger(__name__)

FigureFn = Callable[[], tuple[Any, dict[str, np.ndarray]]]


@dataclass
class AnalysisResult:
    """Everything :func:`analyse` measured, as plain containers.

    tables: {name: DataFrame}: ``stages``, ``classes`` (probe), ``attribution`` (per map summary),
    ``agreement``, ``interventions``, ``faithfulness``, ``localisation`` (when computed),
    ``sanity`` (one row per map: flagged or not) and ``sanity_steps`` (one row per map and
    randomisation step), ``timing``. arrays: {name: ndarray}: ``images``, ``labels``, ``preds``,
    ``targets`` (the class the maps explain), ``index`` (positions in the data given), ``regions``
    and ``prior`` (if any), ``attr/<map>`` [N, 48, 48], ``mask/<maskN>/<map>`` [N, h, w] native,
    ``class_mean/<maskN>/<map>`` [K, h, w], ``class_diff/...``, ``curves/<kind>/<map>`` [N, steps + 1]
    (kinds ``deletion``, ``insertion`` and their ``_true`` versions). figures: {name: () -> (Figure,
    arrays)}, drawn on demand. meta: options, model config, timings, notes. parts: the per-step
    result objects, for notebooks.
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
                plots.save_figure(fig, arrays, folder / "figures", name, dpi=dpi)
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


def _with_notes(df: pd.DataFrame, column: str, notes: dict[str, str]) -> pd.DataFrame:
    """Add a ``note`` column from {map: note} (maps zero by construction say so)."""
    if df.empty or column not in df:
        return df
    old = df["note"] if "note" in df else pd.Series([""] * len(df), index=df.index)
    df["note"] = [notes.get(k, o) or o for k, o in zip(df[column], old.fillna(""))]
    return df


def analyse(
    model: ResMaskNet,
    data_split: Any,
    *,
    n_images: int = 500,
    methods: Sequence[str] = DEFAULT_METHODS,
    interventions: bool = True,
    faithfulness: bool = True,
    localisation: bool | None = None,
    sanity: bool = True,
    sanity_images: int = 32,
    sanity_methods: Sequence[str] | None = None,
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
    localisation: default True exactly when the data has ``regions`` (generated data); the data prior
    is the mean region of *all* the split's faces, not only the analysed ones.
    faithfulness_maps: which maps get deletion/insertion curves (the costliest step: 2 * (steps-1)
    forward passes per face per map); default: each stage's primary mask reduction, the input
    methods and GradCAM at every stage, plus the random ordering. Curves score the class the
    attributions explain (``target``), with the true-class version beside it.
    sanity: cascading parameter randomisation on the first ``sanity_images`` analysed faces, for
    ``sanity_methods`` (default: ``methods``) and every mask map.
    The ``class_mean`` intervention uses class means from the same faces (see ``interventions``).
    """
    t_all = _now()
    images, labels, regions, classes = _unpack(data_split)
    n_all = images.shape[0]
    if n_all == 0 or n_images < 1:
        raise ValueError(f"nothing to analyse: {n_all} faces given, n_images={n_images} "
                         "(an empty split? generated data needs n >= 100 for a non-empty test split)")
    prior = data_prior(regions) if regions is not None else None
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
    dev = model_device(model, device)
    size = images.shape[-1]

    with channels_last(model):  # the faces' layout: a third faster on CPU; restored afterwards
        # one shared forward pass per batch: probe + interventions (all kinds but class_mean)
        t = _now()
        stages = mask_stages(model)
        probe_acc = ProbeAccumulator(model, labels, max_keep=n, classes=classes)
        consumers: list[Consumer] = [probe_acc]
        run_stages = [st for st in stages if st.applied]
        shared_kinds = [k for k in intervention_kinds if k != "class_mean"]
        iv_acc = None
        if interventions and run_stages and shared_kinds:
            iv_acc = InterventionAccumulator(model, labels, run_stages, shared_kinds, seed=seed,
                                             kind_index={k: i for i, k in enumerate(intervention_kinds)})
            consumers.append(iv_acc)
        ref = shared_forward(model, images, labels, consumers, batch_size=max(batch_size, 64), device=dev,
                             progress=progress, desc="probe + interventions")
        pr = probe_acc.result()
        timing["forward (probe + interventions)"] = _since(t)
        parts["probe"] = pr
        parts["reference"] = ref
        tables["stages"] = pr.stage_table()
        tables["classes"] = pr.class_table()
        arrays["preds"] = pr.preds
        arrays["probs"] = pr.probs
        if regions is not None and prior is not None:
            arrays["regions"] = regions
            arrays["prior"] = prior.astype(np.float32)
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
                          device=dev, preds=ref.preds, progress=progress, **(attribution_options or {}))
        timing["attribution"] = _since(t)
        parts["attribution"] = attrs
        tables["attribution"] = attrs.table()
        arrays["targets"] = attrs.targets
        for k, a in attrs.maps.items():
            arrays[f"attr/{k}"] = a

        t = _now()
        mask_maps = pr.all_maps(size=size)  # oriented: larger = attended more (no raw entropy)
        tables["agreement"] = _with_notes(map_agreement(mask_maps, attrs.maps, size=size), "attribution",
                                          attrs.notes) if attrs.maps else pd.DataFrame()
        timing["agreement"] = _since(t)

        if interventions and pr.stages:
            t = _now()
            ir = intervene(model, images, labels, kinds=intervention_kinds, class_masks=pr, shared=iv_acc,
                           base_preds=ref.preds, batch_size=max(batch_size, 64), device=dev, seed=seed,
                           progress=progress)
            timing["interventions (class_mean pass)"] = _since(t)
            parts["interventions"] = ir
            tables["interventions"] = ir.table

        if faithfulness:
            t = _now()
            available = dict(pr.primary_maps(size=size))
            available.update(mask_maps)
            available.update(attrs.maps)
            if faithfulness_maps is None:
                chosen = list(pr.primary_maps(size=None)) + [k for k in attrs.maps if not k.startswith("mask_attr/")]
            else:
                missing = [k for k in faithfulness_maps if k not in available]
                if missing:
                    raise ValueError(f"unknown faithfulness map(s) {missing}; available: {sorted(available)} "
                                     "(raw channel entropy is not a saliency map: use kl)")
                chosen = list(faithfulness_maps)
            fr = deletion_insertion(model, images, labels, {k: available[k] for k in chosen}, steps=steps,
                                    seed=seed, device=dev, targets=attrs.targets, target_name=target,
                                    reference_probs=ref.probs, progress=progress)
            timing["faithfulness"] = _since(t)
            parts["faithfulness"] = fr
            tables["faithfulness"] = _with_notes(fr.table, "map", attrs.notes)
            for kind, d in fr.curves.items():
                for k, c in d.items():
                    arrays[f"curves/{kind}/{k}"] = c
            arrays["curves/fractions"] = fr.fractions

        if do_loc:
            t = _now()
            assert regions is not None
            loc_maps = dict(mask_maps)
            loc_maps.update(attrs.maps)
            tables["localisation"] = _with_notes(localisation_table(loc_maps, regions, seed=seed, prior=prior), "map",
                                                 attrs.notes)
            timing["localisation"] = _since(t)

        if sanity and sanity_images > 0:
            t = _now()
            k = min(n, sanity_images)
            sr = sanity_checks(model, images[:k], labels[:k], methods=tuple(methods if sanity_methods is None
                                                                            else sanity_methods),
                               target=attrs.targets[:k], preds=ref.preds[:k], seed=seed,
                               batch_size=min(batch_size, 16), device=dev,
                               attribution_options=attribution_options)
            timing["sanity"] = _since(t)
            parts["sanity"] = sr
            tables["sanity"] = sr.summary
            tables["sanity_steps"] = sr.table

    timing["total"] = _since(t_all)
    tables["timing"] = pd.DataFrame([{"step": k, "seconds": w, "cpu_seconds": c, "n_images": n}
                                     for k, (w, c) in timing.items()])

    figures: dict[str, FigureFn] = {}
    for st in pr.stages:
        figures[f"mask_gallery_{st.name}"] = functools.partial(plots.mask_gallery, pr, images, st.stage)
    if pr.stages:
        figures["class_means"] = lambda: plots.class_mean_grid(pr)
        figures["class_diffs"] = lambda: plots.class_mean_grid(pr, diff=True)
        figures["class_gain"] = lambda: plots.class_mean_grid(pr, map_name="gain")
        figures["stage_summary"] = lambda: plots.stage_summary_plot(pr)
    if any(not k.startswith("mask_attr/") for k in attrs.maps):
        figures["plots.captum_panel"] = lambda: plots.captum_panel(images, attrs)
    if any(k.startswith("mask_attr/") for k in attrs.maps):
        figures["mask_attr_panel"] = lambda: plots.captum_panel(
            images, attrs, keys=[k for k in attrs.maps if k.startswith("mask_attr/")])
    if "agreement" in tables and not tables["agreement"].empty:
        figures["agreement"] = lambda: plots.agreement_plot(tables["agreement"])
    if "interventions" in tables and not tables["interventions"].empty:
        figures["interventions"] = lambda: plots.intervention_plot(tables["interventions"])
    if "faithfulness" in parts:
        figures["faithfulness"] = lambda: plots.faithfulness_plot(parts["faithfulness"])
    if "localisation" in tables:
        figures["localisation"] = lambda: plots.localisation_plot(tables["localisation"])
    if "sanity_steps" in tables and not tables["sanity_steps"].empty:
        figures["sanity"] = lambda: plots.sanity_plot(tables["sanity_steps"], threshold=SANITY_THRESHOLD)

    cfg = getattr(model, "config", None)
    unapplied = [st.name for st in pr.stages if not st.applied]
    notes = [
        "class_mean intervention: class means from the analysed faces (true labels), chosen per face by "
        "the unmodified model's prediction",
        "mask maps upsampled bilinearly to the face for agreement, faithfulness and localisation",
        f"orientation: every scored map reads '{ATTENDED}'; raw channel entropy (the mirror of KL) is "
        "descriptive only and never scored",
        f"deletion/insertion score the class the attributions explain (target={target!r}); "
        "columns ending in _true score the true class",
        "localisation: maps shifted by their per-image minimum before mass scores; gains are paired per face "
        "over the data prior (mean evidence region of the split) and over random",
        f"sanity checks: cascading randomisation fc -> stage4 -> ... -> stem on {min(n, sanity_images)} faces; "
        f"flagged when Spearman > {SANITY_THRESHOLD} at the map's check step" if sanity else "sanity checks: off",
    ]
    if unapplied:
        notes.append(f"{', '.join(unapplied)}: {UNAPPLIED_NOTE}; interventions on them not run (zero effect)")
    meta = {
        "n_images": n, "n_available": n_all, "seed": seed, "methods": list(methods), "target": target,
        "steps": steps, "interventions": list(intervention_kinds) if interventions else [],
        "localisation": do_loc, "sanity": bool(sanity), "sanity_images": min(n, sanity_images) if sanity else 0,
        "sanity_threshold": SANITY_THRESHOLD, "device": str(next(model.parameters()).device),
        "accuracy": pr.accuracy, "seconds": {k: w for k, (w, _) in timing.items()}, "classes": list(pr.classes),
        "config": cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else None,
        "attribution_options": attrs.options, "unapplied_masks": unapplied, "notes": notes,
    }
    log.info("analysed %d faces in %.1f s", n, timing["total"][0])
    return AnalysisResult(tables=tables, arrays=arrays, figures=figures, meta=meta, parts=parts)
