"""Every shipped study runs end-to-end in its tiny mode: trials train, MLflow tracks them, the summary prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablate.cli import main
from ablate.runner import Paths, Session, status, study_progress
from ablate.study import load_study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_runs_tiny(path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(path), "--tiny", "--out", str(out), "--no-progress"]) == 0
    study = load_study(path).with_tiny()
    sess = Session(study=study, storage_url=str(Paths(out).journal), tracking_uri=Paths(out).tracking_uri,
                   paths=Paths(out))
    st = status(sess)
    if study.mode == "grid":
        # every cell of the tiny grid finished, once, with one finished MLflow run each
        assert st["cells_complete"] == len(study.cells) == st["mlflow_runs"].get("FINISHED")
    else:
        # the search ran its tiny number of trials, each tracked
        assert st["trials"].get("COMPLETE", 0) + st["trials"].get("PRUNED", 0) == study.search["n_trials"]
        # what a run's progress bar counts: every trial of the search finished
        assert study_progress(sess) == (study.search["n_trials"],) * 2
    printed = capsys.readouterr().out
    # the run ends with the summary (ablation table or importance / Pareto front)
    assert ("verdict" in printed) if study.mode == "grid" else ("Pareto" in printed)


@pytest.mark.parametrize("cores, workers", [(1, "1"), (2, "2"), (16, "2")])
def test_demo_trains_on_two_workers_where_two_cores_are_usable(monkeypatch, cores, workers):
    import ablate.cli
    import resmasknet.runtime

    calls = []
    monkeypatch.setattr(resmasknet.runtime, "usable_cores", lambda: cores)
    monkeypatch.setattr(ablate.cli, "main", lambda argv: calls.append(argv) or 0)
    from ablate.cli import demo

    assert demo.run(demo_args(workers=None)) == 0
    assert calls == [["run", "quickstart", "--workers", workers]]
    calls.clear()
    assert demo.run(demo_args(workers=3)) == 0  # an explicit count is kept
    assert calls == [["run", "quickstart", "--workers", "3"]]


def demo_args(workers):
    import argparse

    return argparse.Namespace(workers=workers, tiny=False, no_report=True)


def test_the_quickstart_grid_is_the_documented_demo():
    """The demo's design as results/demo.md measured it: four variants, five paired seeds, 32-px faces."""
    study = load_study("quickstart")
    assert [v.name for v in study.variants] == ["masks_on", "masks_off", "unapplied", "undertrained"]
    assert study.baseline == "masks_off" and list(study.seeds) == [0, 1, 2, 3, 4]
    cfg = study.net_config(study.variant("masks_on").model)
    assert cfg.input_size == 32 and all(m.width == 1.0 and m.enabled for m in cfg.masks) and cfg.drop_rate == 0.0
    assert "size=32" in study.data and study.train["epochs"] == 6
    # the known harm is the baseline with 2 batches an epoch, nothing else
    assert study.variant("undertrained").model == study.variant("masks_off").model
    assert study.variant("undertrained").train == {"max_train_batches": 2}
