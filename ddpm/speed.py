"""How fast the same math runs: the optional speed-ups, each on or off, and the plain fp32 eager path they are
measured against (``ddpm bench``).

None of them changes what is computed, only how: the master weights, the loss, the EMA and the bits/dim terms stay
in fp32 (:class:`FastForward` casts the network's output back to fp32 before any diffusion math), and a
``torch.compile`` that fails falls back to the eager module with a warning. Which speed-ups are on is a
:class:`ddpm.settings.Speed` (torch-free: the workflow checks the config's ``speed`` when it parses).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .settings import Speed  # noqa: F401 (every user of a speed-up imports it from here)


def configure_backends(speed: Speed) -> None:
    """TF32 on or off for matmuls and cuDNN convolutions (process-wide switches)."""
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    torch.backends.cudnn.allow_tf32 = speed.tf32


class FastForward(nn.Module):
    """The network as the diffusion code calls it, ``model(x, t)``, with the speed-ups applied to the forward pass.

    It shares the wrapped module's parameters (state dicts, the EMA and checkpoints keep using ``module``), and
    returns fp32 whatever precision the network ran in, so that losses and bits/dim are computed in fp32. Building
    it sets the process-wide backend switches of ``speed`` (:func:`configure_backends`)."""

    def __init__(self, module: nn.Module, speed: Speed, device: str | torch.device, *, inference: bool = False):
        super().__init__()
        configure_backends(speed)
        self.module = module
        self.speed = speed
        self.device_type = torch.device(device).type
        if speed.channels_last:
            module.to(memory_format=torch.channels_last)
        self._compiled = None
        self._graphed = inference and speed.compile and speed.cuda_graph and self.device_type == "cuda"
        if speed.compile:
            self._compiled = torch.compile(module, mode="reduce-overhead" if self._graphed else None)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.speed.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.speed.bf16):
            out = self._forward(x, t)
        if self._graphed and self._compiled is not None:
            out = out.clone()  # a CUDA graph's output buffer is overwritten by its next replay
        return out.float().contiguous()

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            return self.module(x, t)
        try:
            return self._compiled(x, t)
        except Exception as err:  # noqa: BLE001 — any compiler failure: the eager module computes the same
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                          f"running the network eagerly", RuntimeWarning, stacklevel=3)
            self._compiled = None
            return self.module(x, t)


def make_optimizer(parameters, lr: float, speed: Speed) -> torch.optim.Adam:
    """Adam; with ``fused_adam`` its fused kernel (or the multi-tensor one where no fused kernel exists), else
    PyTorch's default implementation for the device."""
    parameters = list(parameters)
    if speed.fused_adam:
        try:
            return torch.optim.Adam(parameters, lr=lr, fused=True)
        except (RuntimeError, ValueError):
            return torch.optim.Adam(parameters, lr=lr, foreach=True)
    return torch.optim.Adam(parameters, lr=lr)  # PyTorch's default: the plain path is not made slower than usual


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float, speed: Speed) -> None:
    """θ_ema ← θ_ema + (1 − decay)(θ − θ_ema) for every parameter (the same lerp either way)."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if speed.foreach_ema:
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    else:
        for ema_p, p in zip(ema_params, params):
            ema_p.lerp_(p, 1.0 - decay)
