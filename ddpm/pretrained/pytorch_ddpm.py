"""pytorch-ddpm (w86763777/pytorch-ddpm): ``ckpt.pt`` with ``net_model`` and ``ema_model`` state dicts, and the run's
``flagfile.txt`` beside it when there is one."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..presets import UNetConfig
from ..store import sha256_file
from ..unet import timestep_embedding
from .common import FIXED_VARIANCES, Layer, Source, layer_names, translate

#: pytorch-ddpm's defaults (its ``main.py`` flags for CIFAR-10), used where a ckpt.pt has no flagfile.txt beside it.
PYTORCH_DDPM_FLAGS = {"img_size": "32", "T": "1000", "beta_1": "0.0001", "beta_T": "0.02", "mean_type": "epsilon",
                      "var_type": "fixedlarge"}


def read_flagfile(path: Path) -> dict[str, str]:
    """absl's ``--key=value`` lines (pytorch-ddpm's ``flagfile.txt``)."""
    flags = {}
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"--(\w+)=(.*)", line.strip())
        if match:
            flags[match[1]] = match[2]
    return flags


def _pytorch_ddpm_architecture(state: dict, image_size: int, where: str) -> UNetConfig:
    """The U-Net a pytorch-ddpm state dict describes, read off its layer names and shapes."""
    try:
        head = state["head.weight"]
        levels, blocks, mults, attn_levels, level_blocks = 0, [], [], set(), 0
        k = 0
        while f"downblocks.{k}.main.weight" in state or f"downblocks.{k}.block1.2.weight" in state:
            if f"downblocks.{k}.main.weight" in state:
                blocks.append(level_blocks)
                levels, level_blocks = levels + 1, 0
            else:
                if level_blocks == 0:
                    mults.append(state[f"downblocks.{k}.block1.2.weight"].shape[0] // head.shape[0])
                if f"downblocks.{k}.attn.proj_q.weight" in state:
                    attn_levels.add(levels)
                level_blocks += 1
            k += 1
        blocks.append(level_blocks)
    except (KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"{where}: not pytorch-ddpm's U-Net ({err} missing)") from err
    if len(set(blocks)) != 1 or not blocks[0] or len(mults) != len(blocks):
        raise ValueError(f"{where}: not pytorch-ddpm's U-Net (residual blocks per level: {blocks})")
    return UNetConfig(ch=int(head.shape[0]), ch_mult=tuple(mults), num_res_blocks=blocks[0],
                      attn_resolutions=tuple(image_size // 2 ** level for level in sorted(attn_levels)), num_heads=1,
                      dropout=0.0, resamp_with_conv=True, image_size=image_size, in_channels=int(head.shape[1]),
                      out_channels=int(state["tail.2.weight"].shape[0]), norm_eps=1e-5,
                      downsample_padding="symmetric", temb_freq_shift=0)


def _pytorch_ddpm_leaves(unet: UNetConfig) -> dict[str, str]:
    top = {"temb.0": "time_embedding.timembedding.1", "temb.2": "time_embedding.timembedding.3",
           "conv_in": "head", "norm_out": "tail.0", "conv_out": "tail.2"}
    res = {"norm1": "block1.0", "conv1": "block1.2", "temb_proj": "temb_proj.1", "norm2": "block2.0",
           "conv2": "block2.3", "skip": "shortcut"}
    attn = {"norm": "group_norm", "q": "proj_q", "k": "proj_k", "v": "proj_v", "proj_out": "proj"}

    def theirs(layer: Layer) -> str:  # its down and up lists are flat like ours; attention inside the block
        if layer.part == "mid":
            return f"middleblocks.{layer.index}" if layer.kind == "res" else "middleblocks.0.attn"
        block = f"{layer.part}blocks.{layer.position}"
        return {"res": block, "attn": f"{block}.attn", "resample": f"{block}.main"}[layer.kind]

    return layer_names(unet, top, theirs, res, attn)


def _interleaved_order(ch: int) -> list[int]:
    """pytorch-ddpm's embedding is sin, cos, sin, cos, …: our [sin…, cos…] column i is its column order[i]."""
    return list(range(0, ch, 2)) + list(range(1, ch, 2))


def is_pytorch_ddpm(state) -> bool:
    return isinstance(state, dict) and ("ema_model" in state or "net_model" in state)


def read_pytorch_ddpm(path: Path, state: dict, *, image_size: int | None = None) -> Source:
    """pytorch-ddpm's ``ckpt.pt`` (``state``, read from ``path``): ``ema_model`` (and ``net_model``) on its U-Net; its
    flags from ``flagfile.txt`` beside it, or its CIFAR-10 defaults."""
    flagfile = path.parent / "flagfile.txt"
    flags = {**PYTORCH_DDPM_FLAGS, **(read_flagfile(flagfile) if flagfile.is_file() else {})}
    notes = [] if flagfile.is_file() else [f"no flagfile.txt beside {path.name}: pytorch-ddpm's CIFAR-10 flags assumed"]
    size = image_size or int(flags["img_size"])
    weights = state.get("ema_model") or state["net_model"]
    unet = _pytorch_ddpm_architecture(weights, size, str(path))
    T = int(flags["T"])
    table = weights.get("time_embedding.timembedding.0.weight")
    if table is None or tuple(table.shape) != (T, unet.ch):
        raise ValueError(f"{path}: the timestep table time_embedding.timembedding.0.weight is "
                         f"{None if table is None else tuple(table.shape)}, expected ({T}, {unet.ch}) for T = {T}")
    ours = timestep_embedding(torch.arange(T), unet.ch, freq_shift=0)
    expected = torch.empty_like(ours)
    expected[:, _interleaved_order(unet.ch)] = ours
    if not torch.allclose(table.float(), expected, atol=1e-3):
        raise ValueError(f"{path}: its timestep table is not pytorch-ddpm's sinusoid (max difference "
                         f"{(table.float() - expected).abs().max():.3g}): another embedding")
    leaves = _pytorch_ddpm_leaves(unet)
    ignore = ("time_embedding.timembedding.0.weight",)
    order = _interleaved_order(unet.ch)
    convert = lambda found: translate(found, leaves, unet, where=str(path), embedding_order=order,  # noqa: E731
                                      ignore=ignore)
    ema = convert(weights)
    raw = convert(state["net_model"]) if "ema_model" in state and "net_model" in state else None
    mean_type = {"epsilon": "eps", "xstart": "xstart", "xprev": "xprev"}.get(flags["mean_type"])
    if mean_type is None or flags["var_type"] not in FIXED_VARIANCES:
        raise ValueError(f"{flagfile}: mean_type {flags['mean_type']!r} / var_type {flags['var_type']!r} unknown")
    betas = np.linspace(float(flags["beta_1"]), float(flags["beta_T"]), T, dtype=np.float64)
    files = {path.name: sha256_file(path)}
    if flagfile.is_file():
        files[flagfile.name] = sha256_file(flagfile)
    return Source("pytorch-ddpm", unet, ema, raw, T, betas, mean_type, flags["var_type"], files, notes)

