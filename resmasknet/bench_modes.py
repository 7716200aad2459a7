"""Which speed-ups pay on this device: training (and evaluation) throughput of one network under each
execution mode, every one measured against plain fp32 (contiguous memory, no autocast) in the same run.

Modes:
    fp32            contiguous memory format, fp32 (the reference, "plain")
    bf16            bf16 autocast (on CPU only where the CPU has bf16 units; elsewhere the mode is skipped)
    channels_last   channels_last memory format, fp32
    bf16+cl         both (what `resmasknet.train` uses on CUDA)
    compile         `torch.compile` of the bf16+cl network (inductor); its compile time is reported apart

Example:
    >>> rows = bench_modes(["resmasknet_cpu"], device="cuda", modes=("fp32", "bf16+cl", "compile"))
    >>> print(format_modes(rows))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from resmasknet.bench import _timed, _train_step, text_table
from resmasknet.runtime import bf16_support, resolve_device

__all__ = ["MODES", "bench_modes", "format_modes"]

log = logging.getLogger(__name__)

MODES = ("fp32", "bf16", "channels_last", "bf16+cl", "compile")
_SPEC = {  # mode -> (channels_last, bf16, compile)
    "fp32": (False, False, False), "bf16": (False, True, False), "channels_last": (True, False, False),
    "bf16+cl": (True, True, False), "compile": (True, True, True),
}


def _bf16_ok(dev: torch.device) -> tuple[bool, str]:
    return bf16_support(dev)


def bench_modes(models: Sequence[str], *, device: str | torch.device | None = None, batch_size: int = 64,
                modes: Sequence[str] = MODES, steps: int = 20, warmup: int = 3, seconds: float = 10.0,
                progress: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """One row per (model, mode): train_img_s, eval_img_s, train_x / eval_x (against fp32 in the same run),
    compile_s for `compile`, or skipped (the reason) where the mode cannot run here."""
    from resmasknet.registry import create_model

    unknown = [m for m in modes if m not in _SPEC]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; modes: {', '.join(MODES)}")
    modes = ["fp32", *[m for m in modes if m != "fp32"]]  # the reference first
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as training runs (resmasknet.train)
    bf16_ok, bf16_why = _bf16_ok(dev)
    timing = {"warmup": warmup, "steps": steps, "seconds": seconds}
    rows: list[dict[str, Any]] = []
    for name in models:
        gen = torch.Generator().manual_seed(0)
        net = create_model(name, seed=0).to(dev)
        faces = torch.randint(0, 256, (batch_size, 48, 48), dtype=torch.uint8, generator=gen).to(dev)
        labels = torch.randint(0, net.config.num_classes, (batch_size,), generator=gen).to(dev)
        ref: dict[str, float] = {}
        for mode in modes:
            cl, bf16, comp = _SPEC[mode]
            row: dict[str, Any] = {"model": name, "mode": mode, "device": str(dev), "batch_size": batch_size}
            if bf16 and not bf16_ok:
                row["skipped"] = f"no bf16 ({bf16_why})"
                rows.append(row)
                continue
            try:
                row.update(_measure(net, faces, labels, dev, cl=cl, bf16=bf16, comp=comp, timing=timing))
            except Exception as exc:  # noqa: BLE001 - e.g. inductor without a compiler: report, go on
                first = str(exc).splitlines()[0][:120] if str(exc) else ""
                row["skipped"] = f"{type(exc).__name__}: {first}"
                log.warning("%s %s: %s", name, mode, row["skipped"])
                rows.append(row)
                continue
            if mode == "fp32":
                ref = {"train": row["train_img_s"], "eval": row["eval_img_s"]}
            if ref:  # (fp32 itself failed: no reference to divide by)
                row["train_x"] = row["train_img_s"] / ref["train"]
                row["eval_x"] = row["eval_img_s"] / ref["eval"]
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows


def _measure(net: Any, faces: torch.Tensor, labels: torch.Tensor, dev: torch.device, *, cl: bool, bf16: bool,
             comp: bool, timing: dict[str, Any]) -> dict[str, float]:
    """train_img_s and eval_img_s of one mode (and compile_s: the first calls, which compile, timed apart)."""
    fmt = torch.channels_last if cl else torch.contiguous_format
    net.to(memory_format=fmt)
    x = net.prepare_input(faces).contiguous(memory_format=fmt)
    run: Any = torch.compile(net) if comp else net
    out: dict[str, float] = {}
    n = x.shape[0]

    def eval_step() -> None:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            run(x)

    try:
        if comp:
            t0 = time.perf_counter()
            _train_step(run, x, labels, amp=bf16)()
            net.eval()
            eval_step()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            out["compile_s"] = time.perf_counter() - t0
        out["train_img_s"] = n / _timed(_train_step(run, x, labels, amp=bf16), dev, **timing)
        net.eval()
        out["eval_img_s"] = n / _timed(eval_step, dev, **timing)
    finally:
        if comp:
            torch._dynamo.reset()
        net.to(memory_format=torch.contiguous_format)
    return out


def format_modes(rows: Sequence[dict[str, Any]]) -> str:
    """A text table: one line per model and mode, the speed-up against fp32 of the same model and run."""
    head = ("model", "mode", "train img/s", "x fp32", "eval img/s", "x fp32", "compile s")
    cells = [list(head)]
    for r in rows:
        if "skipped" in r:
            cells.append([r["model"], r["mode"], "-", "-", "-", "-", "skipped: " + r["skipped"]])
            continue
        cells.append([r["model"], r["mode"], f"{r['train_img_s']:.1f}", f"{r.get('train_x', float('nan')):.2f}",
                      f"{r['eval_img_s']:.1f}", f"{r.get('eval_x', float('nan')):.2f}",
                      f"{r['compile_s']:.0f}" if "compile_s" in r else "-"])
    lines = text_table(cells, left=(0, 1, 6))
    if rows:
        r = rows[0]
        lines.append(f"\ndevice {r['device']}, batch {r['batch_size']}, torch {torch.__version__}; "
                     "x fp32: against the same model in fp32, contiguous memory, in this run")
    return "\n".join(lines)
