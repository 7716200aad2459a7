"""Scores of maps against known answers: deletion/insertion on the explained class, localisation
against ground-truth regions with a data-prior baseline, map orientation. Every expected value is
computed by hand or by scipy, not read back from the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import Tensor, nn

from ablate.analysis import (
    ORIENTATION,
    data_prior,
    deletion_insertion,
    localisation,
    localisation_scores,
    map_agreement,
    probe,
    reduce_mask,
)
from resmasknet import create_model


class RegionModel(nn.Module):
    """Class 0 wins exactly when the pixels of a fixed region are bright: an oracle map is known."""

    def __init__(self, region: Tensor):
        super().__init__()
        self.region: Tensor
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.tensor(40.0))

    def prepare_input(self, images: Tensor) -> Tensor:
        x = images.unsqueeze(1) if images.dim() == 3 else images
        return x.float() / 255.0 if images.dtype == torch.uint8 else x.float()

    def forward(self, x: Tensor) -> Tensor:
        r = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        z = self.scale * (r - 0.5)
        return torch.stack([z, torch.zeros_like(z)], 1)


@pytest.fixture(scope="module")
def region_case() -> tuple[RegionModel, np.ndarray, np.ndarray]:
    region = torch.zeros(48, 48)
    region[10:22, 14:34] = 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (16, 48, 48), dtype=np.uint8)
    images[:, region.numpy() > 0] = 255
    oracle = np.broadcast_to(region.numpy(), (16, 48, 48)).copy()
    return RegionModel(region), images, oracle


# ---------------------------------------------------------------------------------------------
# deletion / insertion
# ---------------------------------------------------------------------------------------------
def test_deletion_auc_of_an_oracle_map_beats_random(region_case):
    model, images, oracle = region_case
    labels = np.zeros(16, np.int64)
    res = deletion_insertion(model, images, labels, {"oracle": oracle}, steps=10, baseline="black", batch_size=64)
    t = res.table.set_index("map")
    # deleting the evidence first kills the class probability fastest: oracle deletion AUC < random
    assert t.loc["oracle", "deletion_auc"] < t.loc["random", "deletion_auc"] - 0.3
    # inserting it first restores the class fastest: oracle insertion AUC > random
    assert t.loc["oracle", "insertion_auc"] > t.loc["random", "insertion_auc"] + 0.3
    # curves start at the unmodified face and end at the baseline, both ends shared by all maps
    d = res.curves["deletion"]
    np.testing.assert_allclose(d["oracle"][:, 0], d["random"][:, 0])
    np.testing.assert_allclose(d["oracle"][:, -1], d["random"][:, -1])
    # the model predicts class 0 on every face (bright region): explained class = true class here,
    # so both scorings agree exactly
    np.testing.assert_array_equal(res.targets, 0)
    assert t.loc["oracle", "deletion_auc"] == pytest.approx(t.loc["oracle", "deletion_auc_true"])
    assert (t["orientation"] == "higher = attended more").all()


def test_deletion_scores_the_explained_class_not_the_true_one(region_case):
    model, images, oracle = region_case
    # the same faces, all labelled 1: the model says 0 (bright region) on every one, so every face is
    # misclassified and the oracle map explains class 0
    labels = np.ones(16, np.int64)
    res = deletion_insertion(model, images, labels, {"oracle": oracle}, steps=10, baseline="black", batch_size=64)
    t = res.table.set_index("map").loc["oracle"]
    with torch.no_grad():
        p0 = torch.softmax(model(model.prepare_input(torch.from_numpy(images))), 1)[:, 0].numpy()
    # by hand: at t = 0 the explained-class curve is p(class 0) and the true-class curve 1 - p(class 0)
    np.testing.assert_allclose(res.curves["deletion"]["oracle"][:, 0], p0, atol=1e-6)
    np.testing.assert_allclose(res.curves["deletion_true"]["oracle"][:, 0], 1 - p0, atol=1e-6)
    # deleting the evidence for class 0 kills the explained class (low AUC) and so *raises* the true
    # class (high AUC): true-class scoring would call a perfect map unfaithful
    assert t["deletion_auc"] < 0.3 < 0.7 < t["deletion_auc_true"]
    assert t["insertion_auc"] > t["insertion_auc_true"]
    assert t["n_explained_not_true"] == 16 and t["scored_class"] == "explained (pred)"
    # the explained class can also be given (e.g. the attribution's targets): class 1 flips the signs
    res1 = deletion_insertion(model, images, labels, {"oracle": oracle}, steps=10, baseline="black", batch_size=64,
                              targets=np.ones(16, np.int64), target_name="true")
    assert res1.table.set_index("map").loc["oracle", "deletion_auc"] == pytest.approx(t["deletion_auc_true"])


def test_reference_probabilities_replace_the_unmodified_forward_pass(region_case):
    model, images, oracle = region_case
    labels = np.zeros(16, np.int64)
    with torch.no_grad():
        ref = torch.softmax(model(model.prepare_input(torch.from_numpy(images))), 1).numpy()
    a = deletion_insertion(model, images, labels, {"oracle": oracle}, steps=5, batch_size=64)
    b = deletion_insertion(model, images, labels, {"oracle": oracle}, steps=5, batch_size=64, reference_probs=ref)
    # the cached probabilities of the shared pass give the same curves as running the faces again
    for kind in a.curves:
        np.testing.assert_allclose(a.curves[kind]["oracle"], b.curves[kind]["oracle"], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# localisation
# ---------------------------------------------------------------------------------------------
def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    regions = np.zeros((n, 48, 48), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, 30, 2)
        regions[i, y:y + 12, x:x + 16] = 1
    return regions


def test_localisation_oracle_random_and_uniform():
    regions = _boxes(64)
    mass, pointing = localisation_scores(regions.astype(float), regions)
    # a map equal to the region puts all its mass inside and points inside
    np.testing.assert_allclose(mass, 1.0)
    np.testing.assert_allclose(pointing, 1.0)
    t = localisation({"oracle": regions.astype(float)}, regions, seed=0).set_index("map")
    area = 12 * 16 / 48**2
    # a random map scores about the region's area fraction; the uniform baseline scores it exactly
    assert abs(t.loc["random", "mass"] - area) < 0.01
    assert t.loc["uniform", "mass"] == pytest.approx(area)
    # the oracle's mass_ratio is 1 / area: fully concentrated on the evidence
    assert t.loc["oracle", "mass_ratio"] == pytest.approx(1 / area)
    assert set(t.index[t["baseline"]]) == {"random", "uniform", "prior"}


def test_gain_over_the_data_prior_is_zero_for_the_prior_and_maximal_for_the_truth():
    regions = _boxes(40, seed=1)
    prior = data_prior(regions)
    # the prior is the per-pixel fraction of faces whose region covers it (hand computation)
    np.testing.assert_allclose(prior, regions.astype(float).mean(0))
    prior_maps = np.broadcast_to(prior, regions.shape).copy()
    t = localisation({"truth": regions.astype(float), "same_as_prior": prior_maps}, regions, seed=0).set_index("map")
    # the prior scored as a map is the prior row, so its gain over the prior is exactly 0
    assert t.loc["same_as_prior", "mass"] == pytest.approx(t.loc["prior", "mass"])
    assert t.loc["same_as_prior", "mass_gain_vs_prior"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc["prior", "mass_gain_vs_prior"] == pytest.approx(0.0, abs=1e-12)
    # mass is at most 1, so the truth's gain 1 - mass(prior) is the largest any map can have
    prior_mass = np.mean([(m - m.min())[r > 0].sum() / (m - m.min()).sum() for m, r in zip(prior_maps, regions)])
    assert t.loc["truth", "mass_gain_vs_prior"] == pytest.approx(1 - prior_mass)
    assert t.loc["truth", "mass_gain_vs_random"] == pytest.approx(1 - t.loc["random", "mass"])


def test_prior_beats_random_on_generated_faces_so_random_is_not_the_bar():
    from resmasknet.data import load_data

    d = load_data("generated:n=60,seed=0")
    regions = d.regions
    assert regions is not None
    blob = np.broadcast_to(data_prior(regions), regions.shape)
    t = localisation({"blob": blob}, regions, seed=0).set_index("map")
    # an image-independent map beats random by a wide margin on generated faces ...
    assert t.loc["blob", "mass"] > 1.5 * t.loc["random", "mass"]
    assert t.loc["blob", "mass_gain_vs_random"] > 0
    # ... and has no gain over the prior (it is the prior): that column is the honest one
    assert t.loc["blob", "mass_gain_vs_prior"] == pytest.approx(0.0, abs=1e-12)


def test_mass_ignores_a_constant_floor():
    regions = _boxes(8, seed=2)
    # a softmax max-over-channels map never falls below 1/C: the same map on a floor of 1/8
    floor = regions.astype(float) + 1 / 8
    mass, _ = localisation_scores(floor, regions)
    # after subtracting each image's minimum, the floor is gone: all mass inside, as for the bare map
    np.testing.assert_allclose(mass, 1.0)
    # by hand, without the shift the floor would have capped it well below 1
    area = regions.reshape(8, -1).mean(1)
    raw = (area * (1 + 1 / 8)) / (area + 1 / 8)
    assert (raw < 0.75).all()


# ---------------------------------------------------------------------------------------------
# orientation
# ---------------------------------------------------------------------------------------------
def test_entropy_is_the_mirror_of_kl_and_is_never_scored_as_attention():
    torch.manual_seed(0)
    m = torch.softmax(3 * torch.randn(1, 16, 6, 6), dim=1)
    r = reduce_mask(m, "softmax")
    rho = spearmanr(r["kl"].ravel().numpy(), r["entropy"].ravel().numpy())[0]
    # KL = log C - entropy: perfectly anti-ranked (scipy), so raw entropy read as attention is backwards
    assert rho == pytest.approx(-1.0)
    assert "LESS" in ORIENTATION["entropy"] and "attended more" in ORIENTATION["kl"]
    model = create_model("resmasknet_tiny", seed=0, base_width=4, input_size=24)
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    pr = probe(model, faces, np.zeros(3, np.int64), max_keep=3)
    # entropy is kept for galleries but left out of the maps that get scored
    assert "entropy" in pr.maps["mask1"]
    assert not any(k.endswith("/entropy") for k in pr.all_maps())
    assert any(k.endswith("/entropy") for k in pr.all_maps(attention_only=False))


def test_map_agreement_of_a_map_with_itself_and_with_noise():
    rng = np.random.default_rng(0)
    a = rng.random((20, 12, 12))
    t = map_agreement({"m": a}, {"same": a, "noise": rng.random((20, 48, 48))}, top_k=(0.1,)).set_index("attribution")
    # a map agrees perfectly with itself (both upsampled the same way to the face)
    assert t.loc["same", "spearman"] == pytest.approx(1.0) and t.loc["same", "iou_top10"] == pytest.approx(1.0)
    # an unrelated map is near zero correlation and near the chance IoU
    assert abs(t.loc["noise", "spearman"]) < 0.1
    assert abs(t.loc["noise", "iou_top10"] - t.loc["noise", "iou_top10_chance"]) < 0.05
    assert "orientation" in t.columns
