"""Benchmarks: every number is measured and positive, the table and JSON are written, bad input is clear."""

from __future__ import annotations

import json

import pytest

from resmasknet.bench import bench_model, format_table

QUICK = {"batch_size": 4, "steps": 1, "warmup": 1, "seconds": 1.0, "device": "cpu"}


def test_bench_model_row():
    row = bench_model("resmasknet_tiny", **QUICK)
    # throughputs of the optimised and plain paths, the data pipeline and memory are all reported
    for key in ("train_img_s", "train_plain_img_s", "eval_img_s", "eval_plain_img_s", "data_img_s",
                "data_batches_s", "train_speedup", "eval_speedup"):
        assert row[key] > 0, key
    for key in ("train_peak_mb", "eval_peak_mb"):
        assert row[key] >= 0, key
    # the row names the model and its input, and the table shows it
    assert row["model"] == "resmasknet_tiny" and row["input"] == "48x48x1"
    assert "resmasknet_tiny" in format_table([row])
    assert row["rounds"] == 2  # each path measured twice, alternating which goes first


def test_bench_rejects_bad_settings():
    import pytest

    with pytest.raises(ValueError, match="rounds=0"):
        bench_model("resmasknet_tiny", **QUICK, rounds=0)
    with pytest.raises(ValueError, match="batch_size=1"):
        bench_model("resmasknet_tiny", **{**QUICK, "batch_size": 1})


def test_cli_bench(tmp_path, capsys):
    from ablate.cli import main

    out = tmp_path / "b.json"
    rc = main(["bench", "--model", "resmasknet_tiny", "--batch-size", "4", "--steps", "1", "--warmup", "1",
               "--seconds", "1", "--device", "cpu", "--no-plain", "--json", str(out),
               "--set", "mask1.enabled=false"])
    # a table is printed and the JSON holds one row per model
    assert rc == 0 and "train img/s" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["resmasknet_tiny"] and "train_plain_img_s" not in rows[0]
    # an unknown model is a clear error naming it
    rc = main(["bench", "--model", "resmasknet_huge"])
    assert rc == 2 and "resmasknet_huge" in capsys.readouterr().err


def test_cpu_prediction_is_timed_in_fp32_where_training_is_timed_in_bf16():
    import pytest
    import torch

    from resmasknet.bench import scoring_img_s
    from resmasknet.registry import create_model
    from resmasknet.runtime import cpu_bf16_support

    if not cpu_bf16_support()[0]:
        row = bench_model("resmasknet_tiny", **QUICK, plain=False, rounds=1, cpu_bf16=True)
        assert not row["bf16"] and "eval_fp32_img_s" not in row and scoring_img_s(row) == row["eval_img_s"]
        pytest.skip("this CPU has no bf16 units: the bench measured fp32 only")
    net = create_model("resmasknet_tiny")
    seen = set()  # (grad enabled, CPU autocast enabled) at each forward call
    net.register_forward_pre_hook(lambda m, a: seen.add((torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))))
    row = bench_model(net, **QUICK, plain=False, rounds=1, cpu_bf16=True)
    # training and the bf16 inference path ran under autocast; the fp32 path (what resmasknet.evaluate runs on
    # a CPU) without it, and the projection scores at that rate
    assert row["bf16"] and seen == {(True, True), (False, True), (False, False)}
    assert row["eval_fp32_img_s"] > 0 and scoring_img_s(row) == row["eval_fp32_img_s"]
    # without bf16 nothing runs under autocast and there is one eval rate
    seen.clear()
    fp32 = bench_model(net, **QUICK, plain=False, rounds=1)
    assert seen == {(True, False), (False, False)} and "eval_fp32_img_s" not in fp32
    assert scoring_img_s(fp32) == fp32["eval_img_s"]


# ---- other workers beside ------------------------------------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_other_workers_train_beside_and_are_stopped():
    import os
    import time

    import pytest

    from resmasknet.bench import other_workers
    from resmasknet.registry import create_model

    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("needs Linux /proc to read a process's CPU time")
    with other_workers(create_model("resmasknet_tiny"), 2, batch_size=4, device="cpu", threads=1) as procs:
        # two separate processes, both already past their first training step, both using CPU time
        assert len(procs) == 2 and all(p.poll() is None and p.pid != os.getpid() for p in procs)
        before = [_cpu_seconds(p.pid) for p in procs]
        time.sleep(1.0)
        assert all(_cpu_seconds(p.pid) > b for p, b in zip(procs, before))
    assert all(p.poll() is not None for p in procs)


def test_a_measured_worker_trains_through_the_whole_window(monkeypatch, capsys):
    """The companion's protocol, with a step of known length: after "go 0.35" it trains until the window has
    passed (0.1 s steps: 4 of them, the last ending after 0.35 s) and answers the steps and the time to the
    end of the last one; "stop" ends it."""
    import io
    import time

    from resmasknet import bench

    monkeypatch.setattr(bench, "_build_companion", lambda argv: lambda: time.sleep(0.1))
    monkeypatch.setattr("sys.stdin", io.StringIO("go 0.35\ngo 0.05\nstop\ngo 1\n"))
    bench._timed_companion_main(["1", "config", "4", "cpu", "0", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "ready" and len(lines) == 3  # nothing after "stop"
    steps, elapsed = lines[1].split()
    assert steps == "4" and 0.4 <= float(elapsed) < 0.6
    assert lines[2].split()[0] == "1"  # a window shorter than a step still measures one


def test_worker_team_sums_the_throughputs_of_its_processes():
    import io

    from resmasknet.bench import WorkerTeam

    class Fake:  # two processes that answered 3 steps in 1.5 s and 2 steps in 0.5 s
        def __init__(self, answer):
            self.stdin, self.stdout = io.StringIO(), io.StringIO(answer)

    procs = [Fake("3 1.5\n"), Fake("2 0.5\n")]
    # batch 8: 8 * 3 / 1.5 + 8 * 2 / 0.5 = 16 + 32 img/s, and each was told the window
    assert WorkerTeam(procs, 8).img_s(2.0) == pytest.approx(48.0)
    assert all(p.stdin.getvalue() == "go 2.0\n" for p in procs)
    gone = Fake("")
    gone.wait = lambda: 1
    with pytest.raises(RuntimeError, match="exited with code 1"):
        WorkerTeam([gone], 8).img_s(1.0)


def test_worker_team_trains_in_separate_processes_at_once():
    import os
    import time

    from resmasknet.bench import worker_team
    from resmasknet.registry import create_model

    if not os.path.exists(f"/proc/{os.getpid()}/stat"):
        pytest.skip("needs Linux /proc to read a process's CPU time")
    with worker_team(create_model("resmasknet_tiny"), 2, batch_size=4, device="cpu", threads=1, warmup=1) as team:
        procs = team.procs
        assert len(procs) == 2 and all(p.poll() is None and p.pid != os.getpid() for p in procs)
        # each in a session of its own by default, as `ablate run` starts its workers
        assert all(os.getsid(p.pid) == p.pid for p in procs)
        before = [_cpu_seconds(p.pid) for p in procs]
        time.sleep(0.5)  # waiting between windows, they do not train
        idle = [_cpu_seconds(p.pid) - b for p, b in zip(procs, before)]
        t0 = time.perf_counter()
        rate = team.img_s(1.0)
        wall = time.perf_counter() - t0
        used = [_cpu_seconds(p.pid) - b - i for p, b, i in zip(procs, before, idle)]
        assert rate > 0 and wall >= 1.0
        assert all(i < 0.2 for i in idle), idle
        # both trained during the window: each used a good part of a core through it
        assert all(u > 0.3 for u in used), used
    assert all(p.poll() is not None for p in procs)
    with worker_team(create_model("resmasknet_tiny"), 2, batch_size=4, device="cpu", threads=1, warmup=1,
                     sessions="same") as team:  # `ablate run --worker-sessions same`: this session
        assert all(os.getsid(p.pid) == os.getsid(0) for p in team.procs)
    with pytest.raises(ValueError, match="sessions='x'"), worker_team(create_model("resmasknet_tiny"), 2,
                                                                      batch_size=4, sessions="x"):
        pass


@pytest.mark.parametrize("kind", ["busy core", "other worker", "measured worker"])
def test_helper_processes_stop_by_themselves_when_the_bench_is_killed(kind):
    """A bench killed with SIGKILL runs no cleanup: its helper processes must not spin on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import time

    code = {"busy core": "from resmasknet.bench import busy_core as c; ctx = c(-1)",
            "other worker": "from resmasknet.bench import other_workers as w; from resmasknet.registry import "
                            "create_model as m; ctx = w(m('resmasknet_tiny'), 1, batch_size=4, device='cpu', "
                            "threads=1)",
            "measured worker": "from resmasknet.bench import worker_team as w; from resmasknet.registry import "
                               "create_model as m; ctx = w(m('resmasknet_tiny'), 1, batch_size=4, device='cpu')"}[kind]
    if kind == "measured worker":  # the team's processes stand for it in the block below
        code += ("\nimport contextlib\nteam_ctx = ctx\n@contextlib.contextmanager\ndef procs():\n"
                 "    with team_ctx as team:\n        yield team.procs\nctx = procs()")
    script = (f"import os, sys, time\n{code}\nwith ctx as h:\n"
              "    pids = [p.pid for p in h] if isinstance(h, list) else [h.process.pid]\n"
              "    print(*pids, flush=True)\n    time.sleep(60)\n")
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        helper = int(bench.stdout.readline().split()[0])
        os.kill(helper, 0)  # running
        bench.send_signal(signal.SIGKILL)
        bench.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with open(f"/proc/{helper}/status") as fh:  # gone, or a zombie waiting for init to reap it
                    if any(line.startswith("State:") and "Z" in line for line in fh):
                        break
            except FileNotFoundError:
                break
            time.sleep(0.2)
        else:
            os.kill(helper, signal.SIGKILL)
            raise AssertionError(f"the {kind} process {helper} outlived its killed bench by 30 s")
    finally:
        bench.kill()
        bench.stdout.close()


# ---- one busy core -----------------------------------------------------------------------------------------
def test_busy_core_spins_and_is_stopped():
    import os
    import time

    from resmasknet.bench import busy_core

    with busy_core(-1) as busy:
        start = busy.cpu_seconds()
        time.sleep(0.5)
        used = busy.cpu_seconds()
        pid = busy.process.pid
        # the competitor is a separate, running process that uses CPU time (where /proc tells us)
        assert pid != os.getpid() and busy.process.poll() is None
        if start is not None and used is not None:
            assert used > start
    # leaving the block kills it
    assert busy.process.poll() is not None


def test_busy_core_runs_in_a_session_of_its_own_or_in_this_one():
    import os
    from pathlib import Path

    from resmasknet.bench import busy_core

    def autogroup(pid: int | str) -> str | None:  # the kernel's scheduling group, where autogroup applies
        path = Path(f"/proc/{pid}/autogroup")  # empty for a process in a cpu cgroup of its own (a CI job)
        return (path.read_text().split() or [None])[0] if path.exists() else None

    # "own" (the default): a new session, led by the busy process itself, as another terminal's program runs
    with busy_core(-1) as busy:
        pid = busy.process.pid
        assert busy.session == "own" and os.getsid(pid) == pid != os.getsid(0)
        if autogroup("self") is not None:  # a new session is a new autogroup
            assert autogroup(pid) != autogroup("self")
    # "same": this session, and so this autogroup
    with busy_core(-1, "same") as busy:
        pid = busy.process.pid
        assert busy.session == "same" and os.getsid(pid) == os.getsid(0)
        assert autogroup(pid) == autogroup("self")
    with pytest.raises(ValueError, match="session='other'"), busy_core(-1, "other"):
        pass


def test_sched_autogroup_reads_the_kernel_setting(tmp_path):
    from resmasknet.runtime import sched_autogroup

    (tmp_path / "on").write_text("1\n")
    (tmp_path / "off").write_text("0\n")
    (tmp_path / "group").write_text("/autogroup-85 nice 0\n")  # /proc/self/autogroup in the root cpu cgroup
    (tmp_path / "cgroup").write_text("")  # what the kernel shows a process in a cpu cgroup of its own
    assert sched_autogroup(tmp_path / "on", tmp_path / "group") is True
    assert sched_autogroup(tmp_path / "off", tmp_path / "group") is False
    assert sched_autogroup(tmp_path / "on", tmp_path / "cgroup") is False  # on, but not for this process
    assert sched_autogroup(tmp_path / "missing", tmp_path / "group") is None
    assert sched_autogroup(tmp_path / "on", tmp_path / "missing") is True  # a kernel without the task file


def test_new_session_says_which_child_gets_a_session_of_its_own():
    import os

    from resmasknet.runtime import new_session

    assert new_session("own") is (os.name == "posix") and new_session("same") is False
    with pytest.raises(ValueError, match="busy_session='mine': one of own, same"):
        new_session("mine", "busy_session")


def test_bench_contended_reports_idle_busy_and_ratio():
    import pytest

    from resmasknet.bench import bench_contended, format_contended

    row = bench_contended("resmasknet_tiny", batch_size=4, steps=1, warmup=1, seconds=1.0, rounds=1, device="cpu")
    # both throughputs are measured in the same run, and the ratio is contended / idle (speeds not asserted)
    assert row["train_idle_img_s"] > 0 and row["train_contended_img_s"] > 0
    assert row["contended_ratio"] == pytest.approx(row["train_contended_img_s"] / row["train_idle_img_s"])
    assert row["omp_wait_policy"] and row["threads"] >= 1
    assert row["busy_session"] == "own"  # by default the busy process is another session's, as another program
    # the table shows the model and the ratio
    text = format_contended([row])
    assert "resmasknet_tiny" in text and "ratio" in text and "1 thread img/s" in text
    # one thread on the idle machine, the reference for a busy core, is measured with more than one thread,
    # and the thread count is given back afterwards; with one thread there is nothing to compare
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = bench_contended("resmasknet_tiny", batch_size=4, steps=1, warmup=1, seconds=1.0, rounds=1, device="cpu")
        assert two["threads"] == 2 and torch.get_num_threads() == 2
        assert two["train_one_thread_img_s"] > 0
        assert two["one_thread_ratio"] == pytest.approx(two["train_one_thread_img_s"] / two["train_idle_img_s"])
        torch.set_num_threads(1)
        one = bench_contended("resmasknet_tiny", batch_size=4, steps=1, warmup=1, seconds=1.0, rounds=1, device="cpu")
        assert one["train_one_thread_img_s"] is None and one["one_thread_ratio"] is None
        assert format_contended([one]).splitlines()[1].split()[6:8] == ["-", "-"]  # 1 thread, its ratio
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="rounds=0"):
        bench_contended("resmasknet_tiny", batch_size=4, rounds=0)


def test_cli_bench_contended(tmp_path, capsys):
    from ablate.cli import main

    out = tmp_path / "c.json"
    rc = main(["bench", "--contended", "--model", "resmasknet_tiny", "--batch-size", "4", "--steps", "1",
               "--warmup", "1", "--rounds", "1", "--seconds", "1", "--device", "cpu", "--json", str(out)])
    # the contended table is printed and the JSON holds idle, contended and the ratio
    assert rc == 0 and "busy-core img/s" in capsys.readouterr().out
    row = json.loads(out.read_text())[0]
    assert {"train_idle_img_s", "train_contended_img_s", "contended_ratio"} <= row.keys()


CONTENDED_QUICK = ["--model", "resmasknet_tiny", "--batch-size", "4", "--steps", "1", "--warmup", "1", "--rounds",
                   "1", "--seconds", "1", "--device", "cpu"]


def contended_cli(tmp_path, capsys, *extra: str) -> tuple[int, str, list[dict]]:
    """`ablate bench --contended` on the tiny preset with `extra` flags: (exit code, stdout, JSON rows); torch's
    thread count is given back afterwards."""
    import torch

    from ablate.cli import main

    before = torch.get_num_threads()
    out = tmp_path / "c.json"
    try:
        rc = main(["bench", "--contended", *CONTENDED_QUICK, *extra, "--json", str(out)])
        text = capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
    return rc, text, json.loads(out.read_text()) if rc == 0 else []


def test_cli_bench_contended_compares_thread_counts_in_one_run(tmp_path, capsys):

    from ablate.cli import main
    from resmasknet.bench import best_idle, format_contended

    quick = CONTENDED_QUICK
    rc, text, rows = contended_cli(tmp_path, capsys, "--threads", "1", "3")
    # one row per thread count, each measured at that count (three threads on two cores included)
    assert rc == 0 and [r["threads"] for r in rows] == [1, 3]
    # the extra column: busy-core img/s over the best idle img/s of the model at any count, by hand
    best = max(r["train_idle_img_s"] for r in rows)
    assert best_idle(rows) == {"resmasknet_tiny": best} and "busy / best idle" in text
    table = format_contended(rows).splitlines()
    for line, r in zip(table[1:3], rows):
        assert line.split()[-1] == f"{r['train_contended_img_s'] / best:.2f}"
    # a single count keeps the old table; several counts need --contended
    assert "best idle" not in format_contended(rows[:1])
    assert main(["bench", *quick, "--threads", "1", "2"]) == 2
    assert "several with --contended" in capsys.readouterr().err


def test_cli_bench_contended_puts_the_busy_process_in_either_session(tmp_path, capsys):

    from ablate.cli import main
    from resmasknet.bench import format_contended
    from resmasknet.runtime import sched_autogroup

    quick = [*CONTENDED_QUICK, "--threads", "1"]
    rc, text, rows = contended_cli(tmp_path, capsys, "--threads", "1", "--busy-session", "own", "same")
    # one row per session, in the order given, each naming the kernel's autogroup setting
    assert rc == 0 and [r["busy_session"] for r in rows] == ["own", "same"]
    assert all(r["sched_autogroup"] == sched_autogroup() for r in rows)
    # the table gains a column only when both were measured, and its footnote says where the process ran
    head = text.splitlines()[0]
    assert "busy session" in head and [line.split()[2] for line in text.splitlines()[1:3]] == ["own", "same"]
    assert "in a session of its own" in text and "in the bench's session" in text
    single = format_contended(rows[1:])
    assert "busy session" not in single.splitlines()[0] and "in the bench's session" in single
    assert "in a session of its own" not in single
    # the default is a session of its own; a bad choice is refused by argparse
    with pytest.raises(SystemExit):
        main(["bench", "--contended", *quick, "--busy-session", "elsewhere"])


def test_cli_bench_contended_measures_a_studys_workers_together(tmp_path, capsys):

    from ablate.cli import main
    from resmasknet.bench import format_contended

    quick = CONTENDED_QUICK
    rc, text, rows = contended_cli(tmp_path, capsys, "--threads", "1", "--workers", "1", "2")
    # one row per worker count; two one-thread processes measured together have no one-thread reference
    assert rc == 0 and [(r["threads"], r["workers"]) for r in rows] == [(1, 1), (1, 2)]
    assert [r["worker_sessions"] for r in rows] == [None, "own"]  # own sessions by default, as `ablate run`
    assert "each in a session of its own (as `ablate run` starts them)" in text
    assert rows[1]["train_one_thread_img_s"] is None
    assert rows[1]["contended_ratio"] == pytest.approx(rows[1]["train_contended_img_s"] / rows[1]["train_idle_img_s"])
    # the table gains a workers column only when a row has several
    head = text.splitlines()[0].split()
    assert head[:3] == ["model", "threads", "workers"] and "workers: that many training processes" in text
    assert "workers" not in format_contended(rows[:1]).splitlines()[0]
    # both kinds of worker sessions in one run: one row each for the team, a column to tell them apart
    rc, text, rows = contended_cli(tmp_path, capsys, "--threads", "1", "--workers", "2", "--worker-sessions", "own",
                                   "same")
    assert rc == 0 and [r["worker_sessions"] for r in rows] == ["own", "same"]
    assert text.splitlines()[0].split()[:5] == ["model", "threads", "workers", "worker", "sessions"]
    assert [line.split()[3] for line in text.splitlines()[1:3]] == ["own", "same"]
    # several worker counts need --contended, and a count must be positive
    assert main(["bench", *quick, "--workers", "1", "2"]) == 2
    assert main(["bench", "--contended", *quick, "--workers", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
