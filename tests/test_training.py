"""Every (mean_type, var_type, loss_type) combination trains; the training loop and CLI run end to end."""

import itertools
import json

import numpy as np
import pytest
import torch

from ddpm.checkpoint import load_checkpoint
from ddpm.datasets import load_digits, prepare_dataset
from ddpm.cli import main
from ddpm.diffusion import LOSS_TYPES, MEAN_TYPES, VAR_TYPES, GaussianDiffusion
from ddpm.timestep_samplers import LossSecondMomentResampler, UniformSampler, create_timestep_sampler
from ddpm.sample import draw_samples, interpolate, progressive_generation
from ddpm.schedules import make_betas
from ddpm.settings import TrainConfig
from ddpm.train import train
from ddpm.unet import create_model


@pytest.mark.parametrize("mean_type,var_type,loss_type", list(itertools.product(MEAN_TYPES, VAR_TYPES, LOSS_TYPES)))
def test_every_combination_trains_with_a_finite_loss_that_goes_down(mean_type, var_type, loss_type, digits):
    torch.manual_seed(0)
    diffusion = GaussianDiffusion(make_betas("linear", 100, rescale=True), mean_type, var_type, loss_type)
    model = create_model("tiny", learn_sigma=diffusion.learns_variance)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x0 = digits[:8]
    t = torch.randint(0, 100, (8,), generator=g)
    noise = torch.randn(x0.shape, generator=g)

    def loss():
        return diffusion.training_losses(model, x0, t, noise)["loss"].mean()

    first = loss().item()
    for _ in range(8):
        value = loss()
        assert torch.isfinite(value)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    final = loss().item()
    assert np.isfinite(first) and np.isfinite(final)
    assert final < 0.8 * first, (first, final)


def test_loss_second_moment_resampler_is_uniform_until_warm_then_unbiased():
    T = 5
    sampler = LossSecondMomentResampler(T, history=3, uniform_prob=0.01)
    assert np.allclose(sampler.weights(), 1.0)
    losses = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    for _ in range(3):
        sampler.update(torch.arange(T), torch.from_numpy(losses))
    assert sampler.warmed_up()
    p = sampler.weights() / sampler.weights().sum()
    expected = losses / losses.sum() * 0.99 + 0.01 / T  # √E[L²] = L for constant histories
    assert np.allclose(p, expected)
    t, w = sampler.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert np.allclose(w.numpy(), 1.0 / (T * p[t.numpy()]), rtol=1e-6)
    # Importance weights keep the estimate of the mean loss unbiased.
    estimate = (w.double() * torch.from_numpy(losses)[t]).mean().item()
    assert estimate == pytest.approx(losses.mean(), rel=0.02)
    assert np.bincount(t.numpy(), minlength=T)[-1] > np.bincount(t.numpy(), minlength=T)[0] * 8


def test_uniform_sampler_and_unknown_sampler():
    t, w = UniformSampler(10).sample(1000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 9 and torch.all(w == 1)
    with pytest.raises(ValueError, match="uniform, loss-second-moment"):
        create_timestep_sampler("bogus", 10)


def test_train_writes_checkpoint_and_metrics(tmp_path):
    config = TrainConfig(T=50, steps=6, batch_size=16, log_every=3, warmup=2, loss_type="kl", var_type="learned_range")
    final = train(config, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6]
    assert final == lines[-1] and np.isfinite(final["loss"]) and final["lr"] == pytest.approx(2e-4)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["step"] == 6 and state["config"]["loss_type"] == "kl" and state["data_shape"] == [1, 8, 8]
    assert state["model"]["conv_out.weight"].shape[0] == 2  # learned variance doubles the output channels


def test_nan_loss_stops_training_without_a_checkpoint(tmp_path):
    config = TrainConfig(T=20, steps=5, batch_size=8, lr=1e30, warmup=0, grad_clip=0.0, log_every=1)
    with pytest.raises(FloatingPointError, match="at step"):
        train(config, tmp_path, progress=False)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cli_trains_and_samples_deterministically(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--T", "20", "--steps", "4", "--batch-size", "8", "--log-every", "2"]) == 0
    ckpt = str(run / "checkpoint.pt")
    assert main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "a.npz"), "--grid", str(tmp_path / "a.png"),
                 "--count", "6", "--batch-size", "6"]) == 0
    assert main(["sample", "--checkpoint", ckpt, "--out", str(tmp_path / "b.npz"), "--start", "3", "--count", "3",
                 "--batch-size", "2"]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["images"].shape == (6, 1, 8, 8) and a["images"].dtype == np.uint8
    assert list(b["indices"]) == [3, 4, 5]
    # Each sample is seeded by its index: samples 3-5 are the same drawn alone, in other batches.
    assert np.array_equal(a["images"][3:], b["images"])
    from PIL import Image

    assert Image.open(tmp_path / "a.png").size[0] > 8 * 3


def test_progressive_generation_ends_at_the_sample_and_shows_x0_along_the_way(tmp_path):
    assert main(["train", "--out", str(tmp_path), "--T", "20", "--steps", "4", "--batch-size", "8", "--log-every", "2"]) == 0
    checkpoint = tmp_path / "checkpoint.pt"
    frames = progressive_generation(checkpoint, count=3, columns=5, seed=7)
    assert frames.shape == (15, 1, 8, 8) and frames.dtype == np.uint8
    rows = frames.reshape(3, 5, 1, 8, 8)
    # the last column is x̂₀ at the final step, which is the sample itself (same seed, same noise)
    assert np.array_equal(rows[:, -1], draw_samples(checkpoint, count=3, batch_size=3, seed=7, progress=False)[0])
    assert not np.array_equal(rows[:, 0], rows[:, -1])  # early predictions differ from the end
    assert main(["progressive", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p.png"), "--count", "2",
                 "--columns", "4"]) == 0
    from PIL import Image

    assert Image.open(tmp_path / "p.png").size == (4 * (8 + 1) * 4 + 4, 2 * (8 + 1) * 4 + 4)


def test_interpolation_decodes_the_end_points_back_and_blends_in_between(tmp_path):
    assert main(["train", "--out", str(tmp_path / "run"), "--T", "20", "--steps", "4", "--batch-size", "8"]) == 0
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    digits = load_digits()
    first, second = digits[0], digits[1]
    # encoded only to x_1 (β_1 = 1e-4), the endpoints decode to themselves up to rounding
    near = interpolate(checkpoint, first, second, t_fraction=1 / 20, num_lambdas=3)
    assert near.shape == (5, 1, 8, 8)
    assert np.abs(near[1].astype(int) - first).max() <= 3 and np.abs(near[3].astype(int) - second).max() <= 3
    assert np.array_equal(near[0], first) and np.array_equal(near[-1], second)
    middle = near[2].astype(int)
    assert np.abs(middle - (first.astype(int) + second) / 2).max() <= 3  # λ = 0.5 of nearly clean images
    far = interpolate(checkpoint, first, second)  # t = T/2, 11 values of λ
    assert far.shape == (13, 1, 8, 8) and not np.array_equal(far[1], far[-2])
    assert np.array_equal(far, interpolate(checkpoint, first, second))  # the noise is seeded
    prepare_dataset("digits", tmp_path / "data")
    assert main(["interpolate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "i.png")]) == 0
    assert main(["interpolate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "data"), "--out",
                 str(tmp_path / "j.png"), "--images", "0", "100000"]) == 2


def test_cli_reports_bad_input_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:  # argparse: the schedules are the option's choices
        main(["train", "--out", str(tmp_path), "--schedule", "cosin", "--steps", "1"])
    error = capsys.readouterr().err
    assert refused.value.code == 2 and "--schedule: invalid choice: 'cosin'" in error and "cosine" in error
    assert main(["sample", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.npz")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
