"""Attention runs on a fused kernel (issue 28): the math kernel of ``scaled_dot_product_attention`` holds the whole
positions² matrix and was 1.75× slower than diffusers on the CPU; transposed (non-contiguous) q, k, v leave the
fused kernels off. Each preset's attention blocks, with each forward pass the speed-ups give on a CPU, must be
taken by the CPU's flash kernel when it is the only one allowed (:func:`ddpm.bench.attention_kernels`; the GPU's
figures come from ``ddpm bench`` on a GPU, which records the same check)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ddpm.bench import attention_kernels
from ddpm.presets import PRESETS
from ddpm.settings import Speed
from ddpm.unet import AttnBlock, UNet, attention_shapes, preset

CPU = torch.device("cpu")
SPEEDS = {"plain": Speed(), "bf16": Speed(bf16=True), "channels_last": Speed(channels_last=True),
          "bf16+channels_last": Speed(bf16=True, channels_last=True)}


@pytest.mark.parametrize("speed", SPEEDS, ids=str)
@pytest.mark.parametrize("name", [n for n in PRESETS if PRESETS[n].attn_resolutions])
def test_every_attention_block_of_a_preset_takes_the_fused_cpu_kernel(name, speed):
    kernels = attention_kernels(name, SPEEDS[speed], CPU)
    assert kernels and set(kernels) == {f"{c}ch-{h}h-{r}px" for c, h, r in attention_shapes(PRESETS[name])}
    refused = [shape for shape, taken in kernels.items() if "FLASH_ATTENTION" not in taken]
    assert not refused, f"{name} ({speed}): only the math kernel takes the attention of {refused}"


def test_the_shapes_are_those_the_network_runs():
    """:func:`attention_shapes` names every attention block's input a forward pass meets (hooks on a real network)."""
    for name in ("small", "iddpm-cifar10", "ddim-celeba64"):
        model, seen = UNet(preset(name)).eval(), set()
        for block in (m for m in model.modules() if isinstance(m, AttnBlock)):
            block.register_forward_hook(lambda m, args, out: seen.add((args[0].shape[1], m.num_heads, args[0].shape[2])))
        size, channels = model.config.image_size, model.config.in_channels
        with torch.no_grad():
            model(torch.randn(1, channels, size, size), torch.zeros(1, dtype=torch.long))
        assert sorted(seen) == attention_shapes(model.config), name


def test_a_whole_network_runs_with_the_math_kernel_forbidden_and_computes_the_same():
    """Every attention call of a network's forward pass (not only the blocks measured one by one) is fused, and the
    fused kernel gives the math kernel's output."""
    torch.manual_seed(0)
    model = UNet(preset("iddpm-cifar10", ch=64, image_size=16)).eval()
    for parameter in model.parameters():  # the zero-initialised output layers would make any two kernels agree
        parameter.data.add_(torch.randn_like(parameter) * 0.02)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fused = model(x, t)
        with sdpa_kernel([SDPBackend.MATH]):
            math = model(x, t)
    assert torch.allclose(fused, math, rtol=1e-4, atol=1e-5 * float(math.abs().max()))


def test_the_check_sees_a_layout_that_keeps_the_fused_kernel_off(monkeypatch):
    """The check can fail: q, k, v handed over as transposed views (the layout before issue 28) are refused."""
    attention = F.scaled_dot_product_attention

    def transposed_views(q, k, v, **kwargs):  # the same values, laid out as (…, channels, positions) transposed
        q, k, v = (a.transpose(2, 3).contiguous().transpose(2, 3) for a in (q, k, v))
        return attention(q, k, v, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", transposed_views)
    kernels = attention_kernels("cifar10", Speed(), CPU)
    assert kernels and all(taken == [] for taken in kernels.values()), kernels
