"""Running a study as an Optuna sweep: one laptop (`ablate run --workers N`) or many machines
(`ablate worker STUDY --storage postgresql://...`), every trial tracked in MLflow.

Grid cells (variant x seed) are enqueued as Optuna trials; `study.ask()` pops a waiting trial
atomically in both storages, so two workers never take the same cell. A worker writes a heartbeat
(and its host and pid) into its trial; a trial whose heartbeat is stale, or whose process is gone on
this host, is failed (its MLflow run marked KILLED) and its cell enqueued again. Failing and
enqueueing happen under one study-wide lock (a file lock beside the journal, a PostgreSQL advisory
lock), so a cell is never enqueued twice and never lost, across kills and restarts.

Storage defaults sit under the study's output folder `runs/<study>/`: `optuna.journal` (Optuna's
JournalStorage: SQLite locks under parallel workers) and `mlflow.db` (MLflow's default store).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
import traceback
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from ablate.study import Study
from ablate.tracking import Tracker

optuna.logging.set_verbosity(optuna.logging.WARNING)
HEARTBEAT_S = float(os.environ.get("ABLATE_HEARTBEAT_S", "15"))
GRACE_S = float(os.environ.get("ABLATE_GRACE_S", "120"))
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def for_study(cls, study: Study, out: str | os.PathLike | None = None) -> Paths:
        return cls(Path(out) if out else Path("runs") / study.name)

    @property
    def journal(self) -> Path:
        return self.root / "optuna.journal"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"


@dataclass
class Session:
    """What a worker needs: the study, its Optuna storage and its MLflow tracker."""

    study: Study
    storage_url: str
    tracking_uri: str
    paths: Paths
    device: str = "cpu"
    progress: bool = True

    def storage(self) -> optuna.storages.BaseStorage:
        return open_storage(self.storage_url)

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, experiment=f"ablate/{self.study.name}",
                       artifact_root=str(self.paths.artifacts))


def open_storage(url: str) -> optuna.storages.BaseStorage:
    if url.startswith(("postgresql", "mysql", "sqlite")):
        if url.startswith("sqlite"):
            raise ValueError("SQLite Optuna storage locks under parallel workers; use the default journal "
                             "file on one machine or postgresql:// across machines")
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


@contextlib.contextmanager
def study_lock(session: Session) -> Iterator[None]:
    """A study-wide lock: enqueueing and failing stale trials happen one process at a time."""
    if session.storage_url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(session.storage_url, poolclass=sqlalchemy.pool.NullPool)
        key = zlib.crc32(f"ablate:{session.study.name}".encode()) & 0x7FFFFFFF
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        engine.dispose()
        return
    lock_path = Path(session.storage_url + ".ablate-lock")  # not ".lock": the journal backend owns that name
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _directions(study: Study) -> list[Any]:
    return [o.direction for o in study.objectives]


def load_optuna_study(session: Session) -> optuna.Study:
    return optuna.load_study(study_name=session.study.name, storage=session.storage())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers kill(0); its /proc status says so
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split(":", 1)[1] for line in f)
    except OSError:
        return True


def is_stale(t: optuna.trial.FrozenTrial, now: float | None = None) -> bool:
    now = now or time.time()
    attrs = t.user_attrs
    if attrs.get("host") == socket.gethostname() and "pid" in attrs and not _pid_alive(int(attrs["pid"])):
        return True
    beat = attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
    return now - float(beat) > GRACE_S


def cell_of(t: optuna.trial.FrozenTrial) -> int | None:
    return t.params.get("cell") if "cell" in t.params else t.system_attrs.get("fixed_params", {}).get("cell")


def maintain(session: Session, ostudy: optuna.Study, tracker: Tracker | None = None) -> dict[str, int]:
    """Under the study lock: fail stale running trials (MLflow run -> KILLED) and, in a grid, enqueue
    every cell that is neither complete, waiting nor running. Returns counts."""
    storage = ostudy._storage
    failed = enqueued = 0
    with study_lock(session):
        trials = ostudy.get_trials(deepcopy=False)
        for t in trials:
            if t.state == TrialState.RUNNING and is_stale(t):
                try:  # the reason first: a finished trial takes no more attributes
                    storage.set_trial_user_attr(t._trial_id, "fail_reason", "stale: worker gone or heartbeat lost")
                    if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL) is False:
                        continue
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue
                failed += 1
                run_id = t.user_attrs.get("mlflow_run_id")
                if run_id and tracker is not None:
                    with contextlib.suppress(Exception):
                        tracker.finish(run_id, "KILLED")
        if session.study.mode == "grid":
            trials = ostudy.get_trials(deepcopy=False)
            busy = {cell_of(t) for t in trials
                    if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)}
            attempts: dict[int, int] = {}
            for t in trials:
                c = cell_of(t)
                if t.state == TrialState.FAIL and c is not None:
                    attempts[c] = attempts.get(c, 0) + 1
            for i, _cell in enumerate(session.study.cells):
                if i not in busy and attempts.get(i, 0) < MAX_ATTEMPTS:
                    ostudy.enqueue_trial({"cell": i}, skip_if_exists=False)
                    enqueued += 1
    return {"failed_stale": failed, "enqueued": enqueued}


def prepare(session: Session) -> optuna.Study:
    """Create (or reopen) the Optuna study, the MLflow experiment and the parent run; enqueue the grid.
    Runs before any worker starts (MLflow races when workers create the experiment themselves)."""
    study = session.study
    session.paths.root.mkdir(parents=True, exist_ok=True)
    tracker = session.tracker()
    storage = session.storage()
    with study_lock(session):
        ostudy = optuna.create_study(study_name=study.name, storage=storage, load_if_exists=True,
                                     directions=_directions(study), sampler=make_sampler(study),
                                     pruner=make_pruner(study))
        spec = json.dumps(study.raw, sort_keys=True, default=str)
        old = ostudy.user_attrs.get("spec")
        if old is not None and old != spec:
            raise ValueError(f"{study.path}: the study file changed since study {study.name!r} started in "
                             f"{session.storage_url}; finishing it would mix two designs. Use a new name or "
                             f"--out folder, or delete the old storage")
        ostudy.set_user_attr("spec", spec)
        tracker.ensure_experiment()
        if "mlflow_parent_run_id" not in ostudy.user_attrs:
            parent = tracker.start_parent(study.name, params={"mode": study.mode, "model": study.model,
                                                              "data": study.data, "seeds": list(study.seeds),
                                                              "baseline": study.baseline},
                                          tags={"study_file": study.path})
            ostudy.set_user_attr("mlflow_parent_run_id", parent)
    maintain(session, ostudy, tracker)
    return ostudy


def make_sampler(study: Study) -> optuna.samplers.BaseSampler:
    seed = study.search.get("seed", 0)
    kind = study.search.get("sampler", "tpe")
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def make_pruner(study: Study) -> optuna.pruners.BasePruner:
    kind = study.search.get("pruner", "none") if study.mode == "search" else "none"
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=int(study.train.get("epochs", 10)))
    return optuna.pruners.NopPruner()


class Heartbeat:
    """Writes host, pid and a timestamp into the running trial until stopped."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float = HEARTBEAT_S):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        storage.set_trial_user_attr(trial_id, "host", socket.gethostname())
        storage.set_trial_user_attr(trial_id, "pid", os.getpid())
        self.beat()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def beat(self) -> None:
        with contextlib.suppress(Exception):
            self.storage.set_trial_user_attr(self.trial_id, "heartbeat", time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sample_space(trial: optuna.Trial, space: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in space.items():
        if "int" in spec:
            out[key] = trial.suggest_int(key, *spec["int"], step=spec.get("step", 1), log=spec.get("log", False))
        elif "float" in spec:
            out[key] = trial.suggest_float(key, *map(float, spec["float"]), log=spec.get("log", False))
        else:
            out[key] = trial.suggest_categorical(key, spec["choice"])
    return out


def work(session: Session, max_trials: int | None = None) -> int:
    """The worker loop: maintain, pop a trial, run it, until the study is done. Returns trials run."""
    tracker = session.tracker()
    ostudy = load_optuna_study(session)
    done = 0
    while max_trials is None or done < max_trials:
        maintain(session, ostudy, tracker)
        trials = ostudy.get_trials(deepcopy=False)
        if session.study.mode == "grid":
            if not any(t.state == TrialState.WAITING for t in trials):
                break
        else:
            active = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
            if len(active) >= int(session.study.search["n_trials"]):
                break
        trial = ostudy.ask()
        if session.study.mode == "grid" and cell_of(ostudy._storage.get_trial(trial._trial_id)) is None:
            # the queue emptied between our look and our ask: give the fresh trial back
            ostudy._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "queue empty")
            ostudy.tell(trial, state=TrialState.FAIL)
            break
        try:
            from ablate.trial import run_trial

            run_trial(session, ostudy, trial, tracker)
        except KeyboardInterrupt:
            raise
        except Exception:
            traceback.print_exc()
            print(f"trial {trial.number} failed; it will be retried (up to {MAX_ATTEMPTS} attempts per cell)",
                  file=sys.stderr)
        done += 1
    return done


def status(session: Session) -> dict[str, Any]:
    ostudy = load_optuna_study(session)
    trials = ostudy.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    out: dict[str, Any] = {"study": session.study.name, "storage": session.storage_url, "trials": counts}
    if session.study.mode == "grid":
        complete = {cell_of(t) for t in trials if t.state == TrialState.COMPLETE}
        out["cells"] = len(session.study.cells)
        out["cells_complete"] = len(complete)
        out["cells_missing"] = [f"{v}/seed{s}" for i, (v, s) in enumerate(session.study.cells) if i not in complete]
    tracker = session.tracker()
    parent = ostudy.user_attrs.get("mlflow_parent_run_id")
    if parent:
        runs = tracker.trial_runs(parent)
        rc: dict[str, int] = {}
        for r in runs:
            rc[r.info.status] = rc.get(r.info.status, 0) + 1
        out["mlflow_runs"] = rc
    return out


def spawn_workers(study_ref: str, n: int, session: Session) -> int:
    """Start n local `ablate worker` processes with the cores split between them; wait for all."""
    cores = os.cpu_count() or 1
    threads = max(1, cores // n)
    procs = []
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:
        gpus = 0
    for i in range(n):
        device = f"cuda:{i % gpus}" if gpus else session.device
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ABLATE_TORCH_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "ablate", "worker", study_ref, "--storage", session.storage_url,
               "--tracking-uri", session.tracking_uri, "--out", str(session.paths.root), "--device", device,
               "--no-progress"]
        if session.study.name.endswith("-tiny"):
            cmd.append("--tiny")
        procs.append(subprocess.Popen(cmd, env=env))
    rc = 0
    try:
        for p in procs:
            rc = max(rc, p.wait())
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    return rc
