"""DDIM Table 2 (Song, Meng & Ermon 2020, §5.4): test images encoded to x_T by DDIM's deterministic process (η = 0,
the ODE of Eq. 14 run forwards) and decoded back on the same S steps; the per-dimension mean squared error on the
[0, 1] scale (:func:`ddpm.samplers.reconstruction_error`), one job per setting and S (``ddpm evaluate
reconstruction``), its result a JSON file with the checkpoint's provenance.

The network runs in fp32 whatever the job's speed-ups (bf16 and TF32 are left out): the paper's errors go down to
1e-4, and the rounding of 2·S network calls in bf16 would be part of what is measured.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .checkpoint import checkpoint_provenance, load_for_sampling
from .datasets import open_split, to_model_range
from .io import write_json
from .progress import progress as progress_iter
from .samplers import network_evaluations, reconstruction_error
from .samplers.families.ddim import reconstruction_point
from .speed import FastForward, Speed
from .vocabulary import RECONSTRUCTION_METRIC

#: The metric's name in the result file, in MLflow (logged at step S) and in ``config/published.csv``.
METRIC = RECONSTRUCTION_METRIC


def read_test_images(data_dir, count: int | None):
    """Test images 0 … ``count`` − 1 of the prepared ``data_dir`` (all of them with ``count`` None), uint8; fewer
    than asked is refused, naming the config key."""
    images = open_split(data_dir, "test")  # on disk: each batch is read (and its chunk checked) when it is used
    count = len(images) if count is None else count
    if not 1 <= count <= len(images):
        raise ValueError(f"{count} test images asked for, but the test split of {data_dir} has {len(images)} "
                         f"(config key 'reconstruction.num_images')")
    return images.head(count)


def precise(speed: Speed) -> Speed:
    """``speed`` without what rounds the network's arithmetic (bf16, TF32): see the module's docstring."""
    return dataclasses.replace(speed, bf16=False, tf32=False)


@torch.no_grad()
def reconstruct(checkpoint, data_dir, *, steps: int, skip: str = "uniform", count: int | None = None,
                batch_size: int = 250, device: str = "cpu", speed: Speed = Speed(), progress: bool = True) -> dict:
    """The reconstruction error of test images 0 … ``count`` − 1 of ``data_dir`` under ``checkpoint``'s EMA weights,
    encoded and decoded on ``steps`` steps picked by ``skip``, in batches of ``batch_size``: per image (``errors``),
    their mean and its standard error over the images, and the network evaluations per image (encoding and
    decoding)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, diffusion, state = load_for_sampling(checkpoint, device=device)
    point = reconstruction_point(steps, skip).check("", T=diffusion.num_timesteps)
    images = read_test_images(data_dir, count)
    if tuple(images.shape[1:]) != tuple(state["data_shape"]):
        raise ValueError(f"the test images of {data_dir} have shape (C, H, W) = {tuple(images.shape[1:])}, but "
                         f"{checkpoint} was trained on {tuple(state['data_shape'])}")
    used = precise(speed)
    network = FastForward(model, used, device, inference=True)
    began = time.perf_counter()
    errors = []
    for first in progress_iter(range(0, len(images), batch_size), desc=f"reconstruction S={steps} batches",
                               enabled=progress):
        x0 = to_model_range(images[first:first + batch_size]).to(device)
        errors.append(reconstruction_error(network, diffusion, x0, steps=steps, skip=skip).double().cpu().numpy())
    errors = np.concatenate(errors)
    n = len(errors)
    return {
        METRIC: float(errors.mean()),
        f"{METRIC}_stderr": float(errors.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
        "steps": int(steps),
        "skip": skip,
        "eta": 0.0,
        "network_evaluations": 2 * network_evaluations(diffusion.num_timesteps, point),
        "num_images": n,
        "scale": "[0, 1]",
        "speed": used.describe(),
        "seconds": time.perf_counter() - began,
        "errors": errors,
    }


def write_reconstruction(checkpoint, data_dir, out, *, setting: str | None = None, **options) -> dict:
    """``ddpm evaluate reconstruction``: :func:`reconstruct` as JSON (without the per-image errors) with the
    checkpoint's provenance, checked against ``setting`` and ``data_dir`` first."""
    provenance = checkpoint_provenance(checkpoint, setting=setting, data_dir=data_dir)
    result = reconstruct(checkpoint, data_dir, **options)
    result.pop("errors")
    result.update(provenance)
    write_json(out, result)
    return result


def tracked_reconstruction(result: dict) -> tuple[dict[str, float], int]:
    """What a reconstruction job logs to its setting's MLflow run, and at which step: the error and its standard error
    at step S, so that MLflow draws the error against S."""
    return {METRIC: result[METRIC], f"{METRIC}_stderr": result[f"{METRIC}_stderr"]}, int(result["steps"])
