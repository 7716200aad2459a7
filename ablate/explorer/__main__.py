"""The explorer's update time, measured: `python -m ablate.explorer STUDY [--faces 16]`.

Opens the study (or a checkpoint with --data), builds the explorer on `--faces` faces comparing its first two
variants, and times what a user does: the first view (models load, the faces' maps are computed), then each
control moved once more (stage, reduction, opacity, colour map, channel, a filter, a confusion cell; each is a
new picture from cached maps), an attribution (first: computed; again: cached) and an intervention. Prints a
table and, with --csv, appends it to a CSV with the CPU, thread count, torch version and date.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ablate.explorer", description=__doc__.splitlines()[0])
    p.add_argument("source", help="a study (name, file or output folder) or a checkpoint (with --data)")
    p.add_argument("--data", help="with a checkpoint: the data to look at (e.g. generated:n=600,seed=0)")
    p.add_argument("--faces", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5, help="times each cached move is repeated (median reported)")
    p.add_argument("--csv", help="append the rows to this CSV file")
    args = p.parse_args(argv)

    import torch

    from ablate.explorer import explorer_for
    from resmasknet.runtime import describe_device

    t0 = time.perf_counter()
    ex = explorer_for(args.source, data=args.data, n_faces=args.faces)
    t_open = time.perf_counter() - t0
    rows: list[tuple[str, float]] = [("open (predictions of every face)", t_open)]

    def timed(label: str, repeats: int = 1, **change) -> None:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            if change:
                ex.update(**change)
            ex.render()
            if ex.view.whatif_stage is not None:
                ex.whatif()
            times.append(time.perf_counter() - t)
        rows.append((label, statistics.median(times)))

    stages = ex.stages
    timed("first view (models load, maps computed)")
    timed("redraw, nothing changed", args.repeats)
    if stages:
        timed("stage moved (maps cached)", args.repeats, stage=stages[-1])
        timed("reduction: gain", args.repeats, reduction="gain")
        timed("reduction: top-k channels", args.repeats, reduction="topk")
        timed("channel slider", args.repeats, reduction="channel", channel=1)
    timed("opacity slider", args.repeats, opacity=0.4)
    timed("colour map", args.repeats, cmap="viridis")
    timed("filter: wrong in the reference", args.repeats, correct="wrong")
    timed("filter back: any", args.repeats, correct="any")
    timed("attribution saliency (first: computed)", explain="saliency")
    timed("attribution saliency (cached)", args.repeats, opacity=0.5)
    timed("attribution integrated gradients (first)", explain="ig")
    if stages:
        timed("what if: mask switched off (first)", explain="none", whatif_stage=stages[0], whatif="zero")
        timed("what if (cached)", args.repeats, opacity=0.6)
    shown = len(ex.select(dataclasses.replace(ex.view, correct="any", explain="none")))  # faces on screen
    cpu = describe_device("cpu")
    threads = torch.get_num_threads()
    print(f"explorer on {shown} faces ({args.faces} asked), {len(ex.view.columns)} model(s): {args.source}; {cpu}; "
          f"{threads} threads; torch {torch.__version__}")
    width = max(len(r[0]) for r in rows)
    for label, sec in rows:
        print(f"  {label:<{width}}  {sec * 1000:8.1f} ms")
    if args.csv:
        path = Path(args.csv)
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", newline="") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["date", "source", "faces", "models", "step", "ms", "cpu", "threads", "torch"])
            today = datetime.date.today().isoformat()
            for label, sec in rows:
                w.writerow([today, os.path.basename(os.path.normpath(args.source)), shown, len(ex.view.columns),
                            label, f"{sec * 1000:.1f}", cpu, threads, torch.__version__])
        print(f"appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
