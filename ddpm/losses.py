"""Log-likelihood pieces of the variational bound (Ho et al. 2020, Eq. 5).

All functions work element-wise on tensors and return nats; callers average over dimensions and divide by
ln 2 to report bits/dim.
"""

from __future__ import annotations

import math

import torch

from .vocabulary import DECODERS

#: Pixels are integers 0…255 scaled linearly to [-1, 1] (Section 3.3), so one bin is 2/255 wide.
PIXEL_BINS = 256
HALF_BIN = 1.0 / (PIXEL_BINS - 1)
#: Probabilities below this are clamped before the log, as the official code does.
MIN_PROB = 1e-12


def normal_kl(mean1, logvar1, mean2, logvar2):
    """KL(N(mean1, exp(logvar1)) ‖ N(mean2, exp(logvar2))) element-wise, in nats.

    The closed form used for every L_{t-1} term of Eq. 5 (both distributions are Gaussian)."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The official code's approximation of the standard normal CDF: 0.5 (1 + tanh(√(2/π) (x + 0.044715 x³)))."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, *, means, log_scales, decoder: str = "exact"):
    """log p(x) under the discretized Gaussian decoder p_θ(x_0 | x_1) of Eq. 13, element-wise, in nats.

    ``x`` holds pixel values scaled to [-1, 1]; each of the 256 values owns the interval [x − 1/255, x + 1/255],
    with the outermost intervals stretched to −∞ and +∞ so that the 256 probabilities sum to one. ``log_scales``
    is log σ (not log σ²). ``decoder="exact"``: the exact normal CDF, the middle bins' mass floored at
    :data:`MIN_PROB`, the edge bins' tails exact (``log_ndtr``). ``decoder="official"``: the official code's (and
    improved-diffusion's) computation, for parity with the papers' NLLs: :func:`approx_standard_normal_cdf`, every
    bin floored at :data:`MIN_PROB`. The two CDFs differ by less than 1e-3.
    """
    if x.shape != means.shape or x.shape != log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; valid decoders: {', '.join(DECODERS)}")
    centered = x - means
    inv_std = torch.exp(-log_scales)
    upper = inv_std * (centered + HALF_BIN)
    lower = inv_std * (centered - HALF_BIN)
    if decoder == "official":
        cdf_upper, cdf_lower = approx_standard_normal_cdf(upper), approx_standard_normal_cdf(lower)
        log_cdf_upper = torch.log(cdf_upper.clamp(min=MIN_PROB))
        log_sf_lower = torch.log((1.0 - cdf_lower).clamp(min=MIN_PROB))
        log_mass = torch.log((cdf_upper - cdf_lower).clamp(min=MIN_PROB))
        return torch.where(x < -1.0 + HALF_BIN, log_cdf_upper, torch.where(x > 1.0 - HALF_BIN, log_sf_lower, log_mass))
    log_cdf_upper = torch.special.log_ndtr(upper)  # log P(X <= x + half bin): the whole mass of the lowest bin
    log_sf_lower = torch.special.log_ndtr(-lower)  # log P(X >= x - half bin): the whole mass of the highest bin
    bin_mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=MIN_PROB)
    return torch.where(
        x < -1.0 + HALF_BIN,
        log_cdf_upper,
        torch.where(x > 1.0 - HALF_BIN, log_sf_lower, torch.log(bin_mass)),
    )


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the first (the batch)."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def nats_to_bits(x):
    return x / math.log(2.0)
