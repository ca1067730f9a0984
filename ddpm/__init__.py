"""Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020), the Improved-DDPM ablations and DDIM's
sampling (Song, Meng & Ermon 2020)."""

import importlib

__version__ = "0.1.0"

#: The library's names and their modules, imported on first use: ``ddpm claim-gpus`` and the other commands that
#: need no tensors then start without importing torch.
_EXPORTS = {
    "GaussianDiffusion": "diffusion", "HYBRID_LAMBDA": "diffusion",
    "MEAN_TYPES": "vocabulary", "VAR_TYPES": "vocabulary", "LOSS_TYPES": "vocabulary",
    "make_betas": "schedules", "SCHEDULES": "schedules",
    "create_model": "unet", "UNet": "unet", "UNetConfig": "presets", "PRESETS": "presets",
    "sample_loop": "samplers", "timestep_subsequence": "samplers", "SamplerPoint": "samplers",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'ddpm' has no attribute {name!r}")
