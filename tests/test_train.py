"""Training loop and augmentation: seeding, determinism, resume equivalence, divergence, budgets, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from resmasknet import create_model
from resmasknet.augment import augment_batch, predict_proba, random_affine
from resmasknet.checkpoint import load_checkpoint, read_checkpoint
from resmasknet.train import CPU_RECIPE, StopTraining, TrainConfig, expected_epochs, recipe_for, train


def tiny_data(n: int = 240, seed: int = 0):
    """A few hundred generated faces: train / val / test."""
    from resmasknet.data import load_data

    return load_data(f"generated:n={n},seed={seed}")


@pytest.fixture(scope="module")
def data():
    return tiny_data()


# Tiny runs: 3 batches of 16 per epoch, 48 validation images.
TINY = CPU_RECIPE.replace(epochs=2, batch_size=16, max_train_batches=3, limit=48, eval_batch_size=48)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("resmasknet_tiny")


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- augmentation ------------------------------------------------------------------------------------
def test_augment_shape_range_layout_and_seeding():
    model = tiny_model()
    faces = torch.randint(0, 256, (8, 48, 48), dtype=torch.uint8)
    a = augment_batch(model, faces, torch.Generator().manual_seed(3))
    b = augment_batch(model, faces, torch.Generator().manual_seed(3))
    c = augment_batch(model, faces, torch.Generator().manual_seed(4))
    # the augmented batch has the network's input shape, float in [0, 1], channels_last
    assert a.shape == (8, 1, 48, 48) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert a.is_contiguous(memory_format=torch.channels_last)
    # the same generator seed gives the same batch; another seed gives another
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_augment_flip_and_identity_are_exact():
    x = torch.rand(4, 1, 48, 48)
    g = torch.Generator()
    flip_all = (torch.ones(4, dtype=torch.bool), torch.zeros(4))
    keep_all = (torch.zeros(4, dtype=torch.bool), torch.zeros(4))
    # flip without rotation is a mirror image; no flip and 0 degrees returns the input
    assert torch.allclose(random_affine(x, g, params=flip_all), torch.flip(x, dims=[-1]), atol=1e-5)
    assert torch.allclose(random_affine(x, g, params=keep_all), x, atol=1e-5)
    # a 90-degree rotation of a square image is a transpose-and-flip (black fill plays no part)
    rot = random_affine(x, g, params=(torch.zeros(4, dtype=torch.bool), torch.full((4,), 90.0)))
    assert torch.allclose(rot, torch.rot90(x, k=1, dims=(-2, -1)), atol=1e-4) or \
        torch.allclose(rot, torch.rot90(x, k=-1, dims=(-2, -1)), atol=1e-4)


def test_augment_draws_span_the_recipe():
    from resmasknet.augment import random_affine_params

    flip, angle = random_affine_params(20000, torch.Generator().manual_seed(0))
    # about half the images are flipped; angles are uniform in [-30, 30]
    assert abs(flip.float().mean().item() - 0.5) < 0.02
    assert angle.min() >= -30 and angle.max() <= 30 and angle.abs().mean().item() == pytest.approx(15, abs=0.5)


def test_augment_three_channel_input_keeps_channels_equal():
    torch.manual_seed(0)
    model = create_model("resmasknet_tiny", in_chans=3, input_size=64)
    x = augment_batch(model, torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8), torch.Generator().manual_seed(0))
    # grey copied to RGB, resized to input_size, augmented: all three channels stay identical
    assert x.shape == (3, 3, 64, 64)
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])


class MirrorInvariant(nn.Module):
    """A model whose output cannot change under a horizontal flip (global pooling of a symmetric conv)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 7, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def test_flip_tta_consistency():
    x = torch.rand(5, 1, 48, 48)
    sym = MirrorInvariant()
    with torch.no_grad():
        plain = predict_proba(sym, x)
        flip = predict_proba(sym, x, tta="flip")
    # for a mirror-invariant model, flip TTA equals the plain prediction
    assert torch.allclose(plain, flip, atol=1e-6)
    model = tiny_model().eval()
    with torch.no_grad():
        a = predict_proba(model, x, tta="flip")
        b = predict_proba(model, torch.flip(x, dims=[-1]), tta="flip")
        auth1 = predict_proba(model, x, tta="authors", generator=torch.Generator().manual_seed(0))
        auth2 = predict_proba(model, x, tta="authors", generator=torch.Generator().manual_seed(0))
    # flip TTA of any model gives the same answer for an image and its mirror; rows are distributions
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a.sum(1), torch.ones(5), atol=1e-5)
    # the authors' TTA is seeded: the same generator seed gives the same probabilities
    assert torch.equal(auth1, auth2) and torch.allclose(auth1.sum(1), torch.ones(5), atol=1e-5)


# ---- recipes ---------------------------------------------------------------------------------------------
def test_recipes_and_validation():
    # the paper preset defaults to the authors' recipe; the 48-px presets to the CPU recipe
    assert recipe_for("resmasknet_paper") == TrainConfig()
    assert TrainConfig().optimizer == "radam" and TrainConfig().lr == 1e-4 and TrainConfig().batch_size == 48
    assert recipe_for("resnet_cpu") == CPU_RECIPE
    # bad values and unknown fields are refused with a message naming them
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="adam")
    with pytest.raises(KeyError, match="lrate"):
        TrainConfig().replace(lrate=1.0)
    # a config round-trips through a dict
    assert TrainConfig.from_dict(CPU_RECIPE.to_dict()) == CPU_RECIPE


# ---- the loop --------------------------------------------------------------------------------------------
def test_same_seed_same_metrics(data, tmp_path):
    cfg = TINY.replace(epochs=1)
    r1 = train(tiny_model(), data, cfg, out_dir=tmp_path / "a", progress=False)
    r2 = train(tiny_model(), data, cfg, out_dir=tmp_path / "b", progress=False)
    # two seeded 1-epoch runs on CPU give identical validation accuracy and loss, and identical weights
    assert r1.status == r2.status == "completed"
    assert r1.final["val_acc"] == r2.final["val_acc"]
    assert r1.final["val_loss"] == r2.final["val_loss"]
    assert r1.final["train_loss"] == r2.final["train_loss"]
    assert state_equal(read_checkpoint(tmp_path / "a/last.pt")["state_dict"],
                       read_checkpoint(tmp_path / "b/last.pt")["state_dict"])


# history entries that measure time, not learning
TIMING_KEYS = ("train_img_s", "val_s", "epoch_s", "elapsed_min")


def test_two_fresh_runs_with_one_seed_are_identical(data, tmp_path):
    cfg = TINY.replace(seed=7, max_train_batches=2)
    runs = [train(create_model("resmasknet_tiny", seed=cfg.seed), data, cfg, out_dir=tmp_path / name,
                  progress=False) for name in ("a", "b")]
    # initial weights, data order, augmentation and dropout all follow the seed: the same history, entry by
    # entry (timings aside), and bit-identical best.pt tensors
    assert [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in runs[0].history] == \
        [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in runs[1].history]
    assert len(runs[0].history) == cfg.epochs
    assert state_equal(read_checkpoint(tmp_path / "a/best.pt")["state_dict"],
                       read_checkpoint(tmp_path / "b/best.pt")["state_dict"])
    # another seed gives another run
    other = train(create_model("resmasknet_tiny", seed=8), data, cfg.replace(seed=8, epochs=1), out_dir=tmp_path / "c",
                  progress=False)
    assert other.history[0]["train_loss"] != runs[0].history[0]["train_loss"]


def test_train_one_epoch_and_validate_are_the_loop(data, tmp_path):
    from resmasknet.train import validate

    model = create_model("resmasknet_tiny", seed=0)
    val = data.select("val")
    images = torch.from_numpy(val.images[:20])
    acc, nll = validate(model, images, val.labels[:20], batch_size=8, max_batches=2)
    # validate scores the first max_batches x batch_size images (16 of 20) and returns a finite loss
    assert acc * 16 == pytest.approx(round(acc * 16)) and math.isfinite(nll) and nll > 0
    full, _ = validate(model, images, val.labels[:20], batch_size=8)
    assert full * 20 == pytest.approx(round(full * 20))


def test_resume_after_interruption_matches_uninterrupted_run(data, tmp_path):
    full = train(tiny_model(), data, TINY, out_dir=tmp_path / "full", progress=False)

    def stop_after_first(epoch, metrics):
        raise StopTraining("simulated interruption")

    part = train(tiny_model(), data, TINY, out_dir=tmp_path / "part", callback=stop_after_first, progress=False)
    # the callback's StopTraining ends the run cleanly after epoch 1, state saved
    assert part.status == "stopped" and part.epochs == 1 and "simulated interruption" in part.message
    seen = []
    resumed = train(tiny_model(seed=99), data, TINY, out_dir=tmp_path / "part", progress=False,
                    callback=lambda e, m: seen.append(e))
    # the resumed run trains only epoch 2 and ends with the uninterrupted run's metrics and weights
    assert seen == [2]
    assert resumed.status == full.status == "completed"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert [h[key] for h in resumed.history] == [h[key] for h in full.history], key
    assert state_equal(read_checkpoint(tmp_path / "full/last.pt")["state_dict"],
                       read_checkpoint(tmp_path / "part/last.pt")["state_dict"])
    # history.json holds one entry per epoch
    assert [h["epoch"] for h in json.loads((tmp_path / "part/history.json").read_text())] == [1, 2]
    # starting again on a finished run trains nothing more
    again = train(tiny_model(), data, TINY, out_dir=tmp_path / "part", progress=False,
                  callback=lambda e, m: seen.append(e))
    assert again.status == "completed" and seen == [2]
    # resuming with another recipe is refused
    with pytest.raises(ValueError, match="recipe differs"):
        train(tiny_model(), data, TINY.replace(lr=0.5), out_dir=tmp_path / "part", progress=False)


def poisoned_at(model, batch: int):
    """`model` whose classifier output turns NaN at the given training batch (1-based), and only there."""
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == batch:
                return output * float("nan")
        return output

    model.fc.register_forward_hook(poison)
    return model


def test_nan_loss_stops_with_diverged_status(data, tmp_path):
    model = poisoned_at(tiny_model(), batch=2)
    res = train(model, data, TINY, out_dir=tmp_path, progress=False, device="cpu")
    # a NaN loss at the second batch stops the run; the message names the epoch and the batch
    assert res.status == "diverged"
    assert "epoch 1" in res.message and "batch 2/3" in res.message and "nan" in res.message
    assert res.epochs == 0 and not (tmp_path / "best.pt").exists()
    # no weight ever became NaN (the bad batch was caught before its update)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("bad_batch", [1, 3])
def test_losses_checked_in_batches_leave_a_diverged_model_finite(data, tmp_path, monkeypatch, bad_batch):
    """With the GPU's batched checks (here every 2 batches, on the CPU), updates may follow a NaN loss before it
    is seen; the model is then given back the weights of the last check that passed. A NaN loss at batch 1 is
    seen at batch 2, after its update: the weights are the initial ones again, by hand. A NaN loss at the
    last batch (3) is checked before its update: nothing was poisoned, and the weights are those of the
    every-batch check, which stops before the same update."""
    import copy
    import importlib

    train_mod = importlib.import_module("resmasknet.train")
    reference = poisoned_at(tiny_model(), batch=bad_batch)
    res = train(reference, data, TINY, out_dir=tmp_path / "every", progress=False, device="cpu")
    assert res.status == "diverged"
    monkeypatch.setattr(train_mod, "_check_every", lambda dev: 2)
    model = poisoned_at(tiny_model(), batch=bad_batch)
    initial = copy.deepcopy(model.state_dict())
    res = train(model, data, TINY, out_dir=tmp_path / "batched", progress=False, device="cpu")
    assert res.status == "diverged" and f"batch {bad_batch}/3" in res.message
    assert all(torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
    expected = initial if bad_batch == 1 else reference.state_dict()
    assert state_equal(model.state_dict(), expected)


@pytest.mark.parametrize("budget_schedule", [False, True])
def test_losses_checked_in_batches_still_stop_a_run_that_ends_its_epoch_early(data, tmp_path, monkeypatch,
                                                                               budget_schedule):
    """On a GPU the losses are checked 25 batches at a time; an epoch that ends before its next check (out of
    time, or cut short by the budget schedule) must still be stopped as diverged, not recorded."""
    import importlib

    train_mod = importlib.import_module("resmasknet.train")  # the module (the package exports a function `train`)
    monkeypatch.setattr(train_mod, "_check_every", lambda dev: 25)  # the GPU's batching, on the CPU
    model = poisoned_at(tiny_model(), batch=1)
    # a zero time budget ends the first epoch after its first batch: by _OutOfTime, or cut short by the schedule
    res = train(model, data, TINY.replace(max_minutes=0.0, budget_schedule=budget_schedule), out_dir=tmp_path,
                progress=False)
    assert res.status == "diverged" and "epoch 1" in res.message and "batch 1/3" in res.message
    assert res.epochs == 0 and not (tmp_path / "best.pt").exists()


def test_huge_learning_rate_diverges(data, tmp_path):
    res = train(tiny_model(), data, TINY.replace(lr=1e12, scheduler="none", optimizer="sgd", momentum=0.0,
                                                 epochs=3, max_train_batches=4),
                out_dir=tmp_path, progress=False)
    # lr=1e12 blows the loss up to inf/NaN within a few batches: status diverged, epoch and batch named
    assert res.status == "diverged" and "epoch" in res.message and "batch" in res.message


def test_time_budget_and_best_checkpoint(data, tmp_path):
    res = train(tiny_model(), data, TINY.replace(max_minutes=0.0), out_dir=tmp_path / "t", progress=False)
    # a zero budget stops during the first epoch, which is discarded
    assert res.status == "time_limit" and res.epochs == 0 and math.isnan(res.best_val_acc)
    model = tiny_model()
    res = train(model, data, TINY.replace(epochs=1), out_dir=tmp_path / "b", progress=False)
    loaded, ckpt = load_checkpoint(tmp_path / "b/best.pt")
    # best.pt is a standard checkpoint of the best epoch, and the returned model holds its weights
    assert ckpt["metadata"]["epoch"] == res.best_epoch == 1
    assert ckpt["metadata"]["val_acc"] == res.best_val_acc
    assert state_equal(loaded.state_dict(), {k: v.cpu() for k, v in model.state_dict().items()})
    # result.json summarises the run
    assert json.loads((tmp_path / "b/result.json").read_text())["status"] == "completed"
    # starting over in the same folder removes the old run's checkpoints rather than reporting them
    res = train(tiny_model(), data, TINY.replace(max_minutes=0.0), out_dir=tmp_path / "b", resume=False,
                progress=False)
    assert res.best_path is None and res.last_path is None


def test_budget_schedule_anneals_within_the_budget(data, tmp_path):
    cfg = TINY.replace(epochs=1000, max_minutes=0.05, budget_schedule=True)
    res = train(tiny_model(), data, cfg, out_dir=tmp_path, progress=False)
    # the lr schedule follows the clock: the run ends itself in a cut-short epoch, well before 1000 epochs,
    # with the learning rate annealed close to zero
    assert res.status == "completed" and "time budget" in res.message
    assert 1 <= res.epochs < 1000 and "cut_short" in res.history[-1]
    assert res.history[-1]["lr"] < 0.2 * cfg.lr
    # budget_schedule without a budget is refused
    with pytest.raises(ValueError, match="budget_schedule"):
        TINY.replace(budget_schedule=True)


def test_progress_bar_counts_the_epochs_a_time_budget_allows():
    # the epochs bar's total: the recipe's epochs without a budget; with one, what the time left allows at the
    # last epoch's pace (hand-computed below), so a 60-minute run does not show "1000 epochs, 80 hours left"
    assert expected_epochs(TINY.replace(epochs=7), [], 0.0) == 7
    budget = TINY.replace(epochs=1000, max_minutes=60, budget_schedule=True)
    assert expected_epochs(budget, [], 0.0) is None  # nothing to go by yet
    first = [{"epoch_s": 300.0, "val_s": 10.0}]
    # 3600 s - 300 s used = 3300 s; the schedule keeps 20 s back: 3280 / 300 = 10.9 -> 11 more, the last cut short
    assert expected_epochs(budget, first, 300.0, reserve_s=20.0) == 12
    assert expected_epochs(budget, first, 300.0, reserve_s=600.0) == 10  # 2700 / 300 = 9 more
    # without budget_schedule an epoch that would not fit is not started: floor(3300 / 300) = 11 more
    assert expected_epochs(budget.replace(budget_schedule=False), first, 300.0) == 12
    assert expected_epochs(budget.replace(budget_schedule=False), first, 330.0) == 11  # 3270 / 300 = 10.9
    # never more than the recipe's epochs
    assert expected_epochs(budget.replace(epochs=5), first, 300.0, reserve_s=20.0) == 5
    assert expected_epochs(budget, first * 12, 3600.0, reserve_s=20.0) == 12  # out of time: what has run


def test_soft_labels_and_label_smoothing(data, tmp_path):
    from dataclasses import replace

    k = len(data.classes)
    soft = np.full((len(data), k), 0.1 / (k - 1), np.float32)
    soft[np.arange(len(data)), data.labels] = 0.9
    soft_data = replace(data, soft_labels=soft)
    res = train(tiny_model(), soft_data, TINY.replace(epochs=1, soft_labels=True, label_smoothing=0.1,
                                                      cpu_bf16=True), out_dir=tmp_path / "s", progress=False)
    # soft-label cross-entropy (here under bf16 autocast on CPU) trains to a finite loss
    assert res.status == "completed" and math.isfinite(res.final["train_loss"])
    # asking for soft labels on data without them is refused
    with pytest.raises(ValueError, match="soft labels"):
        train(tiny_model(), data, TINY.replace(soft_labels=True), out_dir=tmp_path / "x", progress=False)


# ---- CLI ----------------------------------------------------------------------------------------------------
def test_cli_train_smoke(tmp_path, capsys):
    from ablate.cli import main

    out = tmp_path / "run"
    rc = main(["train", "--model", "resmasknet_tiny", "--data", "generated:n=240,seed=0", "--out", str(out),
               "--epochs", "1", "--batch-size", "16", "--max-train-batches", "2", "--limit", "32",
               "--no-progress", "--set", "mask2.enabled=false", "--device", "cpu"])
    text = capsys.readouterr().out
    # it prints a line per epoch and a summary, evaluates on test, and writes the run's files
    assert rc == 0
    assert "epoch   1" in text and "best val acc" in text and "test (" in text
    for name in ("best.pt", "last.pt", "history.json", "result.json", "test/metrics.json", "test/predictions.csv"):
        assert (out / name).exists(), name
    # the --set override reached the network
    assert load_checkpoint(out / "best.pt")[0].config.masks[1].enabled is False
    # a bad --set key is a clear error, not a traceback
    rc = main(["train", "--model", "resmasknet_tiny", "--out", str(tmp_path / "bad"), "--set", "mask9.depth=1"])
    assert rc == 2 and "mask9" in capsys.readouterr().err
