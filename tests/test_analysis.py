"""Mask and attribution analysis: reductions, probe, the shared forward pass, Captum, interventions,
the unapplied control, figures and the one-call `analyse`. Small on purpose (<= 64 faces, and
`resmasknet_tiny` shrunk to width 4 at a 24-px input: 9 MMACs per face instead of 150): the whole
file must stay well under a minute on one CPU core (``OMP_NUM_THREADS=1``). The 24-px input also
exercises the resize inside the attribution graph: attributions must still come back on the 48-px
face. Scores against known answers (deletion/insertion, localisation, orientation) are in
``tests/analysis/test_analysis_scores.py``, the sanity checks in ``tests/analysis/test_analysis_sanity.py``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ablate.analysis import (
    UNAPPLIED_NOTE,
    AnalysisResult,
    FaceModel,
    ProbeResult,
    analyse,
    attribute,
    captum_panel,
    class_mean_grid,
    forward_after,
    gain_map,
    gini,
    input_attribution,
    intervene,
    mask_gallery,
    mask_stages,
    probe,
    reduce_mask,
    replace_mask,
    replacement_mask,
    reused_modules,
    save_figure,
    spatial_entropy,
)
from ablate.analysis.interventions import UNAPPLIED_INTERVENTION_NOTE
from resmasknet import create_model
from resmasknet.model import ResMaskNet

N = 12
# resmasknet_tiny, smaller: stages 24/12/6/3 px, 4..32 channels
SMALL: dict[str, Any] = {"base_width": 4, "input_size": 24}


@pytest.fixture(scope="module")
def faces() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 48, 48), dtype=np.uint8)
    labels = np.arange(N, dtype=np.int64) % 7
    return images, labels


@pytest.fixture(scope="module")
def tiny() -> ResMaskNet:
    return create_model("resmasknet_tiny", seed=0, **SMALL).eval()


@pytest.fixture(scope="module")
def unapplied() -> ResMaskNet:
    """The parameter-matched control: masks built and run, never applied (the per-stage studies' baseline)."""
    return create_model("resmasknet_tiny", seed=0, **SMALL, **{"masks.application": "unapplied"}).eval()


@pytest.fixture(scope="module")
def tiny_probe(tiny: ResMaskNet, faces: tuple[np.ndarray, np.ndarray]) -> ProbeResult:
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


def test_interventions_on_unapplied_masks_change_nothing(unapplied, faces):
    model = unapplied
    pr = probe(model, *faces, keep_maps=False)
    kinds = ("zero", "uniform", "shuffle", "spatial_mean", "class_mean")
    res = intervene(model, *faces, class_masks=pr, kinds=kinds, skip_unapplied=False)
    t = res.table
    # run anyway: the unapplied control never uses its mask, so no intervention can move a logit
    assert len(t) == 4 * 5 and t["computed"].all()
    assert (t["mean_abs_dlogit"] == 0).all() and (t["flip_rate"] == 0).all() and (t["delta_accuracy"] == 0).all()
    assert (t["broken"] == 0).all() and (t["fixed"] == 0).all() and (t["mcnemar_p"] == 1).all()
    # and the stages are flagged as unapplied
    assert not t["applied"].any()
    # by default they are not run at all; the same zero effect is reported, marked as by construction
    skipped = intervene(model, *faces, class_masks=pr, kinds=kinds).table
    assert not skipped["computed"].any() and (skipped["note"] == UNAPPLIED_INTERVENTION_NOTE).all()
    cols = ["mean_abs_dlogit", "flip_rate", "delta_accuracy", "broken", "fixed", "mcnemar_p", "accuracy"]
    np.testing.assert_array_equal(skipped[cols].to_numpy(float), t[cols].to_numpy(float))


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
    # an independent reference: the full network with stage 2's mask zeroed by a forward hook
    x = tiny.prepare_input(torch.from_numpy(faces[0]))
    with torch.no_grad(), replace_mask(tiny, 2, torch.zeros_like):
        np.testing.assert_array_equal(res.predictions["mask2/zero"], tiny(x).argmax(1).numpy())


# ---------------------------------------------------------------------------------------------
# one forward pass per batch
# ---------------------------------------------------------------------------------------------
def test_forward_after_a_stage_equals_the_full_network_with_that_mask(tiny, faces):
    x = tiny.prepare_input(torch.from_numpy(faces[0][:5]))
    with torch.no_grad():
        logits, taps = tiny.forward_taps(x)
        for st in mask_stages(tiny):
            # with the stage's own mask, continuing from its pre-mask features gives the logits back
            torch.testing.assert_close(forward_after(tiny, st.stage, taps[f"layer{st.stage}"], taps[st.name]), logits)
            m = torch.rand_like(taps[st.name])

            def fixed(_m: Tensor, m: Tensor = m) -> Tensor:
                return m

            with replace_mask(tiny, st.stage, fixed):
                full = tiny(x)
            # with another mask, the same numbers as the whole network with that mask hooked in
            torch.testing.assert_close(forward_after(tiny, st.stage, taps[f"layer{st.stage}"], m), full)


def test_analyse_runs_the_unmodified_network_once_per_batch(tiny, faces):
    calls = {"n": 0}

    def count(_m: Any, _i: Any, _o: Any) -> None:
        calls["n"] += 1

    handle = tiny.conv1.register_forward_hook(count)
    try:
        res = analyse(tiny, faces, n_images=N, methods=(), faithfulness=False, sanity=False,
                      intervention_kinds=("zero", "uniform", "shuffle"), batch_size=5, progress=False)
    finally:
        handle.remove()
    # probe, reference predictions and 4 stages x 3 interventions: one stem pass per batch of 64
    # (the interventions restart from each stage's cached features; nothing runs the stem again)
    assert calls["n"] == 1
    # and the shared numbers are those of the stand-alone functions
    pr = probe(tiny, *faces)
    np.testing.assert_array_equal(res.arrays["preds"], pr.preds)
    alone = intervene(tiny, *faces, kinds=("zero", "uniform", "shuffle"))
    cols = ["mean_abs_dlogit", "flip_rate", "accuracy"]
    np.testing.assert_allclose(res.tables["interventions"][cols].to_numpy(float), alone.table[cols].to_numpy(float),
                               rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Captum
# ---------------------------------------------------------------------------------------------
def test_captum_methods_return_finite_maps_of_the_right_shapes(tiny, faces):
    images, labels = faces[0][:4], faces[1][:4]
    res = attribute(tiny, images, labels, methods=("ig", "saliency", "smoothgrad", "occlusion", "gradcam",
                                                   "mask_attr"),
                    target="true", batch_size=4, ig_steps=4, smoothgrad_samples=2, occlusion_window=16,
                    occlusion_stride=16)
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


def test_attribution_to_an_unapplied_mask_is_exactly_zero(unapplied, faces):
    images = faces[0][:3]
    # the per-stage studies' baseline: before, Captum raised "differentiated Tensor ... not used in the graph"
    res = attribute(unapplied, images, methods=("saliency", "mask_attr"), batch_size=3)
    for st in mask_stages(unapplied):
        key = f"mask_attr/{st.name}"
        # nothing downstream reads the mask: its attribution is 0 by construction, said so in the notes
        assert (res.maps[key] == 0).all() and (res.native[key] == 0).all()
        assert res.notes[key] == UNAPPLIED_NOTE
    t = res.table().set_index("map")
    assert t.loc["mask_attr/mask1", "zero_by_construction"] and t.loc["mask_attr/mask1", "mean"] == 0
    assert t.loc["mask_attr/mask1", "note"] == UNAPPLIED_NOTE
    # the input attribution of the same model is an ordinary, non-zero map
    assert not t.loc["saliency", "zero_by_construction"] and t.loc["saliency", "mean"] > 0


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
                  steps=3, sanity_images=3, progress=False)
    assert isinstance(res, AnalysisResult)
    # every step produced its table, on the requested number of faces
    for name in ("stages", "classes", "attribution", "agreement", "interventions", "faithfulness",
                 "localisation", "sanity", "sanity_steps", "timing"):
        assert name in res.tables and len(res.tables[name]) > 0, name
    assert res.arrays["images"].shape == (8, 48, 48) and res.arrays["attr/saliency"].shape == (8, 48, 48)
    # the curves score the class the attributions explain (the prediction): same array
    np.testing.assert_array_equal(res.parts["faithfulness"].targets, res.arrays["targets"])
    np.testing.assert_array_equal(res.arrays["targets"], res.arrays["preds"])
    # every scored table says which way its maps read; raw entropy is never among them
    for name in ("agreement", "faithfulness", "localisation", "sanity"):
        assert "orientation" in res.tables[name], name
    assert not res.tables["localisation"]["map"].str.endswith("entropy").any()
    assert {"mass_gain_vs_prior", "mass_gain_vs_random"} <= set(res.tables["localisation"].columns)
    out = res.save(tmp_path / "analysis", figures=False)
    # tables as CSV and JSON, arrays as one npz
    assert (out / "tables" / "interventions.csv").exists() and (out / "tables" / "sanity.csv").exists()
    assert "attr__saliency" in np.load(out / "arrays.npz").files
    # figure functions are plain callables returning (Figure, arrays)
    fig, arrays = res.figures["interventions"]()
    assert "delta_accuracy" in arrays
    fig, arrays = res.figures["sanity"]()
    assert arrays["spearman"].shape == (res.tables["sanity"].shape[0], 6)


def test_analyse_the_unapplied_control_without_crashing(unapplied, tmp_path: Path):
    from resmasknet.data import load_data

    d = load_data("generated:n=60,seed=0")
    res = analyse(unapplied, d, n_images=6, methods=("saliency", "mask_attr"), steps=2, sanity_images=2,
                  intervention_kinds=("zero", "class_mean"), progress=False)
    # generated data brings regions, so localisation runs by default, with all three baselines
    assert {"random", "uniform", "prior"} <= set(res.tables["localisation"]["map"])
    assert res.meta["classes"] == list(d.classes) and res.meta["unapplied_masks"] == ["mask1", "mask2", "mask3",
                                                                                      "mask4"]
    # attribution to each unused mask: reported as 0 with the note, everywhere it appears
    att = res.tables["attribution"].set_index("map")
    assert (att.loc[[f"mask_attr/mask{i}" for i in range(1, 5)], "mean"] == 0).all()
    for table in ("attribution", "localisation", "sanity"):
        t = res.tables[table].set_index("map")
        assert t.loc["mask_attr/mask2", "note"] == UNAPPLIED_NOTE, table
    assert not res.tables["sanity"].set_index("map").loc["mask_attr/mask2", "flagged"]
    # interventions that cannot change anything are not run and say so
    iv = res.tables["interventions"]
    assert len(iv) == 8 and not iv["computed"].any() and (iv["mean_abs_dlogit"] == 0).all()
    # the all-zero maps still draw (a flat panel, not an error)
    fig, arrays = res.figures["mask_attr_panel"]()
    assert save_figure(fig, arrays, tmp_path, "control_mask_attr")["png"].exists()


def test_analyse_refuses_an_empty_split(tiny):
    empty = (np.zeros((0, 48, 48), np.uint8), np.zeros(0, np.int64))
    # an empty split is an error that says so, not an empty report
    with pytest.raises(ValueError, match="nothing to analyse"):
        analyse(tiny, empty, progress=False)


def test_channels_last_keeps_values_and_restores_the_layout():
    from ablate.analysis.common import channels_last

    torch.manual_seed(0)
    model = create_model("resmasknet_tiny").eval()
    x = model.prepare_input(torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8))
    with torch.no_grad():
        before = model(x)
        with channels_last(model):
            conv = model.layer1[0].conv1.weight  # type: ignore[index, union-attr]
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
            inside = model(x)
        after = model(x)
    # the same numbers in either layout, and the caller's layout comes back
    torch.testing.assert_close(inside, before, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after, before)
    assert model.layer1[0].conv1.weight.is_contiguous()  # type: ignore[index, union-attr]
