"""Seeds that mean something: the same seed gives the same run, and one seed gives every variant of a study
common random numbers (same data order, augmentation draws and initial weights of the modules they share)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_grid_study

from ablate.cli import main
from resmasknet import create_model
from resmasknet.evaluate import EvalResult

TRAIN = ["--model", "resmasknet_tiny", "--data", "generated:n=120,seed=0", "--epochs", "1", "--batch-size", "16",
         "--max-train-batches", "3", "--set", "base_width=4", "--no-progress", "--no-resume"]


def test_same_seed_same_initial_weights_and_shared_modules_match() -> None:
    a = create_model("resmasknet_tiny", seed=5).state_dict()
    b = create_model("resmasknet_tiny", seed=5).state_dict()
    off = create_model("resmasknet_tiny", seed=5, **{"masks.enabled": False}).state_dict()
    other = create_model("resmasknet_tiny", seed=6).state_dict()
    # the same seed: every tensor identical
    assert all(torch.equal(a[k], b[k]) for k in a)
    # masks off shares the backbone and head of the masked network: identical initial weights for each
    assert set(off) < set(a) and all(torch.equal(off[k], a[k]) for k in off)
    # another seed: the convolutions differ
    assert not torch.equal(a["conv1.weight"], other["conv1.weight"])


def test_global_rng_is_not_used_by_seeded_init() -> None:
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    create_model("resmasknet_tiny", seed=1)
    # building a seeded network leaves torch's global generator where it was
    assert torch.equal(torch.rand(1), before)


def test_same_train_command_twice_gives_identical_results(tmp_path: Path) -> None:
    for name in ("a", "b"):
        assert main(["train", *TRAIN, "--out", str(tmp_path / name), "--seed", "3"]) == 0
    ra, rb = (EvalResult.load(tmp_path / n / "test") for n in ("a", "b"))
    # identical test probabilities, bit for bit, and so identical metrics
    assert np.array_equal(ra.probabilities, rb.probabilities)
    assert ra.accuracy == rb.accuracy


def test_masks_off_and_unapplied_train_the_same_backbone(tmp_path: Path) -> None:
    study = tiny_grid_study("crn")
    study["variants"] = {"off": {"masks.enabled": False}, "unapplied": {"masks.application": "unapplied"}}
    study["seeds"] = [0, 1]
    path = tmp_path / "crn.yaml"
    path.write_text(yaml.safe_dump(study))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    from ablate.runner import Paths, Session
    from ablate.study import load_study
    from ablate.summary import summarize

    paths = Paths(out)
    session = Session(study=load_study(path), storage_url=str(paths.journal), tracking_uri=paths.tracking_uri,
                      paths=paths)
    result = summarize(session)
    cells = result["records"].by_cell()
    for seed in (0, 1):
        off, una = cells[("off", seed)].evaluation(), cells[("unapplied", seed)].evaluation()
        # at one seed both variants give the same test probabilities: their backbones trained identically
        assert np.array_equal(off.probabilities, una.probabilities)
    table = result["table"].set_index("variant")
    # and the summary calls them equivalent, not better or worse
    assert table.loc["unapplied", "verdict"] == "equivalent"


@pytest.mark.parametrize("precision", [[], ["--bf16-cpu"]], ids=["fp32", "bf16-where-supported"])
def test_one_mask_removed_and_one_mask_unapplied_are_the_same_run(tmp_path: Path, precision: list[str]) -> None:
    # `fer_per_stage` removes mask k (`maskK.enabled: false`), `fer_stage_left_out_cpu` builds and runs it but
    # does not apply it (`maskK.application: unapplied`): with the other masks applied, the two must be one run
    runs = {"removed": "mask2.enabled=false", "unapplied": "mask2.application=unapplied", "all": None}
    for name, setting in runs.items():
        extra = ["--set", setting] if setting else []
        assert main(["train", *TRAIN, *precision, *extra, "--out", str(tmp_path / name), "--seed", "4", "--set",
                     "drop_rate=0.3"]) == 0
    removed, unapplied, full = (EvalResult.load(tmp_path / n / "test") for n in runs)
    # bit for bit: the unapplied branch leaves no trace in the weights, the data order or the random stream
    assert np.array_equal(removed.probabilities, unapplied.probabilities)
    # and the comparison can fail: applying mask 2 gives other probabilities
    assert not np.array_equal(full.probabilities, unapplied.probabilities)
