"""Mask and attribution analysis: reductions, probe, Captum, interventions, faithfulness, localisation,
figures and the one-call `analyse`. Small on purpose (<= 64 faces, and `resmasknet_tiny` shrunk to
width 4 at a 24-px input: 9 MMACs per face instead of 150): the whole file must stay well under a
minute on two shared CPU cores. The 24-px input also exercises the resize inside the attribution
graph: attributions must still come back on the 48-px face."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ablate.analysis import (
    AnalysisResult,
    FaceModel,
    analyse,
    attribute,
    captum_panel,
    class_mean_grid,
    deletion_insertion,
    gain_map,
    gini,
    input_attribution,
    intervene,
    localisation,
    localisation_scores,
    map_agreement,
    mask_gallery,
    mask_stages,
    probe,
    reduce_mask,
    replacement_mask,
    reused_modules,
    save_figure,
    spatial_entropy,
)
from resmasknet import create_model

N = 12
SMALL = {"base_width": 4, "input_size": 24}  # resmasknet_tiny, smaller: stages 24/12/6/3 px, 4..32 channels


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 48, 48), dtype=np.uint8)
    labels = np.arange(N, dtype=np.int64) % 7
    return images, labels


@pytest.fixture(scope="module")
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("resmasknet_tiny", **SMALL).eval()


@pytest.fixture(scope="module")
def tiny_probe(tiny: nn.Module, faces: tuple[np.ndarray, np.ndarray]):  # type: ignore[no-untyped-def]
    return probe(tiny, *faces, batch_size=5, max_keep=8)


# ---------------------------------------------------------------------------------------------
# reductions on known tensors
# ---------------------------------------------------------------------------------------------
def test_softmax_reductions_on_uniform_and_one_hot_masks():
    c = 16
    uniform = torch.full((2, c, 3, 3), 1.0 / c)
    r = reduce_mask(uniform, "softmax")
    # a uniform softmax mask: max = 1/C, normalised channel entropy = 1, KL from uniform = 0
    torch.testing.assert_close(r["max"], torch.full((2, 3, 3), 1.0 / c))
    torch.testing.assert_close(r["entropy"], torch.ones(2, 3, 3))
    torch.testing.assert_close(r["kl"], torch.zeros(2, 3, 3), atol=1e-6, rtol=0)
    one_hot = torch.zeros(1, c, 2, 2)
    one_hot[:, 3] = 1.0
    r = reduce_mask(one_hot, "softmax")
    # a one-hot mask: max = 1, entropy = 0, KL = log C (0 log 0 counted as 0, no NaN)
    torch.testing.assert_close(r["max"], torch.ones(1, 2, 2))
    torch.testing.assert_close(r["entropy"], torch.zeros(1, 2, 2))
    torch.testing.assert_close(r["kl"], torch.full((1, 2, 2), math.log(c)))
    # non-softmax masks get channel mean and max instead
    assert set(reduce_mask(torch.rand(1, 4, 2, 2), "sigmoid")) == {"mean", "max"}


def test_gain_map_is_one_where_the_mask_is_zero():
    torch.manual_seed(1)
    x = torch.rand(2, 8, 5, 5) + 0.1
    m = torch.rand(2, 8, 5, 5)
    m[:, :, :2] = 0.0
    g = gain_map(x, m, "residual")
    # residual: x(1+0) = x, so the gain is exactly 1 where the mask is zero ...
    torch.testing.assert_close(g[:, :2], torch.ones(2, 2, 5))
    # ... and above 1 where a non-negative mask is positive
    assert bool((g[:, 2:] > 1).all())
    # multiply with an all-ones mask leaves features unchanged: gain 1
    torch.testing.assert_close(gain_map(x, torch.ones_like(x), "multiply"), torch.ones(2, 5, 5))
    # a pixel with no features at all counts as unchanged (gain 1), not NaN
    x[:, :, 4, 4] = 0
    assert torch.isfinite(gain_map(x, m, "residual")).all()


def test_spatial_entropy_and_gini_extremes():
    flat = torch.ones(1, 6, 6)
    spike = torch.zeros(1, 6, 6)
    spike[0, 2, 3] = 5.0
    # a flat map is maximally spread (entropy 1) and perfectly equal (Gini 0)
    torch.testing.assert_close(spatial_entropy(flat), torch.ones(1))
    torch.testing.assert_close(gini(flat), torch.zeros(1), atol=1e-6, rtol=0)
    # a single hot pixel has entropy 0 and Gini (n-1)/n
    torch.testing.assert_close(spatial_entropy(spike), torch.zeros(1))
    torch.testing.assert_close(gini(spike), torch.tensor([35 / 36]))


# ---------------------------------------------------------------------------------------------
# probe
# ---------------------------------------------------------------------------------------------
def test_probe_tables_maps_and_bounded_memory(tiny, tiny_probe, faces):
    pr = tiny_probe
    stages = mask_stages(tiny)
    # every stage of the tiny preset has a softmax mask
    assert [s.name for s in pr.stages] == ["mask1", "mask2", "mask3", "mask4"]
    table = pr.stage_table()
    # one row per stage, and every face counted at every stage
    assert list(table["stage"]) == [1, 2, 3, 4] and (table["n"] == N).all()
    # a softmax mask's mean is 1/C whatever the input: the reason channel means are useless
    np.testing.assert_allclose(table["mask_mean"], [1 / s.channels for s in stages], rtol=1e-4)
    # the residual mask can only increase the feature norm: gain >= 1
    assert (table["gain_mean"] >= 1 - 1e-6).all()
    # per-image maps are kept only for max_keep faces, at each stage's native resolution
    for s in stages:
        assert pr.maps[s.name]["max"].shape == (8, s.size, s.size)
        assert pr.maps[s.name]["gain"].shape == (8, s.size, s.size)
        assert pr.class_mean_masks[s.name].shape == (7, s.channels, s.size, s.size)
    # per-class rows: 4 stages x 7 classes, and counts add up to N per stage
    ct = pr.class_table()
    assert len(ct) == 28 and ct.groupby("stage")["n"].sum().eq(N).all()
    # class minus global mean maps average to ~0 over faces (weighted by class counts)
    d = pr.class_diff_maps()["mask1"]["max"]
    np.testing.assert_allclose((d * pr.class_counts[:, None, None]).sum(0), 0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# interventions
# ---------------------------------------------------------------------------------------------
def test_replacement_masks_do_what_they_say():
    st = mask_stages(create_model("resmasknet_tiny", **SMALL))[0]
    m = torch.softmax(torch.randn(2, st.channels, 4, 4), dim=1)
    # uniform softmax replacement is 1/C everywhere
    torch.testing.assert_close(replacement_mask("uniform", m, st), torch.full_like(m, 1 / st.channels))
    sh = replacement_mask("shuffle", m, st, generator=torch.Generator().manual_seed(0))
    # shuffle moves whole per-pixel channel profiles: each pixel's profile exists in the original
    orig = {tuple(np.round(v, 6)) for v in m[0].reshape(st.channels, -1).T.tolist()}
    assert all(tuple(np.round(v, 6)) in orig for v in sh[0].reshape(st.channels, -1).T.tolist())
    cm = torch.rand(7, st.channels, 4, 4)
    # class_mean picks the class mask of each face's (unmodified) prediction
    out = replacement_mask("class_mean", m, st, class_masks=cm, pred=torch.tensor([3, 5]))
    torch.testing.assert_close(out, cm[[3, 5]])


def test_interventions_on_unapplied_masks_change_nothing(faces):
    torch.manual_seed(0)
    model = create_model("resmasknet_tiny", **SMALL, **{"masks.application": "unapplied"}).eval()
    pr = probe(model, *faces, keep_maps=False)
    res = intervene(model, *faces, class_masks=pr, kinds=("zero", "uniform", "shuffle", "spatial_mean", "class_mean"))
    t = res.table
    # the unapplied control never uses its mask: no intervention can move a logit or a prediction
    assert len(t) == 4 * 5
    assert (t["mean_abs_dlogit"] == 0).all() and (t["flip_rate"] == 0).all() and (t["delta_accuracy"] == 0).all()
    assert (t["broken"] == 0).all() and (t["fixed"] == 0).all() and (t["mcnemar_p"] == 1).all()
    # and the stages are flagged as unapplied
    assert not t["applied"].any()


def test_interventions_on_applied_masks_change_logits(tiny, tiny_probe, faces):
    res = intervene(tiny, *faces, class_masks=tiny_probe, batch_size=7)
    t = res.table.set_index(["mask", "kind"])
    # removing a residual mask (zero) changes the logits at every stage of the real network
    assert (t.xs("zero", level="kind")["mean_abs_dlogit"] > 1e-6).all()
    # the paired counts are those of the stored predictions
    y = faces[1]
    for (mask, kind), row in t.iterrows():
        pred, base = res.predictions[f"{mask}/{kind}"], res.predictions["base"]
        assert row["broken"] == ((base == y) & (pred != y)).sum() and row["fixed"] == ((base != y) & (pred == y)).sum()
        assert 0 <= row["mcnemar_p"] <= 1
    # base predictions agree with a plain forward pass
    assert res.predictions["base"].shape == (N,)
    np.testing.assert_array_equal(res.predictions["base"], tiny_probe.preds)


# ---------------------------------------------------------------------------------------------
# Captum
# ---------------------------------------------------------------------------------------------
def test_captum_methods_return_finite_maps_of_the_right_shapes(tiny, faces):
    images, labels = faces[0][:4], faces[1][:4]
    res = attribute(tiny, images, labels, methods=("ig", "saliency", "smoothgrad", "occlusion", "gradcam",
                                                   "mask_attr"),
                    target="true", batch_size=4, ig_steps=8, smoothgrad_samples=3, occlusion_stride=8)
    expected = {"ig", "saliency", "smoothgrad", "occlusion"} | {f"gradcam/refine{i}" for i in range(1, 5)} \
        | {f"mask_attr/mask{i}" for i in range(1, 5)}
    # one map per input method, per stage for GradCAM and per mask for mask attribution
    assert set(res.maps) == expected
    for key, a in res.maps.items():
        # every map is on the 48-px face, finite, and non-negative (|.| or ReLU)
        assert a.shape == (4, 48, 48), key
        assert np.isfinite(a).all() and (a >= 0).all(), key
    # native GradCAM maps keep the stage's own resolution (stage 4 of the small test net: 3 px)
    assert res.native["gradcam/refine4"].shape == (4, 3, 3)
    # the explained class is the true label when target="true"
    np.testing.assert_array_equal(res.targets, labels)


def test_integrated_gradients_is_complete_on_a_tiny_model(tiny, faces):
    x = torch.from_numpy(faces[0][:2]).float().unsqueeze(1) / 255
    target = torch.tensor([0, 3])
    fm = FaceModel(tiny).eval()
    attr, delta = input_attribution(fm, x, target, "ig", ig_steps=64, internal_batch_size=64)
    with torch.no_grad():
        gap = (fm(x) - fm(torch.zeros_like(x))).gather(1, target[:, None]).squeeze(1)
    # completeness: attributions sum to F(x) - F(black), up to a small integration error
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), gap, atol=2e-3 + 0.02 * gap.abs().max().item(), rtol=0.02)
    assert delta is not None and delta.abs().max() < 2e-3 + 0.02 * gap.abs().max()


def test_deeplift_runs_because_no_relu_module_is_reused(tiny, faces):
    x = torch.from_numpy(faces[0][:2]).float().unsqueeze(1) / 255
    fm = FaceModel(tiny).eval()
    # every ReLU module runs once per forward pass (a shared ReLU breaks DeepLift and GuidedGradCam)
    assert reused_modules(fm, x, (nn.ReLU,)) == []
    attr, _ = input_attribution(fm, x, torch.tensor([1, 2]), "deeplift")
    # DeepLift's rescale rule runs through the whole network and gives a finite map on the face
    assert attr.shape == (2, 1, 48, 48) and torch.isfinite(attr).all()


def test_deeplift_on_depth3_masks():
    model = create_model("resmasknet_cpu").eval()
    fm = FaceModel(model).eval()
    x = torch.rand(1, 1, 48, 48)
    # no module of any kind may run twice for DeepLift
    assert reused_modules(fm, x) == []
    attr, _ = input_attribution(fm, x, torch.tensor([0]), "deeplift")
    # DeepLift runs through depth-3 mask U-Nets (one MaxPool2d per level) and gives a finite map
    assert torch.isfinite(attr).all()


# ---------------------------------------------------------------------------------------------
# faithfulness on a constructed case
# ---------------------------------------------------------------------------------------------
class RegionModel(nn.Module):
    """Class 0 wins exactly when the pixels of a fixed region are bright: an oracle map is known."""

    def __init__(self, region: Tensor):
        super().__init__()
        self.register_buffer("region", region.float())
        self.scale = nn.Parameter(torch.tensor(40.0))

    def prepare_input(self, images: Tensor) -> Tensor:
        x = images.unsqueeze(1) if images.dim() == 3 else images
        return x.float() / 255.0 if images.dtype == torch.uint8 else x.float()

    def forward(self, x: Tensor) -> Tensor:
        r = (x[:, 0] * self.region).sum((1, 2)) / self.region.sum()
        z = self.scale * (r - 0.5)
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_deletion_auc_of_an_oracle_map_beats_random():
    region = torch.zeros(48, 48)
    region[10:22, 14:34] = 1
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (16, 48, 48), dtype=np.uint8)
    images[:, region.numpy() > 0] = 255
    labels = np.zeros(16, np.int64)
    oracle = np.broadcast_to(region.numpy(), (16, 48, 48)).copy()
    res = deletion_insertion(RegionModel(region), images, labels, {"oracle": oracle}, steps=10, baseline="black",
                             batch_size=64)
    t = res.table.set_index("map")
    # deleting the evidence first kills the class probability fastest: oracle deletion AUC < random
    assert t.loc["oracle", "deletion_auc"] < t.loc["random", "deletion_auc"] - 0.3
    # inserting it first restores the class fastest: oracle insertion AUC > random
    assert t.loc["oracle", "insertion_auc"] > t.loc["random", "insertion_auc"] + 0.3
    # curves start at the unmodified face and end at the baseline (deletion), both ends shared by all maps
    d = res.curves["deletion"]
    np.testing.assert_allclose(d["oracle"][:, 0], d["random"][:, 0])
    np.testing.assert_allclose(d["oracle"][:, -1], d["random"][:, -1])


# ---------------------------------------------------------------------------------------------
# localisation and agreement
# ---------------------------------------------------------------------------------------------
def test_localisation_oracle_random_and_uniform():
    rng = np.random.default_rng(0)
    regions = np.zeros((64, 48, 48), np.uint8)
    for i in range(64):
        y, x = rng.integers(0, 30, 2)
        regions[i, y:y + 12, x:x + 16] = 1
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


def test_map_agreement_of_a_map_with_itself_and_with_noise():
    rng = np.random.default_rng(0)
    a = rng.random((20, 12, 12))
    t = map_agreement({"m": a}, {"same": a, "noise": rng.random((20, 48, 48))}, top_k=(0.1,)).set_index("attribution")
    # a map agrees perfectly with itself (both upsampled the same way to the face)
    assert t.loc["same", "spearman"] == pytest.approx(1.0) and t.loc["same", "iou_top10"] == pytest.approx(1.0)
    # an unrelated map is near zero correlation and near the chance IoU
    assert abs(t.loc["noise", "spearman"]) < 0.1
    assert abs(t.loc["noise", "iou_top10"] - t.loc["noise", "iou_top10_chance"]) < 0.05


# ---------------------------------------------------------------------------------------------
# figures and the one-call analysis
# ---------------------------------------------------------------------------------------------
def test_figures_save_png_and_arrays(tiny, tiny_probe, faces, tmp_path: Path):
    fig, arrays = mask_gallery(tiny_probe, faces[0], 2, n=3)
    # the gallery returns its raw arrays: native maps at the stage's size and upsampled copies
    assert arrays["max"].shape == (3, 12, 12) and arrays["max_up"].shape == (3, 48, 48)
    paths = save_figure(fig, arrays, tmp_path, "gallery")
    # a PNG and, for several arrays, an .npz beside it
    assert paths["png"].stat().st_size > 0 and paths["npz"].exists()
    fig, arrays = class_mean_grid(tiny_probe, diff=True)
    paths = save_figure(fig, {"only": arrays["mask1/max"]}, tmp_path, "classes")
    # with one array the raw data is an .npy of the same shape
    assert np.load(paths["npy"]).shape == (7, 24, 24) and paths["png"].exists()
    res = attribute(tiny, faces[0][:2], methods=("saliency", "gradcam"), batch_size=2)
    fig, arrays = captum_panel(faces[0][:2], res, n=2)
    # one column per map, drawn from the same arrays that are returned
    assert set(arrays) >= {"saliency", "gradcam/refine1"}
    assert save_figure(fig, arrays, tmp_path, "panel")["png"].exists()


def test_analyse_end_to_end(tiny, faces, tmp_path: Path):
    images, labels = faces
    regions = np.zeros_like(images)
    regions[:, 20:36, 10:38] = 1
    res = analyse(tiny, (images, labels, regions), n_images=8, methods=("saliency", "gradcam", "mask_attr"),
                  steps=3, progress=False)
    assert isinstance(res, AnalysisResult)
    # every step produced its table, on the requested number of faces
    for name in ("stages", "classes", "attribution", "agreement", "interventions", "faithfulness",
                 "localisation", "timing"):
        assert name in res.tables and len(res.tables[name]) > 0, name
    assert res.arrays["images"].shape == (8, 48, 48) and res.arrays["attr/saliency"].shape == (8, 48, 48)
    out = res.save(tmp_path / "analysis", figures=False)
    # tables as CSV and JSON, arrays as one npz
    assert (out / "tables" / "interventions.csv").exists() and (out / "tables.json").exists()
    assert "attr__saliency" in np.load(out / "arrays.npz").files
    # figure functions are plain callables returning (Figure, arrays)
    fig, arrays = res.figures["interventions"]()
    assert "delta_accuracy" in arrays


def test_analyse_on_generated_data_if_available(tiny):
    try:
        from resmasknet.data import load_data  # type: ignore[attr-defined]
    except ImportError:
        pytest.skip("resmasknet.data.load_data not available yet")
    d = load_data("generated:n=140,seed=0").select("test")
    res = analyse(tiny, d, n_images=6, methods=("gradcam",), interventions=False, faithfulness=False,
                  progress=False)
    # the split is not empty and the requested number of faces was analysed
    assert res.arrays["images"].shape == (6, 48, 48)
    # generated data brings regions, so localisation runs by default, with both baselines
    assert {"random", "uniform"} <= set(res.tables["localisation"]["map"])
    # class names come from the data
    assert res.meta["classes"] == list(d.classes)


def test_analyse_refuses_an_empty_split(tiny):
    empty = (np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64))
    # an empty split is an error that says so, not an empty report
    with pytest.raises(ValueError, match="nothing to analyse"):
        analyse(tiny, empty, progress=False)


def test_channels_last_keeps_values_and_restores_the_layout():
    from ablate.analysis.probe import channels_last

    torch.manual_seed(0)
    model = create_model("resmasknet_tiny").eval()
    x = model.prepare_input(torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8))
    with torch.no_grad():
        before = model(x)
        with channels_last(model):
            conv = model.layer1[0].conv1.weight
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
            inside = model(x)
        after = model(x)
    # the same numbers in either layout, and the caller's layout comes back
    torch.testing.assert_close(inside, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before)
    assert model.layer1[0].conv1.weight.is_contiguous()
