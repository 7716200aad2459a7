"""`ablate export`: a finished study's results as data round-trip. The exported trial rows (and per-image
predictions), read back through `ablate.stats`, give the table `ablate summarize` gives on the live study; the
files hold no machine paths and say what produced them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_grid_study

from ablate import stats
from ablate.cli import main
from ablate.export import read_csv, read_export, scrub_argv, scrub_text, table_from_export


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(study file, output folder) of a finished 2-variant x 2-seed study."""
    folder = tmp_path_factory.mktemp("export")
    path = folder / "exportcheck.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_study("exportcheck")))
    out = folder / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    return path, out


@pytest.fixture(scope="module")
def exported(finished) -> Path:
    path, out = finished
    dest = out.parent / "results" / "exportcheck"
    assert main(["export", str(path), "--out", str(out), "--to", str(dest)]) == 0
    return dest


def test_export_writes_the_files(exported):
    names = {p.name for p in exported.iterdir()}
    assert {"summary.csv", "summary.md", "trials.csv", "predictions.csv.gz", "provenance.json"} <= names
    # no temporary files left behind
    assert not [n for n in names if n.startswith(".tmp")]


def test_exported_trials_read_back_give_summarizes_table(finished, exported, capsys):
    path, out = finished
    capsys.readouterr()
    assert main(["summarize", str(path), "--out", str(out)]) == 0
    live = read_csv(out / "summary.csv")
    ex = read_export(exported)
    # one row per trial: 2 variants x 2 seeds
    assert len(ex.trials) == 4 and sorted(ex.trials["variant"].unique()) == ["off", "on"]
    s = ex.provenance["settings"]
    table = stats.compare_to_baseline(ex.trials, ex.predictions, ex.y_true, baseline=s["baseline"],
                                      metric=s["metric"], rope=s["rope_points"] / 100.0,
                                      higher_is_better=s["higher_is_better"], test=s["test"])
    # the McNemar column is there, computed from the exported predictions
    assert table["mcnemar_p"].notna().any()
    # the same table as `ablate summarize` on the live study, cell for cell
    import argparse

    from ablate.cli.study import session_from
    from ablate.summary import summarize

    session = session_from(argparse.Namespace(study=str(path), out=str(out), storage=None, tracking_uri=None,
                                              tiny=False, device="cpu"))
    expected = summarize(session)["table"]
    pd.testing.assert_frame_equal(table, expected)
    pd.testing.assert_frame_equal(table_from_export(exported), expected)
    # and the CSVs agree too: the exported summary.csv is the one `ablate summarize` saves
    pd.testing.assert_frame_equal(read_csv(exported / "summary.csv"), live)
    # the Markdown is what `ablate summarize --markdown` prints
    capsys.readouterr()
    assert main(["summarize", str(path), "--out", str(out), "--markdown"]) == 0
    printed = capsys.readouterr().out
    table_lines = [line for line in (exported / "summary.md").read_text().splitlines() if line.startswith("|")]
    assert len(table_lines) == 4 and "\n".join(table_lines) in printed


def test_export_holds_no_machine_paths_and_says_what_produced_it(finished, exported):
    path, out = finished
    trials = pd.read_csv(exported / "trials.csv")
    assert "trial_dir" not in trials.columns
    assert {"trial", "variant", "seed", "status", "test_acc", "val_acc", "params", "device"} <= set(trials.columns)
    for name in ("trials.csv", "summary.csv", "summary.md", "provenance.json"):
        text = (exported / name).read_text()
        # neither the run's folder nor the study file's folder appears in any exported file
        assert str(out.parent) not in text, name
        assert str(Path.home()) not in text or str(Path.home()) == "/", name
    prov = json.loads((exported / "provenance.json").read_text())
    assert prov["study"] == "exportcheck" and prov["trials"]["complete"] == 4
    assert prov["command"].startswith("ablate export ") and "--to" in prov["command"]
    m = prov["export_machine"]
    assert m["logical_cpus"] and "torch" in m and isinstance(m["bf16_units"], bool)
    assert "node" not in m and "hostname" not in json.dumps(prov).lower()
    wall = prov["wall_time"]
    assert wall["trials_sum_s"] > 0 and wall["first_start_to_last_complete_s"] > 0 and "Optuna" in wall["source"]
    assert prov["settings"]["baseline"] == "off" and prov["settings"]["seeds"] == [0, 1]
    # the trials trained on this machine's CPU, as their records say
    assert all(d.startswith("cpu") for d in prov["trials"]["trained_on"])
    # a checkout gives its commit; the study's parent run recorded one too
    assert prov["export_commit"] is None or len(prov["export_commit"].split("-")[0]) == 40


def test_export_default_folder_is_results_of_the_study(finished, tmp_path, monkeypatch):
    path, out = finished
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(path), "--out", str(out)]) == 0
    assert (tmp_path / "results" / "exportcheck" / "trials.csv").exists()


def test_export_of_a_study_without_trials_is_one_line(tmp_path, capsys):
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(tiny_grid_study("empty")))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["export", str(path), "--out", str(tmp_path / "run"), "--to", str(tmp_path / "res")]) == 2
    assert "no complete trials" in capsys.readouterr().err


def test_scrub_argv_keeps_no_absolute_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = scrub_argv(["ablate", "export", str(tmp_path / "studies" / "x.yaml"), "--out=/elsewhere/runs/x",
                       "--to", "results/x"])
    assert line == "ablate export studies/x.yaml --out=.../x --to results/x"


def test_scrub_text_shortens_the_paths_in_notes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    note = f"read 4 trials: 4 from files ({tmp_path}/runs/x/trials); see /srv/data/fer2013.csv, 1 / 84 / 16"
    assert scrub_text(note) == "read 4 trials: 4 from files (runs/x/trials); see .../fer2013.csv, 1 / 84 / 16"


def test_round_trip_is_exact_for_spread_results(tmp_path):
    """Results that differ by seed and variant (the tiny study's are near chance) survive the CSV bit for bit."""
    import numpy as np

    from ablate.export import FORMAT, PROVENANCE, TRIALS_CSV

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"trial": range(15), "variant": ["all", "none", "unapplied"] * 5,
                          "seed": np.repeat(np.arange(5), 3), "status": "completed",
                          "test_acc": 0.55 + rng.normal(0, 0.01, 15), "params": [1.8e6, 7.0e5, 1.8e6] * 5})
    frame.to_csv(tmp_path / TRIALS_CSV, index=False)
    settings = {"metric": "test_acc", "baseline": "unapplied", "rope_points": 0.5, "higher_is_better": True,
                "test": "t"}
    (tmp_path / PROVENANCE).write_text(json.dumps({"format": FORMAT, "settings": settings}))
    expected = stats.compare_to_baseline(frame, None, None, baseline="unapplied", rope=0.005)
    pd.testing.assert_frame_equal(table_from_export(tmp_path), expected)
