"""Throughput and peak memory of a network: training step, evaluation, and the augmented data pipeline.

Each is measured the way `resmasknet.train` runs it (channels_last, `torch.inference_mode`, the precision
`runtime.precision_for` decides: bf16 autocast on a GPU of compute capability 8.0 or newer, fp32 on older ones;
the data pipeline indexing a device-resident order of the pool, as training indexes its epoch's permutation)
and, for the network, also the "plain" way the authors' code runs it (contiguous memory format,
`torch.no_grad`, fp32), so the speed-up is visible. Peak memory: `torch.cuda.max_memory_allocated` on
CUDA; on CPU the growth of the process's resident-set high-water mark during the phase (reset per phase
through /proc/self/clear_refs where Linux allows, else `resource.getrusage`, which only ever rises: a 0
then means "no more than an earlier phase").

`bench_contended` measures training throughput on an idle machine and again while a separate busy process
spins on one core, in the same run: PyTorch's OpenMP threads wait on each other at every parallel region,
so one busy core can cost far more than its share unless they sleep while waiting (OMP_WAIT_POLICY=PASSIVE,
see `runtime.configure_threads`). It also measures one thread on the idle machine, what one free core gives:
PyTorch splits each parallel region evenly between its threads, so a thread that shares its core with another
process holds the region up, and a busy core leaves about that much.

With bf16 autocast on a CPU (`cpu_bf16`), evaluation is also timed in fp32 (`eval_fp32_img_s`): the toolkit's
prediction (`resmasknet.evaluate`) runs fp32 on a CPU, and `scoring_img_s` gives the rate it runs at.
`other_workers` trains the same network in separate processes beside a measurement, as the other workers of
`ablate run --workers N` do (`ablate.cost` projects a study that way). `worker_team` measures such processes
together, through one window, and `bench_contended(..., workers=N)` uses it: a study's N workers, idle and with
one core busy. Separate processes take the scheduler's fair share of a shared core where one process's threads,
waiting on each other, cannot.

Example:
    >>> rows = bench(["resnet_cpu", "resmasknet_cpu"], batch_size=32)
    >>> print(format_table(rows))
    >>> print(format_contended([bench_contended("resmasknet_cpu")]))   # idle vs one busy core, and the ratio
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from resmasknet.augment import augment_batch
from resmasknet.model import ResMaskNet, count_parameters
from resmasknet.runtime import new_session, precision_for, resolve_device, sched_autogroup

__all__ = ["BusyProcess", "WorkerTeam", "bench", "bench_contended", "bench_model", "busy_core",
           "format_contended", "format_table", "other_workers", "text_table", "worker_team"]

log = logging.getLogger(__name__)


# ---- memory ------------------------------------------------------------------------------------------
def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _PeakMemory:
    """Peak memory growth of one phase, in MB."""

    def __init__(self, dev: torch.device):
        self.dev = dev

    def __enter__(self) -> _PeakMemory:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
            return self
        self.hwm = False
        try:  # "5" resets the resident-set high-water mark (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.hwm = _proc_status_kb("VmHWM") is not None
        except OSError:
            pass
        self.base = (_proc_status_kb("VmRSS") or 0) if self.hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return self

    def __exit__(self, *exc: object) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            self.mb = (torch.cuda.max_memory_allocated(self.dev) - self.base) / 2**20
            return
        peak = (_proc_status_kb("VmHWM") or 0) if self.hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mb = max(0, peak - self.base) / 1024  # both in KB on Linux


# ---- timing ------------------------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any], dev: torch.device, *, warmup: int, steps: int, seconds: float) -> float:
    """Seconds per call: `warmup` untimed calls, then up to `steps` timed calls or until `seconds` pass."""
    for _ in range(warmup):
        fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    n = 0
    while n < steps:
        fn()
        n += 1
        if dev.type == "cuda" and n % 5 == 0:
            torch.cuda.synchronize(dev)
        if time.perf_counter() - t0 > seconds:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return (time.perf_counter() - t0) / n


def _use_bf16(dev: torch.device, cpu_bf16: bool) -> bool:
    """bf16 autocast as training decides it (`runtime.precision_for`)."""
    return precision_for(dev, cpu_bf16, "measuring") == "bf16"


def _train_step(net: nn.Module, x: torch.Tensor, labels: torch.Tensor, *, amp: bool) -> Callable[[], None]:
    """One AdamW training step on a fixed batch (the model is put in training mode)."""
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    dev_type = x.device.type

    def step() -> None:
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            logits = net(x)
        loss = nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def bench_model(model: str | ResMaskNet, *, batch_size: int = 32, device: str | torch.device | None = None,
                steps: int = 10, warmup: int = 2, seconds: float = 10.0, plain: bool = True, rounds: int = 2,
                cpu_bf16: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of measurements for a preset name (built with `overrides`) or a model.

    Keys: model, device, batch_size, params, input, train_img_s / eval_img_s / data_img_s (optimised),
    train_plain_img_s / eval_plain_img_s and the speed-ups (when plain=True), *_peak_mb.
    cpu_bf16: the optimised path uses bf16 autocast on CPU too, where the CPU has bf16 units (on CUDA where
    the GPU has native bf16: `runtime.precision_for`); row["bf16"] and row["precision"] say what was measured.
    rounds: each measurement is repeated this many times, alternating which path goes first; the best counts."""
    from resmasknet.registry import create_model

    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} must be >= 2 (BatchNorm needs two images to train)")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    dev = resolve_device(device)
    name = model if isinstance(model, str) else "custom"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training runs (resmasknet.train)
    net = create_model(model, **(overrides or {})) if isinstance(model, str) else model
    cfg = net.config
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (max(8 * batch_size, 256), 48, 48), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen).to(dev)
    row: dict[str, Any] = {"model": name, "device": str(dev), "batch_size": batch_size,
                           "params": count_parameters(net),
                           "input": f"{cfg.input_size}x{cfg.input_size}x{cfg.in_chans}"}
    timing: dict[str, Any] = {"warmup": warmup, "steps": steps, "seconds": seconds}
    amp = _use_bf16(dev, cpu_bf16)

    # data pipeline, as training runs it: index a device-resident uint8 pool with a device-resident order (one
    # copy up front, as training copies its epoch's permutation once), prepare_input, flip/rotate
    net.to(dev).to(memory_format=torch.channels_last)
    aug_gen = torch.Generator().manual_seed(1)
    order = torch.randint(0, pool.shape[0], (max(1, warmup + steps), batch_size), generator=gen).to(dev)
    drawn = [0]

    def data_step() -> torch.Tensor:
        idx = order[drawn[0] % order.shape[0]]
        drawn[0] += 1
        return augment_batch(net, pool[idx], aug_gen)

    with torch.inference_mode():
        s = _timed(data_step, dev, **timing)
    row["data_batches_s"] = 1 / s
    row["data_img_s"] = batch_size / s

    x_cl = net.prepare_input(pool[:batch_size])  # channels_last
    x_plain = x_cl.contiguous()

    def eval_phase(x: torch.Tensor, optimised: bool, bf16: bool | None = None) -> tuple[float, float]:
        net.eval()
        ctx: Callable[[], Any] = torch.inference_mode if optimised else torch.no_grad
        bf16 = amp and optimised if bf16 is None else bf16

        def step() -> None:
            with ctx(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
                net(x)

        with _PeakMemory(dev) as mem:
            s = _timed(step, dev, **timing)
        return batch_size / s, mem.mb

    def train_phase(x: torch.Tensor, optimised: bool) -> tuple[float, float]:
        step = _train_step(net, x, labels, amp=amp and optimised)
        with _PeakMemory(dev) as mem:
            s = _timed(step, dev, **timing)
        return batch_size / s, mem.mb

    # Rounds alternate which path goes first and each keeps its best (timeit's rule: the minimum time is the
    # one least disturbed by the rest of the machine); the first call of a phase also pays one-time costs
    # (allocator growth, weight prepacking), which the untimed warmup absorbs. Weights are updated by the
    # training phases; throughput does not depend on their values.
    paths = [("", torch.channels_last, x_cl, True)]
    if plain:
        paths.append(("_plain", torch.contiguous_format, x_plain, False))
    phases: list[tuple[str, Callable[[torch.Tensor, bool], tuple[float, float]]]] = [("eval", eval_phase),
                                                                                   ("train", train_phase)]
    if amp and dev.type == "cpu":  # prediction on a CPU runs in fp32 (resmasknet.evaluate): time that path too
        phases.insert(1, ("eval_fp32", lambda x, optimised: eval_phase(x, optimised, bf16=False)))
    for r in range(rounds):
        for suffix, fmt, x, optimised in paths if r % 2 == 0 else paths[::-1]:
            net.to(memory_format=fmt)
            for phase, fn in [(ph, fn) for ph, fn in phases if optimised or ph != "eval_fp32"]:
                img_s, mb = fn(x, optimised)
                key = f"{phase}{suffix}_img_s"
                row[key] = max(row.get(key, 0.0), img_s)
                row[f"{phase}{suffix}_peak_mb"] = max(row.get(f"{phase}{suffix}_peak_mb", 0.0), mb)
    if plain:
        row["eval_speedup"] = row["eval_img_s"] / row["eval_plain_img_s"]
        row["train_speedup"] = row["train_img_s"] / row["train_plain_img_s"]
    row["rounds"] = rounds
    row["bf16"] = amp
    row["precision"] = "bf16" if amp else "fp32"
    row["torch"] = torch.__version__
    row["threads"] = torch.get_num_threads()
    if dev.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(dev)
    return row


def scoring_img_s(row: dict[str, Any]) -> float:
    """The rate at which the toolkit scores images with this row's network (`resmasknet.evaluate.predict`,
    which validation and evaluation use): as training on a GPU (bf16 autocast on Ampere or newer, fp32 before),
    fp32 on a CPU whatever training used."""
    return float(row.get("eval_fp32_img_s", row["eval_img_s"]))


def bench(models: Sequence[str | ResMaskNet], *, progress: Callable[[dict[str, Any]], None] | None = None,
          **kwargs: Any) -> list[dict[str, Any]]:
    """`bench_model` for each model; `progress(row)` is called after each one."""
    rows = []
    for m in models:
        row = bench_model(m, **kwargs)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


COLUMNS = (
    ("model", "model", "{}"), ("params", "params", "{:,}"), ("input", "input", "{}"),
    ("train_img_s", "train img/s", "{:.1f}"), ("train_plain_img_s", "plain", "{:.1f}"),
    ("train_speedup", "x", "{:.2f}"), ("eval_img_s", "eval img/s", "{:.1f}"), ("eval_fp32_img_s", "fp32", "{:.1f}"),
    ("eval_plain_img_s", "plain", "{:.1f}"), ("eval_speedup", "x", "{:.2f}"),
    ("data_img_s", "data img/s", "{:.0f}"), ("train_peak_mb", "train MB", "{:.0f}"),
    ("eval_peak_mb", "eval MB", "{:.0f}"),
)


def text_table(cells: Sequence[Sequence[str]], left: Sequence[int] = (0,)) -> list[str]:
    """Lines of an aligned text table: columns in `left` left-aligned, the others right-aligned."""
    widths = [max(len(c[i]) for c in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
            for line in cells]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A text table: optimised and plain throughput side by side, speed-ups, data pipeline, peak memory."""
    cols = [(k, h, f) for k, h, f in COLUMNS if any(k in r for r in rows)]
    cells = [[h for _, h, _ in cols]] + [[f.format(r[k]) if k in r else "-" for k, _, f in cols] for r in rows]
    lines = text_table(cells)
    if rows:
        r = rows[0]
        mem = "CUDA max_memory_allocated" if r["device"].startswith("cuda") else "CPU resident-set growth"
        lines.append(f"\ndevice {r['device']}{' (' + r['gpu'] + ')' if 'gpu' in r else ''}, batch {r['batch_size']}, "
                     f"torch {r['torch']}, {r['threads']} threads. train/eval: channels_last + inference_mode"
                     f"{' + bf16' if r.get('bf16') else ''}; plain: contiguous, no_grad, fp32 "
                     f"(the authors' way); x = speed-up. data: index + prepare_input + flip/rotate. "
                     f"Memory: peak {mem} per phase (MB).")
    return "\n".join(lines)


# ---- one busy core -------------------------------------------------------------------------------------
# The competitor: a separate Python process that spins, pinned to one core where the OS allows.
_BUSY_CODE = """\
import os, sys
core = int(sys.argv[1])
if core >= 0 and hasattr(os, "sched_setaffinity"):
    try:
        os.sched_setaffinity(0, {core})
    except OSError:
        pass
parent = os.getppid()
sys.stdout.write("spinning\\n")
sys.stdout.flush()
while os.getppid() == parent:  # an orphan (the bench was killed) stops by itself
    for _ in range(1_000_000):
        pass
"""


@dataclass
class BusyProcess:
    """The running competitor: its process, the core it is pinned to (-1: not pinned) and its session ("own":
    a session of its own, as a program started from another terminal has; "same": the bench's)."""

    process: subprocess.Popen
    core: int
    session: str

    def cpu_seconds(self) -> float | None:
        """CPU time the competitor has used so far (Linux /proc), or None where that cannot be read."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
        except (OSError, ValueError, IndexError):
            return None


def _default_busy_core() -> int:
    """The last core this process may run on (torch's first threads tend to land on the low ones)."""
    if hasattr(os, "sched_getaffinity"):
        return max(os.sched_getaffinity(0))
    return -1


@contextlib.contextmanager
def busy_core(core: int | None = None, session: str = "own") -> Iterator[BusyProcess]:
    """Run a process that keeps one core 100% busy for the duration of the block; it is killed on exit.

    core: the core to pin it to (default: the last one this process may use; -1: do not pin).
    session: "own" starts it in a session of its own, as any program started from another terminal, an ssh
    login or cron runs; "same" keeps it in this one, as a job started with `&` from the same shell. Where the
    kernel shares the CPU between sessions first (`runtime.sched_autogroup`), the two differ: beside a busy
    process of its own session, this session's processes get their fair share of the busy core too; beside
    one of another session, only the free core (results/cpu-busy-core.md)."""
    own = new_session(session)
    core = _default_busy_core() if core is None else core
    proc = subprocess.Popen([sys.executable, "-c", _BUSY_CODE, str(core)], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            start_new_session=own)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"spinning":  # it started and pinned itself
            raise RuntimeError(f"the busy process exited with code {proc.wait()} before spinning")
        yield BusyProcess(proc, core, session)
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# ---- beside other workers -------------------------------------------------------------------------------
# `ablate run --workers N` (or --workers-per-gpu N) runs N trials at once on one machine or GPU; they share its
# memory bus, caches and GPU, so one trial runs slower than it does alone. A companion is a separate process
# that trains the same network at the same batch size and precision, to be measured beside.
_COMPANION_CODE = """\
import sys
from resmasknet.bench import _companion_main
_companion_main(sys.argv[1:])
"""


def _build_companion(argv: Sequence[str]) -> Callable[[], None]:
    """A companion's training step, built from its command line: config, batch size, device, amp, threads."""
    from resmasknet.config import NetConfig

    config, batch_size, device, amp, threads = argv
    torch.set_num_threads(int(threads))
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training runs (resmasknet.train)
    net = ResMaskNet(NetConfig.from_json(config), seed=0).to(dev).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (int(batch_size), 48, 48), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, net.config.num_classes, (int(batch_size),), generator=gen).to(dev)
    step = _train_step(net, net.prepare_input(faces), labels, amp=amp == "1")
    if dev.type != "cuda":
        return step

    def synced() -> None:  # a timed window must end when the GPU's work does
        step()
        torch.cuda.synchronize(dev)

    return synced


def _companion_main(argv: Sequence[str]) -> None:
    """A companion's body: train on a fixed random batch until its parent is gone (or it is killed)."""
    parent = os.getppid()
    step = _build_companion(argv)
    step()
    sys.stdout.write("training\n")
    sys.stdout.flush()
    while os.getppid() == parent:
        step()


def _timed_companion_main(argv: Sequence[str]) -> None:
    """A measured companion: warm up, say "ready", then for each "go SECONDS" line on stdin train for that
    window (at least one step) and answer "STEPS ELAPSED" (seconds to the last step that finished); stops at
    "stop", at the end of its input, or when its parent is gone."""
    warmup, rest = int(argv[0]), argv[1:]
    step = _build_companion(rest)
    for _ in range(max(1, warmup)):
        step()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        word, _, arg = line.strip().partition(" ")
        if word != "go":
            break
        t0 = time.perf_counter()
        deadline, n, last = t0 + float(arg), 0, t0
        while True:  # every companion trains through the whole window, so each is measured beside the others
            step()
            n, last = n + 1, time.perf_counter()
            if last >= deadline:
                break
        sys.stdout.write(f"{n} {last - t0}\n")
        sys.stdout.flush()


@contextlib.contextmanager
def _companions(code: str, args: Sequence[str], n: int, threads: int, token: str,
                stdin: int | None = subprocess.DEVNULL, new_session: bool = False) -> Iterator[list[subprocess.Popen]]:
    """Start `n` processes running `code` with `args` (`threads` OpenMP threads each), each in a session of its
    own if `new_session`, and wait until each has printed `token`; they are killed on exit."""
    cmd = [sys.executable, "-c", code, *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs: list[subprocess.Popen] = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=stdin, env=env, text=True,
                                          start_new_session=new_session))
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != token:
                raise RuntimeError(f"a companion training process exited with code {p.wait()} before training "
                                   f"(its error is above)")
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
            for fh in (p.stdout, p.stdin):
                if fh is not None:
                    with contextlib.suppress(OSError):
                        fh.close()


def _companion_args(model: ResMaskNet, batch_size: int, dev: torch.device, amp: bool, threads: int) -> list[str]:
    return [model.config.to_json(), str(batch_size), str(dev), "1" if amp else "0", str(threads)]


@contextlib.contextmanager
def other_workers(model: ResMaskNet, n: int, *, batch_size: int, device: str | torch.device | None = None,
                  amp: bool = False, threads: int | None = None) -> Iterator[list[subprocess.Popen]]:
    """Run `n` separate processes that each train `model`'s network (batch `batch_size`, bf16 autocast if
    `amp`, `threads` torch threads each, default this process's count) for the duration of the block, as
    the other workers of `ablate run --workers n+1` would; the block starts once all of them train. They are
    killed on exit, and each stops by itself if this process dies."""
    threads = threads or torch.get_num_threads()
    args = _companion_args(model, batch_size, resolve_device(device), amp, threads)
    with _companions(_COMPANION_CODE, args, n, threads, "training") as procs:
        yield procs


_TIMED_COMPANION_CODE = """\
import sys
from resmasknet.bench import _timed_companion_main
_timed_companion_main(sys.argv[1:])
"""


class WorkerTeam:
    """`n` training processes measured together, as `ablate run --workers n` runs its trials: `img_s(seconds)`
    has all of them train through one window and returns the sum of their throughputs."""

    def __init__(self, procs: list[subprocess.Popen], batch_size: int):
        self.procs, self.batch_size = procs, batch_size

    def img_s(self, seconds: float) -> float:
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"go {seconds}\n")
            p.stdin.flush()
        total = 0.0
        for p in self.procs:
            assert p.stdout is not None
            answer = p.stdout.readline().split()
            if len(answer) != 2:
                raise RuntimeError(f"a measured training process exited with code {p.wait()} (its error is above)")
            total += self.batch_size * int(answer[0]) / float(answer[1])
        return total


@contextlib.contextmanager
def worker_team(model: ResMaskNet, n: int, *, batch_size: int, device: str | torch.device | None = None,
                amp: bool = False, threads: int = 1, warmup: int = 2, sessions: str = "own") -> Iterator[WorkerTeam]:
    """`n` separate training processes (`threads` torch threads each), warmed up and waiting to be measured
    together (`WorkerTeam.img_s`); killed on exit, and each stops by itself if this process dies. `sessions`:
    "own" starts each in a session of its own, as `ablate run --workers N` starts its workers by default;
    "same" keeps them in this one (`ablate run --worker-sessions same`)."""
    own = new_session(sessions, "sessions")
    args = [str(warmup), *_companion_args(model, batch_size, resolve_device(device), amp, threads)]
    with _companions(_TIMED_COMPANION_CODE, args, n, threads, "ready", stdin=subprocess.PIPE,
                     new_session=own) as procs:
        yield WorkerTeam(procs, batch_size)


def bench_contended(model: str | ResMaskNet, *, batch_size: int = 32, device: str | torch.device | None = None,
                    steps: int = 10, warmup: int = 2, seconds: float = 10.0, rounds: int = 2,
                    cpu_bf16: bool = False, overrides: dict[str, Any] | None = None,
                    core: int | None = None, workers: int = 1, busy_session: str = "own",
                    worker_sessions: str = "own") -> dict[str, Any]:
    """Training throughput idle and with one core kept busy by another process, measured in the same run.

    Each round measures idle, then contended (a fresh busy process each time), then, with more than one
    thread, one thread on the idle machine; the best of each counts. With `workers` > 1, `workers` separate
    processes of this process's thread count train at once, as `ablate run --workers N` runs a study's
    trials, each through the same `seconds`-long window (`steps` does not apply), and the throughputs are
    their sums (no one-thread measurement then), each in a session of its own or in this one
    (`worker_sessions`, see `worker_team`). `busy_session`: where the busy process runs (`busy_core`): "own", a
    session of its own, as another program's; "same", this one's.
    Keys: model, device, batch_size, threads, omp_wait_policy, train_idle_img_s, train_contended_img_s,
    contended_ratio (contended / idle), train_one_thread_img_s and one_thread_ratio (one thread idle, over idle;
    None with one thread or on CUDA), busy_core, busy_session, worker_sessions (None with one worker),
    sched_autogroup (`runtime.sched_autogroup`),
    busy_cpu_s (CPU seconds the competitor got while training
    was measured), busy_share (busy_cpu_s over the contended wall time: about 1.0 when it really ran)."""
    from resmasknet.registry import create_model

    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} must be >= 2 (BatchNorm needs two images to train)")
    if rounds < 1 or workers < 1:
        raise ValueError(f"rounds={rounds} and workers={workers} must be >= 1")
    new_session(busy_session, "busy_session")  # refuse a bad choice before anything is measured
    new_session(worker_sessions, "worker_sessions")
    dev = resolve_device(device)
    net = create_model(model, **(overrides or {})) if isinstance(model, str) else model
    cfg = net.config
    gen = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (batch_size, 48, 48), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen).to(dev)
    net.to(dev).to(memory_format=torch.channels_last)
    x = net.prepare_input(faces)
    amp = _use_bf16(dev, cpu_bf16)
    step = _train_step(net, x, labels, amp=amp)
    timing: dict[str, Any] = {"warmup": warmup, "steps": steps, "seconds": seconds}
    idle = contended = one_thread = 0.0
    busy_cpu, busy_wall, busy_core_used = 0.0, 0.0, -1
    cpu_known = True
    threads = torch.get_num_threads()
    with contextlib.ExitStack() as stack:
        if workers > 1:
            team = stack.enter_context(worker_team(net, workers, batch_size=batch_size, device=dev, amp=amp,
                                                   threads=threads, warmup=warmup, sessions=worker_sessions))

            def measure() -> float:
                return team.img_s(seconds)
        else:
            def measure() -> float:
                return batch_size / _timed(step, dev, **timing)

        for _ in range(rounds):
            idle = max(idle, measure())
            if dev.type == "cpu" and threads > 1 and workers == 1:
                torch.set_num_threads(1)
                try:
                    one_thread = max(one_thread, measure())
                finally:
                    torch.set_num_threads(threads)
            with busy_core(core, busy_session) as busy:
                busy_core_used = busy.core
                c0, t0 = busy.cpu_seconds(), time.perf_counter()
                contended = max(contended, measure())
                c1 = busy.cpu_seconds()
                busy_wall += time.perf_counter() - t0
                if c0 is None or c1 is None:
                    cpu_known = False
                else:
                    busy_cpu += c1 - c0
    return {
        "model": model if isinstance(model, str) else "custom", "device": str(dev), "batch_size": batch_size,
        "threads": threads, "workers": workers, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
        "bf16": amp, "rounds": rounds,
        "train_idle_img_s": idle, "train_contended_img_s": contended, "contended_ratio": contended / idle,
        "train_one_thread_img_s": one_thread or None, "one_thread_ratio": one_thread / idle if one_thread else None,
        "busy_core": busy_core_used, "busy_session": busy_session,
        "worker_sessions": worker_sessions if workers > 1 else None, "sched_autogroup": sched_autogroup(),
        "busy_cpu_s": busy_cpu if cpu_known else None,
        "busy_share": busy_cpu / busy_wall if cpu_known and busy_wall > 0 else None,
        "torch": torch.__version__,
    }


def format_contended(rows: Sequence[dict[str, Any]]) -> str:
    """A text table of `bench_contended` rows: idle and contended training img/s and their ratio."""
    head = ("model", "threads", "OMP_WAIT_POLICY", "idle img/s", "busy-core img/s", "ratio", "1 thread img/s",
            "1 thread / idle", "busy share")

    def opt(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    best = best_idle(rows)
    several = any(sum(r["model"] == m for r in rows) > 1 for m in best)
    teams = any(r.get("workers", 1) > 1 for r in rows)
    sessions = list(dict.fromkeys(r.get("busy_session", "same") for r in rows))
    both = len(sessions) > 1
    team_sessions = list(dict.fromkeys(r["worker_sessions"] for r in rows if r.get("worker_sessions")))
    cells = [[*head[:2], *(["workers"] if teams else []), *(["worker sessions"] if len(team_sessions) > 1 else []),
              *(["busy session"] if both else []), *head[2:]] + (["busy / best idle"] if several else [])] + [[
        r["model"], str(r["threads"]), *([str(r.get("workers", 1))] if teams else []),
        *([r.get("worker_sessions") or "-"] if len(team_sessions) > 1 else []),
        *([r.get("busy_session", "same")] if both else []), r["omp_wait_policy"],
        f"{r['train_idle_img_s']:.1f}",
        f"{r['train_contended_img_s']:.1f}", f"{r['contended_ratio']:.2f}", opt(r.get("train_one_thread_img_s"), ".1f"),
        opt(r.get("one_thread_ratio"), ".2f"), opt(r.get("busy_share"), ".2f")]
        + ([f"{r['train_contended_img_s'] / best[r['model']]:.2f}"] if several else []) for r in rows]
    lines = text_table(cells)
    if rows:
        r = rows[0]
        where = {"own": "in a session of its own (as another program's)", "same": "in the bench's session"}
        autogroup = {True: "on: the kernel shares the CPU between sessions first, so a busy process of another "
                           "session keeps its core and this session's processes share the other one",
                     False: "off for this session: the kernel shares the CPU between its processes one by one "
                            "(autogroup off, or this process in no autogroup, as in init's session)",
                     None: "unknown"}[r.get("sched_autogroup")]
        team_where = " or ".join({"own": "each in a session of its own (as `ablate run` starts them)",
                                  "same": "in the bench's session (`ablate run --worker-sessions same`)"}[x]
                                 for x in team_sessions) + (" (worker sessions: own or same)"
                                                            if len(team_sessions) > 1 else "")
        lines.append(f"\ndevice {r['device']}, batch {r['batch_size']}, torch {r['torch']}. busy-core: another "
                     f"process spins on core {r['busy_core']} while training is measured, "
                     + (" or ".join(where[x] for x in sessions) + " (busy session: own or same)" if both
                        else where[sessions[0]])
                     + f"; scheduler autogroup {autogroup}; ratio = busy-core / "
                     "idle; 1 thread: one thread on the idle machine, what one free core gives (a busy core "
                     "leaves about that: each parallel region waits for the thread that shares its core); busy "
                     "share: the share of one core the busy process got meanwhile."
                     + (" workers: that many training processes at once, as `ablate run --workers N` runs a "
                        f"study's trials, {team_where}; their img/s summed." if teams else "")
                     + (" busy / best idle: busy-core img/s over the best idle img/s of that model at any "
                        "thread count measured here." if several else ""))
    return "\n".join(lines)


def best_idle(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each model's best idle training img/s over the `bench_contended` rows (e.g. several thread counts)."""
    best: dict[str, float] = {}
    for r in rows:
        best[r["model"]] = max(best.get(r["model"], 0.0), r["train_idle_img_s"])
    return best
