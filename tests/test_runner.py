"""Running studies: no cell run twice or lost, with parallel workers, a SIGKILL mid-trial, restarts,
and PostgreSQL across worker processes; the Optuna and MLflow counts agree after each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import tiny_grid_study, wait_for_running_trial

from ablate.cli import main
from ablate.runner import Paths, Session, load_optuna_study, status

STUDY = tiny_grid_study("faults")


def write_study(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "faults.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}))
    return path


def session(study_path: Path, out: Path, storage: str | None = None, tracking: str | None = None) -> Session:
    from ablate.study import load_study

    paths = Paths(out)
    return Session(study=load_study(study_path), storage_url=storage or str(paths.journal),
                   tracking_uri=tracking or paths.tracking_uri, paths=paths)


def check_counts(s: Session) -> None:
    st = status(s)
    n_cells = len(s.study.cells)
    # every grid cell finished exactly once ...
    assert st["cells_complete"] == n_cells and st["trials"].get("COMPLETE") == n_cells, st
    # ... and MLflow holds exactly one finished nested run per cell
    assert st["mlflow_runs"].get("FINISHED") == n_cells, st
    ostudy = load_optuna_study(s)
    cells = [t.params["cell"] for t in ostudy.get_trials() if t.state.name == "COMPLETE"]
    assert sorted(cells) == list(range(n_cells))
    runs = s.tracker().trial_runs(ostudy.user_attrs["mlflow_parent_run_id"])
    finished = [(r.data.tags["variant"], r.data.tags["seed"]) for r in runs if r.info.status == "FINISHED"]
    # no (variant, seed) has two finished runs
    assert len(finished) == len(set(finished)) == n_cells


def test_single_worker_run_then_rerun_is_a_no_op(tmp_path):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    s = session(study, out)
    check_counts(s)
    # a second run finds nothing to do and adds nothing
    assert main(["run", str(study), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    check_counts(s)
    # the summary reads the predictions and prints the table
    assert main(["summarize", str(study), "--out", str(out)]) == 0
    assert (out / "summary.csv").exists()
    # against the other variant: the roles swap, and so does the sign of every difference
    assert main(["summarize", str(study), "--out", str(out), "--baseline", "on"]) == 0
    import pandas as pd

    by_off = pd.read_csv(out / "summary.csv").set_index("variant")
    by_on = pd.read_csv(out / "summary-vs-on.csv").set_index("variant")
    assert by_on.loc["on", "verdict"] == "baseline" and by_off.loc["off", "verdict"] == "baseline"
    assert by_on.loc["off", "mean_diff"] == pytest.approx(-by_off.loc["on", "mean_diff"])
    assert main(["summarize", str(study), "--out", str(out), "--baseline", "nope"]) == 2


def test_changed_study_file_is_refused(tmp_path):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    s = session(study, out)
    from ablate.runner import prepare

    prepare(s)
    write_study(tmp_path, seeds=[0, 1, 2])
    # reopening a study whose design changed would mix two designs: refused, naming the file
    with pytest.raises(ValueError, match="faults.yaml: the study file changed"):
        prepare(session(study, out))


def test_two_workers_at_once_no_duplicates(tmp_path):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out), "--workers", "2", "--no-progress", "--no-summary"]) == 0
    check_counts(session(study, out))


def test_two_workers_show_one_bar_of_the_study_cells(tmp_path, capfd):
    """The workers' own bars are off; the run shows the study's finished cells, read from the storage."""
    from ablate.runner import prepare, study_progress

    study = write_study(tmp_path)
    out = tmp_path / "out"
    s = session(study, out)
    prepare(s)
    assert study_progress(s) == (0, 4)
    assert main(["run", str(study), "--out", str(out), "--workers", "2", "--no-summary"]) == 0
    err = capfd.readouterr().err
    assert "faults (2 workers)" in err and "4/4" in err
    st = status(s)
    assert study_progress(s) == (st["cells_complete"], st["cells"]) == (4, 4)


def test_sigkill_mid_trial_then_rerun_completes_exactly(tmp_path):
    study = write_study(tmp_path)
    out = tmp_path / "out"
    s = session(study, out)
    proc = subprocess.Popen([sys.executable, "-m", "ablate", "run", str(study), "--out", str(out),
                             "--no-progress", "--no-summary"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_running_trial(s)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # the killed trial is left RUNNING
    assert any(t.state.name == "RUNNING" for t in load_optuna_study(s).get_trials())
    # a rerun fails it (its process is gone), retries its cell and finishes the grid
    assert main(["run", str(study), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    check_counts(s)
    trials = load_optuna_study(s).get_trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    # exactly the killed trial failed, and its MLflow run is marked KILLED, not FINISHED
    assert len(failed) == 1 and "stale" in failed[0].user_attrs["fail_reason"]
    assert s.tracker().get_status(failed[0].user_attrs["mlflow_run_id"]) == "KILLED"


@pytest.fixture
def pg_urls():
    sqlalchemy = pytest.importorskip("sqlalchemy")
    base = os.environ.get("ABLATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
    try:
        engine = sqlalchemy.create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        conn = engine.connect()
    except Exception as exc:
        pytest.skip(f"PostgreSQL not reachable at {base}: {exc}")
    names = [f"ablate_test_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("optuna", "mlflow")]
    for n in names:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {n}"))
    yield [f"{base}/{n}" for n in names]
    for n in names:
        conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {n} WITH (FORCE)"))
    conn.close()
    engine.dispose()


def test_postgresql_two_worker_processes(tmp_path, pg_urls):
    storage, tracking = pg_urls
    study = write_study(tmp_path)
    out = tmp_path / "out"
    # the coordinator prepares the study, then two worker processes share it through PostgreSQL
    assert main(["run", str(study), "--out", str(out), "--storage", storage, "--tracking-uri", tracking,
                 "--workers", "2", "--no-progress", "--no-summary"]) == 0
    check_counts(session(study, out, storage, tracking))


def test_worker_without_shared_tracking_is_refused(tmp_path):
    study = write_study(tmp_path)
    # a shared storage with a machine-local MLflow store would split the tracking: refused with advice
    with pytest.raises(ValueError, match="--tracking-uri"):
        import argparse

        from ablate.cli.study import session_from

        session_from(argparse.Namespace(study=str(study), out=None, storage="postgresql://x@h/db",
                                        tracking_uri=None, tiny=False, device="cpu"))


def test_first_seeds_runs_whole_paired_seeds_and_a_later_run_adds_the_rest(tmp_path, capsys):
    study = write_study(tmp_path, seeds=[0, 1, 2])
    out = tmp_path / "out"
    s = session(study, out)
    from ablate.runner import prepare

    prepare(s)  # an earlier, unlimited run left every cell waiting (as one killed before it started would)
    assert main(["run", str(study), "--out", str(out), "--first-seeds", "2", "--workers", "2",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "seeds [0, 1] complete (2 of 3, as --first-seeds asked)" in printed and "adds seeds [2]" in printed
    ostudy = load_optuna_study(s)
    trials = ostudy.get_trials()
    done = sorted(s.study.cells[t.params["cell"]] for t in trials if t.state.name == "COMPLETE")
    # exactly every variant of seeds 0 and 1, once each; nothing of seed 2 ran, not even an MLflow run
    assert done == sorted((v, seed) for v in ("on", "off") for seed in (0, 1))
    runs = s.tracker().trial_runs(ostudy.user_attrs["mlflow_parent_run_id"])
    assert sorted((r.data.tags["variant"], int(r.data.tags["seed"])) for r in runs) == done
    deferred = [t for t in trials if t.state.name == "FAIL"]
    assert sorted(s.study.cells[t.system_attrs["fixed_params"]["cell"]][1] for t in deferred) == [2, 2]
    assert all(t.user_attrs["fail_kind"] == "killed" for t in deferred)
    assert not [t for t in trials if t.state.name in ("WAITING", "RUNNING")]  # nothing of seed 2 left queued
    # the run's progress bar counted the cells in its scope: all 4 of seeds 0 and 1 (4 of the study's 6)
    import dataclasses

    from ablate.runner import study_progress

    assert study_progress(dataclasses.replace(s, first_seeds=2)) == (4, 4) and study_progress(s) == (4, 6)
    # the summary of the limited run pairs the two seeds; the parent run says it stopped before the end
    import pandas as pd

    table = pd.read_csv(out / "summary.csv").set_index("variant")
    assert table.loc["on", "n"] == 2 and table.loc["on", "n_pairs"] == 2
    assert s.tracker().get_status(ostudy.user_attrs["mlflow_parent_run_id"]) == "KILLED"
    assert status(s)["seeds_complete"] == [0, 1] and "whole seeds complete [0, 1] of 3" in printed
    # a later run without the limit runs only seed 2, and the deferral used none of its cells' attempts
    assert main(["run", str(study), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    check_counts(s)
    assert status(s)["attempts"] == {}


@pytest.mark.parametrize("n", [0, 3])
def test_first_seeds_out_of_range_is_one_line_naming_the_seeds(tmp_path, capsys, n):
    study = write_study(tmp_path)
    assert main(["run", str(study), "--out", str(tmp_path / "out"), "--first-seeds", str(n), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--first-seeds {n}: study faults has 2 seeds [0, 1]; give 1 to 2" in err and "\n" not in err
    assert not (tmp_path / "out").exists()  # refused before anything was created


def test_first_seeds_is_refused_for_a_search(tmp_path, capsys):
    assert main(["run", "search_masks", "--tiny", "--out", str(tmp_path / "out"), "--first-seeds", "1",
                 "--no-progress"]) == 2
    assert "--first-seeds applies to grid studies" in capsys.readouterr().err


def test_a_popped_trial_names_its_process_before_it_runs(tmp_path, monkeypatch):
    """A worker killed right after popping a trial must leave a trial that the next run fails at once (its pid is
    gone), not one that looks alive until the heartbeat's grace has passed."""
    import socket

    from ablate.runner import is_stale, prepare, work

    s = session(write_study(tmp_path), tmp_path / "out")
    prepare(s)
    seen: dict = {}

    def killed_on_entry(session, ostudy, trial, tracker):
        seen.update(ostudy._storage.get_trial(trial._trial_id).user_attrs)
        # the process dies before the trial does anything (SystemExit: nothing in the worker loop marks the trial,
        # as after a SIGKILL; a Ctrl-C there marks it killed, see test_faults)
        raise SystemExit(137)

    monkeypatch.setattr("ablate.trial.run_trial", killed_on_entry)
    with pytest.raises(SystemExit):
        work(s, max_trials=1)
    # host and pid were written before the trial ran anything
    assert seen.get("pid") == os.getpid() and seen.get("host") == socket.gethostname()
    running = [t for t in load_optuna_study(s).get_trials() if t.state.name == "RUNNING"]
    assert len(running) == 1 and not is_stale(running[0])  # this process is alive
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    running[0].user_attrs["pid"] = gone.pid  # the same trial, owned by a process that has exited
    assert is_stale(running[0])
