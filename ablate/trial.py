"""One trial, one record: what a trial produced, written once and read back one way.

A finished trial's folder (`runs/<study>/trials/NNNN/`) holds

    record.json          study, trial number, variant, seed, status, network and training config, metrics,
                         the device and the precision it trained at ("bf16" or "fp32", `runtime.precision_for`;
                         absent in older records), and the artifact paths below; written last, atomically, as
                         `.pending/record.json`, and moved into place only once the storage has the trial
                         complete: its presence means complete (a trial that failed after its record was written
                         leaves none)
    test/                the test-split evaluation (`resmasknet.evaluate.EvalResult.save`: metrics.json,
                         predictions.npz with index / label / prediction / probabilities, predictions.csv)
    test_tta_authors/    the same with the authors' TTA (when the study asks for TTA)
    best.pt, history.json

The same folder is uploaded as the MLflow run's `record` artifact. `read_trials(session)` asks the Optuna
storage which trials are complete, reads each record from its folder, falls back to the MLflow artifact
(another machine ran it) and says which source it used and what it could not read. The summary, the report
and the notebooks read trials only through it.

Example:
    >>> trials = read_trials(session)
    >>> trials.describe()                  # "9 trials: 9 from files (runs/quickstart/trials)"
    >>> rec = trials.records[0]
    >>> rec.variant, rec.seed, rec.metrics["test_acc"], rec.evaluation().confusion
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from resmasknet.runtime import atomic_write_json, describe_device

if TYPE_CHECKING:
    import optuna

    from ablate.session import Session
    from ablate.tracking import Tracker
    from resmasknet.evaluate import EvalResult

log = logging.getLogger(__name__)

RECORD = "record.json"
PENDING = ".pending"  # a record written before the storage has its trial complete: `.pending/record.json`
FORMAT = "ablate-trial/1"
ARTIFACT_PATH = "record"  # the MLflow artifact folder that mirrors the trial folder


@dataclass
class TrialRecord:
    """Everything one trial produced. `folder` is where its files are (a download for MLflow records)."""

    study: str
    trial: int
    variant: str
    seed: int
    status: str  # the training status: completed, early_stopped, time_limit, pruned, ...
    metrics: dict[str, float]
    config: dict[str, Any]  # NetConfig.to_dict()
    train: dict[str, Any]  # TrainConfig.to_dict()
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path relative to folder
    mlflow_run_id: str | None = None
    device: str | None = None  # the hardware it trained on (`runtime.describe_device`); None in older records
    precision: str | None = None  # "bf16" or "fp32" (`runtime.precision_for`); None in older records
    folder: Path | None = None
    source: str = "files"  # files | mlflow

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("folder")
        d.pop("source")
        return {"format": FORMAT, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], folder: Path | None = None, source: str = "files") -> TrialRecord:
        if d.get("format") != FORMAT:
            raise ValueError(f"{folder / RECORD if folder else RECORD}: not a trial record "
                             f"(format {d.get('format')!r}, expected {FORMAT!r})")
        fields = {k: d[k] for k in ("study", "trial", "variant", "seed", "status", "metrics", "config", "train",
                                    "artifacts", "mlflow_run_id")}
        return cls(**fields, device=d.get("device"), precision=d.get("precision"), folder=folder, source=source)

    def path(self, artifact: str) -> Path:
        if self.folder is None or artifact not in self.artifacts:
            raise KeyError(f"trial {self.trial} ({self.variant}/seed{self.seed}) has no artifact {artifact!r}; "
                           f"it has {sorted(self.artifacts)}")
        return self.folder / self.artifacts[artifact]

    def evaluation(self, name: str = "test") -> EvalResult:
        """The saved evaluation `name` ("test" or "test_tta_authors") as an EvalResult."""
        from resmasknet.evaluate import EvalResult

        return EvalResult.load(self.path(name))

    @property
    def checkpoint(self) -> Path:
        return self.path("best.pt")

    def model(self, device: str = "cpu") -> Any:
        """The trial's best checkpoint as a network in eval mode on `device`. A missing or unreadable
        checkpoint is an error naming the trial and the file (never skipped)."""
        from resmasknet.checkpoint import load_checkpoint

        try:
            path = self.checkpoint
        except KeyError as exc:
            raise FileNotFoundError(f"trial {self.trial} ({self.label}) kept no checkpoint (no best.pt in its "
                                    f"record)") from exc
        if not path.exists():
            raise FileNotFoundError(f"trial {self.trial} ({self.label}): its checkpoint {path} is missing")
        try:
            model, _ = load_checkpoint(path, map_location=device)
        except Exception as exc:
            raise ValueError(f"trial {self.trial} ({self.label}): {exc}") from exc
        return model.to(device).eval()

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def write_record(folder: str | os.PathLike, record: TrialRecord, *, pending: bool = False) -> Path:
    """Write record.json last and atomically; artifacts named in the record must exist already. pending: write
    `.pending/record.json` instead, for a trial the storage does not have complete yet (`promote_record` moves
    it into place once it has)."""
    folder = Path(folder)
    missing = [name for name, rel in record.artifacts.items() if not (folder / rel).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: the record names artifacts that are not there: {missing}")
    return atomic_write_json(folder / PENDING / RECORD if pending else folder / RECORD, record.to_dict())


def read_record(folder: str | os.PathLike, source: str = "files") -> TrialRecord:
    folder = Path(folder)
    path = folder / RECORD
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    return TrialRecord.from_dict(d, folder=folder, source=source)


@dataclass
class TrialSet:
    """The complete trials of a study, where each came from, and what could not be read."""

    records: list[TrialRecord]
    sources: dict[str, int]  # source -> count
    problems: list[str]  # one line per complete trial whose record could not be read
    where: str = ""
    notes: list[str] = field(default_factory=list)  # trials read from MLflow (and why), records set aside

    def describe(self) -> str:
        parts = ", ".join(f"{n} from {s}" for s, n in self.sources.items() if n)
        line = f"{len(self.records)} trials: {parts or 'none'}" + (f" ({self.where})" if self.where else "")
        if self.notes:
            line += "; " + "; ".join(self.notes)
        if self.problems:
            line += f"; {len(self.problems)} unreadable: " + "; ".join(self.problems)
        return line

    def frame(self) -> Any:
        """One row per trial: trial, variant, seed, status, every metric, folder."""
        import pandas as pd

        rows = [{"trial": r.trial, "variant": r.variant, "seed": r.seed, "status": r.status, **r.metrics,
                 "trial_dir": str(r.folder) if r.folder else None, "mlflow_run_id": r.mlflow_run_id}
                for r in self.records]
        return pd.DataFrame(rows)

    def by_cell(self) -> dict[tuple[str, int], TrialRecord]:
        return {(r.variant, r.seed): r for r in self.records}


def trial_folder(session: Session, t: optuna.trial.FrozenTrial) -> Path:
    """Where trial `t`'s files are in this study folder. Its `trial_dir` attribute is relative to the study
    folder (`trials/0003`), so a moved or copied folder finds its trials; older studies stored the absolute path
    where they ran, whose last part is looked up here first (the original, when it still exists, second)."""
    stored = t.user_attrs.get("trial_dir")
    if not stored:
        return session.paths.trial_dir(t.number)
    p = Path(stored)
    if not p.is_absolute():
        return session.paths.root / p
    here = session.paths.root / "trials" / p.name
    return p if not here.exists() and p.exists() else here


def promote_record(folder: str | os.PathLike) -> Path | None:
    """Move a trial's pending record (`.pending/record.json`, written before the storage had the trial complete)
    to `record.json`, once the storage has it: from then on its presence means complete. Returns the record's
    path, or None when there is no pending record. Best effort: a read-only folder keeps it pending (readers
    accept a pending record of a trial the storage holds complete)."""
    folder = Path(folder)
    pending = folder / PENDING / RECORD
    if not pending.exists():
        return None
    try:
        os.replace(pending, folder / RECORD)
        with contextlib.suppress(OSError):
            (folder / PENDING).rmdir()
    except OSError as exc:
        log.debug("cannot promote %s: %s", pending, exc)
        return pending
    return folder / RECORD


def _elsewhere(t: optuna.trial.FrozenTrial) -> tuple[str, str] | None:
    """(host, its output folder) when trial `t` ran on another machine of a shared storage (`run_trial` records
    the folder there; a journal's trials are all in its own folder)."""
    import socket

    host, out_dir = t.user_attrs.get("host"), t.user_attrs.get("out_dir")
    if host and out_dir and host != socket.gethostname():
        return str(host), str(out_dir)
    return None


def read_trials(session: Session, *, download_dir: str | os.PathLike | None = None) -> TrialSet:
    """Storage -> files -> MLflow: the storage lists the complete trials; each record is read from its folder
    (found relative to the study folder, wherever it is now), else from its MLflow run's `record` artifact
    (this folder's copy, else a download). Trials read from MLflow are named with the reason; a trial that
    cannot be read is a problem line (trials that ran on another machine whose files are not here: one line per
    machine, naming it and its folder). Without a readable storage, the trial folders are scanned."""
    from optuna.trial import TrialState

    from ablate.session import load_optuna_study

    sources = {"files": 0, "mlflow": 0}
    problems: list[str] = []
    notes: list[str] = []
    records: list[TrialRecord] = []
    trials_dir = session.paths.root / "trials"
    try:
        ostudy = load_optuna_study(session)
        complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    except Exception as exc:  # no storage here: the files are all we have
        log.warning("cannot open the study storage %s (%s); reading the trial folders under %s",
                    session.storage_url, exc, trials_dir)
        by_cell: dict[tuple[str, int], TrialRecord] = {}
        for rec_path in sorted(trials_dir.glob(f"*/{RECORD}")):
            try:
                rec = read_record(rec_path.parent)
            except (OSError, ValueError, KeyError) as err:
                problems.append(f"{rec_path}: {err}")
                continue
            old = by_cell.get((rec.variant, rec.seed))
            if old is not None:  # an older version's retried cell: the later trial is the one that counts
                notes.append(f"trial {old.trial} ({old.label}) set aside: trial {rec.trial} is a later record of "
                             f"the same cell")
            by_cell[(rec.variant, rec.seed)] = rec
        records = sorted(by_cell.values(), key=lambda r: r.trial)
        sources["files"] = len(records)
        return TrialSet(records, sources, problems, where=f"scanned {trials_dir}", notes=notes)
    tracker = None
    away: dict[tuple[str, str], list[str]] = {}
    for t in complete:
        a = t.user_attrs
        folder = trial_folder(session, t)
        label = f"trial {t.number} ({a.get('variant')}/seed{a.get('seed')})"
        if (folder / RECORD).exists() or (folder / PENDING / RECORD).exists():
            try:
                if not (folder / RECORD).exists():  # the storage has it complete: its pending record holds
                    promote_record(folder)
                path = folder / RECORD if (folder / RECORD).exists() else folder / PENDING / RECORD
                records.append(read_record(path.parent))
                records[-1].folder = folder
                sources["files"] += 1
            except (OSError, ValueError, KeyError) as err:
                problems.append(f"{label}: {err}")
            continue
        run_id = a.get("mlflow_run_id")
        other = _elsewhere(t)
        if not run_id:
            if other:
                away.setdefault(other, []).append(label)
            else:
                problems.append(f"{label}: no {RECORD} in {folder} and no MLflow run")
            continue
        try:
            tracker = tracker or session.tracker()
            local = tracker.artifact_dir(run_id)
            if local is not None and (local / ARTIFACT_PATH / RECORD).exists():
                got = local / ARTIFACT_PATH
            else:
                dest = _download_dir(session, download_dir) / f"{t.number:04d}"
                got = dest / ARTIFACT_PATH
                if not (got / RECORD).exists():
                    got = tracker.download(run_id, ARTIFACT_PATH, dest)
            records.append(read_record(got, source="mlflow"))
            sources["mlflow"] += 1
            notes.append(f"{label} from MLflow: no {RECORD} in {folder}")
        except Exception as err:  # noqa: BLE001 - any failure is reported, none is silent
            if other:
                away.setdefault(other, []).append(label)
            else:
                problems.append(f"{label}: no {RECORD} in {folder}, and its MLflow artifact could not be read "
                                f"({' '.join(str(err).split())})")
    for (host, out_dir), labels in away.items():
        problems.append(f"{', '.join(labels)}: ran on host {host}, whose folder {out_dir} holds the files and is "
                        f"not reachable here (nor is an MLflow copy); copy its trials/ and mlartifacts/ into "
                        f"{session.paths.root}, or read the study on {host}")
    records.sort(key=lambda r: r.trial)
    return TrialSet(records, sources, problems, where=str(trials_dir), notes=notes)


def _download_dir(session: Session, given: str | os.PathLike | None) -> Path:
    """Where MLflow downloads go: `given`, else `downloads/` in the study folder, else (a read-only folder) a
    temporary folder."""
    if given:
        return Path(given)
    dest = session.paths.root / "downloads"
    try:
        dest.mkdir(parents=True, exist_ok=True)
        return dest
    except OSError:
        import tempfile

        return Path(tempfile.mkdtemp(prefix="ablate-downloads-"))


# ---- running one trial ---------------------------------------------------------------------------------
def run_trial(session: Session, ostudy: optuna.Study, trial: optuna.Trial, tracker: Tracker) -> None:
    """Train, evaluate, write the record and track one trial; tell Optuna last, after MLflow has the
    finished run. A failure is classified (`ablate.faults.classify`) and recorded on the trial."""
    from optuna.trial import TrialState

    from ablate.runner import Heartbeat, cell_of, sample_space
    from ablate.study import _split_overrides
    from resmasknet.model import count_macs, count_parameters, module_seed
    from resmasknet.registry import create_model
    from resmasknet.runtime import precision_for, use_device
    from resmasknet.train import StopTraining, TrainConfig, train

    study = session.study
    storage = ostudy._storage
    if study.mode == "grid":
        if cell_of(storage.get_trial(trial._trial_id)) is None:
            raise RuntimeError("popped a trial without a cell")
        cell = trial.suggest_int("cell", 0, len(study.cells) - 1)
        vname, seed = study.cells[cell]
        variant = study.variant(vname)
        model_ov, train_ov = variant.model, variant.train
    else:
        vname, seed = f"trial{trial.number}", study.seeds[0]
        model_ov, train_ov = _split_overrides(sample_space(trial, study.search["space"]), "search.space", study.path)
    cfg = study.net_config(model_ov)
    # common random numbers (the default): one seed gives every variant the same data order, augmentation
    # draws and initial weights for each module they share. Without them (to measure what they buy), each
    # variant draws its own from (seed, variant).
    run_seed = seed if study.crn else module_seed(seed, f"variant:{vname}") % 2**31
    tcfg = TrainConfig(**{**study.train, **train_ov, "seed": run_seed})
    trial_dir = session.paths.trial_dir(trial.number)
    params = {**{f"model.{k}": v for k, v in cfg.flat().items()},
              **{f"train.{k}": v for k, v in tcfg.to_dict().items()},
              "variant": vname, "seed": seed, "data": study.data, "preset": study.model}
    device = session.device
    # the one precision decision for this trial, from its own device (a worker's cuda:N); training, validation,
    # evaluation and latency follow it, and the MLflow run and the record keep it
    precision = precision_for(device, tcfg.cpu_bf16, "training")
    params["precision"] = precision
    parent = ostudy.user_attrs["mlflow_parent_run_id"]
    run_id = tracker.start_trial(parent, f"{vname}/seed{seed}", params,
                                 tags={"ablate.study": study.name, "variant": vname, "seed": str(seed),
                                       "device": device, "optuna_trial": str(trial.number)})
    storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", run_id)
    storage.set_trial_user_attr(trial._trial_id, "variant", vname)
    storage.set_trial_user_attr(trial._trial_id, "seed", seed)
    # relative to the study folder, so the folder can be moved or copied; with a shared storage, the folder
    # where this machine keeps the files too, so another machine can say where they are
    storage.set_trial_user_attr(trial._trial_id, "trial_dir", trial_dir.relative_to(session.paths.root).as_posix())
    if not session.storage_url.endswith(".journal") and "://" in session.storage_url:
        storage.set_trial_user_attr(trial._trial_id, "out_dir", str(session.paths.root.resolve()))
    beat = Heartbeat(storage, trial._trial_id)
    prune = study.mode == "search" and len(study.objectives) == 1 and study.search.get("pruner") != "none"
    pruned = told = False

    def callback(epoch: int, metrics: dict[str, float]) -> None:
        nonlocal pruned
        tracker.log_metrics(run_id, metrics, step=epoch)
        if prune and "val_acc" in metrics:
            trial.report(metrics["val_acc"], epoch)
            if trial.should_prune():
                pruned = True
                raise StopTraining(f"pruned by Optuna at epoch {epoch}")

    try:
        for stale in (trial_dir / RECORD, trial_dir / PENDING / RECORD):  # never mistake an old record for this one
            stale.unlink(missing_ok=True)
        use_device(device)  # a worker on cuda:N: what torch puts on the current GPU goes to N, not to GPU 0
        data = _load_data(str(study.resolved("data")))
        model = create_model(cfg, seed=run_seed)  # masks_off and unapplied at one seed: the same backbone
        if study.pretrained:
            from resmasknet.pretrained import load_imagenet_backbone

            load_imagenet_backbone(model, study.resolved("pretrained"))
        result = train(model, data, tcfg, out_dir=trial_dir, callback=callback, device=device,
                       progress=session.progress, precision=precision)
        metrics, artifacts = evaluate_trial(model, data, result, trial_dir, device, tta=study.tta)
        metrics["params"] = float(count_parameters(model))
        metrics["macs"] = float(count_macs(model))
        record = TrialRecord(study=study.name, trial=trial.number, variant=vname, seed=int(seed),
                             status="pruned" if pruned else result.status, metrics=metrics, config=cfg.to_dict(),
                             train=tcfg.to_dict(), artifacts=artifacts, mlflow_run_id=run_id,
                             device=describe_device(device), precision=getattr(result, "precision", precision))
        # the record is pending until the storage has the trial complete: a failure from here on (a full disk,
        # a kill) leaves no record.json that looks complete for a trial the storage holds as failed
        pending = write_record(trial_dir, record, pending=True)
        tracker.log_metrics(run_id, metrics)
        tracker.set_tags(run_id, {"status": record.status})
        tracker.log_artifacts(run_id, trial_dir, ARTIFACT_PATH, skip=("last.pt",))
        tracker.log_artifact(run_id, pending, ARTIFACT_PATH)
        tracker.finish(run_id, "FINISHED")
        beat.stop()
        if pruned:
            ostudy.tell(trial, state=TrialState.PRUNED)
        else:
            ostudy.tell(trial, [metrics[o.metric] for o in study.objectives])
        told = True
        promote_record(trial_dir)  # a kill before this line: readers promote it (the storage says complete)
        return
    except BaseException as exc:
        beat.stop()
        if told:  # the storage and MLflow have the trial complete: an interrupt now changes nothing of it
            raise
        import traceback

        from ablate.faults import DEVICE, TRIAL, classify
        from resmasknet.runtime import StorageError, atomic_write_text, storage_error

        # a full disk / read-only / unwritable folder becomes one line naming the path (torch hides the errno)
        err = (storage_error(exc, getattr(exc, "filename", None) or trial_dir)
               if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, StorageError) else None)
        kind, reason = classify(err or exc)
        if kind in (TRIAL, DEVICE):
            with contextlib.suppress(Exception):
                atomic_write_text(trial_dir / "traceback.txt", traceback.format_exc())
        with contextlib.suppress(Exception):
            tracker.set_tags(run_id, {"error": reason[:4000], "error_kind": kind})
        with contextlib.suppress(Exception):
            tracker.finish(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        with contextlib.suppress(Exception):  # the reason first: a finished trial takes no more attributes
            storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason[:2000])
            storage.set_trial_user_attr(trial._trial_id, "fail_kind", kind)
            ostudy.tell(trial, state=TrialState.FAIL)
        if err is not None:
            raise err from exc
        raise


_DATA_CACHE: dict[str, Any] = {}


def _load_data(spec: str) -> Any:
    """The study's data, loaded once per process (`check_data` and every trial of this worker share it)."""
    if spec not in _DATA_CACHE:
        from resmasknet.data import load_data

        _DATA_CACHE[spec] = load_data(spec)
    return _DATA_CACHE[spec]


def check_data(study: Any) -> None:
    """Before a run creates anything: the study's data opens. A `generated:` spec is parsed and its options
    checked; a file or folder is loaded (and kept for this process's trials), so a missing path or a malformed
    row is refused now, with one line naming the study file, the data file and the row (a `StudyError`,
    exit 2), instead of failing every cell's attempts once training starts. A `pretrained` file must exist."""
    from ablate.study import StudyError
    from resmasknet.data import DataError, GeneratorConfig
    from resmasknet.data._load import _check_options, parse_generated_spec

    specs = dict.fromkeys(s for s in [study.resolved("data")] if s)
    for spec in specs:
        try:
            if spec == "generated" or spec.startswith("generated:"):
                options = parse_generated_spec(spec)
                _check_options(options, tuple(GeneratorConfig.__dataclass_fields__), "generated data")
                GeneratorConfig(**options)
            else:
                _load_data(spec)
        except (DataError, TypeError, OSError) as exc:
            text = " ".join(str(exc).split())
            raise StudyError(f"{study.path}: base.data: {text}") from exc
    pretrained = study.resolved("pretrained")
    if pretrained and not Path(pretrained).expanduser().is_file():
        raise StudyError(f"{study.path}: base.pretrained: {pretrained}: no such file")


def evaluate_trial(model: Any, data: Any, result: Any, trial_dir: Path, device: str, tta: bool = True
                   ) -> tuple[dict[str, float], dict[str, str]]:
    """Evaluate the best checkpoint on validation and test (plain, and with the authors' TTA), save the test
    evaluations in the trial folder and time inference, all at the device's precision (`runtime.precision_for`,
    decided once here). Returns (metrics, artifacts)."""
    from resmasknet.checkpoint import load_checkpoint
    from resmasknet.evaluate import evaluate
    from resmasknet.runtime import precision_for

    precision = precision_for(device)
    best = trial_dir / "best.pt"
    if best.exists():  # read onto the CPU, where the model is built, then moved to the device once
        model, _ = load_checkpoint(best, map_location="cpu")
    model = model.to(device).eval()
    val = evaluate(model, data.select("val"), device=device, precision=precision)
    test = evaluate(model, data.select("test"), device=device, precision=precision)
    test.save(trial_dir / "test")
    artifacts = {"test": "test", "history.json": "history.json"}
    if best.exists():
        artifacts["best.pt"] = "best.pt"
    metrics = {"val_acc": float(val.accuracy), "test_acc": float(test.accuracy),
               "test_macro_f1": float(test.macro_f1), "latency_ms": latency_ms(model, device, precision=precision),
               "epochs_run": float(len(getattr(result, "history", []) or []))}
    if tta:
        tta_result = evaluate(model, data.select("test"), device=device, tta="authors", precision=precision)
        tta_result.save(trial_dir / "test_tta_authors")
        artifacts["test_tta_authors"] = "test_tta_authors"
        metrics["test_acc_tta"] = float(tta_result.accuracy)
    if not (trial_dir / "history.json").exists():
        artifacts.pop("history.json")
    return metrics, artifacts


def latency_ms(model: Any, device: str, batch: int = 1, reps: int = 5, precision: str | None = None) -> float:
    """Milliseconds per image of a forward pass of `batch` images, at `precision` (default
    `runtime.precision_for(device)`, as evaluation runs it); the GPU's queue drained around the timing."""
    import torch

    from resmasknet.runtime import autocast, precision_for

    precision = precision or precision_for(device)
    cfg = model.config
    x = torch.rand(batch, cfg.in_chans, cfg.input_size, cfg.input_size, device="cpu").to(device)
    x = x.contiguous(memory_format=torch.channels_last)
    cuda = str(device).startswith("cuda")
    with torch.inference_mode(), autocast(device, precision):
        model(x)
        if cuda:
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        for _ in range(reps):
            model(x)
        if cuda:
            torch.cuda.synchronize(device)
    return (time.perf_counter() - t) / reps * 1000 / batch


def predictions(records: list[TrialRecord], name: str = "test") -> tuple[dict[tuple[str, int], np.ndarray],
                                                                        np.ndarray | None, list[str]]:
    """Per-image predicted labels by (variant, seed), the true labels, and one line per record whose
    evaluation could not be read (never silently dropped)."""
    preds: dict[tuple[str, int], np.ndarray] = {}
    y_true: np.ndarray | None = None
    problems: list[str] = []
    for r in records:
        try:
            ev = r.evaluation(name)
        except (OSError, KeyError, ValueError) as exc:
            problems.append(f"{r.label}: {exc}")
            continue
        if y_true is not None and (len(ev.labels) != len(y_true) or not np.array_equal(ev.labels, y_true)):
            problems.append(f"{r.label}: its test labels differ from the other trials'")
            continue
        y_true = ev.labels
        preds[(r.variant, r.seed)] = ev.predictions
    return preds, y_true, problems
