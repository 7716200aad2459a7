"""A training run's saved state: what `last.pt` holds beyond the weights, and the checks before a resume.

`last.pt` is a standard checkpoint whose `extra` holds the optimizer, scheduler, both data/augmentation
generators, torch's RNG, the epoch, the best-so-far bookkeeping, the history, the time used and a
fingerprint of the training data. `restore` refuses a resume when the network, the recipe (beyond
`RESUMABLE_CHANGES`) or the data differ, so a resumed run ends where an uninterrupted one would.

Example:
    >>> state = RunState()                                       # a fresh run, or where an interrupted one stopped:
    >>> state = restore(read_checkpoint(path), path, model=model, net_cfg=model.config, cfg=cfg,
    ...                 data_fingerprint=fp, opt=opt, sched=sched, data_gen=data_gen, aug_gen=aug_gen, dev=dev)
    >>> state.update_best(val_acc, val_loss, epoch)              # True: save best.pt
    >>> extra = state_extra(state, cfg, fp, opt, sched, data_gen, aug_gen, dev, elapsed_s)   # last.pt's extra
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from resmasknet.config import NetConfig
from resmasknet.recipe import TrainConfig

__all__ = ["FINAL_STATUSES", "RESUMABLE_CHANGES", "RunState", "check_resumable", "fingerprint", "restore",
           "state_extra"]

# Statuses after which a resumed run has nothing left to do.
FINAL_STATUSES = ("completed", "early_stopped")
# Fields that may differ between a run and its resumption (they change no number already computed).
RESUMABLE_CHANGES = ("max_minutes", "eval_batch_size")


@dataclass
class RunState:
    """The bookkeeping that carries over from epoch to epoch (and across a resume)."""

    epoch: int = 0  # epochs completed
    best_val_acc: float = -math.inf
    best_val_loss: float = math.inf
    best_epoch: int = 0  # 0: no epoch validated yet
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)
    elapsed_before: float = 0.0  # training seconds of earlier sessions

    def update_best(self, val_acc: float, val_loss: float, epoch: int) -> bool:
        """Record one validation; True when it is the best so far (ties broken by the lower loss)."""
        is_best = val_acc > self.best_val_acc or (val_acc == self.best_val_acc and val_loss < self.best_val_loss)
        if is_best:
            self.best_val_acc, self.best_val_loss, self.best_epoch, self.bad_epochs = val_acc, val_loss, epoch, 0
        else:
            self.bad_epochs += 1
        return is_best


def fingerprint(*arrays: np.ndarray) -> str:
    """A cheap identity of the training data, so a resume on different data is refused."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(a)
        step = max(1, a.shape[0] // 512) if a.ndim else 1
        h.update(str(a.shape).encode())
        h.update(np.ascontiguousarray(a[::step]).tobytes())
    return h.hexdigest()[:16]


def rng_state(dev: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def set_rng_state(state: dict[str, Any], dev: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if dev.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], dev)


def state_extra(state: RunState, cfg: TrainConfig, data_fingerprint: str, opt: torch.optim.Optimizer,
                sched: Any, data_gen: torch.Generator, aug_gen: torch.Generator, dev: torch.device,
                elapsed_s: float) -> dict[str, Any]:
    """The `extra` of last.pt after `state.epoch` epochs: everything `restore` needs."""
    return {
        "epoch": state.epoch, "train_config": cfg.to_dict(), "fingerprint": data_fingerprint,
        "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
        "data_gen": data_gen.get_state(), "aug_gen": aug_gen.get_state(), "rng": rng_state(dev),
        "best_val_acc": state.best_val_acc, "best_val_loss": state.best_val_loss, "best_epoch": state.best_epoch,
        "bad_epochs": state.bad_epochs, "history": state.history, "elapsed_s": elapsed_s,
    }


def check_resumable(ckpt: dict[str, Any], path: Path, net_cfg: NetConfig, cfg: TrainConfig,
                    data_fingerprint: str) -> None:
    """Raise ValueError (naming `path` and the way out) unless `ckpt` continues this network, recipe and data."""
    ex = ckpt.get("extra") or {}
    if "optimizer" not in ex:
        raise ValueError(f"{path}: holds no training state; pass resume=False / --no-resume to start over")
    if NetConfig.from_dict(ckpt["config"]) != net_cfg:
        raise ValueError(f"{path}: was trained with another network config; use another out_dir "
                         "or resume=False / --no-resume")
    old = TrainConfig.from_dict(ex["train_config"]).to_dict()
    new = cfg.to_dict()
    allowed = set(RESUMABLE_CHANGES) | ({"epochs"} if cfg.scheduler in ("plateau", "none") else set())
    if cfg.budget_schedule:
        allowed.discard("max_minutes")  # the schedule itself follows the budget
    diff = sorted(k for k in old if k not in allowed and old[k] != new[k])
    if diff:
        raise ValueError(f"{path}: cannot resume, the recipe differs in {diff}; use another out_dir or "
                         "resume=False / --no-resume")
    if ex.get("fingerprint") != data_fingerprint:
        raise ValueError(f"{path}: cannot resume on different data (fingerprint mismatch); "
                         "use another out_dir or resume=False / --no-resume")


def restore(ckpt: dict[str, Any], path: Path, *, model: nn.Module, net_cfg: NetConfig, cfg: TrainConfig,
            data_fingerprint: str, opt: torch.optim.Optimizer, sched: Any, data_gen: torch.Generator,
            aug_gen: torch.Generator, dev: torch.device) -> RunState:
    """Check `ckpt` (a read last.pt) with `check_resumable`, load its weights and training state into the
    given objects, and return the run's bookkeeping."""
    check_resumable(ckpt, path, net_cfg, cfg, data_fingerprint)
    ex = ckpt["extra"]
    model.load_state_dict(ckpt["state_dict"])
    opt.load_state_dict(ex["optimizer"])
    if sched is not None:
        sched.load_state_dict(ex["scheduler"])
    data_gen.set_state(ex["data_gen"])
    aug_gen.set_state(ex["aug_gen"])
    set_rng_state(ex["rng"], dev)
    return RunState(epoch=int(ex["epoch"]), best_val_acc=float(ex["best_val_acc"]),
                    best_val_loss=float(ex["best_val_loss"]), best_epoch=int(ex["best_epoch"]),
                    bad_epochs=int(ex["bad_epochs"]), history=list(ex["history"]),
                    elapsed_before=float(ex["elapsed_s"]))
