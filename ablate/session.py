"""A study's session: the study, its output folder, its Optuna storage and its MLflow store, in one place.

Every entry point opens a study through `open_session`: the command line (`ablate run | worker | status |
summarize | report | export`), the runner's workers, the trial record (`ablate.trial.read_trials`) and the
Python API (`ablate.open_study`). Nothing here imports torch, Optuna or MLflow at import time.

How a study is found, the way a user names it:
- a study file (`studies/quickstart.yaml`), or a name looked up by `ablate.study.load_study` (`quickstart`);
- or the output folder of a study (`runs/quickstart`): the study is then the design stored in its storage
  when it started, so a folder copied to another machine opens without its study file.

Where its results are (`find_output`), when no `out` is given: `runs/<study>` under the current folder or
any folder above it (a notebook's kernel runs in `notebooks/`, one below the project), then `runs/<study>`
beside the `studies/` folder the file came from. Writing commands (`ablate run`) create `runs/<study>`
under the current folder, as before.

Example:
    >>> s = open_session("quickstart")          # from the project root or from notebooks/
    >>> s.paths.root, s.storage_url
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ablate.study import Study, load_study, parse_study

if TYPE_CHECKING:
    import optuna

    from ablate.tracking import Tracker

log = logging.getLogger(__name__)

__all__ = ["Paths", "Session", "StudyNotFound", "configure_optuna_logging", "find_output", "load_optuna_study",
           "open_session", "open_storage", "stored_study"]

JOURNAL = "optuna.journal"


class StudyNotFound(FileNotFoundError):
    """No study, or no output of it, where the user said; the message says where it looked."""


def configure_optuna_logging() -> None:
    """Optuna logs every trial at INFO; the CLI and workers keep only its warnings (called by the entry points,
    not at import: importing this module changes no global state)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass(frozen=True)
class Paths:
    """The files of one study's output folder."""

    root: Path

    @classmethod
    def for_study(cls, study: Study, out: str | os.PathLike | None = None) -> Paths:
        return cls(Path(out) if out else Path("runs") / study.name)

    @property
    def journal(self) -> Path:
        return self.root / JOURNAL

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{(self.root / 'mlflow.db').resolve()}"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"{number:04d}"

    def looks_like_output(self) -> bool:
        """Whether the folder holds a study's results (a journal, an MLflow store or trial folders)."""
        return any((self.root / p).exists() for p in (JOURNAL, "mlflow.db", "trials"))


@dataclass
class Session:
    """What a worker, the summary, the report and the notebook API need: the study, its Optuna storage and
    its MLflow tracker."""

    study: Study
    storage_url: str
    tracking_uri: str
    paths: Paths
    device: str = "cpu"
    progress: bool = True
    first_seeds: int | None = None  # a grid run limited to the study's first N seeds (`--first-seeds`)

    def in_scope(self, cell: int | None) -> bool:
        """Whether this run may run grid cell `cell` (every cell, unless limited to the first seeds)."""
        if self.first_seeds is None:
            return True
        if cell is None:
            return False
        return self.study.seeds.index(self.study.cells[cell][1]) < self.first_seeds

    def storage(self) -> optuna.storages.BaseStorage:
        return open_storage(self.storage_url, self.study.name)

    def tracker(self) -> Tracker:
        from ablate.tracking import Tracker

        return Tracker(self.tracking_uri, experiment=f"ablate/{self.study.name}",
                       artifact_root=str(self.paths.artifacts))


def open_storage(url: str, study_name: str | None = None) -> optuna.storages.BaseStorage:
    """See `ablate.storage.open_storage` (a journal is repaired first when its last write was cut off)."""
    from ablate import storage as _storage

    return _storage.open_storage(url, study_name)


def load_optuna_study(session: Session) -> optuna.Study:
    import optuna

    try:
        return optuna.load_study(study_name=session.study.name, storage=session.storage())
    except KeyError as exc:  # optuna: "Record does not exist."
        raise KeyError(f"no study {session.study.name!r} in {session.storage_url}; start it with "
                       f"`ablate run {session.study.path}`") from exc


# ---- finding a study and its output ---------------------------------------------------------------------
def _project_runs(study: Study) -> Path | None:
    """`runs/` beside the `studies/` folder a study file came from (None for a file elsewhere)."""
    p = Path(study.path)
    return p.resolve().parent.parent / "runs" if p.parent.name == "studies" and p.exists() else None


def output_candidates(study: Study) -> list[Path]:
    """Where a study's output may be, in the order searched: `runs/<name>` under the current folder and each
    folder above it, then beside the `studies/` folder its file came from."""
    here = Path.cwd()
    found = [folder / "runs" / study.name for folder in (here, *here.parents)]
    project = _project_runs(study)
    if project is not None:
        found.append(project / study.name)
    out: list[Path] = []
    for p in found:
        if p not in out:
            out.append(p)
    return out


def find_output(study: Study, out: str | os.PathLike | None = None, *, must_exist: bool = True) -> Paths:
    """The study's output folder: `out` when given (relative to the current folder), else the first of
    `output_candidates` that holds results; with `must_exist`, a missing one is a `StudyNotFound` that says
    where it looked and how to make it."""
    if out is not None:
        paths = Paths(Path(out))
        if must_exist and not paths.looks_like_output():
            raise StudyNotFound(f"{paths.root}: no results of study {study.name!r} there (no {JOURNAL}, mlflow.db "
                                f"or trials/); run `ablate run {study.path} --out {paths.root}` first")
        return paths
    candidates = output_candidates(study)
    for c in candidates:
        if Paths(c).looks_like_output():
            return Paths(c)
    if must_exist:
        shown = ", ".join(str(c) for c in candidates[:3]) + (", ..." if len(candidates) > 3 else "")
        raise StudyNotFound(f"no results of study {study.name!r} found (looked for runs/{study.name} here and in "
                            f"the folders above: {shown}); run `ablate run {study.name}` first, or pass out=")
    return Paths.for_study(study)


def stored_study(journal: str | os.PathLike, name: str | None = None) -> Study:
    """The study design stored in a study's journal when it started (`ablate.runner.prepare` keeps the study
    file's content there), so an output folder opens without its study file."""
    journal = Path(journal)
    if not journal.exists():
        raise StudyNotFound(f"{journal}: no such journal")
    storage = open_storage(str(journal))
    studies = storage.get_all_studies()
    if name is not None:
        studies = [s for s in studies if s.study_name == name]
    if len(studies) != 1:
        names = [s.study_name for s in storage.get_all_studies()]
        raise StudyNotFound(f"{journal}: expected one study{f' named {name!r}' if name else ''}, found {names}")
    spec = studies[0].user_attrs.get("spec")
    if spec is None:
        raise StudyNotFound(f"{journal}: study {studies[0].study_name!r} has no stored design (started by an older "
                            f"version); open it by its study file and pass out=")
    raw = json.loads(spec)
    study = parse_study(raw, str(journal))
    if study.name != studies[0].study_name:  # a --tiny run stores the file's design under name-tiny
        study = study.with_tiny() if studies[0].study_name == study.name + "-tiny" else study
    return study


def _study_and_folder(ref: str | os.PathLike | Study, out: str | os.PathLike | None,
                      tiny: bool) -> tuple[Study, Path | None]:
    """(the study, its output folder when `ref` itself names one)."""
    if isinstance(ref, Study):
        return (ref.with_tiny() if tiny else ref), None
    p = Path(ref)
    if p.is_dir():
        if not Paths(p).journal.exists():
            raise StudyNotFound(f"{p}: a folder, but not a study's output (no {JOURNAL}); pass a study file, a study "
                                f"name, or an output folder made by `ablate run`")
        return stored_study(Paths(p).journal), p
    try:
        study = load_study(ref)
    except FileNotFoundError:
        if out is None or not Paths(Path(out)).journal.exists():
            raise
        study = stored_study(Paths(Path(out)).journal)  # no file here: the design the folder's study ran with
        if study.name not in (os.fspath(ref), os.fspath(ref) + "-tiny"):
            raise StudyNotFound(f"{out}: holds study {study.name!r}, not {os.fspath(ref)!r}") from None
        return study, None
    return (study.with_tiny() if tiny else study), None


def open_session(ref: str | os.PathLike | Study, out: str | os.PathLike | None = None, *,
                 storage: str | None = None, tracking_uri: str | None = None, device: str = "cpu",
                 tiny: bool = False, progress: bool = True, first_seeds: int | None = None,
                 must_exist: bool = False) -> Session:
    """The session of study `ref` (a study file, a name in `studies/`, a `Study`, or an output folder).

    out: the output folder (default: `find_output`'s search when `must_exist`, else `runs/<study>` here).
    storage: an Optuna storage URL (default: the journal in the output folder; `postgresql://...` for many
    machines, which then needs a shared `tracking_uri` too). must_exist: the study's results must be there
    (reading: the summary, the report, the notebook API), else one `StudyNotFound` line."""
    study, folder = _study_and_folder(ref, out, tiny)
    if folder is not None and out is None:
        out = folder
    if storage is not None and not storage.startswith("postgresql") and out is None and must_exist:
        paths = Paths(Path(storage).parent)  # a journal given without --out: its folder holds the rest
    else:
        paths = find_output(study, out, must_exist=must_exist and storage is None)
    storage_url = storage or str(paths.journal)
    if storage is None and must_exist and paths.journal.exists():
        try:  # what ran is what is read, even if the file changed since
            stored = stored_study(paths.journal, study.name)
        except Exception as exc:  # noqa: BLE001 - an unreadable journal is reported where the trials are read
            log.debug("no stored design in %s: %s", paths.journal, exc)
        else:
            if json.dumps(stored.raw, sort_keys=True, default=str) != json.dumps(study.raw, sort_keys=True,
                                                                                  default=str):
                log.warning("%s: the study file changed since the study ran; reading it with the design stored in "
                            "%s", study.path, paths.journal)
                study = stored
    tracking = tracking_uri
    if tracking is None:
        if storage_url.startswith("postgresql"):
            raise ValueError("with a shared --storage, pass a shared --tracking-uri too (e.g. a PostgreSQL "
                             "database of its own, or an MLflow server), so every machine tracks into one store")
        tracking = paths.tracking_uri
    return Session(study=study, storage_url=storage_url, tracking_uri=tracking, paths=paths, device=device,
                   progress=progress, first_seeds=first_seeds)

