"""Per-sample noise drawn on the device (issue 28, :mod:`ddpm.noise`): Philox4x32-10 against its authors' known
answers, every sample's noise a function of (seed, index, draw) alone whatever the batch, order or lookahead, the
numbers standard normal and independent, and whole sample sets the same in any batches."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import stats

from ddpm.noise import SampleNoise, _mulhilo, philox4x32
from ddpm.samplers import SamplerPoint, sample_loop

from test_samplers import tiny_network

#: Random123's kat_vectors, the three philox4x32 10 lines: counter (4 words), key (2 words), output (4 words).
KNOWN_ANSWERS = [
    ("00000000 00000000 00000000 00000000", "00000000 00000000", "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
    ("ffffffff ffffffff ffffffff ffffffff", "ffffffff ffffffff", "408f276d 41c83b0e a20bc7c6 6d5451fd"),
    ("243f6a88 85a308d3 13198a2e 03707344", "a4093822 299f31d0", "d16cfe09 94fdcceb 5001e420 24126ea1"),
]


def words(text):
    return [torch.tensor([int(w, 16)], dtype=torch.int64) for w in text.split()]


@pytest.mark.parametrize("counter,key,expected", KNOWN_ANSWERS)
def test_philox4x32_10_gives_the_known_answers(counter, key, expected):
    out = philox4x32(words(counter), words(key))
    assert [f"{int(w):08x}" for w in out] == expected.split()


def test_the_32_bit_product_is_exact_without_overflow():
    rng = random.Random(0)
    values = [0, 1, 0xFFFF, 0x10000, 0xFFFFFFFF] + [rng.getrandbits(32) for _ in range(2000)]
    for multiplier in (0xD2511F53, 0xCD9E8D57, 0xFFFFFFFF):
        hi, lo = _mulhilo(multiplier, torch.tensor(values, dtype=torch.int64))
        products = [v * multiplier for v in values]
        assert hi.tolist() == [p >> 32 for p in products] and lo.tolist() == [p & 0xFFFFFFFF for p in products]


def draws(noise: SampleNoise, shapes):
    return [noise.randn(shape) for shape in shapes]


def test_a_samples_noise_is_the_same_in_any_batch_order_or_lookahead():
    shapes = [(1, 3, 5, 5)] * 4
    alone = {i: torch.cat(draws(SampleNoise(7, [i]), shapes)) for i in (2, 3, 9)}
    for indices, lookahead in (([2, 3, 9], None), ([9, 2, 3], 1), (list(range(12)), 3), ([3, 9, 2, 0], 16)):
        noise = SampleNoise(7, indices, lookahead=lookahead)
        together = draws(noise, [(len(indices), *shape[1:]) for shape in shapes])
        for position, index in enumerate(indices):
            if index in alone:
                assert torch.equal(torch.stack([d[position] for d in together]), alone[index]), (indices, index)
    first = SampleNoise(7, [2]).randn((1, 75))
    assert not torch.equal(first, SampleNoise(8, [2]).randn((1, 75)))  # another seed
    assert not torch.equal(first, SampleNoise(7, [3]).randn((1, 75)))  # another sample


def test_lookahead_across_a_change_of_shape_keeps_each_draw():
    shapes = [(2, 16), (2, 16), (2, 4, 4, 3), (2, 16), (2, 16)]
    one_by_one = draws(SampleNoise(1, [5, 6], lookahead=1), shapes)
    ahead = draws(SampleNoise(1, [5, 6], lookahead=4), shapes)
    assert all(torch.equal(a, b) for a, b in zip(one_by_one, ahead))
    # an element's value does not depend on the draw's size either: the first 16 of 48 are those of a draw of 16
    assert torch.equal(ahead[2].flatten(1)[:, :16], one_by_one[2].flatten(1)[:, :16])
    assert not torch.equal(one_by_one[0], one_by_one[1])  # each draw is new noise


def test_the_noise_is_standard_normal_and_independent():
    noise = SampleNoise(0, range(64))
    x = torch.stack(draws(noise, [(64, 4096)] * 3)).double()  # (draw, sample, element)
    flat = x.flatten().numpy()
    n = flat.size
    assert abs(flat.mean()) < 4 / np.sqrt(n) and abs(flat.var() - 1) < 4 * np.sqrt(2 / n)
    assert stats.kstest(flat[:200_000], "norm").pvalue > 1e-3
    assert abs(stats.kurtosis(flat)) < 4 * np.sqrt(24 / n)
    tail = np.mean(np.abs(flat) > 3)
    assert abs(tail - 2 * stats.norm.sf(3)) < 5 * np.sqrt(2 * stats.norm.sf(3) / n)

    def correlation(a, b):
        return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])
    limit = 5 / np.sqrt(x[0].numel())
    assert abs(correlation(x[0, :, :-1], x[0, :, 1:])) < limit  # neighbouring elements (a Box–Muller pair among them)
    assert abs(correlation(x[0, :-1], x[0, 1:])) < limit  # neighbouring samples
    assert abs(correlation(x[0], x[1])) < limit  # successive draws
    pairs = x[0].reshape(64, -1, 2)
    assert abs(correlation(pairs[..., 0] ** 2, pairs[..., 1] ** 2)) < limit  # the two normals of one radius


def test_the_noise_is_computed_on_the_device_it_is_asked_for():
    """Every operation runs where the draw is asked for (a meta tensor refuses any operand from another device); the
    only copy is of the keys, once per lookahead window."""
    out = SampleNoise(0, range(3)).randn((3, 2, 4), device="meta")
    assert out.device.type == "meta" and out.shape == (3, 2, 4)


def test_bad_draws_are_refused_by_name():
    with pytest.raises(ValueError, match="first dimension must be the number of samples"):
        SampleNoise(0, range(3)).randn((2, 8))
    with pytest.raises(ValueError, match="at least one sample index"):
        SampleNoise(0, [])
    with pytest.raises(ValueError, match="lookahead must be at least 1"):
        SampleNoise(0, [1], lookahead=0)


@pytest.mark.parametrize("point", [SamplerPoint("ancestral", 10), SamplerPoint("ddim", 10, eta=0.5)], ids=str)
def test_a_sample_set_is_the_same_in_any_batches(point):
    """A whole set drawn as one batch of 6 and as batches of 2 and 4 (the noise x_T and every step's): the same
    samples, up to float32 kernels that round batches of other sizes differently (other noise: O(1))."""
    model, diffusion = tiny_network()
    shape = (1, 8, 8)
    whole = sample_loop(model, diffusion, point, (6, *shape), SampleNoise(3, range(6)))
    parts = torch.cat([sample_loop(model, diffusion, point, (len(r), *shape), SampleNoise(3, r))
                       for r in (range(0, 2), range(2, 6))])
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-5)
    other = sample_loop(model, diffusion, point, (6, *shape), SampleNoise(4, range(6)))
    assert (whole - other).abs().max() > 0.1
