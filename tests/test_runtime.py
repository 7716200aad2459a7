"""resmasknet.runtime: CPU feature detection (bf16 units), the OpenMP wait policy, and what training does with them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from resmasknet import runtime

X86_AVX512_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512vl avx512_bf16 avx512_vnni
"""
X86_AMX = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_tile amx_bf16 amx_int8\n"
ZEN3_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7R13\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
# AVX-512 without bf16 units (Skylake/Cascade Lake): torch's capability says AVX512, the CPU has no bf16 units
SKYLAKE = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sha1 sha2 crc32 atomics bf16 i8mm\n"


@pytest.fixture
def cpuinfo(tmp_path):
    def write(text: str) -> Path:
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        return path

    return write


def test_cpu_has_bf16_reads_the_flags(cpuinfo):
    # AVX512-BF16, AMX-BF16 and Arm BF16 are bf16 units
    assert runtime.cpu_has_bf16(cpuinfo(X86_AVX512_BF16))
    assert runtime.cpu_has_bf16(cpuinfo(X86_AMX))
    assert runtime.cpu_has_bf16(cpuinfo(ARM_BF16))
    # AVX2 only (Zen 3) and AVX-512 without bf16 are not
    assert not runtime.cpu_has_bf16(cpuinfo(ZEN3_AVX2))
    assert not runtime.cpu_has_bf16(cpuinfo(SKYLAKE))
    # an unreadable cpuinfo counts as "no bf16 units", with the reason saying so
    ok, why = runtime.cpu_bf16_support("/nonexistent/cpuinfo")
    assert not ok and "cannot read" in why
    # the reason names the flag found, or the flags missing and torch's CPU capability
    assert runtime.cpu_bf16_support(cpuinfo(X86_AVX512_BF16))[1] == "CPU flag avx512_bf16"
    assert "capability" in runtime.cpu_bf16_support(cpuinfo(ZEN3_AVX2))[1]


def test_cpu_identity_takes_the_first_cpus_name_family_and_model(cpuinfo):
    two = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC 7R13\n\n"
           "processor\t: 1\ncpu family\t: 99\nmodel\t\t: 9\nmodel name\t: other\n")
    # "model" and "model name" are told apart, and the first processor's lines win
    assert runtime.cpu_identity(cpuinfo(two)) == {"name": "AMD EPYC 7R13", "family": "25", "model": "1"}
    # what the file does not say (Arm has no family or model name) is None, and so is an unreadable file
    assert runtime.cpu_identity(cpuinfo(ARM_BF16)) == {"name": None, "family": None, "model": None}
    assert runtime.cpu_identity("/nonexistent/cpuinfo") == {"name": None, "family": None, "model": None}


def test_training_falls_back_to_fp32_without_bf16_units(cpuinfo, monkeypatch, caplog, tmp_path):
    import torch

    from resmasknet import create_model
    from resmasknet.data import load_data
    from resmasknet.train import CPU_RECIPE, train, use_bf16

    cfg = CPU_RECIPE.replace(epochs=1, batch_size=16, max_train_batches=1, limit=32, eval_batch_size=32,
                             cpu_bf16=True)
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "CPUINFO", str(cpuinfo(X86_AVX512_BF16)))
    # a CPU with bf16 units trains under bf16 autocast when asked; without the request it does not
    assert use_bf16(cfg, cpu) and not use_bf16(cfg.replace(cpu_bf16=False), cpu)
    monkeypatch.setattr(runtime, "CPUINFO", str(cpuinfo(ZEN3_AVX2)))
    with caplog.at_level(logging.WARNING, logger="resmasknet.train"):
        res = train(create_model("resmasknet_tiny", seed=0), load_data("generated:n=140,seed=0"), cfg,
                    out_dir=tmp_path, progress=False, device="cpu")
    # without bf16 units the request is kept, one line says why, and the run trains in fp32 and says so
    assert res.config.cpu_bf16 is True and res.bf16 is False and res.history[-1]["bf16"] is False
    assert [r.message for r in caplog.records if "bf16" in r.message][0].count("fp32") == 1
    assert len([r for r in caplog.records if "bf16" in r.message]) == 1


def test_configure_threads_sets_passive_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    # unset: PASSIVE
    assert runtime.configure_threads() == "PASSIVE" and os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    # the user's own choice is kept
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert runtime.configure_threads() == "ACTIVE" and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_configure_threads_before_and_after_torch_loads():
    code = ("import sys, logging; logging.basicConfig()\n"
            "from resmasknet import runtime\n"
            "loaded = 'torch' in sys.modules\n"
            "runtime.configure_threads()\n"
            "print(loaded)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    before = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # importing resmasknet.runtime does not load torch, so the policy is set in time: no warning
    assert before.stdout.strip() == "False" and "spin" not in before.stderr
    after = subprocess.run([sys.executable, "-c", "import torch\n" + code], capture_output=True, text=True,
                           env=env, check=True)
    # called after torch loaded, it warns that this process keeps its spinning threads
    assert "torch was imported before" in after.stderr


def test_ablate_main_sets_the_policy_before_torch(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import os, sys\nfrom ablate.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # the `ablate` command sets OMP_WAIT_POLICY=PASSIVE first thing
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"


def test_package_exports_the_entry_points():
    import resmasknet
    import resmasknet.evaluate  # noqa: F401  (importing the module must not hide the function)
    import resmasknet.train  # noqa: F401
    from resmasknet.data import FaceData, load_data
    from resmasknet.evaluate import evaluate
    from resmasknet.train import train

    # train, evaluate, load_data and FaceData are top-level names, the same objects as in their modules
    assert resmasknet.train is train and resmasknet.evaluate is evaluate
    assert resmasknet.load_data is load_data and resmasknet.FaceData is FaceData
    assert {"train", "evaluate", "load_data", "FaceData"} <= set(resmasknet.__all__)
    # every name in __all__ resolves
    assert all(getattr(resmasknet, name) is not None for name in resmasknet.__all__)


# ---- a busy machine -------------------------------------------------------------------------------------


@pytest.mark.machine_load
def test_cpu_busy_seconds_reads_proc_stat_by_hand(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 1000 50 3 2 10 7 0\ncpu0 50 2 10 500 25 1 1 5 3 0\nintr 1 2 3\n")
    # busy = user + nice + system + irq + softirq + steal = 140 ticks; idle and iowait are not busy, and guest
    # time is already inside user
    assert runtime._cpu_busy_seconds(stat) == pytest.approx(140 / os.sysconf("SC_CLK_TCK"))
    stat.write_text("intr 1 2 3\n")
    assert runtime._cpu_busy_seconds(stat) is None
    assert runtime.others_busy_cores(0.01, stat=tmp_path / "missing") is None


@pytest.mark.machine_load
def test_others_busy_cores_leaves_out_this_process(monkeypatch):
    from types import SimpleNamespace

    busy = iter([10.0, 11.5])  # all CPUs: 1.5 busy seconds over the interval
    fake = SimpleNamespace(sleep=lambda s: None, process_time=iter([2.0, 2.4]).__next__,
                           perf_counter=iter([0.0, 1.0]).__next__)
    monkeypatch.setattr(runtime, "_cpu_busy_seconds", lambda stat: next(busy))
    monkeypatch.setattr(runtime, "time", fake)
    # 0.4 of them were this process's own: the others kept (1.5 - 0.4) / 1.0 s = 1.1 cores busy
    assert runtime.others_busy_cores(1.0) == pytest.approx(1.1)


@pytest.mark.machine_load
def test_others_busy_cores_sees_a_process_spinning_on_a_core():
    if runtime._cpu_busy_seconds(runtime.PROC_STAT) is None:
        pytest.skip("no /proc/stat here")
    code = "import time\nend = time.time() + 30\nwhile time.time() < end:\n    pass\n"
    spinner = subprocess.Popen([sys.executable, "-c", code])
    try:
        runtime.time.sleep(0.3)  # past the interpreter's start
        others = runtime.others_busy_cores(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    # the spinner had most of a core (it competes with nothing heavy in a test run), this sleeping process none
    assert others is not None and others >= 0.7


@pytest.mark.parametrize(("others", "threads", "purpose", "expected"), [
    (None, 2, "train", None),                         # not measurable (no /proc/stat)
    (0.3, 2, "bench", None),                          # a quiet machine: nothing to say
    (1.0, 2, "train", "--threads 1 2` says whether --threads 1 trains faster"),
    (1.0, 1, "train", None),                          # one thread still has a free core
    (1.8, 1, "train", "shares its core with them"),   # it does not
    (1.0, 1, "bench", "not the idle machine's speed"),
    (0.6, 1, "study", "slower than `ablate bench --study` projects"),
])
def test_busy_machine_note(monkeypatch, others, threads, purpose, expected):
    monkeypatch.setattr(runtime, "others_busy_cores", lambda seconds=0.3: others)
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    note = runtime.busy_machine_note("ablate x", threads, purpose)
    if expected is None:
        assert note is None
    else:
        assert note.startswith(f"ablate x: other processes keep about {others:.1f} of 2 cores busy; ")
        assert expected in note and "\n" not in note
    with pytest.raises(ValueError, match="purpose='eval'"):
        runtime.busy_machine_note("ablate x", 1, "eval")


def test_train_and_bench_say_when_the_machine_is_busy(monkeypatch, tmp_path, capsys):
    import torch
    import yaml
    from conftest import tiny_grid_study

    from ablate.cli import main

    monkeypatch.setattr(runtime, "others_busy_cores", lambda seconds=0.3: 1.0)
    before = torch.get_num_threads()
    try:
        rc = main(["train", "--model", "resmasknet_tiny", "--data", "generated:n=70,seed=0", "--out",
                   str(tmp_path / "run"), "--epochs", "1", "--batch-size", "8", "--max-train-batches", "1",
                   "--no-progress", "--device", "cpu", "--threads", "2"])
    finally:
        torch.set_num_threads(before)
    assert rc == 0 and "ablate train: other processes keep about 1.0 of" in capsys.readouterr().err
    rc = main(["bench", "--model", "resmasknet_tiny", "--batch-size", "4", "--steps", "1", "--warmup", "1",
               "--rounds", "1", "--seconds", "0.1", "--device", "cpu", "--no-plain", "--threads", "1"])
    assert rc == 0 and "ablate bench: other processes keep about 1.0 of" in capsys.readouterr().err
    study = tmp_path / "busy.yaml"
    study.write_text(yaml.safe_dump({**tiny_grid_study("busy"), "seeds": [0]}))
    rc = main(["run", str(study), "--out", str(tmp_path / "study"), "--no-progress", "--no-summary"])
    assert rc == 0 and "ablate run: other processes keep about 1.0 of" in capsys.readouterr().err


def test_the_default_device_can_be_chosen_and_a_gpu_index_is_checked(monkeypatch):
    import pytest
    import torch

    from resmasknet.runtime import resolve_device

    monkeypatch.setenv("ABLATE_DEVICE", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine: the variable still decides
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(None) == torch.device("cpu")
    monkeypatch.delenv("ABLATE_DEVICE")
    assert resolve_device(None) == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"'cuda:1' asked for, but this machine has 1 GPU\(s\): cuda:0 .. cuda:0"):
        resolve_device("cuda:1")
    monkeypatch.setenv("ABLATE_DEVICE", "cuda:3")
    with pytest.raises(ValueError, match=r"ABLATE_DEVICE=cuda:3: device 'cuda:3' asked for"):
        resolve_device(None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("ABLATE_DEVICE", "cuda")
    with pytest.raises(ValueError, match="ABLATE_DEVICE=cuda: .*CUDA is not available here"):
        resolve_device(None)
    monkeypatch.setenv("ABLATE_DEVICE", "gpu")
    with pytest.raises(ValueError, match="ABLATE_DEVICE=gpu"):
        resolve_device(None)


def test_the_test_suite_runs_on_the_cpu_by_default():
    """make test checks the CPU's bit-for-bit guarantees on any machine (tests/conftest.py)."""
    import os

    from resmasknet.runtime import resolve_device

    assert os.environ["ABLATE_DEVICE"] == "cpu" and resolve_device(None).type == "cpu"


def test_usable_cores_follow_the_affinity_and_a_cgroup_quota(tmp_path):
    import os

    from resmasknet.runtime import usable_cores

    allowed = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    assert usable_cores(tmp_path / "absent") == allowed
    for text, expected in (("max 100000", allowed), ("50000 100000", 1), ("100000 100000", 1),
                           ("150000 100000", min(allowed, 2)), ("9900000 100000", min(allowed, 99)),
                           ("garbage", allowed)):
        cpu_max.write_text(text + "\n")
        assert usable_cores(cpu_max) == expected, text


def test_bf16_only_on_gpus_that_have_it_natively(monkeypatch, caplog):
    """A V100 or T4 (compute capability 7.x) only emulates bf16, though torch.cuda.is_bf16_supported() says yes
    by default: training and the bench fall back to fp32 there with one line; an A100/H100 (8.0, 9.0) uses it."""
    import torch

    from resmasknet import bench
    from resmasknet.recipe import TrainConfig
    from resmasknet.train import use_bf16

    def gpu(capability):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True: including_emulation or capability >= (8, 0))

    cuda = torch.device("cuda")
    gpu((7, 0))
    assert runtime.bf16_support(cuda) == (False, "GPU compute capability 7.0 has no native bf16 (8.0, Ampere, "
                                                 "or newer)")
    with caplog.at_level("WARNING"):
        assert use_bf16(TrainConfig(), cuda) is False and bench._use_bf16(cuda, False) is False
    assert "bf16 autocast asked for on cuda, but GPU compute capability 7.0 has no native bf16 (8.0, Ampere, or " \
           "newer): training in fp32" in caplog.text
    gpu((9, 0))
    assert runtime.bf16_support(cuda) == (True, "GPU compute capability 9.0")
    assert use_bf16(TrainConfig(), cuda) is True and bench._use_bf16(cuda, False) is True
    # on a CPU the flags decide, as before
    assert runtime.bf16_support(torch.device("cpu")) == runtime.cpu_bf16_support()
