"""Drawing samples from a trained checkpoint, each sample seeded by its own index; the sampling jobs' files
(``write_*``: the arrays or figures with the checkpoint's provenance)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .checkpoint import checkpoint_provenance, load_for_sampling
from .provenance import provenance_arrays
from .datasets import open_split, to_model_range, to_uint8
from .io import save_grid, save_npz
from .progress import progress as progress_iter
from .samplers import NonFiniteSamples, network_evaluations, sample_loop, sampling_process
from .samplers.point import SamplerPoint
from .noise import SCHEME as NOISE_SCHEME, SampleNoise
from .speed import FastForward, Speed


@torch.no_grad()
def draw_samples(checkpoint, *, start: int = 0, count: int = 64, batch_size: int = 64, seed: int = 0,
          point: SamplerPoint = SamplerPoint(), use_ema: bool = True, device: str = "cpu", progress: bool = True,
          speed: Speed = Speed()) -> tuple[np.ndarray, int]:
    """Samples ``start`` … ``start + count - 1`` as uint8 (count, C, H, W), drawn as ``point`` says
    (:func:`ddpm.samplers.sample_loop`), and the network evaluations per image they took; ``speed`` picks the
    network's speed-ups (:mod:`ddpm.speed`)."""
    if count < 1 or batch_size < 1 or start < 0:
        raise ValueError(f"need count >= 1, batch_size >= 1, start >= 0; got count={count}, batch_size={batch_size}, start={start}")
    model, diffusion, state = load_for_sampling(checkpoint, use_ema=use_ema, device=device)
    point.check("", T=diffusion.num_timesteps)
    model = FastForward(model, speed, device, inference=True)
    shape = tuple(state["data_shape"])
    batches = range(start, start + count, batch_size)
    out = []
    for first in progress_iter(batches, desc="sample batches", enabled=progress):
        indices = range(first, min(first + batch_size, start + count))
        try:
            x = sample_loop(model, diffusion, point, (len(indices), *shape), SampleNoise(seed, indices), progress=progress,
                            device=device)
        except NonFiniteSamples as err:
            raise ValueError(f"{checkpoint}: " + err.describe(f"seed {seed}'s samples",
                                                             [indices[p] for p in err.positions])) from err
        out.append(to_uint8(x).cpu().numpy())
    return np.concatenate(out), network_evaluations(diffusion.num_timesteps, point)


@torch.no_grad()
def progressive_generation(checkpoint: str | Path, *, count: int = 8, columns: int = 10, seed: int = 0,
                           point: SamplerPoint = SamplerPoint(), device: str = "cpu") -> np.ndarray:
    """DDPM Figure 6: the x̂₀ the model predicts along the reverse process, for ``count`` samples (rows) at
    ``columns`` evenly spaced reverse steps of ``point``'s sampler (the last column is at the final step). Returns
    uint8 (count · columns, C, H, W), row by row; sample i is sample i of the point's sample set (same seed, same
    noise)."""
    if count < 1 or columns < 1:
        raise ValueError(f"need count >= 1 and columns >= 1, got count={count}, columns={columns}")
    model, diffusion, state = load_for_sampling(checkpoint, device=device)
    point.check("", T=diffusion.num_timesteps)
    n = network_evaluations(diffusion.num_timesteps, point)
    # after k reverse steps the step index is n − k; k = n·j / columns for j = 1 … columns
    record = sorted({n - max(1, round(n * j / columns)) for j in range(1, columns + 1)}, reverse=True)
    shape = tuple(state["data_shape"])
    _, trajectory = sample_loop(model, diffusion, point, (count, *shape), SampleNoise(seed, range(count)), device=device,
                                return_trajectory=True, trajectory_steps=record)
    frames = torch.stack([trajectory[i] for i in record], dim=1)  # (count, columns, C, H, W)
    return to_uint8(frames.reshape(-1, *shape)).numpy()


@torch.no_grad()
def interpolate(checkpoint: str | Path, first: np.ndarray, second: np.ndarray, *, t_fraction: float = 0.5,
                num_lambdas: int = 11, seed: int = 0, point: SamplerPoint = SamplerPoint(),
                device: str = "cpu") -> np.ndarray:
    """DDPM §4.4, Figure 8: encode two images with q to x_t and x'_t (t at ``t_fraction`` of ``point``'s S steps),
    decode each x̄_t = (1 − λ) x_t + λ x'_t, λ = 0, 0.1, …, 1, with ``point``'s sampler from t, the noise fixed
    across λ.

    ``first``, ``second``: uint8 (C, H, W). Returns uint8 (num_lambdas + 2, C, H, W): the first image, the
    decodings for increasing λ, the second image."""
    if not 0 < t_fraction <= 1 or num_lambdas < 2:
        raise ValueError(f"need 0 < t_fraction <= 1 and num_lambdas >= 2, got {t_fraction}, {num_lambdas}")
    model, diffusion, state = load_for_sampling(checkpoint, device=device)
    point.check("", T=diffusion.num_timesteps)
    if first.shape != tuple(state["data_shape"]) or second.shape != tuple(state["data_shape"]):
        raise ValueError(f"images of shape {first.shape} and {second.shape}; {checkpoint} was trained on "
                         f"{tuple(state['data_shape'])}")
    _, process = sampling_process(model, diffusion, point, first.shape[0])
    t = max(1, round(t_fraction * process.num_timesteps)) - 1  # 0-based index of x_t in the sampler's steps
    x0 = to_model_range(np.stack([first, second])).to(device)
    encoded = process.q_sample(x0, torch.full((2,), t, device=device),
                               noise=SampleNoise(seed, [0, 1]).randn(x0.shape, device=device))
    lambdas = torch.linspace(0, 1, num_lambdas, device=device).reshape(-1, 1, 1, 1)
    x = (1 - lambdas) * encoded[0] + lambdas * encoded[1]
    shared = SampleNoise(seed, [2] * num_lambdas)  # one noise stream, shared by every λ
    decoded = sample_loop(model, diffusion, point, tuple(x.shape), shared, noise=x, device=device, start_step=t)
    return np.concatenate([first[None], to_uint8(decoded).cpu().numpy(), second[None]])


# ---------------------------------------------------------------------------------------------- the jobs' files
def write_sample_shard(checkpoint, out, *, start: int = 0, count: int = 64, grid=None, setting: str | None = None,
                       data_dir=None, point: SamplerPoint = SamplerPoint(), **sampling) -> np.ndarray:
    """``ddpm sample``: samples ``start`` … ``start + count - 1`` (:func:`draw_samples`) saved to ``out`` with
    their indices, the checkpoint's provenance (checked against ``setting`` and ``data_dir`` first) and the sampler
    point, the network evaluations per image and the seconds the sampling took; with ``grid``, also a PNG of them."""
    provenance = checkpoint_provenance(checkpoint, setting=setting, data_dir=data_dir)
    began = time.perf_counter()
    images, evaluations = draw_samples(checkpoint, start=start, count=count, point=point, **sampling)
    seconds = time.perf_counter() - began
    save_npz(out, images=images, indices=np.arange(start, start + count), sampling_seconds=np.array(seconds),
             network_evaluations=np.array(evaluations), sample_seed=np.array(int(sampling.get("seed", 0))),
             sample_noise=np.array(NOISE_SCHEME),
             model_weights=np.array("ema" if sampling.get("use_ema", True) else "raw"),
             **provenance_arrays({**provenance, "sampler": point.name}))
    if grid:
        save_grid(images, grid)
    return images


def write_progressive(checkpoint, out, *, columns: int = 10, setting: str | None = None, data_dir=None,
                      **sampling) -> None:
    """``ddpm progressive``: the grid of :func:`progressive_generation`, one row per sample."""
    checkpoint_provenance(checkpoint, setting=setting, data_dir=data_dir)
    save_grid(progressive_generation(checkpoint, columns=columns, **sampling), out, nrow=columns)


def write_interpolation(checkpoint, data_dir, out, *, images=(0, 1), setting: str | None = None, **sampling) -> None:
    """``ddpm interpolate``: the row of :func:`interpolate` between test images ``images`` of ``data_dir``."""
    checkpoint_provenance(checkpoint, setting=setting, data_dir=data_dir)
    test = open_split(data_dir, "test")
    if max(images) >= len(test):
        raise ValueError(f"--images {list(images)}: the test split of {data_dir} has {len(test)} images")
    row = interpolate(checkpoint, test[images[0]], test[images[1]], **sampling)
    save_grid(row, out, nrow=len(row))
