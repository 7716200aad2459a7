"""The mask explorer in a real browser: JupyterLab on 127.0.0.1, headless Chromium (the system's, e.g. Debian's
`chromium` package) driven by Playwright, "Run All Cells" on `notebooks/mask_explorer.ipynb`, then checks that the
explorer's widgets rendered (controls and the picture, no "Loading widget..." placeholder) and saves a screenshot.

    python tools/browser_check.py                       # the project's notebooks/, the quickstart study (make demo)
    python tools/browser_check.py --project DIR --study NAME --out shot.png

Exit 0 with the screenshot's path; 1 with one line saying what did not render. Needs `pip install playwright`
(its own browser download is not used: --chromium, default the `chromium` on PATH).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url.split('?')[0]} within {timeout:.0f} s")


def check(project: Path, study: str, out: Path, chromium: str, n_faces: int = 4, timeout: float = 240) -> dict:
    """Run the check; returns what was seen (counts of controls, the picture's size)."""
    from playwright.sync_api import sync_playwright

    notebooks = project / "notebooks"
    if not (notebooks / "mask_explorer.ipynb").exists():
        raise FileNotFoundError(f"{notebooks / 'mask_explorer.ipynb'}: no explorer notebook there")
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "ABLATE_STUDY": study, "ABLATE_N_FACES": str(n_faces), "MPLBACKEND": "Agg"}
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                            f"--ServerApp.token={token}", f"--ServerApp.root_dir={notebooks}",
                            "--ServerApp.open_browser=False", "--allow-root"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=notebooks)
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 60)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(f"http://127.0.0.1:{port}/lab/tree/mask_explorer.ipynb?token={token}")
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=timeout * 1000)
            # the kernel is up when the status bar says Idle; "Run All Cells" is disabled before that
            page.locator(".jp-StatusBar-Widget", has_text="Idle").first.wait_for(timeout=timeout * 1000)
            page.locator(".jp-Notebook .jp-Cell").first.click()
            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            try:
                page.wait_for_selector(".jp-OutputArea-output .widget-tab", timeout=timeout * 1000)
            except Exception:
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out.with_name(out.stem + "-failed.png")))
                raise
            # the explorer's picture (the last widget image: the histogram before it sits in a hidden tab)
            page.locator(".jp-OutputArea-output img.widget-image").last.wait_for(timeout=timeout * 1000)
            # the last cell's static figure: every cell ran
            deadline = time.time() + timeout
            while time.time() < deadline and page.locator(".jp-InputArea-prompt", has_text="[*]").count():
                time.sleep(1)
            widget = page.locator(".jp-OutputArea-output .widget-vbox").first
            widget.scroll_into_view_if_needed()
            seen = {
                "tabs": page.locator(".widget-tab .lm-TabBar-tab").count(),
                "dropdowns": page.locator(".jp-OutputArea-output .widget-dropdown").count(),
                "sliders": page.locator(".jp-OutputArea-output .widget-slider").count(),
                "confusion_buttons": page.locator(".jp-OutputArea-output .widget-gridbox button").count(),
                "picture_width": page.evaluate(
                    "() => Math.max(...[...document.querySelectorAll('img.widget-image')].map(i => i.naturalWidth))"),
                "loading_placeholders": page.get_by_text("Loading widget").count(),
                "errors": page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
                .filter(has_text="Error").count(),
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            widget.screenshot(path=str(out))
            page.screenshot(path=str(out.with_name(out.stem + "-page.png")), full_page=False)
            browser.close()
    finally:
        lab.terminate()
        try:
            lab.wait(timeout=20)
        except subprocess.TimeoutExpired:
            lab.kill()
    problems = []
    if seen["tabs"] < 7:
        problems.append(f"{seen['tabs']} of 7 tabs")
    if seen["dropdowns"] < 8 or seen["confusion_buttons"] < 49:
        problems.append(f"{seen['dropdowns']} dropdowns and {seen['confusion_buttons']} confusion buttons")
    if not seen["picture_width"]:
        problems.append("no picture")
    if seen["loading_placeholders"]:
        problems.append("a 'Loading widget' placeholder")
    if seen["errors"]:
        problems.append(f"{seen['errors']} error output(s)")
    if problems:
        raise RuntimeError(f"the explorer did not render in the browser: {', '.join(problems)} (screenshot {out})")
    return seen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=str(ROOT), help="a project folder with notebooks/ and runs/ (default: here)")
    ap.add_argument("--study", default="quickstart")
    ap.add_argument("--out", default="reports/browser-check/mask_explorer.png")
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    args = ap.parse_args(argv)
    if not args.chromium:
        print("error: no chromium on PATH (Debian: apt-get install chromium); or pass --chromium PATH",
              file=sys.stderr)
        return 1
    try:
        import playwright  # noqa: F401
    except ImportError:
        print("error: playwright is not installed (pip install playwright; its browser download is not needed)",
              file=sys.stderr)
        return 1
    t = time.perf_counter()
    try:
        seen = check(Path(args.project), args.study, Path(args.out), args.chromium)
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"explorer rendered in Chromium ({time.perf_counter() - t:.0f} s): {seen}; screenshot {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
