"""A faked CUDA machine for tests on a machine without a GPU: `torch.cuda` answers for GPUs of chosen compute
capabilities (a T4 is 7.5, a V100 7.0, an A100 8.0), and what the toolkit puts on "cuda:N" runs on the CPU.

What the code decides from the device (precision, device checks, worker placement) is what it would decide on
such a GPU; the arithmetic is the CPU's, so a faked run can be compared with a CPU run bit for bit. The fake
records what the code asked of the GPU: the devices tensors and models were moved to (`moves`), every autocast
entered (`autocasts`: device type asked for, dtype, enabled) and `set_device` calls.

    fake = FakeCuda(monkeypatch, [(8, 0), (7, 5)])      # a mixed node: cuda:0 an A100, cuda:1 a T4
    ...
    assert not fake.bf16_used()                          # no bf16 autocast entered
"""

from __future__ import annotations

import types
from typing import Any

import torch
from torch import nn

NAMES = {(6, 0): "Tesla P100-PCIE-16GB", (7, 0): "Tesla V100-SXM2-16GB", (7, 5): "Tesla T4",
         (8, 0): "NVIDIA A100-SXM4-40GB", (8, 6): "NVIDIA RTX A6000", (9, 0): "NVIDIA H100 80GB HBM3"}
ARCH_LIST = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # what a CUDA 13.0 build of PyTorch holds

_real_tensor_to = torch.Tensor.to
_real_module_to = nn.Module.to
_real_autocast = torch.autocast


def _is_cuda(x: Any) -> bool:
    if isinstance(x, torch.device):
        return x.type == "cuda"
    if isinstance(x, str):
        try:
            return torch.device(x).type == "cuda"
        except RuntimeError:
            return False
    return False


class FakeCuda:
    """`capabilities[i]` is the compute capability of cuda:i."""

    def __init__(self, monkeypatch: Any, capabilities: list[tuple[int, int]], arch_list: list[str] | None = None):
        self.caps = [tuple(c) for c in capabilities]
        self.current = 0
        self.moves: list[str] = []
        self.autocasts: list[tuple[str, torch.dtype, bool]] = []
        self.set_devices: list[int] = []
        fake = self
        mp = monkeypatch
        cuda = torch.cuda
        mp.setattr(cuda, "is_available", lambda: True)
        mp.setattr(cuda, "device_count", lambda: len(self.caps))
        mp.setattr(cuda, "current_device", lambda: self.current)
        mp.setattr(cuda, "set_device", self._set_device)
        mp.setattr(cuda, "get_device_capability", lambda device=None: self.caps[self.index(device)])
        mp.setattr(cuda, "get_device_name", lambda device=None: self.name(self.index(device)))
        mp.setattr(cuda, "get_device_properties", self._properties)
        mp.setattr(cuda, "get_arch_list", lambda: list(ARCH_LIST if arch_list is None else arch_list))
        # what torch says by default: yes, for the *current* GPU, emulation included
        mp.setattr(cuda, "is_bf16_supported",
                   lambda including_emulation=True: including_emulation or self.caps[self.current] >= (8, 0))
        for name in ("synchronize", "empty_cache", "reset_peak_memory_stats"):
            mp.setattr(cuda, name, lambda *a, **k: None)
        for name in ("memory_allocated", "max_memory_allocated"):
            mp.setattr(cuda, name, lambda *a, **k: 0)
        mp.setattr(cuda, "get_rng_state", lambda device=None: torch.get_rng_state())
        mp.setattr(cuda, "set_rng_state", lambda state, device=None: None)
        mp.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
        # torch's own code (the optimizers' graph-capture check) asks the accelerator API, which would open the real
        # CUDA: the arithmetic is the CPU's, so there it sees no accelerator
        mp.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: None)

        def tensor_to(t: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            return _real_tensor_to(t, *fake._args(args), **fake._kwargs(kwargs))

        def module_to(m: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
            return _real_module_to(m, *fake._args(args), **fake._kwargs(kwargs))

        mp.setattr(torch.Tensor, "to", tensor_to)
        mp.setattr(nn.Module, "to", module_to)
        mp.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: t)

        def autocast(device_type: str, dtype: torch.dtype | None = None, enabled: bool = True, **kw: Any) -> Any:
            dtype = dtype if dtype is not None else torch.bfloat16
            fake.autocasts.append((device_type, dtype, bool(enabled)))
            return _real_autocast("cpu" if device_type == "cuda" else device_type, dtype=dtype, enabled=enabled, **kw)

        mp.setattr(torch, "autocast", autocast)

    def index(self, device: Any) -> int:
        if device is None:
            return self.current
        if isinstance(device, int):
            return device
        dev = torch.device(device)
        return self.current if dev.index is None else dev.index

    def name(self, index: int) -> str:
        return NAMES.get(self.caps[index], f"GPU {self.caps[index]}")

    def _set_device(self, device: Any) -> None:
        self.current = self.index(device)
        self.set_devices.append(self.current)

    def _properties(self, device: Any = None) -> Any:
        i = self.index(device)
        major, minor = self.caps[i]
        return types.SimpleNamespace(name=self.name(i), total_memory=16 * 2**30, major=major, minor=minor)

    def _args(self, args: tuple) -> tuple:
        out = []
        for a in args:
            if _is_cuda(a):
                self.moves.append(str(a))
                a = "cpu"
            out.append(a)
        return tuple(out)

    def _kwargs(self, kwargs: dict) -> dict:
        if _is_cuda(kwargs.get("device")):
            self.moves.append(str(kwargs["device"]))
            kwargs = {**kwargs, "device": "cpu"}
        return kwargs

    def bf16_used(self) -> bool:
        """Whether any bf16 autocast was entered enabled since the last `clear()`."""
        return any(enabled and dtype == torch.bfloat16 for _, dtype, enabled in self.autocasts)

    def clear(self) -> None:
        self.moves.clear()
        self.autocasts.clear()
        self.set_devices.clear()
