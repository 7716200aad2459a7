"""Named presets: each is a `NetConfig` value in one table, built by `create_model(name, **overrides)`.

Example:
    >>> model = create_model("resmasknet_cpu", **{"mask4.enabled": False})
    >>> list_models()[:2]
    ['resmasknet_cpu', 'resmasknet_cpu_unapplied']
"""

from __future__ import annotations

from typing import Any

from resmasknet.config import MaskConfig, NetConfig
from resmasknet.model import ResMaskNet

_OFF = tuple(MaskConfig(enabled=False, depth=d) for d in (4, 3, 2, 1))
_UNAPPLIED = tuple(MaskConfig(depth=d, application="unapplied") for d in (4, 3, 2, 1))
# Sized for FER's native 48-px faces on a 2-core CPU: ResNet-18 layout at base width 16, stage sizes
# 48/24/12/6. Masks of depth 3/3/2/1 put every bottleneck at 12 or 6 px like the paper's 7 px; width 1
# (no channel growth) because at width 2 the stage-1 mask alone costs ten times the backbone at 48 px.
_CPU = NetConfig(backbone="resnet18", base_width=16, stem="native", input_size=48, in_chans=1,
                 drop_rate=0.4, masks=tuple(MaskConfig(depth=d, width=1.0) for d in (3, 3, 2, 1)))

PRESETS: dict[str, tuple[NetConfig, str]] = {}


def register_preset(name: str, config: NetConfig, description: str) -> None:
    if name in PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    PRESETS[name] = (config, description)


register_preset("resmasknet_paper", NetConfig(),
                "the authors' resmasking_dropout1: ResNet-34, masks depth 4/3/2/1, 224 px (137.8M params)")
register_preset("resnet34_paper", NetConfig(masks=_OFF),
                "the paper's ResNet-34 baseline: resmasknet_paper without masks (21.3M params)")
register_preset("resmasknet_paper_unapplied", NetConfig(masks=_UNAPPLIED),
                "the authors' resmasking_naive: masks built and run but not applied (parameter-matched control)")
register_preset("resmasknet_cpu", _CPU,
                "CPU-sized ResMaskingNet for native 48-px grey faces (ResNet-18 layout, width 16)")
register_preset("resmasknet_cpu_unapplied", _CPU.replace(**{"masks.application": "unapplied"}),
                "resmasknet_cpu with masks run but not applied (parameter- and compute-matched control)")
register_preset("resnet_cpu", _CPU.replace(**{"masks.enabled": False}),
                "resmasknet_cpu without masks (plain ResNet-18 layout, width 16, 48 px)")
register_preset("resmasknet_tiny", _CPU.replace(base_width=8, masks=tuple(MaskConfig(depth=d) for d in (2, 2, 2, 1))),
                "a very small ResMaskingNet for tests and the quickstart study (48 px, width 8, masks width 2)")


def list_models() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str, **overrides: Any) -> NetConfig:
    if name not in PRESETS:
        import difflib

        near = difflib.get_close_matches(name, PRESETS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise KeyError(f"unknown model {name!r}{hint}; presets: {', '.join(list_models())}")
    cfg = PRESETS[name][0]
    return cfg.replace(**overrides) if overrides else cfg


def create_model(name: str | NetConfig, *, pretrained: str | None = None, seed: int | None = None,
                 **overrides: Any) -> ResMaskNet:
    """Build a preset (or a config), with `NetConfig.replace` overrides such as `**{"mask2.depth": 1}`.

    `seed`: the initial weights, each module's drawn from (seed, module name), so two variants built with one
    seed share the initial weights of every module they have in common; None draws from torch's global RNG.

    `pretrained`: a local torchvision ResNet weights file for the backbone (nothing is downloaded).
    """
    cfg = name if isinstance(name, NetConfig) else get_config(name)
    model = ResMaskNet(cfg.replace(**overrides) if overrides else cfg, seed=seed)
    if pretrained is not None:
        from resmasknet.pretrained import load_imagenet_backbone

        load_imagenet_backbone(model, pretrained)
    return model


def describe(name: str) -> str:
    return PRESETS[name][1]
