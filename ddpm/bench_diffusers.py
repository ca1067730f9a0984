"""``ddpm bench --against diffusers``: the project's training step and DDIM sampling side by side with diffusers' on
the same network, in alternating rounds of one run (issue 28).

diffusers' side is its ``UNet2DModel`` in ``google/ddpm-cifar10-32``'s configuration (DDPM's 35.7M CIFAR-10
network, with the paper's dropout 0.1 for training), trained as its own example ``train_unconditional.py`` does
(AdamW with lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8; its cosine schedule with 500 warm-up steps;
``DDPMScheduler.add_noise``; the MSE of ε in fp32; gradients clipped at norm 1; ``EMAModel`` with warm-up, inv_gamma
1 and power 3/4; the forward pass in bf16 autocast where its ``--mixed_precision bf16`` is given, as accelerate
does: here both ways) and sampled by its ``DDIMPipeline`` (η = 0, one CPU generator per image). The project's side
is the same network loaded with the same weights (:mod:`ddpm.pretrained.diffusers`, the outputs compared), its own
training step (:func:`ddpm.train.apply_gradients` with ``speed``) and sampling loop (:func:`ddpm.samplers.sample_loop`
with per-sample noise on the device, :class:`ddpm.noise.SampleNoise`).

Both sides start from either initialisation: diffusers' (its ``UNet2DModel``'s) and ours (DDPM's, :mod:`ddpm.unet`):
the speed of some kernels depends on the values (the attention's softmax did). Each ratio is ours ÷ theirs
(images per second; ≥ 1: the project is no slower), the median of the rounds' ratios.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import statistics
from pathlib import Path

import torch
from torch.nn import functional as F

from .bench import seconds_per_call
from .diffusion import GaussianDiffusion
from .noise import SampleNoise
from .pretrained.diffusers import (GOOGLE_DDPM_CIFAR10_UNET, diffusers_state_dict, diffusers_unet_config,
                                   our_state_dict)
from .samplers import sample_loop
from .samplers.point import SamplerPoint
from .schedules import make_betas
from .speed import FastForward, Speed, make_optimizer
from .train import apply_gradients
from .unet import UNet

#: DDPM's CIFAR-10 dropout, on both sides while training (the Hub's config has none: it is for sampling).
TRAIN_DROPOUT = 0.1
#: diffusers' train_unconditional.py defaults.
DIFFUSERS_ADAMW = {"lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8}
DIFFUSERS_EMA = {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 3 / 4}
DIFFUSERS_WARMUP_STEPS = 500
INITIALISATIONS = ("diffusers", "ours")
T = 1000


def _import_diffusers():
    try:
        import diffusers  # noqa: F401
    except ImportError as err:
        raise RuntimeError("`ddpm bench --against diffusers` needs diffusers (a test dependency: pip install "
                           "'.[test]', or pip install diffusers)") from err
    return diffusers


def image_shape() -> tuple[int, int, int]:
    """(C, H, W) of the images the compared network takes (its config's)."""
    config = GOOGLE_DDPM_CIFAR10_UNET
    return config["in_channels"], config["sample_size"], config["sample_size"]


def paired_networks(init: str, *, dropout: float, seed: int, device: torch.device):
    """(ours, theirs): our U-Net and diffusers' ``UNet2DModel`` in google/ddpm-cifar10-32's configuration, with the
    same weights, from ``init``'s initialisation (``diffusers`` or ``ours``); the largest difference of their outputs
    on a random batch (eval mode) as a third element."""
    if init not in INITIALISATIONS:
        raise ValueError(f"unknown initialisation {init!r}; valid: {', '.join(INITIALISATIONS)}")
    from diffusers import UNet2DModel

    config = {k: v for k, v in GOOGLE_DDPM_CIFAR10_UNET.items() if not k.startswith("_")}
    unet, order = diffusers_unet_config(config, "google/ddpm-cifar10-32's config")
    unet = dataclasses.replace(unet, dropout=dropout)
    torch.manual_seed(seed)
    theirs = UNet2DModel(**config, dropout=dropout)
    ours = UNet(unet)
    if init == "diffusers":
        ours.load_state_dict(our_state_dict(theirs.state_dict(), unet, order, where="diffusers' initialisation"))
    else:
        theirs.load_state_dict(diffusers_state_dict(ours.state_dict(), unet, order, theirs.state_dict()))
    ours, theirs = ours.to(device), theirs.to(device)
    x = torch.randn(2, *image_shape(), device=device)
    t = torch.tensor([10, 900], device=device)
    with torch.no_grad():
        difference = float((ours.eval()(x, t) - theirs.eval()(x, t).sample).abs().max())
    return ours, theirs, difference


def diffusers_training_step(model, *, batch_size: int, device: torch.device, bf16: bool, seed: int):
    """One step of diffusers' train_unconditional.py on random images (see the module's docstring)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    model.train()
    scheduler = DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), **DIFFUSERS_ADAMW)
    lr_schedule = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=DIFFUSERS_WARMUP_STEPS,
                                num_training_steps=10**6)
    ema = EMAModel(model.parameters(), **DIFFUSERS_EMA)
    generator = torch.Generator().manual_seed(seed)
    clean = (torch.rand(batch_size, *image_shape(), generator=generator) * 2 - 1).to(device)

    def step():
        noise = torch.randn(clean.shape, device=device)
        timesteps = torch.randint(0, T, (batch_size,), device=device)
        noisy = scheduler.add_noise(clean, noise, timesteps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            output = model(noisy, timesteps).sample
        loss = F.mse_loss(output.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad()
        ema.step(model.parameters())

    return step


def our_training_step(model, *, batch_size: int, device: torch.device, speed: Speed, seed: int):
    """The project's training step (``ddpm train``'s: the ε loss, Adam, clipping at 1, the EMA) on random images."""
    model.train()
    diffusion = GaussianDiffusion(make_betas("linear", T), "eps", "fixedlarge", "mse")
    forward = FastForward(model, speed, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(model.parameters(), 2e-4, speed)
    generator = torch.Generator().manual_seed(seed)
    clean = (torch.rand(batch_size, *image_shape(), generator=generator) * 2 - 1).to(device)

    def step():
        t = torch.randint(0, T, (batch_size,), device=device)
        loss = diffusion.training_losses(forward, clean, t, torch.randn_like(clean))["loss"].mean()
        apply_gradients(loss, model, ema, optimizer, lr=2e-4, grad_clip=1.0, ema_decay=0.9999, speed=speed)

    return step


def diffusers_sampler(model, *, batch_size: int, steps: int, seed: int):
    """diffusers' ``DDIMPipeline`` (η = 0, ``steps`` steps, one generator per image, images as uint8 arrays)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    pipeline = DDIMPipeline(unet=model.eval(), scheduler=DDIMScheduler(num_train_timesteps=T, beta_schedule="linear"))
    pipeline.set_progress_bar_config(disable=True)

    def sample():
        generators = [torch.Generator().manual_seed(seed + i) for i in range(batch_size)]
        images = pipeline(batch_size=batch_size, generator=generators, eta=0.0, num_inference_steps=steps,
                          output_type="np").images
        return (images * 255).round().astype("uint8")

    return sample


def our_sampler(model, *, batch_size: int, steps: int, seed: int, device: torch.device, speed: Speed):
    """The project's DDIM (η = 0, ``steps`` uniform steps) as ``ddpm sample`` draws it, images as uint8 arrays."""
    from .datasets import to_uint8

    network = FastForward(model.eval(), speed, device, inference=True)
    diffusion = GaussianDiffusion(make_betas("linear", T), "eps", "fixedlarge", "mse")
    point = SamplerPoint("ddim", steps)

    def sample():
        x = sample_loop(network, diffusion, point, (batch_size, *image_shape()), SampleNoise(seed, range(batch_size)),
                        device=device)
        return to_uint8(x).cpu().numpy()

    return sample


def _alternate(contenders: dict, items: int, calls: int, warmup: int, rounds: int, device: torch.device) -> dict:
    """Each contender (name → step) warmed up, then timed in turn ``rounds`` times: images/s per round."""
    for step in contenders.values():
        for _ in range(warmup):
            step()
    rates = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            rates[name].append(items / seconds_per_call(step, calls, 0, device))
    return rates


def _ratios(rates: dict, pairs: dict[str, tuple[str, str]]) -> dict:
    """For each pair (label → (ours, theirs)): ours ÷ theirs per round and its median; ``fastest``: the fastest of
    ours ÷ the fastest of theirs, round by round."""
    out = {"ratio": {}, "ratio_per_round": {}}
    for label, (ours, theirs) in pairs.items():
        out["ratio_per_round"][label] = [a / b for a, b in zip(rates[ours], rates[theirs])]
    mine = [name for name in rates if name.startswith("ours")]
    rounds = range(len(rates[mine[0]]))
    out["ratio_per_round"]["fastest"] = [max(rates[n][i] for n in mine) / max(rates[n][i] for n in rates if n not in mine)
                                         for i in rounds]
    out["ratio"] = {label: float(statistics.median(r)) for label, r in out["ratio_per_round"].items()}
    out["images_per_s"] = {name: float(statistics.median(r)) for name, r in rates.items()}
    out["images_per_s_per_round"] = rates
    return out


def _training(init: str, speed: Speed, device: torch.device, *, batch_size: int, seed: int) -> tuple[dict, dict, float]:
    """The four training steps, each on its own copy of ``init``'s weights: ours with ``speed`` (fp32) and with bf16
    on top, diffusers' in fp32 and in bf16 autocast; the pairs of like precision; the networks' output difference."""
    ours, theirs, difference = paired_networks(init, dropout=TRAIN_DROPOUT, seed=seed, device=device)
    fp32 = dataclasses.replace(speed, bf16=False)
    steps = {}
    for precision, bf16 in (("fp32", False), ("bf16", True)):
        steps[f"ours_{precision}"] = our_training_step(copy.deepcopy(ours), batch_size=batch_size, device=device,
                                                       speed=dataclasses.replace(fp32, bf16=bf16), seed=seed)
        steps[f"diffusers_{precision}"] = diffusers_training_step(copy.deepcopy(theirs), batch_size=batch_size,
                                                                  device=device, bf16=bf16, seed=seed)
    return steps, {p: (f"ours_{p}", f"diffusers_{p}") for p in ("fp32", "bf16")}, difference


def against_diffusers(device: str | torch.device = "cpu", *, speed: Speed | None = None, batch_size: int = 8,
                      sample_batch: int = 8, sample_steps: int = 10, train_calls: int = 3, warmup: int = 1,
                      rounds: int = 5, seed: int = 0, inits=INITIALISATIONS) -> dict:
    """Training (images/s) and DDIM sampling (images/s of whole sets of ``sample_steps`` steps), ours against
    diffusers', for each initialisation in ``inits``, all contenders timed in turn ``rounds`` times.

    Training is compared at like precision: ours with ``speed`` (default: :meth:`Speed.auto`) in fp32 against
    diffusers in fp32, and the same with bf16 autocast on both sides (diffusers' ``--mixed_precision bf16``);
    sampling as diffusers' pipeline runs (fp32) against ours with ``speed``. ``train_ratio`` and ``sample_ratio``:
    the smallest median ratio over the initialisations and precisions."""
    _import_diffusers()
    device = torch.device(device)
    speed = Speed.auto(device) if speed is None else speed
    result = {}
    for init in inits:
        steps, pairs, difference = _training(init, speed, device, batch_size=batch_size, seed=seed)
        train = _ratios(_alternate(steps, batch_size, train_calls, warmup, rounds, device), pairs)
        ours_eval, theirs_eval, _ = paired_networks(init, dropout=0.0, seed=seed, device=device)
        sampling = {"ours": our_sampler(ours_eval, batch_size=sample_batch, steps=sample_steps, seed=seed,
                                        device=device, speed=speed),
                    "diffusers": diffusers_sampler(theirs_eval, batch_size=sample_batch, steps=sample_steps,
                                                   seed=seed)}
        sample = _ratios(_alternate(sampling, sample_batch, 1, warmup, rounds, device), {"fp32": ("ours", "diffusers")})
        result[init] = {"output_max_difference": difference, "train": train, "sample": sample}
    return {"speed": speed.describe(), "batch_size": batch_size, "sample_batch": sample_batch,
            "sample_steps": sample_steps, "train_calls_per_round": train_calls, "warmup": warmup, "rounds": rounds,
            "threads": torch.get_num_threads(), "initialisations": result,
            "train_ratio": min(min(r["train"]["ratio"][p] for p in pairs) for r in result.values()),
            "sample_ratio": min(r["sample"]["ratio"]["fp32"] for r in result.values())}


def run_against_diffusers(device: str | torch.device = "cpu", **options) -> dict:
    """:func:`against_diffusers` as a record: when, at which commit, with which torch and diffusers, on what."""
    from .bench import device_name
    from .io import source_commit

    diffusers = _import_diffusers()
    device = torch.device(device)
    began = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    figures = against_diffusers(device, **options)
    return {"date": began, "commit": source_commit(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "device": str(device), "device_name": device_name(device), "against": "diffusers",
            "network": "google/ddpm-cifar10-32 (UNet2DModel) / our cifar10 U-Net", **figures}


def record_path(result: dict, folder) -> Path:
    """``<folder>/diffusers/<date>-<device>-against-diffusers-b<batch>.json``, beside (not among) the ``ddpm bench``
    records whose rates ``ddpm plan`` reads; one file per run, never overwritten."""
    stamp = result["date"].replace(":", "").replace("+0000", "Z")
    return Path(folder) / "diffusers" / f"{stamp}-{result['device'].replace(':', '')}-against-diffusers-" \
                                        f"b{result['batch_size']}.json"


def flat_metrics(result: dict) -> dict[str, float]:
    """The record's figures as MLflow metrics: ``<init>.<train|sample>.ratio.<pair>`` and ``….images_per_s.<side>``,
    and the two headline ratios."""
    metrics = {"train_ratio": result["train_ratio"], "sample_ratio": result["sample_ratio"]}
    for init, parts in result["initialisations"].items():
        metrics[f"{init}.output_max_difference"] = parts["output_max_difference"]
        for part in ("train", "sample"):
            for group in ("ratio", "images_per_s"):
                metrics.update({f"{init}.{part}.{group}.{k}": v for k, v in parts[part][group].items()})
    return metrics


def log_to_mlflow(result: dict, tracking_uri: str, artifact_root, experiment: str = "ddpm-bench") -> str:
    """One MLflow run (tagged ``ddpm.kind: bench``) in ``ddpm bench``'s experiment: the settings as parameters, the
    figures as metrics (:func:`flat_metrics`), the whole record as ``config.json``."""
    from . import tracking

    name = f"against-diffusers-{result['device']}-b{result['batch_size']}"
    run_id = tracking.init_sweep(tracking_uri, experiment, name, artifact_root, result, kind="bench")["parent_run_id"]
    tracking.log_params(tracking_uri, run_id, {k: result[k] for k in RECORD_PARAMETERS})
    tracking.log_metrics(tracking_uri, run_id, flat_metrics(result))
    tracking.finish_run(tracking_uri, run_id)
    return run_id


RECORD_PARAMETERS = ("against", "device", "device_name", "torch", "diffusers", "commit", "speed", "batch_size",
                     "sample_batch", "sample_steps", "train_calls_per_round", "warmup", "rounds", "threads")
