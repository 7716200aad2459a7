"""The authors' checkpoints: load them into the paper preset, and export ours in their layout.

The authors' state dict uses our module names, plus alias keys: each mask block's projection shortcut is
registered twice (as `maskN.downsampleK` and as `maskN.convK.downsample`), so a checkpoint carries both
with equal values. We register it once (inside the block); loading checks each alias against its twin.

Example:
    >>> model = load_original("resmasking_dropout1_rot30.pth")   # {"net": state_dict} or a state dict
    >>> torch.save({"net": export_original(model)}, "ours_in_their_layout.pth")
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch
from torch import Tensor

from resmasknet.config import NetConfig
from resmasknet.model import MaskBlock, ResMaskNet

_ALIAS = re.compile(r"^(mask\d+)\.conv(\d+)\.downsample\.(.+)$")
_TWIN = re.compile(r"^(mask\d+)\.downsample(\d+)\.(.+)$")


class CheckpointMismatch(KeyError):
    """A state dict that does not fit the network; the message lists every offending key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def _mask_order(depth: int) -> list[str]:
    """The authors' registration order of a depth-d mask's children (their state-dict order)."""
    d = depth
    order = [f"downsample{k}" for k in range(1, d + 1)] + [f"conv{k}" for k in range(1, d + 1)]
    order += [f"downsample{k}" for k in range(d + 1, 2 * d + 1)]
    for k in range(d + 1, 2 * d):
        order += [f"up_pool{k}", f"conv{k}"]
    return order + [f"conv{2 * d}"]


def export_original(model: ResMaskNet) -> dict[str, Tensor]:
    """Our weights in the authors' layout and key order, alias keys included."""
    ours = model.state_dict()
    out: dict[str, Tensor] = {}
    top = ["conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.", "fc."]
    for prefix in top:
        out.update({k: v for k, v in ours.items() if k.startswith(prefix)})
    for i in range(1, 5):
        mask = getattr(model, f"mask{i}", None)
        if not isinstance(mask, MaskBlock):
            continue
        sub = {k[len(f"mask{i}."):]: v for k, v in ours.items() if k.startswith(f"mask{i}.")}
        for child in _mask_order(mask.depth):
            m = re.fullmatch(r"downsample(\d+)", child)
            if m:  # the top-level twin of convK.downsample
                src = f"conv{m.group(1)}.downsample."
                out.update({f"mask{i}.{child}.{k[len(src):]}": v for k, v in sub.items() if k.startswith(src)})
            else:
                out.update({f"mask{i}.{k}": v for k, v in sub.items() if k.startswith(child + ".")})
    missing = set(ours) - set(out)
    assert not missing, f"export_original left out {sorted(missing)}"
    return out


def to_ours(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The authors' state dict with alias keys folded into ours; an alias that differs from its twin is an
    error (such a checkpoint was not saved by their code)."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")  # saved from DataParallel
        twin = _TWIN.match(key)
        if twin:
            mask, k, rest = twin.groups()
            ours = f"{mask}.conv{k}.downsample.{rest}"
            if ours in state_dict and not torch.equal(state_dict[ours], value):
                raise CheckpointMismatch(f"alias key {key!r} differs from {ours!r}; they must hold one tensor")
            out[ours] = value
        else:
            out[key] = value
    return out


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Raise CheckpointMismatch listing missing, unexpected and mis-shaped keys."""
    want = model.state_dict()
    missing = [k for k in want if k not in state_dict]
    unexpected = [k for k in state_dict if k not in want]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(want[k].shape)}"
              for k in want if k in state_dict and tuple(state_dict[k].shape) != tuple(want[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                shown = "\n    ".join(items[:40]) + (f"\n    ... and {len(items) - 40} more" if len(items) > 40 else "")
                parts.append(f"  {len(items)} {title} key(s):\n    {shown}")
        raise CheckpointMismatch("state dict does not fit the network:\n" + "\n".join(parts))


def load_original(source: str | os.PathLike | Mapping[str, Tensor], config: NetConfig | None = None,
                  map_location: str | torch.device = "cpu") -> ResMaskNet:
    """Build the paper preset (or `config`) and load an authors' checkpoint into it.

    `source`: a path to `{"net": state_dict}` (their format) or a bare state dict, or the dict itself.
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {path!r} does not exist")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # pickle errors, truncated files
            raise CheckpointMismatch(f"cannot read checkpoint {path!r}: {exc}") from exc
    else:
        obj = source
    state = obj.get("net", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping):
        raise CheckpointMismatch(f"expected a state dict or {{'net': state_dict}}, got {type(state).__name__}")
    model = ResMaskNet(config or NetConfig())
    ours = to_ours(state)
    check_state_dict(model, ours)
    model.load_state_dict(ours, strict=True)
    return model.eval()
