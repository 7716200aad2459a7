"""Benchmarks: every number is measured and positive, the table and JSON are written, bad input is clear."""

from __future__ import annotations

import json

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


def test_bench_contended_reports_idle_busy_and_ratio():
    import pytest

    from resmasknet.bench import bench_contended, format_contended

    row = bench_contended("resmasknet_tiny", batch_size=4, steps=1, warmup=1, seconds=1.0, rounds=1, device="cpu")
    # both throughputs are measured in the same run, and the ratio is contended / idle (speeds not asserted)
    assert row["train_idle_img_s"] > 0 and row["train_contended_img_s"] > 0
    assert row["contended_ratio"] == pytest.approx(row["train_contended_img_s"] / row["train_idle_img_s"])
    assert row["omp_wait_policy"] and row["threads"] >= 1
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
