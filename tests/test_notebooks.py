"""Both notebooks execute top to bottom (nbclient, kernel python3) against a tiny study made here, and read
trials only through the trial record (`ablate.trial.read_trials`)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from ablate.cli import main

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["mask_explorer", "study_results"]
STUDY = {
    "name": "notebookcheck",
    "base": {"model": "resmasknet_tiny", "data": "generated:n=140,seed=0", "overrides": {"base_width": 4},
             "train": {"epochs": 1, "max_train_batches": 3, "batch_size": 16, "optimizer": "adamw",
                       "lr": 0.003, "scheduler": "none"}},
    "variants": {"on": {}, "off": {"masks.enabled": False}},
    "baseline": "off",
    "seeds": [0],
}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """(study file, output folder) of a finished two-trial study."""
    folder = tmp_path_factory.mktemp("notebooks")
    path = folder / "notebookcheck.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    out = folder / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    return path, out


def _source(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_reads_trials_through_the_record(name):
    src = _source(name)
    # trials come from read_trials; no direct MLflow queries, npz reads or globbing of trial folders
    assert "read_trials(session)" in src
    for direct in ("mlflow", "np.load", "predictions.npz", "glob", "record.json"):
        assert direct not in src, direct


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, study, monkeypatch):
    path, out = study
    monkeypatch.setenv("ABLATE_STUDY", str(path))
    monkeypatch.setenv("ABLATE_OUT", str(out))
    monkeypatch.setenv("ABLATE_N_IMAGES", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    # every cell runs without an error (nbclient raises CellExecutionError otherwise)
    client.execute()
    # every code cell ran
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # both trials were read from their folders (the record's own description of where they came from)
    assert "2 trials: 2 from files" in printed
    if name == "mask_explorer":
        # the explorer picked the masked variant's trial through its record
        assert "on/seed0: trial" in printed
