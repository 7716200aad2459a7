"""A finished study's results as data: the files `ablate export STUDY [--to results/STUDY]` writes.

    summary.csv          the comparison table, as `ablate summarize` computes and saves it (one row per variant)
    summary.md           the same table as Markdown with the verdicts' reasons (`ablate summarize --markdown`)
    trials.csv           one row per complete trial: trial, variant, seed, status, every metric, the device it
                         trained on (a description of the hardware, no host name) and its MLflow run id; no paths
    predictions.csv.gz   the per-image test predictions of every trial (variant, seed, image, label, prediction),
                         what McNemar's column is computed from
    provenance.json      what produced them: the export command, the study's settings, the machines the trials
                         ran on and the one that exported them (CPU model, cores, the CPU flags that matter for
                         speed), torch version, git commits, the study's wall time and the date

`read_export(folder)` reads the files back and `table_from_export(folder)` recomputes the comparison table from
them with `ablate.stats.compare_to_baseline`: the same table `ablate summarize` gives on the live study.

Example:
    >>> paths = export_study(session, "results/quickstart", command="ablate export quickstart")
    >>> table_from_export("results/quickstart")          # == summarize(session)["table"]
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ablate.runner import Session

FORMAT = "ablate-export/1"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
TRIALS_CSV = "trials.csv"
PREDICTIONS_CSV = "predictions.csv.gz"
PROVENANCE = "provenance.json"
# CPU flags that decide which kernels run and how fast (AVX2 / AVX-512 paths, bf16 units, AMX tiles)
SPEED_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "amx_bf16",
               "amx_int8", "amx_tile", "asimd", "sve", "bf16")
# columns of the trial frame that are local to one machine (folders) and never exported
LOCAL_COLUMNS = ("trial_dir",)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def scrub_argv(argv: list[str]) -> str:
    """The command line without one machine's paths: an absolute path inside the current folder becomes
    relative to it, any other absolute path keeps only its last part (`.../name`)."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=") if arg.startswith("--") and "=" in arg else ("", "", arg)
        value = scrub_path(value)
        out.append(f"{key}{eq}{value}" if eq else value)
    return " ".join(out)


def scrub_path(value: str) -> str:
    """`value` without one machine's folders: an absolute path inside the current folder becomes relative to
    it, any other absolute path keeps only its last part (`.../name`); anything else is returned as it is."""
    if not os.path.isabs(value):
        return value
    p = Path(value)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return f".../{p.name}"


def machine() -> dict[str, Any]:
    """This machine, without its name: OS and architecture, CPU model (with family and model on x86), cores,
    the speed-relevant CPU flags it has, whether it has bf16 units, and torch's CPU capability and version."""
    from resmasknet import runtime

    cpu = runtime.cpu_identity()
    info: dict[str, Any] = {"system": platform.system(), "machine": platform.machine(),
                            "python": platform.python_version(), "cpu": cpu["name"], "cpu_family": cpu["family"],
                            "cpu_model": cpu["model"], "logical_cpus": os.cpu_count()}
    flags = runtime.cpu_flags()
    info["cpu_flags"] = sorted(f for f in SPEED_FLAGS if flags and f in flags) if flags is not None else None
    info["bf16_units"] = runtime.cpu_has_bf16()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001 - a description, never a failure
        info.setdefault("torch", None)
    return info


def checkout_commit() -> str | None:
    """The git commit of the checkout this package runs from (with `-dirty` when it has uncommitted changes),
    or None outside a git checkout (an installed wheel)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=5,
                             cwd=here).stdout.strip()
        if not top or Path(top).resolve() != here.parent:  # some other repository around an installed copy
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=here).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _wall_time(session: Session) -> dict[str, Any]:
    """From the Optuna storage: the complete trials' summed durations and the span from the first start to the
    last completion (retried attempts that failed are not counted in the sum)."""
    from optuna.trial import TrialState

    from ablate.runner import load_optuna_study

    try:
        trials = load_optuna_study(session).get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    except Exception as exc:  # noqa: BLE001 - no storage here: say so
        return {"source": f"unavailable ({exc})"}
    spans = [(t.datetime_start, t.datetime_complete) for t in trials if t.datetime_start and t.datetime_complete]
    if not spans:
        return {"source": "the Optuna storage has no timed complete trial"}
    first, last = min(s for s, _ in spans), max(c for _, c in spans)
    return {"trials_sum_s": round(sum((c - s).total_seconds() for s, c in spans), 1),
            "first_start_to_last_complete_s": round((last - first).total_seconds(), 1),
            "first_start": first.isoformat(timespec="seconds"), "last_complete": last.isoformat(timespec="seconds"),
            "source": "Optuna storage: datetime_start and datetime_complete of the complete trials; trials_sum_s "
                      "adds each trial's duration (workers in parallel overlap), first_start_to_last_complete_s is "
                      "the span of the whole run (pauses between runs included)"}


def _study_commit(session: Session) -> str | None:
    """The git commit the study's MLflow parent run was started at (its `git_commit` tag), or None."""
    try:
        from ablate.runner import load_optuna_study

        run_id = load_optuna_study(session).user_attrs.get("mlflow_parent_run_id")
        if not run_id:
            return None
        commit = session.tracker().client.get_run(run_id).data.tags.get("git_commit")
        return None if commit in (None, "", "unknown") else commit
    except Exception:  # noqa: BLE001 - provenance is best effort, and says None
        return None


def _study_file(study: Any) -> str | None:
    """The study file as `studies/<name>.yaml` when it is a shipped or local study, else its file name."""
    if not study.path:
        return None
    p = Path(study.path)
    return f"studies/{p.name}" if p.parent.name in ("studies", "_studies") else p.name


def trial_rows(frame: pd.DataFrame, records: list[Any]) -> pd.DataFrame:
    """The summary's trial frame without machine-local columns, with each trial's device description."""
    out = frame.drop(columns=[c for c in LOCAL_COLUMNS if c in frame.columns])
    devices = {r.trial: r.device for r in records}
    if "trial" in out.columns and "device" not in out.columns:
        out = out.assign(device=[devices.get(t) for t in out["trial"]])
    return out


def export_study(session: Session, dest: str | os.PathLike, *, metric: str = "test_acc", test: str = "t",
                 command: str | None = None) -> dict[str, Path]:
    """Write the study's results as data into `dest` (see the module docstring); returns {file kind: path}.
    The table is `ablate.summary.summarize`'s, so the exported summary is what `ablate summarize` prints."""
    from ablate import stats
    from ablate.summary import METRIC_EVALUATION, summarize
    from ablate.trial import predictions
    from resmasknet.runtime import atomic_write, atomic_write_json

    study = session.study
    result = summarize(session, metric=metric, test=test)
    frame = result["trials"]
    if frame.empty:
        raise ValueError(f"study {study.name} has no complete trials to export ({'; '.join(result['notes'])})")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    label = metric.replace("_", " ")

    trials = trial_rows(frame, result["records"].records)
    atomic_write(dest / TRIALS_CSV, lambda tmp: trials.to_csv(tmp, index=False))
    written["trials"] = dest / TRIALS_CSV

    evaluation = METRIC_EVALUATION.get(metric)
    if evaluation is not None and study.mode == "grid":
        preds, y_true, _problems = predictions(result["records"].records, evaluation)
        if preds and y_true is not None:
            long = pd.concat([pd.DataFrame({"variant": v, "seed": s, "image": np.arange(len(y_true)),
                                            "label": y_true, "prediction": p})
                              for (v, s), p in sorted(preds.items(), key=lambda kv: (str(kv[0][0]), kv[0][1]))],
                             ignore_index=True)
            atomic_write(dest / PREDICTIONS_CSV,
                         lambda tmp: long.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0}))
            written["predictions"] = dest / PREDICTIONS_CSV

    if "table" in result:
        table = result["table"]
        atomic_write(dest / SUMMARY_CSV, lambda tmp: table.to_csv(tmp, index=False))
        atomic_write(dest / SUMMARY_MD, lambda tmp: Path(tmp).write_text(
            scrub_text(stats.to_markdown(table, metric_label=label)) + "\n"))
        written["summary"], written["summary_md"] = dest / SUMMARY_CSV, dest / SUMMARY_MD
    elif "importance" in result:
        atomic_write(dest / "importance.csv", lambda tmp: result["importance"].to_csv(tmp, index=False))
        written["importance"] = dest / "importance.csv"

    devices = Counter(r.device or "not recorded" for r in result["records"].records)
    higher = next((o.direction == "maximize" for o in study.objectives if o.metric == metric), True)
    provenance = {
        "format": FORMAT,
        "study": study.name,
        "study_file": _study_file(study),
        "command": command,
        "date": _now(),
        "settings": {"mode": study.mode, "metric": metric, "higher_is_better": higher, "test": test,
                     "baseline": study.baseline, "rope_points": float(study.rope),
                     "common_random_numbers": bool(study.crn), "data": scrub_path(str(study.data)),
                     "model": study.model,
                     "variants": [v.name for v in study.variants], "seeds": [int(s) for s in study.seeds],
                     "predictions_evaluation": evaluation if "predictions" in written else None},
        "trials": {"complete": len(frame), "read": scrub_text(result["records"].describe()),
                   "trained_on": dict(devices)},
        "wall_time": _wall_time(session),
        "study_commit": _study_commit(session),
        "export_commit": checkout_commit(),
        "export_machine": machine(),
        "notes": [scrub_text(str(n)) for n in result.get("notes", [])],
        "files": sorted(p.name for p in written.values()),
    }
    atomic_write_json(dest / PROVENANCE, provenance)
    written["provenance"] = dest / PROVENANCE
    return written


def read_csv(path: str | os.PathLike, **kwargs: Any) -> pd.DataFrame:
    """`pd.read_csv` that reads back every float `to_csv` wrote, bit for bit (pandas 3 does by default; pandas 2
    needs the round-trip parser)."""
    if int(pd.__version__.split(".")[0]) < 3:
        kwargs.setdefault("float_precision", "round_trip")
    return pd.read_csv(path, **kwargs)


_ABS_PATH = re.compile(r"(?<![\w.~:/])/[^\s()\[\]'\",;:]+")


def scrub_text(text: str) -> str:
    """`text` with every absolute path in it passed through `scrub_path` (notes name the trial folders)."""
    return _ABS_PATH.sub(lambda m: scrub_path(m.group(0)), text)


@dataclass
class Export:
    """An export read back: the trial rows, the per-image predictions by (variant, seed), the true labels and
    the provenance (whose `settings` say how the table was computed)."""

    trials: pd.DataFrame
    predictions: dict[tuple[str, int], np.ndarray] | None
    y_true: np.ndarray | None
    provenance: dict[str, Any]


def read_export(folder: str | os.PathLike) -> Export:
    folder = Path(folder)
    provenance = json.loads((folder / PROVENANCE).read_text())
    if provenance.get("format") != FORMAT:
        raise ValueError(f"{folder / PROVENANCE}: not an ablate export (format {provenance.get('format')!r})")
    trials = read_csv(folder / TRIALS_CSV, dtype={"variant": str})
    preds = y_true = None
    if (folder / PREDICTIONS_CSV).exists():
        long = pd.read_csv(folder / PREDICTIONS_CSV, dtype={"variant": str})
        preds = {}
        for (variant, seed), grp in long.groupby(["variant", "seed"], sort=False):
            grp = grp.sort_values("image")
            preds[(str(variant), int(seed))] = grp["prediction"].to_numpy()
            y_true = grp["label"].to_numpy()
    return Export(trials, preds, y_true, provenance)


def table_from_export(folder: str | os.PathLike) -> pd.DataFrame:
    """The comparison table recomputed from an export's files alone, with the settings it was made with."""
    from ablate import stats

    ex = read_export(folder)
    s = ex.provenance["settings"]
    return stats.compare_to_baseline(ex.trials, ex.predictions, ex.y_true, baseline=s["baseline"],
                                     metric=s["metric"], rope=s["rope_points"] / 100.0,
                                     higher_is_better=s["higher_is_better"], test=s["test"])
