"""``ddpm bench``: how fast a preset trains, samples and computes bits/dim on a device, with a set of speed-ups,
and, in the same run, how fast the plain fp32 eager path of the same code is. The ratio between the two is the
figure that holds on a noisy machine; absolute numbers mean something only on a dedicated GPU. The plain path's
training is also held against the same U-Net and step written the straightforward way (:mod:`ddpm.straightforward`).

Each phase runs the project's own code (``GaussianDiffusion.training_losses`` and the optimiser step, EMA
included; ``p_sample``; the terms of ``calc_bpd_loop``) on random data of the preset's shape, after untimed
warm-up steps (which absorb compilation and cuDNN autotuning).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from .diffusion import GaussianDiffusion
from .io import source_commit
from .noise import SampleNoise
from .presets import PRESETS
from .schedules import make_betas
from .samplers.point import SamplerPoint
from .speed import FastForward, Speed, configure_backends, make_optimizer
from .train import apply_gradients
from .unet import AttnBlock, attention_shapes, count_parameters, create_model


def preset_data(preset: str) -> tuple[int, int]:
    """The (channels, size) of the random images ``preset`` is benchmarked on: the preset's own."""
    config = PRESETS[preset]
    return config.in_channels, config.image_size


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: the peak of allocated memory since the phase began. CPU: the process's peak resident set so far
    (it only grows, so on a CPU it bounds the phase from above)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def seconds_per_call(step, repeats: int, warmup: int, device: torch.device) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    _synchronize(device)
    return (time.perf_counter() - start) / repeats


def _training_step(preset: str, speed: Speed, device: torch.device, *, batch_size: int, T: int, seed: int):
    """The training loop's step at the paper's hyperparameters, on random data: ``(step, model, ema, diffusion)``."""
    torch.manual_seed(seed)
    channels, size = preset_data(preset)
    diffusion = GaussianDiffusion(make_betas("linear", T), "eps", "fixedlarge", "mse")
    model = create_model(preset).to(device).train()
    forward = FastForward(model, speed, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(model.parameters(), 2e-4, speed)
    x0 = torch.rand(batch_size, channels, size, size, device=device) * 2 - 1

    def train_step():
        t = torch.randint(0, T, (batch_size,), device=device)
        loss = diffusion.training_losses(forward, x0, t, torch.randn_like(x0))["loss"].mean()
        apply_gradients(loss, model, ema, optimizer, lr=2e-4, grad_clip=1.0, ema_decay=0.9999, speed=speed)

    return train_step, model, ema, diffusion


def _phases(preset: str, speed: Speed, device: torch.device, *, batch_size: int, sample_batch: int, T: int,
            steps: int, warmup: int, seed: int) -> dict:
    channels, size = preset_data(preset)
    train_step, model, ema, diffusion = _training_step(preset, speed, device, batch_size=batch_size, T=T, seed=seed)
    result = {"parameters": count_parameters(model)}
    _reset_peak(device)
    seconds = seconds_per_call(train_step, steps, warmup, device)
    result.update(train_images_per_s=batch_size / seconds, train_peak_memory_mb=_peak_memory_mb(device))

    sampler = FastForward(ema, speed, device, inference=True)
    x = torch.randn(sample_batch, channels, size, size, device=device)
    t = torch.full((sample_batch,), T - 1, device=device, dtype=torch.long)
    x_start = x.clamp(-1, 1)

    @torch.no_grad()
    def sample_step():
        diffusion.p_sample(sampler, x, t)

    @torch.no_grad()
    def bpd_step():  # one timestep of calc_bpd_loop: q_sample, then the KL (or decoder NLL) term
        x_t = diffusion.q_sample(x_start, t, torch.randn_like(x_start))
        diffusion._vb_terms_bpd(sampler, x_start, x_t, t, clip_denoised=True)

    for name, step in (("sample", sample_step), ("bpd", bpd_step)):
        _reset_peak(device)
        seconds = seconds_per_call(step, steps, warmup, device)
        result[f"{name}_image_steps_per_s"] = sample_batch / seconds
        result[f"{name}_peak_memory_mb"] = _peak_memory_mb(device)
    return result


#: The sampler points ``ddpm bench`` times by default: DDPM's ancestral sampler on all T steps, DDIM (η = 0) on 10
#: and 50.
BENCH_SAMPLERS = (SamplerPoint("ancestral"), SamplerPoint("ddim", 10), SamplerPoint("ddim", 50))


def sampler_speeds(preset: str, speed: Speed, device: torch.device, *, sample_batch: int, T: int, seed: int,
                   rounds: int = 3, points=BENCH_SAMPLERS) -> dict:
    """Images per second of whole sample sets (x_T to x_0) for each sampler point, on the same network (random
    weights, ``speed``'s forward pass), each image's noise drawn as ``ddpm sample`` draws it (its own stream,
    :class:`ddpm.noise.SampleNoise`, on the device): the points are timed in turn, ``rounds`` times over (after one
    untimed round for warm-up, compilation included), so that a slow spell of the machine falls on all of them.
    Reports each point's median images/s, network evaluations per image, and its speed-up over the first point, the
    median of the per-round ratios."""
    from .samplers import network_evaluations, sample_loop

    torch.manual_seed(seed)
    channels, size = preset_data(preset)
    diffusion = GaussianDiffusion(make_betas("linear", T), "eps", "fixedlarge", "mse")
    network = FastForward(create_model(preset).to(device).eval(), speed, device, inference=True)
    shape = (sample_batch, channels, size, size)

    def images_per_s(point) -> float:
        _synchronize(device)
        start = time.perf_counter()
        sample_loop(network, diffusion, point, shape, SampleNoise(seed, range(sample_batch)), device=device)
        _synchronize(device)
        return sample_batch / (time.perf_counter() - start)

    for point in points:  # warm-up
        images_per_s(point)
    measured = [[images_per_s(point) for point in points] for _ in range(rounds)]
    result = {}
    for i, point in enumerate(points):
        per_round = [row[i] for row in measured]
        result[point.name] = {
            "images_per_s": float(statistics.median(per_round)),
            "network_evaluations": network_evaluations(T, point),
            "speedup_over_" + points[0].name: float(statistics.median(row[i] / row[0] for row in measured)),
            "images_per_s_per_round": per_round,
        }
    return result


def against_straightforward(preset: str, device: torch.device, *, batch_size: int, T: int, steps: int, warmup: int,
                            seed: int, rounds: int = 3) -> dict:
    """The plain path's training step against the same U-Net and step written the straightforward way
    (:mod:`ddpm.straightforward`, its weights copied from ours), both fp32 eager. They are timed in turn, ``rounds``
    times, so that a machine that slows down or speeds up meanwhile weighs on both alike; the figure is the median
    of the rounds' ratios (plain ÷ straightforward; ≥ 1: the plain path is no slower)."""
    from . import straightforward

    ours, model, _, _ = _training_step(preset, Speed(), device, batch_size=batch_size, T=T, seed=seed)
    theirs_model = straightforward.copy_weights(model, straightforward.StraightforwardUNet(model.config)).to(device)
    theirs_ema = copy.deepcopy(theirs_model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(theirs_model.parameters(), lr=2e-4)
    betas = torch.as_tensor(make_betas("linear", T), dtype=torch.float32, device=device)
    channels, size = preset_data(preset)
    x0 = torch.rand(batch_size, channels, size, size, device=device) * 2 - 1

    def theirs():
        straightforward.training_step(theirs_model.train(), theirs_ema, optimizer, x0, betas)

    ratios, plain, reference = [], [], []
    for _ in range(rounds):
        plain.append(batch_size / seconds_per_call(ours, steps, warmup, device))
        reference.append(batch_size / seconds_per_call(theirs, steps, warmup, device))
        ratios.append(plain[-1] / reference[-1])
    median = sorted(ratios)[len(ratios) // 2]
    return {"plain_train_images_per_s": sorted(plain)[rounds // 2],
            "straightforward_train_images_per_s": sorted(reference)[rounds // 2],
            "ratio_per_round": ratios, "ratio": median}


def bits_per_dim_difference(preset: str, speed: Speed, device: torch.device, *, T: int = 20, images: int = 8,
                            seed: int = 0) -> dict[str, float]:
    """How much ``speed`` moves the whole bound (``calc_bpd_loop``, bits/dim) on the same images and noise: the
    change of the mean over the images, and the largest change of one image's. The network is a random one whose
    weights are perturbed by N(0, 0.01²), so that its zero-initialised output layer does not make every precision
    look exact; a trained network's figure needs a checkpoint (the goal: the mean moves by at most 1e-3)."""
    channels, size = preset_data(preset)
    torch.manual_seed(seed)
    model = create_model(preset).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.01)
    model.to(device)
    diffusion = GaussianDiffusion(make_betas("linear", T), "eps", "fixedlarge", "mse")
    x_start = torch.rand(images, channels, size, size, generator=torch.Generator().manual_seed(seed)).to(device) * 2 - 1
    totals = []
    for variant in (Speed(), speed):
        network = FastForward(copy.deepcopy(model), variant, device, inference=True)
        bound = diffusion.calc_bpd_loop(network, x_start, generator=torch.Generator().manual_seed(seed + 1))
        totals.append(bound["total_bpd"].double())
    configure_backends(Speed())
    return {"bpd_mean_difference": float((totals[1].mean() - totals[0].mean()).abs()),
            "bpd_max_image_difference": float((totals[1] - totals[0]).abs().max())}


#: What a FID job computes of its images (:func:`fid_throughput`): FID, IS and KID.
FID_METRICS = ("fid", "isc", "kid")


def fid_throughput(device: torch.device, images: int, *, weights=None, batch_size: int = 200, seed: int = 0) -> dict:
    """Images per second through a FID job's scoring (:func:`ddpm.metrics.fidelity_metrics`: torch-fidelity's
    Inception-v3 features of ``images`` samples and as many reference images, then FID, IS and KID) on random
    32×32 images. ``weights``: torch-fidelity's weights file; without it, the file in torch.hub's cache, else a
    stand-in of the same shapes made here (no network; its speed is the real network's, its scores mean nothing),
    said so in ``extractor_weights``."""
    import tempfile

    import numpy as np

    from .metrics import cached_inception_weights, fidelity_metrics, write_stand_in_inception_weights

    generator = np.random.default_rng(seed)
    samples, reference = (generator.integers(0, 256, (images, 3, 32, 32), dtype=np.uint8) for _ in range(2))
    with tempfile.TemporaryDirectory() as folder:
        if weights is None and cached_inception_weights().is_file():
            weights, origin = cached_inception_weights(), "torch-fidelity's file (torch.hub's cache)"
        elif weights is None:
            weights = write_stand_in_inception_weights(Path(folder) / "stand-in-inception.pth", seed)
            origin = "a stand-in of the same shapes made here, random values (no network to fetch the real file)"
        else:
            origin = f"torch-fidelity's file at {weights}"
        _synchronize(device)
        start = time.perf_counter()
        fidelity_metrics(samples, reference, extractor="inception-v3-compat", weights_path=weights,
                         batch_size=batch_size, device=str(device), metrics=FID_METRICS, seed=seed)
        _synchronize(device)
        seconds = time.perf_counter() - start
    return {"fid_images_per_s": 2 * images / seconds,
            "fid": {"samples": images, "reference_images": images, "seconds": seconds, "metrics": list(FID_METRICS),
                    "batch_size": batch_size, "extractor_weights": origin}}


def fused_attention_backends(device: torch.device) -> tuple[str, ...]:
    """The fused kernels of ``scaled_dot_product_attention`` on ``device`` (all but the math kernel, which holds the
    whole positions² matrix)."""
    if device.type == "cuda":
        return ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION")
    return ("FLASH_ATTENTION",)


class _AttentionOnly(torch.nn.Module):
    """An attention block called as the network is, ``(x, t)``, so that :class:`FastForward` applies ``speed``."""

    def __init__(self, block: AttnBlock):
        super().__init__()
        self.block = block

    def forward(self, x, t):
        return self.block(x)


def attention_kernels(preset: str, speed: Speed, device: torch.device, *, batch: int = 2) -> dict[str, list[str]]:
    """Which fused kernels take each attention block of ``preset`` (:func:`ddpm.unet.attention_shapes`) with
    ``speed``'s forward pass (precision, memory layout) on ``device``: for each block ``"<channels>ch-<heads>h-<res>px"``,
    the fused backends that ran it when each was the only one allowed. An empty list: only the math kernel would."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    eager = dataclasses.replace(speed, compile=False, cuda_graph=False)  # the kernels eager mode picks
    config = PRESETS[preset]
    found = {}
    for channels, heads, resolution in attention_shapes(config):
        block = AttnBlock(channels, heads, config.norm_eps).to(device).eval()
        forward = FastForward(_AttentionOnly(block), eager, device, inference=True)
        x = torch.randn(batch, channels, resolution, resolution, device=device)
        taken = []
        for backend in fused_attention_backends(device):
            try:
                with torch.no_grad(), sdpa_kernel([getattr(SDPBackend, backend)]):
                    forward(x, None)
                taken.append(backend)
            except RuntimeError:  # "No available kernel": this backend refuses these inputs
                pass
        found[f"{channels}ch-{heads}h-{resolution}px"] = taken
    configure_backends(Speed())
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


RATIO_KEYS = ("train_images_per_s", "sample_image_steps_per_s", "bpd_image_steps_per_s")
PARAMETER_KEYS = ("preset", "device", "device_name", "torch", "commit", "speed", "batch_size", "sample_batch", "T",
                  "steps", "warmup", "parameters")


def run_bench(preset: str = "cifar10", *, device: str | torch.device = "cpu", speed: Speed | None = None,
              batch_size: int = 128, sample_batch: int | None = None, T: int = 1000, steps: int = 10,
              warmup: int = 3, seed: int = 0, rounds: int = 3, fid_images: int = 0, inception_weights=None) -> dict:
    """Benchmark ``preset`` with ``speed`` (default: what pays off on the device) and with the plain path, and the
    plain path's training against the straightforward code in ``rounds`` alternating rounds; which fused attention
    kernels take the preset's attention blocks with each; with ``fid_images``, a FID job's scoring rate
    (:func:`fid_throughput`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    if min(batch_size, steps, T, rounds) < 1 or warmup < 0 or (sample_batch is not None and sample_batch < 1):
        raise ValueError(f"need batch_size, sample_batch, steps, T, rounds >= 1 and warmup >= 0; got "
                         f"batch_size={batch_size}, sample_batch={sample_batch}, steps={steps}, T={T}, "
                         f"rounds={rounds}, warmup={warmup}")
    if fid_images:
        from .metrics import MIN_IMAGES  # torch-fidelity comes in only for the FID phase

        if fid_images < MIN_IMAGES:
            raise ValueError(f"fid_images must be 0 (no FID phase) or at least {MIN_IMAGES}, got {fid_images}")
    device = torch.device(device)
    speed = Speed.auto(device) if speed is None else speed
    sample_batch = sample_batch or batch_size
    options = dict(batch_size=batch_size, sample_batch=sample_batch, T=T, steps=steps, warmup=warmup, seed=seed)
    straightforward = against_straightforward(preset, device, batch_size=batch_size, T=T, steps=steps, warmup=warmup,
                                              seed=seed, rounds=rounds)
    plain = _phases(preset, Speed(), device, **options)
    optimised = _phases(preset, speed, device, **options)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": source_commit(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": device_name(device),
        "preset": preset,
        "parameters": plain.pop("parameters"),
        **options,
        "speed": speed.describe(),
        "plain": plain,
        "optimised": {k: v for k, v in optimised.items() if k != "parameters"},
        "ratio": {k: optimised[k] / plain[k] for k in RATIO_KEYS},
        "against_straightforward": straightforward,
        "samplers": sampler_speeds(preset, speed, device, sample_batch=sample_batch, T=T, seed=seed, rounds=rounds),
        **bits_per_dim_difference(preset, speed, device),
        "attention_kernels": {"plain": attention_kernels(preset, Speed(), device),
                              "optimised": attention_kernels(preset, speed, device)},
        **(fid_throughput(device, fid_images, weights=inception_weights, seed=seed) if fid_images else {}),
    }


def record_name(result: dict) -> str:
    """``benchmarks/<date>-<device>-<preset>-b<batch>-<speed>.json``: one file per run, never overwritten."""
    stamp = result["date"].replace(":", "").replace("+0000", "Z")
    device = result["device"].replace(":", "")
    return f"{stamp}-{device}-{result['preset']}-b{result['batch_size']}-{result['speed'].replace(',', '+')}.json"


def log_to_mlflow(result: dict, tracking_uri: str, artifact_root: str | Path, experiment: str = "ddpm-bench") -> str:
    """One MLflow run per benchmark (tagged ``ddpm.kind: bench``): the settings as parameters, every figure as a
    metric, the whole record as ``config.json``."""
    from . import tracking

    run_id = tracking.init_sweep(tracking_uri, experiment, f"{result['preset']}-{result['device']}-{result['speed']}",
                                 artifact_root, result, kind="bench")["parent_run_id"]
    tracking.log_params(tracking_uri, run_id, {k: result[k] for k in PARAMETER_KEYS})
    metrics = {f"{part}.{k}": v for part in ("plain", "optimised", "ratio", "against_straightforward")
               for k, v in result[part].items() if k != "ratio_per_round"}
    metrics.update({k: result[k] for k in ("bpd_mean_difference", "bpd_max_image_difference", "fid_images_per_s")
                    if k in result})
    metrics.update({f"samplers.{point}.{k}": v for point, figures in result["samplers"].items()
                    for k, v in figures.items() if not k.endswith("per_round")})
    tracking.log_metrics(tracking_uri, run_id, metrics)
    tracking.finish_run(tracking_uri, run_id)
    return run_id


def write_record(result: dict, folder: str | Path) -> Path:
    """The record as JSON under ``folder`` (see :func:`record_name`)."""
    from .io import write_json

    path = Path(folder) / record_name(result)
    write_json(path, result)
    return path
