"""Sampling a trained model: DDPM's ancestral sampler and DDIM, on every step or on a subsequence of S steps.

One entry point, :func:`sample_loop` (model, diffusion, a :class:`~ddpm.settings.SamplerPoint`, the noise's
generators); what a point means:

- ``ancestral``: DDPM Algorithm 2 on the process respaced to the subsequence (IDDPM §4: β_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}),
  with the model's own variance or an override: ``fixedlarge`` (σ² = β of the respaced process: DDIM Table 1's σ̂)
  or ``fixedsmall`` (σ² = β̃, Eq. 7).
- ``ddim``: DDIM Eq. 12 on the subsequence with σ_τ(η) of Eq. 16; η = 1 is the process of ``ancestral`` with
  ``fixedsmall`` (:meth:`~ddpm.diffusion.GaussianDiffusion.ddim_sample`).

The subsequence (:func:`timestep_subsequence`) is ermongroup/ddim's: ``uniform`` or ``quadratic`` (DDIM Appendix D.2),
starting at step 0; the first reverse step starts from x ~ N(0, I) at the subsequence's last step. Every sampler draws
x_T and then one noise tensor per step from each sample's own generator, so a sample depends only on its seed and
index. :func:`ddim_encode` runs DDIM's deterministic process forwards (x_0 → x_T, §4.3) and
:func:`reconstruction_error` measures encode → decode (DDIM §5.4, Table 2).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .diffusion import Generator, GaussianDiffusion, Model, _model_device, randn
from .progress import progress as progress_iter
from .settings import SamplerPoint

#: ``quadratic`` ends at this fraction of T (ermongroup/ddim: ``np.linspace(0, np.sqrt(T * 0.8), S) ** 2``).
QUADRATIC_END = 0.8


def timestep_subsequence(T: int, steps: int | None, skip: str = "uniform") -> list[int]:
    """The 0-based steps τ_1 < … < τ_S a sampler visits out of T (DDIM §4.2, Appendix D.2).

    ``uniform``: ⌊i·T/S⌋ for i = 0 … S−1, which is ermongroup/ddim's ``range(0, T, T // S)`` (and diffusers'
    "leading" spacing) when S divides T. ``quadratic``: ⌊(i·√(0.8·T)/(S−1))²⌋, as ermongroup/ddim; where small steps
    repeat (S = 100 of T = 1000 visits 96 distinct steps; S = 50, 49), the repeats are dropped: in ermongroup/ddim a repeated step moves x from a
    noise level to the same level, a network call that changes nothing. S = T (or ``steps`` None) is every step."""
    S = T if steps is None else int(steps)
    if not 1 <= S <= T:
        raise ValueError(f"cannot pick S = {S} sampling steps out of T = {T}; need 1 <= S <= T")
    if S == T:
        return list(range(T))
    if skip == "uniform":
        return [i * T // S for i in range(S)]
    if skip == "quadratic":
        points = np.linspace(0, np.sqrt(T * QUADRATIC_END), S) ** 2
        return sorted({int(p) for p in points})
    raise ValueError(f"unknown skip {skip!r}; valid skips: uniform, quadratic")


def _drop_variance_channels(model: Model, channels: int) -> Model:
    """The network's mean output only: a learned-variance model sampled with a fixed variance, or by DDIM."""
    def mean_only(x, t, **kwargs):
        return model(x, t, **kwargs)[:, :channels]
    return mean_only


def sampling_process(model: Model, diffusion: GaussianDiffusion, point: SamplerPoint, channels: int
                     ) -> tuple[Model, GaussianDiffusion]:
    """The network and the process that ``point`` samples: ``diffusion`` respaced to the point's subsequence, its
    variance replaced where the point says so (DDIM takes only the network's mean: its variance is σ(η))."""
    steps = timestep_subsequence(diffusion.num_timesteps, point.steps, point.skip)
    override = None
    if point.sampler == "ddim":
        override = "fixedsmall" if diffusion.learns_variance else None
    elif point.variance != "model":
        override = point.variance
    process = diffusion.respaced(steps, var_type=override)
    if diffusion.learns_variance and not process.learns_variance:
        model = _drop_variance_channels(model, channels)
    return model, process


class NonFiniteSamples(ValueError):
    """Samples that turned NaN or ±inf: at which step (``at``, in words; ``timestep``: the step of the T-step process)
    and which samples (``positions`` in the batch, those that turned first)."""

    def __init__(self, what: str, at: str, timestep: int, positions: list[int]):
        self.what, self.at, self.timestep, self.positions = what, f"{at} (timestep {timestep})", timestep, positions
        super().__init__(self.describe("batch positions", positions))

    def describe(self, label: str, names) -> str:
        """The error, the samples named by ``names`` (one per position) under ``label``."""
        names = [str(name) for name in names]
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        return (f"{self.what} turned non-finite (NaN or ±inf) at {self.at}, first in {label} {shown}: the network "
                f"gives non-finite outputs there; nothing is written from them")


def _mark_non_finite(x: torch.Tensor, step: int, first: torch.Tensor) -> torch.Tensor:
    """``first`` (per sample: the step at which it first turned non-finite, −1 while finite) after ``step``; on the
    device, without waiting for it (one reduction over x per step, next to a network's forward pass)."""
    return first.masked_fill(~torch.isfinite(x).flatten(1).all(dim=1) & (first < 0), step)


def _refuse_non_finite(first: torch.Tensor, process: GaussianDiffusion, what: str, *, reverse: bool = True) -> None:
    """Raise :class:`NonFiniteSamples` if any sample turned non-finite (``first``: :func:`_mark_non_finite`)."""
    bad = first >= 0
    if not bool(bad.any()):
        return
    steps, total = first[bad], process.num_timesteps
    step = int(steps.max() if reverse else steps.min())  # the earliest in the order the steps ran
    at = f"reverse step {total - step} of {total}" if reverse else f"encoding step {step + 1} of {total}"
    positions = torch.nonzero(first == step).flatten().tolist()
    raise NonFiniteSamples(what, at, int(process.timestep_map[step]), positions)


def network_evaluations(T: int, point: SamplerPoint) -> int:
    """Network calls per image: the length of the point's subsequence."""
    return len(timestep_subsequence(T, point.steps, point.skip))


@torch.no_grad()
def sample_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    point: SamplerPoint,
    shape: Sequence[int],
    generator: Generator = None,
    *,
    noise: torch.Tensor | None = None,
    device=None,
    progress: bool = False,
    return_trajectory: bool = False,
    trajectory_steps: Sequence[int] | None = None,
    start_step: int | None = None,
):
    """Samples of ``shape`` from ``model`` as ``point`` says: x_T ~ N(0, I) (or ``noise``), then one reverse step
    per step of the subsequence. ``generator`` (one, or one per sample) drives x_T and each step's noise.
    ``start_step`` (with ``noise``: the x there) starts lower than the top step (DDPM Figure 8's decoding from x_t).

    With ``return_trajectory``, returns ``(samples, trajectory)``: the x̂_0 the model predicts at each recorded step
    index of the respaced process (all, or ``trajectory_steps``; index S−1 is the first step), DDPM Figure 6.

    Samples that turn NaN or ±inf raise :class:`NonFiniteSamples` at the end, naming the step where they first did
    (checked at every step on the device, waited for once)."""
    shape = tuple(shape)
    device = _model_device(model) if device is None else device
    network, process = sampling_process(model, diffusion, point, shape[1])
    x = randn(shape, generator, device=device) if noise is None else noise.to(device)
    top = process.num_timesteps - 1 if start_step is None else start_step
    if not 0 <= top < process.num_timesteps:
        raise ValueError(f"start_step {start_step} is not a step of the sampler's {process.num_timesteps}")
    if tuple(x.shape) != shape:
        raise ValueError(f"noise shape {tuple(x.shape)} differs from the requested shape {shape}")
    record = set(range(process.num_timesteps) if trajectory_steps is None else trajectory_steps)
    trajectory: dict[int, torch.Tensor] = {}
    steps = progress_iter(range(top, -1, -1), total=top + 1,
                          desc=f"sampling ({point.name})", enabled=progress)
    non_finite = torch.full((shape[0],), -1, device=device, dtype=torch.long)
    for i in steps:
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        if point.sampler == "ddim":
            out = process.ddim_sample(network, x, t, eta=point.eta, generator=generator, clip_denoised=point.clip)
        else:
            out = process.p_sample(network, x, t, generator=generator, clip_denoised=point.clip)
        x = out["sample"]
        non_finite = _mark_non_finite(x, i, non_finite)
        if return_trajectory and i in record:
            trajectory[i] = out["pred_xstart"].cpu()
    _refuse_non_finite(non_finite, process, f"sampling ({point.name})")
    return (x, trajectory) if return_trajectory else x


@torch.no_grad()
def ddim_encode(model: Model, diffusion: GaussianDiffusion, x_start: torch.Tensor, *, steps: int | None = None,
                skip: str = "uniform", progress: bool = False) -> torch.Tensor:
    """x_0 → x_T by DDIM's deterministic process run forwards on the subsequence (DDIM §4.3, §5.4): the latent from
    which ``ddim`` with η = 0 (no clipping) on the same subsequence decodes x_0 back."""
    point = SamplerPoint("ddim", steps, skip, eta=0.0, clip=False)
    network, process = sampling_process(model, diffusion, point, x_start.shape[1])
    x = x_start
    non_finite = torch.full((x.shape[0],), -1, device=x.device, dtype=torch.long)
    for i in progress_iter(range(process.num_timesteps), desc="encoding", enabled=progress):
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        x = process.ddim_reverse_sample(network, x, t)["sample"]
        non_finite = _mark_non_finite(x, i, non_finite)
    _refuse_non_finite(non_finite, process, "DDIM's encoding", reverse=False)
    return x


@torch.no_grad()
def reconstruction_error(model: Model, diffusion: GaussianDiffusion, x_start: torch.Tensor, *, steps: int | None = None,
                         skip: str = "uniform") -> torch.Tensor:
    """Per image: the mean squared error per dimension, on the [0, 1] scale, of x_0 encoded to x_T and decoded back
    with DDIM (η = 0) on S steps (DDIM §5.4, Table 2)."""
    latent = ddim_encode(model, diffusion, x_start, steps=steps, skip=skip)
    point = SamplerPoint("ddim", steps, skip, eta=0.0, clip=False)
    decoded = sample_loop(model, diffusion, point, x_start.shape, noise=latent, device=x_start.device)
    return ((decoded - x_start) / 2).pow(2).flatten(1).mean(dim=1)
