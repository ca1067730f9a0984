"""openai/improved-diffusion's released checkpoints (Improved DDPM, Nichol & Dhariwal 2021): bare state dicts of its
``UNetModel`` (``time_embed``, ``input_blocks``, ``middle_block``, ``output_blocks``, ``out``).

What the shapes do not say comes from the flags its README gives each released file (:data:`RELEASED`), or from
``--flags`` in the same syntax for any other file (its ``MODEL_FLAGS`` and ``DIFFUSION_FLAGS``), over its
``model_and_diffusion_defaults``: the image size, the number of attention heads, whether the network sees t·1000/T
(``rescale_timesteps``), T and the noise schedule. The rest is read off the shapes and checked against the flags:
the widths, residual blocks per level, attention levels, the learned Σ (6 output channels) and the time conditioning
by scale and shift of the group norm (``use_scale_shift_norm``).

Their network is :class:`ddpm.unet.UNet` with ``scale_shift_norm`` and ``timestep_scale``: the embedding's cosines
come before its sines (a permutation of the first embedding layer's columns), and an attention block's ``qkv``
(a 1-D convolution to 3C channels) is, head after head, [q | k | v] of C/heads channels each: split here into our
q, k and v.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np

from ..presets import UNetConfig
from ..schedules import make_betas
from ..store import sha256_file
from .common import Layer, Source, layer_names, sin_first_order, translate

#: improved-diffusion's ``model_and_diffusion_defaults()`` (script_util.py) for the flags that matter here.
DEFAULT_FLAGS = {"image_size": "64", "num_channels": "128", "num_res_blocks": "2", "num_heads": "4",
                 "num_heads_upsample": "-1", "attention_resolutions": "16,8", "dropout": "0.0", "learn_sigma": "False",
                 "sigma_small": "False", "class_cond": "False", "diffusion_steps": "1000", "noise_schedule": "linear",
                 "use_kl": "False", "predict_xstart": "False", "rescale_timesteps": "True",
                 "rescale_learned_sigmas": "True", "use_checkpoint": "False", "use_scale_shift_norm": "True",
                 "timestep_respacing": ""}
#: Flags that choose only how it trains or samples, not the network or the process.
HARMLESS_FLAGS = ("rescale_learned_sigmas", "use_kl", "use_checkpoint", "timestep_respacing", "lr", "batch_size",
                  "schedule_sampler", "microbatch", "ema_rate", "log_interval", "save_interval", "weight_decay",
                  "lr_anneal_steps", "use_fp16", "fp16_scale_growth", "num_samples", "clip_denoised", "data_dir",
                  "resume_checkpoint", "model_path", "use_ddim")
#: The released files (README "Models and hyperparameters") with their MODEL_FLAGS and DIFFUSION_FLAGS. The
#: class-conditional ImageNet and the upsampling model are another network (class embedding, 6 input channels).
RELEASED = {
    "cifar10_uncond_50M_500K.pt": "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
                                  "--dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine",
    "cifar10_uncond_vlb_50M_500K.pt": "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
                                      "--dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine --use_kl True",
    "imagenet64_uncond_100M_1500K.pt": "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True "
                                       "--diffusion_steps 4000 --noise_schedule cosine",
    "imagenet64_uncond_vlb_100M_1500K.pt": "--image_size 64 --num_channels 128 --num_res_blocks 3 "
                                           "--learn_sigma True --diffusion_steps 4000 --noise_schedule cosine "
                                           "--use_kl True",
    "lsun_uncond_100M_1200K_bs128.pt": "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 "
                                       "--learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 "
                                       "--diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False "
                                       "--rescale_timesteps False",
    "lsun_uncond_100M_2400K_bs64.pt": "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 "
                                      "--learn_sigma True --use_scale_shift_norm False --attention_resolutions 16 "
                                      "--diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False "
                                      "--rescale_timesteps False",
}
#: Their channel multipliers by image size (script_util.create_model).
CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


def is_improved_diffusion(contents) -> bool:
    return isinstance(contents, dict) and "input_blocks.0.0.weight" in contents and "time_embed.0.weight" in contents


def parse_flags(text: str, where: str) -> dict[str, str]:
    """improved-diffusion's ``--key value`` flags over its defaults; an unknown flag, or one that makes another
    network (class_cond), is refused by name."""
    words = shlex.split(text)
    if len(words) % 2 or any(not re.fullmatch(r"--\w+", key) for key in words[::2]):
        raise ValueError(f"{where}: flags {text!r} are not improved-diffusion's '--key value' pairs")
    flags = dict(DEFAULT_FLAGS)
    for key, value in zip(words[::2], words[1::2]):
        key = key[2:]
        if key not in DEFAULT_FLAGS and key not in HARMLESS_FLAGS:
            raise ValueError(f"{where}: unknown improved-diffusion flag --{key}; known: "
                             f"{', '.join(sorted([*DEFAULT_FLAGS, *HARMLESS_FLAGS]))}")
        flags[key] = value
    for key in ("class_cond", "predict_xstart"):
        if _true(flags[key], key, where):
            raise ValueError(f"{where}: --{key} True is not supported (the unconditional ε-predicting networks only)")
    return flags


def _true(value: str, key: str, where: str) -> bool:
    if value not in ("True", "False", "true", "false", "1", "0"):
        raise ValueError(f"{where}: --{key} {value!r} is neither True nor False")
    return value in ("True", "true", "1")


def _architecture(state: dict, flags: dict[str, str], where: str) -> UNetConfig:
    """The U-Net the state dict's shapes describe; refused where the flags say otherwise."""
    try:
        ch = int(state["input_blocks.0.0.weight"].shape[0])
        mults, blocks, attn_levels, n, level_blocks = [], [], set(), 1, 0
        while f"input_blocks.{n}.0.op.weight" in state or f"input_blocks.{n}.0.in_layers.0.weight" in state:
            if f"input_blocks.{n}.0.op.weight" in state:
                blocks.append(level_blocks)
                level_blocks = 0
            else:
                if level_blocks == 0:
                    mults.append(int(state[f"input_blocks.{n}.0.out_layers.3.weight"].shape[0]) // ch)
                if f"input_blocks.{n}.1.qkv.weight" in state:
                    attn_levels.add(len(mults) - 1)
                level_blocks += 1
            n += 1
        blocks.append(level_blocks)
        first = state["input_blocks.1.0.emb_layers.1.weight"].shape[0]
        scale_shift = int(first) == 2 * int(state["input_blocks.1.0.out_layers.3.weight"].shape[0])
        in_channels, out_channels = int(state["input_blocks.0.0.weight"].shape[1]), int(state["out.2.weight"].shape[0])
    except (KeyError, AttributeError, IndexError) as err:
        raise ValueError(f"{where}: not improved-diffusion's UNetModel ({err} missing)") from err
    if len(set(blocks)) != 1 or not blocks[0] or len(mults) != len(blocks):
        raise ValueError(f"{where}: not improved-diffusion's UNetModel (residual blocks per level: {blocks})")
    size = int(flags["image_size"])
    said = {"num_channels": (int(flags["num_channels"]), ch), "num_res_blocks": (int(flags["num_res_blocks"]), blocks[0]),
            "learn_sigma": (_true(flags["learn_sigma"], "learn_sigma", where), out_channels == 2 * in_channels),
            "use_scale_shift_norm": (_true(flags["use_scale_shift_norm"], "use_scale_shift_norm", where), scale_shift),
            "attention_resolutions": (sorted(int(r) for r in flags["attention_resolutions"].split(",")),
                                      sorted(size // 2 ** level for level in attn_levels)),
            "channel_mult (from image_size)": (CHANNEL_MULT.get(size, tuple(mults)), tuple(mults))}
    differ = [f"--{key} is {flags_value} but the weights have {found}" for key, (flags_value, found) in said.items()
              if flags_value != found]
    if differ:
        raise ValueError(f"{where}: the flags do not describe these weights: {'; '.join(differ)}")
    heads = int(flags["num_heads"])
    if flags["num_heads_upsample"] not in ("-1", flags["num_heads"]):
        raise ValueError(f"{where}: --num_heads_upsample {flags['num_heads_upsample']} differs from --num_heads "
                         f"{heads}: not supported (one head count for every attention block)")
    T = int(flags["diffusion_steps"])
    return UNetConfig(ch=ch, ch_mult=tuple(mults), num_res_blocks=blocks[0],
                      attn_resolutions=tuple(size // 2 ** level for level in sorted(attn_levels)), num_heads=heads,
                      dropout=float(flags["dropout"]), resamp_with_conv=True, image_size=size, in_channels=in_channels,
                      out_channels=out_channels, norm_eps=1e-5, downsample_padding="symmetric", temb_freq_shift=0,
                      scale_shift_norm=scale_shift,
                      timestep_scale=1000 / T if _true(flags["rescale_timesteps"], "rescale_timesteps", where) else 1.0)


def _leaves(unet: UNetConfig) -> dict[str, str]:
    top = {"temb.0": "time_embed.0", "temb.2": "time_embed.2", "conv_in": "input_blocks.0.0", "norm_out": "out.0",
           "conv_out": "out.2"}
    res = {"norm1": "in_layers.0", "conv1": "in_layers.2", "temb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "skip": "skip_connection"}
    attn = {"norm": "norm", "q": "q", "k": "k", "v": "v", "proj_out": "proj_out"}  # q, k, v: split from qkv
    blocks = unet.num_res_blocks
    levels = len(unet.ch_mult)

    def theirs(layer: Layer) -> str:
        inner = 0 if layer.kind == "res" else 1
        if layer.part == "mid":
            return f"middle_block.{layer.position}"
        if layer.part == "down":  # input block 0 is conv_in; a downsampler is a block of its own
            return f"input_blocks.{layer.position + 1}.0.op" if layer.kind == "resample" else \
                f"input_blocks.{layer.position + 1}.{inner}"
        first = (levels - 1 - layer.level) * (blocks + 1)  # an upsampler is inside the level's last output block
        if layer.kind == "resample":
            with_attn = unet.image_size // 2 ** layer.level in unet.attn_resolutions
            return f"output_blocks.{first + blocks}.{2 if with_attn else 1}.conv"
        return f"output_blocks.{first + layer.index}.{inner}"

    return layer_names(unet, top, theirs, res, attn)


def split_qkv(state: dict, heads: int) -> dict:
    """Each attention block's ``qkv`` as the q, k and v it holds: channels head after head, [q | k | v] per head
    (QKVAttention's reshape to (batch·heads, 3·C/heads, positions) and split in three)."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"(.*)\.qkv\.(weight|bias)", key)
        if match is None:
            out[key] = value
            continue
        per_head = value.reshape(heads, 3, value.shape[0] // (3 * heads), *value.shape[1:])
        for i, name in enumerate("qkv"):
            out[f"{match[1]}.{name}.{match[2]}"] = per_head[:, i].reshape(-1, *value.shape[1:])
    return out


def read_improved_diffusion(path: Path, state: dict, *, image_size: int | None = None,
                            flags: str | None = None) -> Source:
    """improved-diffusion's ``.pt`` (``state``, read from ``path``), described by its released flags or ``flags``."""
    if flags is None and path.name not in RELEASED:
        raise ValueError(f"{path.name} is none of improved-diffusion's released files ({', '.join(RELEASED)}): give "
                         f"the flags it was trained with (--flags '--image_size 32 --num_channels 128 …', its "
                         f"MODEL_FLAGS and DIFFUSION_FLAGS)")
    text = flags if flags is not None else RELEASED[path.name]
    if image_size is not None and "--image_size" not in text:
        text = f"--image_size {image_size} {text}"
    parsed = parse_flags(text, str(path))
    if image_size is not None and int(parsed["image_size"]) != image_size:
        raise ValueError(f"{path}: --image_size {parsed['image_size']} (its flags), but the data are {image_size}²")
    unet = _architecture(state, parsed, str(path))
    channels = [v.shape[0] // 3 for k, v in state.items() if k.endswith(".qkv.weight")]
    if any(c % unet.num_heads for c in channels):
        raise ValueError(f"{path}: --num_heads {unet.num_heads} does not divide an attention block's {channels[0]} "
                         f"channels")
    weights = translate(split_qkv(state, unet.num_heads), _leaves(unet), unet, where=str(path),
                        embedding_order=sin_first_order(unet.ch))
    T = int(parsed["diffusion_steps"])
    schedule = parsed["noise_schedule"]
    if schedule not in ("linear", "cosine"):
        raise ValueError(f"{path}: --noise_schedule {schedule!r} is neither linear nor cosine")
    betas = make_betas(schedule, T, rescale=schedule == "linear")  # their linear: 1e-4 → 0.02 scaled by 1000/T
    learned = unet.out_channels == 2 * unet.in_channels
    var_type = "learned_range" if learned else ("fixedsmall" if _true(parsed["sigma_small"], "sigma_small",
                                                                      str(path)) else "fixedlarge")
    notes = [f"improved-diffusion's flags ({'README, ' + path.name if flags is None else '--flags'}): {text}",
             f"the network sees t·{unet.timestep_scale:g}" if unet.timestep_scale != 1.0 else "the network sees t"]
    return Source("improved-diffusion", unet, weights, None, T, np.asarray(betas, dtype=np.float64), "eps", var_type,
                  {path.name: sha256_file(path)}, notes)


