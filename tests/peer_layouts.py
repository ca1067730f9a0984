"""Weights laid out as the peers lay them out, made here from a diffusers ``UNet2DModel`` configured as the peer's
network (the tests cannot download the peers' files): pesser/pytorch_diffusion's and ermongroup/ddim's ``Model`` names
(read from pytorch_diffusion/model.py and ddim's models/diffusion.py), improved-diffusion's ``UNetModel`` names with
each attention's q, k, v packed into one ``qkv`` (improved_diffusion/unet.py). This file's own mapping, not the
importer's: the two meet only in the imported network's function."""

import re

import torch

from conftest import save_diffusers_folder

#: diffusion_tf's U-Net at a small size, as pytorch_diffusion's / ddim's Model builds it: GroupNorm ε 1e-6, TF's
#: "SAME" stride-2 convolution, sin then cos with frequencies over half − 1, one head, attention at 16².
DDPM_TF_NET = {
    "_class_name": "UNet2DModel", "act_fn": "silu", "attention_head_dim": None, "block_out_channels": [32, 64, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "norm_eps": 1e-06,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 32,
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
#: improved-diffusion's UNetModel at a small size: the time conditioning by scale and shift of the group norm,
#: cos then sin over half, 4 heads of 16 channels, attention at 16² and 8², a learned Σ (6 output channels).
IMPROVED_NET = {
    **DDPM_TF_NET, "attention_head_dim": 16, "block_out_channels": [32, 64, 64, 64],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "norm_eps": 1e-05, "out_channels": 6,
    "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 32,  # diffusers drops the middle attention's
}  # group norm with scale_shift unless told its groups; improved-diffusion's has one
SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000}
RESNET = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2", "conv2": "conv2",
          "conv_shortcut": "nin_shortcut"}
ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_net(folder, config, seed=0):
    return save_diffusers_folder(folder, config, SCHEDULER, seed=seed)


def as_conv(value: torch.Tensor, dims: int) -> torch.Tensor:
    """diffusers' attention projections are Linear layers; the peers' are 1×1 convolutions (2-D or 1-D)."""
    return value.reshape(*value.shape, *([1] * dims)) if value.ndim == 2 else value


def ddpm_tf_state(net) -> dict:
    """diffusers' weights under pytorch_diffusion's (and ddim's) names: ``down.i.block.j``, ``down.i.attn.j``,
    ``up.i`` for resolution level i (their up list is indexed by level; diffusers' up_blocks from the bottom)."""
    levels, out = len(net.config.block_out_channels), {}
    for key, value in net.state_dict().items():
        name = (key.replace("time_embedding.linear_1", "temb.dense.0").replace("time_embedding.linear_2", "temb.dense.1")
                .replace("conv_norm_out", "norm_out"))
        match = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", name)
        if match:
            part, block, kind, index, leaf = match.groups()
            level = int(block) if part == "down" else levels - 1 - int(block)
            if kind in ("downsamplers", "upsamplers"):
                name = f"{part}.{level}.{part}sample.{leaf}"
            else:
                inner = RESNET if kind == "resnets" else ATTENTION
                layer, param = leaf.rsplit(".", 1)
                name = f"{part}.{level}.{'block' if kind == 'resnets' else 'attn'}.{index}.{inner[layer]}.{param}"
                value = as_conv(value, 2) if kind == "attentions" else value
        match = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", name)
        if match:
            kind, index, leaf = match.groups()
            layer, param = leaf.rsplit(".", 1)
            inner = RESNET if kind == "resnets" else ATTENTION
            name = f"mid.{'block_' + str(int(index) + 1) if kind == 'resnets' else 'attn_1'}.{inner[layer]}.{param}"
            value = as_conv(value, 2) if kind == "attentions" else value
        out[name] = value.clone()
    return out


IMPROVED_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                   "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def improved_state(net, heads: int) -> dict:
    """diffusers' weights under improved-diffusion's names: ``input_blocks.n`` (0: the first convolution; a
    downsampler is a block of its own), ``output_blocks.n`` (an upsampler inside the level's last block), and each
    attention's q, k, v packed into one ``qkv`` 1-D convolution, head after head [q | k | v]."""
    config, sd = net.config, net.state_dict()
    levels, blocks = len(config.block_out_channels), config.layers_per_block
    out = {"time_embed.0.weight": sd["time_embedding.linear_1.weight"], "time_embed.0.bias": sd["time_embedding.linear_1.bias"],
           "time_embed.2.weight": sd["time_embedding.linear_2.weight"], "time_embed.2.bias": sd["time_embedding.linear_2.bias"],
           "input_blocks.0.0.weight": sd["conv_in.weight"], "input_blocks.0.0.bias": sd["conv_in.bias"],
           "out.0.weight": sd["conv_norm_out.weight"], "out.0.bias": sd["conv_norm_out.bias"],
           "out.2.weight": sd["conv_out.weight"], "out.2.bias": sd["conv_out.bias"]}

    def resnet(theirs, ours):
        for layer, name in IMPROVED_RESNET.items():
            for param in ("weight", "bias"):
                if f"{theirs}.{layer}.{param}" in sd:
                    out[f"{ours}.{name}.{param}"] = sd[f"{theirs}.{layer}.{param}"]

    def attention(theirs, ours):
        for param in ("weight", "bias"):
            out[f"{ours}.norm.{param}"] = sd[f"{theirs}.group_norm.{param}"]
            q, k, v = (sd[f"{theirs}.to_{x}.{param}"] for x in "qkv")
            per_head = [torch.stack(parts) for parts in zip(*(t.chunk(heads) for t in (q, k, v)))]
            out[f"{ours}.qkv.{param}"] = as_conv(torch.cat([p.reshape(-1, *q.shape[1:]) for p in per_head]), 1)
            out[f"{ours}.proj_out.{param}"] = as_conv(sd[f"{theirs}.to_out.0.{param}"], 1)

    n = 1
    for level in range(levels):
        for j in range(blocks):
            resnet(f"down_blocks.{level}.resnets.{j}", f"input_blocks.{n}.0")
            if f"down_blocks.{level}.attentions.{j}.to_q.weight" in sd:
                attention(f"down_blocks.{level}.attentions.{j}", f"input_blocks.{n}.1")
            n += 1
        if level != levels - 1:
            for param in ("weight", "bias"):
                out[f"input_blocks.{n}.0.op.{param}"] = sd[f"down_blocks.{level}.downsamplers.0.conv.{param}"]
            n += 1
    resnet("mid_block.resnets.0", "middle_block.0")
    attention("mid_block.attentions.0", "middle_block.1")
    resnet("mid_block.resnets.1", "middle_block.2")
    n = 0
    for up in range(levels):
        for j in range(blocks + 1):
            resnet(f"up_blocks.{up}.resnets.{j}", f"output_blocks.{n}.0")
            with_attention = f"up_blocks.{up}.attentions.{j}.to_q.weight" in sd
            if with_attention:
                attention(f"up_blocks.{up}.attentions.{j}", f"output_blocks.{n}.1")
            if j == blocks and up != levels - 1:
                for param in ("weight", "bias"):
                    out[f"output_blocks.{n}.{2 if with_attention else 1}.conv.{param}"] = \
                        sd[f"up_blocks.{up}.upsamplers.0.conv.{param}"]
            n += 1
    assert sum(v.numel() for v in out.values()) == sum(v.numel() for v in sd.values())
    return {k: v.clone() for k, v in out.items()}


def ddim_checkpoint(path, model_net, ema_net, *, with_ema=True):
    """ermongroup/ddim's ckpt.pth: [model (DataParallel: 'module.' names), optimizer, epoch, step, EMA shadow]."""
    model_state = {f"module.{k}": v for k, v in ddpm_tf_state(model_net).items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                                "amsgrad": False, "params": list(range(len(model_state)))}]}
    states = [model_state, optimizer, 7, 1234] + ([ddpm_tf_state(ema_net)] if with_ema else [])
    torch.save(states, path)
