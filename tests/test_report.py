"""`ablate report` on a tiny real study (sections, embedded PNGs, headless Chromium render, atomic write)
and `ablate explain` on a generated face and on an image without a face."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FER_DIR, tiny_grid_study
from PIL import Image

from ablate.cli import main
from ablate.report import SECTIONS

STUDY = tiny_grid_study("reportcheck")


def make_study(folder: Path) -> tuple[Path, Path]:
    """A 2 variants x 2 seeds study, seconds per trial; returns (study file, output folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "reportcheck.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    out = folder / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress", "--no-summary"]) == 0
    return path, out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    study, out = make_study(tmp)
    dest = tmp / "reports" / "reportcheck"
    rc = main(["report", str(study), "--out", str(out), "--report-dir", str(dest), "--n-images", "6", "--fast",
               "--no-progress"])
    return {"rc": rc, "study": study, "out": out, "dest": dest, "html": dest / "index.html"}


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


def test_report_sections_and_images(report):
    # the command succeeds and the page exists where asked
    assert report["rc"] == 0 and report["html"].is_file()
    text = report["html"].read_text(encoding="utf-8")
    # every section heading is present
    for s in SECTIONS:
        assert f">{s}</h2>" in text, s
    # the narrative is generated from numbers: one sentence per mask stage naming KL, change and the zero mask
    assert len(re.findall(r"<li>Stage \d", text)) >= 1
    assert "nats" in text and "Removing it (zero mask)" in text
    # self-contained: no external URLs (no http(s) src/href), CSS inline
    assert not re.search(r"(src|href)=\"https?:", text) and "<style>" in text
    # every <img> is a data URI that decodes to a PNG
    srcs = re.findall(r"<img[^>]*src=\"([^\"]+)\"", text)
    assert len(srcs) >= 8
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # every figure has its PNG and raw array(s) beside it
    figs = report["dest"] / "figures"
    pngs = sorted(figs.glob("*.png"))
    assert len(pngs) == len(srcs) - 0 or len(pngs) >= 8
    for p in pngs:
        assert p.with_suffix(".npy").exists() or p.with_suffix(".npz").exists(), p
    # no temporary folder is left beside the report (written elsewhere, renamed into place)
    assert not [p for p in report["dest"].parent.iterdir() if p.name.startswith(".")]


def test_report_attached_to_mlflow(report):
    import argparse

    from ablate.cli.study import session_from
    from ablate.runner import load_optuna_study

    s = session_from(argparse.Namespace(study=str(report["study"]), out=str(report["out"]), storage=None,
                                        tracking_uri=None, tiny=False))
    parent = load_optuna_study(s).user_attrs["mlflow_parent_run_id"]
    names = [a.path for a in s.tracker().client.list_artifacts(parent, "report")]
    # the report folder is an artifact of the study's parent run
    assert "report/index.html" in names


def test_report_renders_in_chromium(report, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed and could not be installed")
    page = tmp_path / "probe.html"
    script = ("<script>window.addEventListener('load',()=>{document.body.dataset.broken="
              "[...document.images].filter(i=>!i.complete||i.naturalWidth===0).length;"
              "document.body.dataset.count=document.images.length;});</script></body>")
    page.write_text(report["html"].read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    shot = tmp_path / "shot.png"
    common = FLAGS + [f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
                      "--run-all-compositor-stages-before-draw"]
    subprocess.run([exe, *common, f"--screenshot={shot}", "--window-size=1280,4000", page.as_uri()],
                   capture_output=True, timeout=180)
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


def test_explain_face_and_no_face(report, tmp_path, capsys):
    from resmasknet.data import load_data

    ckpt = sorted(report["out"].glob("trials/*/best.pt"))[0]
    d = load_data("generated:n=140,seed=0").select("test")
    # a face: a generated 48-px face upscaled and padded, as a photo would be
    face = np.pad(np.asarray(Image.fromarray(d.images[0]).resize((192, 192))), 64, constant_values=128)
    face_path = tmp_path / "face.png"
    Image.fromarray(face).save(face_path)
    blank = tmp_path / "noface.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 30, (120, 160), dtype=np.uint8)).save(blank)
    out = tmp_path / "explain"
    with pytest.warns(UserWarning, match="no face found"):
        rc = main(["explain", str(ckpt), str(face_path), str(blank), "--out", str(out)])
    printed = capsys.readouterr().out
    # it succeeds, prints class probabilities per image and writes the page with embedded PNGs
    assert rc == 0 and "happy" in printed and str(blank) in printed
    text = (out / "index.html").read_text()
    # faces and attributions at least (plus one gallery per mask stage when the checkpoint has masks)
    assert text.count("data:image/png;base64,") >= 2
    # the face-less image is reported as such (whole image used)
    assert f"{blank}: no face found" in text
    from ablate.report import face_detector

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
    from ablate.report import CHECKPOINT_SECTIONS

    ckpt = next(p for p in sorted(report["out"].glob("trials/*/best.pt"))
                if load_checkpoint_masks(p))  # a masked variant
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
    # a bad profile or a missing checkpoint is a clear error, and nothing is left looking complete
    assert main(["analyse", str(tmp_path / "none.pt"), "--data", "generated", "--out", str(tmp_path / "x")]) == 2
    assert "none.pt" in capsys.readouterr().err and not (tmp_path / "x").exists()
    from ablate.cli.report import PROFILES
    from ablate.report import ANALYSIS_PROFILES, analysis_options

    with pytest.raises(ValueError, match="profile 'huge'"):
        analysis_options("huge")
    # the command line offers exactly the profiles the report knows
    assert set(PROFILES) == set(ANALYSIS_PROFILES)


def load_checkpoint_masks(path: Path) -> bool:
    from resmasknet import load_checkpoint

    return any(m.enabled for m in load_checkpoint(path)[0].config.masks)
