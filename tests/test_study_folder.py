"""A study folder with real files: moved, copied or mounted read-only it reads the same; started twice at once it
ends with one store and every cell once; a full disk leaves nothing that looks complete and is not; a half-created
MLflow store is repaired or refused in one line.

Trials here do not train: `install_fakes` puts in a training step that writes a checkpoint and an evaluation with
seeded per-image predictions (so the summary's McNemar and paired tests run), while the storage, the MLflow store,
the trial records and the runner are the real ones.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_grid_study

from ablate.cli import main
from ablate.runner import Paths, Session, load_optuna_study, status
from ablate.study import load_study

TESTS = Path(__file__).resolve().parent


# ---- trials without training ------------------------------------------------------------------------------
CHECKPOINT_BYTES = 40_000


def fake_train(model, data, cfg, out_dir=None, **kw):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "best.pt").write_bytes(os.urandom(CHECKPOINT_BYTES))
    (out / "history.json").write_text("[]")
    return SimpleNamespace(status="completed", history=[{}])


def fake_evaluate(model, data, result, trial_dir, device, tta=True):
    import numpy as np

    from resmasknet.data import CLASSES
    from resmasknet.evaluate import from_probabilities

    seed = int(model.config.flat().get("mask1.enabled", False)) * 1000 + int(trial_dir.name)
    rng = np.random.default_rng(seed)
    labels = np.arange(60) % len(CLASSES)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=len(labels))
    probs[np.arange(len(labels)), labels] += rng.uniform(0, 1.5, len(labels))
    probs /= probs.sum(axis=1, keepdims=True)
    ev = from_probabilities(probs, labels, tuple(CLASSES), index=np.arange(len(labels)))
    ev.save(Path(trial_dir) / "test")
    metrics = {"val_acc": float(ev.accuracy), "test_acc": float(ev.accuracy)}
    return metrics, {"test": "test", "history.json": "history.json", "best.pt": "best.pt"}


def install_fakes(setattr) -> None:
    setattr(importlib.import_module("resmasknet.train"), "train", fake_train)
    setattr(importlib.import_module("ablate.trial"), "evaluate_trial", fake_evaluate)


@pytest.fixture
def fast_trials(monkeypatch):
    install_fakes(monkeypatch.setattr)


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("ABLATE_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("ABLATE_RETRY_MAX_S", "0.1")
    monkeypatch.setenv("ABLATE_RETRY_GIVE_UP_S", "1")


def write_study(folder: Path, name: str, seeds=(0, 1)) -> Path:
    raw = tiny_grid_study(name)
    raw["seeds"] = list(seeds)
    raw["base"]["tta"] = False
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def session(study: Path, out: Path) -> Session:
    paths = Paths(out)
    return Session(study=load_study(study), storage_url=str(paths.journal), tracking_uri=paths.tracking_uri,
                   paths=paths)


def run(study: Path, out: Path, *extra: str) -> int:
    return main(["run", str(study), "--out", str(out), "--no-progress", "--no-summary", *extra])


def mlflow_runs(out: Path) -> list[tuple[str, str]]:
    """(run name, status) of every run in the folder's own MLflow store, read with sqlite (no MLflow state)."""
    con = sqlite3.connect(out / "mlflow.db")
    try:
        return con.execute("SELECT name, status FROM runs ORDER BY name").fetchall()
    finally:
        con.close()


def records_by_cell(out: Path) -> dict[tuple[str, int], list[int]]:
    """Every record.json under trials/, by (variant, seed): the trial numbers that say they are complete."""
    found: dict[tuple[str, int], list[int]] = {}
    for p in sorted((out / "trials").glob("*/record.json")):
        d = json.loads(p.read_text())
        found.setdefault((d["variant"], d["seed"]), []).append(d["trial"])
    return found


def summary_text(capsys, study: Path, out: Path) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["summarize", str(study), "--out", str(out)])
    text = capsys.readouterr().out
    return rc, text.replace(str(out), "<out>")


# ---- relocatable --------------------------------------------------------------------------------------------
def test_a_copied_and_a_moved_study_folder_read_the_same(tmp_path, capsys, fast_trials, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = write_study(tmp_path, "reloc")
    base = tmp_path / "base"
    assert run(study, base) == 0
    rc, original = summary_text(capsys, study, base)
    assert rc == 0 and "read 4 trials: 4 from files" in original and "McNemar" in original
    # the journal holds no absolute path: each trial's folder is relative to the study folder
    journal = (base / "optuna.journal").read_text()
    assert str(tmp_path) not in journal and '"trial_dir":"trials/0000"' in journal

    copy, away = tmp_path / "copy", tmp_path / "elsewhere" / "moved"
    shutil.copytree(base, copy)
    away.parent.mkdir()
    base.rename(away)  # the folder where the study ran is gone
    for folder in (copy, away):
        rc, text = summary_text(capsys, study, folder)
        assert rc == 0 and text == original  # the same table, read from the folder where it is now
        assert pd_read(folder / "summary.csv").equals(pd_read(copy / "summary.csv"))

    # a record lost from a trial folder is read from the folder's own copy of its MLflow artifact, and named
    (copy / "trials" / "0002" / "record.json").unlink()
    rc, text = summary_text(capsys, study, copy)
    assert rc == 0 and text.split("read ")[0] == original.split("read ")[0]
    assert "3 from files, 1 from mlflow" in text and "from MLflow: no record.json in <out>/trials/0002" in text
    assert not (copy / "downloads").exists()  # read in place, nothing downloaded

    # writing goes to the folder where the study is now: a rerun re-points MLflow's artifact locations at it, and
    # an attachment to the parent run lands in its mlartifacts/, never in the folder where the study ran
    assert run(study, copy) == 0
    con = sqlite3.connect(copy / "mlflow.db")
    locations = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
    exp = con.execute("SELECT artifact_location FROM experiments WHERE name = 'ablate/reloc'").fetchone()[0]
    con.close()
    assert exp == (copy / "mlartifacts").resolve().as_uri()
    assert all(u.startswith(exp) for u in locations), locations
    s = session(study, copy)
    parent = load_optuna_study(s).user_attrs["mlflow_parent_run_id"]
    note = tmp_path / "note.txt"
    note.write_text("attached")
    s.tracker().log_artifact(parent, note, "report")
    assert (copy / "mlartifacts" / parent / "artifacts" / "report" / "note.txt").exists()
    assert not (tmp_path / "base").exists()


def pd_read(path: Path):
    import pandas as pd

    return pd.read_csv(path)


def test_an_older_journal_with_absolute_trial_folders_reads_after_a_move(tmp_path, capsys, fast_trials, monkeypatch):
    """Studies started before the folder was relocatable hold absolute paths: the last part is looked up here."""
    import ablate.trial

    real = Path.relative_to
    monkeypatch.setattr(Path, "relative_to", lambda self, other: self.resolve())  # the old absolute trial_dir
    study = write_study(tmp_path, "oldabs", seeds=[0])
    base = tmp_path / "base"
    assert run(study, base) == 0
    monkeypatch.setattr(Path, "relative_to", real)
    assert str(base.resolve() / "trials") in (base / "optuna.journal").read_text()
    rc, original = summary_text(capsys, study, base)
    moved = tmp_path / "moved"
    base.rename(moved)
    rc, text = summary_text(capsys, study, moved)
    assert rc == 0 and text == original and "read 2 trials: 2 from files" in text
    assert ablate.trial.trial_folder(session(study, moved), load_optuna_study(session(study, moved)).trials[0]) \
        == moved / "trials" / "0000"


def test_a_summary_with_unreadable_trials_exits_non_zero_naming_them(tmp_path, capsys, fast_trials):
    study = write_study(tmp_path, "unread", seeds=[0])
    out = tmp_path / "out"
    assert run(study, out) == 0
    s = session(study, out)
    lost = next(t for t in load_optuna_study(s).trials if t.number == 1)
    (out / "trials" / "0001" / "record.json").unlink()
    shutil.rmtree(out / "mlartifacts" / lost.user_attrs["mlflow_run_id"])
    capsys.readouterr()
    assert main(["summarize", str(study), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: 1 complete trial(s) of unread could not be read"), err
    variant = lost.user_attrs["variant"]
    assert f"trial 1 ({variant}/seed0): no record.json in {out / 'trials' / '0001'}" in err[0]


def test_trials_on_another_machine_are_named_with_its_folder(tmp_path, fast_trials, monkeypatch):
    """A shared storage: a trial whose files are in another machine's folder says which machine and folder."""
    import socket

    from ablate.trial import read_trials

    pg = pytest.importorskip("sqlalchemy")
    base = os.environ.get("ABLATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
    name = f"ablate_test_away_{os.getpid()}"
    try:
        admin = pg.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        conn = admin.connect()
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {base}: {exc}")
    conn.execute(pg.text(f"CREATE DATABASE {name}"))
    try:
        storage = f"{base}/{name}"
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        study = write_study(tmp_path, "away", seeds=[0])
        node = tmp_path / "node7" / "out"
        with monkeypatch.context() as m:  # the study runs on node7
            m.setattr(socket, "gethostname", lambda: "node7")
            assert main(["run", str(study), "--out", str(node), "--storage", storage, "--tracking-uri", tracking,
                         "--no-progress", "--no-summary"]) == 0
        # this machine cannot reach node7's folder (nor MLflow's copy there)
        shutil.rmtree(node.parent)
        here = Paths(tmp_path / "laptop")
        s = Session(study=load_study(study), storage_url=storage, tracking_uri=tracking, paths=here)
        trials = read_trials(s)
        assert not trials.records and len(trials.problems) == 1, trials.problems
        assert re.match(r"trial 0 \((on|off)/seed0\), trial 1 \((on|off)/seed0\): ran on host node7, whose "
                        f"folder {re.escape(str(node.resolve()))} holds the files", trials.problems[0])
    finally:
        conn.execute(pg.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        conn.close()
        admin.dispose()


# ---- started twice at once ----------------------------------------------------------------------------------
STARTER = textwrap.dedent("""\
    import os, sys, time
    sys.path.insert(0, {tests!r})
    import test_study_folder  # (its conftest import sets the test environment: the CPU)
    test_study_folder.install_fakes(setattr)
    from ablate.cli import main
    import ablate.runner, ablate.tracking, mlflow.tracking, optuna  # noqa: F401 - imported before the start
    barrier = {barrier!r}
    open(barrier + f".ready-{{os.getpid()}}", "w").close()
    while not os.path.exists(barrier):
        time.sleep(0.005)
    sys.exit(main(sys.argv[1:]))
    """)


@pytest.mark.parametrize("commands", [
    ("run", "run"),
    pytest.param(("run", "run", "worker"), marks=pytest.mark.slow, id="run,run,worker"),
], ids=lambda c: ",".join(c))
def test_runs_started_at_the_same_moment_in_a_new_folder_end_with_one_store(tmp_path, commands):
    """Processes released together by a barrier file, in a folder that does not exist yet (the probe: both runs
    failed on MLflow's schema migration and left mlflow.db half-migrated)."""
    from ablate.tracking import store_problem

    study = write_study(tmp_path, "twice", seeds=[0])
    out = tmp_path / "new" / "out"
    barrier = tmp_path / "go"
    script = tmp_path / "start.py"
    script.write_text(STARTER.format(tests=str(TESTS), barrier=str(barrier)))
    args = {"run": ["run", str(study), "--out", str(out), "--no-progress", "--no-summary"],
            "worker": ["worker", str(study), "--out", str(out), "--no-progress"]}
    env = {**os.environ, "ABLATE_POLL_S": "0.2"}
    procs = [subprocess.Popen([sys.executable, str(script), *args[c]], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for c in commands]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready-*"))) < len(procs) and time.monotonic() < deadline:
        time.sleep(0.05)  # until every process has imported what it needs and waits at the barrier
    barrier.touch()  # released together
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    # every run ends with the whole study: none failed, none left a cell to the others unfinished
    assert [p.returncode for p in procs] == [0] * len(procs), outputs
    # one MLflow store, whole (no migration left half-done), one experiment, one parent run
    assert store_problem(out / "mlflow.db") is None
    assert not list(out.glob("mlflow.db.broken-*"))
    s = session(study, out)
    st = status(s)
    assert st["cells_complete"] == 2 and st["trials"] == {"COMPLETE": 2}, st
    assert st["mlflow_runs"] == {"FINISHED": 2} and st["parent_run"]["status"] == "FINISHED", st
    names = [n for n, _ in mlflow_runs(out)]
    assert sorted(names) == sorted(["twice", "on/seed0", "off/seed0"]), names
    assert all(len(v) == 1 for v in records_by_cell(out).values()) and len(records_by_cell(out)) == 2
    from mlflow.tracking import MlflowClient

    assert len(MlflowClient(s.tracking_uri).search_runs([s.tracker().experiment_id])) == 3


@pytest.mark.parametrize("damage", ["empty file", "interrupted migration, no runs"])
def test_a_half_created_store_without_runs_is_made_afresh(tmp_path, capsys, fast_trials, damage):
    from ablate.tracking import store_problem

    study = write_study(tmp_path, "half", seeds=[0])
    out = tmp_path / "out"
    out.mkdir()
    db = out / "mlflow.db"
    if damage == "empty file":
        db.write_bytes(b"")
    else:  # what two migrations at once left: a tmp table, a version that is not the head, no runs
        con = sqlite3.connect(db)
        con.executescript("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL);"
                          "INSERT INTO alembic_version VALUES ('867495a8f9d4');"
                          "CREATE TABLE runs (run_uuid VARCHAR(32));"
                          "CREATE TABLE _alembic_tmp_metrics (key VARCHAR(250));")
        con.close()
    assert store_problem(db) is not None
    assert run(study, out) == 0
    err = capsys.readouterr().err
    assert "the MLflow store was left half-created" in err and "moved aside to mlflow.db.broken-" in err
    assert store_problem(db) is None and len(list(out.glob("mlflow.db.broken-*"))) == 1
    assert status(session(study, out))["mlflow_runs"] == {"FINISHED": 2}


def test_a_store_with_runs_is_repaired_or_refused_in_one_line(tmp_path, capsys, fast_trials):
    from ablate.tracking import _READY, _head_revision, store_problem

    study = write_study(tmp_path, "repair", seeds=[0])
    out = tmp_path / "out"
    assert run(study, out) == 0
    db = out / "mlflow.db"
    s = session(study, out)
    # a migration's leftover table beside a whole store: dropped, and the study reads on
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE _alembic_tmp_trace_tags (key VARCHAR(250))")
    _READY.clear()
    capsys.readouterr()
    assert main(["status", str(study), "--out", str(out)]) == 0
    assert "dropped _alembic_tmp_trace_tags, left by an interrupted MLflow schema migration" in capsys.readouterr().err
    assert store_problem(db) is None
    # a store with runs whose migration stopped half-way: refused, one line saying what to do; nothing is moved
    with sqlite3.connect(db) as con:
        con.execute("UPDATE alembic_version SET version_num = '867495a8f9d4'")
    _READY.clear()
    capsys.readouterr()
    assert main(["status", str(study), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {db}: the MLflow store is not whole (its schema is version "
                                               f"867495a8f9d4, this MLflow's is {_head_revision()}) and holds 3 "
                                               f"run(s); back it up, then run `mlflow db upgrade"), err
    assert db.exists() and not list(out.glob("mlflow.db.broken-*"))
    _READY.clear()
    assert s.tracking_uri not in _READY


# ---- a full disk ---------------------------------------------------------------------------------------------
class Full:
    """A disk that fills up during the second trial (after its training) and gets space again on `clear()`."""

    def __init__(self):
        self.on = self.cleared = False
        self.evaluations = 0

    def clear(self) -> None:
        self.on, self.cleared = False, True

    def check(self, what: str = "") -> None:
        if self.on:
            raise OSError(errno.ENOSPC, "No space left on device", what or None)


def _sqlite_full() -> Exception:
    from mlflow.exceptions import MlflowException

    try:
        raise sqlite3.OperationalError("database or disk is full")
    except sqlite3.OperationalError as cause:
        exc = MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: UPDATE runs SET ...]")
        exc.__cause__ = cause
        return exc


WRITE_SITES = ["checkpoint", "record", "mlflow artifacts", "mlflow database", "journal", "everything"]


def fill_disk(monkeypatch, site: str) -> Full:
    """From the second trial's evaluation on, the writes of `site` find the disk full."""
    import mlflow.tracking

    import ablate.storage
    import ablate.tracking
    import ablate.trial

    full = Full()
    sites = WRITE_SITES[:-1] if site == "everything" else [site]
    real_evaluate, real_train = fake_evaluate, fake_train

    def evaluate(model, data, result, trial_dir, *a, **kw):
        full.evaluations += 1
        out = real_evaluate(model, data, result, trial_dir, *a, **kw)
        if full.evaluations == 2 and not full.cleared:
            full.on = True
        return out

    def train(model, data, cfg, out_dir=None, **kw):
        if "checkpoint" in sites and full.evaluations >= 1 and not full.cleared:
            full.on = True
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1088 vs 1024")
        return real_train(model, data, cfg, out_dir=out_dir, **kw)

    monkeypatch.setattr(importlib.import_module("resmasknet.train"), "train", train)
    monkeypatch.setattr(ablate.trial, "evaluate_trial", evaluate)
    if "record" in sites:
        real_record = ablate.trial.write_record

        def write_record(folder, record, **kw):
            full.check(str(Path(folder) / ".pending" / "record.json"))
            return real_record(folder, record, **kw)

        monkeypatch.setattr(ablate.trial, "write_record", write_record)
    if "mlflow artifacts" in sites:
        for name in ("log_artifacts", "log_artifact"):
            real = getattr(ablate.tracking.Tracker, name)

            def wrapped(self, *a, _real=real, **kw):
                full.check(str(self.artifact_root))
                return _real(self, *a, **kw)

            monkeypatch.setattr(ablate.tracking.Tracker, name, wrapped)
    if "mlflow database" in sites:
        for name in ("log_batch", "set_terminated", "update_run", "create_run", "set_tag"):
            real = getattr(mlflow.tracking.MlflowClient, name)

            def wrapped(self, *a, _real=real, **kw):
                if full.on:
                    raise _sqlite_full()
                return _real(self, *a, **kw)

            monkeypatch.setattr(mlflow.tracking.MlflowClient, name, wrapped)
    if "journal" in sites:
        real_append = ablate.storage._write

        def write(fh, data):
            full.check()
            return real_append(fh, data)

        monkeypatch.setattr(ablate.storage, "_write", write)
    return full


@pytest.mark.parametrize("site", WRITE_SITES)
def test_a_full_disk_stops_at_once_and_a_rerun_leaves_nothing_that_looks_complete(tmp_path, capsys, monkeypatch,
                                                                                  fast_trials, site):
    import ablate.runner

    study = write_study(tmp_path, "full")
    out = tmp_path / "out"
    full = fill_disk(monkeypatch, site)
    monkeypatch.setenv("ABLATE_RETRY_GIVE_UP_S", "600")  # were a full disk retried, the test would hang
    capsys.readouterr()
    t0 = time.monotonic()
    assert run(study, out) == 1
    assert time.monotonic() - t0 < 30
    captured = capsys.readouterr()
    err = captured.err
    # stopped at the first "no space left": one error line naming the path and the space the study still needs
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert "no space left on the device; the study still needs about" in errors[0], errors
    assert "cell(s) left x" in errors[0] and "free there now" in errors[0], errors
    assert "Traceback" not in err and "retrying" not in err, err
    assert all(len(line) < 400 for line in err.splitlines()), err  # every line of it is one line
    # the first trial is complete; nothing else has a record that says so
    first = records_by_cell(out)
    assert len(first) == 1 and [len(v) for v in first.values()] == [1], first
    # space again; the worker's process is gone (here: the test's own process stands in for it)
    full.clear()
    monkeypatch.setattr(ablate.runner, "_pid_alive", lambda pid: pid != os.getpid())
    assert run(study, out) == 0
    err = capsys.readouterr().err
    s = session(study, out)
    st = status(s)
    assert st["cells_complete"] == 4 and st["trials"]["COMPLETE"] == 4, st
    # no MLflow run is left RUNNING (trial runs and the parent), and the rerun said how many it closed
    assert "RUNNING" not in {status for _, status in mlflow_runs(out)}, mlflow_runs(out)
    if site == "mlflow database":  # the trial failed in the storage, its run could not be ended: closed now
        assert "closed 1 MLflow trial run(s) left RUNNING by workers that are gone (1 FAILED)" in err, err
    # exactly one completed record per cell, each of a trial the storage holds as complete
    complete = {t.number for t in load_optuna_study(s).trials if t.state.name == "COMPLETE"}
    cells = records_by_cell(out)
    assert len(cells) == 4 and all(len(v) == 1 for v in cells.values()), cells
    assert {n for v in cells.values() for n in v} == complete
    assert not list((out / "trials").glob("*/.pending/record.json"))


def test_a_record_left_complete_by_an_older_version_is_set_aside_on_rerun(tmp_path, capsys, fast_trials):
    """The probe's folder: trials/0003/record.json said completed for a trial the storage holds as failed."""
    from optuna.trial import TrialState

    study = write_study(tmp_path, "legacy", seeds=[0])
    out = tmp_path / "out"
    assert run(study, out) == 0
    s = session(study, out)
    # a failed trial whose folder has a "completed" record (as the version before pending records left them)
    ostudy = load_optuna_study(s)
    rec = json.loads((s.paths.trial_dir(0) / "record.json").read_text())
    cell = (rec["variant"], rec["seed"])
    ostudy.enqueue_trial({"cell": s.study.cells.index(cell)})
    trial = ostudy.ask()
    shutil.copytree(s.paths.trial_dir(0), s.paths.trial_dir(trial.number))
    ostudy.tell(trial, state=TrialState.FAIL)
    assert len(records_by_cell(out)[cell]) == 2
    capsys.readouterr()
    assert run(study, out) == 0
    assert f"set aside the record.json of 1 trial(s) the storage holds as failed (renamed record.failed.json): " \
           f"{trial.number}" in capsys.readouterr().err
    assert records_by_cell(out)[cell] == [0]
    assert (s.paths.trial_dir(trial.number) / "record.failed.json").exists()


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs (as root, where mounting is allowed), enlarged to 64 MB by calling the yielded function."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the simulated full disk covers each write site")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True, timeout=30)

    try:
        yield mnt, grow
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=30)


def test_a_real_full_disk(tmp_path, tmpfs, capsys, monkeypatch, fast_trials):
    import ablate.runner

    mnt, grow = tmpfs
    monkeypatch.setattr(sys.modules[__name__], "CHECKPOINT_BYTES", 300_000)
    study = write_study(tmp_path, "tmpfs")
    out = mnt / "out"
    capsys.readouterr()
    assert run(study, out) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no space left on the device" in errors[0] and str(out) in errors[0], err
    assert "Traceback" not in err
    grow()
    monkeypatch.setattr(ablate.runner, "_pid_alive", lambda pid: pid != os.getpid())
    assert run(study, out) == 0
    assert "RUNNING" not in {status for _, status in mlflow_runs(out)}
    cells = records_by_cell(out)
    assert len(cells) == 4 and all(len(v) == 1 for v in cells.values()), cells
    st = status(session(study, out))
    assert st["cells_complete"] == 4


# ---- smaller items ---------------------------------------------------------------------------------------
def test_a_corrupt_predictions_file_is_reported_as_corrupt(tmp_path):
    import numpy as np

    from resmasknet.data import CLASSES
    from resmasknet.evaluate import EvalResult, from_probabilities

    ev = from_probabilities(np.full((3, 7), 1 / 7), np.arange(3), tuple(CLASSES))
    ev.save(tmp_path / "test")
    (tmp_path / "test" / "predictions.npz").write_bytes(b"not an archive" * 10)
    with pytest.raises(ValueError, match=r"predictions.npz: corrupt predictions file, not a readable .npz archive "
                                         r"\(its bytes are not a numpy archive\)") as info:
        EvalResult.load(tmp_path / "test")
    assert "pickle" not in str(info.value)


def test_a_read_only_report_folder_names_report_dir(tmp_path, monkeypatch):
    import tempfile

    from resmasknet.runtime import StorageError, atomic_dir

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    hint = r"the file system is read-only; choose a writable folder \(--report-dir\)"
    with pytest.raises(StorageError, match=hint), atomic_dir(tmp_path / "reports" / "x", option="--report-dir"):
        pass
    import inspect

    import ablate.report.study

    assert 'atomic_dir(dest, option="--report-dir")' in inspect.getsource(ablate.report.study.build_report)


def test_library_loggers_keep_their_tracebacks_to_themselves(caplog):
    """MLflow logs a traceback for every SQLAlchemy error before raising it again (30 of them in one full-disk
    run): the command reports the error once, in one line."""
    import logging

    from ablate.tracking import configure_environment

    configure_environment()
    logger = logging.getLogger("mlflow.store.db.utils")
    with caplog.at_level(logging.DEBUG, logger="mlflow.store.db.utils"):
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            logger.exception("SQLAlchemy database error. The following exception is caught.")
        logger.warning("a warning without a traceback")
    assert [r.getMessage() for r in caplog.records if r.name == "mlflow.store.db.utils"] == \
        ["a warning without a traceback"]
