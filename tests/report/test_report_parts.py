"""The report's parts on their own, without a study: the page's clean tables, the forest plot against its
table, the misclassified grid against its confusion matrix, the narrative, the generic analysis section and
face detection."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from ablate.report.figures import forest_plot, misclassified_grid
from ablate.report.narrative import mask_sentences
from ablate.report.page import MISSING, Page, cell_text, clean_frame

REPRS = ("<NA>", "nan", "NaN", "None", "{", "NaT")


def fake_table() -> pd.DataFrame:
    """A comparison table of the shape `ablate.summary.summarize` returns (metric values as fractions)."""
    t = pd.DataFrame({
        "variant": ["masks_off", "masks_on", "unapplied"], "n": [3, 3, 3],
        "mean": [0.70, 0.72, 0.701], "std": [0.01, 0.012, 0.009],
        "ci_low": [0.68, 0.69, 0.68], "ci_high": [0.72, 0.75, 0.72],
        "n_pairs": pd.array([pd.NA, 3, 3], dtype="Int64"),
        "mean_diff": [math.nan, 0.02, 0.001], "diff_ci_low": [math.nan, 0.005, -0.004],
        "diff_ci_high": [math.nan, 0.035, 0.006],
        "p_value": [math.nan, 0.01, 0.6], "p_holm": [math.nan, 0.02, 0.6],
        "p_better": [math.nan, 0.9, 0.2], "p_equivalent": [math.nan, 0.08, 0.7], "p_worse": [math.nan, 0.02, 0.1],
        "mcnemar_p": [math.nan, 0.03, 0.9], "wins": pd.array([pd.NA, 40, 5], dtype="Int64"),
        "losses": pd.array([pd.NA, 10, 6], dtype="Int64"), "verdict": ["baseline", "better", "equivalent"],
        "reason": ["", "CI above 0", "within the margin"], "seeds_needed": [None, 3, 12],
        "params": [1e5, 1.1e6, 1.1e6], "macs": [2e7, 1.5e8, 1.5e8],
    })
    t.attrs.update(metric="test_acc", baseline="masks_off", rope=0.005, confidence=0.95, alpha=0.05, notes=["n"])
    return t


def test_cells_never_show_missing_values_or_reprs():
    df = pd.DataFrame({"a": [math.nan, None, 1.23456], "b": pd.array([pd.NA, 2, 3], dtype="Int64"),
                       "c": [{"x": 1.0, "y": math.nan}, [1, None], True], "d": ["nan", "None", "text"]})
    cells = clean_frame(df).to_numpy().ravel().tolist()
    # every cell is text; missing values read as the dash, mappings as "k: v" pairs, floats to 4 digits
    assert all(isinstance(c, str) for c in cells)
    assert not [c for c in cells if any(r in c for r in REPRS)]
    assert cells.count(MISSING) == 5 and "x: 1; y: " + MISSING in cells and "1.235" in cells
    assert cell_text(np.float32(np.inf)) == MISSING and cell_text(np.int64(7)) == "7"


def test_page_table_scrolls_and_stays_clean(tmp_path):
    page = Page("t", tmp_path)
    page.table(pd.DataFrame({"v": [math.nan, 1.0], "w": [None, "<b>"]}))
    page.table(pd.DataFrame())
    text = page.render()
    # a wide table scrolls inside the page; text is escaped; an empty frame says so
    assert '<div class="scroll"><table' in text and "&lt;b&gt;" in text and "(no rows)" in text
    assert not re.search(r">(nan|None|&lt;NA&gt;)<", text)


def test_forest_plot_draws_the_table_intervals_and_the_margin():
    table = fake_table()
    fig, arr = forest_plot(table, rope=table.attrs["rope"], baseline="masks_off")
    rows = table[table.variant != "masks_off"]
    # one row per compared variant (not the baseline), with exactly the table's difference and interval
    assert list(arr["variants"]) == ["masks_on", "unapplied"]
    np.testing.assert_array_equal(arr["mean_diff"], rows["mean_diff"].to_numpy())
    np.testing.assert_array_equal(arr["diff_ci_low"], rows["diff_ci_low"].to_numpy())
    np.testing.assert_array_equal(arr["diff_ci_high"], rows["diff_ci_high"].to_numpy())
    ax = fig.axes[0]
    # a vertical line at 0, and the ±rope margin shaded (in percentage points)
    assert any(np.allclose(line.get_xdata(), 0) for line in ax.lines)
    span = ax.patches[0].get_extents().transformed(ax.transData.inverted())
    assert span.x0 == pytest.approx(-0.5) and span.x1 == pytest.approx(0.5)
    # the error bars span the interval times 100
    seg = np.concatenate([c.get_segments() for c in ax.collections])
    assert sorted(np.round(seg[:, :, 0].min(axis=1), 6)) == sorted(np.round(rows["diff_ci_low"] * 100, 6))


def test_misclassified_grid_picks_the_largest_confusion_cells():
    from resmasknet.evaluate import from_probabilities

    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = np.array([1, 1, 0, 0, 1, 0, 2, 1, 1])
    ev = from_probabilities(np.eye(3)[preds], labels, ("a", "b", "c"))
    images = np.arange(9, dtype=np.uint8)[:, None, None].repeat(4, 1).repeat(4, 2)
    fig, arr = misclassified_grid(images, ev.confusion, ev.labels, ev.predictions, ev.classes, n_cells=2, per_cell=3)
    # cells in the order of the stored confusion counts, with the rows of exactly those images
    assert arr["cells"].tolist() == [[2, 2, 1], [2, 0, 1]]
    assert arr["index"].tolist() == [[7, 8, -1], [0, 1, -1]]
    # nothing misclassified: no figure
    assert misclassified_grid(images, np.eye(3, dtype=int), labels, labels, ev.classes)[0] is None


def stage_row(**kw):
    row = {"stage": 1, "mask": "mask1", "activation": "softmax", "channels": 16, "size": 24,
           "application": "residual", "applied": True, "kl_mean": 0.01, "entropy_mean": 0.99,
           "rel_change": 0.05, "gain_mean": 1.06, "gain_max": 1.4, "rel_change_if_applied": 0.05}
    return {**row, **kw}


def test_narrative_reads_the_numbers_and_flags_unapplied_masks():
    stages = pd.DataFrame([stage_row(), stage_row(stage=2, mask="mask2", application="unapplied", applied=False,
                                                 rel_change=0.0, rel_change_if_applied=0.07)])
    iv = pd.DataFrame([{"stage": 1, "kind": "zero", "n": 50, "accuracy": 0.6, "base_accuracy": 0.7,
                        "delta_accuracy": -0.1, "flip_rate": 0.2, "broken": 8, "fixed": 3, "mcnemar_p": 0.2,
                        "computed": True, "note": ""},
                       {"stage": 2, "kind": "zero", "n": 50, "accuracy": 0.7, "base_accuracy": 0.7,
                        "delta_accuracy": 0.0, "flip_rate": 0.0, "broken": 0, "fixed": 0, "mcnemar_p": 1.0,
                        "computed": False, "note": "zero by construction; not run"}])
    s1, s2 = mask_sentences({"stages": stages, "interventions": iv})
    # numbers from the tables, in the sentence
    assert "0.0100 nats" in s1 and "5.00%" in s1 and "from 70.0% to 60.0% (-10.0 points)" in s1
    assert "8 faces go from right to wrong" in s1
    # the unapplied control says so, with what it would do if applied
    assert "NOT applied" in s2 and "never reaches the features" in s2 and "7.00%" in s2
    # an intervention the analysis did not run (zero by construction) is said to be so, not quoted as measured
    assert "Removing it (zero mask) cannot change the output (zero by construction; not run)." in s2
    # a table without some columns leaves the numbers out instead of printing nan
    (s,) = mask_sentences({"stages": stages.drop(columns=["kl_mean", "gain_max", "rel_change"]).head(1)})
    assert "nan" not in s and "Stage 1" in s
    assert mask_sentences({}) == ["This model has no mask stages, so there is nothing to measure."]


class FakeResult:
    def __init__(self):
        self.tables = {"stages": pd.DataFrame([stage_row()]), "sanity_checks": pd.DataFrame({"check": ["ok"]}),
                       "timing": pd.DataFrame({"step": ["total"], "seconds": [1.0]})}
        self.arrays, self.figures = {}, {}
        self.meta = {"n_images": 4, "accuracy": 0.5, "seconds": {"total": 1.0}, "notes": ["orientation: rows"]}

    def save(self, folder, figures=True):
        folder.mkdir(parents=True, exist_ok=True)


def test_analysis_section_renders_every_table_it_is_given(tmp_path, monkeypatch):
    import ablate.analysis
    from ablate.report.analysis_section import analysis_section

    seen = {}

    def fake_analyse(model, data, **kw):
        seen.update(kw)
        return FakeResult()

    monkeypatch.setattr(ablate.analysis, "analyse", fake_analyse)
    page = Page("t", tmp_path)
    res = analysis_section(page, None, None, label="m", n_images=4, profile="fast", progress=False, prefix="m")
    text = page.render()
    # a table the section has never heard of gets a heading of its own name; notes are shown
    assert ">m: sanity checks</h4>" in text and "orientation: rows" in text
    assert ">m: per-stage mask statistics</h4>" in text and isinstance(res, FakeResult)
    # the profile's options reach analyse
    assert seen["steps"] == 5 and seen["n_images"] == 4


def test_faces_read_errors_name_the_path_and_no_face_means_whole_image(tmp_path):
    from resmasknet.data.faces import detect_face, read_image

    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"no image")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    face, box = detect_face(np.full((100, 80, 3), 30, np.uint8))
    # a flat image has no face: the whole image, resized to 48x48 grey uint8
    assert box is None and face.shape == (48, 48) and face.dtype == np.uint8


def test_every_profile_option_is_an_analyse_parameter():
    import inspect

    from ablate.analysis import analyse
    from ablate.report import ANALYSIS_PROFILES, analysis_options

    params = set(inspect.signature(analyse).parameters)
    # each profile passes only options analyse() takes (a renamed option fails here, not in a report)
    for name in ANALYSIS_PROFILES:
        assert set(analysis_options(name)) <= params, name
    with pytest.raises(ValueError, match="profile 'huge'"):
        analysis_options("huge")
