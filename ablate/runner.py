"""Running a study as an Optuna sweep: one laptop (`ablate run --workers N`) or many machines
(`ablate worker STUDY --storage postgresql://...`), every trial tracked in MLflow.

Grid cells (variant x seed) are enqueued as Optuna trials; `study.ask()` pops a waiting trial
atomically in both storages, so two workers never take the same cell. A worker writes a heartbeat
(and its host and pid) into its trial; a trial whose heartbeat is stale, or whose process is gone on
this host, is failed (its MLflow run marked KILLED) and its cell enqueued again. Failing and
enqueueing happen under one study-wide lock (a file lock beside the journal, a PostgreSQL advisory
lock), so a cell is never enqueued twice and never lost, across kills and restarts.

Storage defaults sit under the study's output folder `runs/<study>/`: `optuna.journal` (Optuna's
JournalStorage: SQLite locks under parallel workers; a write cut off by a full disk is repaired on open, see
`ablate.storage`) and `mlflow.db` (MLflow's default store).

Failures are classified (`ablate.faults`): a trial's own error uses up one of its cell's `MAX_ATTEMPTS`; an
infrastructure error (an I/O error, a lost database, an unwritable folder) does not: the worker backs off
(`Backoff`: exponential, capped) and tries again, and gives up (the worker, not the cell) after a bounded time
with a one-line `StorageError` / `InfraError`. One that waiting cannot fix (`faults.fatal`: a full disk, a
read-only file system) stops the worker at once; a full disk's line says how much space the study still needs
(`space_needed`). A cell that used all its attempts is "exhausted" and is listed, with its last reason, by
`status()` and `ablate run` (which then exits non-zero).

Several runs of one study at once (`ablate run` twice, `ablate worker`s beside it) share it: a worker with nothing
left to pop waits for the cells others run, taking over any whose worker dies. A rerun (`prepare`) reconciles
what a crash or a full disk left: stale trials failed (`maintain`), MLflow runs that no live worker owns closed
(`close_orphan_runs`), records of failed trials set aside (`set_aside_records`), and a moved study folder's
MLflow store pointed at its new place (`repoint`).

Workers started by `spawn_workers` die with their parent (`die_with_parent`), and a worker killed by a signal
is reported by name. Library code logs (logger `ablate.runner`); only the CLI prints.

Why one module of about 950 lines: the worker loop, stale-trial maintenance and rerun reconciliation, the failure
policy and the local worker processes share one protocol over the storage (which trial states and attributes mean what);
storage itself lives in `ablate.storage`, one trial's run and record in `ablate.trial`. Splitting the
protocol across files would hide its invariants; the worker-process half is the next candidate to move out.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from ablate import faults
from ablate import storage as _storage
from ablate.session import (  # noqa: F401 - re-exported: tests and callers import them from here too
    Paths,
    Session,
    configure_optuna_logging,
    load_optuna_study,
    open_storage,
)
from ablate.study import Study
from ablate.tracking import Tracker
from resmasknet.runtime import storage_error

log = logging.getLogger(__name__)

HEARTBEAT_S = float(os.environ.get("ABLATE_HEARTBEAT_S", "15"))
GRACE_S = float(os.environ.get("ABLATE_GRACE_S", "120"))
MAX_ATTEMPTS = 3  # a cell's trials that may fail for their own reasons before the cell is given up


@dataclass(frozen=True)
class Backoff:
    """How a worker waits out infrastructure errors: `base_s`, doubling up to `max_s`; after `give_up_s` of
    consecutive infrastructure errors the worker stops with the last one. Environment: ABLATE_RETRY_BASE_S,
    ABLATE_RETRY_MAX_S, ABLATE_RETRY_GIVE_UP_S."""

    base_s: float = 2.0
    max_s: float = 60.0
    give_up_s: float = 600.0

    @classmethod
    def from_env(cls) -> Backoff:
        env = os.environ
        return cls(float(env.get("ABLATE_RETRY_BASE_S", cls.base_s)), float(env.get("ABLATE_RETRY_MAX_S", cls.max_s)),
                   float(env.get("ABLATE_RETRY_GIVE_UP_S", cls.give_up_s)))

    def delays(self) -> Iterator[float]:
        d = self.base_s
        while True:
            yield d
            d = min(d * 2, self.max_s)


def study_lock(session: Session) -> contextlib.AbstractContextManager[None]:
    """The study-wide lock (`ablate.storage.study_lock`): enqueueing and failing trials, one process at a time."""
    return _storage.study_lock(session.storage_url, session.study.name)


def _directions(study: Study) -> list[Any]:
    return [o.direction for o in study.objectives]


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


def attempt_kind(t: optuna.trial.FrozenTrial) -> str:
    """What a failed trial counts as: `faults.INFRA`, `faults.DEVICE` (an unusable GPU context) and
    `faults.KILLED` (interrupted by the user) use up no attempt; a trial's own error and a stale trial (its
    process died mid-trial) do. Older trials without a
    `fail_kind` count as the trial's own."""
    return str(t.user_attrs.get("fail_kind", faults.TRIAL))


@dataclass
class CellStates:
    """The grid's cells as the storage sees them (cells are indices into `Study.cells`)."""

    complete: set[int]
    busy: set[int]  # complete, waiting or running
    attempts: dict[int, int]  # failures that count toward MAX_ATTEMPTS
    infra: dict[int, int]  # infrastructure failures (not counted)
    last_reason: dict[int, str]

    @property
    def exhausted(self) -> dict[int, str]:
        """Cells that used all their attempts and are not complete -> the last failure's reason."""
        return {c: self.last_reason.get(c, "?") for c, n in self.attempts.items()
                if n >= MAX_ATTEMPTS and c not in self.complete}


def cell_states(trials: list[optuna.trial.FrozenTrial], retry_from: int = 0) -> CellStates:
    """Failures of trials numbered below `retry_from` (set by `ablate run --retry-failed`) are not counted."""
    complete: set[int] = set()
    busy: set[int] = set()
    attempts: dict[int, int] = {}
    infra: dict[int, int] = {}
    reasons: dict[int, str] = {}
    for t in sorted(trials, key=lambda t: t.number):
        c = cell_of(t)
        if c is None:
            continue
        if t.state == TrialState.COMPLETE:
            complete.add(c)
        if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING):
            busy.add(c)
        elif t.state == TrialState.FAIL:
            kind = attempt_kind(t)
            if kind in (faults.INFRA, faults.DEVICE):
                infra[c] = infra.get(c, 0) + 1
            elif kind != faults.KILLED and t.number >= retry_from:
                attempts[c] = attempts.get(c, 0) + 1
                reasons[c] = str(t.user_attrs.get("fail_reason", "no reason recorded"))
    return CellStates(complete, busy, attempts, infra, reasons)


def maintain(session: Session, ostudy: optuna.Study, tracker: Tracker | None = None) -> dict[str, int]:
    """Under the study lock: fail stale running trials (MLflow run -> KILLED) and, in a grid, enqueue
    every cell that is neither complete, waiting nor running and has attempts left (infrastructure failures
    use none). Returns counts."""
    storage = ostudy._storage
    failed = enqueued = 0
    with study_lock(session):
        trials = ostudy.get_trials(deepcopy=False)
        for t in trials:
            if t.state == TrialState.RUNNING and is_stale(t):
                try:  # the reason first: a finished trial takes no more attributes
                    storage.set_trial_user_attr(t._trial_id, "fail_reason", "stale: worker gone or heartbeat lost")
                    storage.set_trial_user_attr(t._trial_id, "fail_kind", "stale")
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
            cells = cell_states(ostudy.get_trials(deepcopy=False), int(ostudy.user_attrs.get("retry_from", 0)))
            for i in seed_major(session.study):
                if i not in cells.busy and cells.attempts.get(i, 0) < MAX_ATTEMPTS and session.in_scope(i):
                    ostudy.enqueue_trial({"cell": i}, skip_if_exists=False)
                    enqueued += 1
    return {"failed_stale": failed, "enqueued": enqueued}


def prepare(session: Session, retry_failed: bool = False) -> optuna.Study:
    """Create (or reopen) the Optuna study, the MLflow experiment and the parent run (RUNNING again on a rerun);
    enqueue the grid. Runs before any worker starts (MLflow races when workers create the experiment
    themselves). `retry_failed`: cells that used all their attempts get MAX_ATTEMPTS new ones."""
    study = session.study
    check_first_seeds(session)
    try:
        session.paths.root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, session.paths.root) or exc) from exc
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
        if old is None:
            ostudy.set_user_attr("spec", spec)
        if retry_failed:
            ostudy.set_user_attr("retry_from", len(ostudy.get_trials(deepcopy=False)))
        if session.first_seeds is not None:
            defer_out_of_scope(session, ostudy)
        tracker.ensure_experiment()
        repoint(session)
        if "mlflow_parent_run_id" not in ostudy.user_attrs:
            ostudy.set_user_attr("mlflow_parent_run_id", _start_parent(study, tracker))
        else:
            parent = ostudy.user_attrs["mlflow_parent_run_id"]
            try:
                tracker.reopen(parent)
            except Exception as exc:  # noqa: BLE001 - a store made afresh (it was half-created) has no such run
                if tracker.run_exists(parent):
                    log.warning("could not mark the study's MLflow run %s RUNNING again: %s", parent,
                                faults.one_line(exc))
                else:
                    new_parent = _start_parent(study, tracker)
                    ostudy.set_user_attr("mlflow_parent_run_id", new_parent)
                    log.warning("the study's MLflow run %s is not in %s: started a new one, %s", parent,
                                session.tracking_uri, new_parent)
    maintain(session, ostudy, tracker)
    closed = close_orphan_runs(session, ostudy, tracker)
    if closed:
        log.info("closed %d MLflow trial run(s) left RUNNING by workers that are gone (%s)", sum(closed.values()),
                 ", ".join(f"{n} {k}" for k, n in sorted(closed.items())))
    aside = set_aside_records(session, ostudy)
    if aside:
        log.info("set aside the record.json of %d trial(s) the storage holds as failed (renamed %s): %s", len(aside),
                 FAILED_RECORD, ", ".join(map(str, aside)))
    return ostudy


def _start_parent(study: Study, tracker: Tracker) -> str:
    return tracker.start_parent(study.name, params={"mode": study.mode, "model": study.model, "data": study.data,
                                                    "seeds": list(study.seeds), "baseline": study.baseline},
                                tags={"study_file": study.path})


FAILED_RECORD = "record.failed.json"


def close_orphan_runs(session: Session, ostudy: optuna.Study, tracker: Tracker) -> dict[str, int]:
    """End every MLflow trial run still RUNNING that no live worker owns (a worker that died, or whose last writes
    failed on a full disk): FINISHED when its trial is complete, else FAILED (its trial failed: the reason is
    tagged) or KILLED (its worker was killed or vanished, or no trial holds it). A run whose trial is running
    and not stale is left alone. Returns counts by the status given."""
    parent = ostudy.user_attrs.get("mlflow_parent_run_id")
    if not parent:
        return {}
    try:
        runs = [r for r in tracker.trial_runs(parent) if r.info.status == "RUNNING"]
    except Exception as exc:  # noqa: BLE001 - the study can run without this; say why it was not done
        log.warning("could not look for MLflow runs left RUNNING: %s", faults.one_line(exc))
        return {}
    if not runs:
        return {}
    by_number = {t.number: t for t in ostudy.get_trials(deepcopy=False)}
    closed: dict[str, int] = {}
    for r in runs:
        tag = r.data.tags.get("optuna_trial")
        t = by_number.get(int(tag)) if tag and tag.isdigit() else None
        held = t is not None and t.user_attrs.get("mlflow_run_id") in (None, r.info.run_id)
        if t is not None and t.state == TrialState.RUNNING and held and not is_stale(t):
            continue  # a live worker's (it may not have recorded its run id yet)
        if t is None:
            status, reason = "KILLED", "no Optuna trial holds this run (its worker died before recording it)"
        elif not held:
            status, reason = "KILLED", f"trial {t.number} went on with run {t.user_attrs.get('mlflow_run_id')}"
        elif t.state == TrialState.COMPLETE or t.state == TrialState.PRUNED:
            status, reason = "FINISHED", ""
        elif t.state == TrialState.FAIL:
            kind = str(t.user_attrs.get("fail_kind", faults.TRIAL))
            status = "KILLED" if kind in (faults.KILLED, faults.STALE) else "FAILED"
            reason = str(t.user_attrs.get("fail_reason", "its trial failed"))
        else:
            status, reason = "KILLED", f"its trial is {t.state.name} and no live worker runs it"
        try:
            if reason:
                tracker.set_tags(r.info.run_id, {"error": reason[:4000], "error_kind": "closed on rerun"})
            tracker.finish(r.info.run_id, status)
        except Exception as exc:  # noqa: BLE001 - one run that cannot be closed does not stop the study
            log.warning("could not close MLflow run %s: %s", r.info.run_id, faults.one_line(exc))
            continue
        closed[status] = closed.get(status, 0) + 1
    return closed


def set_aside_records(session: Session, ostudy: optuna.Study) -> list[int]:
    """A trial that the storage holds as failed must not keep a `record.json` that says completed (an older
    version wrote the record before the storage had the trial complete; a disk that filled up between the two
    left both): it is renamed `record.failed.json`, and a pending record of such a trial removed, so each cell
    has exactly one completed record. Returns the trial numbers set aside."""
    from ablate.trial import PENDING, RECORD, trial_folder

    aside = []
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        folder = trial_folder(session, t)
        with contextlib.suppress(OSError):
            (folder / PENDING / RECORD).unlink(missing_ok=True)
            (folder / PENDING).rmdir()
        if (folder / RECORD).exists():
            try:
                os.replace(folder / RECORD, folder / FAILED_RECORD)
            except FileNotFoundError:  # another run set it aside meanwhile
                continue
            except OSError as exc:
                log.warning("%s: the storage holds trial %d as failed, but its record could not be set aside (%s)",
                            folder / RECORD, t.number, exc)
                continue
            aside.append(t.number)
    return aside


def repoint(session: Session) -> int:
    """A study folder moved or copied since it ran: its own MLflow store is made to name the folder where it is
    now for its artifacts (`ablate.tracking.repoint_artifacts`), so new runs write here and the MLflow UI finds
    the files. Best effort (a read-only folder is read as it is: readers never depend on it). Returns the runs
    re-pointed."""
    from ablate.tracking import repoint_artifacts

    try:
        n = repoint_artifacts(session.tracking_uri, f"ablate/{session.study.name}", session.paths.artifacts)
    except Exception as exc:  # noqa: BLE001 - reading does not need it; say why it was not done
        log.warning("MLflow's artifact locations still name the folder where the study ran (%s)",
                    faults.one_line(exc))
        return 0
    if n:
        log.info("the study folder moved since it ran: MLflow's artifact locations of %d run(s) now name %s", n,
                 session.paths.artifacts)
    return n


def finish_study(session: Session, outcome: str) -> str | None:
    """End the study's parent MLflow run: outcome FINISHED (every cell complete), FAILED (cells remain) or
    KILLED (interrupted). Returns the run id, or None when the study has no parent run yet."""
    ostudy = load_optuna_study(session)
    parent = ostudy.user_attrs.get("mlflow_parent_run_id")
    if parent:
        session.tracker().finish(parent, outcome)
    return parent


def study_outcome(st: dict[str, Any]) -> str:
    """FINISHED or FAILED for a `status()` dict: a grid is finished when every cell is complete; a search
    when it has its n_trials complete or pruned. A grid run limited to its first seeds (`--first-seeds`) whose
    cells are all complete, with others left, is KILLED: stopped before the end, on purpose, nothing failed."""
    if "cells" in st:
        if st["cells_complete"] == st["cells"]:
            return "FINISHED"
        if "first_seeds" in st and st["cells_in_scope_complete"] == st["cells_in_scope"]:
            return "KILLED"
        return "FAILED"
    done = st["trials"].get("COMPLETE", 0) + st["trials"].get("PRUNED", 0)
    return "FINISHED" if done >= int(st.get("n_trials", 0)) else "FAILED"


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


def claim(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Write this worker's host and pid into a trial it has just popped, first of all: a trial whose process is
    gone is then failed at once by the next `maintain` (`is_stale`), not after the heartbeat's grace."""
    storage.set_trial_user_attr(trial_id, "host", socket.gethostname())
    storage.set_trial_user_attr(trial_id, "pid", os.getpid())
    storage.set_trial_user_attr(trial_id, "run_pid", run_pid())


_PARENT_RUN: list[int] = []  # the `ablate run` that started this worker (`die_with_parent`)


def run_pid() -> int:
    """The process of the `ablate run` this worker belongs to (its own pid for a worker on its own)."""
    return _PARENT_RUN[0] if _PARENT_RUN else os.getpid()


class Heartbeat:
    """Writes a timestamp into the running trial until stopped (its host and pid: `claim`, when it is popped)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float = HEARTBEAT_S):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
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


def _still_running(ostudy: optuna.Study, trial: optuna.Trial) -> bool:
    try:
        return ostudy._storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    except Exception:  # noqa: BLE001 - the storage is down: assume the worst, try again later
        return True


def _fail_orphans(ostudy: optuna.Study, orphans: list[tuple[optuna.Trial, str, str]]) -> None:
    """Fail the trials this worker could not mark failed when they failed (the storage was down, or the error
    came before the trial's own handler): (trial, kind, reason)."""
    storage = ostudy._storage
    for item in list(orphans):
        trial, kind, reason = item
        if _still_running(ostudy, trial):
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                if "fail_kind" not in storage.get_trial(trial._trial_id).user_attrs:
                    storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason[:2000])
                    storage.set_trial_user_attr(trial._trial_id, "fail_kind", kind)
                storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        orphans.remove(item)


def check_first_seeds(session: Session) -> None:
    """`--first-seeds N` needs a grid study and 1 <= N <= its number of seeds (a ValueError naming both)."""
    n, study = session.first_seeds, session.study
    if n is None:
        return
    if study.mode != "grid":
        raise ValueError(f"--first-seeds applies to grid studies; {study.path} is a {study.mode} study")
    if not 1 <= n <= len(study.seeds):
        raise ValueError(f"--first-seeds {n}: study {study.name} has {len(study.seeds)} seeds "
                         f"{list(study.seeds)}; give 1 to {len(study.seeds)}")


def defer_out_of_scope(session: Session, ostudy: optuna.Study) -> int:
    """Under the study lock: grid cells waiting from an earlier, unlimited run whose seed is outside
    `--first-seeds` are taken off the queue (FAIL, kind `faults.KILLED`: no attempt used), so this run's
    workers never pop them; a later run without the limit enqueues them again. Returns how many."""
    storage = ostudy._storage
    n = 0
    for t in ostudy.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if session.in_scope(cell_of(t)):
            continue
        reason = f"deferred: outside --first-seeds {session.first_seeds}"
        storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(t._trial_id, "fail_kind", faults.KILLED)
        if storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL) is not False:
            n += 1
    return n


POLL_S = float(os.environ.get("ABLATE_POLL_S", "2"))  # how often a worker with nothing to pop looks again
STUDY_WAIT_S = float(os.environ.get("ABLATE_STUDY_WAIT_S", "30"))  # a worker waits this long for `ablate run`


def _wait_for_study(session: Session) -> optuna.Study:
    """The Optuna study. A worker started at the same moment as the `ablate run` that creates it waits for it, up
    to `STUDY_WAIT_S` (one line says so), looking under the study lock (which `prepare` holds while it creates
    the study); then the `load_optuna_study` error, one line saying to start it."""
    deadline = time.monotonic() + STUDY_WAIT_S
    said = False
    while True:
        try:
            with study_lock(session):
                return load_optuna_study(session)
        except KeyError:
            if time.monotonic() >= deadline:
                raise
            if not said:
                log.info("no study %s in %s yet: waiting up to %.0f s for `ablate run` to start it",
                         session.study.name, session.storage_url, STUDY_WAIT_S)
                said = True
        time.sleep(min(POLL_S, 0.5))


def _others_running(session: Session, trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials in this run's scope that other workers are running (maintain has failed the stale ones)."""
    return [t for t in trials if t.state == TrialState.RUNNING
            and (session.study.mode != "grid" or session.in_scope(cell_of(t)))]


def _owners(trials: list[optuna.trial.FrozenTrial]) -> str:
    owners = sorted({f"pid {t.user_attrs['pid']} on {t.user_attrs.get('host', '?')}" for t in trials
                     if "pid" in t.user_attrs})
    return ", ".join(owners) or "workers that have not said where"


def work(session: Session, max_trials: int | None = None, backoff: Backoff | None = None) -> int:
    """The worker loop: maintain, pop a trial, run it, until the study is done. Returns trials run.

    With nothing left to pop while other workers (another `ablate run` or `ablate worker` of the same study)
    still run cells, the worker says so in one line and waits for them, taking over any whose worker dies, so
    every run of a study started at once ends with the whole study. A trial's own error fails that attempt (its
    reason is on the trial, its traceback in the trial folder) and the loop goes on. An infrastructure error
    (`faults.classify`) uses no attempt: the loop waits (`backoff`, default `Backoff.from_env()`) and tries
    again; after `give_up_s` of consecutive infrastructure errors it raises the last one as a one-line
    `StorageError` (space, read-only, permission) or `faults.InfraError`. One that waiting cannot fix
    (`faults.fatal`: a full disk, a read-only file system) stops the worker at once, a full disk with how much
    space the study still needs (`space_needed`)."""
    policy = backoff or Backoff.from_env()
    tracker = session.tracker()
    ostudy = _wait_for_study(session)
    done = 0
    infra_since: float | None = None
    delays = policy.delays()
    orphans: list[tuple[optuna.Trial, str, str]] = []
    said_waiting = False
    while max_trials is None or done < max_trials:
        trial: optuna.Trial | None = None
        try:
            _fail_orphans(ostudy, orphans)
            maintain(session, ostudy, tracker)
            trials = ostudy.get_trials(deepcopy=False)
            if session.study.mode == "grid":
                left = any(t.state == TrialState.WAITING and session.in_scope(cell_of(t)) for t in trials)
            else:
                finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
                running = [t for t in trials if t.state == TrialState.RUNNING]
                left = len(finished) + len(running) < int(session.study.search["n_trials"])
                if len(finished) >= int(session.study.search["n_trials"]):
                    break
            if not left:
                others = _others_running(session, trials)
                if not others:
                    break
                strangers = [t for t in others if t.user_attrs.get("run_pid") != run_pid()
                             or t.user_attrs.get("host") != socket.gethostname()]
                if strangers and not said_waiting:  # (this run's own workers wait for each other silently)
                    log.info("study %s is already being run by another process too (%s): this one works alongside "
                             "it and waits for its %d trial(s) to finish", session.study.name, _owners(strangers),
                             len(strangers))
                    said_waiting = True
                time.sleep(POLL_S)
                continue
            trial = ostudy.ask()
            claim(ostudy._storage, trial._trial_id)
            if session.study.mode == "grid" and cell_of(ostudy._storage.get_trial(trial._trial_id)) is None:
                # the queue emptied between our look and our ask: give the fresh trial back
                ostudy._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "queue empty")
                ostudy.tell(trial, state=TrialState.FAIL)
                continue
            from ablate.trial import run_trial

            run_trial(session, ostudy, trial, tracker)
            done += 1
            infra_since, delays = None, policy.delays()
        except KeyboardInterrupt as exc:
            # interrupted between popping a trial and running it (`run_trial` marks its own): mark it killed
            # now, which uses no attempt, instead of leaving it RUNNING for the next run to find stale
            if trial is not None and _still_running(ostudy, trial):
                with contextlib.suppress(Exception):
                    _fail_orphans(ostudy, [(trial, faults.KILLED, faults.classify(exc)[1])])
            raise
        except Exception as exc:
            kind, reason = faults.classify(exc)
            if trial is not None and _still_running(ostudy, trial):
                orphans.append((trial, kind, reason))
            if kind == faults.DEVICE:
                with contextlib.suppress(Exception):
                    _fail_orphans(ostudy, orphans)
                raise faults.DeviceLost(f"{reason}: this process's GPU context is unusable, so this worker stops "
                                        f"(no attempt used); run the study again to retry the cell") from exc
            if kind != faults.INFRA:
                if trial is None:
                    raise  # not a trial's error: a bug or bad input, shown as it is
                done += 1
                folder = session.paths.trial_dir(trial.number)
                log.error("trial %d failed: %s (this uses one of its cell's %d attempts; traceback in %s)",
                          trial.number, reason, MAX_ATTEMPTS, folder / "traceback.txt")
                log.debug("trial %d traceback:\n%s", trial.number, traceback.format_exc())
                infra_since, delays = None, policy.delays()
                continue
            where = _error_path(exc) or (session.paths.trial_dir(trial.number) if trial is not None
                                         else session.paths.root)
            if faults.fatal(exc):  # waiting frees no space and makes nothing writable: stop now, say what to do
                with contextlib.suppress(Exception):
                    _fail_orphans(ostudy, orphans)
                if faults.disk_full(exc):
                    raise faults.out_of_space(where, space_needed(session, ostudy)) from exc
                raise faults.give_up(exc, where, 0) from exc
            now = time.monotonic()
            if infra_since is None:
                infra_since = now
            delay = next(delays)
            if now - infra_since + delay > policy.give_up_s:
                raise faults.give_up(exc, where, now - infra_since) from exc
            log.warning("infrastructure error%s: %s; retrying in %.1f s (no attempt used)",
                        f" in trial {trial.number}" if trial is not None else "", reason, delay)
            time.sleep(delay)
    return done


def _error_path(exc: BaseException) -> str | None:
    """The file an error names (its `filename`, or that of a cause)."""
    for e in faults._chain(exc):
        name = getattr(e, "filename", None)
        if name:
            return os.fspath(name)
    return None


def _du(path: Any) -> int:
    """Bytes of the files under `path` (0 when it is not there)."""
    from pathlib import Path

    total = 0
    for p in Path(path).rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def space_needed(session: Session, ostudy: optuna.Study | None = None) -> str:
    """What a full disk's message says the study still needs: the mean size of the trials written so far (each
    trial's folder with its checkpoints, and MLflow's copy of it) times the cells (or trials) still to run, and
    the space free there now. Best effort: the storage may be unreadable on a full disk."""
    import shutil

    try:
        ostudy = ostudy or load_optuna_study(session)
        trials = ostudy.get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - no estimate then
        trials = []
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if session.study.mode == "grid":
        scope = [i for i in range(len(session.study.cells)) if session.in_scope(i)]
        complete = {cell_of(t) for t in done}
        left = sum(i not in complete for i in scope)
    else:
        left = max(0, int(session.study.search["n_trials"]) - len(done))
    sizes = []
    for t in done:
        run_id = t.user_attrs.get("mlflow_run_id")
        copy = _du(session.paths.artifacts / run_id) if run_id else 0
        sizes.append(_du(session.paths.trial_dir(t.number)) + copy)
    basis = "per trial so far, its folder and MLflow's copy"
    if not sizes:  # no trial finished: what the ones that started wrote (checkpoints first), with a copy of best.pt
        for d in sorted((session.paths.root / "trials").glob("*")):
            if any(d.glob("*.pt")):
                best = d / "best.pt"
                sizes.append(_du(d) + (best.stat().st_size if best.exists() else 0))
        basis = "per trial, from the checkpoints written so far"
    free = ""
    with contextlib.suppress(OSError):
        free = f"; {_size(shutil.disk_usage(session.paths.root).free)} free there now"
    if not sizes:
        return (f"{left} cell(s) left to run, and no trial has written its checkpoints yet to estimate their size"
                f"{free}; free some space (or move the study folder to a bigger disk) and run the command again")
    per = sum(sizes) / len(sizes)
    what = "cell" if session.study.mode == "grid" else "trial"
    return (f"the study still needs about {_size(per * left)} ({left} {what}(s) left x {_size(per)} {basis}){free}; "
            f"free that much (or move the study folder to a bigger disk) and run the command again")


def status(session: Session) -> dict[str, Any]:
    """Trials by state, grid cells complete / missing / exhausted (used all attempts, with the last reason),
    attempts used per cell, infrastructure failures, and the MLflow trial runs by status."""
    ostudy = load_optuna_study(session)
    trials = ostudy.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    out: dict[str, Any] = {"study": session.study.name, "storage": session.storage_url, "trials": counts}
    if session.study.mode == "grid":
        cells = cell_states(trials, int(ostudy.user_attrs.get("retry_from", 0)))
        labels = [f"{v}/seed{s}" for v, s in session.study.cells]
        exhausted = cells.exhausted
        out["cells"] = len(labels)
        out["cells_complete"] = len(cells.complete)
        grid = session.study.cells
        out["seeds_complete"] = [s for s in session.study.seeds  # whole paired seeds: every variant complete
                                 if all(i in cells.complete for i, (_, cs) in enumerate(grid) if cs == s)]
        out["cells_missing"] = [lab for i, lab in enumerate(labels) if i not in cells.complete and i not in exhausted]
        if session.first_seeds is not None:
            scope = [i for i in range(len(labels)) if session.in_scope(i)]
            out["first_seeds"] = session.first_seeds
            out["cells_in_scope"] = len(scope)
            out["cells_in_scope_complete"] = sum(i in cells.complete for i in scope)
        out["cells_exhausted"] = [{"cell": labels[i], "attempts": cells.attempts[i], "reason": r}
                                  for i, r in sorted(exhausted.items())]
        out["attempts"] = {labels[i]: n for i, n in sorted(cells.attempts.items())}
        out["infra_failures"] = {labels[i]: n for i, n in sorted(cells.infra.items())}
    else:
        out["n_trials"] = int(session.study.search["n_trials"])
    parent = ostudy.user_attrs.get("mlflow_parent_run_id")
    if parent:
        tracker = session.tracker()
        runs = tracker.trial_runs(parent)
        rc: dict[str, int] = {}
        for r in runs:
            rc[r.info.status] = rc.get(r.info.status, 0) + 1
        out["mlflow_runs"] = rc
        live = sum(t.state == TrialState.RUNNING and not is_stale(t) for t in trials)
        if rc.get("RUNNING", 0) > live:  # runs no live worker owns: the next `ablate run` closes them
            out["mlflow_runs_orphaned"] = rc["RUNNING"] - live
        with contextlib.suppress(Exception):
            out["parent_run"] = {"id": parent, "status": tracker.get_status(parent)}
    return out


# ---- local worker processes ----------------------------------------------------------------------------
def plan_devices(workers: int, device: str, gpus: int, workers_per_gpu: int | None = None) -> list[str]:
    """The device of each local worker. `device` wins: on "cuda" with GPUs, `workers_per_gpu` x GPUs workers
    (else `workers`) assigned round-robin over cuda:0..; on one GPU named ("cuda:1"), `workers_per_gpu` (else
    `workers`) workers on it; on the CPU (`--device cpu`, or no GPU), `workers` on `device`, whatever
    `workers_per_gpu` says (one logged line when it is given)."""
    if workers_per_gpu is not None and workers_per_gpu < 1:
        raise ValueError(f"--workers-per-gpu {workers_per_gpu} must be >= 1")
    if gpus > 0 and device.startswith("cuda"):
        if device.startswith("cuda:"):
            return [device] * (workers_per_gpu or workers)  # one GPU asked for by name
        n = workers_per_gpu * gpus if workers_per_gpu is not None else workers
        return [f"cuda:{i % gpus}" for i in range(n)]
    if workers_per_gpu is not None:
        log.info("--workers-per-gpu %d does not apply on %s: %d worker(s) there (--workers)", workers_per_gpu,
                 device, workers)
    return [device] * workers


def describe_exit(index: int, pid: int, rc: int) -> str | None:
    """A line for a worker that did not exit cleanly ("worker 2 (pid 123) was killed by SIGKILL"), else None."""
    if rc == 0:
        return None
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        return f"worker {index} (pid {pid}) was killed by {name}"
    return f"worker {index} (pid {pid}) exited with status {rc}"


def exit_code(rc: int) -> int:
    """A child's return code as a shell exit status: killed by signal N -> 128 + N."""
    return 128 - rc if rc < 0 else rc


def study_progress(session: Session) -> tuple[int, int]:
    """(finished, total) for this run's progress bar: grid cells complete or out of attempts (those in scope
    with --first-seeds), or search trials complete or pruned."""
    ostudy = load_optuna_study(session)
    trials = ostudy.get_trials(deepcopy=False)
    if session.study.mode != "grid":
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        return done, int(session.study.search["n_trials"])
    cells = cell_states(trials, int(ostudy.user_attrs.get("retry_from", 0)))
    scope = [i for i in range(len(session.study.cells)) if session.in_scope(i)]
    finished = cells.complete | set(cells.exhausted)
    return sum(i in finished for i in scope), len(scope)


def _progress_bar(session: Session, n_workers: int) -> Any:
    """A callable that updates one bar of the study's finished cells (or trials) from the storage, for a run
    whose trials train in worker processes (their own bars are off); None without progress."""
    if not session.progress:
        return None
    from tqdm.auto import tqdm

    done, total = study_progress(session)
    bar = tqdm(total=total, initial=done, desc=f"{session.study.name} ({n_workers} workers)",
               unit="cell" if session.study.mode == "grid" else "trial")

    def tick(final: bool = False) -> None:
        with contextlib.suppress(Exception):  # a journal being written is read again at the next tick
            bar.update(study_progress(session)[0] - bar.n)
        if final:
            bar.close()

    return tick


def wait_workers(procs: list[subprocess.Popen], tick: Any = None, every: float = 3.0) -> int:
    """Wait for every worker; log each that failed (by signal name when killed). Returns the highest exit
    status (128 + N for a worker killed by signal N), 0 when all exited cleanly. `tick(final=False)`, when
    given, is called every `every` seconds while workers run, and once with final=True at the end."""
    if tick is not None:
        try:
            while (running := next((p for p in procs if p.poll() is None), None)) is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    running.wait(timeout=every)
                tick()
        finally:
            tick(final=True)
    worst = 0
    for i, p in enumerate(procs, start=1):
        rc = p.wait()
        line = describe_exit(i, p.pid, rc)
        if line:
            log.error("%s", line)
        worst = max(worst, exit_code(rc))
    return worst


def seed_major(study: Study) -> list[int]:
    """Cell indices in the order to run them: every variant of the first seed, then of the next, so that a
    study stopped part-way holds whole paired seeds (indices keep their meaning: `Study.cells` order)."""
    seeds = {s: k for k, s in enumerate(study.seeds)}
    return sorted(range(len(study.cells)), key=lambda i: (seeds[study.cells[i][1]], i))


def worker_threads(n_workers: int) -> int:
    """Torch threads for each of `n_workers` local workers: the usable cores split between them."""
    from resmasknet.runtime import usable_cores

    return max(1, usable_cores() // n_workers)


def worker_env(threads: int, parent_pid: int | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "ABLATE_TORCH_THREADS": str(threads),
           "ABLATE_PARENT_PID": str(parent_pid or os.getpid())}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads starve the other workers
    return env


def spawn_workers(study_ref: str, n: int, session: Session, workers_per_gpu: int | None = None,
                  sessions: str = "own") -> int:
    """Start local `ablate worker` processes with the cores split between them (n, or workers_per_gpu x GPUs
    with CUDA); wait for all. Workers die with this process. Returns the highest exit status (see wait_workers).

    sessions: "own" starts each worker in a session of its own (on POSIX), "same" in this one. Where the kernel
    shares the CPU between sessions before processes (`resmasknet.runtime.sched_autogroup`), workers of one
    session get one session's share however many they are: beside a program of another session that keeps a
    core busy, two workers on two cores then share the free core. In sessions of their own they get a process's
    share each, as they would without autogroup (docs/performance.md, results/cpu-busy-core.md). Ctrl-C reaches
    only this process then, which stops the workers as before; Ctrl-Z and `fg` are passed on to them
    (`_pass_job_control`)."""
    from resmasknet.runtime import new_session

    own = new_session(sessions, "sessions")
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        gpus = 0
    devices = plan_devices(n, session.device, gpus, workers_per_gpu)
    env = worker_env(worker_threads(len(devices)))
    procs: list[subprocess.Popen] = []
    try:
        for device in devices:
            cmd = [sys.executable, "-m", "ablate", "worker", study_ref, "--storage", session.storage_url,
                   "--tracking-uri", session.tracking_uri, "--out", str(session.paths.root), "--device", device,
                   "--no-progress"]
            if session.study.name.endswith("-tiny"):
                cmd.append("--tiny")
            if session.first_seeds is not None:
                cmd += ["--first-seeds", str(session.first_seeds)]
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=own))
        with _pass_job_control(procs) if own else contextlib.nullcontext():
            return wait_workers(procs, _progress_bar(session, len(procs)))
    except BaseException:  # interrupted (or SIGTERM): stop the workers, wait for them to mark their trials
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise


@contextlib.contextmanager
def _pass_job_control(procs: list[subprocess.Popen]) -> Iterator[None]:
    """While the block runs, a terminal's stop (Ctrl-Z, SIGTSTP) stops `procs` too and `fg` / `bg` (SIGCONT)
    continues them: workers in sessions of their own are outside the terminal's process group, which is all
    the terminal signals. (A stop has to be SIGSTOP: the kernel drops SIGTSTP sent to a session without a
    terminal.) Only in the main thread, where Python runs signal handlers."""
    if not hasattr(signal, "SIGTSTP") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGSTOP)
        os.kill(os.getpid(), signal.SIGSTOP)  # stops here; the shell's SIGCONT resumes this line
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGCONT)

    old = signal.signal(signal.SIGTSTP, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTSTP, old)


PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGTERM, use_prctl: bool = True,
                    poll_s: float = 1.0) -> str:
    """Make this process receive `sig` when its parent dies (Linux: prctl(PR_SET_PDEATHSIG); elsewhere, or
    when prctl fails, a daemon thread that watches os.getppid()). `parent_pid`: the parent it must outlive
    no longer than (default $ABLATE_PARENT_PID, else the current parent). Returns "prctl" or "thread"."""
    if parent_pid is None:
        env = os.environ.get("ABLATE_PARENT_PID")
        parent_pid = int(env) if env else os.getppid()
    _PARENT_RUN[:] = [parent_pid]
    how = "thread"
    if use_prctl and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
                how = "prctl"
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before we asked: nobody will tell us
        os.kill(os.getpid(), sig)
        return how
    if how == "thread":
        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(poll_s)
            os.kill(os.getpid(), sig)

        threading.Thread(target=watch, name="ablate-parent-watch", daemon=True).start()
    return how
