"""Published weights as this project's checkpoints (``ddpm import``).

DDPM's released models (Ho et al. 2020) reach users in two layouts, both read here without running their code:

- **diffusers** (``google/ddpm-cifar10-32``, ``ddpm-church-256``, ``ddpm-bedroom-256``, ``ddpm-cat-256``,
  ``ddpm-celebahq-256``): a ``UNet2DModel`` folder (``config.json`` and ``diffusion_pytorch_model.safetensors`` or
  ``.bin``) beside a ``DDPMScheduler`` config, from a local folder or through huggingface_hub;
- **pytorch-ddpm** (w86763777/pytorch-ddpm): ``ckpt.pt`` with ``net_model`` and ``ema_model`` state dicts, and the
  run's ``flagfile.txt`` beside it when there is one.

Both are the architecture of the official ``diffusion_tf`` U-Net, which :class:`ddpm.unet.UNet` builds; what differs
between the three codes (GroupNorm ε, the stride-2 convolution's padding, the timestep embedding's frequencies and
the order of its sines and cosines) is a field of :class:`ddpm.presets.UNetConfig` or a permutation of the first
embedding layer's columns. The checkpoint written holds the weights, the architecture (``unet``), the diffusion
process the source describes (its ``config``, as a trained checkpoint's) and where it came from (``source``: format,
files with their sha256). Anything that does not fit is refused before anything is written, with a summary of what
differs.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import UNET_KEY, check_finite_weights, save_checkpoint
from .datasets import read_manifest
from .io import read_json
from .presets import GROUPS, UNetConfig, check_config
from .schedules import make_betas
from .settings import Setting, TrainConfig
from .store import sha256_file
from .unet import UNet, timestep_embedding
from .vocabulary import IMPORT_FORMATS

#: Where a diffusers folder keeps its parts (a pipeline folder has them in ``unet/`` and ``scheduler/``).
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
SCHEDULER_CONFIG = "scheduler_config.json"
#: pytorch-ddpm's defaults (its ``main.py`` flags for CIFAR-10), used where a ckpt.pt has no flagfile.txt beside it.
PYTORCH_DDPM_FLAGS = {"img_size": "32", "T": "1000", "beta_1": "0.0001", "beta_T": "0.02", "mean_type": "epsilon",
                      "var_type": "fixedlarge"}
_SCHEDULE_CANDIDATES = (("linear", False), ("cosine", False), ("linear", True))
_DIFFUSERS_MEAN_TYPES = {"epsilon": "eps", "sample": "xstart"}
#: diffusers' ``learned`` is not ours (its network outputs σ², ours log σ²): refused, as are its other variances.
_DIFFUSERS_VAR_TYPES = {"fixed_small": "fixedsmall", "fixed_large": "fixedlarge", "learned_range": "learned_range",
                        "fixed_small_log": "fixedsmall", "fixed_large_log": "fixedlarge"}
_FIXED = ("fixedlarge", "fixedsmall")


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


# ----------------------------------------------------------------------------------------------------------------
# Finding and reading a source


def resolve_source(source: str | Path, *, revision: str | None = None) -> Path:
    """A local file or folder as it is; otherwise a Hugging Face model id (``owner/name``), fetched with
    huggingface_hub into its cache: the configs and the safetensors weights, or the ``.bin`` ones where the model has
    no safetensors."""
    path = Path(source)
    if path.exists():
        return path
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)):
        raise FileNotFoundError(f"{source} is neither a file, a folder nor a Hugging Face model id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        for weights in DIFFUSERS_WEIGHTS:
            folder = Path(snapshot_download(str(source), revision=revision,
                                            allow_patterns=["*.json", weights, f"unet/{weights}"]))
            if (folder / weights).is_file() or (folder / "unet" / weights).is_file():
                break
        return folder
    except Exception as err:  # no network, an unknown id, a private model
        raise FileNotFoundError(
            f"cannot fetch {source} from the Hugging Face Hub ({type(err).__name__}: {str(err).splitlines()[0]}). "
            f"Without a network: download the folder elsewhere (huggingface-cli download {source}) and give its "
            f"path") from err


def detect_format(path: Path) -> str:
    """``diffusers`` for a folder with a ``config.json`` (or a ``unet/`` one), ``pytorch-ddpm`` for a file."""
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "unet" / "config.json").is_file():
            return "diffusers"
        raise ValueError(f"{path} is a folder without config.json (nor unet/config.json): not a diffusers model "
                         f"folder; give --format or the checkpoint file itself")
    return "pytorch-ddpm"


def read_source(path: Path, fmt: str, *, image_size: int | None = None) -> Source:
    if fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown import format {fmt!r}; valid formats: {', '.join(IMPORT_FORMATS)}")
    return read_diffusers(path) if fmt == "diffusers" else read_pytorch_ddpm(path, image_size=image_size)


def _load_weights_file(path: Path) -> dict:
    """A safetensors file or a torch pickle read with ``weights_only=True``; a damaged file is refused."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"cannot read the weights in {path} ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}): the file is truncated or damaged") from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a dict of weights")
    return state


# ----------------------------------------------------------------------------------------------------------------
# diffusers


def _diffusers_parts(path: Path) -> tuple[Path, Path | None]:
    """The model folder and the scheduler config of a diffusers model or pipeline folder."""
    model = path / "unet" if (path / "unet" / "config.json").is_file() else path
    for candidate in (path / SCHEDULER_CONFIG, path / "scheduler" / SCHEDULER_CONFIG,
                      path.parent / "scheduler" / SCHEDULER_CONFIG):
        if candidate.is_file():
            return model, candidate
    return model, None


def _relative(file: Path, folder: Path) -> str:
    return str(file.relative_to(folder)) if file.is_relative_to(folder) else file.name


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
    half = ch // 2
    order = list(range(half, ch)) + list(range(half)) if config.get("flip_sin_to_cos", True) else list(range(ch))
    return unet, order


def _diffusers_leaves(unet: UNetConfig) -> dict[str, str]:
    """Our module names → diffusers' for every layer with weights."""
    pairs = {"temb.0": "time_embedding.linear_1", "temb.2": "time_embedding.linear_2", "conv_in": "conv_in",
             "norm_out": "conv_norm_out", "conv_out": "conv_out"}
    res = {"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2", "conv2": "conv2",
           "skip": "conv_shortcut"}
    attn = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

    def add(ours: str, theirs: str, names: dict) -> None:
        pairs.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in names.items()})

    levels, k = len(unet.ch_mult), 0
    for level in range(levels):
        with_attn = unet.image_size // 2 ** level in unet.attn_resolutions
        for j in range(unet.num_res_blocks):
            add(f"down.{k}" + (".block" if with_attn else ""), f"down_blocks.{level}.resnets.{j}", res)
            if with_attn:
                add(f"down.{k}.attn", f"down_blocks.{level}.attentions.{j}", attn)
            k += 1
        if level != levels - 1:
            pairs[f"down.{k}.conv"] = f"down_blocks.{level}.downsamplers.0.conv"
            k += 1
    add("mid.0", "mid_block.resnets.0", res)
    add("mid.1", "mid_block.attentions.0", attn)
    add("mid.2", "mid_block.resnets.1", res)
    k = 0
    for j, level in enumerate(reversed(range(levels))):
        with_attn = unet.image_size // 2 ** level in unet.attn_resolutions
        for r in range(unet.num_res_blocks + 1):
            add(f"up.{k}" + (".block" if with_attn else ""), f"up_blocks.{j}.resnets.{r}", res)
            if with_attn:
                add(f"up.{k}.attn", f"up_blocks.{j}.attentions.{r}", attn)
            k += 1
        if level != 0:
            pairs[f"up.{k}.conv"] = f"up_blocks.{j}.upsamplers.0.conv"
            k += 1
    return pairs


#: diffusers before 0.14 (and the hub files saved then) named the attention layers differently.
_OLD_ATTENTION_NAMES = {"group_norm": "group_norm", "to_q": "query", "to_k": "key", "to_v": "value",
                        "to_out.0": "proj_attn"}


def _diffusers_alias(key: str) -> str | None:
    for new, old in _OLD_ATTENTION_NAMES.items():
        if f".{new}." in key and new != old:
            return key.replace(f".{new}.", f".{old}.")
    return None


def read_diffusers(path: Path) -> Source:
    """A diffusers model (or pipeline) folder: the network from ``config.json`` and its weights file, the process from
    the scheduler config."""
    model_dir, scheduler_file = _diffusers_parts(path)
    config_file = model_dir / "config.json"
    unet, order = diffusers_unet_config(read_json(config_file), str(config_file))
    weights_file = next((model_dir / name for name in DIFFUSERS_WEIGHTS if (model_dir / name).is_file()), None)
    if weights_file is None:
        raise FileNotFoundError(f"{model_dir} has no weights: expected {' or '.join(DIFFUSERS_WEIGHTS)}")
    found = _load_weights_file(weights_file)
    ema = translate(found, _diffusers_leaves(unet), unet, where=str(weights_file), alias=_diffusers_alias,
                    embedding_order=order)
    files = {_relative(file, path): sha256_file(file) for file in (config_file, weights_file)}
    if scheduler_file is None:
        raise FileNotFoundError(f"{path} has no {SCHEDULER_CONFIG} (nor scheduler/{SCHEDULER_CONFIG}): the diffusion "
                                f"process (T, β, variance) of these weights is unknown")
    T, betas, mean_type, var_type, notes = diffusers_process(read_json(scheduler_file), str(scheduler_file))
    files[_relative(scheduler_file, path)] = sha256_file(scheduler_file)
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


# ----------------------------------------------------------------------------------------------------------------
# pytorch-ddpm


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
    pairs = {"temb.0": "time_embedding.timembedding.1", "temb.2": "time_embedding.timembedding.3",
             "conv_in": "head", "norm_out": "tail.0", "conv_out": "tail.2"}
    res = {"norm1": "block1.0", "conv1": "block1.2", "temb_proj": "temb_proj.1", "norm2": "block2.0",
           "conv2": "block2.3", "skip": "shortcut"}
    attn = {"norm": "group_norm", "q": "proj_q", "k": "proj_k", "v": "proj_v", "proj_out": "proj"}
    model = UNet(unet)
    for part, theirs in (("down", "downblocks"), ("up", "upblocks")):
        for k, layer in enumerate(getattr(model, part)):
            if hasattr(layer, "conv") and not hasattr(layer, "conv1"):  # Downsample / Upsample
                pairs[f"{part}.{k}.conv"] = f"{theirs}.{k}.main"
                continue
            block = f"{part}.{k}.block" if hasattr(layer, "attn") else f"{part}.{k}"
            pairs.update({f"{block}.{a}": f"{theirs}.{k}.{b}" for a, b in res.items()})
            if hasattr(layer, "attn"):
                pairs.update({f"{part}.{k}.attn.{a}": f"{theirs}.{k}.attn.{b}" for a, b in attn.items()})
    pairs.update({f"mid.0.{a}": f"middleblocks.0.{b}" for a, b in res.items()})
    pairs.update({f"mid.1.{a}": f"middleblocks.0.attn.{b}" for a, b in attn.items()})
    pairs.update({f"mid.2.{a}": f"middleblocks.1.{b}" for a, b in res.items()})
    return pairs


def _interleaved_order(ch: int) -> list[int]:
    """pytorch-ddpm's embedding is sin, cos, sin, cos, …: our [sin…, cos…] column i is its column order[i]."""
    return list(range(0, ch, 2)) + list(range(1, ch, 2))


def read_pytorch_ddpm(path: Path, *, image_size: int | None = None) -> Source:
    """pytorch-ddpm's ``ckpt.pt``: ``ema_model`` (and ``net_model``) on its U-Net; its flags from ``flagfile.txt``
    beside it, or its CIFAR-10 defaults."""
    state = _load_weights_file(path)
    if "ema_model" not in state and "net_model" not in state:
        raise ValueError(f"{path} is not a pytorch-ddpm checkpoint: it has no 'ema_model' or 'net_model' "
                         f"(found {', '.join(sorted(map(str, state))[:8])})")
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
    if mean_type is None or flags["var_type"] not in _FIXED:
        raise ValueError(f"{flagfile}: mean_type {flags['mean_type']!r} / var_type {flags['var_type']!r} unknown")
    betas = np.linspace(float(flags["beta_1"]), float(flags["beta_T"]), T, dtype=np.float64)
    files = {path.name: sha256_file(path)}
    if flagfile.is_file():
        files[flagfile.name] = sha256_file(flagfile)
    return Source("pytorch-ddpm", unet, ema, raw, T, betas, mean_type, flags["var_type"], files, notes)


# ----------------------------------------------------------------------------------------------------------------
# Translation and the checkpoint


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
        if value.ndim == 2 and mine.ndim == 4:  # a Linear where we have a 1×1 conv (attention projections)
            value = value[:, :, None, None]
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
        if source.var_type in _FIXED and setting.var_type in _FIXED:
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


def import_checkpoint(source: str | Path, out: str | Path, *, fmt: str | None = None, setting: Setting | None = None,
                      data_dir: str | Path | None = None, revision: str | None = None,
                      image_size: int | None = None) -> dict:
    """``ddpm import``: read ``source`` (format detected unless ``fmt``), check it against ``setting`` and the prepared
    data in ``data_dir`` (dataset name, image shape), and write the checkpoint ``out`` atomically. Returns what the
    checkpoint records of its source."""
    path = resolve_source(source, revision=revision)
    fmt = fmt or detect_format(path)
    if data_dir is not None and image_size is None:
        image_size = read_manifest(data_dir)["image_shape"][1]
    found = read_source(path, fmt, image_size=image_size)
    check_config(found.unet)
    shape = [found.unet.in_channels, found.unet.image_size, found.unet.image_size]
    dataset = "imported"
    if data_dir is not None:
        manifest = read_manifest(data_dir)
        dataset = manifest["dataset"]
        if list(manifest["image_shape"]) != shape:
            raise ValueError(f"{source} generates images of shape {shape}, but {data_dir} holds {dataset} images of "
                             f"shape {manifest['image_shape']}")
    config, notes = diffusion_config(found, setting, dataset=dataset)
    record = {"format": fmt, "path": str(source), "resolved": str(path), "files": found.files,
              "weights": "ema and raw" if found.raw is not None else "ema", "revision": revision or "",
              "notes": found.notes + notes}
    save_checkpoint(out, {"model": found.raw, "ema": found.ema, "config": asdict(config), "data_shape": shape,
                          "data_sha256": "", UNET_KEY: found.unet.to_dict(), "source": record, "step": 0})
    return record
