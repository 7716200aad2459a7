"""Generated faces: determinism, balance, ground-truth evidence maps, and the difficulty contract
(linear probe on raw pixels low, classes still learnable)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from resmasknet.data import CLASSES, EVIDENCE, DataError, GeneratorConfig, baseline_check, generate_faces, save_examples
from resmasknet.data import _generated as gen

NO_NUISANCE = dict(rotation=0, shift=0, scale=0, yaw=0, noise=0, lighting=0, occlusion=0, expression=1)


def test_same_seed_gives_identical_arrays():
    a, b = generate_faces(n=140, seed=5), generate_faces(n=140, seed=5)
    # every array is bit-identical for the same seed
    for name in ("images", "labels", "split", "regions"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    # another seed gives other faces
    assert not np.array_equal(a.images, generate_faces(n=140, seed=6).images)


def test_shapes_balance_and_split():
    data = generate_faces(n=700)
    # uint8 [N, 48, 48] images and 0/1 regions, C-contiguous, FER2013 class names
    assert data.images.shape == data.regions.shape == (700, 48, 48)
    assert data.images.dtype == data.regions.dtype == np.uint8 and data.images.flags.c_contiguous
    assert set(np.unique(data.regions)) <= {0, 1} and data.classes == CLASSES
    # class-balanced overall and within each split: 80 / 10 / 10 per class
    assert data.counts().tolist() == [[80] * 7, [10] * 7, [10] * 7]
    # the images use the intensity range (not flat)
    assert data.images.std() > 20


def test_pixels_outside_regions_do_not_depend_on_the_class():
    cfg = GeneratorConfig(n=280, occlusion=0)
    labels, _, params = gen._draw_params(cfg)
    img, region = gen._render(params, labels, cfg.size, np.random.default_rng(1))
    # the same faces, same nuisances, same noise, but every part at its neutral shape
    neutral = dict(params)
    for key, value in gen._NEUTRAL.items():
        neutral[key] = np.full_like(params[key], value)
    neutral["wrinkle"] = np.zeros_like(params["wrinkle"])
    img_n, _ = gen._render(neutral, labels, cfg.size, np.random.default_rng(1))
    changed = img != img_n
    # every non-neutral expression changes pixels, and only inside the evidence map
    assert changed[labels != CLASSES.index("neutral")].any(axis=(1, 2)).all()
    assert not (changed & ~region).any()


def test_evidence_parts_sit_where_the_class_says():
    data = generate_faces(n=700, **NO_NUISANCE)
    rows = np.arange(48)
    for c, name in enumerate(CLASSES):
        r = data.regions[data.labels == c].astype(bool)
        # with no occluders every face has evidence
        assert r.any(axis=(1, 2)).all(), name
        top = (r * (rows < 19)[None, :, None]).any(axis=(1, 2))
        # brows (above the eyes) are evidence exactly for the classes that use them
        assert top.all() if "brows" in EVIDENCE[name] else not top.any(), name
        # happy and neutral are told apart by the mouth alone: nothing above row 28
        if EVIDENCE[name] == ("mouth",):
            assert not (r * (rows < 28)[None, :, None]).any(), name


def test_occluders_mostly_avoid_evidence():
    plain = generate_faces(n=280, occlusion=0)
    occluded = generate_faces(n=280, occlusion=1)
    # every face gets an occluder; the rest of the face is the same draw
    assert (plain.images != occluded.images).any(axis=(1, 2)).mean() > 0.95
    assert np.array_equal(plain.labels, occluded.labels)
    # occluders are placed where they hide little evidence: < 10% of the evidence pixels lost
    lost = 1 - occluded.regions.sum() / plain.regions.sum()
    assert 0 <= lost < 0.1, lost


def test_linear_probe_on_raw_pixels_stays_low():
    # a linear classifier on standardised raw pixels stays far from solving the task (<= 60%)
    result = baseline_check(1400, cnn=False, linear="ridge", strengths=(1e3,), verbose=False)
    assert result["linear_test_acc"] <= 0.6, result


def test_without_nuisance_the_classes_are_linearly_separable():
    # the classes are distinct drawings: with every nuisance off the same probe is near perfect,
    # so the low number above comes from the nuisances, not from indistinguishable classes
    result = baseline_check(700, cnn=False, linear="ridge", strengths=(1e2,), verbose=False, **NO_NUISANCE)
    assert result["linear_test_acc"] >= 0.9, result


def test_size_option_and_config_validation():
    data = generate_faces(n=14, size=64)
    # images and regions follow the size option
    assert data.images.shape == data.regions.shape == (14, 64, 64)
    # nonsense sizes are refused
    with pytest.raises(DataError, match="n >= 1"):
        GeneratorConfig(n=0)
    with pytest.raises(TypeError, match="unknown option"):
        generate_faces(n=14, colour=1)


def test_save_examples(tmp_path):
    path = tmp_path / "grid.png"
    save_examples(generate_faces(n=28), str(path), per_class=2, scale=1)
    # one row per class, each face next to its overlay
    width, height = Image.open(path).size
    assert height == 7 * 50 and width == 2 * (48 * 2 + 2)


def test_baseline_check_logs_and_never_prints(capsys, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="resmasknet.data._baselines"):
        result = baseline_check(700, cnn=False, linear="ridge", strengths=(1e3,), verbose=True)
    # library code prints nothing: its progress goes to the logger
    assert capsys.readouterr().out == ""
    assert any("linear (ridge)" in r.message for r in caplog.records)
    assert 0 <= result["linear_test_acc"] <= 1


def test_baselines_main_prints_the_numbers(tmp_path, monkeypatch, capsys):
    from resmasknet.data import _baselines

    monkeypatch.setattr(_baselines, "baseline_check", lambda n: {"n": float(n), "linear_test_acc": 0.25})
    grid = tmp_path / "grid.png"
    # the command line prints the check's numbers and saves the example grid (the library itself never prints)
    assert _baselines.main(["140", str(grid)]) == 0
    out = capsys.readouterr().out
    assert "'linear_test_acc': 0.25" in out and "'n': 140.0" in out and grid.exists()


@pytest.mark.slow
def test_baselines_command_prints_the_numbers(tmp_path):
    import subprocess
    import sys

    grid = tmp_path / "grid.png"
    out = subprocess.run([sys.executable, "-m", "resmasknet.data", "140", str(grid)],
                         capture_output=True, text=True, check=True, timeout=600)
    # `python -m resmasknet.data [n]` runs the check and prints its numbers, without runpy's warning about a
    # module the package had already imported
    assert "cnn_test_acc" in out.stdout and "linear_test_acc" in out.stdout and grid.exists()
    assert "RuntimeWarning" not in out.stderr


@pytest.mark.slow
def test_full_baseline_check():
    result = baseline_check(6000, verbose=False)
    # the reference numbers: logistic regression on raw pixels <= 60%, a small CNN >= 90%
    assert result["linear_test_acc"] <= 0.6, result
    assert result["cnn_test_acc"] >= 0.9, result
