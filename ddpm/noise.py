"""Per-sample Gaussian noise drawn on the device: each sample's noise is a function of (seed, sample index, draw,
element) alone, so a sample set is the same whatever its batches, shards or device count, and no generator lives on
the CPU to be copied from at every step.

The numbers come from the counter-based generator Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as
easy as 1, 2, 3"; the generator of cuRAND and of PyTorch's CUDA ``randn``), evaluated with integer tensor operations
on the device: the key is the sample's (two 32-bit words of ``numpy.random.SeedSequence([seed, index])``), the
counter is (block of four elements, draw, 0, 0); each output's four words give four normals by the Box–Muller
transform. The integers are the same on every device; the normals may differ there in the last bits of the
transcendental functions.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

#: What :class:`SampleNoise` draws, as the sample files name it (key ``sample_noise``).
SCHEME = "philox4x32-10 box-muller"

_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
_ROUNDS = 10
_WORD = 0xFFFFFFFF
#: Draws computed together (:attr:`SampleNoise.lookahead`), up to this many elements on a CPU and on other devices:
#: a draw is ~280 small integer tensor operations, whose launches (a GPU's kernels, a CPU's dispatch) cost more than
#: their work on a small batch. At most :data:`_MAX_LOOKAHEAD` draws, so that few are computed for nothing at the end.
_LOOKAHEAD_ELEMENTS = {"cpu": 2**16, "other": 2**22}
_MAX_LOOKAHEAD = 16


def _mulhilo(multiplier: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The high and low 32-bit words of ``multiplier · word`` (both < 2³²), in int64 without overflow: the
    multiplier is split into 16-bit halves, so no partial product reaches 2⁶³."""
    high_part = word * (multiplier >> 16)
    low_sum = word * (multiplier & 0xFFFF) + ((high_part & 0xFFFF) << 16)
    return (high_part >> 16) + (low_sum >> 32), low_sum & _WORD


def philox4x32(counter: Sequence[torch.Tensor], key: Sequence[torch.Tensor], rounds: int = _ROUNDS
               ) -> list[torch.Tensor]:
    """Philox4x32-``rounds`` of four counter words and two key words (int64 tensors holding values < 2³², which
    broadcast together): the four output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(rounds):
        if round_:
            k0, k1 = (k0 + _KEY_STEPS[0]) & _WORD, (k1 + _KEY_STEPS[1]) & _WORD
        hi0, lo0 = _mulhilo(_MULTIPLIERS[0], c0)
        hi1, lo1 = _mulhilo(_MULTIPLIERS[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def _box_muller(words: list[torch.Tensor]) -> torch.Tensor:
    """Four standard normals per position from four uniform 32-bit words (in float64: u = (w + ½) / 2³² in (0, 1))."""
    u = [(w.double() + 0.5) * 2.0**-32 for w in words]
    normals = []
    for radius_word, angle_word in ((u[0], u[1]), (u[2], u[3])):
        radius, angle = torch.sqrt(-2.0 * torch.log(radius_word)), 2.0 * math.pi * angle_word
        normals += [radius * torch.cos(angle), radius * torch.sin(angle)]
    return torch.stack(normals, dim=-1)


def sample_keys(seed: int, indices: Sequence[int]) -> torch.Tensor:
    """The Philox keys of samples ``indices`` of ``seed``: (len(indices), 2) int64 words < 2³²."""
    words = [np.random.SeedSequence([int(seed), int(i)]).generate_state(2, dtype=np.uint32) for i in indices]
    return torch.from_numpy(np.asarray(words, dtype=np.int64).reshape(-1, 2))


def philox_normals(keys: torch.Tensor, draws: torch.Tensor, elements: int) -> torch.Tensor:
    """Standard normals (len(draws), len(keys), elements) in float64, on the keys' device: element e of draw d of
    the sample with key k is a function of (k, d, e) alone."""
    blocks = torch.arange((elements + 3) // 4, device=keys.device, dtype=torch.int64)
    zero = torch.zeros((), dtype=torch.int64, device=keys.device)
    counter = (blocks[None, None, :], draws.to(keys.device)[:, None, None], zero, zero)
    key = (keys[None, :, 0, None], keys[None, :, 1, None])
    words = philox4x32(counter, key)
    return _box_muller(words).flatten(2)[..., :elements]


class SampleNoise:
    """The noise of samples ``indices`` of ``seed``: each :meth:`randn` call is the next draw (x_T, then a step's
    noise, …), every sample's draw k depending on its own (seed, index) alone. Pass it where the diffusion code
    takes a generator (:func:`ddpm.diffusion.randn`). A repeated index gets the same noise (one stream shared by
    several rows). ``lookahead``: how many draws are computed together (default: by the device and the draw's size,
    :data:`_LOOKAHEAD_ELEMENTS`); it changes no number."""

    def __init__(self, seed: int, indices: Sequence[int], *, lookahead: int | None = None):
        self.seed, self.indices = int(seed), [int(i) for i in indices]
        if not self.indices:
            raise ValueError("SampleNoise needs at least one sample index")
        if lookahead is not None and lookahead < 1:
            raise ValueError(f"lookahead must be at least 1, got {lookahead}")
        self.keys = sample_keys(self.seed, self.indices)
        self.draws = 0
        self.lookahead = lookahead
        self._held: tuple[tuple, int, torch.Tensor] | None = None  # ((elements, device), first draw, normals)

    def __len__(self) -> int:
        return len(self.indices)

    def _ahead(self, device: torch.device, elements: int) -> int:
        if self.lookahead is not None:
            return self.lookahead
        budget = _LOOKAHEAD_ELEMENTS["cpu" if device.type == "cpu" else "other"]
        return max(1, min(_MAX_LOOKAHEAD, budget // (elements * len(self))))

    def randn(self, shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        """The next draw, of ``shape`` (its first dimension: one row per sample), drawn on ``device``."""
        shape = tuple(shape)
        if not shape or shape[0] != len(self):
            raise ValueError(f"noise of shape {shape} for {len(self)} samples: the first dimension must be the "
                             f"number of samples")
        device = torch.device("cpu" if device is None else device)
        elements, draw = math.prod(shape[1:]), self.draws
        self.draws += 1
        held = self._held
        if held is None or held[0] != (elements, device) or not held[1] <= draw < held[1] + len(held[2]):
            count = self._ahead(device, elements)
            draws = torch.arange(draw, draw + count, dtype=torch.int64)
            held = self._held = ((elements, device), draw, philox_normals(self.keys.to(device), draws, elements))
        return held[2][draw - held[1]].reshape(shape).to(dtype)
