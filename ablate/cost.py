"""What a study will cost on this machine, before it runs: every distinct network of its grid is timed once
with `resmasknet.bench.bench_model` (training step at the study's batch size, evaluation), and each cell's
time is projected from its recipe and the split sizes:

    epochs x (train batches x batch / train img/s  +  val images / score img/s)
      + (val images + test images) / score img/s       (the trial's final scoring of its best checkpoint)
    (x 11 test passes when the study scores the authors' 10-draw TTA too)

"score img/s" is the rate of the toolkit's prediction path (`resmasknet.bench.scoring_img_s`): bf16 on a GPU of
compute capability 8.0 or newer, fp32 on older GPUs and on a CPU even where training runs under bf16
(`runtime.precision_for`). Cells that differ only by seed share a measurement.
With `workers` = N > 1, each network is measured while N - 1 other processes train it beside it
(`resmasknet.bench.other_workers`), as the other workers of `ablate run --workers N` (or `--workers-per-gpu
N` on one GPU) would: they share the cores' memory bus and caches, or the GPU. `StudyCost.makespan_s` deals
the cells of the first seeds to the workers the way `ablate run` does (seed by seed, each cell to the first
free worker), so `--fit MINUTES` can say how many whole seeds fit a time limit (`ablate run --first-seeds K`).

    ablate bench --study fer_per_stage --device cuda                     # loads ${FER2013} for the sizes
    ablate bench --study paper_scale --device cuda --data-sizes 28709,3589,3589 --epochs 50
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Any

from ablate.study import Study

__all__ = ["CellCost", "StudyCost", "project_study", "split_sizes"]


@dataclass(frozen=True)
class CellCost:
    variant: str
    seeds: int
    epochs: int
    train_img_s: float
    eval_img_s: float  # the rate validation and scoring run at (fp32 on a CPU, bf16 on an Ampere-or-newer GPU)
    seconds_per_seed: float
    bf16: bool  # measured under bf16 autocast (`runtime.precision_for`: Ampere-or-newer GPU; CPU with bf16 units
    # where the recipe asks for it)


@dataclass(frozen=True)
class StudyCost:
    study: str
    device: str
    sizes: tuple[int, int, int]
    rows: tuple[CellCost, ...]
    workers: int = 1  # each network was measured beside workers - 1 other training processes

    @property
    def total_s(self) -> float:
        return sum(r.seconds_per_seed * r.seeds for r in self.rows)

    @property
    def seed_s(self) -> float:
        """One whole seed (every variant once) on one worker."""
        return sum(r.seconds_per_seed for r in self.rows)

    def makespan_s(self, seeds: int, workers: int = 1) -> float:
        """Projected wall time of the first `seeds` seeds on `workers` workers: the cells in the order
        `ablate run` pops them (every variant of a seed, then the next seed), each to the first free worker."""
        free = [0.0] * max(1, workers)
        for _ in range(seeds):
            for r in self.rows:
                heapq.heappush(free, heapq.heappop(free) + r.seconds_per_seed)
        return max(free)

    def seeds_within(self, budget_s: float, workers: int = 1) -> int:
        """The most whole seeds (at most the study's) whose projected wall time fits `budget_s`."""
        n = min(r.seeds for r in self.rows)
        return max([k for k in range(n + 1) if self.makespan_s(k, workers) <= budget_s])

    def format(self) -> str:
        head = ("variant", "seeds", "epochs", "precision", "train img/s", "score img/s", "min/seed", "min (all seeds)")
        cells = [head] + [(r.variant, str(r.seeds), str(r.epochs), "bf16" if r.bf16 else "fp32",
                           f"{r.train_img_s:.1f}", f"{r.eval_img_s:.1f}",
                           f"{r.seconds_per_seed / 60:.1f}", f"{r.seconds_per_seed * r.seeds / 60:.1f}")
                          for r in self.rows]
        from resmasknet.bench import text_table

        lines = text_table(cells)
        n_train, n_val, n_test = self.sizes
        n = min(r.seeds for r in self.rows) if self.rows else 0
        lines.append(f"\nstudy {self.study} on {self.device}: {len(self.rows)} variants, "
                     f"{sum(r.seeds for r in self.rows)} cells, projected {self.total_s / 60:.1f} min "
                     f"({self.total_s / 3600:.2f} h) of one worker's time; splits {n_train:,} / {n_val:,} / "
                     f"{n_test:,} (train / val / test); one whole seed (every variant once) {self.seed_s / 60:.1f} min")
        if self.workers > 1:
            lines.append(f"measured beside {self.workers - 1} other training worker(s), as `--workers "
                         f"{self.workers}` runs: all {n} seeds on {self.workers} workers "
                         f"{self.makespan_s(n, self.workers) / 60:.1f} min")
        return "\n".join(lines)

    def fit(self, minutes: float, workers: int = 1) -> str:
        """A line saying how many whole seeds fit `minutes` on `workers` workers, as an `ablate run` command."""
        k = self.seeds_within(minutes * 60, workers)
        n = min(r.seeds for r in self.rows)
        on = f"{workers} worker{'s' if workers > 1 else ''}"
        if k == 0:
            return (f"not one whole seed fits {minutes:g} min on {on}: the first takes "
                    f"{self.makespan_s(1, workers) / 60:.1f} min")
        flag = "" if k == n else f" --first-seeds {k}"
        per = "--workers-per-gpu" if self.device.startswith("cuda") else "--workers"
        return (f"within {minutes:g} min on {on}: ablate run {self.study} {per} {workers}{flag}  "
                f"({k} of {n} seeds, projected {self.makespan_s(k, workers) / 60:.1f} min)")


def split_sizes(study: Study) -> tuple[int, int, int]:
    """(train, val, test) sizes of the study's data, loaded once (a FER2013 csv takes seconds)."""
    from resmasknet.data import load_data

    data = load_data(study.resolved("data") or study.data)
    return tuple(len(data.select(s)) for s in ("train", "val", "test"))  # type: ignore[return-value]


def cell_seconds(train: Any, sizes: tuple[int, int, int], train_img_s: float, eval_img_s: float,
                 tta: bool) -> float:
    """Projected seconds of one trial with recipe `train` (a TrainConfig) on splits of `sizes`; `eval_img_s`
    is the rate validation and scoring run at (`resmasknet.bench.scoring_img_s`)."""
    n_train, n_val, n_test = sizes
    if train.limit is not None:
        n_train, n_val = min(n_train, train.limit), min(n_val, train.limit)
    batches = math.ceil(n_train / train.batch_size)
    if train.max_train_batches is not None:
        batches = min(batches, train.max_train_batches)
    if train.max_val_batches is not None:
        n_val = min(n_val, train.max_val_batches * train.eval_batch_size)
    per_epoch = batches * train.batch_size / train_img_s + n_val / eval_img_s
    final = sizes[1] + n_test * (11 if tta else 1)  # the best checkpoint on the whole val and test splits
    return train.epochs * per_epoch + final / eval_img_s


def project_study(study: Study, sizes: tuple[int, int, int], *, device: str | None = None,
                  epochs: int | None = None, cpu_bf16: bool = False, workers: int = 1, progress: Any = None,
                  threads: int | None = None, **bench_kwargs: Any) -> StudyCost:
    """Time each distinct network of the grid once and project the study's cost (see the module doc).
    `epochs` replaces the study's epoch count (e.g. the paper's 50 for a study that early-stops); `cpu_bf16`
    projects every cell as if its recipe asked for bf16 autocast on the CPU (`train.cpu_bf16`), which the
    bench then uses only where the CPU has bf16 units, as training would; `workers` > 1 measures each network
    beside that many other training processes less one (the other workers of `ablate run --workers`);
    `threads`: the torch threads each of them trains with (default: this process's count)."""
    import torch

    from resmasknet.runtime import resolve_device

    if study.mode != "grid":
        raise ValueError(f"{study.path}: only grid studies can be projected (a search's trials are not known "
                         f"in advance); bench its base model with `ablate bench --model {study.model}`")
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    dev = resolve_device(device)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        rows = _project_cells(study, sizes, dev, epochs, cpu_bf16, workers, progress, bench_kwargs)
    finally:
        torch.set_num_threads(before)
    return StudyCost(study.name, str(dev), sizes, tuple(rows), workers)


def _project_cells(study: Study, sizes: tuple[int, int, int], dev: Any, epochs: int | None, cpu_bf16: bool,
                   workers: int, progress: Any, bench_kwargs: dict[str, Any]) -> list[CellCost]:
    import contextlib

    from resmasknet.bench import bench_model, other_workers, scoring_img_s
    from resmasknet.model import ResMaskNet
    from resmasknet.recipe import TrainConfig
    from resmasknet.runtime import precision_for

    measured: dict[Any, dict[str, Any]] = {}
    rows = []
    for v in study.variants:
        cfg = study.net_config(v.model)
        tcfg = TrainConfig(**{**study.train, **v.train})
        if epochs is not None:
            tcfg = tcfg.replace(epochs=epochs)
        if cpu_bf16:
            tcfg = tcfg.replace(cpu_bf16=True)
        key = (cfg, tcfg.batch_size, tcfg.cpu_bf16)
        if key not in measured:
            net = ResMaskNet(cfg, seed=0)
            amp = precision_for(dev, tcfg.cpu_bf16) == "bf16"  # as training and the bench decide it
            beside = (other_workers(net, workers - 1, batch_size=tcfg.batch_size, device=dev, amp=amp)
                      if workers > 1 else contextlib.nullcontext())
            with beside:
                measured[key] = bench_model(net, batch_size=tcfg.batch_size, device=dev, plain=False,
                                            cpu_bf16=tcfg.cpu_bf16, **bench_kwargs)
            if progress is not None:
                progress(v.name, measured[key])
        m = measured[key]
        score = scoring_img_s(m)
        rows.append(CellCost(v.name, len(study.seeds), tcfg.epochs, m["train_img_s"], score,
                             cell_seconds(tcfg, sizes, m["train_img_s"], score, study.tta), m["bf16"]))
    return rows
