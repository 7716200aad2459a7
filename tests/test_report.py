"""`ablate report` on a tiny real study whose baseline is the `unapplied` control (sections, embedded PNGs,
numbers equal to the trial records', clean ablation table, forest plot, one data load, one load per
checkpoint, clean failure on an unreadable record, headless Chromium render, atomic write), `ablate analyse`
and `ablate explain`."""

from __future__ import annotations

import argparse
import base64
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FER_DIR
from PIL import Image

from ablate.cli import main
from ablate.report import CHECKPOINT_SECTIONS, SECTIONS

STUDY = {
    "name": "reportcheck",
    "base": {"model": "resmasknet_tiny", "data": "generated:n=140,seed=0", "overrides": {"base_width": 4},
             "train": {"epochs": 1, "max_train_batches": 3, "batch_size": 16, "optimizer": "adamw",
                       "lr": 0.003, "scheduler": "none"}},
    "variants": {"on": {}, "off": {"masks.enabled": False}, "unapplied": {"masks.application": "unapplied"}},
    "baseline": "unapplied",
    "seeds": [0, 1],
}


def session_of(study: Path, out: Path):
    from ablate.cli.study import session_from

    return session_from(argparse.Namespace(study=str(study), out=str(out), storage=None, tracking_uri=None,
                                           tiny=False))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The study run once and reported once, counting data and checkpoint loads on the way."""
    import resmasknet
    import resmasknet.data

    tmp = tmp_path_factory.mktemp("report")
    study = tmp / "reportcheck.yaml"
    study.write_text(yaml.safe_dump(STUDY))
    out = tmp / "run"
    assert main(["run", str(study), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    dest = tmp / "reports" / "reportcheck"
    loads: dict[str, list[str]] = {"data": [], "checkpoints": []}
    real_data, real_ckpt = resmasknet.data.load_data, resmasknet.load_checkpoint
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(resmasknet.data, "load_data", lambda spec, *a, **k: loads["data"].append(str(spec))
                   or real_data(spec, *a, **k))
        mp.setattr(resmasknet, "load_checkpoint", lambda p, *a, **k: loads["checkpoints"].append(str(p))
                   or real_ckpt(p, *a, **k))
        rc = main(["report", str(study), "--out", str(out), "--report-dir", str(dest), "--n-images", "6", "--fast",
                   "--no-progress"])
    return {"rc": rc, "study": study, "out": out, "dest": dest, "html": dest / "index.html", "loads": loads}


def section(text: str, title: str) -> str:
    """The HTML between the <h2> of ``title`` and the next <h2>."""
    start = text.index(f">{title}</h2>")
    end = text.find("<h2", start)
    return text[start:end if end > 0 else None]


def test_report_sections_and_images(report):
    # the command succeeds and the page exists where asked
    assert report["rc"] == 0 and report["html"].is_file()
    text = report["html"].read_text(encoding="utf-8")
    # every section heading is present
    for s in SECTIONS:
        assert f">{s}</h2>" in text, s
    # self-contained: no external URLs (no http(s) src/href), CSS inline
    assert not re.search(r"(src|href)=\"https?:", text) and "<style>" in text
    # every <img> is a data URI that decodes to a PNG, and every figure has its PNG and raw arrays beside it
    srcs = re.findall(r"<img[^>]*src=\"([^\"]+)\"", text)
    assert len(srcs) >= 8
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    pngs = sorted((report["dest"] / "figures").glob("*.png"))
    assert len(pngs) == len(srcs)
    for p in pngs:
        assert p.with_suffix(".npy").exists() or p.with_suffix(".npz").exists(), p
    # no temporary folder is left beside the report (written elsewhere, renamed into place)
    assert not [p for p in report["dest"].parent.iterdir() if p.name.startswith(".")]


def test_unapplied_baseline_gets_a_full_report(report):
    text = report["html"].read_text(encoding="utf-8")
    info = json.loads((report["dest"] / "report.json").read_text())
    # the main variant and the unapplied baseline are both analysed (both have mask modules)
    assert info["analysed"] == ["on", "unapplied"]
    narrative = section(text, "What the masks do")
    # one sentence per stage for each; the control's stages say they are not applied
    assert len(re.findall(r"<li>Stage \d", narrative)) == 8
    assert "NOT applied" in narrative and "Removing it (zero mask)" in narrative and "nats" in narrative
    assert ">nan<" not in text and "nan%" not in text


def test_data_loaded_once_and_each_checkpoint_once(report):
    loads = report["loads"]
    # the dataset once per report; each analysed checkpoint once
    assert len(loads["data"]) == 1
    assert len(loads["checkpoints"]) == 2 and len(set(loads["checkpoints"])) == 2


def test_confusion_and_per_class_numbers_are_the_records(report):
    from ablate.trial import read_trials

    records = read_trials(session_of(report["study"], report["out"])).records
    z = np.load(report["dest"] / "figures" / "confusion.npz")
    for v in ("on", "off", "unapplied"):
        evs = [r.evaluation("test") for r in records if r.variant == v]
        # the page's matrix is the sum over seeds of the stored EvalResult matrices
        np.testing.assert_array_equal(z[f"counts__{v}"], np.sum([e.confusion for e in evs], axis=0))
    text = section(report["html"].read_text(encoding="utf-8"), "Per-class precision, recall and F1")
    ev0, ev1 = [r.evaluation("test") for r in records if r.variant == "on"]
    f1 = (ev0.f1 + ev1.f1) / 2
    # the per-class F1 shown is the seeds' mean of the stored F1, class by class
    cells = re.findall(r"<td>on</td>\s*<td>(\w+)</td>\s*<td>[^<]*</td>\s*<td>[^<]*</td>\s*<td>([0-9.]+) ±", text)
    assert [c for c, _ in cells] == list(ev0.classes)
    np.testing.assert_allclose([float(x) for _, x in cells], f1, atol=5e-4)


def test_ablation_table_is_clean_with_notes_and_forest_plot(report):
    from ablate.summary import summarize

    text = section(report["html"].read_text(encoding="utf-8"), "Ablation table")
    table_html = text[text.index("<table"):text.index("</table>")]
    # the table holds clean text: no missing-value markers, dicts or Python reprs
    for bad in ("&lt;NA&gt;", "<NA>", "nan", "NaN", "{", "None"):
        assert bad not in table_html, bad
    # one row per variant
    assert table_html.count("<tr") == 1 + 3
    result = summarize(session_of(report["study"], report["out"]))
    # the summary's notes come before the table
    assert text.index(result["notes"][0].split("(")[0]) < text.index("<table")
    # the forest plot follows the table and draws exactly the table's paired intervals
    assert text.index("</table>") < text.index("figures/forest.png")
    table = result["table"]
    rows = table[table["variant"] != "unapplied"].set_index("variant")
    f = np.load(report["dest"] / "figures" / "forest.npz")
    assert list(f["variants"]) == list(rows.index)
    for key in ("mean_diff", "diff_ci_low", "diff_ci_high"):
        np.testing.assert_allclose(f[key], rows[key].to_numpy(dtype=float), equal_nan=True)
    assert float(f["rope"]) == pytest.approx(table.attrs["rope"])


def test_unreadable_record_fails_cleanly(report, tmp_path, capsys):
    # the storage names each trial's folder, so the study's own files are broken here and restored after
    trials = report["out"] / "trials"
    record, npz = trials / "0001" / "record.json", trials / "0002" / "test" / "predictions.npz"
    saved_record, saved_npz = record.read_bytes(), npz.read_bytes()
    dest = tmp_path / "rep"
    cmd = ["report", str(report["study"]), "--out", str(report["out"]), "--report-dir", str(dest), "--fast",
           "--n-images", "4", "--no-progress", "--no-mlflow"]
    try:
        record.write_text("{broken")
        rc = main(cmd)
        err = capsys.readouterr().err.strip()
        # exit status 2, one line naming the trial and its file, and no report that looks complete
        assert rc == 2 and len(err.splitlines()) == 1 and "trial 1 " in err and "record.json" in err, err
        assert not dest.exists()
        # a record whose test evaluation is gone: the same, naming that trial
        record.write_bytes(saved_record)
        npz.unlink()
        rc = main(cmd)
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "trial 2 (" in err and "evaluation" in err, err
        assert not dest.exists()
    finally:
        record.write_bytes(saved_record)
        npz.write_bytes(saved_npz)


def test_report_attached_to_mlflow(report):
    from ablate.runner import load_optuna_study

    s = session_of(report["study"], report["out"])
    parent = load_optuna_study(s).user_attrs["mlflow_parent_run_id"]
    names = [a.path for a in s.tracker().client.list_artifacts(parent, "report")]
    # the report folder is an artifact of the study's parent run
    assert "report/index.html" in names


def _chromium() -> str | None:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        try:
            subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True, timeout=600)
        except Exception:
            return None
        exe = shutil.which("chromium")
    return exe


FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def test_report_renders_in_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed and could not be installed")
    page = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{document.body.dataset.broken="
              "[...document.images].filter(i=>!i.complete||i.naturalWidth===0).length;"
              "document.body.dataset.count=document.images.length;"
              "document.body.dataset.wide=document.documentElement.scrollWidth>window.innerWidth+1;"
              "let d=document.getElementById('ablation-table');"
              "while(d&&!(d.classList&&d.classList.contains('scroll')))d=d.nextElementSibling;"
              "document.body.dataset.tablewide=d.scrollWidth>d.clientWidth;});"
              "</script></body>")
    page.write_text(report["html"].read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    shot = tmp_path / "shot.png"
    common = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                      "--run-all-compositor-stages-before-draw", "--window-size=1280,4000"]
    subprocess.run([exe, *common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=180)
    # the screenshot exists and is not blank (pixel variance well above a flat page)
    assert shot.is_file()
    arr = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert arr.std() > 10
    dom = subprocess.run([exe, *common, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=180).stdout
    m = re.search(r'data-broken="(\d+)"', dom)
    # the load handler ran and no image failed to decode (naturalWidth > 0 for every img)
    assert m is not None and int(m.group(1)) == 0
    assert int(re.search(r'data-count="(\d+)"', dom).group(1)) >= 8
    # nothing widens the page beyond the window (wide analysis tables scroll inside it), and the ablation
    # table fits without scrolling
    assert 'data-wide="false"' in dom and 'data-tablewide="false"' in dom


def test_explain_face_and_no_face(report, tmp_path, capsys, caplog):
    from resmasknet.data import load_data
    from resmasknet.data.faces import face_detector

    ckpt = sorted(report["out"].glob("trials/*/best.pt"))[0]
    d = load_data("generated:n=140,seed=0").select("test")
    # a face: a generated 48-px face upscaled and padded, as a photo would be
    face = np.pad(np.asarray(Image.fromarray(d.images[0]).resize((192, 192))), 64, constant_values=128)
    face_path = tmp_path / "face.png"
    Image.fromarray(face).save(face_path)
    blank = tmp_path / "noface.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 30, (120, 160), dtype=np.uint8)).save(blank)
    out = tmp_path / "explain"
    with caplog.at_level(logging.WARNING, logger="ablate.report"):
        rc = main(["explain", str(ckpt), str(face_path), str(blank), "--out", str(out)])
    printed = capsys.readouterr().out
    # it succeeds, logs the face-less image, prints class probabilities per image and writes the page
    assert rc == 0 and f"{blank}: no face found" in caplog.text
    assert "happy" in printed and str(blank) in printed
    text = (out / "index.html").read_text()
    # faces and attributions at least (plus one gallery per mask stage when the checkpoint has masks)
    assert text.count("data:image/png;base64,") >= 2
    # the face-less image is reported as such (whole image used)
    assert f"{blank}: no face found" in text
    assert (out / "probabilities.csv").exists()
    if face_detector() is not None and FER_DIR.joinpath("fer2013.npz").exists():
        # with OpenCV's Haar cascade present, a real FER2013 face, upscaled and padded like a photo,
        # is found and cropped (the cartoon generated faces are not faces to a Haar cascade)
        z = np.load(FER_DIR / "fer2013.npz")
        real = np.pad(np.asarray(Image.fromarray(z["pixels"][0]).resize((192, 192))), 64, constant_values=128)
        real_path = tmp_path / "real.png"
        Image.fromarray(real).save(real_path)
        assert main(["explain", str(ckpt), str(real_path), "--out", str(tmp_path / "real")]) == 0
        assert f"{real_path}: face at" in (tmp_path / "real" / "index.html").read_text()


def test_explain_unreadable_image_names_the_path(report, tmp_path, capsys):
    ckpt = sorted(report["out"].glob("trials/*/best.pt"))[0]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    # a file that is not an image: exit status 2 and an error naming the path
    assert main(["explain", str(ckpt), str(bad), "--out", str(tmp_path / "x")]) == 2
    assert str(bad) in capsys.readouterr().err
    # a missing file: same, naming it
    assert main(["explain", str(ckpt), str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "x")]) == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_analyse_checkpoint_report(report, tmp_path, capsys):
    from resmasknet import load_checkpoint
    from resmasknet.data import load_data
    from resmasknet.evaluate import evaluate

    ckpt = next(p for p in sorted(report["out"].glob("trials/*/best.pt"))
                if any(m.enabled for m in load_checkpoint(p)[0].config.masks))  # a masked variant
    dest = tmp_path / "analysis"
    rc = main(["analyse", str(ckpt), "--data", "generated:n=140,seed=0", "--n-images", "8", "--analysis", "fast",
               "--out", str(dest), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and (dest / "index.html").is_file()
    text = (dest / "index.html").read_text(encoding="utf-8")
    for s in CHECKPOINT_SECTIONS:
        assert f">{s}</h2>" in text, s
    # the per-stage intervention table and the timings are printed; the narrative names the zero-mask cost
    assert "zero" in out and "analysis of 8 images" in out and "Removing it (zero mask)" in text
    assert (dest / "analysis" / "model" / "tables" / "interventions.csv").exists()
    # the confusion matrix drawn is the evaluation's own
    ev = evaluate(load_checkpoint(ckpt)[0], load_data("generated:n=140,seed=0").select("test"))
    np.testing.assert_array_equal(np.load(dest / "figures" / "confusion.npy"), ev.confusion)
    # a bad profile or a missing checkpoint is a clear error, and nothing is left looking complete
    assert main(["analyse", str(tmp_path / "none.pt"), "--data", "generated", "--out", str(tmp_path / "x")]) == 2
    assert "none.pt" in capsys.readouterr().err and not (tmp_path / "x").exists()
    from ablate.cli.report import PROFILES
    from ablate.report import ANALYSIS_PROFILES, analysis_options

    with pytest.raises(ValueError, match="profile 'huge'"):
        analysis_options("huge")
    # the command line offers exactly the profiles the report knows
    assert set(PROFILES) == set(ANALYSIS_PROFILES)


def test_search_study_report(tmp_path):
    out, dest = tmp_path / "run", tmp_path / "rep"
    assert main(["run", "search_masks", "--tiny", "--out", str(out), "--no-progress", "--no-summary"]) == 0
    rc = main(["report", "search_masks", "--tiny", "--out", str(out), "--report-dir", str(dest), "--fast",
               "--n-images", "4", "--no-progress", "--no-mlflow"])
    text = (dest / "index.html").read_text(encoding="utf-8")
    # a search study has importances and the Pareto front instead of a baseline comparison, each trial being
    # its own "variant"; its best trial is analysed
    assert rc == 0 and "parameter importances" in text and "Pareto front / best trials" in text
    for s in SECTIONS:
        assert f">{s}</h2>" in text, s
    assert json.loads((dest / "report.json").read_text())["analysed"]
