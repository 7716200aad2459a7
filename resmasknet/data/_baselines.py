"""Baselines that check the generated data is what it claims: a linear probe on raw pixels must stay low
(the classes are not separable by pixel statistics), a small CNN must learn them (the evidence is there).

Library code: progress goes to `logging`, never to stdout. `python -m resmasknet.data [n]` runs the check and
prints the numbers.

Example:
    >>> res = baseline_check(1400, cnn=False, linear="ridge", strengths=(1e3,), verbose=False)
    >>> res["linear_test_acc"] <= 0.6
    True
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from resmasknet.data._core import FaceData
from resmasknet.data._generated import GeneratorConfig, generate_faces, save_examples

__all__ = ["baseline_check", "main"]

log = logging.getLogger(__name__)


def baseline_check(
    n: int = 6000,
    seed: int = 0,
    size: int = 48,
    *,
    cnn: bool = True,
    epochs: int = 10,
    linear: str = "logistic",
    strengths: tuple[float, ...] | None = None,
    verbose: bool = True,
    **options: Any,
) -> dict[str, float]:
    """Measure the two properties the generated data must have.

    Linear probe on raw pixels (standardised), trained on train, regularisation picked on val,
    scored on test: must stay <= 60%. `linear="logistic"` is sklearn's LogisticRegression (the
    reference number; strengths are its C values), `"ridge"` a closed-form RidgeClassifier (same
    question, seconds instead of minutes; strengths are alphas). A small CNN (3 conv layers, a few
    CPU epochs) must get far higher (>= 90%). Returns the numbers; options go to GeneratorConfig. Progress
    is logged (logger `resmasknet.data._baselines`) at INFO, or at DEBUG with verbose=False.
    """
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    level = logging.INFO if verbose else logging.DEBUG
    t0 = time.perf_counter()
    data = generate_faces(GeneratorConfig(n=n, seed=seed, size=size, **options))
    out: dict[str, float] = {"n": float(n), "generate_s": time.perf_counter() - t0}
    out["images_per_s"] = n / out["generate_s"]
    tr, va, te = (data.select(s) for s in ("train", "val", "test"))

    def flat(d: FaceData) -> np.ndarray:
        return d.images.reshape(len(d), -1).astype(np.float64)

    scaler = StandardScaler().fit(flat(tr))
    xtr, xva, xte = (scaler.transform(flat(d)) for d in (tr, va, te))
    if linear == "logistic":
        grid = strengths or (0.001, 0.01, 0.1)

        def make(c: float) -> Any:
            return LogisticRegression(C=c, max_iter=500)
    elif linear == "ridge":
        grid = strengths or (1e2, 1e3, 1e4, 1e5)

        def make(c: float) -> Any:
            return RidgeClassifier(alpha=c)
    else:
        raise ValueError(f"linear={linear!r}: expected 'logistic' or 'ridge'")
    best: tuple[float, float, Any] = (-1.0, 0.0, None)
    t0 = time.perf_counter()
    for c in grid:
        clf = make(c).fit(xtr, tr.labels)
        acc = float(clf.score(xva, va.labels))
        log.log(level, "linear (%s) %g: val %.3f", linear, c, acc)
        if acc > best[0]:
            best = (acc, c, clf)
    out["linear_strength"], out["linear_val_acc"] = best[1], best[0]
    out["linear_test_acc"] = float(best[2].score(xte, te.labels))
    out["linear_train_acc"] = float(best[2].score(xtr, tr.labels))
    out["linear_s"] = time.perf_counter() - t0
    if cnn:
        out.update(_cnn_check(tr, va, te, epochs=epochs, seed=seed, level=level))
    log.log(level, "baseline check: %s", {k: round(v, 4) for k, v in out.items()})
    return out


def _cnn_check(tr: FaceData, va: FaceData, te: FaceData, *, epochs: int, seed: int, level: int) -> dict[str, float]:
    """Train a 3-conv-layer CNN on CPU for a few epochs; report val/test accuracy."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    net = nn.Sequential(
        block(1, 16), block(16, 32), block(32, 64), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 7)
    )

    def tensor(d: FaceData) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(d.images).float().div(255).sub(0.5).div(0.25).unsqueeze(1)
        return x, torch.from_numpy(d.labels)

    xtr, ytr = tensor(tr)
    steps = epochs * ((len(tr) + 63) // 64)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()

    def accuracy(d: FaceData) -> float:
        net.eval()
        x, y = tensor(d)
        with torch.no_grad():
            pred = torch.cat([net(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
        net.train()
        return float((pred == y).float().mean())

    for epoch in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(perm), 64):
            j = perm[i : i + 64]
            loss = nn.functional.cross_entropy(net(xtr[j]), ytr[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if log.isEnabledFor(level):
            log.log(level, "cnn epoch %d: loss %.3f val %.3f (%.0fs)", epoch + 1, loss.item(), accuracy(va),
                    time.perf_counter() - t0)
    return {"cnn_val_acc": accuracy(va), "cnn_test_acc": accuracy(te), "cnn_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    """Command line `[n] [examples.png]`: run the full check on n faces (default 6000), print the numbers,
    save a grid of example faces (default generated_examples.png in the system's temporary folder)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = baseline_check(int(args[0]) if args else 6000)
    print({k: round(v, 4) for k, v in result.items()})
    path = args[1] if len(args) > 1 else str(Path(tempfile.gettempdir()) / "generated_examples.png")
    save_examples(generate_faces(n=70), path)
    print(f"example faces: {path}")
    return 0

