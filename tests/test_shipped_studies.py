"""Every shipped study runs end-to-end in its tiny mode: trials train, MLflow tracks them, the summary prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from ablate.cli import main
from ablate.runner import Paths, Session, status
from ablate.study import load_study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_runs_tiny(path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(path), "--tiny", "--out", str(out), "--no-progress"]) == 0
    study = load_study(path).with_tiny()
    st = status(Session(study=study, storage_url=str(Paths(out).journal), tracking_uri=Paths(out).tracking_uri,
                        paths=Paths(out)))
    if study.mode == "grid":
        # every cell of the tiny grid finished, once, with one finished MLflow run each
        assert st["cells_complete"] == len(study.cells) == st["mlflow_runs"].get("FINISHED")
    else:
        # the search ran its tiny number of trials, each tracked
        assert st["trials"].get("COMPLETE", 0) + st["trials"].get("PRUNED", 0) == study.search["n_trials"]
    printed = capsys.readouterr().out
    # the run ends with the summary (ablation table or importance / Pareto front)
    assert ("verdict" in printed) if study.mode == "grid" else ("Pareto" in printed)
