import math

import numpy as np
import pytest

from ddpm.diffusion import GaussianDiffusion
from ddpm.schedules import SCHEDULES, cosine_alpha_bar, make_betas


@pytest.mark.parametrize("name", sorted(SCHEDULES))
@pytest.mark.parametrize("T", [1, 2, 10, 1000, 4000])
def test_every_schedule_is_a_float64_vector_in_open_unit_interval(name, T):
    betas = make_betas(name, T)
    assert betas.dtype == np.float64
    assert betas.shape == (T,)
    assert np.all(betas > 0) and np.all(betas < 1)


def test_linear_is_the_papers_schedule():
    betas = make_betas("linear", 1000)
    assert betas[0] == pytest.approx(1e-4)
    assert betas[-1] == pytest.approx(0.02)
    assert np.allclose(np.diff(betas), (0.02 - 1e-4) / 999)


def test_linear_rescale_scales_endpoints_by_1000_over_T():
    betas = make_betas("linear", 4000, rescale=True)
    assert betas[0] == pytest.approx(1e-4 / 4)
    assert betas[-1] == pytest.approx(0.02 / 4)
    assert np.array_equal(make_betas("linear", 1000, rescale=True), make_betas("linear", 1000))


def test_quad_const_jsd_warmup_sigmoid_shapes():
    quad = make_betas("quad", 100)
    assert quad[0] == pytest.approx(1e-4) and quad[-1] == pytest.approx(0.02)
    assert np.allclose(np.sqrt(quad), np.linspace(0.01, math.sqrt(0.02), 100))
    assert np.all(make_betas("const", 50) == 0.02)
    jsd = make_betas("jsd", 10)
    assert np.allclose(jsd[:-1], 1.0 / np.arange(10, 1, -1))
    assert jsd[-1] == 0.999  # 1/1 clipped so that ᾱ_T > 0
    w10 = make_betas("warmup10", 1000)
    assert np.allclose(w10[:100], np.linspace(1e-4, 0.02, 100)) and np.all(w10[100:] == 0.02)
    w50 = make_betas("warmup50", 1000)
    assert np.allclose(w50[:500], np.linspace(1e-4, 0.02, 500)) and np.all(w50[500:] == 0.02)
    sig = make_betas("sigmoid", 1000)
    assert np.all(np.diff(sig) > 0) and 1e-4 < sig[0] < 2e-4 and 0.0199 < sig[-1] < 0.02


def test_cosine_alpha_bar_matches_improved_ddpm_eq17():
    T = 1000
    betas = make_betas("cosine", T)
    alpha_bar = np.cumprod(1 - betas)
    t = np.arange(1, T + 1)
    expected = np.cos(((t / T) + 0.008) / 1.008 * np.pi / 2) ** 2 / np.cos(0.008 / 1.008 * np.pi / 2) ** 2
    unclipped = betas < 0.999
    first_clipped = np.argmax(~unclipped) if (~unclipped).any() else T
    assert np.allclose(alpha_bar[:first_clipped], expected[:first_clipped], rtol=1e-10, atol=0)
    assert betas.max() <= 0.999
    assert cosine_alpha_bar(0.0, T) == pytest.approx(1.0)


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        make_betas("cosin", 1000)
    assert "cosin" in str(err.value)
    for name in SCHEDULES:
        assert name in str(err.value)


@pytest.mark.parametrize("T", [0, -5, 2.5, True, "1000"])
def test_bad_T_is_refused(T):
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        make_betas("linear", T)


def test_bad_endpoints_and_options_are_refused():
    with pytest.raises(ValueError, match="beta_start"):
        make_betas("linear", 10, beta_start=0.0)
    with pytest.raises(ValueError, match="beta_end"):
        make_betas("linear", 10, beta_end=1.5)
    with pytest.raises(ValueError, match="pushes beta_end"):
        make_betas("linear", 10, rescale=True)  # 0.02 * 100 = 2
    with pytest.raises(ValueError, match="takes no options"):
        make_betas("linear", 10, s=0.1)


@pytest.mark.parametrize("betas", [[0.1, 0.0], [0.1, 1.0], [-0.1, 0.2], [0.1, float("nan")], [0.2, 1.5], []])
def test_diffusion_refuses_betas_outside_open_unit_interval(betas):
    with pytest.raises(ValueError, match="beta"):
        GaussianDiffusion(np.array(betas))
