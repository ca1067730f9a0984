"""diffusers' DDPM folders (``google/ddpm-cifar10-32``, ``ddpm-church-256``, ``ddpm-bedroom-256``, ``ddpm-cat-256``,
``ddpm-celebahq-256``): a ``UNet2DModel`` folder (``config.json`` and ``diffusion_pytorch_model.safetensors`` or
``.bin``) beside a ``DDPMScheduler`` config, from a local folder or through huggingface_hub
(:func:`ddpm.pretrained.resolve_source`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..io import read_json
from ..presets import GROUPS, UNetConfig
from ..schedules import make_betas
from ..store import sha256_file
from .common import Layer, Source, layer_names, load_weights_file, relative, sin_first_order, translate

#: ``google/ddpm-cifar10-32``'s ``UNet2DModel`` config on the Hub (DDPM's CIFAR-10 network, converted).
GOOGLE_DDPM_CIFAR10_UNET = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False, "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "time_embedding_type": "positional", "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
#: Where a diffusers folder keeps its parts (a pipeline folder has them in ``unet/`` and ``scheduler/``).
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_CONFIG = "scheduler_config.json"
_DIFFUSERS_MEAN_TYPES = {"epsilon": "eps", "sample": "xstart"}
#: diffusers' ``learned`` is not ours (its network outputs σ², ours log σ²): refused, as are its other variances.
_DIFFUSERS_VAR_TYPES = {"fixed_small": "fixedsmall", "fixed_large": "fixedlarge", "learned_range": "learned_range",
                        "fixed_small_log": "fixedsmall", "fixed_large_log": "fixedlarge"}


def _diffusers_parts(path: Path) -> tuple[Path, Path | None]:
    """The model folder and the scheduler config of a diffusers model or pipeline folder."""
    model = path / "unet" if (path / "unet" / "config.json").is_file() else path
    for candidate in (path / SCHEDULER_CONFIG, path / "scheduler" / SCHEDULER_CONFIG,
                      path.parent / "scheduler" / SCHEDULER_CONFIG):
        if candidate.is_file():
            return model, candidate
    return model, None


def diffusers_unet_config(config: dict, where: str) -> tuple[UNetConfig, list[int]]:
    """Our architecture for a diffusers ``UNet2DModel`` config, and the embedding's column order; refuses what the
    DDPM U-Net cannot express, naming the key."""
    def refuse(key, why):
        raise ValueError(f"{where}: {key} = {config.get(key)!r} {why}; this importer takes DDPM's U-Net "
                         f"(UNet2DModel with DownBlock2D / AttnDownBlock2D and UpBlock2D / AttnUpBlock2D blocks)")

    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        refuse("_class_name", "is another architecture")
    expected = {"act_fn": "silu", "time_embedding_type": "positional", "center_input_sample": False,
                "mid_block_scale_factor": 1, "resnet_time_scale_shift": "default", "add_attention": True,
                "class_embed_type": None, "num_class_embeds": None, "downsample_type": "conv", "upsample_type": "conv",
                "norm_num_groups": GROUPS, "attn_norm_num_groups": None}
    for key, value in expected.items():
        if config.get(key, value) != value:
            refuse(key, f"is not supported (only {value!r})")
    downs, ups = list(config.get("down_block_types", [])), list(config.get("up_block_types", []))
    known_down, known_up = {"DownBlock2D": False, "AttnDownBlock2D": True}, {"UpBlock2D": False, "AttnUpBlock2D": True}
    unknown = [b for b in downs if b not in known_down] + [b for b in ups if b not in known_up]
    if unknown or not downs:
        refuse("down_block_types" if any(b not in known_down for b in downs) or not downs else "up_block_types",
               f"names blocks this U-Net does not have ({', '.join(unknown) or 'none given'})")
    channels = list(config.get("block_out_channels", []))
    if len(channels) != len(downs) or len(ups) != len(downs):
        refuse("block_out_channels", f"does not give one width per block ({len(downs)} down, {len(ups)} up)")
    ch = channels[0]
    if any(c % ch for c in channels):
        refuse("block_out_channels", f"are not multiples of the first width {ch}")
    size = config.get("sample_size", 32)
    size = size[0] if isinstance(size, (list, tuple)) else size
    attn_levels = [level for level, block in enumerate(downs) if known_down[block]]
    if [len(ups) - 1 - j for j, block in enumerate(ups) if known_up[block]][::-1] != attn_levels:
        refuse("up_block_types", f"do not mirror down_block_types' attention ({downs} vs {ups})")
    head_dim = config.get("attention_head_dim")
    widths = {channels[level] for level in attn_levels} | {channels[-1]}
    heads = {1 if head_dim is None else c // head_dim for c in widths}
    if len(heads) != 1 or (head_dim is not None and any(c % head_dim for c in widths)):
        refuse("attention_head_dim", "gives attention blocks different numbers of heads")
    if config.get("downsample_padding", 1) not in (0, 1):
        refuse("downsample_padding", "is neither 0 (TF's SAME) nor 1")
    unet = UNetConfig(
        ch=ch, ch_mult=tuple(c // ch for c in channels), num_res_blocks=int(config.get("layers_per_block", 2)),
        attn_resolutions=tuple(size // 2 ** level for level in attn_levels), num_heads=heads.pop(),
        dropout=float(config.get("dropout", 0.0)), resamp_with_conv=True, image_size=int(size),
        in_channels=int(config.get("in_channels", 3)), out_channels=int(config.get("out_channels", 3)),
        norm_eps=float(config.get("norm_eps", 1e-5)),
        downsample_padding="same" if config.get("downsample_padding", 1) == 0 else "symmetric",
        temb_freq_shift=int(config.get("freq_shift", 0)),
    )
    order = sin_first_order(ch) if config.get("flip_sin_to_cos", True) else list(range(ch))
    return unet, order


def _diffusers_leaves(unet: UNetConfig) -> dict[str, str]:
    """Our module names → diffusers' for every layer with weights."""
    top = {"temb.0": "time_embedding.linear_1", "temb.2": "time_embedding.linear_2", "conv_in": "conv_in",
           "norm_out": "conv_norm_out", "conv_out": "conv_out"}
    res = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
           "skip": "conv_shortcut"}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    levels = len(unet.ch_mult)

    def theirs(layer: Layer) -> str:
        if layer.part == "mid":
            return f"mid_block.resnets.{layer.index}" if layer.kind == "res" else "mid_block.attentions.0"
        block = f"{layer.part}_blocks.{layer.level if layer.part == 'down' else levels - 1 - layer.level}"
        if layer.kind == "resample":
            return f"{block}.{layer.part}samplers.0.conv"
        return f"{block}.{'resnets' if layer.kind == 'res' else 'attentions'}.{layer.index}"

    return layer_names(unet, top, theirs, res, attn)


#: diffusers before 0.14 (and the hub files saved then) named the attention layers differently.
_OLD_ATTENTION_NAMES = {"group_norm": "group_norm", "to_q": "query", "to_k": "key", "to_v": "value",
                        "to_out.0": "proj_attn"}


def _diffusers_alias(key: str) -> str | None:
    for new, old in _OLD_ATTENTION_NAMES.items():
        if f".{new}." in key and new != old:
            return key.replace(f".{new}.", f".{old}.")
    return None


def our_state_dict(found: dict, unet: UNetConfig, order: list[int], *, where: str) -> dict:
    """A ``UNet2DModel``'s state dict (``found``) as our U-Net's (``unet``, ``order``: from
    :func:`diffusers_unet_config`); refuses one that does not fit, naming ``where``."""
    return translate(found, _diffusers_leaves(unet), unet, where=where, alias=_diffusers_alias, embedding_order=order)


def diffusers_state_dict(state: dict, unet: UNetConfig, order: list[int], template: dict) -> dict:
    """The inverse of :func:`our_state_dict`: our U-Net's ``state`` under diffusers' names and shapes (those of
    ``template``, a ``UNet2DModel``'s state dict), for loading our weights into diffusers' network."""
    leaves, out = _diffusers_leaves(unet), {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if key == "temb.0.weight":  # ours = theirs[:, order]
            value = torch.empty_like(value).index_copy_(1, torch.as_tensor(order), value)
        theirs = f"{leaves[module]}.{param}"
        out[theirs] = value.reshape(template[theirs].shape).clone()
    return out


def read_diffusers(path: Path) -> Source:
    """A diffusers model (or pipeline) folder: the network from ``config.json`` and its weights file, the process from
    the scheduler config."""
    model_dir, scheduler_file = _diffusers_parts(path)
    config_file = model_dir / "config.json"
    unet, order = diffusers_unet_config(read_json(config_file), str(config_file))
    weights_file = next((model_dir / name for name in DIFFUSERS_WEIGHTS if (model_dir / name).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(f"{model_dir} has no weights: expected {' or '.join(DIFFUSERS_WEIGHTS)}")
    found = load_weights_file(weights_file)
    ema = our_state_dict(found, unet, order, where=str(weights_file))
    files = {relative(file, path): sha256_file(file) for file in (config_file, weights_file)}
    if scheduler_file is None:
        raise FileNotFoundError(f"{path} has no {SCHEDULER_CONFIG} (nor scheduler/{SCHEDULER_CONFIG}): the diffusion "
                                f"process (T, β, variance) of these weights is unknown")
    T, betas, mean_type, var_type, notes = diffusers_process(read_json(scheduler_file), str(scheduler_file))
    files[relative(scheduler_file, path)] = sha256_file(scheduler_file)
    if var_type.startswith("learned") != (unet.out_channels == 2 * unet.in_channels):
        raise ValueError(f"{scheduler_file}: variance_type {var_type} does not fit a network with "
                         f"{unet.out_channels} output channels for {unet.in_channels} input channels")
    return Source("diffusers", unet, ema, None, T, betas, mean_type, var_type, files,
                  notes=["diffusers holds one set of weights (DDPM's releases: the EMA weights)", *notes])


#: The schedulers whose ``scheduler_config.json`` fields this importer knows (their fields in diffusers 0.42).
DIFFUSERS_SCHEDULERS = ("DDPMScheduler", "DDIMScheduler")
#: The fields that give the process, each read by :func:`diffusers_process`.
SCHEDULER_FIELDS_READ = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                         "prediction_type", "predict_epsilon", "variance_type", "clip_sample", "clip_sample_range")
#: The fields that change the process only away from one value, the one this project implements: any other is
#: refused (value accepted, what another value would do).
SCHEDULER_FIELDS_FIXED = {
    "thresholding": (False, "dynamic thresholding of x̂_0 at each step (Saharia et al. 2022) is not implemented"),
    "rescale_betas_zero_snr": (False, "β rescaled to a zero terminal SNR (Lin et al. 2023) is not implemented"),
    "set_alpha_to_one": (True, "DDIM's last step to ᾱ_0 instead of ᾱ = 1 is not implemented (this project's DDIM "
                               "ends at ᾱ = 1, as Song et al. 2020)"),
}
#: The fields that do not change the process the weights were trained for, and why.
SCHEDULER_FIELDS_HARMLESS = {
    "_class_name": "which scheduler: checked to be one of DIFFUSERS_SCHEDULERS",
    "_diffusers_version": "the diffusers version that wrote the file",
    "_use_default_values": "diffusers' list of the fields it filled with their defaults when it loaded a config",
    "tensor_format": "diffusers ≤ 0.2: whether the scheduler returned numpy arrays or torch tensors",
    "timestep_spacing": "which steps diffusers visits with fewer inference steps: a sampler point here chooses its "
                        "own (sample.skip)",
    "steps_offset": "a shift of diffusers' inference steps: as timestep_spacing",
    "dynamic_thresholding_ratio": "used only with thresholding, which is refused",
    "sample_max_value": "used only with thresholding, which is refused",
}


def _check_scheduler_fields(scheduler: dict, where: str) -> None:
    """Refuse, by name, a scheduler config field that this importer neither reads nor knows harmless (a field of
    another scheduler, or of a diffusers version after 0.42), and a field at a value that changes the process in a
    way this project does not implement."""
    kind = scheduler.get("_class_name", "DDPMScheduler")
    if kind not in DIFFUSERS_SCHEDULERS:
        raise ValueError(f"{where}: _class_name {kind!r} is a scheduler whose fields this importer does not know "
                         f"(it knows {', '.join(DIFFUSERS_SCHEDULERS)})")
    known = {*SCHEDULER_FIELDS_READ, *SCHEDULER_FIELDS_FIXED, *SCHEDULER_FIELDS_HARMLESS}
    unknown = sorted(key for key in scheduler if key not in known)
    if unknown:
        raise ValueError(f"{where}: unknown scheduler field {unknown[0]} = {scheduler[unknown[0]]!r}"
                         + (f" (and {', '.join(unknown[1:])})" if unknown[1:] else "")
                         + ": this importer reads or knows harmless only " + ", ".join(sorted(known))
                         + "; a field it does not know may change the process")
    for key, (implemented, other) in SCHEDULER_FIELDS_FIXED.items():
        if key in scheduler and scheduler[key] != implemented:
            raise ValueError(f"{where}: {key} = {json.dumps(scheduler[key])} is not supported (only "
                             f"{json.dumps(implemented)}): {other}")


def diffusers_process(scheduler: dict, where: str) -> tuple[int, np.ndarray, str, str, list[str]]:
    """T, β, mean type and variance type of a ``DDPMScheduler`` (or ``DDIMScheduler``) config, and notes on what
    the source does otherwise at sampling; every field is read or known harmless (:func:`_check_scheduler_fields`)."""
    _check_scheduler_fields(scheduler, where)
    T = int(scheduler.get("num_train_timesteps", 1000))
    kind = scheduler.get("beta_schedule", "linear")
    if scheduler.get("trained_betas") is not None:
        betas = np.asarray(scheduler["trained_betas"], dtype=np.float64)
        if betas.shape != (T,):
            raise ValueError(f"{where}: trained_betas holds {betas.size} values, but num_train_timesteps is {T}")
    elif kind == "linear":
        betas = np.linspace(scheduler.get("beta_start", 1e-4), scheduler.get("beta_end", 0.02), T, dtype=np.float64)
    elif kind == "squaredcos_cap_v2":  # diffusers' betas_for_alpha_bar: Improved DDPM's cosine, β capped at 0.999
        betas = make_betas("cosine", T)
    else:
        raise ValueError(f"{where}: beta_schedule {kind!r} is not a schedule of DDPM or Improved DDPM")
    prediction = scheduler.get("prediction_type", "epsilon")
    if "predict_epsilon" in scheduler:  # diffusers 0.7–0.10's field, which prediction_type replaced
        legacy = "epsilon" if scheduler["predict_epsilon"] else "sample"
        if scheduler.get("prediction_type", legacy) != legacy:
            raise ValueError(f"{where}: predict_epsilon {json.dumps(scheduler['predict_epsilon'])} and prediction_type "
                             f"{scheduler['prediction_type']!r} disagree")
        prediction = legacy
    if prediction not in _DIFFUSERS_MEAN_TYPES:
        raise ValueError(f"{where}: prediction_type {prediction!r} is not supported "
                         f"(only {', '.join(_DIFFUSERS_MEAN_TYPES)})")
    variance = scheduler.get("variance_type", "fixed_small")
    if variance not in _DIFFUSERS_VAR_TYPES:
        raise ValueError(f"{where}: variance_type {variance!r} is not supported "
                         f"(only {', '.join(_DIFFUSERS_VAR_TYPES)})")
    clip = scheduler.get("clip_sample", True)
    if clip and scheduler.get("clip_sample_range", 1.0) != 1.0:
        raise ValueError(f"{where}: clip_sample_range = {scheduler['clip_sample_range']!r} is not supported (only "
                         f"1.0): this project clips x̂_0 to [-1, 1]")
    notes = [] if clip else ["the source samples without clipping x̂_0 (clip_sample: false); here each sampler point "
                             "chooses (sample.clip)"]
    return T, betas, _DIFFUSERS_MEAN_TYPES[prediction], _DIFFUSERS_VAR_TYPES[variance], notes

