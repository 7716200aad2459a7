"""Installed as a package (not editable), the toolkit works from any folder: the wheel carries the shipped
studies, and `ablate demo --tiny` (`ablate run quickstart --tiny`, its summary and report) runs from an empty
folder with the checkout nowhere on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "resmasknet", "ablate", "studies")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's sources (so the build writes nothing into the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "_studies"))
        else:
            shutil.copy2(ROOT / name, src / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(dist), str(src)], check=True, timeout=300)
    (whl,) = dist.glob("*.whl")
    return whl


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    return site


def _env(site: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ABLATE_STUDY", "ABLATE_OUT")}
    env["PYTHONPATH"] = str(site)  # the installed copy only: not the checkout, not an editable install
    return env


def test_the_wheel_carries_every_shipped_study(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = sorted(p.name for p in (ROOT / "studies").glob("*.yaml"))
    assert shipped and all(f"ablate/_studies/{n}" in names for n in shipped)
    # the checkout's top-level studies/ is their source, not a package of the wheel
    assert not any(n.startswith("studies/") for n in names)


def test_installed_copy_imports_from_its_site_and_finds_the_packaged_study(site, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = _env(site)
    where = subprocess.run(
        [sys.executable, "-c", "import ablate, resmasknet; from ablate.study import load_study; "
                               "print(ablate.__file__); print(resmasknet.__file__); "
                               "print(load_study('quickstart').path)"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    ablate_file, resmasknet_file, study_file = where.stdout.split()
    # imported from the installed copy, and the study found inside it
    for f in (ablate_file, resmasknet_file, study_file):
        assert Path(f).resolve().is_relative_to(site.resolve()), f
    assert Path(study_file).parent.name == "_studies"
    models = subprocess.run([sys.executable, "-m", "ablate", "models"], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120)
    assert models.returncode == 0 and "resmasknet_paper" in models.stdout, models.stderr


@pytest.mark.slow  # about a minute on 2 busy cores: 6 tiny cells, then the demo's summary and report
@pytest.mark.timeout(600)
def test_installed_copy_runs_quickstart_tiny_and_the_demo_from_an_empty_folder(site, tmp_path):
    cwd = tmp_path / "empty"
    cwd.mkdir()
    env = _env(site)
    where = subprocess.run([sys.executable, "-c", "import ablate; print(ablate.__file__)"], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=120)
    # in this environment `ablate` comes from the installed copy, not the checkout
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve()), where.stdout + where.stderr
    run = subprocess.run([sys.executable, "-m", "ablate", "run", "quickstart", "--tiny", "--no-progress"],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=540)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "verdict" in run.stdout
    summary = (cwd / "runs" / "quickstart-tiny" / "summary.csv").read_text()
    assert summary.splitlines()[0].startswith("variant") and "unapplied" in summary
    # `ablate demo --tiny` is the same run (here finished already: nothing trains again), its summary and report
    demo = subprocess.run([sys.executable, "-m", "ablate", "demo", "--tiny"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=540)
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert "verdict" in demo.stdout and "demo finished" in demo.stdout
    assert (cwd / "runs" / "quickstart-tiny" / "summary.csv").read_text() == summary
    assert (cwd / "reports" / "quickstart-tiny" / "index.html").exists()


def test_a_studies_folder_of_the_current_directory_wins_by_name(site, tmp_path):
    cwd = tmp_path / "mine"
    (cwd / "studies").mkdir(parents=True)
    (cwd / "studies" / "quickstart.yaml").write_text((ROOT / "studies" / "quickstart.yaml").read_text())
    found = subprocess.run([sys.executable, "-c", "from ablate.study import load_study; "
                                                  "print(load_study('quickstart').path)"],
                           cwd=cwd, env=_env(site), capture_output=True, text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == (cwd / "studies" / "quickstart.yaml").resolve()
