"""Denoising Diffusion Probabilistic Models (Ho, Jain & Abbeel 2020) and the Improved-DDPM ablations."""

from .diffusion import HYBRID_LAMBDA, LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion, space_timesteps
from .schedules import SCHEDULES, make_betas
from .unet import PRESETS, UNet, UNetConfig, create_model

__version__ = "0.1.0"

__all__ = [
    "GaussianDiffusion", "make_betas", "space_timesteps", "create_model", "UNet", "UNetConfig",
    "SCHEDULES", "PRESETS", "MEAN_TYPES", "VAR_TYPES", "LOSS_TYPES", "HYBRID_LAMBDA",
]
