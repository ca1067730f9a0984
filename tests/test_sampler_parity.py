"""Our samplers against diffusers' schedulers, step by step: DDIM and DDPM's ancestral sampler, plain and respaced.

diffusers is the peer: an independent, widely used implementation of the same steps. Its ``DDIMScheduler`` is
DDIM Eq. 12 with σ_t(η) of Eq. 16 (ᾱ before the last step 1: ``set_alpha_to_one``; ε̂ recomputed from the clipped
x̂_0: ``use_clipped_model_output``); its ``DDPMScheduler`` is DDPM Algorithm 2 with σ² = β̃_t (``fixed_small``) or
β_t (``fixed_large``), on every step or on any descending subsequence (β of a step = 1 − ᾱ_t/ᾱ_prev, IDDPM §4).
Its "leading" spacing with ``steps_offset`` 0 is our ``uniform`` subsequence when S divides T.

What is compared: one small random-weight ``UNet2DModel`` (built from a config, seeded; nothing downloaded) on
T = 100 steps of DDPM's linear schedule, in float32. At every step of the sequence, ours (``ddim_sample`` /
``p_sample`` on the process :func:`~ddpm.samplers.sampling_process` makes for the point) and diffusers' ``step``
start from the same x_t, see the same network output and the same noise, and must give the same x_{t−1} and x̂_0
within 1e-5 (diffusers' DDPM scheduler gets its ᾱ table in float64, as ours has it: :func:`ddpm_scheduler` says why).
The noise: each side draws its own, with its own code, from per-sample ``torch.Generator`` s in the same state (ours
cloned before each step), so equal results also mean both draw z alike (one ``torch.randn`` per sample, on the
generator's device). Our network is called with the original step indices; the test records them and checks they
are diffusers' timesteps. Last, whole runs: :func:`~ddpm.samplers.sample_loop` from per-sample seeds gives the images
``DDPMPipeline`` / ``DDIMPipeline`` give from the same seeds.

The ancestral sampler's ``model`` variance is compared for IDDPM's ``learned_range`` (diffusers' ``learned_range``:
the same interpolation of log β and log β̃), not for ``learned``: there our network outputs log σ², diffusers' σ².
Not expressible in diffusers, so not compared here: DDIM on a subsequence other than "leading" (``DDIMScheduler``
takes no custom timesteps; its previous step is always t − T//S).
"""

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DModel

from ddpm.diffusion import GaussianDiffusion
from ddpm.samplers import SamplerPoint, sample_loop, sampling_process, timestep_subsequence
from ddpm.schedules import make_betas

T = 100
BATCH, CHANNELS, SIZE = 2, 3, 8
SHAPE = (BATCH, CHANNELS, SIZE, SIZE)
TOL = 1e-5


def tiny_unet(out_channels):
    """A tiny random-weight network, the same on every run (seeded without touching the global RNG)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = UNet2DModel(sample_size=SIZE, in_channels=CHANNELS, out_channels=out_channels,
                          block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                          down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    net.eval().requires_grad_(False)
    # A network whose output is ~0 would make the comparison blind to the coefficients of ε̂ (and of v).
    assert net(torch.randn(SHAPE), torch.tensor([T // 2] * BATCH)).sample.std() > 0.1
    return net


@pytest.fixture(scope="module")
def unet():
    """The ε-network."""
    return tiny_unet(CHANNELS)


@pytest.fixture(scope="module")
def unet_learned_range():
    """ε and IDDPM's v (the interpolation between log β̃ and log β): twice the channels."""
    return tiny_unet(2 * CHANNELS)


def recording(unet, calls):
    """The UNet as our samplers call it, ``model(x, t) → ε̂``, appending each call's timesteps to ``calls``."""
    def model(x, t):
        calls.append(t.tolist())
        return unet(x, t).sample
    return model


def generators(seed):
    return [torch.Generator().manual_seed(seed + k) for k in range(BATCH)]


def clones(gens):
    """Generators in the same state as ``gens``, drawing the same numbers independently of them."""
    out = []
    for g in gens:
        c = torch.Generator(device=g.device)
        c.set_state(g.get_state())
        out.append(c)
    return out


def our_process(unet, point, var_type="fixedlarge"):
    """(network, respaced process, calls) for ``point`` on the base process (linear β, T steps, ε-prediction)."""
    calls = []
    diffusion = GaussianDiffusion(make_betas("linear", T), mean_type="eps", var_type=var_type)
    network, process = sampling_process(recording(unet, calls), diffusion, point, CHANNELS)
    return network, process, calls


def compare_every_step(unet, scheduler, process, calls, our_step, their_step):
    """Walk the sequence once from x_T: at each step, ours and diffusers' from the same x_t, network output and
    generator state must agree; continue from ours. Returns the x̂_0 of each step (diffusers')."""
    timesteps = scheduler.timesteps.tolist()
    assert len(timesteps) == process.num_timesteps
    gens = generators(seed=1)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    pred_xstarts = []
    for i, timestep in zip(range(process.num_timesteps - 1, -1, -1), timesteps):
        their_gens = clones(gens)
        ours = our_step(x, torch.full((BATCH,), i, dtype=torch.long), gens)
        theirs = their_step(unet(x, timestep).sample, timestep, x, their_gens)
        assert calls[-1] == [timestep] * BATCH, f"step {i}: our network was called at {calls[-1]}, not {timestep}"
        torch.testing.assert_close(ours["pred_xstart"], theirs.pred_original_sample, rtol=0, atol=TOL,
                                   msg=lambda m: f"x̂_0 at step {i} (t = {timestep}): {m}")
        torch.testing.assert_close(ours["sample"], theirs.prev_sample, rtol=0, atol=TOL,
                                   msg=lambda m: f"x_(t-1) at step {i} (t = {timestep}): {m}")
        pred_xstarts.append(theirs.pred_original_sample)
        x = ours["sample"]
    assert len(calls) == len(timesteps)
    return pred_xstarts


def ddim_scheduler(clip):
    return DDIMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         timestep_spacing="leading", steps_offset=0, set_alpha_to_one=True, clip_sample=clip,
                         prediction_type="epsilon")


def ddpm_scheduler(variance):
    """diffusers' DDPM scheduler, its ᾱ table recomputed in float64 from its own β by its own formula.

    diffusers keeps ᾱ in float32 (a cumprod of float32 β); ours keeps it in float64, as improved-diffusion does.
    The ancestral step's posterior coefficients divide by 1 − ᾱ_t, which near t = 0 is small (4e-4 at t = 1 of
    T = 100) and keeps only ~4 digits in float32: with the float32 table diffusers' x_{t−1} differs from ours by up to
    7.9e-5 at t = 1 (2.9e-5 at t = 2, 1.5e-5 at t = 3, < 1e-5 above), with the float64 table by < 3e-7 at every t.
    That is the table's precision, not the step's algebra, so the peer gets the precise table; x, ε̂ and the step's
    arithmetic stay float32 on both sides. (DDIM's step does not divide by 1 − ᾱ_t: its float32 table is kept.)"""
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              variance_type={"fixedsmall": "fixed_small", "fixedlarge": "fixed_large",
                                             "learned_range": "learned_range"}[variance],
                              clip_sample=True, timestep_spacing="leading", steps_offset=0, prediction_type="epsilon")
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    return scheduler


def compare_ddim(unet, steps, eta, clip):
    scheduler = ddim_scheduler(clip)
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.flip(0).tolist() == timestep_subsequence(T, steps, "uniform")
    network, process, calls = our_process(unet, SamplerPoint("ddim", steps=steps, eta=eta, clip=clip))
    return compare_every_step(
        unet, scheduler, process, calls,
        lambda x, t, gens: process.ddim_sample(network, x, t, eta=eta, generator=gens, clip_denoised=clip),
        lambda eps, timestep, x, gens: scheduler.step(eps, timestep, x, eta=eta, use_clipped_model_output=True,
                                                      generator=gens),
    )


def compare_ancestral(unet, variance, steps, skip):
    """``variance``: a fixed one (the point's override) or ``learned_range`` (the process's own, sampled as the
    point's ``model``)."""
    scheduler = ddpm_scheduler(variance)
    subsequence = timestep_subsequence(T, steps, skip)
    if steps is None:
        scheduler.set_timesteps(T)
    else:  # diffusers' custom timesteps: any descending sequence
        scheduler.set_timesteps(timesteps=subsequence[::-1])
    assert scheduler.timesteps.flip(0).tolist() == subsequence
    if variance == "learned_range":
        point, var_type = SamplerPoint("ancestral", steps=steps, skip=skip, variance="model"), "learned_range"
    else:
        point, var_type = SamplerPoint("ancestral", steps=steps, skip=skip, variance=variance), "fixedlarge"
    network, process, calls = our_process(unet, point, var_type)
    compare_every_step(
        unet, scheduler, process, calls,
        lambda x, t, gens: process.p_sample(network, x, t, generator=gens, clip_denoised=True),
        lambda eps, timestep, x, gens: scheduler.step(eps, timestep, x, generator=gens),
    )


def test_the_schedule_and_the_uniform_subsequences_are_diffusers():
    """DDPM's linear β and our ``uniform`` steps are diffusers' ``linear`` β and "leading" timesteps (S | T); its ᾱ
    are ours rounded to float32."""
    scheduler = ddim_scheduler(clip=False)
    diffusion = GaussianDiffusion(make_betas("linear", T))
    np.testing.assert_allclose(scheduler.betas.double().numpy(), diffusion.betas, rtol=1e-6, atol=0)
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), diffusion.alphas_cumprod, rtol=1e-6, atol=0)
    for steps in (1, 2, 4, 5, 10, 20, 25, 50, 100):
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.flip(0).tolist() == timestep_subsequence(T, steps, "uniform"), steps


@pytest.mark.parametrize("steps", [10, T])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_steps_match_diffusers_ddim_scheduler(unet, steps, eta):
    compare_ddim(unet, steps, eta, clip=False)


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_with_clipping_matches_diffusers_with_the_clipped_model_output(unet, eta):
    pred_xstarts = compare_ddim(unet, 10, eta, clip=True)
    # The clip must bite (x̂_0 on ±1 somewhere), or this would only repeat the unclipped case.
    assert sum(int((x.abs() == 1).sum()) for x in pred_xstarts) > 0


@pytest.mark.parametrize("variance", ["fixedsmall", "fixedlarge"])
def test_ancestral_steps_match_diffusers_ddpm_scheduler(unet, variance):
    """Every step of T. diffusers' fixed_large uses β_t at every t, ours β̃ at t = 0; neither adds noise there."""
    compare_ancestral(unet, variance, steps=None, skip="uniform")


@pytest.mark.parametrize("skip", ["uniform", "quadratic"])
@pytest.mark.parametrize("variance", ["fixedlarge", "fixedsmall"])
def test_respaced_ancestral_steps_match_diffusers_custom_timesteps(unet, variance, skip):
    """S = 10 of T: σ² = β or β̃ of the respaced process, β = 1 − ᾱ_τ / ᾱ_prev on both sides (fixedlarge is DDIM's
    σ̂). ``quadratic`` visits 9 distinct steps (its repeated 0 dropped)."""
    compare_ancestral(unet, variance, steps=10, skip=skip)


@pytest.mark.parametrize("steps, skip", [(None, "uniform"), (10, "quadratic")])
def test_ancestral_with_the_learned_range_variance_matches_diffusers(unet_learned_range, steps, skip):
    """The ``model`` variance of a learned_range network: σ² = exp(v' log β + (1 − v') log β̃), v' = (v + 1)/2, with β
    and β̃ of the (respaced) process (IDDPM Eq. 15; diffusers' ``learned_range``)."""
    compare_ancestral(unet_learned_range, "learned_range", steps=steps, skip=skip)


@pytest.mark.parametrize("point", [SamplerPoint("ddim", steps=10, eta=0.5), SamplerPoint("ancestral", steps=10,
                                                                                        variance="fixedsmall")],
                         ids=lambda p: p.name)
def test_sample_loop_from_seeds_gives_the_diffusers_pipeline_images(unet, point):
    """Whole runs from the same per-sample seeds: x_T and every step's noise drawn alike, the same images. With clipping
    the last step returns the clipped x̂_0, so ours lies in [-1, 1] and the pipelines' clamp to [0, 1] hides nothing."""
    calls = []
    diffusion = GaussianDiffusion(make_betas("linear", T), mean_type="eps", var_type="fixedlarge")
    ours = sample_loop(recording(unet, calls), diffusion, point, SHAPE, generators(seed=7), device="cpu")
    if point.sampler == "ddim":
        pipeline = DDIMPipeline(unet=unet, scheduler=ddim_scheduler(clip=True))
        kwargs = {"eta": point.eta, "use_clipped_model_output": True}
    else:
        pipeline = DDPMPipeline(unet=unet, scheduler=ddpm_scheduler(point.variance))
        kwargs = {}
    pipeline.set_progress_bar_config(disable=True)
    images = pipeline(batch_size=BATCH, generator=generators(seed=7), num_inference_steps=point.steps,
                      output_type="np", **kwargs).images  # (B, H, W, C) in [0, 1]
    theirs = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1
    assert len(calls) == point.steps
    assert ours.abs().max() <= 1
    torch.testing.assert_close(ours, theirs, rtol=0, atol=TOL)


# ---------------------------------------------------------------------------------------------- DPM-Solver++(2M)
def dpm_solver_scheduler(variance_type=None):
    """diffusers' DPM-Solver++(2M) as it comes: solver_order 2, dpmsolver++, midpoint, lower_order_final,
    final_sigmas_type zero, linspace spacing, no thresholding (its defaults, asserted here); DDPM's linear β."""
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=T, beta_schedule="linear", beta_start=1e-4,
                                            beta_end=0.02, prediction_type="epsilon", variance_type=variance_type)
    config = scheduler.config
    assert (config.solver_order, config.algorithm_type, config.solver_type, config.lower_order_final,
            config.final_sigmas_type, config.timestep_spacing, config.thresholding) == \
        (2, "dpmsolver++", "midpoint", True, "zero", "linspace", False)
    return scheduler


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """max |ours − theirs| / max |theirs|."""
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
def test_dpm_solver_plus_plus_matches_diffusers_multistep_scheduler(unet, steps):
    """DPM-Solver++(2M) on the same network from the same x_T: our sample_loop and diffusers'
    ``DPMSolverMultistepScheduler`` (its defaults) loop visit the same timesteps (``skip: linspace`` is diffusers'
    ``round(linspace(0, T − 1, S + 1))[::-1][:-1]``) and give the same images within 1e-5 relative (S = 5 and 10 end
    on first-order steps, S ≥ 15 too: ``final_sigmas_type`` zero; every step between is second order)."""
    point = SamplerPoint("dpm-solver++", steps)
    assert point.skip == "linspace" and point.clip is False and point.name == f"dpm-solver++-S{steps}-linspace"
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    calls = []
    diffusion = GaussianDiffusion(make_betas("linear", T), mean_type="eps", var_type="fixedlarge")
    ours = sample_loop(recording(unet, calls), diffusion, point, SHAPE, noise=x_T, device="cpu")

    scheduler = dpm_solver_scheduler()
    scheduler.set_timesteps(steps)
    assert [c[0] for c in calls] == scheduler.timesteps.tolist()  # the same steps, visited from the top
    x = x_T.clone()
    for timestep in scheduler.timesteps:
        x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample
    assert ours.abs().max() > 0.5  # a run that collapsed to ~0 would match anything
    assert relative_error(ours, x) <= TOL, f"S = {steps}: relative error {relative_error(ours, x):.2e}"


def test_dpm_solver_plus_plus_of_a_learned_variance_network_uses_its_mean(unet_learned_range):
    """A network with IDDPM's variance channels: both sides take its first C channels (diffusers'
    ``variance_type="learned_range"``) and give the same images."""
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    diffusion = GaussianDiffusion(make_betas("linear", T), mean_type="eps", var_type="learned_range")
    ours = sample_loop(recording(unet_learned_range, []), diffusion, SamplerPoint("dpm-solver++", 10), SHAPE,
                       noise=x_T, device="cpu")
    scheduler = dpm_solver_scheduler("learned_range")
    scheduler.set_timesteps(10)
    x = x_T.clone()
    for timestep in scheduler.timesteps:
        x = scheduler.step(unet_learned_range(x, timestep).sample, timestep, x).prev_sample
    assert relative_error(ours, x) <= TOL


def test_dpm_solver_plus_plus_second_order_steps_are_not_first_order(unet):
    """The parity above can fail: DPM-Solver++(1) (every step first order, i.e. DDIM η = 0 in λ) on the same steps
    differs from diffusers' second-order run by far more than the tolerance."""
    x_T = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3))
    scheduler = dpm_solver_scheduler()
    scheduler.set_timesteps(10)
    x = x_T.clone()
    for timestep in scheduler.timesteps:
        x = scheduler.step(unet(x, timestep).sample, timestep, x).prev_sample
    first_order = DPMSolverMultistepScheduler.from_config(scheduler.config, solver_order=1)
    first_order.set_timesteps(10)
    y = x_T.clone()
    for timestep in first_order.timesteps:
        y = first_order.step(unet(y, timestep).sample, timestep, y).prev_sample
    assert relative_error(y, x) > 100 * TOL
