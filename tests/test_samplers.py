"""The samplers' mathematics without a peer: DDIM's determinism, its η = 1 case against the ancestral sampler with
σ² = β̃, encode → decode, the timestep subsequences, the variance overrides, per-index seeding, and bad points
refused by name. (Parity with diffusers' schedulers is in test_sampler_parity.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddpm.checkpoint import build
from ddpm.samplers import (SamplerPoint, expand_sampling, network_evaluations, reconstruction_error, sample_loop,
                           sampling_process, timestep_subsequence)
from ddpm.settings import TrainConfig


def tiny_network(T=100, var_type="fixedlarge", seed=0):
    """A random-weight U-Net of the ``tiny`` preset (8×8, one channel) and its process. The layers a new network
    starts at (nearly) zero (its output among them) get random weights too: a network that predicts ε ≈ 0 would make every
    sampler trivially exact."""
    torch.manual_seed(seed)
    model, diffusion = build(TrainConfig(T=T, var_type=var_type), in_channels=1, image_size=8)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.abs().max() < 1e-3:  # zero, or DDPM's init of scale 1e-10
                parameter.normal_(0, 0.05)
    return model.eval(), diffusion


def generators(seed, count):
    return [torch.Generator().manual_seed(seed * 1000 + i) for i in range(count)]


SHAPE = (3, 1, 8, 8)


def test_ddim_with_eta_0_is_a_function_of_x_T_alone():
    model, diffusion = tiny_network()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
    point = SamplerPoint("ddim", 10, eta=0.0)
    first = sample_loop(model, diffusion, point, SHAPE, generators(1, 3), noise=noise)
    second = sample_loop(model, diffusion, point, SHAPE, generators(2, 3), noise=noise)  # other step noise
    assert torch.equal(first, second)
    noisy = SamplerPoint("ddim", 10, eta=0.5)
    assert not torch.allclose(sample_loop(model, diffusion, noisy, SHAPE, generators(1, 3), noise=noise),
                              sample_loop(model, diffusion, noisy, SHAPE, generators(2, 3), noise=noise))


def test_ddim_with_eta_1_on_every_step_is_ancestral_sampling_with_the_posterior_variance():
    model, diffusion = tiny_network()
    ddim = sample_loop(model, diffusion, SamplerPoint("ddim", eta=1.0), SHAPE, generators(3, 3))
    ancestral = sample_loop(model, diffusion, SamplerPoint("ancestral", variance="fixedsmall"), SHAPE, generators(3, 3))
    torch.testing.assert_close(ddim, ancestral, rtol=0, atol=1e-5)
    # σ² = β is another process: the same noise gives other samples
    large = sample_loop(model, diffusion, SamplerPoint("ancestral", variance="fixedlarge"), SHAPE, generators(3, 3))
    assert (large - ancestral).abs().max() > 1e-3


def test_encoding_then_decoding_reconstructs_x0_better_with_more_steps():
    model, diffusion = tiny_network()
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    errors = [reconstruction_error(model, diffusion, x0, steps=S).mean().item() for S in (5, 10, 25, 50, 100)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] / 10, errors


def test_a_sample_depends_on_its_own_generator_only_for_every_sampler():
    model, diffusion = tiny_network()
    for point in (SamplerPoint("ddim", 10, eta=0.5), SamplerPoint("ancestral", 10, "quadratic", variance="fixedlarge")):
        together = sample_loop(model, diffusion, point, SHAPE, generators(4, 3))
        alone = sample_loop(model, diffusion, point, (1, *SHAPE[1:]), generators(4, 3)[1:2])
        # the same noise: equal up to float32 kernels that round a batch of 1 and of 3 differently (other noise: O(1))
        torch.testing.assert_close(together[1:2], alone, rtol=0, atol=1e-5)
        assert (together[0] - together[1]).abs().max() > 0.1


def test_uniform_and_quadratic_subsequences_are_ermongroup_ddims():
    T = 1000
    for S in (10, 20, 50, 100):
        assert timestep_subsequence(T, S, "uniform") == list(range(0, T, T // S))
    # ermongroup/ddim's quadratic list for S = 10 (linspace(0, sqrt(0.8 T), S) ** 2, truncated)
    assert timestep_subsequence(T, 10, "quadratic") == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    # its repeated small steps are dropped: 50 → 49 steps, 100 → 96
    assert [len(timestep_subsequence(T, S, "quadratic")) for S in (20, 50, 100)] == [20, 49, 96]
    assert timestep_subsequence(T, T, "quadratic") == list(range(T)) == timestep_subsequence(T, None, "uniform")
    assert network_evaluations(T, SamplerPoint("ddim", 100, "quadratic")) == 96
    for bad in (0, T + 1):
        with pytest.raises(ValueError, match="1 <= S <= T"):
            timestep_subsequence(T, bad, "uniform")


def test_strided_subsequences_are_improved_diffusions_space_timesteps():
    """improved-diffusion's space_timesteps(T, "S"): the first and the last step and S − 2 evenly between; for these
    S its running sum of the stride lands where round(linspace(0, T − 1, S)) does (computed here the other way)."""
    for T, S in ((4000, 100), (4000, 50), (1000, 10), (4000, 4000)):
        steps = timestep_subsequence(T, S, "strided")
        assert steps == [int(v) for v in np.round(np.linspace(0, T - 1, S))], (T, S)
        assert steps[0] == 0 and steps[-1] == T - 1 and len(set(steps)) == S
    assert timestep_subsequence(4000, 100, "strided")[:4] == [0, 40, 81, 121]  # the stride is 3999/99 = 40.39…
    assert timestep_subsequence(4000, 1, "strided") == [0]
    assert network_evaluations(4000, SamplerPoint("ancestral", 50, "strided")) == 50


def test_sigma_hat_is_beta_of_the_subsequence_and_fixedsmall_its_posterior_variance():
    model, diffusion = tiny_network(T=1000)
    steps = timestep_subsequence(1000, 10, "quadratic")
    alpha_bar = diffusion.alphas_cumprod[steps]
    beta = 1 - alpha_bar / np.append(1.0, alpha_bar[:-1])
    _, large = sampling_process(model, diffusion, SamplerPoint("ancestral", 10, "quadratic", variance="fixedlarge"), 1)
    np.testing.assert_allclose(large.fixedlarge_variance[1:], beta[1:], rtol=1e-12)
    _, small = sampling_process(model, diffusion, SamplerPoint("ancestral", 10, "quadratic", variance="fixedsmall"), 1)
    assert small.var_type == "fixedsmall"
    np.testing.assert_allclose(small.posterior_variance[1:],
                               beta[1:] * (1 - alpha_bar[:-1]) / (1 - alpha_bar[1:]), rtol=1e-12)
    assert list(large.timestep_map) == steps  # the network is called with the original steps


def test_a_learned_variance_model_samples_with_an_override_and_with_ddim():
    model, diffusion = tiny_network(var_type="learned_range")
    for point in (SamplerPoint("ancestral", 10, variance="fixedlarge"), SamplerPoint("ddim", 10, eta=0.2),
                  SamplerPoint("ancestral", 10)):
        x = sample_loop(model, diffusion, point, SHAPE, generators(6, 3))
        assert x.shape == SHAPE and torch.isfinite(x).all()


def test_the_trajectory_records_x0_predictions_of_the_subsequence():
    model, diffusion = tiny_network()
    x, trajectory = sample_loop(model, diffusion, SamplerPoint("ddim", 10), SHAPE, generators(7, 3),
                                return_trajectory=True, trajectory_steps=[9, 0])
    assert sorted(trajectory) == [0, 9]
    torch.testing.assert_close(trajectory[0], x)  # η = 0, no clipping: the last x̂₀ is the sample


@pytest.mark.parametrize("row, message", [
    ({"sampler": "ddim", "eta": 1.5}, r"sampling\[0\]\.eta: η must be in \[0, 1\]"),
    ({"sampler": "ddim", "eta": -0.1}, r"sampling\[0\]\.eta"),
    ({"sampler": "ancestral", "eta": 0.5}, r"sampling\[0\]\.eta: η is DDIM's"),
    ({"sampler": "ddim", "variance": "fixedlarge"}, r"sampling\[0\]\.variance"),
    ({"sampler": "plms"}, r"sampling\[0\]\.sampler: unknown sampler 'plms'"),
    ({"sampler": "ddim", "skip": "cubic"}, r"sampling\[0\]\.skip: unknown skip 'cubic'"),
    ({"steps": 0}, r"sampling\[0\]\.steps: S must be an integer >= 1"),
    ({"steps": 101}, r"sampling\[0\]\.steps: S = 101 is more than the T = 100"),
    ({"speed": 2}, r"sampling\[0\]: unknown key \['speed'\]"),
])
def test_a_bad_sampler_point_is_refused_naming_its_key(row, message):
    with pytest.raises(ValueError, match=message):
        expand_sampling({"sampling": [row]}, [100, 400])


def test_sampler_points_cross_within_a_row_and_a_repeated_point_is_refused():
    points = expand_sampling({"sampling": [{"sampler": "ancestral"},
                                           {"sampler": "ddim", "steps": [10, 50], "eta": [0.0, 1.0]}]})
    assert [p.name for p in points] == ["ancestral", "ddim-eta0-S10-uniform", "ddim-eta1-S10-uniform",
                                        "ddim-eta0-S50-uniform", "ddim-eta1-S50-uniform"]
    with pytest.raises(ValueError, match="'ddim-eta0-S10-uniform' is listed twice"):
        expand_sampling({"sampling": [{"sampler": "ddim", "steps": 10}, {"sampler": "ddim", "steps": 10, "eta": 0}]})
