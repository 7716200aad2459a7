"""Faults: a cut journal is repaired, a full disk ends as one line naming the path, infrastructure errors use
no attempts, a bad study is refused before any file exists, and a killed worker is named with its signal."""

from __future__ import annotations

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import tiny_grid_study, wait_for_running_trial

from ablate import faults
from ablate.cli import main
from ablate.runner import Paths, Session, load_optuna_study, plan_devices, status, wait_workers
from ablate.storage import JournalError, check_journal, open_storage, repair_journal
from ablate.study import StudyError, load_study
from resmasknet.runtime import StorageError


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """One MLflow store for the module (creating one takes seconds); each test's study has its own name."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setenv("ABLATE_RETRY_BASE_S", "0.05")
    monkeypatch.setenv("ABLATE_RETRY_MAX_S", "0.1")
    monkeypatch.setenv("ABLATE_RETRY_GIVE_UP_S", "1")


def write_study(tmp_path: Path, name: str, **changes) -> Path:
    raw = tiny_grid_study(name)
    raw["seeds"] = [0]  # two cells: on/seed0, off/seed0
    raw["base"]["tta"] = False
    raw.update(changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def session(study: Path, out: Path, tracking: str) -> Session:
    paths = Paths(out)
    return Session(study=load_study(study), storage_url=str(paths.journal), tracking_uri=tracking, paths=paths)


def run(study: Path, out: Path, tracking: str, *extra: str) -> int:
    return main(["run", str(study), "--out", str(out), "--tracking-uri", tracking, "--no-progress", "--no-summary",
                 *extra])


def check_complete(s: Session) -> dict:
    st = status(s)
    n = len(s.study.cells)
    # finished trials = finished MLflow runs = grid cells
    assert st["cells_complete"] == n and st["trials"].get("COMPLETE") == n, st
    assert st["mlflow_runs"].get("FINISHED") == n, st
    return st


@pytest.fixture
def fast_trials(monkeypatch):
    """Trials without training: the runner, storage and tracking are real; train/evaluate are stand-ins."""

    def fake_train(model, data, cfg, out_dir=None, **kw):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "history.json").write_text("[]")
        return SimpleNamespace(status="completed", history=[{}])

    def fake_evaluate(model, data, result, trial_dir, device, tta=True):
        return {"val_acc": 0.5, "test_acc": 0.5}, {"history.json": "history.json"}

    monkeypatch.setattr(importlib.import_module("resmasknet.train"), "train", fake_train)
    monkeypatch.setattr("ablate.trial.evaluate_trial", fake_evaluate)


def failing_write_record(monkeypatch, exc: OSError, calls: set[int]) -> set[int]:
    """ablate.trial.write_record raises `exc` on the given (0-based) calls; clear the returned set to stop."""
    import ablate.trial

    real = ablate.trial.write_record
    count = {"n": 0}

    def write_record(folder, record, **kw):
        i = count["n"]
        count["n"] += 1
        if i in calls:
            raise exc
        return real(folder, record, **kw)

    monkeypatch.setattr(ablate.trial, "write_record", write_record)
    return calls


# ---- a lost GPU context ---------------------------------------------------------------------------------
@pytest.mark.parametrize("message, kind", [
    ("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be asynchronously reported",
     faults.DEVICE),
    ("CUDA error: device-side assert triggered", faults.DEVICE),
    ("CUDA error: unspecified launch failure", faults.DEVICE),
    ("CUDA error: invalid argument", faults.TRIAL),  # not sticky: the trial's own
    ("an illegal memory access in my own code", faults.TRIAL),  # not CUDA
])
def test_cuda_errors_that_leave_the_context_unusable_are_device_faults(message, kind):
    import torch

    assert faults.classify(torch.AcceleratorError(message)) == (kind, f"AcceleratorError: {message.splitlines()[0]}")
    wrapped = RuntimeError("evaluation failed")
    wrapped.__cause__ = RuntimeError(message)
    assert faults.classify(wrapped)[0] == kind


def test_a_lost_gpu_context_stops_the_worker_without_using_an_attempt(tmp_path, tracking, capsys, monkeypatch,
                                                                      fast_trials):
    import torch

    train_mod = importlib.import_module("resmasknet.train")
    real = train_mod.train
    calls = {"n": 0}

    def first_call_loses_the_gpu(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
        return real(*args, **kw)

    monkeypatch.setattr(train_mod, "train", first_call_loses_the_gpu)
    study = write_study(tmp_path, "lostgpu")
    out = tmp_path / "out"
    assert run(study, out, tracking) == 1
    err = capsys.readouterr().err
    # one line: the CUDA error, and that this worker stopped; the other cell did not run in the dead process
    assert "error: AcceleratorError: CUDA error: an illegal memory access was encountered: this process's GPU " \
           "context is unusable, so this worker stops (no attempt used)" in err
    assert calls["n"] == 1
    s = session(study, out, tracking)
    trials = load_optuna_study(s).get_trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["fail_kind"] == faults.DEVICE
    assert (s.paths.trial_dir(failed[0].number) / "traceback.txt").exists()
    st = status(s)
    assert st["attempts"] == {} and sum(st["infra_failures"].values()) == 1  # no attempt used
    # a rerun, in a fresh process, retries the cell and completes the study
    assert run(study, out, tracking) == 0
    check_complete(s)


# ---- (a) journal repair -----------------------------------------------------------------------------------
def test_cut_journal_is_repaired_and_the_study_completes(tmp_path, tracking, capsys, fast_trials):
    study = write_study(tmp_path, "cutjournal")
    out = tmp_path / "out"
    assert run(study, out, tracking, "--workers", "0") == 0
    journal = out / "optuna.journal"
    last = journal.read_bytes().splitlines(keepends=True)[-1]
    cut = last[: len(last) // 2]  # a write the full disk cut off half-way: no newline
    with open(journal, "ab") as f:
        f.write(cut)
    capsys.readouterr()
    assert run(study, out, tracking) == 0
    err = capsys.readouterr().err
    sides = list(out.glob("optuna.journal.broken-*"))
    # the repair is reported with both paths, and the side file holds the cut bytes
    assert len(sides) == 1 and f"repaired {journal}" in err and str(sides[0]) in err, err
    assert sides[0].read_bytes() == cut + b"\n"
    # every line of the journal is a complete log again
    assert check_journal(journal) is None and journal.read_bytes().endswith(b"\n")
    s = session(study, out, tracking)
    check_complete(s)
    # the parent MLflow run ends FINISHED when every cell is complete
    assert status(s)["parent_run"]["status"] == "FINISHED"


def test_cut_write_followed_by_another_append_is_salvaged(tmp_path):
    journal = tmp_path / "optuna.journal"
    storage = open_storage(str(journal))
    import optuna

    ostudy = optuna.create_study(study_name="x", storage=storage)
    ostudy.set_user_attr("a", 1)
    ostudy.set_user_attr("b", 2)
    good = journal.read_bytes()
    lines = good.splitlines(keepends=True)
    # a cut-off write, then the next process's complete append on the same line (the measured failure)
    journal.write_bytes(lines[0] + lines[1][:20] + lines[1] + lines[2])
    # Optuna itself cannot read it
    with pytest.raises(ValueError):
        optuna.load_study(study_name="x", storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))))
    repair = repair_journal(journal)
    # the cut prefix goes to the side file, the complete log that followed it is kept
    assert repair is not None and repair.side_file.read_bytes() == lines[1][:20] + b"\n"
    assert journal.read_bytes() == good
    assert optuna.load_study(study_name="x", storage=open_storage(str(journal))).study_name == "x"


def test_damaged_middle_line_is_refused_naming_the_file(tmp_path):
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b'{"op_code":0,"worker_id":"a"}\nGARBAGE\n{"op_code":0,"worker_id":"b"}\n')
    # damage that is not a cut-off write cannot be repaired safely: refused, naming the file and line
    with pytest.raises(JournalError, match=r"optuna.journal: line 2"):
        open_storage(str(journal))
    # and the file is left as it was
    assert b"GARBAGE" in journal.read_bytes()


def test_failed_append_is_cut_back_and_names_the_journal(tmp_path, monkeypatch):
    import optuna

    import ablate.storage

    journal = tmp_path / "optuna.journal"
    ostudy = optuna.create_study(study_name="x", storage=open_storage(str(journal)))
    before = journal.read_bytes()

    def half_then_full(fh, data):
        fh.write(data[: len(data) // 2])
        fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ablate.storage, "_write", half_then_full)
    # an append that hits a full disk raises a one-line StorageError naming the journal ...
    with pytest.raises(StorageError, match=r"cannot write .*optuna.journal: no space left"):
        ostudy.set_user_attr("a", 1)
    # ... and leaves no partial line behind: the journal is exactly as before
    assert journal.read_bytes() == before
    monkeypatch.undo()
    ostudy.set_user_attr("a", 2)
    assert optuna.load_study(study_name="x", storage=open_storage(str(journal))).user_attrs == {"a": 2}


def test_partial_line_left_by_a_dead_writer_is_cut_before_the_next_append(tmp_path, caplog):
    import optuna

    journal = tmp_path / "optuna.journal"
    ostudy = optuna.create_study(study_name="x", storage=open_storage(str(journal)))
    with open(journal, "ab") as f:  # another process died mid-write, after this one opened the journal
        f.write(b'{"op_code":5,"worker_id":"dead')
    with caplog.at_level("WARNING", logger="ablate.storage"):
        ostudy.set_user_attr("a", 1)
    # the live process cuts the partial line off (reported, kept in a side file) before appending
    assert "repaired" in caplog.text and len(list(tmp_path.glob("optuna.journal.broken-*"))) == 1
    assert check_journal(journal) is None
    assert optuna.load_study(study_name="x", storage=open_storage(str(journal))).user_attrs == {"a": 1}


def test_status_on_a_damaged_journal_is_one_line(tmp_path, capsys):
    study = write_study(tmp_path, "damaged")
    out = tmp_path / "out"
    out.mkdir()
    (out / "optuna.journal").write_bytes(b'{"op_code":0,"worker_id":"a"}\nGARBAGE\n{"op_code":0}\n')
    # `ablate status` on a journal it cannot repair: one line naming the journal, exit 1
    assert main(["status", str(study), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out / 'optuna.journal'}: line 2"), err


def test_intact_journal_is_only_read(tmp_path):
    journal = tmp_path / "optuna.journal"
    journal.write_bytes(b'{"op_code":0,"worker_id":"a"}\n')
    before = journal.stat().st_mtime_ns
    # a journal that is fine is not rewritten, and no lock file is made (status works on a read-only disk)
    assert repair_journal(journal) is None
    assert journal.stat().st_mtime_ns == before and not list(tmp_path.glob("*.ablate-lock"))


# ---- (b) disk full ------------------------------------------------------------------------------------------
def test_disk_full_in_a_trial_is_one_line_naming_the_path(tmp_path, tracking, capsys, monkeypatch, fast_trials):
    study = write_study(tmp_path, "diskfull")
    out = tmp_path / "out"
    # from the second trial on, every write of a trial record finds the disk full
    full = failing_write_record(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), set(range(1, 100)))
    capsys.readouterr()
    assert run(study, out, tracking) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    # exactly one error line, naming the trial folder and what to do; no traceback
    assert len(errors) == 1, err
    assert str(out / "trials") in errors[0] and "no space left" in errors[0], errors
    assert "Traceback" not in err
    s = session(study, out, tracking)
    st = status(s)
    # the finished cell is kept (Optuna and MLflow agree), and no failed trial left a record that looks complete
    assert st["cells_complete"] == 1 and st["trials"]["COMPLETE"] == 1 and st["mlflow_runs"]["FINISHED"] == 1
    records = sorted(p.parent.name for p in (out / "trials").glob("*/record.json"))
    assert records == ["0000"], records
    # a disk-full failure uses up no attempt
    assert st["attempts"] == {} and sum(st["infra_failures"].values()) >= 1
    # the parent MLflow run is FAILED while cells remain
    assert st["parent_run"]["status"] == "FAILED"
    # with space again, a rerun finishes the grid
    full.clear()
    assert run(study, out, tracking) == 0
    check_complete(s)


def test_read_only_storage_error_is_one_line(tmp_path, capsys, monkeypatch):
    study = write_study(tmp_path, "readonly")
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self == out:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    # a read-only output folder: one line naming it and what to do, exit 1
    assert main(["run", str(study), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "read-only" in err[0], err


# ---- (c) transient errors use no attempts -----------------------------------------------------------------
def test_transient_io_error_uses_no_attempt(tmp_path, tracking, monkeypatch, fast_trials):
    study = write_study(tmp_path, "transient")
    out = tmp_path / "out"
    # the first trial's record write hits an I/O error once (a short outage)
    failing_write_record(monkeypatch, OSError(errno.EIO, "Input/output error"), {0})
    assert run(study, out, tracking) == 0
    s = session(study, out, tracking)
    st = check_complete(s)
    # the cell completed afterwards, its attempts count unchanged (0); the failure is counted as infra
    assert st["attempts"] == {} and sum(st["infra_failures"].values()) == 1, st
    failed = [t for t in load_optuna_study(s).get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 1 and failed[0].user_attrs["fail_kind"] == "infra"
    assert "Input/output error" in failed[0].user_attrs["fail_reason"]


def test_trial_errors_use_attempts_and_exhausted_cells_are_listed(tmp_path, tracking, monkeypatch, capsys,
                                                                  fast_trials):
    study = write_study(tmp_path, "exhausted")
    out = tmp_path / "out"
    module = importlib.import_module("resmasknet.train")
    ok_train = module.train

    def train(model, data, cfg, out_dir=None, **kw):
        if not model.config.flat().get("mask1.enabled", True):  # the masks_off variant always diverges
            raise FloatingPointError("loss is nan at epoch 1")
        return ok_train(model, data, cfg, out_dir=out_dir, **kw)

    monkeypatch.setattr(module, "train", train)
    capsys.readouterr()
    # a cell whose trial fails on its own uses its attempts; the run then exits non-zero listing it
    assert run(study, out, tracking) == 1
    printed = capsys.readouterr().out
    assert "failed cell off/seed0: all 3 attempts failed; last: FloatingPointError: loss is nan" in printed
    s = session(study, out, tracking)
    st = status(s)
    assert st["cells_exhausted"] == [{"cell": "off/seed0", "attempts": 3,
                                      "reason": "FloatingPointError: loss is nan at epoch 1"}]
    # the traceback is kept in the trial folder
    assert list((out / "trials").glob("*/traceback.txt"))
    # a rerun does nothing more, and still says the study is not finished
    assert run(study, out, tracking) == 1
    assert status(s)["trials"]["FAIL"] == 3
    # --retry-failed gives the cell new attempts (here it fails again: three more)
    assert run(study, out, tracking, "--retry-failed") == 1
    assert status(s)["trials"]["FAIL"] == 6


# ---- (d) a bad study is refused before any file exists ----------------------------------------------------
def test_wrong_type_is_refused_before_any_file(tmp_path, capsys):
    raw = tiny_grid_study("wrongtype")
    raw["base"]["train"]["epochs"] = "three"
    study = tmp_path / "wrongtype.yaml"
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    # refused with exit 2, the file and the key named, and nothing created
    assert main(["run", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "wrongtype.yaml: base.train: epochs='three' must be an integer" in err, err
    assert not out.exists() and not Path("runs/wrongtype").exists()


def test_wrong_type_in_a_variant_is_named():
    raw = tiny_grid_study("v")
    raw["variants"]["off"]["train.lr"] = "fast"
    # a variant's training override is checked too, naming the variant
    with pytest.raises(StudyError, match=r"s.yaml: variants.off: lr='fast' must be a number"):
        from ablate.study import parse_study

        parse_study(raw, "s.yaml")


def _fer_csv(path: Path, short_row_line: int | None = None) -> Path:
    """A small fer2013.csv; the row on `short_row_line` (1-based, header = line 1) has 100 pixels."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["emotion,pixels,Usage"]
    for i in range(21):
        n = 100 if short_row_line == i + 2 else 2304
        lines.append(f"{i % 7},{' '.join(map(str, rng.integers(0, 256, n)))},"
                     f"{('Training', 'PublicTest', 'PrivateTest')[i % 3]}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize("data, message", [
    ("nowhere/fer2013.csv", "base.data: nowhere/fer2013.csv: no such file or directory"),
    ("BAD_CSV", "base.data: {csv}: line 4: expected 2304 pixel values, found 100"),
    ("generated:n=140,sede=0", "base.data: load_data: option(s) ['sede'] do not apply to generated data"),
])
def test_bad_data_is_refused_before_any_file(tmp_path, capsys, monkeypatch, command, data, message):
    csv = _fer_csv(tmp_path / "fer.csv", short_row_line=4)
    study = write_study(tmp_path, "baddata")
    raw = yaml.safe_load(study.read_text())
    raw["base"]["data"] = str(csv) if data == "BAD_CSV" else data
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    # `ablate run` (even --workers 0, which only prepares) and `ablate worker`: exit 2, one line naming the study
    # file, the data file and the row, and no folder, storage or MLflow store created
    extra = ["--workers", "0"] if command == "run" else []
    assert main([command, str(study), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {study}: " + message.format(csv=csv)), err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_good_fer_csv_is_loaded_once_for_the_check_and_the_trials(tmp_path, monkeypatch):
    import resmasknet.data
    from ablate.trial import _load_data, check_data

    csv = _fer_csv(tmp_path / "fer.csv")
    raw = tiny_grid_study("goodcsv")
    raw["base"]["data"] = str(csv)
    s = load_study(_write(tmp_path / "goodcsv.yaml", raw))
    calls = []
    real = resmasknet.data.load_data
    monkeypatch.setattr(resmasknet.data, "load_data", lambda spec, **kw: calls.append(spec) or real(spec, **kw))
    monkeypatch.setattr("ablate.trial._DATA_CACHE", {})
    check_data(s)
    assert _load_data(str(csv)) is not None and calls == [str(csv)]  # the trials reuse what the check loaded


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_duplicate_keys_are_refused_naming_the_key_and_both_lines(tmp_path, capsys):
    study = tmp_path / "dup.yaml"
    study.write_text(textwrap.dedent("""\
        name: dup
        base:
          model: resmasknet_tiny
          data: "generated:n=140,seed=0"
        variants:
          masks_on: {}
          masks_off: {masks.enabled: false}
          masks_on: {masks.activation: sigmoid}
        baseline: masks_off
        seeds: [0]
        """))
    out = tmp_path / "out"
    assert main(["run", str(study), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {study}: duplicate key 'masks_on' (lines 6 and 8)"], err
    assert not out.exists()
    # at the top level and inside a flow mapping too; keys merged in with `<<:` may still be overridden
    study.write_text("name: a\nname: b\n")
    with pytest.raises(StudyError, match=r"dup.yaml: duplicate key 'name' \(lines 1 and 2\)"):
        load_study(study)
    study.write_text("name: a\nbase: {model: resmasknet_tiny, model: resmasknet_tiny}\n")
    with pytest.raises(StudyError, match=r"duplicate key 'model' \(lines 2 and 2\)"):
        load_study(study)
    from ablate.study import read_yaml

    study.write_text("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n")
    assert read_yaml(study) == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}


# ---- (e) workers ------------------------------------------------------------------------------------------
def test_worker_killed_by_signal_is_named(caplog):
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    ok = subprocess.Popen([sys.executable, "-c", "pass"])
    os.kill(procs[1].pid, signal.SIGKILL)
    procs[0].terminate()
    with caplog.at_level("ERROR", logger="ablate.runner"):
        rc = wait_workers([ok, procs[1], procs[0]])
    # each worker that did not exit cleanly is named with its signal; the exit status is the highest of
    # the workers' (128 + signal for a killed one)
    assert f"worker 2 (pid {procs[1].pid}) was killed by SIGKILL" in caplog.text
    assert f"worker 3 (pid {procs[0].pid}) was killed by SIGTERM" in caplog.text
    assert "worker 1 " not in caplog.text
    assert rc == max(128 + signal.SIGKILL, 128 + signal.SIGTERM)


@pytest.mark.parametrize("use_prctl", [True, False], ids=["prctl", "thread"])
def test_worker_dies_with_its_parent(tmp_path, use_prctl):
    pidfile = tmp_path / "child.pid"
    child = textwrap.dedent(f"""
        import os, sys, time
        from ablate.runner import die_with_parent
        die_with_parent(int(sys.argv[1]), use_prctl={use_prctl}, poll_s=0.1)
        open({str(pidfile)!r}, "w").write(str(os.getpid()))
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c",
                               "import os, subprocess, sys, time; "
                               f"subprocess.Popen([sys.executable, '-c', {child!r}, str(os.getpid())]); "
                               "time.sleep(60)"])
    try:
        deadline = time.time() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert time.time() < deadline, "the child did not start"
            time.sleep(0.1)
        pid = int(pidfile.read_text())
        parent.kill()
        parent.wait()
        deadline = time.time() + 10
        # the worker stops within seconds of its parent's death
        while _alive(pid):
            assert time.time() < deadline, "the worker outlived its parent"
            time.sleep(0.1)
    finally:
        if parent.poll() is None:
            parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False


def test_workers_per_gpu_assignment():
    # N per GPU: N x GPUs workers, devices round-robin
    assert plan_devices(1, "cuda", 2, workers_per_gpu=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    # --workers on CUDA spreads over the GPUs; a GPU asked for by name keeps them all there
    assert plan_devices(3, "cuda", 2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert plan_devices(2, "cuda:1", 2) == ["cuda:1", "cuda:1"]
    # without CUDA, --workers-per-gpu is ignored: --workers on the CPU
    assert plan_devices(2, "cpu", 0, workers_per_gpu=3) == ["cpu", "cpu"]
    # a CPU device is kept even where GPUs exist
    assert plan_devices(2, "cpu", 4) == ["cpu", "cpu"]
    with pytest.raises(ValueError, match="workers-per-gpu"):
        plan_devices(1, "cuda", 1, workers_per_gpu=0)


def test_spawned_worker_environment(monkeypatch):
    from ablate.runner import worker_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    # spawned workers get OMP_WAIT_POLICY=PASSIVE, unless the user set it
    assert worker_env(2)["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert worker_env(2)["OMP_WAIT_POLICY"] == "ACTIVE"
    assert worker_env(2, parent_pid=7)["ABLATE_PARENT_PID"] == "7"


# ---- classification and import side effects --------------------------------------------------------------
@pytest.mark.parametrize("exc, kind", [
    (OSError(errno.ENOSPC, "No space left on device"), "infra"),
    (PermissionError(errno.EACCES, "Permission denied"), "infra"),
    (RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1917376 vs 1917272"), "infra"),
    (FileNotFoundError(errno.ENOENT, "no such data file"), "trial"),
    (ValueError("lr=-1 must be a number"), "trial"),
    (FloatingPointError("nan"), "trial"),
    (KeyboardInterrupt(), "killed"),
    (faults.Terminated(signal.SIGTERM), "killed"),
])
def test_classify(exc, kind):
    # storage and I/O errors are infrastructure; a trial's own errors are the trial's; interrupts are kills
    assert faults.classify(exc)[0] == kind


def test_classify_looks_at_causes():
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("MLflow could not log") from inner
    except RuntimeError as exc:
        # an error caused by a full disk is infrastructure too
        assert faults.classify(exc)[0] == "infra"


def test_imports_change_no_global_state():
    code = ("import os, optuna; before = optuna.logging.get_verbosity(); "
            "import ablate.tracking, ablate.runner; "
            "print(json.dumps([os.environ.get('MLFLOW_ENABLE_ASYNC_LOGGING'), "
            "optuna.logging.get_verbosity() == before]))")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_ENABLE_ASYNC_LOGGING", "GIT_PYTHON_REFRESH")}
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True, env=env,
                         check=True).stdout
    # importing the runner and the tracker sets no environment variable and leaves Optuna's verbosity alone
    assert json.loads(out.strip().splitlines()[-1]) == [None, True]


def test_sigterm_inside_a_finaliser_is_not_lost():
    # a SIGTERM handled while the garbage collector runs a finaliser or weakref callback (SQLAlchemy's registry
    # has some) raises where Python ignores exceptions: without re-delivery the run carried on and exited 0
    code = """
import os, signal, time
from ablate.faults import Terminated, raise_on_sigterm
raise_on_sigterm()
class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100000):
            pass  # the handler runs here, inside the finaliser
try:
    obj = Finalised()
    del obj
    for _ in range(100000):
        pass
    time.sleep(0.5)
    print("lost")
except Terminated as exc:
    print("terminated", exc.signum)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"terminated {int(signal.SIGTERM)}", (out.stdout, out.stderr)
    assert "Exception ignored" not in out.stderr


def test_sigterm_marks_trial_and_parent_run_killed(tmp_path, tracking):
    raw_train = {"epochs": 3, "max_train_batches": 30}
    study = write_study(tmp_path, "sigterm")
    raw = yaml.safe_load(study.read_text())
    raw["base"]["train"].update(raw_train)
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    s = session(study, out, tracking)
    proc = subprocess.Popen([sys.executable, "-m", "ablate", "run", str(study), "--out", str(out), "--tracking-uri",
                             tracking, "--no-progress", "--no-summary"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_running_trial(s)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    # a terminated run exits 128 + SIGTERM and says so
    assert proc.returncode == 128 + signal.SIGTERM and "terminated by SIGTERM" in err, err
    failed = [t for t in load_optuna_study(s).get_trials() if t.state.name == "FAIL"]
    # its trial is failed as killed (no attempt used), its MLflow run and the parent run are KILLED
    assert len(failed) == 1 and failed[0].user_attrs["fail_kind"] == "killed"
    assert s.tracker().get_status(failed[0].user_attrs["mlflow_run_id"]) == "KILLED"
    st = status(s)
    assert st["parent_run"]["status"] == "KILLED" and st["attempts"] == {}


def test_study_lock_nests_within_a_thread_and_excludes_others(tmp_path):
    import threading

    from ablate.storage import study_lock

    journal = str(tmp_path / "optuna.journal")
    order = []

    def other():
        with study_lock(journal, "x"):
            order.append("other")

    with study_lock(journal, "x"):
        # the same thread may take it again (however the path is spelled) without deadlocking ...
        with study_lock(str(tmp_path / ".." / tmp_path.name / "optuna.journal"), "x"):
            order.append("nested")
        t = threading.Thread(target=other)
        t.start()
        t.join(0.5)
        # ... while another thread waits until it is released
        assert order == ["nested"]
    t.join(5)
    assert order == ["nested", "other"]


# ---- workers in sessions of their own --------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _state(pid: int) -> str:
    """The kernel's one-letter state of `pid` ("T": stopped), "gone" once it has exited."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return "gone"


def _wait_until(check, what: str, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists() or not hasattr(signal, "SIGTSTP"), reason="needs Linux")
@pytest.mark.parametrize("sessions", ["own", "same"])
def test_workers_run_in_sessions_of_their_own_and_follow_ctrl_z_and_ctrl_c(tmp_path, tracking, sessions):
    raw = tiny_grid_study(f"sessions_{sessions}")
    # trials long enough (7 batches x 100 epochs each) to be running still when Ctrl-Z and Ctrl-C arrive on a fast
    # CPU: 5 epochs finished the whole grid before the SIGINT on an AVX-512 Xeon; the test stops them anyway
    raw["base"]["train"].update({"epochs": 100, "max_train_batches": 60})
    raw["base"]["tta"] = False
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    s = session(study, out, tracking)
    proc = subprocess.Popen([sys.executable, "-m", "ablate", "run", str(study), "--out", str(out), "--tracking-uri",
                             tracking, "--no-progress", "--no-summary", "--workers", "2", "--worker-sessions",
                             sessions], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_running_trial(s)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        # "own": each worker leads a session of its own (the kernel's test: getsid); "same": the run's session
        if sessions == "own":
            assert all(os.getsid(w) == w != os.getsid(proc.pid) for w in workers)
            # Ctrl-Z reaches only the run (the terminal's process group), which stops its workers too ...
            proc.send_signal(signal.SIGTSTP)
            _wait_until(lambda: all(_state(p) == "T" for p in (proc.pid, *workers)), "the run and workers stop")
            # ... and fg continues them all
            proc.send_signal(signal.SIGCONT)
            _wait_until(lambda: all(_state(p) not in ("T", "gone") for p in (proc.pid, *workers)),
                        "the run and workers continue")
        else:
            assert all(os.getsid(w) == os.getsid(proc.pid) for w in workers)
        # Ctrl-C reaches only the run too (a terminal sends SIGINT to its process group): the run stops its workers
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert all(_state(w) == "gone" for w in workers)
    # every trial that was running is failed as killed (no attempt used); nothing is left RUNNING
    trials = load_optuna_study(s).get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.user_attrs["fail_kind"] == "killed" for t in failed)


def test_an_interrupt_between_popping_a_trial_and_running_it_marks_it_killed(tmp_path, tracking, monkeypatch,
                                                                              fast_trials):
    import ablate.runner

    study = write_study(tmp_path, "interrupt_window")
    out = tmp_path / "out"
    assert run(study, out, tracking, "--workers", "0") == 0  # prepared: two cells waiting
    s = session(study, out, tracking)

    def interrupted(storage, trial_id):  # Ctrl-C lands after ask() and before run_trial takes over
        raise KeyboardInterrupt

    real_claim = ablate.runner.claim
    monkeypatch.setattr(ablate.runner, "claim", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ablate.runner.work(s)
    trials = load_optuna_study(s).get_trials()
    # the popped trial is failed as killed (no attempt used), not left RUNNING for a later run to call stale
    assert [t.state.name for t in trials if t.state.name != "WAITING"] == ["FAIL"]
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.user_attrs["fail_kind"] == faults.KILLED
    # and a later run completes every cell, that one included, without using an attempt on it
    monkeypatch.setattr(ablate.runner, "claim", real_claim)
    assert run(study, out, tracking) == 0
    assert check_complete(s)["attempts"] == {}  # the killed trial used none of its cell's attempts
