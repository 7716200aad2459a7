"""`ablate doctor`: prove the toolkit on one device in one command, and print one table.

Before any step, PyTorch's version is checked (`runtime.check_torch`: a GPU node's own PyTorch, which `make
gpu-check` uses without network, may be older than the toolkit supports) and the device
(`runtime.check_device`); either refused ends the doctor with one line, exit status 2, and nothing written.

Steps (each timed; any failure makes the exit status 1):
    device    the hardware, torch and CUDA versions, the precision runs use there (bf16 or fp32) and why
    tests     the device tests (`pytest -m device`, ABLATE_TEST_DEVICE set) run on this device
    bench     every preset under fp32, bf16, channels_last, both, and torch.compile, each against fp32
    study     the quickstart study shrunk to seconds, with two workers sharing the device
    analysis  the mask analysis of one of that study's checkpoints, on the device
    cost      the projected cost of the FER2013 studies here (`ablate.cost`)

    ablate doctor --device cuda --out runs/gpu-check          # `make gpu-check`
    ablate doctor --device cpu --only device tests study       # the same on a CPU
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STEPS", "Step", "format_steps", "run_doctor"]

STEPS = ("device", "tests", "bench", "study", "analysis", "cost")
SMALL = ("resmasknet_tiny", "resmasknet_cpu", "resnet_cpu", "resmasknet_cpu_unapplied")
FER_SIZES = (28709, 3589, 3589)  # FER2013 Training / PublicTest / PrivateTest


@dataclass
class Step:
    name: str
    status: str = "pass"  # pass | fail | skip | not run (the doctor stopped before it)
    seconds: float = 0.0
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def _tests_dir() -> Path | None:
    tests = Path(__file__).resolve().parents[1] / "tests"
    return tests if (tests / "test_device.py").is_file() else None


_USES_DEVICE = re.compile(r"^\s*def test_\w+\((?:[^)]*[\s,(])?device\s*[,:)=]", re.MULTILINE)


def device_test_files(tests: Path) -> list[Path]:
    """The test modules that hold device tests (a test taking the `device` fixture). Only these are handed to
    pytest: it imports every module it is given before `-m device` selects anything, and a GPU node lacks
    what the rest of the suite imports (nbformat, nbclient), which would stop the run at collection."""
    return [p for p in sorted(tests.glob("test_*.py")) if _USES_DEVICE.search(p.read_text())]


def step_device(dev: Any, out: Path) -> Step:
    import torch

    from resmasknet.runtime import bf16_support, describe_device, generation, gpu_capability, precision_for

    line = describe_device(dev)
    bf16, why = bf16_support(dev)
    precision = precision_for(dev)
    if dev.type == "cuda":
        cap = gpu_capability(dev)
        extra = f"CUDA {torch.version.cuda}, capability {cap[0]}.{cap[1]} ({generation(cap)})"
        if precision == "fp32":
            extra += "; no native bf16 before Ampere (8.0): training and evaluation run in fp32"
    else:
        extra = f"bf16 units: {why}"
    return Step("device", detail=f"{line}; torch {torch.__version__}; {extra}; bf16 {'yes' if bf16 else 'no'}; "
                f"precision {precision}",
                data={"device": line, "torch": torch.__version__, "bf16": bf16, "precision": precision})


def step_tests(dev: Any, out: Path) -> Step:
    tests = _tests_dir()
    if tests is None:
        return Step("tests", "skip", detail="no tests/ folder beside the package (run from a clone)")
    env = {**os.environ, "ABLATE_TEST_DEVICE": str(dev), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY",
                                                                                          "PASSIVE")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "device", *map(str, device_test_files(tests)),
           "-p", "no:cacheprovider",
           "-o", f"cache_dir={out / '.pytest_cache'}", "--junitxml", str(out / "device-tests.xml")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tests.parent)
    (out / "device-tests.log").write_text(proc.stdout + proc.stderr)
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", proc.stdout)}
    ran = counts.get("passed", 0) + counts.get("failed", 0)
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    if "No module named pytest" in proc.stderr:
        return Step("tests", "fail", detail="pytest is not installed for this Python; on a machine without "
                    "network, bring it with the wheelhouse (tools/wheelhouse.py, docs/clusters.md)")
    if proc.returncode != 0 or ran == 0:
        why = "no device test ran" if ran == 0 and proc.returncode in (0, 5) else f"pytest exit {proc.returncode}"
        return Step("tests", "fail", detail=f"{why}: {summary} (log: {out / 'device-tests.log'})", data=counts)
    return Step("tests", detail=f"{summary} on {dev}", data=counts)


def step_bench(dev: Any, out: Path, *, models: tuple[str, ...] | None = None, compile_models: tuple[str, ...] = (),
               seconds: float = 8.0) -> Step:
    from resmasknet.bench_modes import MODES, bench_modes, format_modes
    from resmasknet.registry import get_config, list_models

    if models is None:
        models = tuple(list_models()) if dev.type == "cuda" else SMALL
    rows: list[dict[str, Any]] = []
    for name in models:
        size = get_config(name).input_size
        modes = [m for m in MODES if m != "compile" or name in compile_models]
        rows += bench_modes([name], device=dev, batch_size=64 if size <= 64 else 48, modes=modes,
                            steps=20, warmup=3, seconds=seconds)
    table = format_modes(rows)
    (out / "bench.txt").write_text(table + "\n")
    best = []
    for name in models:
        ok = [r for r in rows if r["model"] == name and "train_x" in r]
        if ok:
            top = max(ok, key=lambda r: r["train_img_s"])
            best.append(f"{name} {top['mode']} {top['train_x']:.2f}x")
    failed = [f"{r['model']} {r['mode']}" for r in rows if "skipped" in r and not r["skipped"].startswith("no bf16")]
    status = "fail" if any(r["mode"] == "fp32" and "skipped" in r for r in rows) else "pass"
    detail = "fastest training mode: " + "; ".join(best)
    if failed:
        detail += f"; could not run: {', '.join(failed)}"
    return Step("bench", status, detail=detail, data={"rows": rows, "table": table})


def step_study(dev: Any, out: Path, workers: int = 2) -> Step:
    from ablate.trial import RECORD

    root = out / "study"
    cmd = [sys.executable, "-m", "ablate", "run", "quickstart", "--tiny", "--out", str(root),
           "--device", str(dev), "--no-progress", "--no-summary"]
    cmd += ["--workers-per-gpu", str(workers)] if dev.type == "cuda" else ["--workers", str(workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out / "study.log").write_text(proc.stdout + proc.stderr)
    records = [json.loads(p.read_text()) for p in sorted(root.glob(f"trials/*/{RECORD}"))]
    devices = sorted({str(r.get("device")) for r in records})
    on_dev = all(str(r.get("device", "")).startswith(dev.type) for r in records)
    cells = re.search(r"(\d+) cells", proc.stdout + proc.stderr)
    expected = int(cells.group(1)) if cells else None
    detail = (f"{len(records)}/{expected if expected is not None else '?'} cells by {workers} workers sharing "
              f"{dev}; trained on {', '.join(devices) or '-'}")
    ok = proc.returncode == 0 and records and on_dev and (expected is None or len(records) == expected)
    if not ok:
        detail += f" (exit {proc.returncode}; log: {out / 'study.log'})"
    return Step("study", "pass" if ok else "fail", detail=detail,
                data={"records": len(records), "devices": devices,
                      "checkpoint": str(next(root.glob("trials/*/best.pt"), ""))})


def step_analysis(dev: Any, out: Path, checkpoint: str | None) -> Step:
    from ablate.report import build_checkpoint_report

    if not checkpoint:
        return Step("analysis", "skip", detail="no checkpoint (the study step did not run or made none)")
    page = build_checkpoint_report(checkpoint, "generated:n=140,seed=0", out / "analyse", n_images=24,
                                   analysis="fast", progress=False, device=str(dev))
    info = json.loads((page.parent / "report.json").read_text())
    ok = str(info.get("device", "")).startswith(dev.type)
    return Step("analysis", "pass" if ok else "fail",
                detail=f"{info['n_images']} faces analysed on {info.get('device')}; report {page}",
                data={"report": str(page), "device": info.get("device")})


def step_cost(dev: Any, out: Path, studies: tuple[tuple[str, int | None, int], ...] | None = None) -> Step:
    """Each (study, epochs or None, workers) projected on FER2013's split sizes, measured beside workers - 1
    other training workers: on CUDA `fer_per_stage` with the 4 workers per GPU its file runs with, and 50
    epochs of `paper_scale` with one."""
    from ablate.cost import project_study
    from ablate.runner import worker_threads
    from ablate.study import load_study

    if studies is None:
        studies = ((("fer_per_stage", None, 4), ("paper_scale", 50, 1)) if dev.type == "cuda"
                   else (("fer_per_stage_cpu", None, 1),))
    lines, data = [], {}
    for name, epochs, workers in studies:
        cost = project_study(load_study(name), FER_SIZES, device=str(dev), epochs=epochs, workers=workers,
                             threads=worker_threads(workers), steps=20, warmup=3, seconds=8.0, rounds=1)
        (out / f"cost-{name}.txt").write_text(cost.format() + "\n")
        seeds = min(r.seeds for r in cost.rows)
        wall = cost.makespan_s(seeds, workers)
        lines.append(f"{name}{f' ({epochs} epochs)' if epochs else ''} {wall / 60:.1f} min on {workers} "
                     f"worker{'s' if workers > 1 else ''}")
        data[name] = {"total_s": cost.total_s, "workers": workers, "wall_s": wall,
                      "rows": [asdict(r) for r in cost.rows]}
    return Step("cost", detail="; ".join(lines), data=data)


def run_doctor(device: str | None = None, out: str | Path = "runs/doctor", *, only: tuple[str, ...] = STEPS,
               compile_models: tuple[str, ...] | None = None, bench_models: tuple[str, ...] | None = None,
               progress: Callable[[Step], None] | None = None) -> list[Step]:
    """Run the steps in `only` (in STEPS order) on `device`; a step that raises is a failure with the error's
    first line, and the others still run. Writes `<out>/doctor.json` and `<out>/doctor.md` before the first
    step and again after each one: the steps not yet run stand in them as "not run" until they have."""
    from resmasknet.runtime import atomic_write_json, atomic_write_text, check_device, check_torch

    unknown = [s for s in only if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown doctor step(s) {unknown}; steps: {', '.join(STEPS)}")
    check_torch()  # before anything else imports torch's newer API: a node's own old PyTorch, in one line
    import torch

    dev = torch.device(check_device(device))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if compile_models is None:
        compile_models = ("resmasknet_cpu", "resmasknet_paper") if dev.type == "cuda" else ()
    steps: list[Step] = []
    pending = [Step(name, "not run", detail="the doctor stopped before this step") for name in STEPS if name in only]

    def save() -> None:  # after every step: a doctor stopped by a time limit keeps the table of what it ran
        table = steps + pending
        atomic_write_json(out / "doctor.json", [asdict(s) for s in table])
        atomic_write_text(out / "doctor.md", format_steps(table, markdown=True) + "\n")

    save()
    checkpoint: str | None = None
    runners: dict[str, Callable[[], Step]] = {
        "device": lambda: step_device(dev, out),
        "tests": lambda: step_tests(dev, out),
        "bench": lambda: step_bench(dev, out, models=bench_models, compile_models=compile_models),
        "study": lambda: step_study(dev, out),
        "analysis": lambda: step_analysis(dev, out, checkpoint),
        "cost": lambda: step_cost(dev, out),
    }
    for name in STEPS:
        if name not in only:
            continue
        t0 = time.perf_counter()
        try:
            step = runners[name]()
        except Exception as exc:  # noqa: BLE001 - one step's failure is reported; the others still run
            first = (str(exc).splitlines() or [""])[0]
            step = Step(name, "fail", detail=f"{type(exc).__name__}: {first}")
        step.seconds = time.perf_counter() - t0
        if dev.type == "cuda":  # the next steps' worker processes share this GPU: hand back this one's cache
            import torch

            torch.cuda.empty_cache()
        if name == "study":
            checkpoint = step.data.get("checkpoint") or None
        steps.append(step)
        pending.pop(0)
        save()
        if progress is not None:
            progress(step)
    return steps


def format_steps(steps: list[Step], markdown: bool = False) -> str:
    """The one table: step, result, seconds, what was found."""
    rows = [(s.name, s.status, f"{s.seconds:.0f}", s.detail) for s in steps]
    if markdown:
        lines = ["| step | result | s | detail |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d.replace('|', '/')} |" for a, b, c, d in rows]
        return "\n".join(lines)
    from resmasknet.bench import text_table

    return "\n".join(text_table([("step", "result", "s", "detail"), *rows], left=(0, 1, 3)))
