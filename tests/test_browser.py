"""The explorer notebook in a real browser: JupyterLab on 127.0.0.1, headless Chromium driven by Playwright runs every
cell, and the explorer's widgets render (tabs, controls, confusion buttons, the picture; no "Loading widget"
placeholder). Slow (about 30 s plus JupyterLab's start): `make test-slow`, or `make browser-check` on the demo."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_explorer_renders_in_chromium(finished_project, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    pytest.importorskip("playwright")
    import browser_check

    project = tmp_path / "project"
    shutil.copytree(finished_project, project)
    shutil.copy(ROOT / "notebooks" / "mask_explorer.ipynb", project / "notebooks")
    seen = browser_check.check(project, "notebookcheck", tmp_path / "shot.png", chromium, n_faces=3)
    # seven tabs, the controls, a 7x7 confusion matrix of buttons, a drawn picture, no placeholder, no error
    assert seen["tabs"] == 7 and seen["confusion_buttons"] == 49 and seen["dropdowns"] >= 8
    assert seen["picture_width"] > 0 and seen["loading_placeholders"] == 0 and seen["errors"] == 0
    assert (tmp_path / "shot.png").read_bytes()[:4] == b"\x89PNG"
