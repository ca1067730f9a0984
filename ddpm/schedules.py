"""Noise schedules β_1 … β_T.

The forward process of Ho et al. 2020 (arXiv 2006.11239, Eq. 2) adds Gaussian noise with variance β_t at
step t. The names follow the official TF repository (``diffusion_utils_2.get_beta_schedule``: ``linear``,
``quad``, ``const``, ``jsd``, ``warmup10``, ``warmup50``), plus Improved DDPM's ``cosine`` (Nichol & Dhariwal
2021, arXiv 2102.09672, Eq. 17) and the ``sigmoid`` schedule.
"""

from __future__ import annotations

import math

import numpy as np

#: The paper's linear schedule endpoints (Section 4: β_1 = 1e-4 → β_T = 0.02 at T = 1000).
LINEAR_START = 1e-4
LINEAR_END = 0.02
#: Improved DDPM clips cosine betas here so that the last steps stay invertible (Section 3.2).
MAX_BETA = 0.999
COSINE_OFFSET = 0.008


def _linear(T, start, end):
    return np.linspace(start, end, T, dtype=np.float64)


def _quad(T, start, end):
    return np.linspace(start**0.5, end**0.5, T, dtype=np.float64) ** 2


def _const(T, start, end):
    return np.full(T, end, dtype=np.float64)


def _jsd(T, start, end):
    # 1/T, 1/(T-1), …, 1. The TF code ends on β_T = 1, which makes ᾱ_T = 0 and the ε → x₀ conversion
    # (Eq. 11 rearranged) divide by zero; clip at MAX_BETA like the cosine schedule.
    return np.minimum(1.0 / np.linspace(T, 1, T, dtype=np.float64), MAX_BETA)


def _warmup(fraction):
    def schedule(T, start, end):
        betas = np.full(T, end, dtype=np.float64)
        warmup_steps = int(T * fraction)
        betas[:warmup_steps] = np.linspace(start, end, warmup_steps, dtype=np.float64)
        return betas

    return schedule


def _sigmoid(T, start, end):
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, T, dtype=np.float64)))
    return s * (end - start) + start


def cosine_alpha_bar(t: np.ndarray | float, T: int, s: float = COSINE_OFFSET):
    """ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T) + s)/(1 + s) · π/2)  (Improved DDPM, Eq. 17)."""
    f = lambda u: np.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(np.asarray(t, dtype=np.float64)) / f(0.0)


def _cosine(T, start, end, s=COSINE_OFFSET):
    steps = np.arange(T + 1, dtype=np.float64)
    alpha_bar = cosine_alpha_bar(steps, T, s)
    # β_t = 1 − ᾱ_t / ᾱ_{t−1}, clipped (Improved DDPM, Section 3.2).
    return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], MAX_BETA)


SCHEDULES = {
    "linear": _linear,
    "quad": _quad,
    "const": _const,
    "jsd": _jsd,
    "warmup10": _warmup(0.1),
    "warmup50": _warmup(0.5),
    "cosine": _cosine,
    "sigmoid": _sigmoid,
}


def make_betas(
    name: str,
    T: int,
    *,
    beta_start: float = LINEAR_START,
    beta_end: float = LINEAR_END,
    rescale: bool = False,
    **kw,
) -> np.ndarray:
    """β_1 … β_T for the schedule ``name`` as a float64 array of shape ``(T,)``.

    ``beta_start``/``beta_end`` are the endpoints of the ``linear``, ``quad``, ``warmup*`` and ``sigmoid``
    schedules (``const`` uses ``beta_end``). ``rescale=True`` multiplies both endpoints by 1000/T, as Improved
    DDPM does so that the linear schedule keeps its shape for other T. ``cosine`` takes ``s`` (default 0.008).
    """
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; valid schedules: {', '.join(sorted(SCHEDULES))}")
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"number of diffusion steps T must be an integer >= 1, got {T!r}")
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    if rescale:
        beta_start, beta_end = beta_start * 1000 / T, beta_end * 1000 / T
        if beta_end >= 1.0:
            raise ValueError(f"rescale=True with T={T} pushes beta_end to {beta_end:.4g} >= 1")
    if kw and name != "cosine":
        raise ValueError(f"schedule {name!r} takes no options {sorted(kw)}")
    unknown = set(kw) - {"s"}
    if unknown:
        raise ValueError(f"schedule 'cosine' takes only the option 's', got {sorted(unknown)}")
    betas = SCHEDULES[name](int(T), beta_start, beta_end, **kw)
    check_betas(betas)
    return betas


def check_betas(betas) -> np.ndarray:
    """Return ``betas`` as float64 after checking it is a non-empty 1-D array with every β_t in (0, 1)."""
    betas = np.asarray(betas, dtype=np.float64)
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    bad = ~((betas > 0.0) & (betas < 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"every beta must lie in (0, 1); beta[{i}] = {betas[i]!r}")
    return betas
