"""Train a ResMaskNet on a FaceData: the authors' recipe by default, faster measured recipes for CPU presets.

Batches are drawn by indexing a uint8 tensor held on the training device (no DataLoader workers), then
`prepare_input` + flip/rotation augmentation run on the device (`resmasknet.augment`). channels_last
always, bf16 autocast on CUDA (and on CPU when `cpu_bf16=True`). Every epoch writes `last.pt` (weights
plus optimizer, scheduler, RNG and epoch state in `extra`), `best.pt` when validation accuracy improves,
and `history.json`; a run started again with `resume=True` continues from `last.pt` and ends where an
uninterrupted run would (same seed, same CPU: same numbers).

Example:
    >>> model = create_model("resmasknet_cpu")
    >>> res = train(model, load_data("generated"), recipe_for("resmasknet_cpu"), out_dir="runs/x")
    >>> res.status, res.best_val_acc, res.best_epoch        # model now holds the best weights
    >>> def cb(epoch, metrics):                            # MLflow logging / Optuna pruning hook
    ...     if metrics["val_acc"] < 0.2: raise StopTraining("pruned", status="pruned")
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmasknet.augment import augment_batch
from resmasknet.checkpoint import read_checkpoint, save_checkpoint
from resmasknet.config import NetConfig
from resmasknet.evaluate import predict, resolve_device
from resmasknet.model import ResMaskNet

__all__ = ["StopTraining", "TrainConfig", "TrainResult", "recipe_for", "train"]

OPTIMIZERS = ("radam", "adamw", "sgd")
SCHEDULERS = ("plateau", "onecycle", "cosine", "none")
# Statuses after which a resumed run has nothing left to do.
FINAL_STATUSES = ("completed", "early_stopped")
# Fields that may differ between a run and its resumption (they change no number already computed).
RESUMABLE_CHANGES = ("max_minutes", "eval_batch_size")


class StopTraining(Exception):
    """Raised by a callback to end the run cleanly after the current epoch (state is already saved).
    `status` becomes `TrainResult.status` (e.g. "pruned" for an Optuna pruning decision)."""

    def __init__(self, message: str = "stopped by callback", *, status: str = "stopped"):
        super().__init__(message)
        self.status = status


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
    # bf16 autocast for training on CPU as well (CUDA always uses it). Opt-in: 1.6x the training throughput
    # of resnet_cpu on this machine's AMD EPYC (AVX512-BF16); CPUs without bf16 units get slower.
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


@dataclass
class TrainResult:
    """What a run ended with. status: completed | early_stopped | time_limit | stopped (callback) | pruned
    (or another status a callback's StopTraining set) | diverged."""

    status: str
    message: str
    epochs: int  # epochs completed (including those of earlier, resumed sessions)
    best_epoch: int
    best_val_acc: float
    best_val_loss: float
    history: list[dict[str, Any]]
    out_dir: Path
    seconds: float  # training time, summed over resumptions
    config: TrainConfig = field(default_factory=TrainConfig)

    @property
    def best_path(self) -> Path | None:
        p = self.out_dir / "best.pt"
        return p if p.exists() else None

    @property
    def last_path(self) -> Path | None:
        p = self.out_dir / "last.pt"
        return p if p.exists() else None

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "message": self.message, "epochs": self.epochs,
                "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                "best_val_loss": self.best_val_loss, "seconds": self.seconds, "out_dir": str(self.out_dir),
                "config": self.config.to_dict()}


# ---- helpers -----------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _fingerprint(*arrays: np.ndarray) -> str:
    """A cheap identity of the training data, so a resume on different data is refused."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        step = max(1, a.shape[0] // 512) if a.ndim else 1
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a[::step]).tobytes())
    return h.hexdigest()[:16]


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "radam":
        return torch.optim.RAdam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                           nesterov=cfg.momentum > 0)


def _plateau(opt: torch.optim.Optimizer, cfg: TrainConfig) -> Any:
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


def _loss(logits: Tensor, target: Tensor, soft: Tensor | None, smoothing: float) -> Tensor:
    if soft is not None:
        k = logits.shape[1]
        t = soft * (1 - smoothing) + smoothing / k
        return -(t * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    return F.cross_entropy(logits, target, label_smoothing=smoothing)


def _limit(split: Any, limit: int | None, seed: int) -> Any:
    if limit is None or len(split) <= limit:
        return split
    idx = np.sort(np.random.default_rng(seed).permutation(len(split))[:limit])
    return split.subset(idx)


def _rng_state(dev: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict[str, Any], dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


class _Diverged(Exception):
    pass


class _OutOfTime(Exception):
    pass


# ---- the loop -------------------------------------------------------------------------------------------
def train(model: ResMaskNet, data: Any, cfg: TrainConfig | None = None, *, out_dir: str | os.PathLike,
          callback: Callable[[int, dict[str, Any]], None] | None = None, resume: bool = True,
          device: str | torch.device | None = None, progress: bool = True) -> TrainResult:
    """Train `model` on `data.select("train")`, validating on `data.select("val")`; returns a TrainResult and
    leaves the best-validation weights in `model`.

    cfg: default `recipe_for(model)`. callback(epoch, metrics) runs after each epoch's checkpoints are written;
    it may raise StopTraining to end the run cleanly (any other exception propagates, state saved).
    resume: continue from out_dir/last.pt when it exists (refused if the model, recipe or data differ)."""
    cfg = cfg if cfg is not None else recipe_for(model)
    dev = resolve_device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net_cfg: NetConfig = model.config

    train_split = _limit(data.select("train"), cfg.limit, cfg.seed)
    val_split = _limit(data.select("val"), cfg.limit, cfg.seed + 1)
    classes = tuple(data.classes)
    if len(train_split) < 2:
        raise ValueError(f"{getattr(data, 'source', 'data')}: need at least 2 training images, got {len(train_split)}")
    if len(val_split) < 1:
        raise ValueError(f"{getattr(data, 'source', 'data')}: no validation images (split 'val'); "
                         "training keeps the best-validation checkpoint and needs one")
    if len(classes) != net_cfg.num_classes:
        raise ValueError(f"the data has {len(classes)} classes {classes} but the model predicts "
                         f"{net_cfg.num_classes}; build it with num_classes={len(classes)}")
    soft_np = getattr(train_split, "soft_labels", None)
    if cfg.soft_labels and soft_np is None:
        raise ValueError("soft_labels=True but the data carries no soft labels (FER+ vote distributions)")
    fingerprint = _fingerprint(train_split.images, train_split.labels, val_split.labels)

    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    model.to(dev).to(memory_format=torch.channels_last)

    n_train, bs = len(train_split), cfg.batch_size
    n_batches = math.ceil(n_train / bs)
    if n_train % bs == 1 and n_batches > 1:
        n_batches -= 1  # a last batch of one image breaks BatchNorm: drop it
    if cfg.max_train_batches is not None:
        n_batches = min(n_batches, cfg.max_train_batches)

    opt = _make_optimizer(model, cfg)
    sched = _plateau(opt, cfg) if cfg.scheduler == "plateau" else None
    per_step = cfg.scheduler in ("onecycle", "cosine")
    total_steps = cfg.epochs * n_batches
    data_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)

    start_epoch, best_acc, best_loss, best_epoch, bad_epochs = 1, -math.inf, math.inf, 0, 0
    history: list[dict[str, Any]] = []
    elapsed_before = 0.0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        ckpt = read_checkpoint(last_path)
        ex = ckpt.get("extra") or {}
        if "optimizer" not in ex:
            raise ValueError(f"{last_path}: holds no training state; pass resume=False / --no-resume to start over")
        if NetConfig.from_dict(ckpt["config"]) != net_cfg:
            raise ValueError(f"{last_path}: was trained with another network config; use another out_dir "
                             "or resume=False / --no-resume")
        old = TrainConfig.from_dict(ex["train_config"])
        allowed = set(RESUMABLE_CHANGES) | ({"epochs"} if cfg.scheduler in ("plateau", "none") else set())
        if cfg.budget_schedule:
            allowed.discard("max_minutes")
        diff = sorted(k for k in old.to_dict() if k not in allowed and old.to_dict()[k] != cfg.to_dict()[k])
        if diff:
            raise ValueError(f"{last_path}: cannot resume, the recipe differs in {diff}; use another out_dir or "
                             "resume=False / --no-resume")
        if ex.get("fingerprint") != fingerprint:
            raise ValueError(f"{last_path}: cannot resume on different data (fingerprint mismatch); "
                             "use another out_dir or resume=False / --no-resume")
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ex["optimizer"])
        if sched is not None:
            sched.load_state_dict(ex["scheduler"])
        data_gen.set_state(ex["data_gen"])
        aug_gen.set_state(ex["aug_gen"])
        _set_rng_state(ex["rng"], dev)
        start_epoch = int(ex["epoch"]) + 1
        best_acc, best_loss, best_epoch = float(ex["best_val_acc"]), float(ex["best_val_loss"]), int(ex["best_epoch"])
        bad_epochs = int(ex["bad_epochs"])
        history = list(ex["history"])
        elapsed_before = float(ex["elapsed_s"])

    else:
        for stale in (best_path, last_path):  # starting over: never mistake an old run's files for this one's
            stale.unlink(missing_ok=True)

    images = torch.from_numpy(train_split.images).to(dev)
    labels = torch.from_numpy(train_split.labels).to(dev)
    soft = torch.from_numpy(soft_np).to(dev) if cfg.soft_labels else None
    val_images = torch.from_numpy(val_split.images).to(dev)
    val_labels = val_split.labels
    if cfg.max_val_batches is not None:
        val_labels = val_labels[: cfg.max_val_batches * cfg.eval_batch_size]
    amp = dev.type == "cuda" or (cfg.cpu_bf16 and dev.type == "cpu")
    check_every = 1 if dev.type == "cpu" else 25  # a finiteness check syncs the GPU: batch them there
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    # time kept free at the end of a budget-scheduled run for the last validation and checkpoints
    reserve_s = history[-1].get("val_s", 0.0) * 1.5 + 5.0 if history else 0.02 * budget_s
    step = len(history) * n_batches  # per-batch schedules: steps taken so far
    session_start = time.perf_counter()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - session_start

    def result(status: str, message: str) -> TrainResult:
        res = TrainResult(status=status, message=message, epochs=len(history), best_epoch=best_epoch,
                          best_val_acc=best_acc if best_epoch else float("nan"),
                          best_val_loss=best_loss if best_epoch else float("nan"), history=history,
                          out_dir=out, seconds=elapsed(), config=cfg)
        if best_epoch and best_path.exists():  # the recipe keeps the best checkpoint: leave it in the model
            model.load_state_dict(read_checkpoint(best_path)["state_dict"])
        _write_json(out / "result.json", res.to_dict())
        return res

    def finished_status() -> tuple[str, str] | None:
        if history and history[-1].get("cut_short"):
            return "completed", (f"{history[-1]['cut_short']} of epoch {len(history)} "
                                 f"(budget_schedule, max_minutes={cfg.max_minutes})")
        if len(history) >= cfg.epochs:
            return "completed", f"ran {len(history)} epochs"
        if cfg.early_stop_patience is not None and bad_epochs >= cfg.early_stop_patience:
            return "early_stopped", (f"no better validation accuracy for {bad_epochs} epochs "
                                     f"(best {best_acc:.4f} at epoch {best_epoch})")
        return None

    done = finished_status()
    if done:
        return result(*done)

    from tqdm.auto import tqdm

    epoch_bar = tqdm(total=cfg.epochs, initial=start_epoch - 1, desc="epochs", unit="epoch", disable=not progress)
    status: tuple[str, str] | None = None
    last_epoch_s: float | None = history[-1]["epoch_s"] if history else None
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if not cfg.budget_schedule and last_epoch_s is not None and elapsed() + last_epoch_s > budget_s:
                status = ("time_limit", f"stopped before epoch {epoch}: {elapsed() / 60:.1f} min used, another "
                          f"epoch (~{last_epoch_s / 60:.1f} min) would exceed max_minutes={cfg.max_minutes}")
                break
            t_epoch = time.perf_counter()
            model.train()
            perm = torch.randperm(n_train, generator=data_gen).to(dev)
            loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
            correct = torch.zeros((), device=dev, dtype=torch.int64)
            seen = 0
            pending: list[Tensor] = []
            cut_short = ""
            bar = tqdm(total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
            try:
                for b in range(n_batches):
                    if per_step:
                        progress_ = (elapsed() / max(1e-9, budget_s - reserve_s) if cfg.budget_schedule
                                     else step / total_steps)
                        if cfg.budget_schedule and progress_ >= 1.0 and b > 0:
                            cut_short = f"the lr schedule reached the time budget after batch {b}/{n_batches}"
                            break
                        for group in opt.param_groups:
                            group["lr"] = cfg.lr * lr_factor(cfg.scheduler, progress_, cfg.warmup_pct)
                    idx = perm[b * bs:(b + 1) * bs]
                    y = labels[idx]
                    x = augment_batch(model, images[idx], aug_gen, flip_p=cfg.flip_p, max_degrees=cfg.max_degrees)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        logits = model(x)
                    loss = _loss(logits.float(), y, soft[idx] if soft is not None else None, cfg.label_smoothing)
                    pending.append(loss.detach())
                    if len(pending) >= check_every or b == n_batches - 1:
                        finite = torch.isfinite(torch.stack(pending))
                        if not bool(finite.all()):
                            first = int((~finite).nonzero()[0])
                            bad_b = b - len(pending) + 1 + first
                            raise _Diverged(f"loss is {float(pending[first]):g} at epoch {epoch}, batch {bad_b + 1}"
                                            f"/{n_batches} (lr {opt.param_groups[0]['lr']:.3g}); training stopped")
                        pending.clear()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                    opt.step()
                    step += 1
                    loss_sum += loss.detach().double() * len(idx)
                    correct += (logits.detach().argmax(1) == y).sum()
                    seen += len(idx)
                    bar.update(1)
                    if progress and (dev.type == "cpu" or b % 25 == 0):
                        bar.set_postfix(loss=f"{float(loss):.3f}")
                    if not cfg.budget_schedule and elapsed() > budget_s:
                        raise _OutOfTime(f"max_minutes={cfg.max_minutes} reached during epoch {epoch} "
                                         f"(batch {b + 1}/{n_batches}); that epoch is discarded")
            finally:
                bar.close()
            train_s = time.perf_counter() - t_epoch
            t_val = time.perf_counter()

            probs = predict(model, val_images, batch_size=cfg.eval_batch_size, device=dev,
                            max_batches=cfg.max_val_batches)
            val_y = torch.from_numpy(val_labels).to(dev)
            val_acc = float((probs.argmax(1) == val_y).double().mean())
            val_loss = float(-torch.log(probs[torch.arange(len(val_y), device=dev), val_y].clamp_min(1e-12)).mean())
            lr_now = opt.param_groups[0]["lr"]
            if sched is not None:
                sched.step(val_acc)
            is_best = val_acc > best_acc or (val_acc == best_acc and val_loss < best_loss)
            if is_best:
                best_acc, best_loss, best_epoch, bad_epochs = val_acc, val_loss, epoch, 0
            else:
                bad_epochs += 1
            metrics = {
                "epoch": epoch, "train_loss": float(loss_sum) / seen, "train_acc": int(correct) / seen,
                "val_loss": val_loss, "val_acc": val_acc, "lr": lr_now, "best_val_acc": best_acc,
                "best_epoch": best_epoch, "is_best": is_best, "train_img_s": seen / train_s,
                "val_s": time.perf_counter() - t_val, "epoch_s": 0.0, "elapsed_min": 0.0,
                **({"cut_short": cut_short} if cut_short else {}),
            }
            history.append(metrics)
            meta = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "train_config": cfg.to_dict(),
                    "data_source": str(getattr(data, "source", "")), "fingerprint": fingerprint}
            if is_best:
                save_checkpoint(best_path, model, classes=classes, metadata={**meta, "kind": "best"})
            metrics["epoch_s"] = time.perf_counter() - t_epoch
            metrics["elapsed_min"] = elapsed() / 60
            last_epoch_s = metrics["epoch_s"]
            reserve_s = metrics["val_s"] * 1.5 + 5.0
            extra = {
                "epoch": epoch, "train_config": cfg.to_dict(), "fingerprint": fingerprint,
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                "data_gen": data_gen.get_state(), "aug_gen": aug_gen.get_state(), "rng": _rng_state(dev),
                "best_val_acc": best_acc, "best_val_loss": best_loss, "best_epoch": best_epoch,
                "bad_epochs": bad_epochs, "history": history, "elapsed_s": elapsed(),
            }
            save_checkpoint(last_path, model, classes=classes, metadata={**meta, "kind": "last"}, extra=extra)
            _write_json(out / "history.json", history)
            epoch_bar.update(1)
            epoch_bar.set_postfix(val_acc=f"{val_acc:.4f}", best=f"{best_acc:.4f}")
            if callback is not None:
                callback(epoch, dict(metrics))
            status = finished_status()
            if status:
                break
    except StopTraining as exc:
        status = (exc.status, f"{exc} (after epoch {len(history)})")
    except _Diverged as exc:
        status = ("diverged", str(exc))
    except _OutOfTime as exc:
        status = ("time_limit", str(exc))
    finally:
        epoch_bar.close()
    if status is None:
        status = finished_status() or ("completed", f"ran {len(history)} epochs")
    return result(*status)
