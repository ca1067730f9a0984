"""The details of the training step and of the evaluation's reference numbers that a wrong sign or factor would break
without any other test noticing: the EMA's direction, global-norm gradient clipping, the learning rate before the end
of its warmup, the Gaussian baseline's full covariance and the size of the bootstrap standard errors.

Every expected value is computed here, independently of the code under test, from the formula it implements:
θ_ema ← decay·θ_ema + (1 − decay)·θ (Appendix B's EMA), g ← g·min(1, c/‖g‖) over all parameters at once
(``tf.clip_by_global_norm``), lr_k = lr·min(1, k/warmup) for the k-th update, counted from 1 (``ddpm.train``),
and the sampling errors of a covariance, a squared mean and an entropy.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import ddpm.train
from ddpm.metrics import bootstrap_errors, gaussian_baseline_samples
from ddpm.settings import TrainConfig
from ddpm.speed import Speed, make_optimizer
from ddpm.train import apply_gradients, train
from ddpm.unet import create_model

SPEEDS = [pytest.param(Speed(), id="plain"), pytest.param(Speed(fused_adam=True, foreach_ema=True), id="foreach")]


# ----------------------------------------------------------------------------------------------------------------
# One optimiser step: the EMA and the gradient clipping


@pytest.mark.parametrize("speed", SPEEDS)
def test_ema_keeps_decay_of_its_old_value_and_takes_one_minus_decay_of_the_new_weights(speed):
    """After one ``apply_gradients`` step each EMA parameter is decay·(its value before) + (1 − decay)·(the model's
    parameter after the optimiser step), elementwise, on both EMA code paths. With decay 0.9 the EMA moves a tenth
    of the way: nine times nearer its old value than the new weights. Swapping decay and 1 − decay, averaging the
    weights from before the step, or averaging towards the model's old weights instead of the EMA's own all fail."""
    torch.manual_seed(0)
    decay, lr = 0.9, 0.05
    model = create_model("tiny")
    with torch.no_grad():  # off the zero-initialised output layer, so that every parameter gets a gradient
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # an EMA with its own history: not a copy of the model's current weights
        for p in ema.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ema_before = [p.detach().clone() for p in ema.parameters()]
    model_before = [p.detach().clone() for p in model.parameters()]
    optimizer = make_optimizer(model.parameters(), lr, speed)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 7])
    loss = model(x, t).pow(2).mean()

    apply_gradients(loss, model, ema, optimizer, lr=lr, grad_clip=1.0, ema_decay=decay, speed=speed)

    model_after = [p.detach().clone() for p in model.parameters()]
    moved = math.sqrt(sum(((a - b) ** 2).sum().item() for a, b in zip(model_after, model_before)))
    assert moved > 1.0, "the optimiser step must move the weights for the test to tell old from new"
    for (name, e), old, new in zip(ema.named_parameters(), ema_before, model_after):
        torch.testing.assert_close(e, decay * old + (1 - decay) * new, rtol=0, atol=1e-6, msg=name)
    to_old = math.sqrt(sum(((e - old) ** 2).sum().item() for e, old in zip(ema.parameters(), ema_before)))
    to_new = math.sqrt(sum(((e - new) ** 2).sum().item() for e, new in zip(ema.parameters(), model_after)))
    assert to_old < 0.2 * to_new
    assert to_old / to_new == pytest.approx((1 - decay) / decay, rel=1e-3)


def _linear_with_known_gradient():
    """nn.Linear(3, 2) and a loss linear in its parameters, whose gradient is (A, b) exactly: ‖A‖ = 30, ‖b‖ = 40,
    global norm 50."""
    torch.manual_seed(1)
    model = nn.Linear(3, 2)
    a, b = torch.randn(2, 3), torch.randn(2)
    a, b = a * (30 / a.norm()), b * (40 / b.norm())
    loss = (model.weight * a).sum() + (model.bias * b).sum()
    return model, loss, (a, b)


@pytest.mark.parametrize("grad_clip,scale", [(5.0, 0.1), (100.0, 1.0), (0.0, 1.0)],
                         ids=["norm-50-clipped-at-5", "norm-50-below-100", "clip-0-none"])
def test_gradient_clipping_rescales_the_global_norm_to_the_limit_and_only_above_it(grad_clip, scale):
    """With plain SGD (update = −lr·g) the step ``apply_gradients`` applies is exactly −lr·min(1, c/‖g‖)·g, ‖g‖
    the global norm over all parameters (50 here, from a weight gradient of norm 30 and a bias gradient of norm 40):
    at c = 5 every gradient shrinks by the same 0.1 (clipping each tensor to norm 5 on its own would give norms 5
    and 5, not 3 and 4); at c = 100 (above the norm) and c = 0 (no clipping) nothing is rescaled. The norm returned
    is the one before clipping."""
    model, loss, grads = _linear_with_known_gradient()
    ema = copy.deepcopy(model).requires_grad_(False)
    before = [p.detach().clone() for p in model.parameters()]
    lr = 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    norm = apply_gradients(loss, model, ema, optimizer, lr=lr, grad_clip=grad_clip, ema_decay=0.9, speed=Speed())

    assert float(norm) == pytest.approx(50.0, rel=1e-6)
    for p, old, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), old - lr * scale * g, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p.grad, scale * g, rtol=1e-5, atol=1e-6)  # what the optimiser saw
    seen = math.sqrt(sum(p.grad.pow(2).sum().item() for p in model.parameters()))
    assert seen == pytest.approx(50.0 * scale, rel=1e-5)
    assert [p.grad.norm().item() for p in model.parameters()] == pytest.approx([30 * scale, 40 * scale], rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# The learning-rate warmup


def test_learning_rate_ramps_linearly_over_the_warmup_counting_updates_from_one(tmp_path, monkeypatch):
    """The k-th update (steps count from 1) runs at lr·min(1, k/warmup): with warmup 8, the 1st at lr/8 (not 0: no
    update is wasted), the 2nd (a quarter of the warmup) at lr/4, the 4th (half) at lr/2, the 7th at 7/8·lr, then lr
    from the 8th on. Checked on what ``train`` hands ``apply_gradients``, on the rate the Adam optimiser holds after
    each step, on the first Adam update's size (for Adam's first step every moved weight moves by exactly lr), and on
    metrics.jsonl. With warmup 0 the rate is lr from the first step."""
    calls = []
    real = ddpm.train.apply_gradients

    def spy(loss, model, ema, optimizer, **kwargs):
        before = [p.detach().clone() for p in model.parameters()]
        out = real(loss, model, ema, optimizer, **kwargs)
        largest = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
        calls.append({"lr": kwargs["lr"], "optimizer_lr": [g["lr"] for g in optimizer.param_groups],
                      "largest_move": largest})
        return out

    monkeypatch.setattr(ddpm.train, "apply_gradients", spy)
    lr, warmup, steps = 2e-3, 8, 10
    config = TrainConfig(T=20, steps=steps, batch_size=4, lr=lr, warmup=warmup, log_every=1, checkpoint_every=0)
    train(config, tmp_path / "ramp", progress=False)

    expected = [lr * min(1.0, k / warmup) for k in range(1, steps + 1)]
    assert [c["lr"] for c in calls] == pytest.approx(expected, rel=1e-12)
    assert calls[0]["lr"] == pytest.approx(lr / 8) and calls[1]["lr"] == pytest.approx(lr / 4)
    assert calls[3]["lr"] == pytest.approx(lr / 2) and calls[6]["lr"] == pytest.approx(7 * lr / 8)
    assert all(c["lr"] < lr for c in calls[:warmup - 1]) and all(c["lr"] == lr for c in calls[warmup - 1:])
    for c, value in zip(calls, expected):
        assert c["optimizer_lr"] == pytest.approx([value], rel=1e-12)
    assert calls[0]["largest_move"] == pytest.approx(lr / warmup, rel=5e-3)
    logged = [json.loads(line) for line in (tmp_path / "ramp" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == list(range(1, steps + 1))
    assert [line["lr"] for line in logged] == pytest.approx(expected, rel=1e-12)

    calls.clear()
    train(TrainConfig(T=20, steps=2, batch_size=4, lr=lr, warmup=0, log_every=1, checkpoint_every=0),
          tmp_path / "flat", progress=False)
    assert [c["lr"] for c in calls] == [lr, lr]
    assert calls[0]["largest_move"] == pytest.approx(lr, rel=5e-3)


# ----------------------------------------------------------------------------------------------------------------
# The Gaussian baseline


def test_gaussian_baseline_reproduces_the_full_pixel_covariance_not_just_the_variances():
    """5,000 images of 4×4 pixels, L·z with a random 16×16 L (pixel std ≈ 20, pairwise covariances up to a few
    hundred) around 120 for the first half and 136 for the second: the baseline's 4,000 draws have the data's mean
    (128) and its whole covariance, off-diagonal terms included, within 5 standard errors of a sample covariance of
    4,000 draws, √((Σᵢᵢ Σⱼⱼ + Σᵢⱼ²)/n) (a Gaussian's). The data's off-diagonal terms lie far beyond that tolerance,
    so a fit of the variances alone (independent pixels) fails. The moments are summed over blocks of 2,048 images,
    the first all from the first half: a fit of the first block alone, or one that drops the correction from the
    first block's mean to the overall one, fails too."""
    rng = np.random.default_rng(0)
    n_data, n_draws, d = 5000, 4000, 16
    mixing = 5.0 * rng.standard_normal((d, d))
    centre = np.where(np.arange(n_data) < n_data // 2, 120.0, 136.0)[:, None]
    data = np.clip(np.round(centre + rng.standard_normal((n_data, d)) @ mixing.T), 0, 255).astype(np.uint8)
    images = data.reshape(n_data, 1, 4, 4)

    draws = gaussian_baseline_samples(images, n_draws, seed=3)

    assert draws.shape == (n_draws, 1, 4, 4) and draws.dtype == np.uint8
    x, y = data.astype(np.float64), draws.reshape(n_draws, d).astype(np.float64)
    mean, cov = x.mean(axis=0), np.cov(x, rowvar=False)
    variances = np.diag(cov)
    mean_se = np.sqrt(variances / n_draws)
    cov_se = np.sqrt((np.outer(variances, variances) + cov ** 2) / n_draws)
    off = ~np.eye(d, dtype=bool)
    assert np.abs(cov[off]).max() > 20 * cov_se[off].max(), "the data must be far from independent pixels"
    assert np.all(np.abs(y.mean(axis=0) - mean) < 5 * mean_se)
    assert np.all(np.abs(np.cov(y, rowvar=False) - cov) < 5 * cov_se)


# ----------------------------------------------------------------------------------------------------------------
# The bootstrap standard errors


def test_bootstrap_errors_match_the_analytic_standard_errors_of_fid_and_is():
    """On features whose scores' sampling errors are known, ``bootstrap_errors`` (200 rounds, n = 1,000 samples)
    reports standard errors within 30 % of them:

    - FID of 2-d features x ~ N(0, I) against a reference N((δ, 0), I), δ = 3: FID = ‖m − μ_ref‖² + (a covariance
      term of order d²/n), m the sample mean ~ N(0, I/n), so its standard error is √(4δ²/n + 2/n²) ≈ 2δ/√n = 0.19;
    - IS of one-hot logits of classes drawn with p = (0.6, 0.3, 0.1): each of the 10 splits' IS is exp of the
      plug-in entropy of its classes, so the mean over splits has standard error exp(H)·√(Var(log p(Y))/n) = 0.044.

    An error off by √n (or √rounds), a factor 2, or a variance in place of a standard deviation fails."""
    rng = np.random.default_rng(0)
    n, delta, p = 1000, 3.0, np.array([0.6, 0.3, 0.1])
    pool = torch.from_numpy(rng.standard_normal((n, 2)).astype(np.float32))
    logits = torch.zeros(n, 3)
    logits[torch.arange(n), torch.from_numpy(rng.choice(3, size=n, p=p))] = 50.0
    reference_stats = (np.array([delta, 0.0]), np.eye(2))
    options = {"isc_splits": 10, "rng_seed": 0, "save_cpu_ram": True, "verbose": False}

    out = bootstrap_errors({"pool": pool, "logits": logits}, {}, reference_stats, ("fid", "isc"),
                           {"fid": "pool", "isc": "logits"}, options, rounds=200, seed=0)

    entropy = -(p * np.log(p)).sum()
    expected = {"fid_se": math.sqrt(4 * delta ** 2 / n + 2 / n ** 2),
                "is_se": math.exp(entropy) * math.sqrt(((p * np.log(p) ** 2).sum() - entropy ** 2) / n)}
    assert out["bootstrap_rounds"] == 200
    ratios = {key: out[key] / value for key, value in expected.items()}
    assert all(0.7 < ratio < 1.3 for ratio in ratios.values()), (ratios, out, expected)
