"""`ablate report STUDY`: one self-contained HTML page for a whole study.

Everything comes from two places: `ablate.summary.summarize` (the trial records, the trials frame, the
ablation table and its notes) and each trial's saved test evaluation (`TrialRecord.evaluation()`, an
`EvalResult` whose confusion matrix and per-class metrics are shown as they are, never recomputed). The
dataset is loaded once (thumbnails and the mask analysis share it) and each analysed checkpoint once.
The folder is written beside the destination and renamed into place at the end
(`resmasknet.runtime.atomic_dir`), so a failed run never leaves a report that looks complete.

Example:
    >>> from ablate.report import build_report
    >>> build_report(session, "reports/quickstart", n_images=64, analysis="fast")   # .../index.html
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ablate.report.analysis_section import analysis_options, analysis_section
from ablate.report.figures import confusion_figure, cost_scatter, forest_plot, misclassified_grid
from ablate.report.narrative import mask_sentences
from ablate.report.page import Page
from resmasknet.runtime import atomic_dir

if TYPE_CHECKING:
    from ablate.session import Session
    from ablate.trial import TrialRecord, TrialSet
    from resmasknet.evaluate import EvalResult

__all__ = ["SECTIONS", "build_report", "default_report_dir", "evaluations", "per_class_frame", "split_rows"]

log = logging.getLogger(__name__)

SECTIONS = (
    "Study summary",
    "Ablation table",
    "Accuracy against cost",
    "Confusion matrices",
    "Per-class precision, recall and F1",
    "Misclassified examples",
    "Mask analysis",
    "What the masks do",
)


def default_report_dir(session: Session) -> Path:
    return Path("reports") / session.study.name


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def evaluations(records: list[TrialRecord], name: str = "test") -> dict[int, EvalResult]:
    """Each record's saved evaluation, read once, by trial number; a ValueError naming the trial if one
    cannot be read (a report built from some of the trials would look complete and not be)."""
    out: dict[int, EvalResult] = {}
    for r in records:
        try:
            out[r.trial] = r.evaluation(name)
        except Exception as exc:  # noqa: BLE001 - any unreadable file stops the report, naming the trial
            raise ValueError(f"trial {r.trial} ({r.label}): its {name!r} evaluation cannot be read: "
                             f"{_one_line(exc)}") from exc
    return out


def per_class_frame(evs: list[EvalResult], variant: str) -> pd.DataFrame:
    """Per-class precision, recall and F1 of one variant as stored in its EvalResults: the mean over seeds
    (± sd with two or more), and the support of one test split."""
    classes = list(evs[0].classes)
    rows = {"variant": [variant] * len(classes), "class": classes}
    for name in ("precision", "recall", "f1"):
        vals = np.stack([getattr(e, name) for e in evs])
        mean, sd = vals.mean(axis=0), vals.std(axis=0, ddof=1) if len(evs) > 1 else None
        rows[name] = [f"{m:.3f}" + (f" ± {s:.3f}" if sd is not None else "")
                      for m, s in zip(mean, sd if sd is not None else mean)]
    rows["support"] = [str(int(s)) for s in evs[0].support]
    rows["seeds"] = [str(len(evs))] * len(classes)
    return pd.DataFrame(rows)


def split_rows(split: Any, ev: EvalResult) -> np.ndarray | None:
    """Positions in ``split`` (a FaceData) of the evaluation's images, from ``ev.index``; None when they do
    not match (another dataset, or labels that differ)."""
    index = np.asarray(ev.index, np.int64)
    if split.origin is None:
        pos = index
    else:
        where = {int(o): i for i, o in enumerate(split.origin)}
        pos = np.array([where.get(int(i), -1) for i in index], np.int64)
    if len(pos) and (pos.min() < 0 or pos.max() >= len(split)):
        return None
    return pos if np.array_equal(split.labels[pos], ev.labels) else None


def _trials_display(frame: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c in ("trial", "variant", "seed", "status", "val_acc", "test_acc", "test_acc_tta", "params",
                        "macs", "epochs_run") if c in frame]
    cols += [c for c in frame.columns if "." in str(c)]  # a search study's sampled parameters
    out = frame[cols].copy()
    for c in cols:
        if c.endswith("_acc") or c.endswith("_tta"):
            out[c] = [f"{100 * v:.2f}%" if pd.notna(v) else None for v in out[c]]
        elif c in ("params", "macs", "epochs_run"):
            out[c] = [f"{v:,.0f}" if pd.notna(v) else None for v in out[c]]
    return out


def _best_per_variant(records: list[TrialRecord]) -> dict[str, TrialRecord]:
    """Each variant's record with the best validation accuracy (test accuracy breaks ties)."""
    best: dict[str, TrialRecord] = {}
    for r in records:
        key = (r.metrics.get("val_acc", float("-inf")), r.metrics.get("test_acc", float("-inf")))
        cur = best.get(r.variant)
        if cur is None or key > (cur.metrics.get("val_acc", float("-inf")), cur.metrics.get("test_acc", float("-inf"))):
            best[r.variant] = r
    return best


def _search_leaders(records: list[TrialRecord], pareto: pd.DataFrame | None, metric: str, k: int = 4) -> list[str]:
    """A search study's trials to show per "variant" (each trial is one): the Pareto front / best trials,
    else the top ``k`` by ``metric``, at most ``k``."""
    if pareto is not None and not pareto.empty and "variant" in pareto:
        return [str(v) for v in pareto["variant"]][:k]
    ranked = sorted(records, key=lambda r: -r.metrics.get(metric, float("-inf")))
    return [r.variant for r in ranked[:k]]


def _has_masks(record: TrialRecord) -> bool:
    return any(m.get("enabled") for m in (record.config or {}).get("masks", []))


def _ablation_section(page: Page, result: dict[str, Any], baseline: str | None, metric: str) -> None:
    from ablate import stats

    notes = [str(n) for n in result.get("notes") or []]
    if notes:
        page.ul(notes, "note")
    table = result.get("table")
    if table is None:
        page.p("search-mode study: parameter importances instead of a baseline comparison")
        page.table(result.get("importance"))
        if result.get("pareto") is not None:
            page.h("Pareto front / best trials", 3)
            page.table(_trials_display(result["pareto"]))
        return
    page.table(stats.display_table(table), wrap=True)
    extra = set(table.attrs.get("notes", [])) | set(notes)
    reasons = [r for r in stats.reasons(table) if r not in extra]
    if reasons:
        page.ul(reasons, "note")
    rope = table.attrs.get("rope")
    base = table.attrs.get("baseline", baseline)
    fig, arr = forest_plot(table, rope=float(rope) if rope is not None else None, baseline=base,
                           metric=str(table.attrs.get("metric", metric)))
    conf = table.attrs.get("confidence")
    page.figure(fig, arr, "forest", f"paired difference of {metric} to {base} per variant"
                + (f" with its {100 * float(conf):.0f}% interval" if conf is not None else " with its interval")
                + ("; shaded: the ±ROPE margin within which a difference counts as equivalent" if rope else ""))


def build_report(session: Session, out: str | Path | None = None, *, n_images: int = 200,
                 analysis: str = "standard", progress: bool = True, log_mlflow: bool = True,
                 metric: str = "test_acc", device: str | None = None) -> Path:
    """Write ``<out>/index.html`` (default ``reports/<study>/``) with ``report.json`` and ``figures/``, and
    attach the folder to the study's MLflow parent run.

    analysis: the mask-analysis profile (``fast``, ``standard``, ``full``; see ``ANALYSIS_PROFILES``).
    device: where the mask analysis runs (default: $ABLATE_DEVICE, else CUDA when available).
    Raises ValueError (one line, naming the trial) when a trial record or its evaluation cannot be read."""
    from ablate.summary import summarize
    from resmasknet import load_checkpoint
    from resmasknet.runtime import resolve_device

    analysis_options(analysis)  # a bad profile fails before any work
    dev = resolve_device(device)  # and so does a device that cannot be used
    t0 = time.perf_counter()
    study = session.study
    dest = Path(out) if out else default_report_dir(session)
    result = summarize(session, metric)
    trial_set: TrialSet = result["records"]
    if trial_set.problems:
        raise ValueError(f"study {study.name}: {len(trial_set.problems)} trial record(s) cannot be read: "
                         + "; ".join(_one_line(ValueError(p)) for p in trial_set.problems))
    records = list(trial_set.records)
    if not records:
        raise ValueError(f"study {study.name}: no complete trials in {session.paths.root}; run it first")
    evs = evaluations(records)
    trials: pd.DataFrame = result["trials"]
    variants = [v.name for v in study.variants] or _search_leaders(records, result.get("pareto"), metric)
    variants = [v for v in variants if any(r.variant == v for r in records)]
    by_variant = {v: [evs[r.trial] for r in records if r.variant == v] for v in variants}
    best = _best_per_variant(records)
    # the variant compared with the baseline in detail: the first with masks (an all-masks-off variant has
    # nothing to analyse), else the first other one
    others = [v for v in variants if v != study.baseline]
    main = next((v for v in others if _has_masks(best[v])), others[0] if others else None)
    test, data_note = _load_test_split(study)

    with atomic_dir(dest, option="--report-dir") as tmp:
        page = Page(f"Ablation report: {study.name}", tmp)
        page.p(f"generated {time.strftime('%Y-%m-%d %H:%M:%S')}", "note")
        # 1 summary
        page.h(SECTIONS[0])
        page.ul([f"study file: {study.path}", f"description: {study.description or '-'}",
                 f"design: {study.mode}, model {study.model}, baseline {study.baseline}",
                 f"{'variants' if study.mode == 'grid' else 'trials in detail'}: {', '.join(variants)}; "
                 f"seeds: {', '.join(map(str, study.seeds))}",
                 f"complete trials: {len(records)}" + (f" (cells: {len(study.cells)})" if study.mode == "grid" else ""),
                 f"trial records: {trial_set.describe()}",
                 f"data: {study.data}",
                 f"raw outputs: {Path(session.paths.root).resolve()} (trials/NNNN/ record.json, best.pt, test/); "
                 f"MLflow: {session.tracking_uri}"])
        page.table(_trials_display(trials))
        # 2 table, notes above it, forest plot below
        page.h(SECTIONS[1])
        _ablation_section(page, result, study.baseline, metric)
        # 3 cost
        page.h(SECTIONS[2])
        if {"params", "macs", metric} <= set(trials.columns) and trials[["params", "macs", metric]].notna().all().all():
            fig, arr = cost_scatter(trials, metric)
            page.figure(fig, arr, "accuracy_vs_cost", f"{metric} against parameters and MACs (mean ± sd)")
        else:
            page.p(f"no {metric}, parameter and MAC counts for every trial", "note")
        # 4 confusion: the stored matrices, summed over seeds
        page.h(SECTIONS[3])
        classes = list(next(iter(evs.values())).classes)
        cms = {v: np.sum([e.confusion for e in es], axis=0) for v, es in by_variant.items()}
        fig, arr = confusion_figure(cms, classes, study.baseline)
        page.figure(fig, arr, "confusion", "confusion matrices summed over seeds; bottom row: difference "
                    "to the baseline (row-normalised)")
        # 5 per class, as stored
        page.h(SECTIONS[4])
        page.table(pd.concat([per_class_frame(es, v) for v, es in by_variant.items()], ignore_index=True))
        # 6 misclassified
        page.h(SECTIONS[5])
        if data_note:
            page.p(data_note, "warn")
        if main is not None and test is not None:
            ev = evs[best[main].trial]
            rows = split_rows(test, ev)
            if rows is None:
                page.p("the test split does not match the stored evaluation; thumbnails skipped", "warn")
            else:
                grid, arr = misclassified_grid(test.images[rows], ev.confusion, ev.labels, ev.predictions,
                                               classes)
                if grid is not None:
                    arr["index"] = np.where(arr["index"] >= 0, rows[np.maximum(arr["index"], 0)], -1)
                    page.figure(grid, arr, "misclassified", f"{main} (seed {best[main].seed}): misclassified "
                                "test images per confusion cell (index: rows of the test split)")
        # 7 mask analysis: the main variant and the baseline, each checkpoint loaded once
        page.h(SECTIONS[6])
        results = {}
        analysed = [x for x in dict.fromkeys((main, study.baseline)) if x is not None and x in best]
        if test is None and data_note:
            page.p(data_note, "warn")
            analysed = []
        for v in analysed:
            from ablate.analysis import mask_stages

            rec = best[v]
            model, _ = load_checkpoint(rec.checkpoint)
            model.to(dev)  # the analysis runs where the model is
            if not mask_stages(model):
                page.p(f"{v}: no mask stages (skipped).", "note")
                continue
            label = f"{v} (seed {rec.seed}, best val)"
            try:
                results[v] = analysis_section(page, model, test, label=label, n_images=n_images,
                                              profile=analysis, progress=progress, prefix=v)
            except Exception as exc:  # noqa: BLE001 - the rest of the report stands; the page says what failed
                log.warning("mask analysis of %s failed: %s: %s", label, type(exc).__name__, exc)
                page.p(f"{label}: the mask analysis failed ({type(exc).__name__}: {_one_line(exc)})", "warn")
            del model
        if not results:
            page.p("no variant with masks to analyse", "note")
        # 8 narrative
        page.h(SECTIONS[7])
        for v, res in results.items():
            page.h(v, 3)
            page.ul(mask_sentences(res.tables))
        seconds = time.perf_counter() - t0
        page.p(f"report built in {seconds:.0f} s", "note")
        page.write()
        (tmp / "report.json").write_text(json.dumps(
            {"study": study.name, "sections": list(SECTIONS), "trials": [r.trial for r in records], "device": str(dev),
             "sources": trial_set.sources, "analysed": list(results), "seconds": seconds}, indent=1))
    if log_mlflow:
        _attach(session, dest)
    return dest / "index.html"


def _load_test_split(study: Any) -> tuple[Any, str | None]:
    """The study's test split, loaded once; (None, why) when the data cannot be read here."""
    from resmasknet.data import load_data

    spec = study.resolved("data") or study.data
    if not spec:
        return None, "the study names no data; thumbnails and mask analysis skipped"
    try:
        return load_data(spec).select("test"), None
    except (OSError, ValueError) as exc:
        log.warning("cannot load the study data %s (%s); thumbnails and mask analysis skipped", spec, exc)
        return None, f"cannot load the study data {spec} ({_one_line(exc)}); thumbnails and mask analysis skipped"


def _attach(session: Session, folder: Path) -> None:
    try:
        from ablate.session import load_optuna_study

        parent = load_optuna_study(session).user_attrs.get("mlflow_parent_run_id")
        if parent:
            session.tracker().log_artifacts(parent, str(folder), "report")
    except Exception as exc:  # noqa: BLE001 - the report stands on its own; MLflow holds a copy
        from resmasknet.runtime import storage_error

        err = storage_error(exc, getattr(exc, "filename", None) or session.paths.artifacts) \
            if isinstance(exc, OSError) else None
        why = str(err.strerror).split(";")[0] if err is not None else _one_line(exc)
        log.warning("the report is not attached to the study's MLflow run (%s); --no-mlflow skips the attachment",
                    why)
