"""ResMaskingNet, built from a `NetConfig`.

Module names follow the authors' code (`conv1`, `bn1`, `layer1..4`, `fc`, `mask1..4`, and inside a mask
`convK`, `up_poolK`), so their checkpoints map onto ours by dropping alias keys (see `original.py`).
Every ReLU is its own non-inplace module, so Captum's DeepLift and GuidedGradCam work.

Stable taps, for hooks, Captum layer methods and reports (N = 1..4):
    layerN   the stage's features before its mask (module `layerN`, output)
    maskN    the mask after its activation (module `maskN`, output; absent when the mask is off)
    refineN  the refined features that go on (module `refineN`, output; equals layerN without a mask)
`model.forward_taps(x)` returns the logits and a dict of all of them.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from resmasknet.config import NUM_STAGES, MaskConfig, NetConfig

TAP_KINDS = ("layer", "mask", "refine")


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class StridedConv1x1(nn.Conv2d):
    """A 1x1 convolution with stride s, computed as subsample-then-convolve: the same numbers and weights,
    a quarter of the work, and it avoids a crash in oneDNN's channels_last weight gradient for strided
    1x1 convolutions with few input channels (seen with torch 2.14 on CPU)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(cin, cout, 1, bias=False)
        self.subsample = stride

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x[:, :, :: self.subsample, :: self.subsample])


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return StridedConv1x1(cin, cout, stride) if stride > 1 else nn.Conv2d(cin, cout, 1, bias=False)


def projection(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample
        self.relu3 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + identity)


def unet_block(cin: int, cout: int) -> BasicBlock:
    """A mask U-Net block: a BasicBlock with a 1x1-conv+BN projection shortcut when widths differ."""
    return BasicBlock(cin, cout, downsample=projection(cin, cout) if cin != cout else None)


class MaskActivation(nn.Module):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "softmax":  # over channels: each pixel's mask sums to 1 (the authors' choice)
            return torch.softmax(x, dim=1)
        if self.kind == "sigmoid":
            return torch.sigmoid(x)
        if self.kind == "tanh":
            return torch.tanh(x)
        # spatial_softmax: each channel's mask sums to 1 over positions, times H*W so its mean is 1
        n, c, h, w = x.shape
        return torch.softmax(x.reshape(n, c, h * w), dim=2).reshape(n, c, h, w) * (h * w)

    def extra_repr(self) -> str:
        return self.kind


def module_seed(seed: int, name: str) -> int:
    """The seed of one module's initial weights: a hash of (seed, qualified module name). Two networks
    built with the same seed start every module they share (same name, same shape) from the same weights,
    so variants of a study compare with common random numbers."""
    digest = hashlib.sha256(f"resmasknet-init:{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _fan_in(weight: Tensor) -> int:
    return int(weight.shape[1] * weight[0][0].numel()) if weight.dim() > 1 else int(weight.shape[0])


def init_weights(model: nn.Module, seed: int) -> None:
    """Initialise every parameter of `model` from per-module generators seeded by (seed, module name).

    Convolutions: He-normal, fan out (torchvision's ResNet); BatchNorm: identity (weight 1, bias 0, fresh
    running statistics); Linear and ConvTranspose2d: PyTorch's default (Kaiming-uniform, a=sqrt(5), and
    uniform bias); the last BatchNorm of every residual branch inside a masking block starts at zero, so
    each mask block starts as the identity. The global RNG is neither used nor advanced."""
    zero_bn = {id(m.bn2) for mb in model.modules() if isinstance(mb, MaskBlock)
               for m in mb.modules() if isinstance(m, BasicBlock)}
    with torch.no_grad():
        for name, m in model.named_modules():
            if not any(True for _ in m.parameters(recurse=False)) and not isinstance(m, nn.BatchNorm2d):
                continue
            g = torch.Generator().manual_seed(module_seed(seed, name))
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Linear, nn.ConvTranspose2d)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                if m.bias is not None:
                    # PyTorch's default bias bound; ConvTranspose2d's fan-in is computed on its (in, out)
                    # weight layout exactly as torch's _ConvNd.reset_parameters does
                    bound = 1 / math.sqrt(_fan_in(m.weight)) if _fan_in(m.weight) > 0 else 0.0
                    nn.init.uniform_(m.bias, -bound, bound, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                nn.init.zeros_(m.weight) if id(m) in zero_bn else nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            else:  # a module type this network does not use: its own default, drawn from g
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(module_seed(seed, name))
                    m.reset_parameters()


class MaskBlock(nn.Module):
    """The masking block: a U-Net of BasicBlocks that maps C channels to a C-channel mask.

    Depth d: encoder blocks conv1..conv{d} (C -> wC -> ... -> w^d C, a 2x2 max-pool between levels),
    decoder up_pool{k} (ConvTranspose 2x2/2 + BN + ReLU) + skip concat + conv{k} for k = d+1 .. 2d-1,
    and a last block conv{2d} back to C channels; then the activation.
    """

    def __init__(self, channels: int, cfg: MaskConfig):
        super().__init__()
        d = cfg.depth
        self.depth = d
        widths = [channels] + [int(round(channels * cfg.width**i)) for i in range(1, d + 1)]
        for i in range(d):
            setattr(self, f"conv{i + 1}", unet_block(widths[i], widths[i + 1]))
        # one pool module per level (no parameters): Captum's DeepLift needs each module used once
        self.pools = nn.ModuleList([nn.MaxPool2d(kernel_size=2) for _ in range(d - 1)])
        # decoder level j goes from widths[d-j] back to widths[d-j-1], concatenating the encoder skip
        for j in range(d - 1):
            k = d + 1 + j
            hi, lo = widths[d - j], widths[d - j - 1]
            up = nn.Sequential(nn.ConvTranspose2d(hi, lo, 2, stride=2), nn.BatchNorm2d(lo), nn.ReLU())
            setattr(self, f"up_pool{k}", up)
            setattr(self, f"conv{k}", unet_block(2 * lo, lo))
        setattr(self, f"conv{2 * d}", unet_block(widths[1], channels))
        self.activation = MaskActivation(cfg.activation)

    def forward(self, x: Tensor) -> Tensor:
        d = self.depth
        skips = []
        for i in range(1, d + 1):
            x = getattr(self, f"conv{i}")(x)
            if i < d:
                skips.append(x)
                x = self.pools[i - 1](x)
        for k in range(d + 1, 2 * d):
            x = getattr(self, f"up_pool{k}")(x)
            x = getattr(self, f"conv{k}")(torch.cat([x, skips.pop()], dim=1))
        x = getattr(self, f"conv{2 * d}")(x)
        return self.activation(x)


class Refine(nn.Module):
    """Applies a stage's mask; its output is the `refineN` tap."""

    def __init__(self, application: str | None):
        super().__init__()
        self.application = application  # None: no mask at this stage

    def forward(self, x: Tensor, m: Tensor | None = None) -> Tensor:
        if m is None or self.application in (None, "unapplied"):
            return x
        if self.application == "residual":
            return x * (1 + m)
        return x * m

    def extra_repr(self) -> str:
        return str(self.application)


class ResMaskNet(nn.Module):
    """A ResNet whose stages are each followed by an optional masking block (see `NetConfig`)."""

    def __init__(self, config: NetConfig, *, seed: int | None = None):
        """seed: the initial weights (see `init_weights`); None draws one from torch's global generator,
        so `torch.manual_seed(s)` before building still gives a reproducible network."""
        super().__init__()
        self.config = config
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)).item())
        self.init_seed = int(seed)
        # building draws default initial weights from the global generator; keep it untouched (they are
        # all replaced by the seeded ones below), so a seeded network never shifts anyone else's random numbers
        with torch.random.fork_rng(devices=[]):
            self._build(config)
        init_weights(self, self.init_seed)

    def _build(self, config: NetConfig) -> None:
        block = BasicBlock if config.block == "basic" else Bottleneck
        w = config.base_width
        if config.stem == "imagenet":
            self.conv1 = nn.Conv2d(config.in_chans, w, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(config.in_chans, w, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        cin = w
        for i, n_blocks in enumerate(config.layers):
            planes, stride = w * 2**i, (1 if i == 0 else 2)
            ds = projection(cin, planes * block.expansion, stride) \
                if stride != 1 or cin != planes * block.expansion else None
            blocks = [block(cin, planes, stride, ds)]
            cin = planes * block.expansion
            blocks += [block(cin, planes) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Dropout(config.drop_rate), nn.Linear(cin, config.num_classes))
        for i, mc in enumerate(config.masks):
            if mc.enabled:
                setattr(self, f"mask{i + 1}", MaskBlock(config.stage_channels[i], mc))
            setattr(self, f"refine{i + 1}", Refine(mc.application if mc.enabled else None))

    # ---- forward ---------------------------------------------------------------------------
    def stage(self, i: int) -> tuple[nn.Module, nn.Module | None, nn.Module]:
        """The (layer, mask or None, refine) modules of stage i (1-based)."""
        return getattr(self, f"layer{i}"), getattr(self, f"mask{i}", None), getattr(self, f"refine{i}")

    def forward_features(self, x: Tensor, taps: dict[str, Tensor] | None = None) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, NUM_STAGES + 1):
            layer, mask, refine = self.stage(i)
            x = layer(x)
            m = mask(x) if mask is not None else None
            if taps is not None:
                taps[f"layer{i}"] = x
                if m is not None:
                    taps[f"mask{i}"] = m
            x = refine(x, m)
            if taps is not None:
                taps[f"refine{i}"] = x
        return x

    def forward_head(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_taps(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and every tap (`layerN`, `maskN`, `refineN`) in one pass."""
        taps: dict[str, Tensor] = {}
        logits = self.forward_head(self.forward_features(x, taps))
        return logits, taps

    def tap_modules(self) -> dict[str, nn.Module]:
        """The module behind each tap name, for hooks and Captum layer methods."""
        out: dict[str, nn.Module] = {}
        for i in range(1, NUM_STAGES + 1):
            layer, mask, refine = self.stage(i)
            out[f"layer{i}"] = layer
            if mask is not None:
                out[f"mask{i}"] = mask
            out[f"refine{i}"] = refine
        return out

    # ---- input handling -------------------------------------------------------------------
    def prepare_input(self, images: Tensor) -> Tensor:
        """uint8 or float grey faces [B, H, W] or [B, 1, H, W] -> the network's input: scaled to [0, 1],
        resized to `input_size` (bilinear), copied to `in_chans` channels. Runs on the images' device."""
        x = images
        if x.dim() == 3:
            x = x.unsqueeze(1)
        x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
        size = self.config.input_size
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if self.config.in_chans == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return x.contiguous(memory_format=torch.channels_last)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (a tensor shared under two names counts once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def count_macs(model: ResMaskNet, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass per image, counted with torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = model.config
    device = next(model.parameters()).device  # where the model lives: a trained one may be on a GPU
    x = torch.zeros(batch, cfg.in_chans, cfg.input_size, cfg.input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // batch
