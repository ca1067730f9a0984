"""The U-Net's architecture as data: :class:`UNetConfig`, the named presets and the size check.

Torch-free, so that the workflow can check a config's preset against its image size when it parses, without
importing torch; :mod:`ddpm.unet` builds the network from these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

GROUPS = 32
DOWNSAMPLE_PADDINGS = ("symmetric", "same")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyperparameters. ``attn_resolutions`` are feature-map sizes (e.g. 16 for 16×16)."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    num_heads: int = 1  # DDPM: one head; Improved DDPM: 4
    dropout: float = 0.1
    resamp_with_conv: bool = True
    image_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    # What published weights need (ddpm.pretrained); the defaults are this project's own U-Net. The official
    # TF models (and their diffusers conversions): GroupNorm ε 1e-6 and TF's "SAME" padding of the stride-2 conv
    # (one row and column after the image, none before); pytorch-ddpm: frequencies 10000^(-i/half) (shift 0).
    norm_eps: float = 1e-5
    downsample_padding: str = "symmetric"  # or "same" (TF)
    temb_freq_shift: int = 1  # the embedding's frequencies are 10000^(-i / (half - shift)), i < half
    # Improved DDPM's network (improved-diffusion's UNetModel): the timestep conditions each residual block's second
    # group norm by a scale and a shift (use_scale_shift_norm), and the network sees t·timestep_scale (its
    # rescale_timesteps feeds t·1000/T, e.g. 0.25 at T = 4000).
    scale_shift_norm: bool = False
    timestep_scale: float = 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"], d["attn_resolutions"] = list(self.ch_mult), list(self.attn_resolutions)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown UNet config keys {sorted(unknown)}; valid keys: {sorted(cls.__dataclass_fields__)}")
        d = dict(d)
        for key in ("ch_mult", "attn_resolutions"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


#: Presets. ``cifar10``: the paper's CIFAR-10 model (35.7M parameters). ``256``: its LSUN / CelebA-HQ 256² model
#: (ch_mult 1,1,2,2,4,4; 114M); ``256-large``: its larger LSUN Bedroom model (256M). ``small``/``tiny``: sized to train in minutes on a CPU.
PRESETS: dict[str, UNetConfig] = {
    "cifar10": UNetConfig(),
    "256": UNetConfig(ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0, image_size=256),
    # DDPM's larger LSUN Bedroom model (Table 3's 4.90): "approximately 256 million parameters by increasing filter
    # count" (Appendix B). The released code has no config for it; 192 channels (the rest as "256") give 255.7M.
    "256-large": UNetConfig(ch=192, ch_mult=(1, 1, 2, 2, 4, 4), dropout=0.0, image_size=256),
    "small": UNetConfig(ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(8,), dropout=0.1, image_size=16, in_channels=1, out_channels=1),
    # Improved DDPM's CIFAR-10 model (improved-diffusion's flags: 128 channels, 3 residual blocks, dropout 0.3; its
    # defaults: attention at 16×16 and 8×8 with 4 heads, the time conditioning by scale and shift of the group norm):
    # 52.5M parameters with a learned Σ, their "50M" (52,546,438, as their UNetModel; tests/test_import_formats.py).
    # Trained here, the network sees t; their t·1000/T is a property of their released files (ddpm import).
    "iddpm-cifar10": UNetConfig(num_res_blocks=3, attn_resolutions=(16, 8), num_heads=4, dropout=0.3,
                                scale_shift_norm=True),
    # DDIM's CelebA 64² model (ermongroup/ddim's configs/celeba.yml): DDPM's U-Net with a fifth level, ch_mult
    # 1,2,2,2,4, attention at 16²: 78.7M parameters (78,700,803, as their Model).
    "ddim-celeba64": UNetConfig(ch_mult=(1, 2, 2, 2, 4), image_size=64),
    "tiny": UNetConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, image_size=8, in_channels=1, out_channels=1),
}


def preset(name: str, **overrides) -> UNetConfig:
    """The preset ``name`` with fields replaced by ``overrides`` (e.g. ``image_size``, ``in_channels``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def check_config(config: UNetConfig) -> None:
    """Raise ValueError if the U-Net cannot be built for these sizes."""
    levels = len(config.ch_mult)
    if config.ch % GROUPS or any((config.ch * m) % GROUPS for m in config.ch_mult):
        raise ValueError(f"channel widths ch={config.ch} x ch_mult={config.ch_mult} must be multiples of {GROUPS} (GroupNorm groups)")
    factor = 2 ** (levels - 1)
    if config.image_size < factor or config.image_size % factor:
        raise ValueError(
            f"image_size {config.image_size} cannot pass through {levels} resolution levels: it must be a multiple of "
            f"{factor} (2^(len(ch_mult) - 1)); pick another image size or a preset with fewer levels"
        )
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if config.downsample_padding not in DOWNSAMPLE_PADDINGS:
        raise ValueError(f"downsample_padding must be one of {', '.join(DOWNSAMPLE_PADDINGS)}, got "
                         f"{config.downsample_padding!r}")
    if config.num_res_blocks < 1 or config.in_channels < 1 or config.out_channels < 1:
        raise ValueError(f"num_res_blocks, in_channels and out_channels must be >= 1, got {config}")
