"""How to train, as data: `TrainConfig` (one frozen dataclass), the named recipes and the per-batch lr
schedules. The defaults are the authors' recipe; `recipe_for` picks the measured CPU recipe for 48-px presets.

Example:
    >>> cfg = recipe_for("resmasknet_cpu").replace(epochs=5, seed=1)
    >>> TrainConfig.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from resmasknet.config import NetConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

    from resmasknet.model import ResMaskNet

__all__ = ["CPU_RECIPE", "OPTIMIZERS", "PAPER_RECIPE", "SCHEDULERS", "BatchSchedule", "RunClock", "TrainConfig",
           "lr_factor", "make_optimizer", "make_plateau", "recipe_for"]

OPTIMIZERS = ("radam", "adamw", "sgd")
SCHEDULERS = ("plateau", "onecycle", "cosine", "none")


@dataclass(frozen=True)
class TrainConfig:
    """How to train. The defaults are the authors' recipe (the `resmasknet_paper` preset's default)."""

    epochs: int = 50  # paper: at most 50
    batch_size: int = 48  # paper: 48
    optimizer: str = "radam"  # radam (paper) | adamw | sgd
    lr: float = 1e-4  # paper: 1e-4; the peak lr for onecycle
    weight_decay: float = 1e-3  # paper: 1e-3 (decoupled, as in the RAdam code the authors used)
    momentum: float = 0.9  # sgd only
    scheduler: str = "plateau"  # plateau (paper) | onecycle | cosine (linear warmup, per batch) | none
    plateau_factor: float = 0.1  # paper: ReduceLROnPlateau(factor=0.1, patience=2) on val accuracy
    plateau_patience: int = 2
    min_lr: float = 1e-6  # the authors' ReduceLROnPlateau floor
    warmup_pct: float = 0.3  # onecycle / cosine: fraction of the schedule spent warming up
    # onecycle / cosine: stretch the schedule over max_minutes instead of epochs x batches, so it always
    # finishes its anneal inside the budget however fast the (shared) machine runs; `epochs` is then an
    # upper bound and the last epoch may be cut short. Not bit-reproducible (it follows the clock).
    budget_schedule: bool = False
    early_stop_patience: int | None = 8  # paper: stop after 8 epochs without a better val accuracy
    seed: int = 1234  # paper: 1234
    label_smoothing: float = 0.0  # paper: plain cross-entropy
    soft_labels: bool = False  # train on data.soft_labels (FER+ vote distributions) when present
    flip_p: float = 0.5  # paper: horizontal flip p=0.5
    max_degrees: float = 30.0  # paper: rotation uniform in [-30, 30]
    grad_clip: float | None = None  # max global grad norm; None: no clipping
    eval_batch_size: int = 256
    # Ask for bf16 autocast when training on CPU too (CUDA always uses it). Opt-in: 1.6x the training throughput
    # of resnet_cpu on a CPU with AVX512-BF16, but 12x slower on one without bf16 units (a Zen 3 EPYC), so it
    # is a request: training uses it only where `runtime.cpu_has_bf16()` finds the units, and records the
    # choice it made (history's "bf16", TrainResult.bf16).
    cpu_bf16: bool = False
    max_minutes: float | None = None  # training-time budget, summed over resumptions
    max_train_batches: int | None = None  # per epoch; for tiny test runs
    max_val_batches: int | None = None
    limit: int | None = None  # use a seeded random `limit` images of train and of val; for tiny runs

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def pos_int(name: str, v: Any, optional: bool = False) -> None:
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an integer >= 1{' or None' if optional else ''}")

        def num(name: str, v: Any, lo: float, hi: float = math.inf, optional: bool = False) -> None:
            if optional and v is None:
                return
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise ValueError(f"{name}={v!r} must be a number in [{lo}, {hi}]{' or None' if optional else ''}")

        pos_int("epochs", self.epochs)
        pos_int("batch_size", self.batch_size)
        pos_int("eval_batch_size", self.eval_batch_size)
        pos_int("plateau_patience", self.plateau_patience)
        pos_int("early_stop_patience", self.early_stop_patience, optional=True)
        pos_int("max_train_batches", self.max_train_batches, optional=True)
        pos_int("max_val_batches", self.max_val_batches, optional=True)
        pos_int("limit", self.limit, optional=True)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r} is not allowed; choose one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler={self.scheduler!r} is not allowed; choose one of {', '.join(SCHEDULERS)}")
        num("lr", self.lr, 0.0)
        num("weight_decay", self.weight_decay, 0.0)
        num("momentum", self.momentum, 0.0, 1.0)
        num("plateau_factor", self.plateau_factor, 0.0, 1.0)
        num("min_lr", self.min_lr, 0.0)
        num("warmup_pct", self.warmup_pct, 0.0, 1.0)
        num("label_smoothing", self.label_smoothing, 0.0, 1.0)
        num("flip_p", self.flip_p, 0.0, 1.0)
        num("max_degrees", self.max_degrees, 0.0, 180.0)
        num("grad_clip", self.grad_clip, 0.0, optional=True)
        num("max_minutes", self.max_minutes, 0.0, optional=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} must be an integer")
        for name in ("soft_labels", "budget_schedule", "cpu_bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.budget_schedule and (self.max_minutes is None or self.scheduler not in ("onecycle", "cosine")):
            raise ValueError("budget_schedule=True needs max_minutes and scheduler 'onecycle' or 'cosine'")

    def replace(self, **changes: Any) -> TrainConfig:
        valid = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - valid)
        if unknown:
            raise KeyError(f"unknown train setting(s) {unknown}; settings: {', '.join(sorted(valid))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls().replace(**d)


PAPER_RECIPE = TrainConfig()
# For the 48-px CPU presets, measured on FER2013 (resnet_cpu, 6,000 training images, 3 epochs, validation on
# all 3,589 PublicTest images, 1 thread on the shared 2-core machine):
#   paper recipe (RAdam 1e-4, plateau, batch 48, rotation 30)           val 25.5%
#   AdamW one-cycle peak 2e-3, batch 64, label smoothing 0.1, rotation 30 val 33.0%  (peak 4e-3: 32.9%)
#   the same with rotation 10                                          val 42.5%  (bf16 on CPU: 44.9%)
# A short budget leaves a 0.7M-parameter network underfitting, where the paper's lr crawls and strong
# rotation only slows learning. Early stopping is off: one-cycle must finish its anneal.
CPU_RECIPE = TrainConfig(epochs=20, batch_size=64, optimizer="adamw", lr=2e-3, weight_decay=5e-4,
                         scheduler="onecycle", warmup_pct=0.25, early_stop_patience=None, label_smoothing=0.1,
                         max_degrees=10.0)


def recipe_for(model: str | NetConfig | ResMaskNet) -> TrainConfig:
    """The default TrainConfig for a preset name, a NetConfig or a model: the paper's recipe for the 224-px
    paper networks, `CPU_RECIPE` for the 48-px CPU presets."""
    if isinstance(model, str):
        from resmasknet.registry import get_config

        cfg = get_config(model)
    elif isinstance(model, NetConfig):
        cfg = model
    else:
        cfg = model.config
    return CPU_RECIPE if cfg.input_size <= 64 else PAPER_RECIPE


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer `cfg` names, over the model's trainable parameters."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


def make_plateau(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
    """The paper's ReduceLROnPlateau on validation accuracy (scheduler="plateau")."""
    import torch

    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=cfg.plateau_factor,
                                                      patience=cfg.plateau_patience, min_lr=cfg.min_lr)


def lr_factor(kind: str, progress: float, warmup_pct: float) -> float:
    """The per-batch schedules as a function of progress in [0, 1]: multiply the peak lr by this.

    onecycle: torch's OneCycleLR shape (cosine up from lr/25 over warmup_pct, cosine down to lr/25e4);
    cosine: linear warmup from 0, cosine decay to 0."""
    p = min(1.0, max(0.0, progress))
    if kind == "onecycle":
        if p < warmup_pct:
            return _cos_between(1 / 25, 1.0, p / warmup_pct)
        return _cos_between(1.0, 1 / 25e4, (p - warmup_pct) / max(1e-12, 1 - warmup_pct))
    if kind == "cosine":
        if p < warmup_pct:
            return p / warmup_pct
        return _cos_between(1.0, 0.0, (p - warmup_pct) / max(1e-12, 1 - warmup_pct))
    return 1.0


def _cos_between(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2 * (1 + math.cos(math.pi * min(1.0, max(0.0, pct))))


class RunClock:
    """Training seconds, summed over the sessions of a resumed run."""

    def __init__(self, before: float):
        self.before = before
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.start


class BatchSchedule:
    """The per-batch lr schedules (onecycle, cosine) over steps, or over the clock with budget_schedule."""

    def __init__(self, cfg: TrainConfig, n_batches: int, steps_done: int, clock: RunClock, reserve_s: float):
        self.cfg, self.total = cfg, cfg.epochs * n_batches
        self.step, self.clock, self.reserve_s = steps_done, clock, reserve_s
        self.budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
        self.active = cfg.scheduler in ("onecycle", "cosine")

    def before_batch(self, opt: torch.optim.Optimizer, b: int, n_batches: int) -> str:
        """Set this batch's lr; a non-empty reason when the clock-driven schedule has run out (end the epoch)."""
        if not self.active:
            return ""
        cfg = self.cfg
        progress = (self.clock() / max(1e-9, self.budget_s - self.reserve_s) if cfg.budget_schedule
                    else self.step / self.total)
        if cfg.budget_schedule and progress >= 1.0 and b > 0:
            return f"the lr schedule reached the time budget after batch {b}/{n_batches}"
        for group in opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg.scheduler, progress, cfg.warmup_pct)
        return ""
