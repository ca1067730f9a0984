"""Datasets as uint8 arrays of shape (N, C, H, W), and their scaling to the model's [-1, 1] (Section 3.3)."""

from __future__ import annotations

import numpy as np
import torch

DATASETS = ("digits",)


def load_digits() -> np.ndarray:
    """scikit-learn's bundled 1,797 handwritten digits (8×8, 17 grey levels): real data that needs no network.

    Levels 0…16 are mapped to 0…255 so the usual 256-bin pixel likelihood applies."""
    from sklearn.datasets import load_digits as sklearn_digits

    images = sklearn_digits().images  # (1797, 8, 8) floats 0..16
    return np.round(images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]


def load_dataset(name: str) -> np.ndarray:
    if name == "digits":
        return load_digits()
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 0…255 → float32 in [-1, 1]."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 0..255, got {images.dtype}")
    return images.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → uint8 0…255 (rounded, clipped)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
