"""Where and how code runs: device choice, CPU features, thread behaviour and atomic writes, in one place
for the whole project.

Atomic writes go to a temporary sibling and are renamed onto the destination only when complete, so an
interrupted or failed write (disk full, read-only folder, a kill) never leaves a file or folder that looks
finished. A write that fails for lack of space or permission raises `StorageError`, whose message is one
line naming the path and what to do.

Example:
    >>> configure_threads()                             # first, before torch loads: OMP_WAIT_POLICY=PASSIVE
    >>> dev = resolve_device(None)                      # cuda when available, else cpu
    >>> check_device("cuda:1")                          # "cuda:1", or DeviceError: one line, why and what to do
    >>> precision_for("cuda:1")                         # "bf16" on Ampere or newer, else "fp32": the one decision
    >>> with autocast("cuda:1", "bf16"): ...            # bf16 autocast, or fp32 for "fp32"
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
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["BF16_CPU_FLAGS", "CUDA_BUILDS", "MIN_TORCH", "PRECISIONS", "DeviceError", "StorageError", "arch_supported",
           "atomic_dir", "atomic_write", "atomic_write_json", "atomic_write_text", "autocast", "bf16_support",
           "busy_machine_note", "check_device", "check_torch", "configure_threads", "cpu_bf16_support", "cpu_flags",
           "cpu_has_bf16", "cuda_build_for", "cuda_unavailable_reason", "describe_device", "gpu_capability",
           "new_session", "nvidia_driver", "others_busy_cores", "precision_for", "resolve_device", "sched_autogroup",
           "storage_error", "usable_cores", "use_bf16_autocast", "use_device"]

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


class DeviceError(ValueError):
    """A device that cannot be used here, or a PyTorch this toolkit does not support: one line saying why and
    what to do. The `ablate` command ends with exit status 2 on it, before anything is created."""


def resolve_device(device: Any = None) -> Any:
    """None -> $ABLATE_DEVICE when set (e.g. "cpu" on a machine with a GPU), else CUDA when available, else CPU;
    a name ("cpu", "cuda:1") is checked up front: CUDA present, and a GPU of that index. A device that cannot be
    had raises `DeviceError` (a ValueError); without CUDA its line says why (`cuda_unavailable_reason`)."""
    import torch

    if device is None:
        chosen = os.environ.get("ABLATE_DEVICE")
        if not chosen:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            return resolve_device(chosen)
        except (ValueError, RuntimeError) as exc:
            raise DeviceError(f"ABLATE_DEVICE={chosen}: {exc}") from None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DeviceError(f"device {str(device)!r} is not a device name: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(cuda_unavailable_reason(str(device)))
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r} asked for, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s): cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return dev


def check_device(spec: Any = None) -> str:
    """The device a command will run on, checked before the command creates anything: `spec` ("auto" or None:
    `resolve_device(None)`; "cpu", "cuda", "cuda:1") resolved, CUDA present, the GPU there (every visible GPU for
    a bare "cuda", which a study spreads its workers over), and each GPU's architecture one this PyTorch build
    has kernels for. Returns the device's name ("cpu", "cuda", "cuda:1"); raises `DeviceError`, one line naming
    the cause and the fix (e.g. the PyTorch build to install for the driver), which `ablate` turns into exit 2."""
    import torch

    auto = spec is None or str(spec) in ("", "auto")
    dev = resolve_device(None if auto else spec)
    if dev.type == "cuda":
        indices = [dev.index] if dev.index is not None else list(range(torch.cuda.device_count()))
        for index in indices:
            _check_arch(index)
    return str(dev)


def use_device(device: Any) -> None:
    """Make `device`'s GPU the current CUDA device of this process (a worker given cuda:N): what torch places on
    "the current device" (pinned host memory, a bare "cuda") then goes there, not to GPU 0. A no-op elsewhere."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev.index)


# ---- PyTorch, the NVIDIA driver and the GPU's architecture ----------------------------------------------------
MIN_TORCH = (2, 4)  # the oldest PyTorch this toolkit supports: pyproject.toml's torch>=2.4
PYTORCH_INDEX = "https://download.pytorch.org/whl"
# The CUDA builds of PyTorch 2.14 (the release the Makefile pins) on download.pytorch.org: (index, the CUDA
# version it needs from the driver, the oldest GPU it has kernels for), from PyTorch's CUDA support matrix for
# 2.14: cu126 is the "legacy" build, the only one that still holds Maxwell, Pascal and Volta (5.0 to 7.0);
# cu130 and cu132 (PyPI's default) start at Turing (7.5).
CUDA_BUILDS = (("cu126", (12, 6), (5, 0)), ("cu130", (13, 0), (7, 5)), ("cu132", (13, 2), (7, 5)))
GENERATIONS = {5: "Maxwell", 6: "Pascal", 7: "Volta", 8: "Ampere", 9: "Hopper", 10: "Blackwell", 12: "Blackwell"}
NVIDIA_SMI_TIMEOUT_S = 5.0


def _version_tuple(text: str) -> tuple[int, int] | None:
    m = re.match(r"\s*(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def generation(capability: tuple[int, int]) -> str:
    """The GPU generation of a compute capability: (7, 5) -> "Turing", (8, 9) -> "Ada", (6, 0) -> "Pascal"."""
    if capability == (7, 5):
        return "Turing"
    if capability == (8, 9):
        return "Ada"
    return GENERATIONS.get(capability[0], f"compute capability {capability[0]}.{capability[1]}")


def check_torch(version: str | None = None) -> str:
    """This Python's PyTorch version (`torch.__version__`, or `version`); `DeviceError` in one line when torch is
    missing or older than MIN_TORCH (a GPU node's own PyTorch, as `make gpu-check` uses without network, may be)."""
    if version is None:
        try:
            import torch
        except ImportError as exc:
            raise DeviceError(f"PyTorch is not installed for {sys.executable} ({exc}); install torch>="
                              f"{'.'.join(map(str, MIN_TORCH))} (pip install torch)") from None
        version = str(torch.__version__)
    found = _version_tuple(version)
    if found is None or found < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise DeviceError(f"PyTorch {version} is older than {need}, the oldest this toolkit supports: install "
                          f"torch>={need} for {sys.executable} (pip install 'torch>={need}'; on a node without "
                          f"network, from a wheelhouse built where there is one)")
    return version


def nvidia_driver(timeout: float = NVIDIA_SMI_TIMEOUT_S) -> dict[str, Any] | None:
    """What `nvidia-smi` says about the NVIDIA driver, or None where there is no nvidia-smi on PATH:
    {"driver": "535.104.05", "cuda": (12, 2) (the newest CUDA the driver runs), "gpus": [(name, capability or
    None)], "error": one line when nvidia-smi fails (no driver loaded, a timeout), else None}."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None

    def run(*args: str) -> tuple[str | None, str]:
        try:
            proc = subprocess.run([smi, *args], capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"{type(exc).__name__}: {exc}"
        said = " ".join(f"{proc.stdout or ''} {proc.stderr or ''}".split())[:200]
        return (proc.stdout if proc.returncode == 0 else None), said or f"exit status {proc.returncode}"

    info: dict[str, Any] = {"driver": None, "cuda": None, "gpus": [], "error": None}
    out, said = run("--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader")
    if out is None and "compute_cap" in said:  # drivers before 510 know no compute_cap field
        out, said = run("--query-gpu=name,driver_version", "--format=csv,noheader")
    if out is None:
        info["error"] = said
        return info
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 2:
            cap = _version_tuple(parts[2]) if len(parts) > 2 else None
            info["gpus"].append((parts[0], cap))
            info["driver"] = info["driver"] or parts[1]
    plain, _ = run()
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", plain or "")
    if m:
        info["cuda"] = (int(m.group(1)), int(m.group(2)))
    return info


def cuda_build_for(driver_cuda: tuple[int, int] | None, capability: tuple[int, int] | None = None) -> str | None:
    """The CUDA build of PyTorch (an index of CUDA_BUILDS, e.g. "cu126") for a driver that runs CUDA up to
    `driver_cuda` and a GPU of `capability` (None: any): the newest build the driver runs and that has kernels
    for the GPU; else one of the driver's CUDA major version (which runs through CUDA's minor version
    compatibility); None when no build fits (the driver is too old, or the GPU older than every build)."""
    fits = [(need, tag) for tag, need, oldest in CUDA_BUILDS if capability is None or capability >= oldest]
    if driver_cuda is None:
        return max(fits)[1] if fits else None
    within = [f for f in fits if f[0] <= driver_cuda]
    if within:
        return max(within)[1]
    same_major = [f for f in fits if f[0][0] == driver_cuda[0]]
    return min(same_major)[1] if same_major else None


def _pip_line(tag: str) -> str:
    import torch

    version = str(torch.__version__).split("+")[0]
    return f"pip install --force-reinstall torch=={version} torchvision --index-url {PYTORCH_INDEX}/{tag}"


def _cuda_text(v: tuple[int, int] | None) -> str:
    return f"{v[0]}.{v[1]}" if v else "?"


def cuda_unavailable_reason(spec: str) -> str:
    """One line for a CUDA device asked for where `torch.cuda.is_available()` says no: which PyTorch build is
    installed (`torch.version.cuda`: CPU-only, or the CUDA it was built for), what the NVIDIA driver supports
    (`nvidia-smi`, when there is one) and what to do: install the build that matches the driver, install or
    repair the driver, or use the CPU."""
    import torch

    head = f"device {spec!r} asked for, but CUDA is not available here"
    version = str(torch.__version__)
    built = _version_tuple(torch.version.cuda or "")
    drv = nvidia_driver()
    if drv is not None and drv["error"]:
        build = f"PyTorch {version} ({'CUDA ' + _cuda_text(built) if built else 'a CPU-only build'})"
        return (f"{head}: {build}; nvidia-smi fails ({drv['error']}), so the NVIDIA driver is not loaded or broken: "
                f"reinstall it or reboot, else use --device cpu")
    if drv is None:
        if built is None:
            return f"{head} (PyTorch {version} is a CPU-only build and no NVIDIA driver was found); use --device cpu"
        return (f"{head}: PyTorch {version} is built for CUDA {_cuda_text(built)}, but no NVIDIA driver was found "
                f"(no nvidia-smi on PATH); on a machine with an NVIDIA GPU install its driver, else use --device cpu")
    caps = [c for _, c in drv["gpus"] if c is not None]
    oldest = min(caps) if caps else None
    tag = cuda_build_for(drv["cuda"], oldest)
    gpus = ", ".join(dict.fromkeys(n for n, _ in drv["gpus"])) or "no GPU listed"
    driver = f"the NVIDIA driver {drv['driver'] or '?'} ({gpus}) supports CUDA up to {_cuda_text(drv['cuda'])}"
    fix = (f"install the PyTorch build for it: {_pip_line(tag)}" if tag else
           f"no CUDA build of PyTorch {version} runs on it: update the NVIDIA driver")
    if built is None:
        return f"{head}: PyTorch {version} is a CPU-only build, but {driver}; {fix}"
    if drv["cuda"] is not None and built > drv["cuda"]:
        return (f"{head}: PyTorch {version} is built for CUDA {_cuda_text(built)}, but {driver}; {fix}"
                + (" (or update the driver)" if tag else ""))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r} hides GPUs" if visible is not None else ""
    return (f"{head}: PyTorch {version} is built for CUDA {_cuda_text(built)} and {driver}, yet no GPU can be "
            f"opened{hidden}; check that nvidia-smi lists the GPU and that this process may use it, else use "
            f"--device cpu")


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a PyTorch build with `arch_list` (`torch.cuda.get_arch_list()`: "sm_75", "compute_120", ...) runs
    on a GPU of `capability`: a kernel of the same major version and an equal or lower minor one (sm_60 serves a
    6.1), or PTX of an equal or lower version, which the driver compiles. A list with no CUDA architecture in it
    (empty: unknown; a ROCm build's gfx names) counts as yes."""
    cuda_archs = [m for m in (re.fullmatch(r"(sm|compute)_(\d+?)(\d)[a-z]?", a) for a in arch_list) if m]
    if not cuda_archs:
        return True
    for m in cuda_archs:
        built = (int(m.group(2)), int(m.group(3)))
        if m.group(1) == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if m.group(1) == "compute" and built <= capability:
            return True
    return False


def _check_arch(index: int) -> None:
    """`DeviceError` when GPU `index` is one this PyTorch build has no kernels for (a P100 under a cu130 build:
    "no kernel image is available" at the first convolution)."""
    import torch

    capability = gpu_capability(index)
    arch_list = list(torch.cuda.get_arch_list())
    if arch_supported(capability, arch_list):
        return
    name = torch.cuda.get_device_name(index)
    cap = f"{capability[0]}.{capability[1]}"
    built = [a for a in arch_list if a.startswith("sm_")] or arch_list
    drv = nvidia_driver()
    tag = cuda_build_for(drv["cuda"] if drv and not drv["error"] else None, capability)
    fix = (f"install a build with {generation(capability)} kernels: {_pip_line(tag)}" if tag else
           "no CUDA build of this PyTorch has kernels for it: use --device cpu")
    raise DeviceError(f"cuda:{index} ({name}, compute capability {cap}, {generation(capability)}) cannot run "
                      f"PyTorch {torch.__version__}, built for {built[0]} to {built[-1]}; {fix}")


def gpu_capability(device: Any) -> tuple[int, int]:
    """The compute capability of `device`'s own GPU (an index, "cuda:1"): `torch.cuda.get_device_capability`
    of that index, never of the current device (a worker on cuda:1 of a node with mixed GPUs)."""
    import torch

    index = device if isinstance(device, int) else torch.device(device).index
    major, minor = torch.cuda.get_device_capability(index)
    return int(major), int(minor)


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


def cpu_identity(cpuinfo: str | os.PathLike | None = None) -> dict[str, str | None]:
    """The first CPU's `name` (model name), `family` and `model` (x86) as `cpuinfo` (default /proc/cpuinfo)
    reports them; None for what it does not say or when it cannot be read."""
    out: dict[str, str | None] = {"name": None, "family": None, "model": None}
    keys = {"model name": "name", "cpu family": "family", "model": "model"}
    with contextlib.suppress(OSError):
        for line in Path(CPUINFO if cpuinfo is None else cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            field = keys.get(key.strip())
            if field and out[field] is None:
                out[field] = value.strip()
    return out


def describe_device(device: Any = None) -> str:
    """One line naming the hardware behind `device`: "cuda:0 (NVIDIA H200, 139.7 GiB)" or
    "cpu (AMD EPYC family 25 model 1, 2 threads, AVX2)"; the line trial records and `ablate doctor` keep."""
    import torch

    dev = resolve_device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return f"{dev} ({props.name}, {props.total_memory / 2**30:.1f} GiB)"
    cpu = cpu_identity()
    name = cpu["name"] or "unknown CPU"
    if cpu["family"] and cpu["model"]:
        name += f" family {cpu['family']} model {cpu['model']}"
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
    newer (Ampere on), read from that GPU (`gpu_capability`); older ones only emulate bf16, slowly or not at all
    in cuDNN, though `torch.cuda.is_bf16_supported()` says yes by default. CPU: `cpu_bf16_support`."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return cpu_bf16_support()
    major, minor = gpu_capability(dev)
    if (major, minor) >= (8, 0):
        return True, f"GPU compute capability {major}.{minor}"
    return False, f"GPU compute capability {major}.{minor} has no native bf16 (8.0, Ampere, or newer)"


PRECISIONS = ("bf16", "fp32")


def precision_for(device: Any, cpu_bf16: bool = False, doing: str | None = None) -> str:
    """The one precision decision of the toolkit: "bf16" (bf16 autocast) or "fp32" for work on `device`.

    CUDA: "bf16" where that GPU (its own index) has native bf16, compute capability 8.0 or newer (Ampere on);
    "fp32" on older ones (Pascal, Volta, Turing: a P100, V100 or T4). CPU: "fp32", or "bf16" when asked for
    (`cpu_bf16`: `--bf16-cpu`, `train.cpu_bf16`) and the CPU has bf16 units. Training, validation, evaluation
    (with TTA), latency, the bench and the cost projection all run what this says; runs record it. `doing`
    ("training", "measuring"): where bf16 cannot be had there, one logged line says so and that `doing` runs in
    fp32; None logs nothing."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda" and not (cpu_bf16 and dev.type == "cpu"):
        return "fp32"
    ok, why = bf16_support(dev)
    if not ok and doing:
        log.warning("bf16 autocast asked for on %s, but %s: %s in fp32", dev,
                    why if dev.type == "cuda" else f"this CPU has no bf16 units ({why})", doing)
    return "bf16" if ok else "fp32"


def autocast(device: Any, precision: str) -> Any:
    """The autocast context for `precision` (`precision_for`) on `device`'s type: bf16 autocast for "bf16", a
    disabled one (fp32) for "fp32"."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: one of {', '.join(PRECISIONS)}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")


def use_bf16_autocast(device: Any, cpu_asked: bool, doing: str = "training") -> bool:
    """Whether to run under bf16 autocast on `device`: `precision_for(device, cpu_asked, doing) == "bf16"`."""
    return precision_for(device, cpu_asked, doing) == "bf16"


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
    (docs/performance.md, results/cpu-busy-core.md), so one thread can be faster; one thread is slowed only when no core
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
