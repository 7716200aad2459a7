"""Sanity checks (Adebayo et al. 2018, cascading model-parameter randomisation as Quantus's MPRT):
the cascade's order, the seeded copy, scipy's Spearman, and the known answers: a gradient map
decorrelates once every weight is random, an image-independent map never does and is flagged, a
mask map is untouched until its own stage is randomised."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from ablate.analysis import SANITY_THRESHOLD, SanityResult, sanity_checks
from ablate.analysis.sanity import check_step_of, randomisation_steps
from resmasknet import create_model
from resmasknet.data import FaceData, load_data

YY, XX = np.mgrid[:48, :48]
BLOB = np.exp(-((YY - 24.0) ** 2 + (XX - 24.0) ** 2) / 200.0)  # a centred blob: the same for every face


def blob_maps(_model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    return np.broadcast_to(BLOB, images.shape).copy()


@pytest.fixture(scope="module")
def case() -> tuple[torch.nn.Module, dict[str, torch.Tensor], FaceData, SanityResult]:
    d = load_data("generated:n=60,seed=0")
    model = create_model("resmasknet_tiny", seed=0, base_width=4, input_size=24).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = sanity_checks(model, d.images[:6], d.labels[:6], methods=("saliency", "gradcam", "mask_attr"),
                        extra_maps={"blob": blob_maps}, keep_maps=True, seed=0)
    return model, before, d, res


def test_the_cascade_goes_from_the_head_down_stage_by_stage():
    model = create_model("resmasknet_tiny", seed=0, base_width=4)
    steps = randomisation_steps(model)
    assert [s for s, _ in steps] == ["fc", "stage4", "stage3", "stage2", "stage1", "stem"]
    # each stage's layer goes with its own mask
    assert dict(steps)["stage3"] == ["layer3", "mask3"]
    names = [s for s, _ in steps]
    # a map is judged once everything between it and the output, and its own stage, is random
    assert check_step_of("mask2/max", names) == "stage2"
    assert check_step_of("gradcam/refine4", names) == "stage4"
    assert check_step_of("mask_attr/mask1", names) == "stage1"
    assert check_step_of("saliency", names) == "stem" and check_step_of("blob", names) == "stem"


def test_randomising_everything_decorrelates_gradients_but_not_an_image_independent_map(case):
    _, _, _, res = case
    s = res.summary.set_index("map")
    # the gradient map changes once the weights are random: correlation well below the threshold
    assert s.loc["saliency", "spearman_final"] < SANITY_THRESHOLD and not s.loc["saliency", "flagged"]
    # a map that does not depend on the model keeps correlation 1 at every step and is flagged
    t = res.table[res.table["map"] == "blob"]
    np.testing.assert_allclose(t["spearman"], 1.0)
    assert s.loc["blob", "flagged"] and s.loc["blob", "threshold"] == SANITY_THRESHOLD


def test_a_mask_map_is_unchanged_until_its_own_stage_is_randomised(case):
    _, _, _, res = case
    t = res.table[res.table["map"] == "mask2/max"].set_index("step")["spearman"]
    # mask2 is a forward quantity of stages 1-2: randomising fc, stage4 and stage3 cannot move it
    np.testing.assert_allclose(t[["fc", "stage4", "stage3"]], 1.0, atol=1e-6)
    assert t["stage2"] < 0.9


def test_correlations_are_scipys_spearman_per_face(case):
    _, _, _, res = case
    for step in ("fc", "stage2", "stem"):
        for key in ("saliency", "mask1/kl", "mask_attr/mask3"):
            a, b = res.maps["trained"][key], res.maps[step][key]
            expected = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b)]
            np.testing.assert_allclose(res.rho[step][key], expected, rtol=1e-9, atol=1e-12)
            row = res.table[(res.table["map"] == key) & (res.table["step"] == step)].iloc[0]
            assert row["spearman"] == pytest.approx(np.nanmean(expected))


def test_the_callers_model_is_untouched_and_the_randomisation_is_seeded(case):
    model, before, d, res = case
    # a copy was randomised: the caller's weights are bit for bit what they were
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    again = sanity_checks(model, d.images[:6], d.labels[:6], methods=("saliency",), masks=False, seed=0)
    other = sanity_checks(model, d.images[:6], d.labels[:6], methods=("saliency",), masks=False, seed=1)
    ref = res.table[res.table["map"] == "saliency"]["spearman"].to_numpy()
    # the same seed gives the same numbers; another seed other random weights
    np.testing.assert_allclose(again.table["spearman"].to_numpy(), ref, rtol=1e-6)
    assert not np.allclose(other.table["spearman"].to_numpy(), ref)
    # the explained class is fixed from the trained model for every randomised copy
    np.testing.assert_array_equal(res.targets, again.targets)
