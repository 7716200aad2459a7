"""Where and how code runs: device choice, CPU features, thread behaviour and atomic writes, in one place
for the whole project.

Atomic writes go to a temporary sibling and are renamed onto the destination only when complete, so an
interrupted or failed write (disk full, read-only folder, a kill) never leaves a file or folder that looks
finished. A write that fails for lack of space or permission raises `StorageError`, whose message is one
line naming the path and what to do.

Example:
    >>> configure_threads()                             # first, before torch loads: OMP_WAIT_POLICY=PASSIVE
    >>> dev = resolve_device(None)                      # cuda when available, else cpu
    >>> cpu_has_bf16()                                  # bf16 units (AVX512-BF16 / AMX-BF16 / Arm BF16)?
    >>> atomic_write_text("runs/x/result.json", "{}")   # never half-written
    >>> with atomic_dir("reports/quickstart") as tmp:   # a whole folder, renamed into place at the end
    ...     (tmp / "index.html").write_text("...")
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["BF16_CPU_FLAGS", "StorageError", "atomic_dir", "atomic_write", "atomic_write_json", "atomic_write_text",
           "bf16_support", "busy_machine_note", "configure_threads", "cpu_bf16_support", "cpu_flags", "cpu_has_bf16",
           "describe_device", "new_session", "others_busy_cores", "resolve_device", "sched_autogroup", "storage_error",
           "usable_cores", "use_bf16_autocast"]

log = logging.getLogger(__name__)


class StorageError(OSError):
    """A write failed for a reason outside the program (no space, read-only, no permission)."""


_HINTS = {
    errno.ENOSPC: "no space left on the device; free some space and run the command again",
    errno.EDQUOT: "disk quota exceeded; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose a writable folder (--out) and run again",
    errno.EACCES: "permission denied; choose a writable folder (--out) or fix its permissions",
    errno.EPERM: "operation not permitted; choose a writable folder (--out) or fix its permissions",
}


def storage_error(exc: BaseException, path: str | os.PathLike, option: str = "--out") -> StorageError | None:
    """The one-line `StorageError` for an OSError caused by the storage (space, read-only, permission),
    or None for any other error. Also recognises torch's serializer failures, which hide the errno. `option`:
    the command-line option that chooses the folder, named in the hint (`--report-dir` for a report)."""
    code = getattr(exc, "errno", None)
    if code in _HINTS:
        hint = _HINTS[code] if option == "--out" else _HINTS[code].replace("(--out)", f"({option})")
        return StorageError(code, f"cannot write {os.fspath(path)}: {hint}", os.fspath(path))
    text = str(exc)
    if "unexpected pos" in text or "file write failed" in text or "No space left" in text:
        return StorageError(errno.ENOSPC, f"cannot write {os.fspath(path)}: {_HINTS[errno.ENOSPC]}", os.fspath(path))
    return None


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call `write(tmp_path)` for a temporary sibling of `path`, then rename it onto `path`."""
    dest = Path(path)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", dir=dest.parent)
        os.close(fd)
    except OSError as exc:
        raise (storage_error(exc, dest) or exc) from exc
    try:
        write(tmp)
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = storage_error(exc, dest) if isinstance(exc, (OSError, RuntimeError)) else None
        if err is not None:
            raise err from exc
        raise
    return dest


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, option: str = "--out") -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces `dest` (the old one is removed). `option`: the
    command-line option that chooses `dest`, named when it cannot be written."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    except OSError as exc:
        raise (storage_error(exc, dest, option) or exc) from exc
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{int(time.time() * 1000)}")
            dest.rename(old)
        tmp.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        err = storage_error(exc, dest, option) if isinstance(exc, OSError) and not isinstance(exc, StorageError) \
            else None
        if err is not None:
            raise err from exc
        raise


def resolve_device(device: Any = None) -> Any:
    """None -> $ABLATE_DEVICE when set (e.g. "cpu" on a machine with a GPU), else CUDA when available, else CPU;
    a name ("cpu", "cuda:1") is checked up front: CUDA present, and a GPU of that index."""
    import torch

    if device is None:
        chosen = os.environ.get("ABLATE_DEVICE")
        if not chosen:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return resolve_device(chosen)
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"ABLATE_DEVICE={chosen}: {exc}") from None
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} GPU(s): cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


# ---- CPU features --------------------------------------------------------------------------------------
# CPU flags (as /proc/cpuinfo spells them) that mean bf16 arithmetic units: x86 AVX512-BF16 and AMX-BF16, Arm
# BF16. Without them bf16 autocast is emulated: 12x slower training measured on a Zen 3 EPYC (AVX2 only).
# torch exposes no public test for them: `torch.backends.cpu.get_cpu_capability()` says AVX512 on CPUs with
# and without bf16 units, and oneDNN's own check (`torch.ops.mkldnn._is_mkldnn_bf16_supported`) accepts plain
# AVX512, so the kernel's flags decide.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str | os.PathLike | None = None) -> frozenset[str] | None:
    """The CPU feature flags the kernel reports (x86 `flags`, Arm `Features`) in `cpuinfo` (default
    /proc/cpuinfo), or None when unreadable."""
    cpuinfo = CPUINFO if cpuinfo is None else cpuinfo
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return frozenset(flags)


def describe_device(device: Any = None) -> str:
    """One line naming the hardware behind `device`: "cuda:0 (NVIDIA H200, 139.7 GiB)" or
    "cpu (AMD EPYC family 25 model 1, 2 threads, AVX2)"; the line trial records and `ablate doctor` keep."""
    import torch

    dev = resolve_device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{dev} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    model = family = number = ""
    with contextlib.suppress(OSError):
        for line in Path(CPUINFO).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key == "cpu family" and not family:
                family = value.strip()
            elif key == "model" and not number:
                number = value.strip()
    name = model or "unknown CPU"
    if family and number:
        name += f" family {family} model {number}"
    capability = ""
    with contextlib.suppress(Exception):
        capability = ", " + torch.backends.cpu.get_cpu_capability()
    return f"{dev} ({name}, {torch.get_num_threads()} threads{capability})"


def cpu_bf16_support(cpuinfo: str | os.PathLike | None = None) -> tuple[bool, str]:
    """(has bf16 units, a short reason naming the flag found or the flags missing and torch's capability)."""
    flags = cpu_flags(cpuinfo)
    if flags is None:
        return False, f"cannot read {os.fspath(CPUINFO if cpuinfo is None else cpuinfo)} to look for bf16 units"
    found = [f for f in BF16_CPU_FLAGS if f in flags]
    if found:
        return True, f"CPU flag {found[0]}"
    capability = "unknown"
    with contextlib.suppress(Exception):
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    return False, f"no {'/'.join(BF16_CPU_FLAGS)} in the CPU flags (torch CPU capability {capability})"


def bf16_support(device: Any) -> tuple[bool, str]:
    """(bf16 autocast runs natively on `device`, a short reason). CUDA: a GPU of compute capability 8.0 or
    newer (Ampere on); older ones only emulate bf16, slowly, though `torch.cuda.is_bf16_supported()` says yes
    by default. CPU: `cpu_bf16_support`."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return cpu_bf16_support()
    major, minor = torch.cuda.get_device_capability(dev)
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return True, f"GPU compute capability {major}.{minor}"
    return False, f"GPU compute capability {major}.{minor} has no native bf16 (8.0, Ampere, or newer)"


def use_bf16_autocast(device: Any, cpu_asked: bool, doing: str = "training") -> bool:
    """Whether to run under bf16 autocast on `device`: on CUDA where the GPU has native bf16; on a CPU when
    asked for (`--bf16-cpu`, `train.cpu_bf16`) and the CPU has bf16 units. Where it was wanted but cannot be
    had, one logged line says so and `doing` ("training", "measuring") runs in fp32."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" and not (cpu_asked and dev.type == "cpu"):
        return False
    ok, why = bf16_support(dev)
    if not ok:
        log.warning("bf16 autocast asked for on %s, but %s: %s in fp32", dev,
                    why if dev.type == "cuda" else f"this CPU has no bf16 units ({why})", doing)
    return ok


def cpu_has_bf16(cpuinfo: str | os.PathLike | None = None) -> bool:
    """Whether this CPU has bf16 arithmetic units, so bf16 autocast on CPU speeds training up."""
    return cpu_bf16_support(cpuinfo)[0]


# ---- threads ------------------------------------------------------------------------------------------
_warned_late = False


def configure_threads() -> str:
    """Make PyTorch's OpenMP threads sleep rather than spin while they wait: OMP_WAIT_POLICY=PASSIVE, unless
    the user set OMP_WAIT_POLICY. Returns the policy in effect.

    Spinning threads wait on each other at every parallel region, so one core busy with another process
    cut `resmasknet_cpu` training from 56.7 to 18.2 img/s; PASSIVE kept 41.7. OpenMP reads the variable when
    torch loads, so call this before anything imports torch (the `ablate` command does, first thing); called
    later it still reaches child processes, and it logs one warning that this process keeps its spinning
    threads."""
    global _warned_late
    user = os.environ.get("OMP_WAIT_POLICY")
    if user:
        return user
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules and not _warned_late:
        _warned_late = True
        # a logged warning, not warnings.warn: test sessions (torch loaded first) would repeat it everywhere
        log.warning("configure_threads(): torch was imported before OMP_WAIT_POLICY=PASSIVE was set, so this "
                    "process's OpenMP threads still spin-wait (only child processes get PASSIVE); call it "
                    "before importing torch")
    return "PASSIVE"


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"


def usable_cores(cpu_max: str | os.PathLike = CGROUP_CPU_MAX) -> int:
    """The cores this process may use: those its CPU affinity allows (a cluster job's share of a large node),
    fewer where a cgroup v2 quota (`cpu.max`, "QUOTA PERIOD") caps it below that; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period) + 0.5)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


PROC_STAT = "/proc/stat"
SCHED_AUTOGROUP = "/proc/sys/kernel/sched_autogroup_enabled"
SELF_AUTOGROUP = "/proc/self/autogroup"


def sched_autogroup(path: str | os.PathLike = SCHED_AUTOGROUP,
                    task: str | os.PathLike = SELF_AUTOGROUP) -> bool | None:
    """Whether Linux shares the CPU between sessions before it shares it between their processes, for this
    process (the kernel's autogroup, `kernel.sched_autogroup_enabled`); None where that cannot be read (not
    Linux, or no autogroup in the kernel). When it is on, a program started in another session (another
    terminal, an ssh login, cron) gets as much CPU as all of this session's processes together: beside one
    that keeps a core busy, the processes of one session share the other core, however many they are.
    A process of the first session (init's, never moved by `setsid`, as in many containers and CI jobs) is in
    the kernel's default group, which is no autogroup: `task` (/proc/self/autogroup) is empty, and this
    session's processes are shared out one by one beside other sessions' groups, so this says False. (A
    process in a cpu cgroup of its own, a systemd service or a container with the cpu controller, is shared
    out by cgroup, to the same effect as autogroup.)"""
    try:
        with open(path) as fh:
            enabled = fh.read().strip() != "0"
    except (OSError, ValueError):
        return None
    if enabled:
        try:
            with open(task) as fh:
                return bool(fh.read().strip())
        except OSError:
            pass
    return enabled


SESSIONS = ("own", "same")


def new_session(where: str, name: str = "session") -> bool:
    """Whether a child process started for `where` ("own": a session of its own, as a program from another
    terminal runs; "same": this process's session) gets `start_new_session` (only on POSIX). Where the kernel
    shares the CPU between sessions first (`sched_autogroup`) the two differ; a bad `where` raises ValueError
    naming `name`."""
    if where not in SESSIONS:
        raise ValueError(f"{name}={where!r}: one of {', '.join(SESSIONS)}")
    return where == "own" and os.name == "posix"


def _cpu_busy_seconds(stat: str | os.PathLike) -> float | None:
    """Seconds all CPUs have spent not idle since boot (the aggregate `cpu` line of /proc/stat), or None."""
    try:
        with open(stat) as f:
            fields = f.readline().split()
        ticks = [int(v) for v in fields[1:]]
    except (OSError, ValueError):
        return None
    if not fields or fields[0] != "cpu" or len(ticks) < 5:
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user and nice]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def others_busy_cores(seconds: float = 0.3, stat: str | os.PathLike = PROC_STAT) -> float | None:
    """How many cores other processes keep busy, measured over `seconds`: all CPUs' busy time (from
    /proc/stat) less this process's own CPU time, over the wall time. About 1.0 when another program spins on
    one core; None where /proc/stat cannot be read (not Linux)."""
    b0, own0, t0 = _cpu_busy_seconds(stat), time.process_time(), time.perf_counter()
    if b0 is None:
        return None
    time.sleep(seconds)
    b1, own1, t1 = _cpu_busy_seconds(stat), time.process_time(), time.perf_counter()
    if b1 is None:
        return None
    return max(0.0, (b1 - b0) - (own1 - own0)) / (t1 - t0)


def busy_machine_note(command: str, threads: int, purpose: str = "train", seconds: float = 0.3) -> str | None:
    """One line for `command`, about to train (`purpose` "train"), benchmark ("bench") or run a study's cells
    ("study") on `threads` CPU threads (each), when other processes keep half a core or more busy; None when
    they do not, or where it cannot be measured.

    A benchmark taken now is not the idle machine's, and a study's cells take longer than its projection.
    Training on several threads waits at every parallel region for the thread that shares a busy core
    (README, "Training and evaluation"), so one thread can be faster; one thread is slowed only when no core
    is left free for it."""
    advice = {"bench": "what is measured now is not the idle machine's speed",
              "study": "its cells will train slower than `ablate bench --study` projects"}
    if purpose not in (*advice, "train"):
        raise ValueError(f"purpose={purpose!r}: one of train, bench, study")
    others = others_busy_cores(seconds)
    if others is None or others < 0.5:
        return None
    cores = os.cpu_count() or 1
    if purpose == "train":
        if threads > 1:
            advice["train"] = (f"`ablate bench --contended --threads 1 {threads}` says whether --threads 1 trains "
                               f"faster here")
        elif others > cores - 0.5:
            advice["train"] = "this run shares its core with them and trains slower"
        else:
            return None
    return f"{command}: other processes keep about {others:.1f} of {cores} cores busy; {advice[purpose]}"
