"""Checkpoints, the on-disk contract: written atomically, read without unpickling arbitrary objects, turned back
into model + diffusion (:func:`build`, :func:`load_for_sampling`), EMA snapshots for FID over training
(:func:`snapshot_path`), and checked to be the job's: a checkpoint's provenance (:func:`checkpoint_provenance`),
which every file made from it records (:mod:`ddpm.provenance`, with the marker of a diverged training).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .datasets import read_manifest, split_sha256
from .diffusion import GaussianDiffusion
from .io import atomic_open
from .provenance import DIVERGED, Diverged
from .schedules import make_betas
from .settings import Setting, TrainConfig
from .store import sha256_file
from .unet import UNet, UNetConfig, create_model


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts) to ``path`` atomically (see :mod:`ddpm.io`)."""
    with atomic_open(path, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as err:
            if isinstance(err.__context__, OSError):  # torch.save hides a failed write (e.g. a full disk) this way
                raise err.__context__ from err
            raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: a file carrying code (a crafted pickle) is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty (0 bytes): delete it and run the workflow again to retrain "
                         f"this setting")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated, corrupt or unsafe files all end here
        raise ValueError(f"cannot load checkpoint {path}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''} (a damaged file: delete it and run the "
                         f"workflow again to retrain this setting)") from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a ddpm checkpoint (expected a dict with 'model' and 'config')")
    return state


def check_finite_weights(weights: dict, where) -> None:
    """Refuse weights holding NaN or ±inf, naming the first such tensor (and how many more there are): a network with
    them samples NaN, which the conversion to uint8 turns into black images that FID would then score."""
    bad = [name for name, tensor in weights.items()
           if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if not bad:
        return
    first = weights[bad[0]]
    count = int((~torch.isfinite(first)).sum())
    more = f"; {len(bad) - 1} more tensors hold some too (e.g. {bad[1]})" if len(bad) > 1 else ""
    raise ValueError(f"{where}: the weight tensor {bad[0]} holds {count} non-finite values (NaN or ±inf) of "
                     f"{first.numel()}{more}. Weights of a diverged training or a damaged file: nothing is sampled "
                     f"or scored from them")


def checkpoint_provenance(path: str | Path, *, setting: str | None = None, data_dir: str | Path | None = None) -> dict:
    """Load the checkpoint at ``path``, refuse it unless it is the job's, and return what files made from it record.

    ``setting``: the setting name the job is for; the checkpoint's recorded sweep axes must be that setting's.
    ``data_dir``: the prepared data folder the job uses; the checkpoint must have been trained on its train split
    (the same dataset, image shape and sha256 of ``train_images.npy``). A diverged training's weightless checkpoint
    has nothing to check: ``{}`` (the job then records the divergence)."""
    path = Path(path)
    state = load_checkpoint(path)
    if DIVERGED in state:
        return {}
    config = state["config"]
    trained_as = Setting.from_dict(config).name
    if setting is not None and trained_as != setting:
        raise ValueError(f"{path} belongs to another setting: it was trained as {trained_as}, but this job is for "
                         f"{setting}. Delete it and run the workflow again to train {setting}")
    data_sha256 = state.get("data_sha256", "")
    if data_dir is not None:
        manifest = read_manifest(data_dir)
        shape = [int(s) for s in state.get("data_shape", [])]
        if config.get("dataset") != manifest["dataset"] or shape != manifest["image_shape"]:
            raise ValueError(f"{path} was trained on {config.get('dataset')} images of shape {shape}, but this job "
                             f"uses {data_dir}: {manifest['dataset']} images of shape {manifest['image_shape']}")
        if data_sha256 and data_sha256 != split_sha256(data_dir, "train"):
            raise ValueError(f"{path} was trained on other data: its training images have sha256 {data_sha256}, "
                             f"the train split of {data_dir} has {split_sha256(data_dir, 'train')}. Delete it and "
                             f"run the workflow again to retrain on this data")
        if not data_sha256:
            why = (f"imported from {state['source']['format']} weights, trained elsewhere" if "source" in state
                   else "trained without a prepared data folder")
            print(f"note: {path} does not record the checksum of its training images ({why}): its data is checked "
                  f"by name and shape only", flush=True)
    return {"setting": trained_as, "checkpoint_sha256": sha256_file(path), "data_sha256": data_sha256}


#: Snapshots for FID over training: ``snapshots/step-<N>.pt``, the EMA weights at step N (as a checkpoint without
#: the raw weights, marked with this key).
SNAPSHOT_DIR = "snapshots"
EMA_ONLY = "ema_only"
#: An imported checkpoint (:mod:`ddpm.pretrained`) records its architecture under this key, and where it came from
#: under ``source`` (format, files, sha256); a trained one is built from its config's preset.
UNET_KEY = "unet"


def snapshot_path(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / SNAPSHOT_DIR / f"step-{step}.pt"


def build(config: TrainConfig, *, in_channels: int, image_size: int, unet: dict | None = None
          ) -> tuple[UNet, GaussianDiffusion]:
    """The network and the diffusion process a setting describes; ``unet``: the architecture as a
    :class:`UNetConfig` dict, for imported weights (:mod:`ddpm.pretrained`), instead of the config's preset."""
    diffusion = GaussianDiffusion(
        make_betas(config.schedule, config.T, rescale=config.schedule_rescale),
        config.mean_type, config.var_type, config.loss_type,
    )
    if unet is not None:
        return UNet(UNetConfig.from_dict(unet)), diffusion
    overrides = {"in_channels": in_channels, "image_size": image_size}
    if config.dropout is not None:
        overrides["dropout"] = config.dropout
    model = create_model(config.preset, learn_sigma=diffusion.learns_variance, **overrides)
    return model, diffusion


def load_for_sampling(path: str | Path, *, use_ema: bool = True, device="cpu") -> tuple[UNet, GaussianDiffusion, dict]:
    """Rebuild model (EMA weights by default) and diffusion from a checkpoint written by :func:`train`."""
    state = load_checkpoint(path)
    if DIVERGED in state:
        raise Diverged(path, state[DIVERGED])
    if not use_ema and state.get(EMA_ONLY):
        raise ValueError(f"{path} is a snapshot for FID over training: it holds only the EMA weights")
    config = TrainConfig.from_dict(state["config"])
    model, diffusion = build(config, in_channels=state["data_shape"][0], image_size=state["data_shape"][1],
                             unet=state.get(UNET_KEY))
    if not use_ema and state.get("model") is None:
        raise ValueError(f"{path} holds only EMA weights ({state.get('source', {}).get('format', 'imported')}: "
                         f"the source had no raw weights)")
    weights = state["ema"] if use_ema else state["model"]
    mismatch = _architecture_mismatch(model.state_dict(), weights)
    if mismatch:
        raise ValueError(f"checkpoint {path} does not fit the architecture its config describes "
                         f"(preset {config.preset!r}, var_type {config.var_type!r}): {mismatch}")
    check_finite_weights(weights, f"checkpoint {path} ({'EMA' if use_ema else 'raw'} weights)")
    model.load_state_dict(weights)
    return model.to(device).eval(), diffusion, state


def _architecture_mismatch(expected: dict, found: dict) -> str | None:
    """A one-line summary of how the weights ``found`` differ from the model's, or None if they fit."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    if not (missing or unexpected or reshaped):
        return None
    summary = f"{len(missing)} parameters missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape"
    if reshaped:
        k = reshaped[0]
        summary += f"; e.g. {k} is {tuple(found[k].shape)} in the file but {tuple(expected[k].shape)} in the model"
    elif missing:
        summary += f"; e.g. {missing[0]} is missing"
    return summary
