"""The GPU path on a faked CUDA machine (`tests/fakecuda.py`): one precision decision per device (bf16 on
Ampere or newer, fp32 on a T4, V100 or P100) used by training, validation, evaluation with TTA, latency, the
bench and the projection and recorded with each run; devices checked before a command creates anything (exit
2, one line saying which PyTorch build and driver are there and what to install); --device cpu winning over
--workers-per-gpu; the bench's data step as training runs it; reports and `ablate explain` on the GPU; the
doctor's PyTorch version check. The faked GPU computes on the CPU, so its fp32 runs are compared with CPU runs
bit for bit."""

from __future__ import annotations

import copy
import json
import re
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_grid_study
from fakecuda import FakeCuda

from ablate.cli import main
from resmasknet.registry import create_model
from resmasknet.runtime import (
    MIN_TORCH,
    DeviceError,
    arch_supported,
    bf16_support,
    check_device,
    check_torch,
    cpu_bf16_support,
    cuda_build_for,
    precision_for,
    use_device,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = "generated:n=140,seed=0"
AMPERE, TURING = (8, 0), (7, 5)
GPUS = pytest.mark.parametrize("cap", [TURING, AMPERE], ids=["sm75-T4", "sm80-A100"])


def expected(cap: tuple[int, int]) -> str:
    """The reference rule: native bf16 from compute capability 8.0 (Ampere) on."""
    return "bf16" if cap >= (8, 0) else "fp32"


def tiny(seed: int = 0):
    return create_model("resmasknet_tiny", seed=seed, base_width=4)


def tiny_cfg():
    from resmasknet.recipe import TrainConfig

    return TrainConfig(epochs=2, batch_size=16, max_train_batches=3, optimizer="adamw", lr=0.003, scheduler="none",
                       early_stop_patience=None, seed=0)


def study_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "gpu.yaml"
    path.write_text(yaml.safe_dump({**tiny_grid_study("gpu"), "seeds": [0], **changes}))
    return path


# ---- one precision decision per device -----------------------------------------------------------------------
def test_each_gpu_decides_its_own_precision(monkeypatch):
    fake = FakeCuda(monkeypatch, [AMPERE, TURING, (6, 0)])
    # torch's default check looks at the current GPU (cuda:0, the A100) and says yes, emulation included
    assert torch.cuda.is_bf16_supported()
    # the toolkit reads each worker's own GPU, with no set_device: bf16 on the A100 only
    assert [precision_for(f"cuda:{i}") for i in range(3)] == ["bf16", "fp32", "fp32"]
    assert fake.current == 0 and not fake.set_devices
    # a bare "cuda" is the current GPU, whichever it is
    assert precision_for("cuda") == "bf16"
    use_device("cuda:1")
    assert fake.set_devices == [1] and precision_for("cuda") == "fp32"
    # the reason names the GPU's own capability
    assert bf16_support("cuda:2") == (False, "GPU compute capability 6.0 has no native bf16 (8.0, Ampere, or newer)")
    # a PyTorch older than `including_emulation` (2.3 and before) is never asked for it
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision_for("cuda:0") == "bf16" and precision_for("cuda:1") == "fp32"
    # the CPU: fp32, unless asked for and it has bf16 units
    assert precision_for("cpu") == "fp32"
    assert precision_for("cpu", cpu_bf16=True) == ("bf16" if cpu_bf16_support()[0] else "fp32")


@GPUS
def test_training_and_validation_run_at_the_devices_precision(monkeypatch, tmp_path, cap):
    import importlib

    from resmasknet.checkpoint import read_checkpoint
    from resmasknet.data import load_data

    trainmod = importlib.import_module("resmasknet.train")  # the package exports a `train` function of that name
    data = load_data(DATA)
    ref_model = tiny()
    ref = trainmod.train(ref_model, data, tiny_cfg(), out_dir=tmp_path / "cpu", progress=False, device="cpu")
    fake = FakeCuda(monkeypatch, [cap])
    in_validation: list[tuple] = []
    real_validate = trainmod.validate

    def validate(*args, **kwargs):
        n = len(fake.autocasts)
        out = real_validate(*args, **kwargs)
        in_validation.extend(fake.autocasts[n:])
        return out

    monkeypatch.setattr(trainmod, "validate", validate)
    model = tiny()
    got = trainmod.train(model, data, tiny_cfg(), out_dir=tmp_path / "gpu", progress=False, device="cuda:0")
    want = expected(cap)
    # the model went to the faked GPU
    assert "cuda:0" in fake.moves
    # the run says what it ran at, in its result, result.json, every epoch of history.json and the checkpoints
    assert got.precision == want and got.bf16 == (want == "bf16")
    assert json.loads((tmp_path / "gpu" / "result.json").read_text())["precision"] == want
    assert [h["precision"] for h in json.loads((tmp_path / "gpu" / "history.json").read_text())] == [want, want]
    assert read_checkpoint(tmp_path / "gpu" / "best.pt")["metadata"]["precision"] == want
    # bf16 autocast entered (training and validation alike) exactly where the GPU has native bf16
    assert fake.bf16_used() == (want == "bf16")
    assert in_validation and {enabled for _, _, enabled in in_validation} == {want == "bf16"}
    losses = [(h["train_loss"], h["val_loss"], h["val_acc"]) for h in got.history]
    ref_losses = [(h["train_loss"], h["val_loss"], h["val_acc"]) for h in ref.history]
    if want == "fp32":
        # fp32 on the faked T4 is the CPU's arithmetic: the same losses and weights as the CPU run, bit for bit
        assert losses == ref_losses
        for (k, a), b in zip(model.state_dict().items(), ref_model.state_dict().values()):
            assert torch.equal(a, b), k
    else:
        # bf16 rounds differently from fp32: the losses differ from the fp32 run's
        assert [x[0] for x in losses] != [x[0] for x in ref_losses]


@GPUS
def test_evaluation_with_tta_runs_at_the_devices_precision(monkeypatch, cap):
    from resmasknet.data import load_data
    from resmasknet.evaluate import evaluate

    split = load_data(DATA).select("test")
    model = tiny(1)
    ref_authors = evaluate(copy.deepcopy(model), split, device="cpu", tta="authors")
    # the flip TTA in bf16, computed by hand: the mean of the softmax of the face and of its mirror image
    net = copy.deepcopy(model).to(memory_format=torch.channels_last).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        x = net.prepare_input(torch.from_numpy(split.images))
        mirrored = torch.flip(x, dims=[-1]).contiguous(memory_format=torch.channels_last)
        flip_bf16 = ((torch.softmax(net(x).float(), 1) + torch.softmax(net(mirrored).float(), 1)) / 2).numpy()
    fake = FakeCuda(monkeypatch, [cap])
    want = expected(cap)
    authors = evaluate(copy.deepcopy(model), split, device="cuda:0", tta="authors")
    flip = evaluate(copy.deepcopy(model), split, device="cuda:0", tta="flip")
    # each evaluation records its precision, and bf16 autocast ran exactly where the GPU has it natively
    assert authors.info["precision"] == flip.info["precision"] == want and authors.info["device"] == "cuda:0"
    assert fake.bf16_used() == (want == "bf16")
    if want == "fp32":
        # fp32 on the faked T4: the authors' TTA gives the CPU's probabilities, bit for bit
        np.testing.assert_array_equal(authors.probabilities, ref_authors.probabilities)
    else:
        # bf16 on the faked A100: the flip TTA is the hand-computed bf16 one, and the authors' TTA differs from
        # the fp32 one by bf16's rounding only
        np.testing.assert_allclose(flip.probabilities, flip_bf16, rtol=0, atol=1e-6)
        diff = np.abs(authors.probabilities - ref_authors.probabilities).max()
        assert 0 < diff < 0.05


@GPUS
def test_latency_runs_at_the_devices_precision(monkeypatch, cap):
    from ablate.trial import latency_ms

    model = tiny().eval()
    fake = FakeCuda(monkeypatch, [cap])
    assert latency_ms(model, "cuda:0", reps=2) > 0
    # timed as evaluation runs: under bf16 autocast only where the GPU has native bf16
    assert fake.autocasts and fake.bf16_used() == (expected(cap) == "bf16")


@GPUS
def test_projection_and_bench_run_at_the_devices_precision(monkeypatch, tmp_path, cap):
    from ablate.cost import project_study
    from ablate.study import load_study

    study = load_study(study_file(tmp_path))
    fake = FakeCuda(monkeypatch, [cap])
    cost = project_study(study, (48, 16, 16), device="cuda:0", steps=1, warmup=1, seconds=1.0, rounds=1)
    want = expected(cap)
    # every cell is projected from a measurement at the precision its trials will train at
    assert [r.bf16 for r in cost.rows] == [want == "bf16"] * len(study.variants)
    assert fake.bf16_used() == (want == "bf16")


def test_bench_data_step_copies_nothing_from_the_host_per_step(monkeypatch):
    import resmasknet.bench as bench

    fake = FakeCuda(monkeypatch, [AMPERE])
    copies: list[int] = []
    real_timed = bench._timed

    def timed(fn, dev, **kwargs):
        fn()  # a first call
        n = len(fake.moves)
        fn()
        copies.append(len(fake.moves) - n)
        return real_timed(fn, dev, **kwargs)

    monkeypatch.setattr(bench, "_timed", timed)
    row = bench.bench_model("resmasknet_tiny", batch_size=8, device="cuda:0", steps=2, warmup=1, seconds=1.0,
                            rounds=1, plain=False, overrides={"base_width": 4})
    # training indexes a device-resident permutation: no host-to-device copy inside a step, neither in the data
    # pipeline (the first phase timed) nor in evaluation and training steps
    assert copies and copies == [0] * len(copies)
    assert row["precision"] == "bf16" and row["data_img_s"] > 0


# ---- the decision recorded with each run; workers on their own GPU; the report on the GPU -----------------------
@pytest.mark.parametrize("gpu,cap", [("cuda:1", TURING), ("cuda:0", AMPERE)], ids=["T4", "A100"])
def test_a_study_records_the_precision_of_its_workers_gpu(monkeypatch, tmp_path, gpu, cap):
    import resmasknet.checkpoint as checkpoint
    from ablate.cli.study import session_from
    from ablate.trial import read_trials

    fake = FakeCuda(monkeypatch, [AMPERE, TURING])  # a mixed node
    loads: list[str] = []
    real_load = checkpoint.load_checkpoint
    monkeypatch.setattr(checkpoint, "load_checkpoint",
                        lambda p, map_location="cpu": loads.append(str(map_location)) or real_load(p, map_location))
    study, out = study_file(tmp_path), tmp_path / "run"
    assert main(["run", str(study), "--device", gpu, "--out", str(out), "--no-progress", "--no-summary"]) == 0
    want = expected(cap)
    session = session_from(type("A", (), {"study": str(study), "out": str(out), "storage": None,
                                          "tracking_uri": None, "tiny": False})())
    records = read_trials(session).records
    tracker = session.tracker()
    assert len(records) == 2
    for r in records:
        # the record, its MLflow run, its training history and its evaluations all say what it ran at
        assert r.precision == want
        assert tracker.client.get_run(r.mlflow_run_id).data.params["precision"] == want
        assert {h["precision"] for h in json.loads((r.folder / "history.json").read_text())} == {want}
        for name in ("test", "test_tta_authors"):
            assert json.loads((r.folder / name / "metrics.json").read_text())["info"]["precision"] == want
    # the worker made its own GPU current and trained on it; bf16 only on the A100
    assert set(fake.set_devices) == {int(gpu[-1])} and gpu in fake.moves
    assert fake.bf16_used() == (want == "bf16")
    # the best checkpoint is read onto the CPU, where the model is built, and moved to the GPU once
    assert loads and set(loads) == {"cpu"}
    if want == "fp32":
        # the report analyses on the GPU by default ($ABLATE_DEVICE unset), not on the CPU: the model it hands
        # the mask analysis has been moved there (the analysis itself runs where the model is; here a stand-in)
        import ablate.report.study as report_study

        analysed: list[list[str]] = []

        def analysis_section(page, model, data, **kwargs):
            analysed.append(list(fake.moves))
            return SimpleNamespace(tables={})

        monkeypatch.setattr(report_study, "analysis_section", analysis_section)
        monkeypatch.delenv("ABLATE_DEVICE")
        fake.clear()
        page = report_study.build_report(session, tmp_path / "report", n_images=4, analysis="fast", progress=False,
                                         log_mlflow=False)
        assert json.loads((page.parent / "report.json").read_text())["device"] == "cuda"
        assert analysed and all(moves[-1:] == ["cuda"] for moves in analysed)


def test_explain_runs_on_the_gpu_by_default(monkeypatch, tmp_path):
    import pandas as pd
    from PIL import Image

    from ablate.report import explain
    from resmasknet.checkpoint import save_checkpoint
    from resmasknet.data import CLASSES, load_data

    ckpt, image = tmp_path / "best.pt", tmp_path / "face.png"
    save_checkpoint(ckpt, tiny(), classes=CLASSES)
    Image.fromarray(load_data(DATA).select("test").images[0]).save(image)
    explain(ckpt, [image], tmp_path / "cpu", methods=("saliency",), device="cpu")
    monkeypatch.delenv("ABLATE_DEVICE")
    fake = FakeCuda(monkeypatch, [TURING])
    explain(ckpt, [image], tmp_path / "gpu", methods=("saliency",))
    # by default the network runs on the GPU
    assert "cuda" in fake.moves
    # in fp32 on the faked T4, with the CPU's probabilities
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "gpu" / "probabilities.csv"),
                                  pd.read_csv(tmp_path / "cpu" / "probabilities.csv"))


# ---- --device wins over --workers-per-gpu ---------------------------------------------------------------------
def test_workers_per_gpu_never_overrides_device_cpu(monkeypatch, tmp_path):
    import ablate.runner as runner

    FakeCuda(monkeypatch, [AMPERE] * 4)
    # the CPU asked for: --workers on the CPU, whatever --workers-per-gpu says; a GPU named: N workers on it
    assert runner.plan_devices(2, "cpu", 4, workers_per_gpu=3) == ["cpu", "cpu"]
    assert runner.plan_devices(1, "cuda:2", 4, workers_per_gpu=3) == ["cuda:2"] * 3
    assert runner.plan_devices(1, "cuda", 2, workers_per_gpu=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    started: list[list[str]] = []

    class Popen:
        def __init__(self, cmd, **kwargs):
            started.append(cmd)
            self.pid = 12345

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(runner, "subprocess", SimpleNamespace(Popen=Popen, TimeoutExpired=TimeoutError))
    out = tmp_path / "run"
    main(["run", str(study_file(tmp_path)), "--device", "cpu", "--workers-per-gpu", "2", "--out", str(out),
          "--no-progress", "--no-summary"])
    # `ablate run --device cpu --workers-per-gpu 2` on a 4-GPU node: one worker (--workers 1), on the CPU
    assert [cmd[cmd.index("--device") + 1] for cmd in started] == ["cpu"]


# ---- devices checked up front ---------------------------------------------------------------------------------
SMI_T4_535 = ("Tesla T4, 535.104.05, 7.5", "Driver Version: 535.104.05     CUDA Version: 12.2")
SMI_T4_580 = ("Tesla T4, 580.65.06, 7.5", "Driver Version: 580.65.06      CUDA Version: 13.0")
SMI_P100_580 = ("Tesla P100-PCIE-16GB, 580.65.06, 6.0", "Driver Version: 580.65.06      CUDA Version: 13.0")
SMI_BROKEN = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."


def fake_smi(bindir: Path, answer: tuple[str, str] | str | None) -> None:
    """An nvidia-smi on PATH (bindir only) answering the query and the plain call, failing with exit status 9
    (a str), or none at all (None)."""
    bindir.mkdir(exist_ok=True)
    if answer is not None:
        smi = bindir / "nvidia-smi"
        if isinstance(answer, str):
            smi.write_text(f"#!/bin/sh\necho \"{answer}\"\nexit 9\n")
        else:
            query, plain = answer
            smi.write_text(f"#!/bin/sh\ncase \"$1\" in\n  --query-gpu=*) echo \"{query}\" ;;\n"
                           f"  *) echo \"| NVIDIA-SMI   {plain} |\" ;;\nesac\n")
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)


def no_cuda(monkeypatch, tmp_path: Path, build: str | None, smi: tuple[str, str] | str | None) -> None:
    """A machine where CUDA is not available: PyTorch built for `build` (None: CPU-only), and `smi`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", build)
    fake_smi(tmp_path / "bin", smi)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize("build,smi,says", [
    (None, None, ["is a CPU-only build and no NVIDIA driver was found", "use --device cpu"]),
    ("13.0", None, ["is built for CUDA 13.0, but no NVIDIA driver was found", "install its driver"]),
    ("13.0", SMI_T4_535, ["is built for CUDA 13.0, but the NVIDIA driver 535.104.05 (Tesla T4) supports CUDA up "
                          "to 12.2", "--index-url https://download.pytorch.org/whl/cu126", "or update the driver"]),
    (None, SMI_T4_580, ["is a CPU-only build, but the NVIDIA driver 580.65.06 (Tesla T4) supports CUDA up to 13.0",
                        "--index-url https://download.pytorch.org/whl/cu130"]),
    (None, SMI_P100_580, ["--index-url https://download.pytorch.org/whl/cu126"]),  # cu130 has no Pascal kernels
    ("13.0", SMI_BROKEN, ["nvidia-smi fails (NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                          "driver.)", "reinstall it or reboot"]),
    ("13.0", SMI_T4_580, ["yet no GPU can be opened"]),
], ids=["cpu-build", "no-driver", "old-driver", "cpu-build-driver", "cpu-build-pascal", "broken-driver", "hidden"])
def test_unavailable_cuda_says_which_build_and_driver_and_what_to_install(monkeypatch, tmp_path, build, smi, says):
    no_cuda(monkeypatch, tmp_path, build, smi)
    with pytest.raises(DeviceError) as err:
        check_device("cuda")
    line = str(err.value)
    # one line, starting with what was asked for, naming PyTorch's version and each expected cause and fix
    assert "\n" not in line and line.startswith("device 'cuda' asked for, but CUDA is not available here")
    assert f"PyTorch {torch.__version__}" in line
    for text in says:
        assert text in line, line


COMMANDS = {
    "run": lambda study, out: ["run", study, "--device", "cuda", "--workers", "1", "--out", out],
    "worker": lambda study, out: ["worker", study, "--device", "cuda:1", "--out", out],
    "train": lambda study, out: ["train", "--model", "resmasknet_tiny", "--device", "cuda:3", "--out", out],
    "evaluate": lambda study, out: ["evaluate", f"{out}.pt", "--data", DATA, "--device", "cuda", "--out", out],
    "bench": lambda study, out: ["bench", "--model", "resmasknet_tiny", "--device", "cuda", "--json", out],
    "doctor": lambda study, out: ["doctor", "--device", "cuda", "--out", out],
    "analyse": lambda study, out: ["analyse", f"{out}.pt", "--data", DATA, "--device", "cuda", "--out", out],
    "report": lambda study, out: ["report", study, "--device", "cuda", "--report-dir", out],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_commands_refuse_an_unusable_device_before_creating_anything(monkeypatch, tmp_path, capsys, command):
    no_cuda(monkeypatch, tmp_path, "13.0", None)  # this machine as it is: a CUDA build, no GPU, no driver
    out = tmp_path / "out"
    rc = main(COMMANDS[command](str(study_file(tmp_path)), str(out)))
    err = capsys.readouterr().err.strip().splitlines()
    # exit status 2, one line saying why, and nothing created (no storage, no folder, no file)
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("error: device 'cuda") and "CUDA is not available here" in err[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bin", "gpu.yaml"]


def test_a_gpu_beyond_the_machine_or_without_kernels_is_refused(monkeypatch, tmp_path, capsys):
    fake_smi(tmp_path / "bin", SMI_P100_580)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    FakeCuda(monkeypatch, [TURING, TURING])
    out = tmp_path / "out"
    rc = main(["train", "--model", "resmasknet_tiny", "--device", "cuda:3", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    # a GPU index this machine lacks: exit 2, one line naming the GPUs there
    assert rc == 2 and err == ["error: device 'cuda:3' asked for, but this machine has 2 GPU(s): cuda:0 .. cuda:1"]
    assert not out.exists()
    # a P100 (6.0) under a build that starts at Turing (sm_75): refused up front with the build that has it
    FakeCuda(monkeypatch, [(6, 0)])
    with pytest.raises(DeviceError) as err_p100:
        check_device("cuda")
    line = str(err_p100.value)
    assert line.startswith("cuda:0 (Tesla P100-PCIE-16GB, compute capability 6.0, Pascal) cannot run PyTorch")
    assert "built for sm_75 to sm_120" in line and "--index-url https://download.pytorch.org/whl/cu126" in line
    # under a build with sm_60 kernels it runs (in fp32)
    FakeCuda(monkeypatch, [(6, 0)], arch_list=["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"])
    assert check_device("cuda") == "cuda" and precision_for("cuda") == "fp32"


def test_which_gpus_a_build_runs_on_and_which_build_fits_a_driver():
    cu126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]
    cu130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    # kernels serve later minor versions of their major one (sm_60 a P40's 6.1, sm_86 an L4's 8.9), not others
    assert arch_supported((6, 1), cu126) and arch_supported((8, 9), cu130) and arch_supported((7, 5), cu130)
    assert not arch_supported((6, 0), cu130) and not arch_supported((7, 0), cu130)
    # PTX of an equal or lower version is compiled by the driver; an unknown list, or a ROCm build's, is no
    # reason to refuse
    assert arch_supported((12, 1), ["sm_90", "compute_120"]) and arch_supported((3, 5), [])
    assert arch_supported((9, 0), ["gfx90a", "gfx942"])
    # the newest build the driver runs and the GPU has kernels in; a same-major build through minor-version
    # compatibility; none where the driver is older than every build's CUDA
    assert cuda_build_for((13, 2), TURING) == "cu132" and cuda_build_for((13, 1), TURING) == "cu130"
    assert cuda_build_for((13, 0), (6, 0)) == "cu126" and cuda_build_for((12, 2), TURING) == "cu126"
    assert cuda_build_for((11, 8), TURING) is None and cuda_build_for((13, 0), (3, 7)) is None


# ---- the doctor's PyTorch check -------------------------------------------------------------------------------
def test_doctor_reports_pytorch_and_refuses_one_below_the_minimum(monkeypatch, tmp_path, capsys):
    # the minimum is pyproject.toml's own torch pin
    pin = re.search(r'"torch>=(\d+)\.(\d+)"', (ROOT / "pyproject.toml").read_text())
    assert pin and (int(pin.group(1)), int(pin.group(2))) == MIN_TORCH
    # this machine's PyTorch is supported: the doctor's device step names it and the precision used
    assert check_torch() == torch.__version__
    out = tmp_path / "ok"
    assert main(["doctor", "--device", "cpu", "--only", "device", "--out", str(out)]) == 0
    detail = json.loads((out / "doctor.json").read_text())[0]["detail"]
    assert f"torch {torch.__version__}" in detail and "precision fp32" in detail
    capsys.readouterr()
    # a node's own older PyTorch: one line naming it and the minimum, exit 2, nothing written
    monkeypatch.setattr(torch, "__version__", "2.1.2+cu118")
    old = tmp_path / "old"
    rc = main(["doctor", "--device", "cpu", "--out", str(old)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and not old.exists()
    assert err[0].startswith("error: PyTorch 2.1.2+cu118 is older than 2.4, the oldest this toolkit supports")


def test_doctor_device_step_on_a_faked_t4(monkeypatch, tmp_path):
    from ablate.doctor import step_device

    FakeCuda(monkeypatch, [TURING])
    step = step_device(torch.device("cuda:0"), tmp_path)
    # the doctor says what the T4 gets: no bf16, fp32 training and evaluation
    assert step.data["precision"] == "fp32" and step.data["bf16"] is False
    assert "capability 7.5 (Turing)" in step.detail and "precision fp32" in step.detail
    assert step.detail.startswith("cuda:0 (Tesla T4, 16.0 GiB)")
