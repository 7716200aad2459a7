"""Throughput and peak memory of a network: training step, evaluation, and the augmented data pipeline.

Each is measured the way `resmasknet.train` runs it (channels_last, `torch.inference_mode`, bf16 autocast
on CUDA) and, for the network, also the "plain" way the authors' code runs it (contiguous memory format,
`torch.no_grad`, fp32), so the speed-up is visible. Peak memory: `torch.cuda.max_memory_allocated` on
CUDA; on CPU the growth of the process's resident-set high-water mark during the phase (reset per phase
through /proc/self/clear_refs where Linux allows, else `resource.getrusage`, which only ever rises: a 0
then means "no more than an earlier phase").

Example:
    >>> rows = bench(["resnet_cpu", "resmasknet_cpu"], batch_size=32)
    >>> print(format_table(rows))
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from resmasknet.augment import augment_batch
from resmasknet.evaluate import resolve_device
from resmasknet.model import ResMaskNet, count_parameters

__all__ = ["bench", "bench_model", "format_table"]


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


def bench_model(model: str | ResMaskNet, *, batch_size: int = 32, device: str | torch.device | None = None,
                steps: int = 10, warmup: int = 2, seconds: float = 10.0, plain: bool = True, rounds: int = 2,
                cpu_bf16: bool = False, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of measurements for a preset name (built with `overrides`) or a model.

    Keys: model, device, batch_size, params, input, train_img_s / eval_img_s / data_img_s (optimised),
    train_plain_img_s / eval_plain_img_s and the speed-ups (when plain=True), *_peak_mb.
    cpu_bf16: the optimised path uses bf16 autocast on CPU too (it always does on CUDA).
    rounds: each measurement is repeated this many times, alternating which path goes first; the best counts."""
    from resmasknet.registry import create_model

    if batch_size < 2:
        raise ValueError(f"batch_size={batch_size} must be >= 2 (BatchNorm needs two images to train)")
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be >= 1")
    dev = resolve_device(device)
    name = model if isinstance(model, str) else "custom"
    net = create_model(model, **(overrides or {})) if isinstance(model, str) else model
    cfg = net.config
    gen = torch.Generator().manual_seed(0)
    pool = torch.randint(0, 256, (max(8 * batch_size, 256), 48, 48), dtype=torch.uint8, generator=gen).to(dev)
    labels = torch.randint(0, cfg.num_classes, (batch_size,), generator=gen).to(dev)
    row: dict[str, Any] = {"model": name, "device": str(dev), "batch_size": batch_size,
                           "params": count_parameters(net),
                           "input": f"{cfg.input_size}x{cfg.input_size}x{cfg.in_chans}"}
    timing: dict[str, Any] = {"warmup": warmup, "steps": steps, "seconds": seconds}
    amp = dev.type == "cuda" or cpu_bf16

    # data pipeline: index a device-resident uint8 pool, prepare_input, flip/rotate
    net.to(dev).to(memory_format=torch.channels_last)
    aug_gen = torch.Generator().manual_seed(1)

    def data_step() -> torch.Tensor:
        idx = torch.randint(0, pool.shape[0], (batch_size,), generator=gen).to(dev)
        return augment_batch(net, pool[idx], aug_gen)

    with torch.inference_mode():
        s = _timed(data_step, dev, **timing)
    row["data_batches_s"] = 1 / s
    row["data_img_s"] = batch_size / s

    x_cl = net.prepare_input(pool[:batch_size])  # channels_last
    x_plain = x_cl.contiguous()

    def eval_phase(x: torch.Tensor, optimised: bool) -> tuple[float, float]:
        net.eval()
        ctx: Callable[[], Any] = torch.inference_mode if optimised else torch.no_grad

        def step() -> None:
            with ctx(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and optimised):
                net(x)

        with _PeakMemory(dev) as mem:
            s = _timed(step, dev, **timing)
        return batch_size / s, mem.mb

    def train_phase(x: torch.Tensor, optimised: bool) -> tuple[float, float]:
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

        def step() -> None:
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp and optimised):
                logits = net(x)
            loss = nn.functional.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

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
    for r in range(rounds):
        for suffix, fmt, x, optimised in paths if r % 2 == 0 else paths[::-1]:
            net.to(memory_format=fmt)
            for phase, fn in (("eval", eval_phase), ("train", train_phase)):
                img_s, mb = fn(x, optimised)
                key = f"{phase}{suffix}_img_s"
                row[key] = max(row.get(key, 0.0), img_s)
                row[f"{phase}{suffix}_peak_mb"] = max(row.get(f"{phase}{suffix}_peak_mb", 0.0), mb)
    if plain:
        row["eval_speedup"] = row["eval_img_s"] / row["eval_plain_img_s"]
        row["train_speedup"] = row["train_img_s"] / row["train_plain_img_s"]
    row["rounds"] = rounds
    row["bf16"] = amp
    row["torch"] = torch.__version__
    row["threads"] = torch.get_num_threads()
    if dev.type == "cuda":
        row["gpu"] = torch.cuda.get_device_name(dev)
    return row


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
    ("train_speedup", "x", "{:.2f}"), ("eval_img_s", "eval img/s", "{:.1f}"),
    ("eval_plain_img_s", "plain", "{:.1f}"), ("eval_speedup", "x", "{:.2f}"),
    ("data_img_s", "data img/s", "{:.0f}"), ("train_peak_mb", "train MB", "{:.0f}"),
    ("eval_peak_mb", "eval MB", "{:.0f}"),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A text table: optimised and plain throughput side by side, speed-ups, data pipeline, peak memory."""
    cols = [(k, h, f) for k, h, f in COLUMNS if any(k in r for r in rows)]
    cells = [[h for _, h, _ in cols]] + [[f.format(r[k]) if k in r else "-" for k, _, f in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    if rows:
        r = rows[0]
        mem = "CUDA max_memory_allocated" if r["device"].startswith("cuda") else "CPU resident-set growth"
        lines.append(f"\ndevice {r['device']}{' (' + r['gpu'] + ')' if 'gpu' in r else ''}, batch {r['batch_size']}, "
                     f"torch {r['torch']}, {r['threads']} threads. train/eval: channels_last + inference_mode"
                     f"{' + bf16' if r.get('bf16') else ''}; plain: contiguous, no_grad, fp32 "
                     f"(the authors' way); x = speed-up. data: index + prepare_input + flip/rotate. "
                     f"Memory: peak {mem} per phase (MB).")
    return "\n".join(lines)
