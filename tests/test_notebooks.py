"""Both notebooks execute top to bottom (nbclient, kernel python3) the way `jupyter lab notebooks/` runs them: the
kernel starts in the project's `notebooks/` folder and the study is named, not given as an absolute path. The
explorer's widget state, stored in the executed notebook, is checked against the study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["mask_explorer", "study_results"]


def _source(name: str) -> str:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_uses_the_public_api(name):
    src = _source(name)
    # studies are opened through ablate.open_study; no CLI internals, MLflow queries or file globbing
    assert "ablate.open_study(" in src
    for direct in ("session_from", "argparse", "mlflow", "np.load", "predictions.npz", "glob", "record.json",
                   "ABLATE_OUT"):
        assert direct not in src, direct
    # the shipped notebooks carry no outputs (they are made when run)
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")


def _widget_states(nb) -> list[dict]:
    states = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return [s["state"] for s in states.values()]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_from_the_notebooks_folder(name, finished_project, monkeypatch, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(finished_project, project)  # the notebook's own copy (it may write its views)
    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", project / "notebooks")
    monkeypatch.setenv("ABLATE_STUDY", "notebookcheck")  # a name, as a user types it
    monkeypatch.setenv("ABLATE_N_FACES", "3")
    nb = nbformat.read(project / "notebooks" / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=240, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(project / "notebooks")}})
    # every cell runs without an error (nbclient raises CellExecutionError otherwise)
    client.execute()
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    text = "".join(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", "")) for o in outputs)
    # the study was found from notebooks/ in the project's runs/, every trial read from its folder
    assert "<study notebookcheck: grid, 4 finished trials" in text
    if name == "study_results":
        html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
        # the table rendered itself, and the forest plot is a picture in the notebook
        assert "masks_on" in html and "<table" in html
        assert any("image/png" in o.get("data", {}) for o in outputs)
        return
    states = _widget_states(nb)
    by_desc = {s.get("description"): s for s in states if s.get("description")}
    # the stage control covers the model's four masked stages
    assert by_desc["stage"]["_options_labels"] == ["mask1", "mask2", "mask3", "mask4"]
    # the model choice lists the study's trials, the two compared selected
    assert sorted(by_desc["models"]["_options_labels"]) == sorted(
        f"{v}/seed{s}" for v in ("masks_on", "masks_off") for s in (0, 1))
    labels = by_desc["models"]["_options_labels"]
    assert [labels[i] for i in by_desc["models"]["index"]] == ["masks_on/seed0", "masks_off/seed0"]
    # the explorer opened on the faces one model gets right and the other wrong
    assert by_desc["models agree"]["_options_labels"][by_desc["models agree"]["index"]] == "split"
    # static figures for readers without a kernel: one picture per stage and the comparison
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 5
