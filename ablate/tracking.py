"""MLflow tracking, written by us: one parent run per study, one nested run per trial.

Optuna's MLflow callback is deprecated and makes no parent run, so we use `MlflowClient` directly (no
process-global active run, safe in worker processes). The experiment and the parent run are created by
the coordinator before workers start (MLflow races when several processes create an experiment).
Models are logged as a state dict plus config (our checkpoint format), not with `log_model`.
The parent run ends FINISHED (every cell complete), FAILED (cells remain) or KILLED (interrupted); a rerun
marks it RUNNING again (`Tracker.reopen`). Importing this module sets nothing: `configure_environment()`
(called by the CLI and by `Tracker`) sets MLflow's environment defaults.

A study folder is relocatable: MLflow records each run's artifact location as an absolute `file:` URI (the
folder where the study ran), so a `Tracker` given the folder's `artifact_root` reads and writes a run's files
at `<artifact_root>/<run_id>/artifacts` (`Tracker.artifact_dir`) wherever the folder has been moved, copied or
mounted since, and `repoint_artifacts` makes the store itself say so (for the MLflow UI). Runs whose artifacts
live elsewhere (an MLflow server, a bucket) go through MLflow as before.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def configure_environment() -> None:
    """MLflow settings for workers: synchronous logging (a run is complete when the call returns), no
    GitPython warning without git and no download progress bars; library loggers keep their tracebacks to
    themselves (`quiet_library_loggers`). Called by the CLI entry point and before the first client is made, never
    at import; variables the user set are kept."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per trial read back from MLflow
    quiet_library_loggers()


# loggers that log a traceback for an error they raise again (MLflow's "SQLAlchemy database error", SQLAlchemy's
# pool on a failed rollback): the error reaches our code, which says it once, in one line
_TRACEBACK_LOGGERS = ("mlflow.store.db.utils", "mlflow.store.tracking.sqlalchemy_store", "sqlalchemy.pool",
                      "sqlalchemy.pool.base", "sqlalchemy.pool.impl.QueuePool", "sqlalchemy.pool.impl.NullPool",
                      "sqlalchemy.pool.impl.SingletonThreadPool")


class _NoTracebacks(logging.Filter):
    """Drops a library's log records that carry a traceback: the exception is raised to the caller too."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.exc_info


def quiet_library_loggers() -> None:
    """Attach `_NoTracebacks` to the library loggers that log a traceback for an error they raise (a full disk
    otherwise prints one per failed write: 30 tracebacks in one probe's 853 lines)."""
    for name in _TRACEBACK_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebacks) for f in logger.filters):
            logger.addFilter(_NoTracebacks())


def _retry(fn: Callable[[], T], tries: int = 8) -> T:
    """SQLite stores answer 'database is locked' under parallel workers: back off and retry."""
    for i in range(tries):
        try:
            return fn()
        except Exception as exc:  # mlflow wraps sqlalchemy errors in MlflowException
            if "locked" not in str(exc).lower() or i == tries - 1:
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


def file_path(uri: str) -> Path | None:
    """The local path of a `file:` URI or a plain path; None for any other scheme (a server, a bucket)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(uri)
    return None


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI, else None."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


# ---- the MLflow store, created once and whole ------------------------------------------------------------
_READY: set[str] = set()  # tracking URIs whose store this process has checked (or made) whole


def _head_revision() -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def store_problem(db: Path) -> str | None:
    """What is wrong with the SQLite MLflow store `db`, or None when it is whole: "missing", or a few words
    (a migration that was interrupted, a schema version other than this MLflow's, no default experiment). Only
    reads (works on a read-only folder)."""
    import sqlite3

    if not db.exists():
        return "missing"
    try:
        con = sqlite3.connect(f"{db.absolute().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error as exc:
        return f"cannot be opened ({exc})"
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        tmp = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
        if tmp:
            return f"a schema migration was interrupted (it left {', '.join(tmp)})"
        if "alembic_version" not in tables or "experiments" not in tables:
            return "its tables were never created in full"
        versions = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
        head = _head_revision()
        if versions != [head]:
            return f"its schema is version {', '.join(versions) or 'none'}, this MLflow's is {head}"
        if con.execute("SELECT COUNT(*) FROM experiments WHERE experiment_id = 0").fetchone()[0] == 0:
            return "its creation was cut off (no default experiment)"
    except sqlite3.DatabaseError as exc:
        return f"cannot be read ({exc})"
    finally:
        con.close()
    return None


def _count_runs(db: Path) -> int:
    import sqlite3

    con = sqlite3.connect(os.fspath(db), timeout=30)
    try:
        return int(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0  # no runs table: nothing was ever tracked
    finally:
        con.close()


def _drop_tmp_tables(db: Path) -> list[str]:
    import sqlite3

    con = sqlite3.connect(os.fspath(db), timeout=30)
    try:
        tmp = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
               if r[0].startswith("_alembic_tmp_")]
        with con:
            for t in tmp:
                con.execute(f'DROP TABLE "{t}"')
        return tmp
    finally:
        con.close()


def open_store(tracking_uri: str) -> None:
    """Make sure the MLflow store at `tracking_uri` exists and is whole before a client uses it: it is created
    (MLflow's schema migration) by one process at a time, under a file lock beside a SQLite store (a PostgreSQL
    advisory lock for a PostgreSQL store), so any number of `ablate run` / `ablate worker` started at once end with
    one store. A SQLite store left half-created by a crash (an interrupted migration) is repaired: moved aside
    and made afresh when it holds no runs, else its migration's leftover tables are dropped; one that still
    is not whole is refused with a one-line `StorageError` saying what to do. A store that is whole is only read."""
    if tracking_uri in _READY:
        return
    db = sqlite_file(tracking_uri)
    if db is not None:
        _open_sqlite_store(tracking_uri, db)
    elif tracking_uri.startswith("postgresql"):
        _open_pg_store(tracking_uri)
    _READY.add(tracking_uri)


def _create_store(tracking_uri: str, where: str) -> None:
    from mlflow.tracking import MlflowClient

    from resmasknet.runtime import StorageError, storage_error

    try:
        MlflowClient(tracking_uri=tracking_uri)  # creates the tables and the default experiment
    except Exception as exc:
        for e in (exc, exc.__cause__, exc.__context__):
            if isinstance(e, OSError):
                err = storage_error(e, where)
                if err is not None:
                    raise err from exc
        text = " ".join(str(exc).split())
        if "disk is full" in text.lower():
            import errno

            raise StorageError(errno.ENOSPC, f"cannot write {where}: no space left on the device; free some space "
                                             f"and run the command again") from exc
        raise


def _open_sqlite_store(tracking_uri: str, db: Path) -> None:
    import errno
    import logging

    from ablate.storage import file_lock
    from resmasknet.runtime import StorageError, storage_error

    if store_problem(db) is None:
        return
    log = logging.getLogger("ablate.tracking")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, db.parent) or exc) from exc
    with file_lock(db):
        problem = store_problem(db)  # another process may have made it meanwhile
        if problem is None:
            return
        if problem not in ("missing", "its creation was cut off (no default experiment)"):
            runs = _count_runs(db)
            if runs == 0:  # half-created and empty: nothing to keep, start afresh
                side = db.with_name(f"{db.name}.broken-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
                try:
                    os.replace(db, side)
                except OSError as exc:
                    raise (storage_error(exc, db) or exc) from exc
                log.warning("%s: the MLflow store was left half-created (%s) and held no runs: moved aside to %s "
                            "and created afresh", db, problem, side.name)
            else:
                dropped = _drop_tmp_tables(db)
                problem = store_problem(db)
                if problem is not None and problem != "its creation was cut off (no default experiment)":
                    raise StorageError(errno.EIO, f"{db}: the MLflow store is not whole ({problem}) and holds {runs} "
                                                  f"run(s); back it up, then run `mlflow db upgrade {tracking_uri}`, "
                                                  f"or move it aside to start a new store (the trial folders and "
                                                  f"the Optuna journal keep the results)")
                if dropped:
                    log.warning("%s: dropped %s, left by an interrupted MLflow schema migration", db,
                                ", ".join(dropped))
        _create_store(tracking_uri, str(db))


def _open_pg_store(tracking_uri: str) -> None:
    import zlib

    import sqlalchemy

    engine = sqlalchemy.create_engine(tracking_uri, poolclass=sqlalchemy.pool.NullPool)
    key = zlib.crc32(b"ablate:mlflow-store") & 0x7FFFFFFF
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                _create_store(tracking_uri, tracking_uri)
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None = None):
        configure_environment()
        from mlflow.tracking import MlflowClient

        open_store(tracking_uri)
        self.uri = tracking_uri
        self.experiment_name = experiment
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment_id: str | None = None
        self._artifact_uris: dict[str, str] = {}

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = _retry(lambda: self.client.get_experiment_by_name(self.experiment_name))
            if exp is None:
                raise KeyError(f"MLflow experiment {self.experiment_name!r} does not exist in {self.uri}; "
                               f"start the study with `ablate run` first")
            self._experiment_id = exp.experiment_id
        return self._experiment_id

    def ensure_experiment(self) -> str:
        exp = _retry(lambda: self.client.get_experiment_by_name(self.experiment_name))
        if exp is None:
            location = Path(self.artifact_root).resolve().as_uri() if self.artifact_root else None
            try:
                self._experiment_id = _retry(lambda: self.client.create_experiment(self.experiment_name,
                                                                                   artifact_location=location))
            except Exception:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(self.experiment_name)
                if exp is None:
                    raise
                self._experiment_id = exp.experiment_id
        else:
            self._experiment_id = exp.experiment_id
        return self.experiment_id

    def start_parent(self, study_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = _retry(lambda: self.client.create_run(
            self.experiment_id, run_name=study_name, tags={"ablate.kind": "study", "ablate.study": study_name,
                                                           "git_commit": git_commit(), **tags}))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def start_trial(self, parent_id: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = _retry(lambda: self.client.create_run(
            self.experiment_id, run_name=run_name,
            tags={"mlflow.parentRunId": parent_id, "ablate.kind": "trial", "git_commit": git_commit(),
                  "host": socket.gethostname(), **tags}))
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            _retry(functools.partial(self.client.log_batch, run_id, params=items[i:i + 100]))

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if items:
            _retry(lambda: self.client.log_batch(run_id, metrics=items))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        _retry(lambda: self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]))

    def artifact_uri(self, run_id: str) -> str:
        """The artifact location MLflow recorded for the run when it was created."""
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = _retry(lambda: self.client.get_run(run_id)).info.artifact_uri
        return self._artifact_uris[run_id]

    def artifact_dir(self, run_id: str) -> Path | None:
        """The run's artifacts in this study folder, `<artifact_root>/<run_id>/artifacts`, when MLflow keeps
        them as local files: whatever absolute path the store recorded when the run started (the folder may have
        been moved, copied or mounted elsewhere since), they are here. None when they are kept elsewhere (an
        MLflow server, a bucket) or the tracker has no artifact root."""
        if self.artifact_root is None:
            return None
        stored = file_path(self.artifact_uri(run_id))
        if stored is None or stored.parts[-2:] != (run_id, "artifacts"):
            return None
        return Path(self.artifact_root) / run_id / "artifacts"

    def _local_repo(self, run_id: str) -> Any:
        local = self.artifact_dir(run_id)
        if local is None:
            return None
        from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

        return LocalArtifactRepository(os.fspath(local.absolute()))

    def log_artifacts(self, run_id: str, folder: str | os.PathLike, path: str | None = None,
                      skip: tuple[str, ...] = ()) -> None:
        """Upload a folder's files (recursively) under `path`, leaving out top-level names in `skip` and names
        starting with a dot. Local file artifacts go to this folder's copy (`artifact_dir`)."""
        root = Path(folder)
        repo = self._local_repo(run_id)
        for item in sorted(root.iterdir()):
            if item.name in skip or item.name.startswith("."):
                continue
            sub = f"{path}/{item.name}" if path else item.name
            if repo is not None:
                if item.is_dir():
                    repo.log_artifacts(os.fspath(item), artifact_path=sub)
                else:
                    repo.log_artifact(os.fspath(item), artifact_path=path)
            elif item.is_dir():
                _retry(functools.partial(self.client.log_artifacts, run_id, os.fspath(item), artifact_path=sub))
            else:
                _retry(functools.partial(self.client.log_artifact, run_id, os.fspath(item), artifact_path=path))

    def log_artifact(self, run_id: str, file: str | os.PathLike, path: str | None = None) -> None:
        repo = self._local_repo(run_id)
        if repo is not None:
            repo.log_artifact(os.fspath(file), artifact_path=path)
            return
        _retry(lambda: self.client.log_artifact(run_id, os.fspath(file), artifact_path=path))

    def download(self, run_id: str, path: str, dest: str | os.PathLike) -> Path:
        """The run's artifact `path`: this folder's copy when there is one, else downloaded into `dest`."""
        local = self.artifact_dir(run_id)
        if local is not None and (local / path).exists():
            return local / path
        Path(dest).mkdir(parents=True, exist_ok=True)
        return Path(_retry(lambda: self.client.download_artifacts(run_id, path, os.fspath(dest))))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"run status {status!r}: choose FINISHED, FAILED or KILLED")
        _retry(lambda: self.client.set_terminated(run_id, status=status))

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a study's parent run when the study is resumed)."""
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def run_exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception as exc:  # noqa: BLE001 - MLflow says RESOURCE_DOES_NOT_EXIST in its message
            if "RESOURCE_DOES_NOT_EXIST" in str(getattr(exc, "error_code", "")) or "not found" in str(exc).lower():
                return False
            raise
        return True

    def get_status(self, run_id: str) -> str:
        return _retry(lambda: self.client.get_run(run_id)).info.status

    def trial_runs(self, parent_id: str) -> list[Any]:
        return _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000))


def repoint_artifacts(tracking_uri: str, experiment: str, artifact_root: str | os.PathLike) -> int:
    """Make a study folder's own SQLite store name the folder where it is now: the experiment's artifact
    location and its runs' artifact URIs that still name the folder where the study ran (it was moved or
    copied) are rewritten to `artifact_root`, so new runs write here and the MLflow UI finds the files. Only a
    store inside the study folder is touched, and only when the folder is writable. Returns the runs
    re-pointed (0 when nothing had to change)."""
    import sqlite3

    db = sqlite_file(tracking_uri)
    root = Path(artifact_root).resolve()
    if db is None or not db.exists() or db.resolve().parent != root.parent:
        return 0
    new = root.as_uri()
    con = sqlite3.connect(os.fspath(db), timeout=30)
    try:
        row = con.execute("SELECT experiment_id, artifact_location FROM experiments WHERE name = ?",
                          (experiment,)).fetchone()
        if row is None or row[1] == new:
            return 0
        exp_id, old = row
        old_path = file_path(old)
        if old_path is None:  # artifacts on a server or a bucket: nothing in this folder to point at
            return 0
        old = old.rstrip("/")
        with con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
            cur = con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) WHERE experiment_id = ? "
                              "AND substr(artifact_uri, 1, ?) = ? AND substr(artifact_uri, ?, 1) = '/'",
                              (new, len(old) + 1, exp_id, len(old), old, len(old) + 1))
        return cur.rowcount
    finally:
        con.close()
