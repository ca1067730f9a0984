"""The DDPM U-Net and its training step written the straightforward way, as PyTorch ports of the paper commonly
write them: the reference that ``ddpm bench`` holds the plain path against (issue 6: on a CPU, the plain path's
training step must be no slower).

What makes it "straightforward": swish as ``x * sigmoid(x)``; attention as two ``bmm`` and a ``softmax`` over an
explicit (HW × HW) matrix; ``nn.Sequential`` blocks; the timestep embedding recomputed inside the network;
``x_t`` built by indexing the schedule tensors; ``F.mse_loss`` against ε; PyTorch's default Adam; the EMA as a
Python loop of ``mul_`` / ``add_``. Not a second implementation to train with: it has DDPM's ε / MSE setting only.

Its parameters are created in the same order and shapes as :class:`ddpm.unet.UNet`'s, so :func:`copy_weights`
makes the two the same function (a test checks their outputs agree): the comparison is of code, not of models.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .unet import GROUPS, UNet, UNetConfig


class Swish(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    frequencies = torch.exp(torch.arange(half, device=t.device).float() * -(math.log(10000) / (half - 1)))
    angles = t.float().view(-1, 1) * frequencies.view(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class Block(nn.Module):
    def __init__(self, cin, cout, tdim, dropout, attention, heads):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(GROUPS, cin), Swish(), nn.Conv2d(cin, cout, 3, padding=1))
        self.temb_proj = nn.Sequential(Swish(), nn.Linear(tdim, cout))
        self.block2 = nn.Sequential(nn.GroupNorm(GROUPS, cout), Swish(), nn.Dropout(dropout),
                                    nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = Attention(cout, heads) if attention else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x)
        h = h + self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h)
        return self.attn(h + self.shortcut(x))


class Attention(nn.Module):
    def __init__(self, channels, heads):
        super().__init__()
        self.heads = heads
        self.group_norm = nn.GroupNorm(GROUPS, channels)
        self.proj_q = nn.Conv2d(channels, channels, 1)
        self.proj_k = nn.Conv2d(channels, channels, 1)
        self.proj_v = nn.Conv2d(channels, channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        d = C // self.heads
        h = self.group_norm(x)
        q = self.proj_q(h).view(B * self.heads, d, H * W).permute(0, 2, 1)
        k = self.proj_k(h).view(B * self.heads, d, H * W)
        v = self.proj_v(h).view(B * self.heads, d, H * W).permute(0, 2, 1)
        w = torch.softmax(torch.bmm(q, k) * (d ** -0.5), dim=-1)
        h = torch.bmm(w, v).permute(0, 2, 1).reshape(B, C, H, W)
        return x + self.proj(h)


class StraightforwardUNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        ch, tdim, c = config.ch, config.ch * 4, config
        self.ch = ch
        self.time_embedding = nn.Sequential(nn.Linear(ch, tdim), Swish(), nn.Linear(tdim, tdim))
        self.head = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        self.downblocks = nn.ModuleList()
        chs, now, size = [ch], ch, c.image_size
        for i, mult in enumerate(c.ch_mult):
            for _ in range(c.num_res_blocks):
                self.downblocks.append(Block(now, ch * mult, tdim, c.dropout, size in c.attn_resolutions, c.num_heads))
                now = ch * mult
                chs.append(now)
            if i != len(c.ch_mult) - 1:
                self.downblocks.append(nn.Conv2d(now, now, 3, stride=2, padding=1))
                chs.append(now)
                size //= 2
        self.middle = nn.ModuleList([Block(now, now, tdim, c.dropout, True, c.num_heads),
                                     Block(now, now, tdim, c.dropout, False, c.num_heads)])
        self.upblocks = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.ch_mult))):
            for _ in range(c.num_res_blocks + 1):
                self.upblocks.append(Block(chs.pop() + now, ch * mult, tdim, c.dropout, size in c.attn_resolutions,
                                           c.num_heads))
                now = ch * mult
            if i != 0:
                self.upblocks.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                   nn.Conv2d(now, now, 3, padding=1)))
                size *= 2
        self.tail = nn.Sequential(nn.GroupNorm(GROUPS, now), Swish(), nn.Conv2d(now, c.out_channels, 3, padding=1))

    def forward(self, x, t):
        temb = self.time_embedding(sinusoidal_embedding(t, self.ch))
        h = self.head(x)
        hs = [h]
        for layer in self.downblocks:
            h = layer(h, temb) if isinstance(layer, Block) else layer(h)
            hs.append(h)
        for layer in self.middle:
            h = layer(h, temb)
        for layer in self.upblocks:
            h = layer(torch.cat([h, hs.pop()], dim=1), temb) if isinstance(layer, Block) else layer(h)
        return self.tail(h)


@torch.no_grad()
def copy_weights(source: UNet, target: StraightforwardUNet) -> StraightforwardUNet:
    """``source``'s weights into ``target``, parameter by parameter in creation order (the shapes must agree)."""
    ours, theirs = list(source.parameters()), list(target.parameters())
    if len(ours) != len(theirs) or any(a.shape != b.shape for a, b in zip(ours, theirs)):
        raise ValueError("the straightforward U-Net does not have the same parameters as the U-Net")
    for a, b in zip(ours, theirs):
        b.copy_(a)
    return target


def training_step(model: StraightforwardUNet, ema: StraightforwardUNet, optimizer: torch.optim.Optimizer,
                  x0: torch.Tensor, betas: torch.Tensor, *, grad_clip: float = 1.0, ema_decay: float = 0.9999) -> float:
    """Algorithm 1 once, the way a port writes it; returns the loss."""
    alphas_bar = torch.cumprod(1 - betas, dim=0)
    t = torch.randint(0, len(betas), (x0.shape[0],), device=x0.device)
    noise = torch.randn_like(x0)
    x_t = alphas_bar[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - alphas_bar[t]).sqrt().view(-1, 1, 1, 1) * noise
    loss = F.mse_loss(model(x_t, t), noise)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters()):
            p_ema.mul_(ema_decay).add_(p, alpha=1 - ema_decay)
    return loss.item()
