"""ImageNet initialisation of the backbone from a local torchvision ResNet weights file.

Nothing is downloaded: the authors needed ImageNet weights to reach 74.14%, and a user who has them
(e.g. `resnet34-b627a593.pth`, torchvision's `ResNet34_Weights.IMAGENET1K_V1`) passes the path.
"""

from __future__ import annotations

import os

import torch

from resmasknet.model import ResMaskNet
from resmasknet.original import CheckpointMismatch

HOW_TO_GET = ("download torchvision's ImageNet weights on a connected machine, e.g. "
              "`python -c \"import torchvision; torchvision.models.resnet34(weights='IMAGENET1K_V1')\"` "
              "leaves resnet34-b627a593.pth in ~/.cache/torch/hub/checkpoints/, and copy that file here")


def load_imagenet_backbone(model: ResMaskNet, path: str | os.PathLike | None) -> dict[str, list[str]]:
    """Copy a torchvision ResNet state dict into the backbone (stem, layer1-4); masks and head stay as built.

    A grey model (`in_chans=1`) gets the RGB stem filters summed; a `native` stem (3x3) cannot take the
    7x7 filters and keeps its own initialisation. Returns {"loaded": [...], "skipped": [...]}.
    """
    if path is None or not os.path.exists(os.fspath(path)):
        raise FileNotFoundError(f"ImageNet weights file {path!r} not found (nothing is downloaded); {HOW_TO_GET}")
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    ours = model.state_dict()
    loaded, skipped, shapes = [], [], []
    new = {}
    for k, v in state.items():
        if k.startswith("fc."):
            skipped.append(k)  # 1000-class ImageNet head
            continue
        if k not in ours:
            raise CheckpointMismatch(f"{os.fspath(path)!r}: key {k!r} is not in the backbone; "
                                     f"is this a torchvision ResNet state dict?")
        if k == "conv1.weight" and v.shape[1] == 3 and ours[k].shape[1] == 1 and v.shape[2:] == ours[k].shape[2:]:
            v = v.sum(dim=1, keepdim=True)
        if v.shape != ours[k].shape:
            if k == "conv1.weight" and model.config.stem == "native":
                skipped.append(k)
                continue
            shapes.append(f"{k}: file {tuple(v.shape)} vs model {tuple(ours[k].shape)}")
            continue
        new[k] = v
        loaded.append(k)
    backbone = [k for k in ours if k.split(".")[0] in ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")]
    absent = [k for k in backbone if k not in state and not (k == "conv1.weight" and k in skipped)]
    if absent:
        shapes += [f"{k}: missing from the file" for k in absent]
    if shapes:
        raise CheckpointMismatch(
            f"{os.fspath(path)!r} does not fit backbone={model.config.backbone!r}, "
            f"base_width={model.config.base_width}:\n  " + "\n  ".join(shapes[:20]))
    model.load_state_dict(new, strict=False)
    return {"loaded": loaded, "skipped": skipped}
