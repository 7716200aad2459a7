"""Evaluation: metrics agree with their definitions, per-image outputs are saved and reload, TTA, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from resmasknet import create_model, save_checkpoint
from resmasknet.evaluate import EvalResult, evaluate, from_probabilities


@pytest.fixture(scope="module")
def test_split():
    from resmasknet.data import load_data

    return load_data("generated:n=240,seed=0").select("test")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("resmasknet_tiny").eval()


def test_metrics_from_probabilities():
    classes = ("a", "b", "c")
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3, dtype=np.float32)[[0, 1, 1, 1, 2, 0]] * 0.7 + 0.1
    res = from_probabilities(probs, labels, classes)
    # accuracy counts argmax hits: 4 of 6
    assert res.accuracy == pytest.approx(4 / 6)
    # confusion rows are true classes, columns predictions
    assert res.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert res.confusion.dtype == np.int64
    # per-class precision / recall follow from the confusion matrix (class b: 2 of 3 predicted b are b)
    assert res.precision[1] == pytest.approx(2 / 3) and res.recall[1] == pytest.approx(1.0)
    assert res.support.tolist() == [2, 2, 2]
    # the loss is the mean negative log-probability of the true class
    assert res.loss == pytest.approx(float(-np.log(probs[np.arange(6), labels]).mean()), rel=1e-5)


def test_evaluate_outputs_and_save_roundtrip(model, test_split, tmp_path):
    res = evaluate(model, test_split, batch_size=16, device="cpu")
    n, k = len(test_split), len(test_split.classes)
    # one prediction and one probability row per image; rows sum to 1; accuracy matches predictions
    assert res.predictions.shape == (n,) and res.probabilities.shape == (n, k)
    assert np.allclose(res.probabilities.sum(1), 1, atol=1e-4)
    assert res.accuracy == pytest.approx(float((res.predictions == test_split.labels).mean()))
    # the confusion matrix counts every image once
    assert res.confusion.sum() == n
    folder = res.save(tmp_path / "ev")
    # metrics.json, predictions.csv and predictions.npz are written
    meta = json.loads((folder / "metrics.json").read_text())
    assert meta["accuracy"] == res.accuracy and set(meta["per_class"]) == set(test_split.classes)
    with open(folder / "predictions.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and int(rows[0]["prediction"]) == int(res.predictions[0])
    back = EvalResult.load(folder)
    # a saved result reloads with the same per-image predictions and metrics
    assert np.array_equal(back.predictions, res.predictions) and back.accuracy == res.accuracy
    # the text report names every class
    assert all(c in res.report() for c in test_split.classes)


def test_evaluate_tta_and_batch_size_invariance(model, test_split):
    plain16 = evaluate(model, test_split, batch_size=16, device="cpu")
    plain64 = evaluate(model, test_split, batch_size=64, device="cpu")
    flip = evaluate(model, test_split, tta="flip", batch_size=64, device="cpu")
    a1 = evaluate(model, test_split, tta="authors", batch_size=64, device="cpu", seed=1)
    a2 = evaluate(model, test_split, tta="authors", batch_size=64, device="cpu", seed=1)
    # the batch size does not change predictions (eval mode: BatchNorm uses running statistics)
    assert np.allclose(plain16.probabilities, plain64.probabilities, atol=1e-5)
    # TTA results are labelled, differ from the plain probabilities, and the authors' TTA is seeded
    assert flip.tta == "flip" and not np.allclose(flip.probabilities, plain64.probabilities)
    assert np.array_equal(a1.probabilities, a2.probabilities)
    # an unknown TTA is refused
    with pytest.raises(ValueError, match="tta"):
        evaluate(model, test_split, tta="ten-crop", device="cpu")


def test_cli_evaluate(model, tmp_path, capsys):
    from ablate.cli import main
    from resmasknet.data import CLASSES

    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, model, classes=CLASSES)
    rc = main(["evaluate", str(ckpt), "--data", "generated:n=240,seed=0", "--split", "test", "--tta", "flip",
               "--out", str(tmp_path / "ev"), "--device", "cpu"])
    text = capsys.readouterr().out
    # it prints the accuracy, the per-class table and the confusion matrix, and saves the files
    assert rc == 0 and "accuracy" in text and "confusion matrix" in text and "precision" in text
    assert (tmp_path / "ev/predictions.npz").exists()
    # a missing checkpoint is a clear error
    rc = main(["evaluate", str(tmp_path / "nope.pt"), "--data", "generated:n=240,seed=0"])
    assert rc == 2 and "nope.pt" in capsys.readouterr().err


def test_cli_evaluate_explains_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    from ablate.cli import main

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "x.pt"
    text.write_text("hello")
    # a blank file: the error says it is empty (0 bytes)
    rc = main(["evaluate", str(empty), "--data", "generated:n=70,seed=0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "empty.pt: empty file (0 bytes), not a checkpoint" in err
    # a text file: the error says it is not a PyTorch file and shows its first bytes
    rc = main(["evaluate", str(text), "--data", "generated:n=70,seed=0", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "x.pt: not a PyTorch file (it starts with b'hello')" in err
