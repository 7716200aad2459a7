"""tools/wheelhouse.py: what an offline target needs, worked out from requirement metadata."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "tools" / "wheelhouse.py"
_spec = importlib.util.spec_from_file_location("wheelhouse", _PATH)
wh = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wh)

ENV = wh.target_environment("3.12")

# A made-up dependency graph: the answer below is worked out by hand from it.
GRAPH = {
    "app": ["Lib_A>=1", "libb; python_version < '3.11'", "libc[fast]", "tooling; extra == 'dev'",
            "winonly; sys_platform == 'win32'"],
    "lib-a": ["shared", "numpy>=1.26"],
    "libc": ["shared", "libc-speedups; extra == 'fast'", "libc-docs; extra == 'docs'"],
    "libc-speedups": ["cffi"],
    "cffi": ["pycparser"],
    "numpy": ["never-visited"],
}


def requires(name):
    return GRAPH.get(name, [])


def test_closure_follows_markers_extras_and_stops_at_what_the_target_has():
    got = wh.closure(GRAPH["app"], requires, have={"numpy", "pycparser"}, env=ENV)
    # libb: Python < 3.11 only; tooling: extra not asked for; winonly: another platform; libc-docs: extra
    # not asked for; numpy and pycparser: on the target (never-visited is numpy's own need).
    assert got == ["cffi", "lib-a", "libc", "libc-speedups", "shared"]


def test_older_python_target_takes_the_backport():
    got = wh.closure(GRAPH["app"], requires, have={"numpy", "pycparser"}, env=wh.target_environment("3.10"))
    assert "libb" in got


def test_parse_have_reads_pip_list_freeze_and_plain_names():
    pip_list = "Package    Version\n---------- -------\nFlask_CORS 6.0.5\nnumpy      2.5.2\n"
    freeze = "torch==2.11.0\nscikit-learn==1.7\nmypkg @ file:///somewhere\n# comment\n"
    plain = "absl-py, accelerate, Jinja2,\nzipp\n"
    assert wh.parse_have(pip_list) == {"flask-cors", "numpy"}
    assert wh.parse_have(freeze) == {"torch", "scikit-learn", "mypkg"}
    assert wh.parse_have(plain) == {"absl-py", "accelerate", "jinja2", "zipp"}


def test_this_environment_closure_holds_the_tracking_and_attribution_stack():
    """Against the installed metadata: a target with only PyTorch and numpy needs optuna, mlflow, captum."""
    pytest.importorskip("optuna")
    got = wh.closure(wh.project_requirements(), wh.installed_requires, have={"torch", "numpy"}, env=ENV)
    assert {"optuna", "mlflow", "captum", "baycomp", "sqlalchemy", "alembic"} <= set(got)
    assert "torch" not in got and "numpy" not in got


def test_the_wheelhouse_brings_the_test_runner_the_doctor_needs():
    """`ablate doctor` runs the device tests with pytest, which a GPU node (torch and the scientific stack)
    lacks: it comes from the `dev` extra, with its own needs, unless --no-tests."""
    pytest.importorskip("optuna")
    have = {"torch", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "scikit-learn", "pyyaml", "tqdm"}
    got = set(wh.closure(wh.project_requirements(), wh.installed_requires, have=have, env=ENV))
    assert {"pytest", "pytest-timeout", "pluggy", "iniconfig"} <= got
    assert not {"mypy", "ruff", "jupyterlab", "hypothesis"} & got  # the rest of the dev extra stays out
    bare = set(wh.closure(wh.project_requirements(tests=False), wh.installed_requires, have=have, env=ENV))
    assert got - bare >= {"pytest", "pytest-timeout"} and "pytest" not in bare
