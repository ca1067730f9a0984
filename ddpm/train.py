"""Training (Algorithm 1 of Ho et al. 2020), readable top to bottom.

One run = one setting: dataset × schedule × T × mean_type × var_type × loss_type × seed, plus the optimiser
hyperparameters of the paper's Appendix B (Adam, lr 2e-4 with linear warmup, grad clip 1.0, EMA 0.9999).
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import tracking as mlf
from .checkpoint import EMA_ONLY, build, load_checkpoint, save_checkpoint, snapshot_path
from .provenance import DIVERGED
from .datasets import load_dataset, open_split, read_manifest, split_sha256, to_model_range
from .diffusion import GaussianDiffusion, randn
from .distributed import World, data_parallel, joined
from .io import atomic_open
from .timestep_samplers import create_timestep_sampler, default_timestep_sampler
from .settings import Setting, TrainConfig, write_setting
from .samplers.point import SamplerPoint
from .speed import FastForward, Speed, ema_update, make_optimizer
from .unet import UNet
from .vocabulary import ON_DIVERGENCE


PREVIEW_SAMPLES = 36
PREVIEW_STEPS = 50


def _preview_grid(ema: UNet, diffusion: GaussianDiffusion, shape, path: Path, device) -> Path:
    """A grid of EMA samples of the ancestral sampler on at most 50 steps (the sampling axis's ``ancestral`` point
    with S = 50): how samples look at this point of training."""
    from .datasets import to_uint8
    from .io import save_grid
    from .noise import SampleNoise
    from .samplers import sample_loop

    point = SamplerPoint("ancestral", min(PREVIEW_STEPS, diffusion.num_timesteps))
    noise = SampleNoise(0, range(PREVIEW_SAMPLES))
    x = sample_loop(ema, diffusion, point, (PREVIEW_SAMPLES, *shape), noise, device=device)
    save_grid(to_uint8(x).cpu().numpy(), path, nrow=6)
    return path


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or Inf at ``step``."""

    def __init__(self, loss: float, step: int):
        super().__init__(f"loss became {loss} at step {step}")
        self.loss, self.step = loss, step


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLoss(loss.item(), step)


def _record_divergence(out_dir: Path, config: TrainConfig, error: NonFiniteLoss) -> dict:
    """``on_divergence="record"``: a checkpoint without weights that says where the training diverged, so the
    sweep goes on and the report says "diverged at step N" (as DDPM's Table 2 reports its unstable settings)."""
    save_checkpoint(out_dir / "checkpoint.pt", {"config": asdict(config), "model": {}, DIVERGED: error.step,
                                                "loss": str(error.loss)})
    (out_dir / "metrics.jsonl").touch()  # the steps logged before, if any, stay
    print(f"{error}; recorded in {out_dir / 'checkpoint.pt'} (on_divergence=record)", flush=True)
    return {DIVERGED: error.step}


#: Snapshots are written here while the run goes on, and moved to ``snapshots/`` when it ends: like the resume state
#: they are not outputs yet, so Snakemake's clean-up of a preempted job keeps them for the rerun.
PENDING_SNAPSHOT_DIR = "snapshots-pending"


def _check_snapshot_steps(steps, total: int) -> tuple[int, ...]:
    steps = tuple(sorted(set(int(s) for s in steps)))
    bad = [s for s in steps if not 1 <= s < total]
    if bad:
        raise ValueError(f"snapshot steps {bad} are not between 1 and the last step ({total}) excluded: the final "
                         f"checkpoint is the curve's last point")
    return steps


def _publish_snapshots(out_dir: Path, steps: tuple[int, ...], diverged_at: int | None = None) -> None:
    """Move the pending snapshots to ``snapshots/``. A step the training never reached because it diverged gets a
    weightless snapshot that says so (its samples and scores then record the divergence, as the final's do)."""
    pending = out_dir / PENDING_SNAPSHOT_DIR
    for step in steps:
        source = pending / f"step-{step}.pt"
        if source.exists():
            snapshot_path(out_dir, step).parent.mkdir(exist_ok=True)
            source.replace(snapshot_path(out_dir, step))
        elif diverged_at is not None and step >= diverged_at:
            save_checkpoint(snapshot_path(out_dir, step), {"config": {}, "model": {}, DIVERGED: diverged_at})
        else:
            raise FileNotFoundError(f"the snapshot at step {step} was not taken ({source} is missing): the run was "
                                    f"resumed past it with other snapshot steps; delete {out_dir / RESUME_FILE} "
                                    f"to train again from the start")
    if pending.is_dir() and not any(pending.iterdir()):
        pending.rmdir()


#: The resume state lives beside the run's outputs but is not one of them, so Snakemake's clean-up of a failed
#: job does not delete it; a rerun continues from it.
RESUME_FILE = "resume.pt"
#: Exit status after a preemption signal (EX_TEMPFAIL): the state is saved, run the job again to continue.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """Training stopped on SIGTERM or SIGUSR1 after writing its resume state."""


class _PreemptionFlag:
    """Turns SIGTERM / SIGUSR1 into a flag that the loop checks between steps (so a step is never cut in half)."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _read_resume(out_dir: Path, config: TrainConfig) -> dict | None:
    """The saved state of an interrupted run of this very config, or None. A state written for another config
    (the setting's parameters changed) is moved aside to ``resume-stale.pt``, and training starts over."""
    path = out_dir / RESUME_FILE
    if not path.exists():
        return None
    state = load_checkpoint(path)  # a corrupt or truncated file is an error that names it
    if state["config"] != asdict(config):
        changed = sorted(k for k in asdict(config) if state["config"].get(k) != getattr(config, k))
        print(f"{path} was written for another config (changed: {', '.join(changed)}); "
              f"moved to {RESUME_FILE.replace('.pt', '-stale.pt')}, starting over", flush=True)
        path.replace(out_dir / RESUME_FILE.replace(".pt", "-stale.pt"))
        return None
    return state


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    tracking: dict | None = None,
    run_name: str | None = None,
    on_divergence: str = "fail",
    snapshot_steps=(),
    speed: Speed = Speed(),
    data_workers: int | None = None,
) -> dict:
    """Train one setting and write ``checkpoint.pt`` and ``metrics.jsonl`` to ``out_dir``; returns the final metrics.

    ``data_dir`` is a folder written by ``ddpm prepare`` (its train split is used); without it the dataset is
    loaded by name. With ``tracking`` (see :mod:`ddpm.tracking`) the run is an MLflow child run of the sweep,
    named ``run_name``; its id is written to ``mlflow_run_id.txt`` for the jobs that follow.

    Every ``checkpoint_every`` steps the complete state (weights, EMA, optimiser, step, every RNG, the timestep
    sampler, the MLflow run id) goes to ``resume.pt``; a killed run started again continues from there and ends
    with the same weights, bit for bit on CPU, in the same MLflow run. SIGTERM / SIGUSR1 save the state and raise
    :class:`Preempted`.

    A NaN or Inf loss fails the MLflow run and raises :class:`NonFiniteLoss` (``on_divergence="fail"``), or, with
    ``"record"``, writes a weightless ``checkpoint.pt`` naming the step (see :func:`_record_divergence`) and returns.

    At each of ``snapshot_steps`` (before the last) the EMA weights are kept as ``snapshots/step-<N>.pt``, to be
    sampled and scored: FID over training, whose minimum the DDPM paper reports (its Appendix B).

    ``speed`` picks the speed-ups of :mod:`ddpm.speed` (default: the plain fp32 eager path). The train split stays
    on disk: ``data_workers`` loader processes read each step's batch ahead (:func:`data_workers`: by default 4 on a
    GPU, none on a CPU); the batches do not depend on it (:func:`batch_indices`).

    Started by torchrun (``torchrun --nproc_per_node N -m ddpm.cli train …``), the N processes train the one
    setting with DistributedDataParallel, on one GPU each (see :mod:`ddpm.distributed`): ``batch_size`` stays the
    global batch, and the files are those of a one-process run.
    """
    if on_divergence not in ON_DIVERGENCE:
        raise ValueError(f"on_divergence must be one of {', '.join(ON_DIVERGENCE)}, got {on_divergence!r}")
    with joined(device) as (world, device):
        return _train_process(config, Path(out_dir), world, device, data_dir=data_dir, progress=progress,
                              tracking=tracking if world.is_main else None, run_name=run_name,
                              on_divergence=on_divergence, snapshot_steps=snapshot_steps, speed=speed,
                              workers=data_workers)


def _train_process(config: TrainConfig, out_dir: Path, world: World, device: torch.device, *, data_dir, progress,
                   tracking, run_name, on_divergence, snapshot_steps, speed, workers) -> dict:
    """:func:`train` in one process of ``world``: rank 0 writes the files and the MLflow run, the others compute."""
    world.local_batch(config.batch_size)  # a batch that does not split over the processes fails here, first
    if world.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_setting(out_dir, Setting.from_dict(asdict(config)))  # what the run is, for the reports to read
    snapshot_steps = _check_snapshot_steps(snapshot_steps, config.steps)
    resume = _read_resume(out_dir, config) if world.is_main else None
    world.barrier()  # rank 0 has set a stale state aside: the others read the file only if it is this config's
    if not world.is_main and (out_dir / RESUME_FILE).exists():
        resume = load_checkpoint(out_dir / RESUME_FILE)
    if resume is None and world.is_main:  # snapshots left by an interrupted run of another config
        shutil.rmtree(out_dir / PENDING_SNAPSHOT_DIR, ignore_errors=True)
    run_id = resume.get("mlflow_run_id") if resume and world.is_main else None
    if tracking is not None:
        if run_id is None:
            run_id = mlf.start_setting_run(tracking, run_name or out_dir.name,
                                           {**asdict(config), "device": str(device), "processes": world.size,
                                            "speed": speed.describe()})
        else:  # resumed: its run must not have been deleted meanwhile (named, with the command that restores it)
            mlf.check_active(tracking, [run_id])
            mlf.mark_running(tracking["tracking_uri"], run_id)
        (out_dir / "mlflow_run_id.txt").write_text(run_id + "\n")
    try:
        final = _train_loop(config, out_dir, data_dir, world, device, progress, tracking, run_id, resume,
                            snapshot_steps, speed, workers)
    except Preempted:
        if run_id is not None:
            mlf.best_effort(f"mark MLflow run {run_id} KILLED",
                            lambda: mlf.finish_run(tracking["tracking_uri"], run_id, "KILLED"))
        raise
    except NonFiniteLoss as error:
        if run_id is not None:
            mlf.best_effort(f"mark MLflow run {run_id} FAILED", lambda: (
                mlf.set_tag(tracking["tracking_uri"], run_id, f"ddpm.{DIVERGED}", str(error.step)),
                mlf.finish_run(tracking["tracking_uri"], run_id, "FAILED")))
        if on_divergence == "fail":
            raise
        if not world.is_main:
            return {DIVERGED: error.step}
        (out_dir / RESUME_FILE).unlink(missing_ok=True)  # a rerun would diverge the same way
        _publish_snapshots(out_dir, snapshot_steps, diverged_at=error.step)
        return _record_divergence(out_dir, config, error)
    except BaseException:  # a server that is gone: one try to mark the run (ddpm.tracking.best_effort), then this
        if run_id is not None:
            mlf.best_effort(f"mark MLflow run {run_id} FAILED",
                            lambda: mlf.finish_run(tracking["tracking_uri"], run_id, "FAILED"))
        raise
    if not world.is_main:
        return final
    _publish_snapshots(out_dir, snapshot_steps)
    if run_id is not None:
        mlf.log_artifact(tracking["tracking_uri"], run_id, out_dir / "metrics.jsonl")
        mlf.finish_run(tracking["tracking_uri"], run_id, "FINISHED")
    (out_dir / RESUME_FILE).unlink(missing_ok=True)  # last: a kill before this resumes and redoes the same steps
    return final


def _rng_state(generator: torch.Generator) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(generator: torch.Generator, state: dict) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _restore_metrics(path: Path, resume: dict) -> list[str]:
    """Write ``metrics.jsonl`` as it was at the saved state, and return its lines. The state carries them: a job
    that failed (preempted, killed) has its outputs, this file among them, deleted by Snakemake before the rerun.
    Lines a killed run wrote after its last saved state are dropped (they are computed again)."""
    if "metrics_lines" in resume:
        lines = list(resume["metrics_lines"])
    else:  # a state saved before the lines were part of it: what the file still has
        found = path.read_text().splitlines() if path.exists() else []
        lines = [line for line in found if line and json.loads(line)["step"] <= resume["step"]]
    with atomic_open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return lines


def apply_gradients(loss: torch.Tensor, model: UNet, ema: UNet, optimizer: torch.optim.Optimizer, *, lr: float,
                    grad_clip: float, ema_decay: float, speed: Speed) -> torch.Tensor:
    """One optimiser step on ``loss`` (Appendix B: Adam at ``lr``, the gradient norm clipped at ``grad_clip``, 0 for
    none), then the EMA update; returns the gradient norm before clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    optimizer.step()
    ema_update(ema, model, ema_decay, speed)
    return grad_norm


def batch_indices(num_images: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The train images of step ``step``'s global batch (Algorithm 1's x_0 ~ q(x_0)): drawn uniformly with
    replacement by ``numpy.random.default_rng((seed, step))``, a function of the seed and the step alone, so that the
    batches are the same for any number of loader workers and processes and whichever step a run resumes from."""
    return np.random.default_rng((seed, step)).integers(0, num_images, size=batch_size)


class StepBatches(torch.utils.data.Dataset):
    """Item ``i``: this process's share (``share``) of the global batch of step ``first_step + i`` (:func:`batch_indices`),
    uint8 (b, C, H, W), read from ``images`` (a :class:`~ddpm.store.SplitImages` on disk, or an array). A
    DataLoader's workers read the next steps' batches while the network trains on this one; they become floats on the
    device, one batch at a time."""

    def __init__(self, images, batch_size: int, seed: int, share: slice, first_step: int, last_step: int):
        self.images, self.batch_size, self.seed, self.share = images, batch_size, seed, share
        self.first_step, self.last_step = first_step, last_step

    def __len__(self) -> int:
        return max(0, self.last_step - self.first_step + 1)

    def __getitem__(self, i: int) -> torch.Tensor:
        rows = batch_indices(len(self.images), self.batch_size, self.seed, self.first_step + i)[self.share]
        return torch.from_numpy(np.ascontiguousarray(self.images[rows]))


def data_workers(device: torch.device, requested: int | None) -> int:
    """Loader processes: ``requested``, or by default 4 on a GPU (at most the CPUs but one) and none on a CPU, where
    the reads are a small part of a step and the cores are the network's."""
    if requested is not None:
        return requested
    return min(4, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0


def _ignore_preemption(worker_id: int) -> None:
    """In a loader process: leave SIGTERM and SIGUSR1 to the training process. A scheduler signals every process of
    the job; a worker that died of it would fail the next batch before the training saved its state."""
    for sig in _PreemptionFlag.SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def _batches(images, config: TrainConfig, share: slice, first_step: int, device: torch.device, workers: int):
    loader = torch.utils.data.DataLoader(
        StepBatches(images, config.batch_size, config.seed, share, first_step, config.steps), batch_size=None,
        shuffle=False, num_workers=workers, pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
        worker_init_fn=_ignore_preemption if workers else None,
        generator=torch.Generator())  # its seed for the workers from its own: the global one is dropout's
    return iter(loader)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate at ``step`` (1-based): linear warmup over ``config.warmup`` steps, then constant (DDPM
    Appendix B: 5000 steps of warmup to 2e-4)."""
    return config.lr * min(1.0, step / config.warmup) if config.warmup > 0 else config.lr


class _Log:
    """metrics.jsonl (rank 0 only), the same records to MLflow, and the progress line. A failed MLflow call (the
    server is gone) is kept in ``error``: the training stops at the next agreement, every process saves the resume
    state, then the error is raised naming the tracking URI (:meth:`stopped`)."""

    def __init__(self, out_dir: Path, config: TrainConfig, is_main: bool, resumed: bool, lines: list[str],
                 tracking: dict | None, run_id: str | None, last_logged: int, progress: bool):
        self.out_dir, self.config, self.lines, self.progress = out_dir, config, lines, progress
        self.uri, self.run_id, self.last_logged = (tracking or {}).get("tracking_uri"), run_id, last_logged
        self.file = (out_dir / "metrics.jsonl").open("a" if resumed else "w") if is_main else None
        self.last: dict = json.loads(lines[-1]) if lines else {}  # resumed at the last step: its metrics
        self.error: mlf.TrackingError | None = None

    def to_mlflow(self, call) -> None:
        if self.error is None and self.run_id is not None:
            try:
                call()
            except mlf.TrackingError as err:
                self.error = err

    def due(self, step: int) -> bool:
        """Whether ``step`` is logged (rank 0, at the config's cadence and at the last step)."""
        return self.file is not None and (step % self.config.log_every == 0 or step == self.config.steps)

    def step(self, step: int, loss: torch.Tensor, lr: float, grad_norm: torch.Tensor, first_step: int,
             start: float) -> None:
        """Log the loss, learning rate and gradient norm at a step that is :meth:`due` (read from the device here
        only: waiting for it at every step would stall the GPU)."""
        config = self.config
        elapsed = time.monotonic() - start
        self.last = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": grad_norm.item(),
                     "images_per_s": (step - first_step + 1) * config.batch_size / elapsed}
        self.lines.append(json.dumps(self.last))
        self.file.write(self.lines[-1] + "\n")
        self.file.flush()
        if step > self.last_logged:
            metrics = {k: v for k, v in self.last.items() if k != "step"}
            self.to_mlflow(lambda: mlf.log_metrics(self.uri, self.run_id, metrics, step))
        if self.progress:
            eta = elapsed / (step - first_step + 1) * (config.steps - step)
            print(f"step {step}/{config.steps} loss {self.last['loss']:.4f} lr {self.last['lr']:.2e} "
                  f"{self.last['images_per_s']:.0f} img/s ETA {eta:.0f}s", flush=True)

    def stopped(self, step: int) -> mlf.TrackingError:
        return mlf.TrackingError(f"{self.error}; the training state at step {step} is saved in "
                                 f"{self.out_dir / RESUME_FILE}: run again (with the store reachable) to resume")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _resume(resume: dict, parts: dict, generator: torch.Generator, world: World, out_dir: Path, config: TrainConfig,
            tracking: dict | None, run_id: str | None) -> tuple[int, int, list[str]]:
    """Load the resume state into ``parts`` (model, ema, optimizer, timestep sampler) and the generator; return the
    first step to run, the last step MLflow has, and metrics.jsonl's lines so far. Steps logged to MLflow after the
    saved state are recomputed identically, so each step is logged once; steps whose logging failed are logged now."""
    for name, part in parts.items():
        part.load_state_dict(resume[name])
    _set_rng_state(generator, _own_rng_state(resume, world))
    lines: list[str] = []
    if world.is_main:
        lines = _restore_metrics(out_dir / "metrics.jsonl", resume)
        print(f"resuming from step {resume['step']} of {config.steps}", flush=True)
    last_logged = mlf.last_logged_step(tracking["tracking_uri"], run_id, "loss") if run_id else resume["step"]
    for line in lines if run_id else ():
        record = json.loads(line)
        if last_logged < record["step"] <= resume["step"]:
            mlf.log_metrics(tracking["tracking_uri"], run_id, {k: v for k, v in record.items() if k != "step"},
                            record["step"])
    return resume["step"] + 1, last_logged, lines


def _algorithm1_loss(diffusion, forward, timestep_sampler, x0, config: TrainConfig, mine: slice, generator, device):
    """Algorithm 1's loss on this process's share ``mine`` of the global batch: every process draws the global
    batch's flips, t and ε from ``generator`` and keeps its slice. Returns (the weighted mean loss, t, per-sample
    losses)."""
    if config.flip:
        flip = (torch.rand(config.batch_size, generator=generator) < 0.5).to(device)[mine]
        x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
    t, weights = timestep_sampler.sample(config.batch_size, device, generator=generator)
    noise = randn((config.batch_size, *x0.shape[1:]), generator, device=device)
    losses = diffusion.training_losses(forward, x0, t[mine], noise[mine])
    return (losses["loss"] * weights[mine]).mean(), t, losses["loss"]


def _train_loop(config: TrainConfig, out_dir: Path, data_dir, world: World, device: torch.device, progress: bool,
                tracking: dict | None, run_id: str | None, resume: dict | None, snapshot_steps: tuple[int, ...],
                speed: Speed, workers: int | None) -> dict:
    torch.manual_seed(config.seed + world.rank)  # dropout masks differ between processes; DDP copies rank 0's init
    generator = torch.Generator().manual_seed(config.seed)  # the same on every process: flips, t and noise
    mine = world.local_batch(config.batch_size)

    # Data: the train split stays on disk (uint8); each step's batch is read by the loader and scaled on the device.
    images, data_sha256 = _training_images(config, data_dir)
    _, channels, height, width = images.shape
    shape = [channels, height, width]

    model, diffusion = build(config, in_channels=channels, image_size=height)
    model.to(device).train()
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)  # before DDP lays out its gradient buckets
    forward = FastForward(data_parallel(model, world, device), speed, device)  # model(x, t), sped up; weights: model's
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = make_optimizer(model.parameters(), config.lr, speed)
    timestep_sampler = create_timestep_sampler(config.timestep_sampler or default_timestep_sampler(config.loss_type),
                                               diffusion.num_timesteps)
    parts = {"model": model, "ema": ema, "optimizer": optimizer, "sampler": timestep_sampler}

    first_step, last_logged, lines = 1, 0, []
    if resume is not None:
        first_step, last_logged, lines = _resume(resume, parts, generator, world, out_dir, config, tracking, run_id)
    log = _Log(out_dir, config, world.is_main, resume is not None, lines, tracking, run_id, last_logged, progress)

    def training_state(step: int) -> dict:
        return {"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "config": asdict(config), "data_shape": shape, "data_sha256": data_sha256}

    def save_resume(step: int) -> None:
        rng = world.gather_objects(_rng_state(generator))  # a collective: every process takes part
        if world.is_main:
            save_checkpoint(out_dir / RESUME_FILE, {**training_state(step), "sampler": timestep_sampler.state_dict(),
                                                    "rng": rng[0], "rng_per_process": rng, "mlflow_run_id": run_id,
                                                    "metrics_lines": log.lines})

    batches = _batches(images, config, mine, first_step, device, data_workers(device, workers))
    start = time.monotonic()
    with _PreemptionFlag() as preemption:
        for step in range(first_step, config.steps + 1):
            x0 = to_model_range(next(batches).to(device, non_blocking=True))
            loss, t, losses = _algorithm1_loss(diffusion, forward, timestep_sampler, x0, config, mine, generator, device)
            global_loss, stop = world.mean_and_any(loss, preemption.received is not None or log.error is not None)
            _check_finite(global_loss, step)
            lr = learning_rate(config, step)
            grad_norm = apply_gradients(loss, model, ema, optimizer, lr=lr, grad_clip=config.grad_clip,
                                        ema_decay=config.ema_decay, speed=speed)
            if timestep_sampler.learns_from_losses:
                timestep_sampler.update(t, world.gather(losses.detach()))

            if log.due(step):
                log.step(step, global_loss, lr, grad_norm, first_step, start)
            if world.is_main and config.preview_every and (step % config.preview_every == 0 or step == config.steps):
                grid = _preview_grid(ema, diffusion, shape, out_dir / "previews" / f"step-{step:07d}.png", device)
                log.to_mlflow(lambda: mlf.log_artifact(tracking["tracking_uri"], run_id, grid, "previews"))
            if world.is_main and step in snapshot_steps:
                save_checkpoint(out_dir / PENDING_SNAPSHOT_DIR / f"step-{step}.pt",
                                {"model": {}, "ema": ema.state_dict(), "step": step, "config": asdict(config),
                                 "data_shape": shape, "data_sha256": data_sha256, EMA_ONLY: True})
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or stop:
                save_resume(step)
            if stop and log.error is not None:
                raise log.stopped(step) from log.error
            if stop:
                raise Preempted(f"signal {preemption.received} at step {step}: state saved to {out_dir / RESUME_FILE}; "
                                f"run again to continue")
        # A call that failed at the last step has no next step to agree on: agree here (one more all-reduce).
        if world.mean_and_any(torch.zeros((), device=device), log.error is not None)[1]:
            save_resume(config.steps)
            if log.error is not None:
                raise log.stopped(config.steps) from log.error
            raise Preempted(f"rank 0's MLflow call failed at the last step: state saved to {out_dir / RESUME_FILE}")
    if world.is_main:
        log.close()
        save_checkpoint(out_dir / "checkpoint.pt", training_state(config.steps))
    return log.last


def _training_images(config: TrainConfig, data_dir) -> tuple:
    """The train split (uint8 (N, C, H, W): on disk, :func:`~ddpm.datasets.open_split`, checked against its manifest
    here, once) and the sha256 its checkpoint records ("" for data loaded by name). A prepared folder of another
    dataset, or fewer images than one batch, is refused naming the key."""
    if data_dir is None:
        images, data_sha256 = load_dataset(config.dataset), ""
    else:
        dataset = read_manifest(data_dir)["dataset"]
        if dataset != config.dataset:
            raise ValueError(f"--data {data_dir} holds {dataset}, but the setting's dataset is {config.dataset}")
        images, data_sha256 = open_split(data_dir, "train"), split_sha256(data_dir, "train")
        images.verify()  # every chunk, before the loader's workers start: each then reads checked bytes
    if config.batch_size > len(images):
        raise ValueError(f"train.batch_size {config.batch_size} is larger than the train split "
                         f"({len(images)} images)")
    return images, data_sha256


def _own_rng_state(resume: dict, world: World) -> dict:
    """This process's generator states from a resume state. Resumed on another number of processes (a requeued
    job given fewer GPUs), the shared batch generator carries on, but dropout draws anew: the run goes on
    correctly, though no longer bit for bit like an uninterrupted one."""
    per_process = resume.get("rng_per_process", [resume["rng"]])
    if len(per_process) == world.size:
        return per_process[world.rank]
    if world.is_main:
        print(f"resumed on {world.size} processes, saved on {len(per_process)}: dropout's random stream restarts",
              flush=True)
    torch.manual_seed(hash((resume["config"]["seed"], resume["step"], world.rank)) % 2**63)
    shared = per_process[0]
    return {"generator": shared["generator"], "torch": torch.get_rng_state()}
