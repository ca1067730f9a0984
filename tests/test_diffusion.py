"""The diffusion math, checked against independent derivations (Ho et al. 2020, Eqs. 1–14)."""

import math

import numpy as np
import pytest
import torch

from ddpm.diffusion import LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion
from ddpm.losses import MIN_PROB, approx_standard_normal_cdf, discretized_gaussian_log_likelihood
from ddpm.samplers import SamplerPoint, sample_loop, timestep_subsequence
from ddpm.schedules import make_betas


def linear(T=1000, **kw):
    return GaussianDiffusion(make_betas("linear", T), **kw)


def test_q_sample_closed_form_agrees_with_t_single_steps():
    """q(x_t | x_0) of Eq. 4 against t steps of q(x_t | x_{t-1}) = N(√(1-β_t) x_{t-1}, β_t I) (Eq. 2)."""
    diffusion = linear(T=200)
    betas = diffusion.betas
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    for t in (0, 9, 99, 199):
        # Exact moments of the composed chain, by recursion, independently of ᾱ.
        mean, var = 0.7, 0.0
        for s in range(t + 1):
            mean, var = math.sqrt(1 - betas[s]) * mean, (1 - betas[s]) * var + betas[s]
        assert diffusion.sqrt_alphas_cumprod[t] * 0.7 == pytest.approx(mean, rel=1e-12)
        assert 1 - diffusion.alphas_cumprod[t] == pytest.approx(var, rel=1e-12)

        # Monte Carlo: simulate the chain step by step and draw from the closed form.
        x = x0.clone()
        for s in range(t + 1):
            x = math.sqrt(1 - betas[s]) * x + math.sqrt(betas[s]) * torch.randn(x.shape, generator=g, dtype=x.dtype)
        closed = diffusion.q_sample(x0, torch.full((len(x0),), t), torch.randn(x0.shape, generator=g, dtype=x0.dtype))
        for sample in (x, closed):
            se = math.sqrt(var / len(x0))
            assert abs(sample.mean().item() - mean) < 5 * se
            assert sample.var().item() == pytest.approx(var, rel=0.02)


def test_posterior_agrees_with_gaussian_conditioning():
    """q(x_{t-1} | x_t, x_0) of Eqs. 6–7 against conditioning the joint Gaussian of (x_{t-1}, x_t) given x_0."""
    diffusion = GaussianDiffusion(make_betas("cosine", 50))
    ab = np.cumprod(1 - diffusion.betas)
    rng = np.random.default_rng(1)
    x0, xt = rng.uniform(-1, 1, size=(49, 1)), rng.normal(size=(49, 1))
    t = np.arange(1, 50)
    # x_{t-1} ~ N(√ᾱ_{t-1} x0, 1-ᾱ_{t-1}); x_t = √α_t x_{t-1} + √β_t ε.
    alpha = 1 - diffusion.betas[t]
    m_prev, v_prev = np.sqrt(ab[t - 1]) * x0[:, 0], 1 - ab[t - 1]
    m_t, v_t = np.sqrt(ab[t]) * x0[:, 0], 1 - ab[t]
    cov = np.sqrt(alpha) * v_prev
    expected_mean = m_prev + cov / v_t * (xt[:, 0] - m_t)
    expected_var = v_prev - cov**2 / v_t
    mean, var, log_var = diffusion.q_posterior_mean_variance(torch.from_numpy(x0), torch.from_numpy(xt), torch.from_numpy(t))
    assert np.allclose(mean[:, 0].numpy(), expected_mean, rtol=1e-10, atol=1e-12)
    assert np.allclose(var[:, 0].numpy(), expected_var, rtol=1e-10, atol=0)
    assert np.allclose(log_var[:, 0].numpy(), np.log(expected_var), rtol=1e-10)
    # At the first step the posterior is a point mass at x0; its log-variance is clipped to β̃ of step 2.
    assert diffusion.posterior_variance[0] == 0
    assert diffusion.posterior_log_variance_clipped[0] == pytest.approx(math.log(expected_var[0]))


def test_xstart_round_trips_through_eps_and_posterior_mean():
    diffusion = linear(T=100)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 2, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    t = torch.tensor([0, 1, 5, 20, 50, 80, 98, 99])
    xt = diffusion.q_sample(x0, t, eps)
    assert torch.allclose(diffusion._predict_xstart_from_eps(xt, t, eps), x0, atol=1e-9)
    assert torch.allclose(diffusion._predict_eps_from_xstart(xt, t, x0), eps, atol=1e-7)
    mu, _, _ = diffusion.q_posterior_mean_variance(x0, xt, t)
    assert torch.allclose(diffusion._predict_xstart_from_xprev(xt, t, mu), x0, atol=1e-9)


@pytest.mark.parametrize("log_scale", [-6.0, -4.0, -1.0, 0.5])
@pytest.mark.parametrize("mean", [-1.2, -0.3, 0.0, 0.99])
def test_decoder_probabilities_over_256_bins_sum_to_one(mean, log_scale):
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    log_p = discretized_gaussian_log_likelihood(
        bins, means=torch.full_like(bins, mean), log_scales=torch.full_like(bins, log_scale)
    )
    p = log_p.exp()
    assert torch.all(p >= 0)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6)
    # For a narrow decoder the most probable bin is the one holding the mean (clipped to the data range);
    # a wide one puts its tails into the two stretched edge bins instead.
    if log_scale <= -6.0:
        assert abs(bins[p.argmax()].item() - min(max(mean, -1.0), 1.0)) <= 1.0 / 255 + 1e-12


def test_the_official_cdf_approximation_is_within_1e_3_of_the_normal_cdf():
    x = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    approx = approx_standard_normal_cdf(x)
    assert approx_standard_normal_cdf(torch.zeros(1)).item() == 0.5 and torch.all(approx[1:] >= approx[:-1])  # a CDF
    gap = (approx - torch.special.ndtr(x)).abs().max().item()
    assert 1e-5 < gap < 1e-3  # an approximation, and a close one


@pytest.mark.parametrize("log_scale", [-4.0, -1.0])
@pytest.mark.parametrize("mean", [-0.3, 0.99])
def test_the_official_decoder_differs_from_the_exact_one_only_by_its_cdf(mean, log_scale):
    bins = torch.linspace(-1, 1, 256, dtype=torch.float64)
    kwargs = dict(means=torch.full_like(bins, mean), log_scales=torch.full_like(bins, log_scale))
    exact = discretized_gaussian_log_likelihood(bins, **kwargs).exp()
    official = discretized_gaussian_log_likelihood(bins, decoder="official", **kwargs).exp()
    assert official.sum().item() == pytest.approx(1.0, abs=1e-6)  # still a distribution over the 256 values
    assert 0 < (official - exact).abs().max().item() < 1e-3


def test_the_official_decoder_floors_the_edge_bins_the_exact_one_does_not():
    """A decoder whose mean sits far outside [-1, 1] (an untrained network's can): every bin but the far edge one is
    floored at 1e-12 by the official code; here the edge bin's exact tail is kept, far below that."""
    bins = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    kwargs = dict(means=torch.full_like(bins, 30.0), log_scales=torch.full_like(bins, -2.0))
    exact = discretized_gaussian_log_likelihood(bins, **kwargs)
    official = discretized_gaussian_log_likelihood(bins, decoder="official", **kwargs)
    floor = math.log(MIN_PROB)
    assert official[0].item() == floor and exact[0].item() < floor - 1000  # the lowest bin, its exact tail
    assert official[1].item() == exact[1].item() == floor  # a middle bin: floored by both
    assert official[2].item() == exact[2].item() == 0.0  # the top bin holds all the mass


@pytest.mark.parametrize("per_pass", [4, 3, 20])  # 5 passes; 7 (the last holds 2 of the 20 timesteps); one
def test_calc_bpd_loop_with_timesteps_together_gives_each_images_terms_as_one_by_one(digits, per_pass):
    """Several timesteps in one network pass: the same noise (each image's generator draws in the same order) and
    the same terms, to float rounding; the network saw fewer, larger batches."""
    from ddpm.unet import create_model

    torch.manual_seed(0)
    model = create_model("tiny", dropout=0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    calls = []
    counted = lambda x, t: calls.append(len(x)) or model(x, t)  # noqa: E731
    diffusion = linear(T=20)
    one_by_one = diffusion.calc_bpd_loop(counted, digits[:3], generator=[torch.Generator().manual_seed(i)
                                                                         for i in range(3)])
    assert calls == [3] * 20
    calls.clear()
    together = diffusion.calc_bpd_loop(counted, digits[:3], generator=[torch.Generator().manual_seed(i)
                                                                       for i in range(3)], timesteps_per_pass=per_pass)
    assert calls == [3 * per_pass] * (20 // per_pass) + ([3 * (20 % per_pass)] if 20 % per_pass else [])
    for key in ("total_bpd", "prior_bpd", "vb", "xstart_mse", "mse"):
        torch.testing.assert_close(together[key], one_by_one[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.equal(one_by_one["vb"][:, 1], one_by_one["vb"][:, 2])  # the terms differ: a misplaced one shows


def test_calc_bpd_loop_with_the_official_decoder_changes_l0_only(digits):
    diffusion = linear(T=20)
    model = OracleEps(diffusion, digits[:3] * 0.5)  # a wrong x_0: every term is non-trivial
    runs = {decoder: diffusion.calc_bpd_loop(model, digits[:3], generator=torch.Generator().manual_seed(0),
                                             decoder=decoder) for decoder in ("exact", "official")}
    exact, official = runs["exact"], runs["official"]
    assert torch.equal(exact["vb"][:, 1:], official["vb"][:, 1:]) and torch.equal(exact["prior_bpd"], official["prior_bpd"])
    assert not torch.equal(exact["vb"][:, 0], official["vb"][:, 0])
    assert torch.allclose(official["total_bpd"] - exact["total_bpd"], official["vb"][:, 0] - exact["vb"][:, 0])
    with pytest.raises(ValueError, match="unknown decoder 'tanh'; valid decoders: exact, official"):
        diffusion.calc_bpd_loop(model, digits[:3], decoder="tanh")


def test_prior_term_of_linear_T1000_is_about_1e_minus_5_bits_per_dim():
    """Section 4: with the linear schedule L_T = D_KL(q(x_T|x_0) ‖ N(0, I)) ≈ 1e-5 bits/dim."""
    diffusion = linear()
    x0 = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    prior = diffusion._prior_bpd(x0)
    assert torch.all(prior > 1e-6) and torch.all(prior < 1e-4), prior
    # Fully saturated images carry the most: ᾱ_T x²/2 nats per dim.
    ones = diffusion._prior_bpd(torch.ones(1, 1, 2, 2)).item()
    assert ones == pytest.approx(diffusion.alphas_cumprod[-1] / 2 / math.log(2), rel=1e-3)


class OracleEps(torch.nn.Module):
    """Returns the true ε of x_t for known x_0: the best a model can do."""

    def __init__(self, diffusion, x0):
        super().__init__()
        self.diffusion, self.x0 = diffusion, x0

    def forward(self, x, t):
        return self.diffusion._predict_eps_from_xstart(x, t, self.x0)


@pytest.mark.parametrize("var_type", ["fixedsmall", "fixedlarge"])
def test_bpd_of_true_eps_model_is_far_below_zero_model(var_type, digits):
    diffusion = GaussianDiffusion(make_betas("linear", 1000), "eps", var_type, "kl")
    x0 = digits[:4]
    oracle = diffusion.calc_bpd_loop(OracleEps(diffusion, x0), x0, generator=torch.Generator().manual_seed(0))
    zeros = diffusion.calc_bpd_loop(lambda x, t: torch.zeros_like(x), x0, generator=torch.Generator().manual_seed(0))
    for out in (oracle, zeros):
        assert out["vb"].shape == (4, 1000) and out["xstart_mse"].shape == (4, 1000) and out["mse"].shape == (4, 1000)
        assert torch.allclose(out["total_bpd"], out["vb"].sum(1) + out["prior_bpd"])
        assert torch.all(torch.isfinite(out["total_bpd"]))
    assert torch.all(oracle["total_bpd"] * 4 < zeros["total_bpd"]), (oracle["total_bpd"], zeros["total_bpd"])
    assert torch.allclose(oracle["mse"], torch.zeros(4, 1000), atol=1e-5)
    assert torch.all(oracle["xstart_mse"] < 1e-8)
    if var_type == "fixedsmall":  # the true posterior is matched exactly: every L_{t-1} vanishes
        assert torch.all(oracle["vb"][:, 1:].abs() < 1e-4)


def test_bpd_refuses_images_outside_unit_range():
    diffusion = linear(T=10)
    with pytest.raises(ValueError, match=r"\[-1, 1\].*255"):
        diffusion.calc_bpd_loop(lambda x, t: x, torch.full((1, 1, 2, 2), 255.0))
    with pytest.raises(ValueError, match="NaN or Inf"):
        diffusion.calc_bpd_loop(lambda x, t: x, torch.tensor([[[[float("nan")]]]]))


def test_kl_training_loss_is_T_times_the_bound_terms(digits):
    """The ``kl`` loss at step t equals T · L_t of calc_bpd_loop for the same noise (no clipping)."""
    T = 8
    diffusion = GaussianDiffusion(make_betas("linear", T, beta_end=0.2), "eps", "fixedsmall", "kl")
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1).double()
    wrapped = lambda x, t: model(x) * (1 + t[:, None, None, None] / T)  # noqa: E731
    x0 = digits[:3].double()
    out = diffusion.calc_bpd_loop(wrapped, x0, clip_denoised=False, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    noises = [torch.randn(x0.shape, generator=g, dtype=x0.dtype) for _ in range(T)][::-1]  # drawn from t = T-1 down
    for t in range(T):
        losses = diffusion.training_losses(wrapped, x0, torch.full((3,), t), noise=noises[t])
        assert torch.allclose(losses["loss"], T * out["vb"][:, t], rtol=1e-9)


def test_unknown_type_names_list_the_valid_ones():
    for kwarg, valid in (("mean_type", MEAN_TYPES), ("var_type", VAR_TYPES), ("loss_type", LOSS_TYPES)):
        with pytest.raises(ValueError) as err:
            linear(T=10, **{kwarg: "nonsense"})
        assert kwarg in str(err.value) and "nonsense" in str(err.value)
        assert all(v in str(err.value) for v in valid)


@pytest.mark.parametrize("var_type", ["learned", "learned_range"])
def test_learned_variance_with_too_few_output_channels_is_refused(var_type):
    diffusion = linear(T=10, var_type=var_type)
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"2 x 3 = 6 channels.*got \(2, 3, 4, 4\)"):
        diffusion.p_mean_variance(lambda x, t: torch.zeros_like(x), x, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="6 channels"):
        diffusion.training_losses(lambda x, t: torch.zeros_like(x), x, torch.zeros(2, dtype=torch.long))


def test_timesteps_are_checked():
    diffusion = linear(T=10)
    x = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        diffusion.q_sample(x, torch.tensor([0, 10]))
    with pytest.raises(TypeError, match="integer tensor"):
        diffusion.q_sample(x, torch.tensor([0.0, 1.0]))


def test_learned_range_interpolates_between_beta_tilde_and_beta():
    diffusion = linear(T=50, var_type="learned_range")
    x = torch.zeros(1, 1, 2, 2)
    t = torch.tensor([10])
    for v, expected in ((-1.0, diffusion.posterior_log_variance_clipped[10]), (1.0, math.log(diffusion.betas[10]))):
        out = diffusion.p_mean_variance(lambda x, t: torch.cat([x, torch.full_like(x, v)], 1), x, t)
        assert out["log_variance"].flatten()[0].item() == pytest.approx(expected, rel=1e-6)


def test_hybrid_stops_the_gradient_of_the_vlb_term_at_the_mean(digits):
    diffusion = linear(T=20, var_type="learned_range", loss_type="hybrid")
    x0, t = digits[:2], torch.tensor([3, 15])
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(4))
    output = (torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.5).requires_grad_(True)
    losses = diffusion.training_losses(lambda x, t: output * 1.0, x0, t, noise=noise)
    (grad,) = torch.autograd.grad(losses["vb"].sum(), output)
    assert torch.all(grad[:, :1] == 0), "the vlb term must not move the mean"
    assert grad[:, 1:].abs().sum() > 0, "the vlb term must train the variance"
    # λ = 0.001 and L_vlb ≈ T · L_t: the vb part is λ T times the per-step bound L_t.
    x_t = diffusion.q_sample(x0, t, noise)
    per_step = diffusion._vb_terms_bpd(None, x0, x_t, t, clip_denoised=False, model_output=output.detach())["output"]
    assert torch.allclose(losses["vb"], per_step * 20 * 0.001)
    assert torch.allclose(losses["loss"], losses["mse"] + losses["vb"])


def test_sample_loop_returns_trajectory_and_is_seeded_per_sample():
    diffusion = linear(T=30)
    model = lambda x, t: 0.1 * x  # noqa: E731  (element-wise: samples cannot influence each other)
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    every_step = SamplerPoint("ancestral")
    batch, trajectory = sample_loop(model, diffusion, every_step, (3, 1, 4, 4), gens([7, 8, 9]),
                                    return_trajectory=True, trajectory_steps=[29, 15, 0])
    assert batch.shape == (3, 1, 4, 4) and sorted(trajectory) == [0, 15, 29]
    assert torch.equal(trajectory[0], batch)  # at the last step x̂_0 is the (clipped) sample mean
    alone = sample_loop(model, diffusion, every_step, (1, 1, 4, 4), gens([8]))
    assert torch.equal(alone[0], batch[1])
    again = sample_loop(model, diffusion, every_step, (3, 1, 4, 4), gens([7, 8, 9]))
    assert torch.equal(again, batch)
    full = sample_loop(model, diffusion, every_step, (1, 1, 2, 2), torch.Generator().manual_seed(0),
                       return_trajectory=True)[1]
    assert sorted(full) == list(range(30))


def test_respaced_process_keeps_alpha_bar_and_calls_model_with_original_timesteps():
    diffusion = linear(T=1000)
    same = diffusion.respaced(range(1000))
    assert np.allclose(same.betas, diffusion.betas, rtol=1e-9)
    fast = diffusion.respaced(timestep_subsequence(1000, 10))
    kept = fast.timestep_map
    assert kept.tolist() == list(range(0, 1000, 100))
    assert np.allclose(fast.alphas_cumprod, diffusion.alphas_cumprod[kept], rtol=1e-9)
    seen = []

    def model(x, t):
        seen.append(int(t[0]))
        return torch.zeros_like(x)

    sample_loop(model, diffusion, SamplerPoint("ancestral", 10), (1, 1, 2, 2), torch.Generator().manual_seed(0))
    assert seen == sorted(kept.tolist(), reverse=True)
    with pytest.raises(ValueError, match="non-empty subset"):
        diffusion.respaced([])
