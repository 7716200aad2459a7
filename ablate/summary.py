"""A study's results as tables: per-variant accuracy with bootstrap CIs, paired differences to the
baseline, McNemar on test predictions with Holm correction; in search mode, Optuna's parameter
importances beside the measured effects and the Pareto front."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from ablate import stats
from ablate.runner import Session, load_optuna_study


def trial_frame(session: Session) -> pd.DataFrame:
    """One row per complete trial: variant, seed, metrics, params, MACs, trial folder."""
    ostudy = load_optuna_study(session)
    rows = []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        rows.append({"trial": t.number, "variant": a.get("variant"), "seed": a.get("seed"),
                     **{k: a.get(k) for k in ("val_acc", "test_acc", "test_acc_tta", "params", "macs",
                                                "latency_ms", "epochs_run")},
                     "trial_dir": a.get("trial_dir"), "mlflow_run_id": a.get("mlflow_run_id"), **t.params})
    return pd.DataFrame(rows)


def _predictions(session: Session, frame: pd.DataFrame) -> tuple[dict[tuple[str, int], np.ndarray] | None,
                                                                   np.ndarray | None]:
    preds: dict[tuple[str, int], np.ndarray] = {}
    y_true = None
    tracker = None
    for row in frame.itertuples():
        path = Path(str(row.trial_dir)) / "predictions.npz"
        if not path.exists() and row.mlflow_run_id:
            tracker = tracker or session.tracker()
            try:  # another machine ran it: its predictions are an MLflow artifact
                path = Path(tracker.client.download_artifacts(row.mlflow_run_id, "predictions.npz"))
            except Exception:
                return None, None
        if not path.exists():
            return None, None
        z = np.load(path)
        preds[(row.variant, int(row.seed))] = z["pred"]
        y_true = z["y_true"]
    return preds, y_true


def summarize(session: Session, metric: str = "test_acc") -> dict[str, Any]:
    study = session.study
    frame = trial_frame(session)
    out: dict[str, Any] = {"trials": frame}
    if frame.empty:
        return out
    if study.mode == "grid":
        preds, y_true = _predictions(session, frame)
        table = stats.compare_to_baseline(frame, preds, y_true, baseline=study.baseline, metric=metric)
        out["table"] = table
    else:
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
        except Exception:  # too few trials for the importance model
            imp = {}
        space = list(study.search["space"])
        effects = []
        for p in space:
            if p in frame:
                for value, grp in frame.groupby(p):
                    effects.append({"parameter": p, "value": value, "n": len(grp),
                                    f"mean_{metric}": grp[metric].mean()})
        out["importance"] = stats.search_importance_table(imp, pd.DataFrame(effects) if effects else None)
        best = ostudy.best_trials
        out["pareto"] = frame[frame.trial.isin([t.number for t in best])]
    return out


def format_summary(study_name: str, result: dict[str, Any], metric: str = "test_acc") -> str:
    lines = []
    frame = result["trials"]
    if frame.empty:
        return f"study {study_name}: no complete trials yet"
    if "table" in result:
        lines.append(stats.format_table(result["table"], metric_label=metric.replace("_", " ")))
    if "importance" in result:
        lines.append("parameter importance (Optuna) and measured effects:")
        lines.append(result["importance"].to_string(index=False))
        cols = [c for c in ("trial", "val_acc", "test_acc", "params", "macs", "latency_ms") if c in frame]
        lines.append("\nPareto front / best trials:")
        lines.append(result["pareto"][cols + [c for c in frame.columns if "." in c]].to_string(index=False))
    return "\n".join(lines)
