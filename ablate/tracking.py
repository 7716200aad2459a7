"""MLflow tracking, written by us: one parent run per study, one nested run per trial.

Optuna's MLflow callback is deprecated and makes no parent run, so we use `MlflowClient` directly (no
process-global active run, safe in worker processes). The experiment and the parent run are created by
the coordinator before workers start (MLflow races when several processes create an experiment).
Models are logged as a state dict plus config (our checkpoint format), not with `log_model`.
The parent run ends FINISHED (every cell complete), FAILED (cells remain) or KILLED (interrupted); a rerun
marks it RUNNING again (`Tracker.reopen`). Importing this module sets nothing: `configure_environment()`
(called by the CLI and by `Tracker`) sets MLflow's environment defaults.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def configure_environment() -> None:
    """MLflow settings for workers: synchronous logging (a run is complete when the call returns) and no
    GitPython warning without git. Called by the CLI entry point and before the first client is made, never at
    import; variables the user set are kept."""
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


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

        self.uri = tracking_uri
        self.experiment_name = experiment
        self.artifact_root = artifact_root
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment_id: str | None = None

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

    def log_artifacts(self, run_id: str, folder: str | os.PathLike, path: str | None = None,
                      skip: tuple[str, ...] = ()) -> None:
        """Upload a folder's files (recursively) under `path`, leaving out top-level names in `skip`."""
        root = Path(folder)
        for item in sorted(root.iterdir()):
            if item.name in skip or item.name.startswith("."):
                continue
            sub = f"{path}/{item.name}" if path else item.name
            if item.is_dir():
                _retry(functools.partial(self.client.log_artifacts, run_id, os.fspath(item), artifact_path=sub))
            else:
                _retry(functools.partial(self.client.log_artifact, run_id, os.fspath(item), artifact_path=path))

    def log_artifact(self, run_id: str, file: str | os.PathLike, path: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id, os.fspath(file), artifact_path=path))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """status: FINISHED, FAILED or KILLED."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"run status {status!r}: choose FINISHED, FAILED or KILLED")
        _retry(lambda: self.client.set_terminated(run_id, status=status))

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a study's parent run when the study is resumed)."""
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def get_status(self, run_id: str) -> str:
        return _retry(lambda: self.client.get_run(run_id)).info.status

    def trial_runs(self, parent_id: str) -> list[Any]:
        return _retry(lambda: self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'", max_results=10000))
