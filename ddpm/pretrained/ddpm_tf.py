"""DDPM's own TensorFlow models in PyTorch: pesser/pytorch_diffusion's conversions of the released checkpoints, and
ermongroup/ddim's checkpoints of the same network (DDIM's CelebA 64×64 model among them).

- **pytorch-diffusion**: ``{,ema_}diffusion_{cifar10,lsun_church,lsun_bedroom,lsun_cat}_model/model-N.ckpt``, a bare
  state dict of its ``Model`` (``conv_in``, ``temb.dense.k``, ``down.i.block.j``, ``down.i.attn.j``,
  ``down.i.downsample``, ``mid.block_1``, ``mid.attn_1``, ``up.i.block.j``, ``up.i.upsample``, ``norm_out``,
  ``conv_out``): the EMA and the training weights are separate files. ermongroup/ddim samples DDIM's Tables 1 and 3
  from the ``ema_`` ones.
- **ddim**: ermongroup/ddim's ``ckpt.pth``, a list ``[model, optimizer, epoch, step, EMA]``: the model's state dict
  under ``nn.DataParallel`` (names prefixed ``module.``) and the EMA's shadow of it (bare names); ddim samples the EMA.

Both are ``diffusion_tf``'s U-Net (GroupNorm ε 1e-6, TF's "SAME" padding of the stride-2 convolution, frequencies
10000^(-i/(half − 1)), sines then cosines, one attention head); the up path's level ``i`` is its resolution level
``i`` (built in reverse and inserted at the front), each with ``num_res_blocks + 1`` blocks. Neither file says the
image size, the β or the variance: they come from pesser's name for the model (its folder), the data set the import
is checked against (``--data``), ``--image-size``, or DDPM's linear 1e-4 → 0.02 over T = 1000 (every release of
both codes), each inference named in the notes.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..presets import UNetConfig
from ..store import sha256_file
from .common import Layer, Source, layer_names, translate

#: pesser's releases (pytorch_diffusion/diffusion.py's configs), by the name its downloader gives their folders
#: (``diffusion_<name>_model``, ``ema_diffusion_<name>_model``): image size, the variance it samples with, dropout.
PYTORCH_DIFFUSION_MODELS = {"cifar10": (32, "fixedlarge", 0.1), "lsun_bedroom": (256, "fixedsmall", 0.0),
                            "lsun_cat": (256, "fixedsmall", 0.0), "lsun_church": (256, "fixedsmall", 0.0)}
#: ermongroup/ddim's configs (configs/*.yml), by image size: the variance of its config, dropout.
DDIM_CONFIGS = {32: ("fixedlarge", 0.1), 64: ("fixedlarge", 0.1), 256: ("fixedsmall", 0.0)}


def _ddim_config(image_size: int) -> tuple[str, float]:
    """ddim's variance and dropout for ``image_size`` (σ² = β and no dropout for a size it has no config for)."""
    return DDIM_CONFIGS.get(image_size, ("fixedlarge", 0.0))
#: The β of every release of both codes (DDPM's linear schedule over T = 1000).
T_RELEASED, BETA_1, BETA_T = 1000, 1e-4, 0.02
_MODULE_PREFIX = "module."  # nn.DataParallel's


def is_pytorch_diffusion(contents) -> bool:
    return isinstance(contents, dict) and "conv_in.weight" in contents and "temb.dense.0.weight" in contents


def is_ddim_checkpoint(contents) -> bool:
    return (isinstance(contents, (list, tuple)) and len(contents) in (4, 5) and isinstance(contents[0], dict)
            and f"{_MODULE_PREFIX}conv_in.weight" in contents[0])


def _architecture(state: dict, image_size: int, dropout: float, where: str) -> UNetConfig:
    """The U-Net a state dict of their ``Model`` describes, read off its layer names and shapes."""
    try:
        ch = int(state["conv_in.weight"].shape[0])
        levels = 0
        while f"down.{levels}.block.0.conv1.weight" in state:
            levels += 1
        blocks = 0
        while f"down.0.block.{blocks}.conv1.weight" in state:
            blocks += 1
        mults = tuple(int(state[f"down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in range(levels))
        attn_levels = [i for i in range(levels) if f"down.{i}.attn.0.q.weight" in state]
        in_channels, out_channels = int(state["conv_in.weight"].shape[1]), int(state["conv_out.weight"].shape[0])
    except (KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"{where}: not the DDPM U-Net of pytorch_diffusion / ddim ({err} missing)") from err
    if not levels or not blocks:
        raise ValueError(f"{where}: not the DDPM U-Net of pytorch_diffusion / ddim (no down.0.block.0)")
    return UNetConfig(ch=ch, ch_mult=mults, num_res_blocks=blocks,
                      attn_resolutions=tuple(image_size // 2 ** level for level in attn_levels), num_heads=1,
                      dropout=dropout, resamp_with_conv=True, image_size=image_size, in_channels=in_channels,
                      out_channels=out_channels, norm_eps=1e-6, downsample_padding="same", temb_freq_shift=1)


def _leaves(unet: UNetConfig) -> dict[str, str]:
    top = {"temb.0": "temb.dense.0", "temb.2": "temb.dense.1", "conv_in": "conv_in", "norm_out": "norm_out",
           "conv_out": "conv_out"}
    res = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
           "skip": "nin_shortcut"}
    attn = {"norm": "norm", "q": "q", "k": "k", "v": "v", "proj_out": "proj_out"}

    def theirs(layer: Layer) -> str:
        if layer.part == "mid":
            return f"mid.block_{layer.index + 1}" if layer.kind == "res" else "mid.attn_1"
        if layer.kind == "resample":
            return f"{layer.part}.{layer.level}.{layer.part}sample.conv"
        return f"{layer.part}.{layer.level}.{'block' if layer.kind == 'res' else 'attn'}.{layer.index}"

    return layer_names(unet, top, theirs, res, attn)


def _process(var_type: str) -> tuple[int, np.ndarray, str, str]:
    return T_RELEASED, np.linspace(BETA_1, BETA_T, T_RELEASED, dtype=np.float64), "eps", var_type


def pytorch_diffusion_model(path: Path) -> tuple[str | None, bool]:
    """pesser's name for the model a file is (``cifar10``, ``lsun_church``, …, from its folder, as its downloader
    lays them out, or its own name) and whether it is the EMA file; None where neither says."""
    for part in (path.parent.name, path.name):
        match = re.fullmatch(r"(ema_)?diffusion_(\w+?)_model(?:\.\w+)?", part)
        if match and match[2] in PYTORCH_DIFFUSION_MODELS:
            return match[2], bool(match[1])
    return None, False


def read_pytorch_diffusion(path: Path, state: dict, *, image_size: int | None = None) -> Source:
    """pesser's ``model-N.ckpt`` (``state``, read from ``path``)."""
    name, ema = pytorch_diffusion_model(path)
    if name is not None:
        size, var_type, dropout = PYTORCH_DIFFUSION_MODELS[name]
        if image_size not in (None, size):
            raise ValueError(f"{path} is pytorch_diffusion's {name} model, of {size}² images, not {image_size}²")
        notes = [f"pytorch_diffusion's {name} model (from the name {path.parent.name}/{path.name}): {size}² images, "
                 f"{var_type}, DDPM's linear β over T = {T_RELEASED}"]
        if not ema:
            notes.append(f"{path.name} is the training weights, not their EMA (pytorch_diffusion's ema_ files): the "
                         f"papers sample the EMA")
    elif image_size is None:
        raise ValueError(f"{path}: the image size of a pytorch_diffusion file is in neither the file nor its name "
                         f"(none of diffusion_{{{','.join(PYTORCH_DIFFUSION_MODELS)}}}_model): give --image-size or "
                         f"--data")
    else:
        size, (var_type, dropout) = image_size, _ddim_config(image_size)
        notes = [f"the model is none of pytorch_diffusion's releases by name: {var_type} and DDPM's linear β over "
                 f"T = {T_RELEASED} assumed, as its and ddim's {size}² models"]
    unet = _architecture(state, size, dropout, str(path))
    weights = translate(state, _leaves(unet), unet, where=str(path))
    return Source("pytorch-diffusion", unet, weights, None, *_process(var_type), {path.name: sha256_file(path)},
                  notes)


def read_ddim_checkpoint(path: Path, states: list, *, image_size: int | None = None) -> Source:
    """ermongroup/ddim's ``ckpt.pth`` (``states``, read from ``path``): the EMA (its last entry) as the weights
    sampled, the training weights beside them."""
    if image_size is None:
        raise ValueError(f"{path}: a ddim ckpt.pth does not say its image size: give --data (the prepared data set "
                         f"it is checked against) or --image-size")
    var_type, dropout = _ddim_config(image_size)
    training = states[0]
    not_prefixed = [key for key in training if not key.startswith(_MODULE_PREFIX)]
    if not_prefixed:
        raise ValueError(f"{path}: entry 0 is not a DataParallel state dict ({not_prefixed[0]} has no "
                         f"{_MODULE_PREFIX!r})")
    raw_state = {key.removeprefix(_MODULE_PREFIX): value for key, value in training.items()}
    unet = _architecture(raw_state, image_size, dropout, f"{path} (entry 0, the model)")
    raw = translate(raw_state, _leaves(unet), unet, where=f"{path} (entry 0, the model)")
    notes = [f"ddim's config for {image_size}² images: {var_type}, DDPM's linear β over T = {T_RELEASED}"]
    if len(states) == 5 and isinstance(states[4], dict):
        ema = translate(states[4], _leaves(unet), unet, where=f"{path} (entry 4, the EMA)")
    else:
        ema = raw
        notes.append(f"{path.name} has no EMA entry (ddim trains without one when model.ema is false): its weights "
                     f"are the training weights")
    return Source("ddim", unet, ema, raw if ema is not raw else None, *_process(var_type),
                  {path.name: sha256_file(path)}, notes)
