"""Training (Algorithm 1 of Ho et al. 2020), readable top to bottom.

One run = one setting: dataset × schedule × T × mean_type × var_type × loss_type × seed, plus the optimiser
hyperparameters of the paper's Appendix B (Adam, lr 2e-4 with linear warmup, grad clip 1.0, EMA 0.9999).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from . import tracking as mlf
from .checkpoint import load_checkpoint, save_checkpoint
from .datasets import load_dataset, load_split, to_model_range
from .diffusion import GaussianDiffusion, randn
from .resample import create_sampler, default_sampler_name
from .schedules import make_betas
from .unet import UNet, create_model


@dataclass
class TrainConfig:
    dataset: str = "digits"
    schedule: str = "linear"
    T: int = 1000
    schedule_rescale: bool = False  # scale the linear endpoints by 1000/T (IDDPM)
    mean_type: str = "eps"
    var_type: str = "fixedlarge"
    loss_type: str = "mse"
    timestep_sampler: str | None = None  # None: importance sampling for "kl", uniform otherwise
    preset: str = "tiny"
    dropout: float | None = None  # None: the preset's
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    flip: bool = False  # random horizontal flips (CIFAR-10: yes; digits: no, a flipped digit is another glyph)
    seed: int = 0
    log_every: int = 50
    preview_every: int = 0  # draw a grid of EMA samples every this many steps (0: never); logged to MLflow

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training config keys {sorted(unknown)}; valid keys: {sorted(known)}")
        return cls(**d)


def build(config: TrainConfig, *, in_channels: int, image_size: int) -> tuple[UNet, GaussianDiffusion]:
    """The network and the diffusion process a setting describes."""
    diffusion = GaussianDiffusion(
        make_betas(config.schedule, config.T, rescale=config.schedule_rescale),
        config.mean_type, config.var_type, config.loss_type,
    )
    overrides = {"in_channels": in_channels, "image_size": image_size}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    model = create_model(config.preset, learn_sigma=diffusion.learns_variance, **overrides)
    return model, diffusion


def load_for_sampling(path: str | Path, *, use_ema: bool = True, device="cpu") -> tuple[UNet, GaussianDiffusion, dict]:
    """Rebuild model (EMA weights by default) and diffusion from a checkpoint written by :func:`train`."""
    state = load_checkpoint(path)
    config = TrainConfig.from_dict(state["config"])
    model, diffusion = build(config, in_channels=state["data_shape"][0], image_size=state["data_shape"][1])
    weights = state["ema"] if use_ema else state["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {path} does not fit the architecture its config describes: {err}") from err
    return model.to(device).eval(), diffusion, state


PREVIEW_SAMPLES = 36
PREVIEW_STEPS = 50


def _preview_grid(ema: UNet, diffusion: GaussianDiffusion, shape, path: Path, device) -> Path:
    """A grid of EMA samples from a respaced process (at most 50 steps): how samples look at this point of training."""
    from .datasets import to_uint8
    from .sample import sample_generator, save_grid

    fast = diffusion.respaced(min(PREVIEW_STEPS, diffusion.num_timesteps))
    generators = [sample_generator(0, i) for i in range(PREVIEW_SAMPLES)]
    x = fast.p_sample_loop(ema, (PREVIEW_SAMPLES, *shape), generators, device=device)
    save_grid(to_uint8(x).cpu().numpy(), path, nrow=6)
    return path


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()} at step {step}; stopping (no checkpoint written for this step)")


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    tracking: dict | None = None,
    run_name: str | None = None,
) -> dict:
    """Train one setting and write ``checkpoint.pt`` and ``metrics.jsonl`` to ``out_dir``; returns the final metrics.

    ``data_dir`` is a folder written by ``ddpm prepare`` (its train split is used); without it the dataset is
    loaded by name. With ``tracking`` (see :mod:`ddpm.tracking`) the run is an MLflow child run of the sweep,
    named ``run_name``; its id is written to ``mlflow_run_id.txt`` for the jobs that follow.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = None
    if tracking is not None:
        run_id = mlf.start_setting_run(tracking, run_name or out_dir.name, {**asdict(config), "device": str(device)})
        (out_dir / "mlflow_run_id.txt").write_text(run_id + "\n")
    try:
        final = _train_loop(config, out_dir, data_dir, torch.device(device), progress, tracking, run_id)
    except BaseException:
        if run_id is not None:
            mlf.finish_run(tracking["tracking_uri"], run_id, "FAILED")
        raise
    if run_id is not None:
        mlf.log_artifact(tracking["tracking_uri"], run_id, out_dir / "metrics.jsonl")
        mlf.finish_run(tracking["tracking_uri"], run_id, "FINISHED")
    return final


def _train_loop(config: TrainConfig, out_dir: Path, data_dir, device: torch.device, progress: bool,
                tracking: dict | None, run_id: str | None) -> dict:
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)

    # Data: the whole train split as one float tensor in [-1, 1] (CIFAR-sized sets fit in memory).
    images = load_split(data_dir, "train")[0] if data_dir is not None else load_dataset(config.dataset)
    data = to_model_range(images).to(device)
    _, channels, height, width = data.shape

    model, diffusion = build(config, in_channels=channels, image_size=height)
    model.to(device).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sampler = create_sampler(config.timestep_sampler or default_sampler_name(config.loss_type), diffusion.num_timesteps)

    metrics_file = (out_dir / "metrics.jsonl").open("w")
    last: dict = {}
    start = time.monotonic()
    for step in range(1, config.steps + 1):
        # Algorithm 1: x_0 ~ q(x_0), t ~ p(t), ε ~ N(0, I), gradient step on the loss.
        index = torch.randint(len(data), (config.batch_size,), generator=generator).to(device)
        x0 = data[index]
        if config.flip:
            flip = (torch.rand(config.batch_size, generator=generator) < 0.5).to(device)
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t, weights = sampler.sample(config.batch_size, device, generator=generator)
        noise = randn(x0.shape, generator, device=device)
        losses = diffusion.training_losses(model, x0, t, noise)
        loss = (losses["loss"] * weights).mean()
        _check_finite(loss, step)

        lr = config.lr * min(1.0, step / config.warmup) if config.warmup > 0 else config.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip if config.grad_clip > 0 else math.inf)
        optimizer.step()
        with torch.no_grad():
            for ema_p, p in zip(ema.parameters(), model.parameters()):
                ema_p.lerp_(p, 1.0 - config.ema_decay)
        sampler.update(t, losses["loss"])

        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.monotonic() - start
            last = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                    "images_per_s": step * config.batch_size / elapsed}
            metrics_file.write(json.dumps(last) + "\n")
            metrics_file.flush()
            if run_id is not None:
                mlf.log_metrics(tracking["tracking_uri"], run_id, {k: v for k, v in last.items() if k != "step"}, step)
            if progress:
                eta = elapsed / step * (config.steps - step)
                print(f"step {step}/{config.steps} loss {last['loss']:.4f} lr {lr:.2e} "
                      f"{last['images_per_s']:.0f} img/s ETA {eta:.0f}s", flush=True)
        if config.preview_every and (step % config.preview_every == 0 or step == config.steps):
            grid = _preview_grid(ema, diffusion, (channels, height, width), out_dir / "previews" / f"step-{step:07d}.png", device)
            if run_id is not None:
                mlf.log_artifact(tracking["tracking_uri"], run_id, grid, "previews")
    metrics_file.close()

    save_checkpoint(out_dir / "checkpoint.pt", {
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": config.steps,
        "config": asdict(config),
        "data_shape": [channels, height, width],
    })
    return last
