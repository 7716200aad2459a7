from __future__ import annotations

import os
from pathlib import Path

# PyTorch's OpenMP threads spin-wait unless told otherwise; set it before torch loads (as `ablate` does)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The suite tests the CPU's guarantees (same seed, same run, bit for bit) on any machine, a GPU machine included:
# code that picks its device by default gets the CPU, here and in the processes tests start. The device tests
# name their device (the `device` fixture below), so on a GPU they also run on CUDA.
os.environ.setdefault("ABLATE_DEVICE", "cpu")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_machine(request, monkeypatch):
    """Commands measure the machine's load and say when it is busy (`runtime.busy_machine_note`); in tests that
    line would depend on whatever else runs, so it is off unless a test is marked `machine_load`."""
    if request.node.get_closest_marker("machine_load") is None:
        from resmasknet import runtime

        monkeypatch.setattr(runtime, "others_busy_cores", lambda seconds=0.3, stat=None: None)


def _find_shared() -> Path:
    """The development data folder: $RESMASKNET_SHARED, else `../shared` beside the checkout."""
    if os.environ.get("RESMASKNET_SHARED"):
        return Path(os.environ["RESMASKNET_SHARED"])
    return Path(__file__).resolve().parents[2] / "shared"


SHARED = _find_shared()
FER_DIR = SHARED / "fer2013"
REFERENCE = SHARED / "reference" / "original_resmasking_dropout1.json"


def tiny_grid_study(name: str) -> dict:
    """A two-variant (masks on / off), two-seed grid study small enough to run a cell in seconds."""
    return {
        "name": name,
        "base": {"model": "resmasknet_tiny", "data": "generated:n=140,seed=0",
                 "overrides": {"base_width": 4},
                 "train": {"epochs": 1, "max_train_batches": 3, "batch_size": 16, "optimizer": "adamw",
                           "lr": 0.003, "scheduler": "none"}},
        "variants": {"on": {}, "off": {"masks.enabled": False}},
        "baseline": "off",
        "seeds": [0, 1],
    }

def wait_for_running_trial(session, timeout: float = 120) -> None:
    """Block until some trial of the study is RUNNING with its MLflow run started (for kill tests)."""
    import time

    from ablate.runner import load_optuna_study

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            trials = load_optuna_study(session).get_trials()
        except Exception:  # the storage is not created yet
            trials = []
        if any(t.state.name == "RUNNING" and "mlflow_run_id" in t.user_attrs for t in trials):
            return
        time.sleep(0.3)
    raise AssertionError("no trial started")


torch.set_num_threads(min(2, torch.get_num_threads()))


def _device_params() -> list:
    """cpu and cuda, each marked `device` (`pytest -m device` runs the device tests alone); cuda skips without
    CUDA. $ABLATE_TEST_DEVICE=cuda (what `ablate doctor --device cuda` sets) keeps only that device."""
    only = os.environ.get("ABLATE_TEST_DEVICE")
    names = [only] if only else ["cpu", "cuda"]
    out = []
    for name in names:
        marks = [pytest.mark.device]
        if name.startswith("cuda"):
            marks.append(pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.fixture(params=_device_params())
def device(request) -> str:
    """The device a test runs its device code on: every device test runs on the CPU and on CUDA."""
    return request.param


@pytest.fixture(scope="session")
def fer_dir() -> Path:
    if not (FER_DIR / "fer2013.npz").exists():
        pytest.skip(f"real FER2013 not available at {FER_DIR}")
    return FER_DIR


@pytest.fixture(scope="session")
def reference_path() -> Path:
    if not REFERENCE.exists():
        pytest.skip(f"reference outputs not available at {REFERENCE}")
    return REFERENCE


FINISHED_STUDY = {
    "name": "notebookcheck",
    "base": {"model": "resmasknet_tiny", "data": "generated:n=140,seed=0", "overrides": {"base_width": 4},
             "train": {"epochs": 1, "max_train_batches": 3, "batch_size": 16, "optimizer": "adamw",
                       "lr": 0.003, "scheduler": "none"}},
    "variants": {"masks_on": {}, "masks_off": {"masks.enabled": False}},
    "baseline": "masks_off",
    "seeds": [0, 1],
}


@pytest.fixture(scope="session")
def finished_project(tmp_path_factory) -> Path:
    """A project folder as a user has it after `ablate run notebookcheck` in its root: `studies/notebookcheck.yaml`
    and `runs/notebookcheck/` (2 variants x 2 seeds of a tiny network), and an empty `notebooks/`. Shared by the
    API, explorer and notebook tests: read it, never write into it."""
    import yaml

    from ablate.cli import main

    root = tmp_path_factory.mktemp("project")
    (root / "studies").mkdir()
    (root / "notebooks").mkdir()
    (root / "studies" / "notebookcheck.yaml").write_text(yaml.safe_dump(FINISHED_STUDY, sort_keys=False))
    here = os.getcwd()
    os.chdir(root)
    try:
        assert main(["run", "notebookcheck", "--no-progress", "--no-summary"]) == 0
    finally:
        os.chdir(here)
    return root
