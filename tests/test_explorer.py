"""The mask explorer against independent references: the faces a filter selects are the same query written with
pandas on the stored evaluations; "what if" is a forward pass of the same weights with that mask not applied; every
map on screen is drawn on the declared scale; a saved view restores exactly; the widgets edit the view."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

import ablate
from ablate.explorer import View, explore, explorer_for


@pytest.fixture(scope="module")
def study(finished_project):
    return ablate.open_study("notebookcheck", out=str(finished_project / "runs" / "notebookcheck"))


@pytest.fixture()
def ex(study):
    return explorer_for(study, variants=["masks_on", "masks_off"], n_faces=6)


def _stored(study, variant: str, seed: int = 0) -> pd.DataFrame:
    """The faces as a pandas frame straight from a trial's stored evaluation (predictions.npz)."""
    ev = study.trial(variant, seed).evaluation()
    p = np.sort(ev.probabilities, axis=1)
    classes = np.asarray(ev.classes)
    return pd.DataFrame({"true": classes[ev.labels], "pred": classes[ev.predictions],
                         "right": ev.predictions == ev.labels, "margin": p[:, -1] - p[:, -2]})


def test_filters_equal_the_pandas_query_on_the_stored_evaluations(study, ex):
    on, off = _stored(study, "masks_on"), _stored(study, "masks_off")
    both = on.join(off.add_suffix("_off"))
    some_class = on["true"].iloc[0]
    pred_class = on["pred"].iloc[0]
    lo, hi = float(on["margin"].quantile(0.25)), float(on["margin"].quantile(0.75))
    cases = [
        (dict(true_class=[some_class]), both.query("true == @some_class")),
        (dict(correct="wrong"), both.query("not right")),
        (dict(pred_class=[pred_class], correct="right"), both.query("pred == @pred_class and right")),
        (dict(margin=[lo, hi]), both.query("margin >= @lo and margin <= @hi")),
        (dict(cell=[some_class, pred_class]), both.query("true == @some_class and pred == @pred_class")),
        (dict(agreement="split"), both.query("right != right_off")),
        (dict(agreement="first right, second wrong"), both.query("right and not right_off")),
        (dict(agreement="all wrong"), both.query("not right and not right_off")),
    ]
    for change, expected in cases:
        view = dataclasses.replace(ex.view, **change)
        # the faces the explorer keeps are exactly the rows the pandas query keeps, in order
        assert list(ex.candidates(view).index) == list(expected.index), change
    # the page shows the first n_faces of them
    view = dataclasses.replace(ex.view, correct="wrong", n_faces=3, page=1)
    assert list(ex.select(view)) == list(both.query("not right").index[3:6])
    # the confusion matrix whose cells pick faces counts the reference model's stored predictions
    cm = pd.crosstab(pd.Categorical(on["true"], ex.classes), pd.Categorical(on["pred"], ex.classes), dropna=False)
    assert (ex.confusion().to_numpy() == cm.to_numpy()).all()


def test_seed_counts_and_stat_filter(study, ex):
    # how many seeds of each variant get a face right, counted from each seed's stored evaluation
    t = ex.table()
    for variant in ("masks_on", "masks_off"):
        expected = sum(_stored(study, variant, s)["right"].astype(int) for s in study.seeds)
        assert (t[f"right:{variant}"].to_numpy() == expected.to_numpy()).all()
    # the mask statistic filter keeps the faces whose statistic lies in the range (computed by a forward pass
    # here, independently of the explorer, from the model's mask taps)
    model = study.trial("masks_on", 0).model()
    with torch.inference_mode():
        _, taps = model.forward_taps(model.prepare_input(torch.from_numpy(ex.faces.images)))
    peak = taps["mask2"].float().amax(1).mean((1, 2)).numpy()
    lo, hi = np.quantile(peak, [0.3, 0.7])
    view = dataclasses.replace(ex.view, stat="peak", stat_stage=2, stat_range=[float(lo), float(hi)])
    kept = ex.candidates(view).index.to_numpy()
    assert np.array_equal(kept, np.flatnonzero((peak >= lo) & (peak <= hi)))


@pytest.mark.parametrize("stage", [1, 3])
def test_whatif_equals_a_forward_pass_with_that_mask_not_applied(study, ex, stage):
    ex.update(whatif_stage=stage, whatif="zero", columns=["masks_on/seed0"], agreement="any")
    got = ex.whatif()
    faces = ex.select()
    # the reference: the same weights in a network whose stage-`stage` mask runs but is not applied
    model = study.trial("masks_on", 0).model()
    from resmasknet.model import ResMaskNet

    plain = ResMaskNet(model.config.replace(**{f"mask{stage}.application": "unapplied"})).eval()
    plain.load_state_dict(model.state_dict())
    with torch.inference_mode():
        probs = torch.softmax(plain(plain.prepare_input(torch.from_numpy(ex.faces.images[faces]))).double(), 1)
    after = probs.numpy()
    assert list(got["face"]) == list(faces)
    assert list(got[f"pred without mask{stage}"]) == [ex.classes[i] for i in after.argmax(1)]
    np.testing.assert_allclose(got["prob after"].to_numpy(), after.max(1), rtol=1e-5, atol=1e-6)
    # "changed" says whether the prediction moved from the stored one
    stored = study.trial("masks_on", 0).evaluation().predictions[faces]
    assert list(got["changed"]) == list(after.argmax(1) != stored)


def test_every_map_on_screen_shares_the_declared_scale(ex):
    ex.update(stage=2, reduction="peak", native=True, scale="shared", explain="none", n_faces=5)
    r = ex.render()
    masks = [p for p in r.panels if p.kind == "mask" and p.values is not None]
    assert len(masks) == 5  # masks_off has no mask: its panels say so
    # one scale for every mask on screen: the range of all of them together
    allv = np.concatenate([p.values.ravel() for p in masks])
    assert r.scales["mask"] == (float(allv.min()), float(allv.max()))
    assert all(p.scale == r.scales["mask"] for p in masks)
    # and the pixels are those values through that scale (checked at each native pixel's centre)
    img = np.asarray(Image.open(io.BytesIO(r.png)).convert("RGB"))
    lo, hi = r.scales["mask"]
    for p in masks:
        h = p.values.shape[0]
        step = 96 / h
        for i, j in ((0, 0), (h - 1, h - 1), (h // 2, 1)):
            y, x = p.box[1] + int((i + 0.5) * step), p.box[0] + int((j + 0.5) * step)
            want = np.round(np.array(colormaps["magma"]((p.values[i, j] - lo) / (hi - lo))[:3]) * 255)
            assert np.abs(img[y, x].astype(int) - want).max() <= 1
    # a declared scale is used as declared
    ex.update(scale_range=[0.0, 1.0])
    assert ex.render().scales["mask"] == (0.0, 1.0)
    # per-image scaling only on request, and the picture says the maps are then not comparable
    ex.update(scale="per image")
    assert ex.render().scales == {}


def test_save_then_restore_gives_the_same_view(ex, study, tmp_path):
    ex.update(true_class=[ex.classes[3]], reduction="topk", topk=3, stage=3, opacity=0.3, cmap="viridis",
              explain="saliency", target=ex.classes[1], whatif_stage=2, whatif="uniform")
    before = ex.render()
    path = ex.save_view(tmp_path / "view.json")
    other = explorer_for(study, variants=["masks_on", "masks_off"])
    other.load_view(path)
    # the same fields, the same faces, the same picture
    assert other.view == ex.view
    assert other.render().png == before.png
    # a view naming a model that is not there is refused in one line
    bad = ex.view.to_dict() | {"columns": ["nope/seed0"]}
    with pytest.raises(ValueError, match="unknown column"):
        other.set_view(View.from_dict(bad))


def test_no_masks_still_predictions_and_attributions(study):
    ex = explorer_for(study, variants=["masks_off"], seeds=[1], n_faces=3)
    # nothing to show per stage, said so; predictions and attributions still there
    assert ex.stages == [] and ex.view.stage is None
    ex.update(explain="saliency")
    r = ex.render()
    assert "no masks" in r.title
    assert [p.kind for p in r.panels].count("attribution") == 3
    with pytest.raises(ValueError, match="no model shown has masks"):
        ex.update(whatif_stage=1)
    # a variant that does not exist names those that do
    with pytest.raises(KeyError, match="variants: "):
        explorer_for(study, variants=["masks_sideways"])


def test_widgets_edit_the_view(study, tmp_path):
    app = explore(study, variants=["masks_on", "masks_off"], n_faces=4)
    ex = app.explorer
    # the stage control covers the model's stages; the model choice lists the study's trials
    assert [v for _, v in app.controls["stage"].options] == [1, 2, 3, 4]
    assert set(app.controls["columns"].options) == {f"{v}/seed{s}" for v in study.variants for s in study.seeds}
    # moving a control changes the view and redraws
    png = app.image.value
    app.controls["stage"].value = 3
    app.controls["reduction"].value = "kl"
    assert (ex.view.stage, ex.view.reduction) == (3, "kl") and app.image.value != png
    # a confusion cell picks faces; its button count is the number of faces in that cell
    cm = ex.confusion()
    i, j = np.unravel_index(np.argmax(cm.to_numpy()), cm.shape)
    app.cells[i][j].click()
    assert ex.view.cell == [ex.classes[i], ex.classes[j]]
    assert len(ex.candidates()) == cm.iat[i, j]
    # the statistic filter shows a histogram and filters by its range
    app.stat_filter.value = True
    assert ex.view.stat_range is not None and app.histogram.value[:4] == b"\x89PNG"
    # a restored view sets the controls
    app.save(str(tmp_path / "v"))
    app.controls["stage"].value = 1
    app.restore(str(tmp_path / "v"))
    assert app.controls["stage"].value == 3 and ex.view.stage == 3
    # exports: a PNG and an HTML page with the picture inline (no kernel, no CDN)
    png, page = app.export(str(tmp_path / "export"))
    text = page.read_text()
    assert png.read_bytes()[:4] == b"\x89PNG" and "data:image/png;base64," in text and "<script" not in text
    # switching to models without masks empties the stage choice
    app.controls["columns"].value = ("masks_off/seed0",)
    assert ex.view.stage is None and list(app.controls["stage"].options) == [("no masks", None)]
