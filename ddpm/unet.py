"""The paper's denoising network: a PixelCNN++-style U-Net (Ho et al. 2020, Section 4 and Appendix B).

Wide-ResNet blocks with GroupNorm (32 groups), the sinusoidal timestep embedding of the Transformer projected
by a 2-layer MLP and added inside every residual block, self-attention at the 16×16 resolution, dropout, and
skip connections between the down and up paths. Layer layout and initialisation follow the official
``diffusion_tf/models/unet.py``, so the CIFAR-10 preset has the paper's 35.7M parameters.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from .presets import GROUPS, PRESETS, UNetConfig, check_config, preset  # noqa: F401 (the network's names)


def timestep_embedding(t: torch.Tensor, dim: int, freq_shift: int = 1) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (Vaswani et al. 2017, Section 3.5), as the paper uses:
    [sin(t·f_i), cos(t·f_i)] with f_i = 10000^(-i / (half - freq_shift)), i < half."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) / (half - freq_shift) * torch.arange(half, device=t.device, dtype=torch.float32))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _init(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """The official code's ``variance_scaling(scale, 'fan_avg', 'uniform')`` with zero bias; scale 0 means 1e-10."""
    scale = 1e-10 if scale == 0 else scale
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(module.weight)
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    nn.init.uniform_(module.weight, -bound, bound)
    nn.init.zeros_(module.bias)
    return module


def conv3x3(cin: int, cout: int, scale: float = 1.0, stride: int = 1) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), scale)


def conv1x1(cin: int, cout: int, scale: float = 1.0) -> nn.Conv2d:
    return _init(nn.Conv2d(cin, cout, 1), scale)


def norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=eps)


class ResBlock(nn.Module):
    """GroupNorm → swish → conv, + projected timestep embedding, GroupNorm → swish → dropout → conv, + skip.

    With ``scale_shift`` (Improved DDPM) the embedding is projected to a scale and a shift of the second norm's output
    instead: GroupNorm(h)·(1 + scale) + shift."""

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, eps: float = 1e-5,
                 scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1, self.conv1 = norm(cin, eps), conv3x3(cin, cout)
        self.temb_proj = _init(nn.Linear(temb_dim, 2 * cout if scale_shift else cout))
        self.norm2, self.dropout, self.conv2 = norm(cout, eps), nn.Dropout(dropout), conv3x3(cout, cout, scale=0.0)
        self.skip = conv1x1(cin, cout) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        conditioning = self.temb_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = conditioning.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + conditioning)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Multi-head self-attention over all spatial positions, with a residual connection (DDPM: one head)."""

    def __init__(self, channels: int, num_heads: int = 1, eps: float = 1e-5):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the {channels} channels of an attention block")
        self.num_heads = num_heads
        self.norm = norm(channels, eps)
        self.q, self.k, self.v = conv1x1(channels, channels), conv1x1(channels, channels), conv1x1(channels, channels)
        self.proj_out = conv1x1(channels, channels, scale=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x)
        heads = self.num_heads
        # (b, heads, positions, channels per head), contiguous: transposed views would leave the fused kernels
        # (flash, memory-efficient) off and the math kernel would hold the whole positions² matrix (1 GB per image
        # for the 128² of a 256² image's middle block).
        q, k, v = (layer(h).reshape(b, heads, c // heads, hgt * wid).transpose(2, 3).contiguous()
                   for layer in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # per head: softmax(q kᵀ / √(C / heads)) v
        return x + self.proj_out(h.transpose(2, 3).reshape(b, c, hgt, wid))


class Downsample(nn.Module):
    """Halves the resolution: a stride-2 conv (padded by one on every side, or TF's "SAME": one row and column
    after the image only) or average pooling."""

    def __init__(self, channels: int, with_conv: bool, padding: str = "symmetric"):
        super().__init__()
        self.same = padding == "same"
        self.conv = conv3x3(channels, channels, stride=2) if with_conv else None
        if self.conv is not None and self.same:
            self.conv.padding = (0, 0)

    def forward(self, x):
        if self.conv is None:
            return F.avg_pool2d(x, 2)
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.same else x)


class Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.conv = conv3x3(channels, channels) if with_conv else None

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class UNet(nn.Module):
    """ε_θ(x_t, t) (or x̂_0, μ̃, and optionally a variance: ``out_channels`` doubles for learned Σ)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        check_config(config)
        self.config = config
        ch, temb_dim = config.ch, config.ch * 4
        self.temb = nn.Sequential(_init(nn.Linear(ch, temb_dim)), nn.SiLU(), _init(nn.Linear(temb_dim, temb_dim)))
        self.conv_in = conv3x3(config.in_channels, ch)

        self.down = nn.ModuleList()
        skip_channels, channels, resolution = [ch], ch, config.image_size
        for level, mult in enumerate(config.ch_mult):
            for _ in range(config.num_res_blocks):
                self.down.append(self._block(channels, ch * mult, temb_dim, resolution))
                channels = ch * mult
                skip_channels.append(channels)
            if level != len(config.ch_mult) - 1:
                self.down.append(Downsample(channels, config.resamp_with_conv, config.downsample_padding))
                skip_channels.append(channels)
                resolution //= 2

        eps = config.norm_eps
        self.mid = nn.ModuleList([
            ResBlock(channels, channels, temb_dim, config.dropout, eps, config.scale_shift_norm),
            AttnBlock(channels, config.num_heads, eps),
            ResBlock(channels, channels, temb_dim, config.dropout, eps, config.scale_shift_norm),
        ])

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.ch_mult))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(self._block(channels + skip_channels.pop(), ch * mult, temb_dim, resolution))
                channels = ch * mult
            if level != 0:
                self.up.append(Upsample(channels, config.resamp_with_conv))
                resolution *= 2

        self.norm_out = norm(channels, eps)
        self.conv_out = conv3x3(channels, config.out_channels, scale=0.0)

    def _block(self, cin, cout, temb_dim, resolution) -> nn.Module:
        c = self.config
        block = ResBlock(cin, cout, temb_dim, c.dropout, c.norm_eps, c.scale_shift_norm)
        if resolution in c.attn_resolutions:
            return _ResAttn(block, AttnBlock(cout, c.num_heads, c.norm_eps))
        return block

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels or x.shape[2] != c.image_size or x.shape[3] != c.image_size:
            raise ValueError(
                f"UNet expects images of shape (B, {c.in_channels}, {c.image_size}, {c.image_size}), got {tuple(x.shape)}"
            )
        if c.timestep_scale != 1.0:
            t = t.float() * c.timestep_scale
        temb = self.temb(timestep_embedding(t, c.ch, c.temb_freq_shift).to(x.dtype))
        hs = [self.conv_in(x)]
        for layer in self.down:
            hs.append(layer(hs[-1], temb) if not isinstance(layer, Downsample) else layer(hs[-1]))
        h = self.mid[0](hs[-1], temb)
        h = self.mid[1](h)
        h = self.mid[2](h, temb)
        for layer in self.up:
            h = layer(h) if isinstance(layer, Upsample) else layer(torch.cat([h, hs.pop()], dim=1), temb)
        return self.conv_out(F.silu(self.norm_out(h)))


class _ResAttn(nn.Module):
    """A residual block followed by self-attention (used at the attention resolutions)."""

    def __init__(self, block: ResBlock, attn: AttnBlock):
        super().__init__()
        self.block, self.attn = block, attn

    def forward(self, x, temb):
        return self.attn(self.block(x, temb))


def create_model(preset_name: str, *, learn_sigma: bool = False, **overrides) -> UNet:
    """Build the preset's U-Net; with ``learn_sigma`` the output has twice the input channels (mean and Σ)."""
    config = preset(preset_name, **overrides)
    out = config.in_channels * (2 if learn_sigma else 1)
    return UNet(replace(config, out_channels=out))


def attention_shapes(config: UNetConfig) -> list[tuple[int, int, int]]:
    """Each distinct attention block input of ``config``'s network as (channels, heads, resolution): those of the
    down and up paths at the attention resolutions, and the middle block's at the lowest resolution."""
    shapes, resolution = set(), config.image_size
    for mult in config.ch_mult:
        if resolution in config.attn_resolutions:
            shapes.add((config.ch * mult, config.num_heads, resolution))
        resolution //= 2
    shapes.add((config.ch * config.ch_mult[-1], config.num_heads, resolution * 2))
    return sorted(shapes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["UNet", "UNetConfig", "PRESETS", "preset", "create_model", "count_parameters", "check_config",
           "attention_shapes"]
