"""Wheels for installing the toolkit on a machine without network access (a GPU node of a cluster).

The target usually has PyTorch and the scientific stack already; what it lacks (Optuna, MLflow, Captum,
baycomp and their own needs) is worked out from this environment: every distribution the project needs,
transitively, as installed here, minus the names the target has. Each one is then downloaded with
`pip download --no-deps` for the target's Python and platform, pinned to the version installed here (the
versions the test suite ran with).

    python tools/wheelhouse.py --have target-pip-list.txt --python-version 3.12 --dest wheelhouse
    # on the target, from a checkout of the project:
    python3 -m pip install --no-index --no-deps --target wheelhouse/site wheelhouse/*.whl
    PYTHONPATH=wheelhouse/site:. python3 -m ablate doctor --device cuda --out runs/gpu-check

`--have` takes the target's `pip list` or `pip freeze` output, or plain names, one per line or separated by
commas and spaces. `--list` prints what would be fetched and downloads nothing.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

# The platform tags pip matches exactly; manylinux wheels of the packages the toolkit needs use these.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
ROOT = Path(__file__).resolve().parent.parent


def canonical(name: str) -> str:
    """PEP 503 normalised project name (`Flask_CORS` and `flask-cors` are one project)."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def target_environment(python_version: str) -> dict[str, str]:
    """Marker values of a Linux x86-64 CPython of `python_version` (e.g. "3.12")."""
    return {"python_version": python_version, "python_full_version": python_version + ".0",
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": "x86_64", "implementation_name": "cpython",
            "platform_python_implementation": "CPython", "extra": ""}


def requirement(req: str, env: dict[str, str], extras: frozenset[str] = frozenset()) \
        -> tuple[str, frozenset[str]] | None:
    """(project name, extras asked for) of a requirement string of a distribution installed with `extras`,
    or None where its marker excludes the target (another platform, an older Python, an extra not asked
    for)."""
    r = Requirement(req)
    if r.marker is not None and not any(r.marker.evaluate({**env, "extra": e}) for e in ("", *extras)):
        return None
    return canonical(r.name), frozenset(r.extras)


def parse_have(text: str) -> set[str]:
    """Names from a `pip list` / `pip freeze` output or a plain list of names (commas or lines)."""
    names: set[str] = set()
    for line in text.splitlines():
        for chunk in line.split(","):
            words = chunk.split()
            if not words or words[0].startswith(("#", "Package", "---")):
                continue
            name = re.split(r"[=<>~!@\[]", words[0], maxsplit=1)[0]
            if _REQ_NAME.fullmatch(name):
                names.add(canonical(name))
    return names


def closure(roots: list[str], requires, have: set[str], env: dict[str, str]) -> list[str]:
    """Every name reachable from the requirement strings `roots` through `requires(name) -> list of
    requirement strings`, that the target does not have. A name the target has is not descended into:
    its needs are the target's own."""
    todo = [dep for dep in (requirement(r, env) for r in roots) if dep]
    seen: set[tuple[str, frozenset[str]]] = set()
    out: set[str] = set()
    while todo:
        name, extras = todo.pop(0)
        if (name, extras) in seen or name in have:
            continue
        seen.add((name, extras))
        out.add(name)
        todo += [dep for dep in (requirement(r, env, extras) for r in requires(name)) if dep]
    return sorted(out)


# `ablate doctor` runs the device tests with these (from the project's `dev` extra); a GPU node rarely has them.
TEST_RUNNER = ("pytest", "pytest-timeout")


def project_requirements(tests: bool = True) -> list[str]:
    """The project's own runtime requirements, from its installed metadata, and with `tests` the test runner
    of its `dev` extra that `ablate doctor` needs (their `extra == "dev"` marker dropped)."""
    try:
        reqs = metadata.requires("resmasknet-ablate") or []
    except metadata.PackageNotFoundError:
        sys.exit("wheelhouse: the project is not installed in this environment; run `make .venv/.installed` "
                 "and use .venv/bin/python")
    out = list(reqs)
    for r in reqs if tests else ():
        req = Requirement(r)
        if canonical(req.name) in TEST_RUNNER and req.marker is not None and req.marker.evaluate({"extra": "dev"}):
            req.marker = None
            out.append(str(req))
    return out


def installed_requires(name: str) -> list[str]:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return []


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def download(name: str, version: str, dest: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    cmd.append(f"{name}=={version}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 0:
        return
    # No wheel on the index (a project that publishes only its source): build one here, which is only
    # right for the target when the build is pure Python.
    before = set(dest.glob("*.whl"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest),
                            f"{name}=={version}"], capture_output=True, text=True)
    if build.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        sys.exit(f"wheelhouse: {name}=={version}: {last}")
    for wheel in set(dest.glob("*.whl")) - before:
        if not wheel.name.endswith("-none-any.whl"):
            wheel.unlink()
            sys.exit(f"wheelhouse: {name}=={version} has no wheel for the target and builds only for this "
                     f"machine ({wheel.name})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--have", type=Path, help="the target's `pip list` / `pip freeze` output, or names")
    p.add_argument("--skip", default="", help="more names the target has, comma-separated")
    p.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    p.add_argument("--dest", type=Path, default=ROOT / "wheelhouse")
    p.add_argument("--list", action="store_true", help="print what would be fetched, download nothing")
    p.add_argument("--no-tests", action="store_true",
                   help=f"leave out the test runner ({', '.join(TEST_RUNNER)}) that `ablate doctor` runs the "
                        "device tests with")
    args = p.parse_args(argv)
    have = parse_have(args.skip.replace(",", "\n"))
    if args.have:
        try:
            have |= parse_have(args.have.read_text())
        except OSError as e:
            sys.exit(f"wheelhouse: {args.have}: {e.strerror or e}")
    env = target_environment(args.python_version)
    names = closure(project_requirements(tests=not args.no_tests), installed_requires, have, env)
    missing = [n for n in names if installed_version(n) is None]
    if missing:
        sys.exit(f"wheelhouse: not installed here, so no version to pin: {', '.join(missing)}")
    pins = [(n, installed_version(n)) for n in names]
    if args.list:
        for n, v in pins:
            print(f"{n}=={v}")
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for i, (n, v) in enumerate(pins, 1):
        print(f"[{i}/{len(pins)}] {n}=={v}", flush=True)
        download(n, v, args.dest, args.python_version)
    total = sum(f.stat().st_size for f in args.dest.glob("*.whl"))
    print(f"{len(pins)} wheels in {args.dest} ({total / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
