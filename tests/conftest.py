import pytest
import torch

from ddpm.datasets import load_digits, to_model_range


@pytest.fixture(scope="session")
def digits():
    """The first 16 real digits, scaled to [-1, 1]: (16, 1, 8, 8)."""
    return to_model_range(load_digits()[:16])


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(2)
