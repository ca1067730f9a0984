"""The one reverse loop: x_T ~ N(0, I) (or given), then one step of the point's sampler per step of its subsequence,
the network called once per step with the original step index (:func:`sample_loop`).

Every sample's noise (x_T, and each step's noise where the family draws any) comes from the sample's own stream
(:class:`ddpm.noise.SampleNoise`, drawn on the device; or a peer's ``torch.Generator`` per sample, in the parity
tests), so a sample depends only on its seed and index, not on the batch it is drawn in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..diffusion import Generator, GaussianDiffusion, Model, _model_device, randn
from ..progress import progress as progress_iter
from .base import Sampler
from .registry import sampler_family


def make_sampler(diffusion: GaussianDiffusion, point) -> Sampler:
    """The sampler of ``point``'s family for ``diffusion`` (its timesteps and process set)."""
    return sampler_family(point.sampler)(diffusion, point)


def _drop_variance_channels(model: Model, channels: int) -> Model:
    """The network's mean output only: a learned-variance model sampled with a fixed variance, or by DDIM."""
    def mean_only(x, t, **kwargs):
        return model(x, t, **kwargs)[:, :channels]
    return mean_only


def _network(model: Model, diffusion: GaussianDiffusion, sampler: Sampler, channels: int) -> Model:
    """``model``, or its mean channels alone where the sampler's process does not take the network's variance."""
    if diffusion.learns_variance and not sampler.process.learns_variance:
        return _drop_variance_channels(model, channels)
    return model


def sampling_process(model: Model, diffusion: GaussianDiffusion, point, channels: int
                     ) -> tuple[Model, GaussianDiffusion]:
    """The network and the process that ``point`` samples: ``diffusion`` respaced to the point's subsequence, its
    variance replaced where the point's family says so."""
    sampler = make_sampler(diffusion, point)
    return _network(model, diffusion, sampler, channels), sampler.process


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


@torch.no_grad()
def sample_loop(
    model: Model,
    diffusion: GaussianDiffusion,
    point,
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
    sampler = make_sampler(diffusion, point)
    network, process = _network(model, diffusion, sampler, shape[1]), sampler.process
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
        model_output = network(x, process.model_timesteps(process.timestep_tensor(i, x)))
        out = sampler.step(model_output, i, x, generator)
        x = out["sample"]
        non_finite = _mark_non_finite(x, i, non_finite)
        if return_trajectory and i in record:
            trajectory[i] = out["pred_xstart"].cpu()
    _refuse_non_finite(non_finite, process, f"sampling ({point.name})")
    return (x, trajectory) if return_trajectory else x
