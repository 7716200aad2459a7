"""A study's results as tables, read only through the trial record (`ablate.trial.read_trials`).

Grid studies: the comparison table of `ablate.stats.compare_to_baseline` (seed-level inference, the
study's equivalence margin, McNemar beside), with every missing input named in its notes. Search
studies: Optuna's parameter importances beside the measured effects, and the Pareto front.
"""

from __future__ import annotations

import warnings
from typing import Any

import pandas as pd

from ablate import stats
from ablate.session import Session, load_optuna_study
from ablate.trial import predictions, read_trials

METRIC_EVALUATION = {"test_acc": "test", "test_acc_tta": "test_tta_authors"}


def summarize(session: Session, metric: str = "test_acc", *, test: str = "t") -> dict[str, Any]:
    """{"records": TrialSet, "trials": one row per complete trial, "notes": lines, and "table" (grid) or
    "importance" + "pareto" (search)}. McNemar uses the per-image predictions of the same evaluation as
    `metric` (test or test with TTA); for a metric without per-image predictions (val_acc, params) it is
    left out and the notes say so."""
    study = session.study
    trials = read_trials(session)
    frame = trials.frame()
    notes = [f"read {trials.describe()}"]
    out: dict[str, Any] = {"records": trials, "trials": frame, "notes": notes}
    if frame.empty:
        return out
    if metric not in frame.columns:
        raise KeyError(f"metric {metric!r} is not among the trials' metrics: "
                       f"{sorted(c for c in frame.columns if c not in ('trial', 'variant', 'seed', 'status'))}")
    if study.mode == "grid":
        evaluation = METRIC_EVALUATION.get(metric)
        preds = y_true = None
        if evaluation is None:
            notes.append(f"McNemar not computed: {metric} has no per-image predictions")
        else:
            preds, y_true, problems = predictions(trials.records, evaluation)
            notes += [f"no per-image predictions for {p}" for p in problems]
            if not preds:
                preds = y_true = None
        rope = float(study.rope) / 100.0  # the study file gives points; the metric is a fraction
        higher = next((o.direction == "maximize" for o in study.objectives if o.metric == metric), True)
        table = stats.compare_to_baseline(frame, preds, y_true, baseline=study.baseline, metric=metric,
                                          rope=rope, higher_is_better=higher, test=test, notes=notes)
        out["table"] = table
        out["notes"] = list(table.attrs["notes"])
        return out
    import optuna

    ostudy = load_optuna_study(session)
    try:
        target = None
        if len(study.objectives) > 1:  # importance for the first objective; PED-ANOVA ranks low targets
            sign = -1.0 if ostudy.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1.0
            target = lambda t: sign * t.values[0]  # noqa: E731
        with warnings.catch_warnings():  # its "low target values" notice: handled by the sign above
            warnings.filterwarnings("ignore", message=".*low `target` values.*")
            imp = optuna.importance.get_param_importances(ostudy, target=target)
    except Exception as exc:  # noqa: BLE001 - too few trials for the importance model: say so
        imp = {}
        notes.append(f"no parameter importances: {exc}")
    params = {t.number: t.params for t in ostudy.get_trials(deepcopy=False)}
    frame = frame.assign(**{p: [params.get(n, {}).get(p) for n in frame["trial"]] for p in study.search["space"]})
    out["trials"] = frame
    effects = []
    for p in study.search["space"]:
        for value, grp in frame.groupby(p):
            effects.append({"parameter": p, "value": value, "n": len(grp), f"mean_{metric}": grp[metric].mean()})
    out["importance"] = stats.search_importance_table(imp, pd.DataFrame(effects) if effects else None)
    best = {t.number for t in ostudy.best_trials}
    out["pareto"] = frame[frame["trial"].isin(best)]
    return out


def format_summary(study_name: str, result: dict[str, Any], metric: str = "test_acc") -> str:
    frame = result["trials"]
    if frame.empty:
        return f"study {study_name}: no complete trials yet ({'; '.join(result.get('notes', []))})"
    lines = []
    if "table" in result:
        lines.append(stats.format_table(result["table"], metric_label=metric.replace("_", " ")))
    if "importance" in result:
        lines += [*result["notes"], "parameter importance (Optuna) and measured effects:",
                  result["importance"].to_string(index=False)]
        cols = [c for c in ("trial", "val_acc", "test_acc", "params", "macs", "latency_ms") if c in frame]
        space_cols = [c for c in frame.columns if "." in c]
        lines += ["\nPareto front / best trials:", result["pareto"][cols + space_cols].to_string(index=False)]
    return "\n".join(lines)
