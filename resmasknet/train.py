"""Train a ResMaskNet on a FaceData: the authors' recipe by default, faster measured recipes for CPU presets.

`train` is the loop over epochs: `train_one_epoch`, `validate`, then the epoch's files. Batches are drawn by
indexing a uint8 tensor held on the training device (no DataLoader workers), then `prepare_input` +
flip/rotation augmentation run on the device (`resmasknet.augment`). channels_last always; the precision is
decided once per run by `runtime.precision_for`: bf16 autocast on a GPU of compute capability 8.0 or newer
(Ampere on), fp32 on older ones (Pascal, Volta, Turing), and on CPU bf16 only when `cpu_bf16=True` and the CPU
has bf16 units (elsewhere one logged line and fp32). Validation runs at the same precision on a GPU, in fp32 on
a CPU; the decision is recorded in `history.json`, the checkpoints' metadata and `result.json` ("precision").
Every epoch writes `last.pt` (weights plus the run state of `resmasknet.train_state`), `best.pt` when
validation accuracy improves, and `history.json`; a run started again with `resume=True` continues from
`last.pt` and ends where an uninterrupted run would (same seed, same CPU: same numbers).
Recipes live in `resmasknet.recipe` (re-exported here), the run state in `resmasknet.train_state`; this
module (about 420 lines) keeps the loop and its two steps together so one epoch reads top-down.

Example:
    >>> model = create_model("resmasknet_cpu", seed=1234)
    >>> res = train(model, load_data("generated"), recipe_for("resmasknet_cpu"), out_dir="runs/x")
    >>> res.status, res.best_val_acc, res.best_epoch        # model now holds the best weights
    >>> def cb(epoch, metrics):                            # MLflow logging / Optuna pruning hook
    ...     if metrics["val_acc"] < 0.2: raise StopTraining("pruned", status="pruned")
"""

from __future__ import annotations

import logging
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
from resmasknet.evaluate import predict
from resmasknet.model import ResMaskNet
from resmasknet.recipe import (
    CPU_RECIPE,
    PAPER_RECIPE,
    BatchSchedule,
    RunClock,
    TrainConfig,
    lr_factor,
    make_optimizer,
    make_plateau,
    recipe_for,
)
from resmasknet.runtime import PRECISIONS, atomic_write_json, precision_for, resolve_device
from resmasknet.train_state import RunState, fingerprint, restore, state_extra

__all__ = ["CPU_RECIPE", "PAPER_RECIPE", "StopTraining", "TrainConfig", "TrainResult", "lr_factor", "recipe_for",
           "expected_epochs", "train", "train_one_epoch", "use_bf16", "validate"]

log = logging.getLogger(__name__)


class StopTraining(Exception):
    """Raised by a callback to end the run cleanly after the current epoch (state is already saved).
    `status` becomes `TrainResult.status` (e.g. "pruned" for an Optuna pruning decision)."""

    def __init__(self, message: str = "stopped by callback", *, status: str = "stopped"):
        super().__init__(message)
        self.status = status


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
    bf16: bool = False  # whether training ran under bf16 autocast (cfg.cpu_bf16 is only the request on CPU)
    precision: str = "fp32"  # runtime.precision_for's decision for this run: "bf16" or "fp32"

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
                "bf16": self.bf16, "precision": self.precision, "config": self.config.to_dict()}


class _Diverged(Exception):
    pass


class _OutOfTime(Exception):
    pass


# ---- pieces ------------------------------------------------------------------------------------------------
def use_bf16(cfg: TrainConfig, dev: torch.device) -> bool:
    """Whether to train under bf16 autocast: on CUDA where the GPU has native bf16; on CPU when asked for
    (`cpu_bf16`) and the CPU has bf16 units; elsewhere one logged line, and fp32 (`runtime.precision_for`)."""
    return precision_for(dev, cfg.cpu_bf16, "training") == "bf16"


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


def _batches_per_epoch(n_train: int, cfg: TrainConfig) -> int:
    n_batches = math.ceil(n_train / cfg.batch_size)
    if n_train % cfg.batch_size == 1 and n_batches > 1:
        n_batches -= 1  # a last batch of one image breaks BatchNorm: drop it
    if cfg.max_train_batches is not None:
        n_batches = min(n_batches, cfg.max_train_batches)
    return n_batches


def _splits(data: Any, cfg: TrainConfig, net_cfg: NetConfig) -> tuple[Any, Any, tuple[str, ...]]:
    """(train split, val split, classes), checked against the model and the recipe."""
    train_split = _limit(data.select("train"), cfg.limit, cfg.seed)
    val_split = _limit(data.select("val"), cfg.limit, cfg.seed + 1)
    classes = tuple(data.classes)
    source = getattr(data, "source", "data")
    if len(train_split) < 2:
        raise ValueError(f"{source}: need at least 2 training images, got {len(train_split)}")
    if len(val_split) < 1:
        raise ValueError(f"{source}: no validation images (split 'val'); training keeps the best-validation "
                         "checkpoint and needs one (hold some of train out: load_data(..., val_fraction=0.1), "
                         "--val-fraction)")
    if len(classes) != net_cfg.num_classes:
        raise ValueError(f"the data has {len(classes)} classes {classes} but the model predicts "
                         f"{net_cfg.num_classes}; build it with num_classes={len(classes)}")
    if cfg.soft_labels and getattr(train_split, "soft_labels", None) is None:
        raise ValueError("soft_labels=True but the data carries no soft labels (FER+ vote distributions)")
    return train_split, val_split, classes


@dataclass
class EpochStats:
    """What one pass over the training batches measured."""

    loss: float  # mean training loss over the images seen
    acc: float
    seen: int
    seconds: float
    cut_short: str = ""  # why the epoch ended early (budget_schedule), or ""


CHECK_EVERY_GPU = 25  # losses checked for finiteness together on a GPU (each check waits for the device)


def _check_every(dev: torch.device) -> int:
    return 1 if dev.type == "cpu" else CHECK_EVERY_GPU


def train_one_epoch(model: ResMaskNet, opt: torch.optim.Optimizer, images: Tensor, labels: Tensor,
                    soft: Tensor | None, cfg: TrainConfig, *, epoch: int, n_batches: int,
                    data_gen: torch.Generator, aug_gen: torch.Generator, amp: bool, lr: BatchSchedule,
                    clock: RunClock, progress: bool = True) -> EpochStats:
    """One epoch over `images`/`labels` (device tensors) in the order `data_gen` draws.

    Raises _Diverged at the first non-finite loss and _OutOfTime when max_minutes runs out mid-epoch (without
    budget_schedule); with budget_schedule the epoch ends early, marked `cut_short`. On a CPU every loss is
    checked before its update; on a GPU, where a check waits for the device, losses are checked CHECK_EVERY_GPU
    batches at a time and at every exit from the epoch, so a diverged run is never recorded as an epoch. Either
    way a diverged model is left with finite weights: on a GPU, where updates may have followed the first
    non-finite loss, those of the last check that passed (a copy kept on the device; at most
    CHECK_EVERY_GPU - 1 updates before the bad batch), on a CPU those just before the bad batch."""
    from tqdm.auto import tqdm

    dev = images.device
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(images.shape[0], generator=data_gen).to(dev)
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    correct = torch.zeros((), device=dev, dtype=torch.int64)
    seen, cut_short, bs = 0, "", cfg.batch_size
    pending: list[Tensor] = []
    check_every = _check_every(dev)
    state = list(model.state_dict().values())  # the tensors of the weights and buffers, shared with the model
    good = [t.detach().clone() for t in state] if check_every > 1 else None  # at the last check that passed

    def check(b: int, updated: bool) -> None:
        """pending holds the losses of batches b - len(pending) + 1 .. b; `updated`: batch b's update is done."""
        finite = torch.isfinite(torch.stack(pending))
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            bad_b = b - len(pending) + 1 + first
            if good is not None and (updated or first < len(pending) - 1):  # an update followed the bad loss
                with torch.no_grad():
                    for t, g in zip(state, good):
                        t.copy_(g)
            raise _Diverged(f"loss is {float(pending[first]):g} at epoch {epoch}, batch {bad_b + 1}"
                            f"/{n_batches} (lr {opt.param_groups[0]['lr']:.3g}); training stopped")
        pending.clear()
        if good is not None:
            with torch.no_grad():
                for t, g in zip(state, good):
                    g.copy_(t)

    bar = tqdm(total=n_batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress)
    try:
        for b in range(n_batches):
            cut_short = lr.before_batch(opt, b, n_batches)
            if cut_short:
                if pending:
                    check(b - 1, updated=True)
                break
            idx = perm[b * bs:(b + 1) * bs]
            y = labels[idx]
            x = augment_batch(model, images[idx], aug_gen, flip_p=cfg.flip_p, max_degrees=cfg.max_degrees)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = _loss(logits.float(), y, soft[idx] if soft is not None else None, cfg.label_smoothing)
            pending.append(loss.detach())
            if len(pending) >= check_every or b == n_batches - 1:
                check(b, updated=False)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            lr.step += 1
            loss_sum += loss.detach().double() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(idx)
            bar.update(1)
            if progress and (dev.type == "cpu" or b % 25 == 0):
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            if not cfg.budget_schedule and clock() > lr.budget_s:
                if pending:
                    check(b, updated=True)
                raise _OutOfTime(f"max_minutes={cfg.max_minutes} reached during epoch {epoch} "
                                 f"(batch {b + 1}/{n_batches}); that epoch is discarded")
    finally:
        bar.close()
    return EpochStats(loss=float(loss_sum) / seen, acc=int(correct) / seen, seen=seen,
                      seconds=time.perf_counter() - t0, cut_short=cut_short)


def validate(model: ResMaskNet, images: Tensor, labels: np.ndarray, *, batch_size: int,
             max_batches: int | None = None, precision: str | None = None) -> tuple[float, float]:
    """(accuracy, mean negative log-likelihood) on uint8 faces `images` held on the training device, at
    `precision` (default: `runtime.precision_for` of that device)."""
    dev = images.device
    probs = predict(model, images, batch_size=batch_size, device=dev, max_batches=max_batches, precision=precision)
    if max_batches is not None:
        labels = labels[: max_batches * batch_size]
    y = torch.from_numpy(labels).to(dev)
    acc = float((probs.argmax(1) == y).double().mean())
    nll = float(-torch.log(probs[torch.arange(len(y), device=dev), y].clamp_min(1e-12)).mean())
    return acc, nll


def _finished(state: RunState, cfg: TrainConfig) -> tuple[str, str] | None:
    """(status, message) when the run has nothing left to do, else None."""
    history = state.history
    if history and history[-1].get("cut_short"):
        return "completed", (f"{history[-1]['cut_short']} of epoch {len(history)} "
                             f"(budget_schedule, max_minutes={cfg.max_minutes})")
    if len(history) >= cfg.epochs:
        return "completed", f"ran {len(history)} epochs"
    if cfg.early_stop_patience is not None and state.bad_epochs >= cfg.early_stop_patience:
        return "early_stopped", (f"no better validation accuracy for {state.bad_epochs} epochs "
                                 f"(best {state.best_val_acc:.4f} at epoch {state.best_epoch})")
    return None


def expected_epochs(cfg: TrainConfig, history: list[dict[str, Any]], elapsed_s: float, reserve_s: float = 0.0
                    ) -> int | None:
    """How many epochs the run will have in all, for the progress bar: `cfg.epochs` without a time budget; with
    one, what the time left allows at the last epoch's pace, never more than `cfg.epochs`; None while a budgeted
    run has no epoch to go by. With budget_schedule the schedule ends mid-epoch `reserve_s` before the budget
    (`BatchSchedule.reserve_s`), and that cut-short epoch counts; without it an epoch that would not fit is not
    started."""
    if cfg.max_minutes is None:
        return cfg.epochs
    if not history:
        return None
    per_epoch = max(1e-9, float(history[-1]["epoch_s"]))  # epoch_s includes the validation
    left = cfg.max_minutes * 60 - elapsed_s
    if cfg.budget_schedule:
        more = math.ceil(max(0.0, left - reserve_s) / per_epoch - 1e-9)
    else:
        more = math.floor(max(0.0, left) / per_epoch + 1e-9)
    return min(cfg.epochs, len(history) + more)


# ---- the loop -------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """One training session: what every epoch reads and updates, and how the session's files are written."""

    model: ResMaskNet
    cfg: TrainConfig
    out: Path
    dev: torch.device
    classes: tuple[str, ...]
    source: str
    data_fp: str
    amp: bool
    precision: str  # the run's one precision decision (runtime.precision_for): amp is precision == "bf16"
    opt: torch.optim.Optimizer
    sched: Any
    data_gen: torch.Generator
    aug_gen: torch.Generator
    state: RunState
    clock: RunClock

    def record(self, epoch: int, stats: EpochStats, val_acc: float, val_loss: float, lr: BatchSchedule,
               t_epoch: float, t_val: float) -> dict[str, Any]:
        """Step the plateau scheduler, update the best, write best.pt / last.pt / history.json; the metrics."""
        state, cfg = self.state, self.cfg
        lr_now = self.opt.param_groups[0]["lr"]
        if self.sched is not None:
            self.sched.step(val_acc)
        is_best = state.update_best(val_acc, val_loss, epoch)
        state.epoch = epoch
        metrics = {
            "epoch": epoch, "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": val_loss,
            "val_acc": val_acc, "lr": lr_now, "best_val_acc": state.best_val_acc, "best_epoch": state.best_epoch,
            "is_best": is_best, "train_img_s": stats.seen / stats.seconds, "val_s": time.perf_counter() - t_val,
            "epoch_s": 0.0, "elapsed_min": 0.0, "bf16": self.amp, "precision": self.precision,
            **({"cut_short": stats.cut_short} if stats.cut_short else {}),
        }
        state.history.append(metrics)
        meta = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "train_config": cfg.to_dict(),
                "data_source": self.source, "fingerprint": self.data_fp, "precision": self.precision}
        if is_best:
            save_checkpoint(self.out / "best.pt", self.model, classes=self.classes, metadata={**meta, "kind": "best"})
        metrics["epoch_s"] = time.perf_counter() - t_epoch
        metrics["elapsed_min"] = self.clock() / 60
        lr.reserve_s = metrics["val_s"] * 1.5 + 5.0
        extra = state_extra(state, cfg, self.data_fp, self.opt, self.sched, self.data_gen, self.aug_gen, self.dev,
                            self.clock())
        save_checkpoint(self.out / "last.pt", self.model, classes=self.classes, metadata={**meta, "kind": "last"},
                        extra=extra)
        atomic_write_json(self.out / "history.json", state.history)
        return metrics

    @property
    def eval_precision(self) -> str:
        """Validation's precision: the run's on a GPU; fp32 on a CPU, where prediction always runs in fp32."""
        return self.precision if self.dev.type == "cuda" else "fp32"

    def result(self, status: str, message: str) -> TrainResult:
        """The TrainResult (also written as result.json); the model is left holding best.pt's weights."""
        state, best_path = self.state, self.out / "best.pt"
        best = state.best_epoch
        res = TrainResult(status=status, message=message, epochs=len(state.history), best_epoch=best,
                          best_val_acc=state.best_val_acc if best else float("nan"),
                          best_val_loss=state.best_val_loss if best else float("nan"), history=state.history,
                          out_dir=self.out, seconds=self.clock(), config=self.cfg, bf16=self.amp,
                          precision=self.precision)
        if best and best_path.exists():  # the recipe keeps the best checkpoint: leave it in the model
            self.model.load_state_dict(read_checkpoint(best_path)["state_dict"])
        atomic_write_json(self.out / "result.json", res.to_dict())
        return res


def _start(model: ResMaskNet, data: Any, cfg: TrainConfig, out: Path, dev: torch.device, resume: bool,
           precision: str | None = None) -> tuple[_Run, Any, Any]:
    """Check the data, seed, build the optimizer and generators, and restore last.pt when resuming (else
    remove an earlier run's checkpoints); returns the run and the train and val splits."""
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    train_split, val_split, classes = _splits(data, cfg, model.config)
    data_fp = fingerprint(train_split.images, train_split.labels, val_split.labels)
    if precision is None:
        precision = precision_for(dev, cfg.cpu_bf16, "training")
    elif precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: one of {', '.join(PRECISIONS)}")
    amp = precision == "bf16"
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    model.to(dev).to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg)
    sched = make_plateau(opt, cfg) if cfg.scheduler == "plateau" else None
    data_gen = torch.Generator().manual_seed(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    if resume and last_path.exists():
        state = restore(read_checkpoint(last_path), last_path, model=model, net_cfg=model.config, cfg=cfg,
                        data_fingerprint=data_fp, opt=opt, sched=sched, data_gen=data_gen, aug_gen=aug_gen, dev=dev)
    else:
        state = RunState()
        for stale in (out / "best.pt", last_path):  # starting over: never mistake an old run's files for ours
            stale.unlink(missing_ok=True)
    run = _Run(model=model, cfg=cfg, out=out, dev=dev, classes=classes, source=str(getattr(data, "source", "")),
               data_fp=data_fp, amp=amp, precision=precision, opt=opt, sched=sched, data_gen=data_gen,
               aug_gen=aug_gen, state=state, clock=RunClock(state.elapsed_before))
    return run, train_split, val_split


def train(model: ResMaskNet, data: Any, cfg: TrainConfig | None = None, *, out_dir: str | os.PathLike,
          callback: Callable[[int, dict[str, Any]], None] | None = None, resume: bool = True,
          device: str | torch.device | None = None, progress: bool = True, precision: str | None = None
          ) -> TrainResult:
    """Train `model` on `data.select("train")`, validating on `data.select("val")`; returns a TrainResult and
    leaves the best-validation weights in `model`.

    cfg: default `recipe_for(model)`. callback(epoch, metrics) runs after each epoch's checkpoints are written;
    it may raise StopTraining to end the run cleanly (any other exception propagates, state saved).
    resume: continue from out_dir/last.pt when it exists (refused if the model, recipe or data differ).
    precision: "bf16" or "fp32", decided by the caller (`runtime.precision_for`, as `ablate run` records it);
    default: decided here, the same way."""
    cfg = cfg if cfg is not None else recipe_for(model)
    dev = resolve_device(device)
    run, train_split, val_split = _start(model, data, cfg, Path(out_dir), dev, resume, precision)
    state, history, clock = run.state, run.state.history, run.clock
    if done := _finished(state, cfg):
        return run.result(*done)

    images, labels = torch.from_numpy(train_split.images).to(dev), torch.from_numpy(train_split.labels).to(dev)
    soft = torch.from_numpy(train_split.soft_labels).to(dev) if cfg.soft_labels else None
    val_images = torch.from_numpy(val_split.images).to(dev)
    n_batches = _batches_per_epoch(len(train_split), cfg)
    # time kept free at the end of a budget-scheduled run for the last validation and checkpoints
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes is not None else math.inf
    reserve_s = history[-1].get("val_s", 0.0) * 1.5 + 5.0 if history else 0.02 * budget_s
    lr = BatchSchedule(cfg, n_batches, len(history) * n_batches, clock, reserve_s)

    from tqdm.auto import tqdm

    epoch_bar = tqdm(total=expected_epochs(cfg, history, clock(), lr.reserve_s), initial=state.epoch, desc="epochs",
                     unit="epoch", disable=not progress)
    status: tuple[str, str] | None = None
    try:
        for epoch in range(state.epoch + 1, cfg.epochs + 1):
            last_epoch_s = history[-1]["epoch_s"] if history else None
            if not cfg.budget_schedule and last_epoch_s is not None and clock() + last_epoch_s > budget_s:
                status = ("time_limit", f"stopped before epoch {epoch}: {clock() / 60:.1f} min used, another "
                          f"epoch (~{last_epoch_s / 60:.1f} min) would exceed max_minutes={cfg.max_minutes}")
                break
            t_epoch = time.perf_counter()
            stats = train_one_epoch(model, run.opt, images, labels, soft, cfg, epoch=epoch, n_batches=n_batches,
                                    data_gen=run.data_gen, aug_gen=run.aug_gen, amp=run.amp, lr=lr, clock=clock,
                                    progress=progress)
            t_val = time.perf_counter()
            val_acc, val_loss = validate(model, val_images, val_split.labels, batch_size=cfg.eval_batch_size,
                                         max_batches=cfg.max_val_batches, precision=run.eval_precision)
            metrics = run.record(epoch, stats, val_acc, val_loss, lr, t_epoch, t_val)
            epoch_bar.total = expected_epochs(cfg, history, clock(), lr.reserve_s)  # with a time budget: re-estimated
            epoch_bar.update(1)
            epoch_bar.set_postfix(val_acc=f"{val_acc:.4f}", best=f"{state.best_val_acc:.4f}")
            if callback is not None:
                callback(epoch, dict(metrics))
            if status := _finished(state, cfg):
                break
    except StopTraining as exc:
        status = (exc.status, f"{exc} (after epoch {len(history)})")
    except _Diverged as exc:
        status = ("diverged", str(exc))
    except _OutOfTime as exc:
        status = ("time_limit", str(exc))
    finally:
        epoch_bar.close()
    return run.result(*(status or _finished(state, cfg) or ("completed", f"ran {len(history)} epochs")))
