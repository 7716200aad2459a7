"""`ablate models [NAME]`: the presets with their size and cost, or one preset's full config."""

from __future__ import annotations

import argparse
import json
from typing import Any

from resmasknet.config import ConfigError


def _parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`--set mask2.enabled=false --set base_width=32` -> overrides, values parsed as JSON when they can be."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. mask2.enabled=false")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the model presets (params, MACs, input) or print one config")
    p.add_argument("name", nargs="?", help="a preset: print its full config as JSON")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resmasknet.model import count_macs, count_parameters
    from resmasknet.registry import create_model, describe, get_config, list_models

    overrides = _parse_sets(args.set)
    if args.name:
        cfg = get_config(args.name, **overrides)
        model = create_model(cfg)
        print(json.dumps(cfg.to_dict(), indent=2))
        print(f"# {args.name}: {count_parameters(model):,} parameters, {count_macs(model) / 1e9:.3f} GMACs "
              f"at {cfg.input_size}x{cfg.input_size}x{cfg.in_chans}")
        return 0
    rows = []
    for name in list_models():
        model = create_model(name, **overrides)
        cfg = model.config
        masks = "".join(str(m.depth) if m.enabled else "-" for m in cfg.masks)
        rows.append((name, f"{count_parameters(model):,}", f"{count_macs(model) / 1e9:.3f}",
                     f"{cfg.input_size}x{cfg.input_size}x{cfg.in_chans}", cfg.backbone, masks, describe(name)))
    head = ("preset", "params", "GMACs", "input", "backbone", "masks", "description")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    for r in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6])
    print("\nmasks: depth of each stage's mask U-Net, '-' = off.  `ablate models NAME` prints a full config.")
    return 0
