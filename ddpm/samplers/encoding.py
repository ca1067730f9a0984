"""DDIM's deterministic process run forwards, x_0 → x_T (DDIM §4.3), and the reconstruction error of encoding and
decoding (DDIM §5.4, Table 2)."""

from __future__ import annotations

import torch

from ..diffusion import GaussianDiffusion, Model
from ..progress import progress as progress_iter
from .families.ddim import reconstruction_point
from .loop import _mark_non_finite, _refuse_non_finite, sample_loop, sampling_process


@torch.no_grad()
def ddim_encode(model: Model, diffusion: GaussianDiffusion, x_start: torch.Tensor, *, steps: int | None = None,
                skip: str = "uniform", progress: bool = False) -> torch.Tensor:
    """x_0 → x_T by DDIM's deterministic process run forwards on the subsequence (DDIM §4.3, §5.4): the latent from
    which ``ddim`` with η = 0 (no clipping) on the same subsequence decodes x_0 back."""
    network, process = sampling_process(model, diffusion, reconstruction_point(steps, skip), x_start.shape[1])
    x = x_start
    non_finite = torch.full((x.shape[0],), -1, device=x.device, dtype=torch.long)
    for i in progress_iter(range(process.num_timesteps), desc="encoding", enabled=progress):
        x = process.ddim_reverse_sample(network, x, process.timestep_tensor(i, x))["sample"]
        non_finite = _mark_non_finite(x, i, non_finite)
    _refuse_non_finite(non_finite, process, "DDIM's encoding", reverse=False)
    return x


@torch.no_grad()
def reconstruction_error(model: Model, diffusion: GaussianDiffusion, x_start: torch.Tensor, *, steps: int | None = None,
                         skip: str = "uniform") -> torch.Tensor:
    """Per image: the mean squared error per dimension, on the [0, 1] scale, of x_0 encoded to x_T and decoded back
    with DDIM (η = 0) on S steps (DDIM §5.4, Table 2)."""
    latent = ddim_encode(model, diffusion, x_start, steps=steps, skip=skip)
    decoded = sample_loop(model, diffusion, reconstruction_point(steps, skip), x_start.shape, noise=latent,
                          device=x_start.device)
    return ((decoded - x_start) / 2).pow(2).flatten(1).mean(dim=1)
