"""One frozen config that describes a ResMaskingNet completely.

A network is rebuilt from its config alone (checkpoints and tracked runs store `to_dict()`), so every
choice that changes the architecture lives here, validated up front with errors that name the field.

Example:
    >>> cfg = NetConfig()                                  # the paper's network
    >>> cfg = cfg.replace(**{"mask2.enabled": False, "masks.activation": "sigmoid"})
    >>> NetConfig.from_json(cfg.to_json()) == cfg
    True
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

BACKBONES = {
    # name: (block type, blocks per stage); widths are base_width * (1, 2, 4, 8) * expansion
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}
STEMS = {
    # imagenet: 7x7/2 conv + 3x3/2 max-pool, for 224-px input (the paper, Table I and the authors' code)
    "imagenet": 4,
    # native: 3x3/1 conv, no pool, for FER's native 48-px faces (stage 1 runs at 48x48)
    "native": 1,
}
ACTIVATIONS = ("softmax", "sigmoid", "tanh", "spatial_softmax")
APPLICATIONS = ("residual", "multiply", "unapplied")
NUM_STAGES = 4


class ConfigError(ValueError):
    """An invalid config value; the message names the field and the allowed values."""


def _check_choice(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{name}={value!r} must be an integer {rng}")


@dataclass(frozen=True)
class MaskConfig:
    """The masking block after one ResNet stage."""

    enabled: bool = True
    # U-Net levels: depth d has d encoder blocks, d-1 max-pools; paper: 4, 3, 2, 1 for stages 1-4
    depth: int = 1
    # channel growth per U-Net level (paper: 2, so every paper mask bottleneck has 1024 channels)
    width: float = 2.0
    # paper: softmax over channels (each pixel's mask sums to 1); sigmoid is the commented-out variant
    activation: str = "softmax"
    # residual: x * (1 + m) (paper); multiply: x * m; unapplied: branch runs, output ignored
    # (the parameter- and compute-matched control, the authors' `resmasking_naive`)
    application: str = "residual"

    def validate(self, prefix: str = "mask") -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"{prefix}.enabled={self.enabled!r} must be true or false")
        _check_int(f"{prefix}.depth", self.depth, 1, 6)
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not 1 <= self.width <= 4:
            raise ConfigError(f"{prefix}.width={self.width!r} must be a number in [1, 4]")
        _check_choice(f"{prefix}.activation", self.activation, ACTIVATIONS)
        _check_choice(f"{prefix}.application", self.application, APPLICATIONS)


PAPER_MASKS = tuple(MaskConfig(depth=d) for d in (4, 3, 2, 1))


@dataclass(frozen=True)
class NetConfig:
    """A complete ResMaskingNet description; the defaults are the authors' `resmasking_dropout1`."""

    backbone: str = "resnet34"
    base_width: int = 64  # stage widths base * (1, 2, 4, 8); the paper uses 64
    stem: str = "imagenet"
    input_size: int = 224  # the 48-px face is resized to this on the device
    in_chans: int = 3  # 3: grey copied to RGB (paper, ImageNet init); 1: grey as is
    num_classes: int = 7
    drop_rate: float = 0.4  # dropout before the linear head (resmasking_dropout1)
    masks: tuple[MaskConfig, ...] = field(default_factory=lambda: PAPER_MASKS)

    def __post_init__(self) -> None:
        # JSON gives lists and dicts: normalise so equality and hashing hold after a round trip.
        masks = tuple(MaskConfig(**m) if isinstance(m, dict) else m for m in self.masks)
        masks = tuple(dataclasses.replace(m, width=float(m.width))
                      if isinstance(m, MaskConfig) and type(m.width) is int else m for m in masks)
        object.__setattr__(self, "masks", masks)
        self.validate()

    # ---- derived facts -------------------------------------------------------------------
    @property
    def block(self) -> str:
        return BACKBONES[self.backbone][0]

    @property
    def layers(self) -> tuple[int, ...]:
        return BACKBONES[self.backbone][1]

    @property
    def expansion(self) -> int:
        return 4 if self.block == "bottleneck" else 1

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.base_width * 2**i * self.expansion for i in range(NUM_STAGES))

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """Spatial size of each stage's output, by the conv arithmetic (every stride-2 op gives ceil(s/2))."""
        s = self.input_size
        if self.stem == "imagenet":
            s = -(-s // 2)
            s = -(-s // 2)
        sizes = []
        for i in range(NUM_STAGES):
            if i > 0:
                s = -(-s // 2)
            sizes.append(s)
        return tuple(sizes)

    def max_mask_depth(self, stage: int) -> int:
        """Deepest U-Net that fits stage `stage` (0-based): its d-1 pools must divide the size exactly."""
        size, d = self.stage_sizes[stage], 1
        while size % 2**d == 0 and size // 2**d >= 1 and d < 6:
            d += 1
        return d

    # ---- validation ------------------------------------------------------------------------
    def validate(self) -> None:
        _check_choice("backbone", self.backbone, tuple(BACKBONES))
        _check_int("base_width", self.base_width, 4, 512)
        _check_choice("stem", self.stem, tuple(STEMS))
        _check_int("input_size", self.input_size, 8, 1024)
        _check_int("in_chans", self.in_chans, 1, 3)
        if self.in_chans == 2:
            raise ConfigError("in_chans=2 is not allowed; choose 1 (grey) or 3 (grey copied to RGB)")
        _check_int("num_classes", self.num_classes, 2)
        if isinstance(self.drop_rate, bool) or not isinstance(self.drop_rate, (int, float)) \
                or not 0 <= self.drop_rate < 1:
            raise ConfigError(f"drop_rate={self.drop_rate!r} must be a number in [0, 1)")
        if len(self.masks) != NUM_STAGES:
            raise ConfigError(f"masks must have {NUM_STAGES} entries (one per stage), got {len(self.masks)}")
        for i, m in enumerate(self.masks):
            if not isinstance(m, MaskConfig):
                raise ConfigError(f"mask{i + 1} must be a MaskConfig or a dict, got {type(m).__name__}")
            m.validate(f"mask{i + 1}")
            if m.enabled and m.depth > self.max_mask_depth(i):
                raise ConfigError(
                    f"mask{i + 1}.depth={m.depth} does not fit stage {i + 1}'s {self.stage_sizes[i]}px features "
                    f"(input_size={self.input_size}, stem={self.stem!r}); allowed depths: "
                    f"1..{self.max_mask_depth(i)}")

    # ---- editing -----------------------------------------------------------------------------
    def replace(self, **changes: Any) -> NetConfig:
        """A copy with fields changed. Keys: any top-level field; `maskN.<field>` (N = 1..4) for one stage;
        `masks.<field>` for all four; `maskN` or `masks` with a dict of mask fields; `masks` with a list."""
        top: dict[str, Any] = {}
        masks = [dataclasses.asdict(m) for m in self.masks]
        mask_fields = {f.name for f in dataclasses.fields(MaskConfig)}
        # whole-list first, then all-stage fields, then single stages, so the most specific wins
        order = sorted(changes.items(), key=lambda kv: (0 if kv[0] == "masks" and isinstance(kv[1], (list, tuple))
                                                        else 1 if kv[0].startswith("masks") else 2))
        for key, value in order:
            head, _, sub = key.partition(".")
            if head == "masks" and not sub and isinstance(value, (list, tuple)):
                if len(value) != NUM_STAGES:
                    raise ConfigError(f"masks must have {NUM_STAGES} entries, got {len(value)}")
                masks = [dataclasses.asdict(v) if isinstance(v, MaskConfig) else dict(v) for v in value]
                continue
            if head == "masks" or (head.startswith("mask") and head[4:].isdigit()):
                stages = range(NUM_STAGES) if head == "masks" else [int(head[4:]) - 1]
                if head != "masks" and not 0 <= stages[0] < NUM_STAGES:
                    raise ConfigError(f"{head} does not exist; stages are mask1..mask{NUM_STAGES}")
                items = {sub: value}.items() if sub else dict(value).items()
                for fname, fval in items:
                    if fname not in mask_fields:
                        raise ConfigError(
                            f"{head}.{fname} is not a mask field; fields: {', '.join(sorted(mask_fields))}")
                    for s in stages:
                        masks[s][fname] = fval
                continue
            valid = {f.name for f in dataclasses.fields(self)} - {"masks"}
            if sub or head not in valid:
                raise ConfigError(f"{key!r} is not a config field; fields: {', '.join(sorted(valid))}, "
                                  f"maskN.<field>, masks.<field>")
            top[head] = value
        return dataclasses.replace(self, **top, masks=tuple(MaskConfig(**m) for m in masks))

    # ---- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["masks"] = [dict(m) for m in d["masks"]]
        return d

    def flat(self) -> dict[str, Any]:
        """Flattened `maskN.field` keys, for tracking params."""
        d = {k: v for k, v in self.to_dict().items() if k != "masks"}
        for i, m in enumerate(self.masks):
            for k, v in dataclasses.asdict(m).items():
                d[f"mask{i + 1}.{k}"] = v
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetConfig:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - valid
        if unknown:
            raise ConfigError(f"unknown config field(s) {sorted(unknown)}; fields: {', '.join(sorted(valid))}")
        d = dict(d)
        if "masks" in d:
            masks = []
            mask_fields = {f.name for f in dataclasses.fields(MaskConfig)}
            for i, m in enumerate(d["masks"]):
                if isinstance(m, dict) and set(m) - mask_fields:
                    raise ConfigError(f"mask{i + 1}: unknown field(s) {sorted(set(m) - mask_fields)}; "
                                      f"fields: {', '.join(sorted(mask_fields))}")
                masks.append(MaskConfig(**m) if isinstance(m, dict) else m)
            d["masks"] = tuple(masks)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> NetConfig:
        return cls.from_dict(json.loads(s))
