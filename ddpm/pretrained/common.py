"""What every importer shares: a source read into this project's terms (:class:`Source`), a weights file read safely,
the translation of the source's layer names onto :class:`ddpm.unet.UNet`'s with every layer accounted for
(:func:`translate`), and the diffusion process a source describes as a checkpoint's config (:func:`diffusion_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import check_finite_weights
from ..presets import UNetConfig
from ..schedules import make_betas
from ..settings import Setting, TrainConfig
from ..unet import UNet

_SCHEDULE_CANDIDATES = (("linear", False), ("cosine", False), ("linear", True))
#: The fixed variances: a sampling choice (the setting's is kept), unlike a learned one.
FIXED_VARIANCES = ("fixedlarge", "fixedsmall")


@dataclass
class Source:
    """Published weights read into this project's terms."""

    format: str
    unet: UNetConfig
    ema: dict  # our parameter names → tensors
    raw: dict | None  # the non-EMA weights, where the source has them
    T: int
    betas: np.ndarray
    mean_type: str
    var_type: str
    files: dict[str, str] = field(default_factory=dict)  # file name → sha256
    notes: list[str] = field(default_factory=list)


def load_weights_file(path: Path):
    """A safetensors file or a torch pickle read with ``weights_only=True`` (tensors, dicts, lists and numbers only:
    a crafted pickle cannot run code); a damaged file is refused."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read the weights in {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}): the file is truncated or damaged") from err


def sin_first_order(ch: int) -> list[int]:
    """Where a code embeds t as [cos…, sin…] (diffusers' ``flip_sin_to_cos``, improved-diffusion): our [sin…, cos…]
    column i is its column order[i] (:func:`translate`'s ``embedding_order``)."""
    half = ch // 2
    return list(range(half, ch)) + list(range(half))


def relative(file: Path, folder: Path) -> str:
    return str(file.relative_to(folder)) if file.is_relative_to(folder) else file.name


@dataclass(frozen=True)
class Layer:
    """One of :class:`ddpm.unet.UNet`'s layers with weights, where each code's names can be derived from."""

    name: str  # our module: "down.3.block", "down.3.attn", "down.2.conv", "mid.1", "up.4.conv", …
    part: str  # "down", "mid" or "up"
    kind: str  # "res", "attn" or "resample"
    level: int  # the resolution level: 0 at full size, len(ch_mult) − 1 at the bottom (and in the middle)
    index: int  # its place among the level's residual blocks; a resampler comes after them (num_res_blocks, + 1 up)
    position: int  # its entry in our flat down, mid or up list


def unet_layers(unet: UNetConfig) -> list[Layer]:
    """:class:`ddpm.unet.UNet`'s layers in the order it builds them (down, mid, up; each level's residual blocks,
    each followed by its attention at the attention resolutions, then the level's resampler)."""
    levels, blocks, layers = len(unet.ch_mult), unet.num_res_blocks, []

    def level_layers(part: str, level: int, count: int, position: int, resampler: bool) -> int:
        with_attn = unet.image_size // 2 ** level in unet.attn_resolutions
        for index in range(count):
            layers.append(Layer(f"{part}.{position}" + (".block" if with_attn else ""), part, "res", level, index,
                                position))
            if with_attn:
                layers.append(Layer(f"{part}.{position}.attn", part, "attn", level, index, position))
            position += 1
        if resampler:
            layers.append(Layer(f"{part}.{position}.conv", part, "resample", level, count, position))
            position += 1
        return position

    position = 0
    for level in range(levels):
        position = level_layers("down", level, blocks, position, level != levels - 1)
    layers += [Layer("mid.0", "mid", "res", levels - 1, 0, 0), Layer("mid.1", "mid", "attn", levels - 1, 0, 1),
               Layer("mid.2", "mid", "res", levels - 1, 1, 2)]
    position = 0
    for level in reversed(range(levels)):
        position = level_layers("up", level, blocks + 1, position, level != 0)
    return layers


def layer_names(unet: UNetConfig, top: dict[str, str], theirs, res: dict[str, str], attn: dict[str, str]) -> dict:
    """Our module names → the source's, for every layer with weights: ``top`` for the layers outside the blocks,
    ``theirs(layer)`` the source's module of each :class:`Layer` (of a resampler: its convolution), and ``res``,
    ``attn`` the names inside a residual and an attention block (ours → the source's)."""
    pairs = dict(top)
    for layer in unet_layers(unet):
        if layer.kind == "resample":
            pairs[layer.name] = theirs(layer)
            continue
        inside = res if layer.kind == "res" else attn
        pairs.update({f"{layer.name}.{a}": f"{theirs(layer)}.{b}" for a, b in inside.items()})
    return pairs


def translate(found: dict, leaves: dict[str, str], unet: UNetConfig, *, where: str, alias=None,
              embedding_order: list[int] | None = None, ignore: tuple[str, ...] = ()) -> dict:
    """``found`` (the source's names) as our model's state dict; refuses a source whose layers are missing, extra
    or of another shape, with a summary (how many of each, the first of them)."""
    expected = UNet(unet).state_dict()
    out, used, missing, reshaped = {}, set(ignore), [], []
    for key, mine in expected.items():
        module, param = key.rsplit(".", 1)
        theirs = f"{leaves[module]}.{param}" if module in leaves else None
        if theirs is not None and theirs not in found and alias is not None and alias(theirs) in found:
            theirs = alias(theirs)
        if theirs is None or theirs not in found:
            missing.append(theirs or key)
            continue
        used.add(theirs)
        value = found[theirs].float()
        if value.ndim in (2, 3) and mine.ndim == 4 and mine.shape[2:] == (1, 1) and value.shape[2:] in ((), (1,)):
            value = value.reshape(*value.shape[:2], 1, 1)  # a Linear or a 1-D conv of width 1 where we have a 1×1 conv
        if tuple(value.shape) != tuple(mine.shape):
            reshaped.append(f"{theirs} is {tuple(found[theirs].shape)}, this U-Net has {tuple(mine.shape)}")
            continue
        out[key] = value.clone()
    unexpected = sorted(k for k in found if k not in used)
    if missing or unexpected or reshaped:
        summary = f"{len(missing)} layers missing, {len(unexpected)} unexpected, {len(reshaped)} of another shape"
        examples = ([f"missing e.g. {missing[0]}"] if missing else []) + (
            [f"unexpected e.g. {unexpected[0]}"] if unexpected else []) + reshaped[:1]
        raise ValueError(f"{where} does not fit the U-Net its config describes ({summary}; {'; '.join(examples)})")
    check_finite_weights({theirs: found[theirs] for theirs in used if theirs in found}, where)
    if embedding_order is not None:
        out["temb.0.weight"] = out["temb.0.weight"][:, embedding_order]
    return out


def identify_schedule(betas: np.ndarray, T: int) -> tuple[str, bool]:
    """The schedule of this project that gives ``betas`` (name, linear endpoints rescaled by 1000/T)."""
    for name, rescale in _SCHEDULE_CANDIDATES:
        try:
            ours = make_betas(name, T, rescale=rescale)
        except ValueError:
            continue
        if np.allclose(ours, betas, rtol=1e-5, atol=1e-9):
            return name, rescale
    raise ValueError(f"the source's β (β_1 = {betas[0]:.6g} … β_T = {betas[-1]:.6g} over T = {T}) are none of "
                     f"this project's schedules (linear 1e-4 → 0.02, its 1000/T rescaling, cosine)")


def diffusion_config(source: Source, setting: Setting | None, *, dataset: str) -> tuple[TrainConfig, list[str]]:
    """The process the source describes, as a checkpoint's config; with ``setting`` (a sweep's), the two must agree
    on T, β and the mean type. A fixed variance is a sampling choice: the setting's is kept (noted if the source
    says otherwise)."""
    schedule, rescale = identify_schedule(source.betas, source.T)
    notes = []
    var_type = source.var_type
    if setting is not None:
        differ = [f"{key} {theirs} (the setting has {mine})"
                  for key, theirs, mine in (("schedule", schedule, setting.schedule), ("T", source.T, setting.T),
                                            ("mean_type", source.mean_type, setting.mean_type))
                  if theirs != mine]
        if source.var_type in FIXED_VARIANCES and setting.var_type in FIXED_VARIANCES:
            if setting.var_type != source.var_type:
                notes.append(f"the source samples with {source.var_type}; the setting's {setting.var_type} is kept")
            var_type = setting.var_type
        elif source.var_type != setting.var_type:
            differ.append(f"var_type {source.var_type} (the setting has {setting.var_type})")
        if differ:
            raise ValueError(f"the source is not the setting {setting.name}: it has {', '.join(differ)}")
    config = TrainConfig(dataset=dataset, schedule=schedule, T=source.T, schedule_rescale=rescale,
                         mean_type=source.mean_type, var_type=var_type,
                         loss_type=setting.loss_type if setting else "mse", preset="imported", steps=0,
                         seed=setting.seed if setting else 0)
    return config, notes

