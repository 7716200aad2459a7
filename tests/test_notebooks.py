"""Both notebooks execute top to bottom (nbclient, kernel python3) against a tiny study made here."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

from ablate.cli import main

ROOT = Path(__file__).resolve().parents[1]
STUDY = {
    "name": "reportcheck",
    "base": {"model": "resmasknet_tiny", "data": "generated:n=140,seed=0", "overrides": {"base_width": 4},
             "train": {"epochs": 1, "max_train_batches": 3, "batch_size": 16, "optimizer": "adamw",
                       "lr": 0.003, "scheduler": "none"}},
    "variants": {"on": {}, "off": {"masks.enabled": False}},
    "baseline": "off",
    "seeds": [0],
}


def make_study(folder: Path) -> Path:
    path = folder / "reportcheck.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    out = folder / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    return out


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["mask_explorer", "study_results"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    out = make_study(tmp_path)
    monkeypatch.setenv("ABLATE_CHECKPOINT", str(sorted(out.glob("trials/*/best.pt"))[-1]))
    monkeypatch.setenv("ABLATE_STUDY", "reportcheck")
    monkeypatch.setenv("ABLATE_OUT", str(out))
    monkeypatch.setenv("ABLATE_N_IMAGES", "3")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}})
    # every cell runs without an error (nbclient raises CellExecutionError otherwise)
    client.execute()
    # every code cell ran
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
