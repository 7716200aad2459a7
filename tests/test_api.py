"""`ablate.open_study`: found the way a user names it from wherever they are, the same table as `ablate summarize`,
and one clear line for each kind of bad input."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import ablate
from ablate.cli import main
from ablate.session import StudyNotFound


def test_import_ablate_loads_no_torch():
    code = "import sys, ablate; ablate.open_study; ablate.StudyResults; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # opening the API needs no torch (it loads when a model is needed)
    assert out.strip() == "False"


@pytest.mark.parametrize("where", ["root", "notebooks"])
def test_open_study_by_name_from_the_root_and_from_notebooks(finished_project, monkeypatch, where):
    monkeypatch.chdir(finished_project if where == "root" else finished_project / "notebooks")
    s = ablate.open_study("notebookcheck")
    # the project's runs/ is found from notebooks/ too (a kernel started by `jupyter lab notebooks/`)
    assert s.folder.resolve() == (finished_project / "runs" / "notebookcheck").resolve()
    # every trial read from its folder
    assert s.records.describe().startswith("4 trials: 4 from files")
    assert s.variants == ["masks_on", "masks_off"] and s.seeds == [0, 1]


def test_summary_is_what_ablate_summarize_writes(finished_project, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(finished_project / "notebooks")
    s = ablate.open_study("notebookcheck")
    summary = s.summary()
    # `ablate summarize` (here with --out, from another folder) writes the same table to summary.csv
    out = tmp_path / "copy"
    shutil.copytree(finished_project / "runs" / "notebookcheck", out)
    assert main(["summarize", str(finished_project / "studies" / "notebookcheck.yaml"), "--out", str(out)]) == 0
    assert "4 trials" in capsys.readouterr().out
    cli = pd.read_csv(out / "summary.csv")
    mine = summary.table
    assert list(cli["variant"]) == list(mine["variant"])
    for col in ("mean", "mean_diff", "p_holm"):
        np.testing.assert_allclose(cli[col].to_numpy(float), pd.to_numeric(mine[col]).to_numpy(float), equal_nan=True)
    # it renders as HTML and as the paper's and the README's tables
    assert "<table" in summary._repr_html_() and "masks_on" in summary.to_markdown()
    assert "\\begin{tabular}" in summary.to_latex()
    assert summary.notes and isinstance(summary.notes[0], str)


def test_open_study_by_output_folder_without_its_file(finished_project, monkeypatch, tmp_path):
    # a study folder moved to a machine without the study file opens by its path (relative included)
    shutil.copytree(finished_project / "runs" / "notebookcheck", tmp_path / "moved")
    monkeypatch.chdir(tmp_path)
    s = ablate.open_study("moved")
    assert s.name == "notebookcheck" and len(s.trials()) == 4
    # the table is computed from the same trials: identical numbers
    here = ablate.open_study("notebookcheck", out=str(finished_project / "runs" / "notebookcheck")).summary().table
    pd.testing.assert_frame_equal(s.summary().table.reset_index(drop=True), here.reset_index(drop=True))


def test_tables_match_the_stored_evaluations(finished_project, monkeypatch):
    monkeypatch.chdir(finished_project)
    s = ablate.open_study("notebookcheck")
    # the confusion summed over seeds is the sum of the stored per-image predictions, counted by hand
    cm = s.confusion("masks_on")
    expected = np.zeros((7, 7), np.int64)
    for seed in s.seeds:
        ev = s.trial("masks_on", seed).evaluation()
        for t, p in zip(ev.labels, ev.predictions):
            expected[t, p] += 1
    assert (cm.to_numpy() == expected).all()
    # the best trial is chosen by validation accuracy
    best = s.best("masks_on")
    assert best.metrics["val_acc"] == max(s.trial("masks_on", k).metrics["val_acc"] for k in s.seeds)
    # test faces come in the order of the stored evaluations, with their labels
    faces = s.test_faces()
    assert np.array_equal(faces.labels, best.evaluation().labels) and faces.images.shape[1:] == (48, 48)
    # the forest plot draws one row per compared variant
    fig = s.forest_plot()
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["masks_on"]


def test_trial_model_is_the_checkpoint(finished_project, monkeypatch):
    import torch

    monkeypatch.chdir(finished_project)
    rec = ablate.open_study("notebookcheck").trial("masks_on", 0)
    model = rec.model()
    # the model is the trial's best checkpoint: its test predictions are the stored ones
    faces = ablate.open_study("notebookcheck").test_faces()
    with torch.inference_mode():
        pred = model(model.prepare_input(torch.from_numpy(faces.images))).argmax(1).numpy()
    assert np.array_equal(pred, rec.evaluation().predictions)


def test_bad_input_one_line_each(finished_project, monkeypatch, tmp_path):
    monkeypatch.chdir(finished_project)
    s = ablate.open_study("notebookcheck")
    # a variant or seed that does not exist names the ones there are
    with pytest.raises(KeyError, match=r"variants: \['masks_on', 'masks_off'\]"):
        s.trial("nope", 0)
    with pytest.raises(KeyError, match=r"seeds: \[0, 1\]"):
        s.trial("masks_on", 7)
    # a study that never ran says where it looked and what to run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    shutil.copy(finished_project / "studies" / "notebookcheck.yaml", tmp_path / "studies")
    with pytest.raises(StudyNotFound, match="run `ablate run notebookcheck` first"):
        ablate.open_study("notebookcheck")
    # a missing checkpoint is named, never skipped
    shutil.copytree(finished_project / "runs", tmp_path / "runs")
    rec = ablate.open_study("notebookcheck").trial("masks_on", 1)
    rec.checkpoint.unlink()
    with pytest.raises(FileNotFoundError, match=r"masks_on/seed1\): its checkpoint .*best.pt is missing"):
        rec.model()
    rec.checkpoint.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"masks_on/seed1\).*not a PyTorch file"):
        rec.model()
