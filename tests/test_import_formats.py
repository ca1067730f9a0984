"""``ddpm import`` of the peers' own file formats, each recognised with no --format: pesser/pytorch_diffusion's
conversions of DDPM's TF checkpoints, ermongroup/ddim's ``ckpt.pth`` and openai/improved-diffusion's ``.pt``.

The files are made here in each peer's layout (read from their code: pytorch_diffusion/model.py, ddim's
runners/diffusion.py and models/ema.py, improved_diffusion/unet.py), with random weights: from a diffusers
``UNet2DModel`` configured as the peer's network, whose layers are renamed to the peer's names by this file's own
mapping. The imported network must compute diffusers' function: in float64, with the same embedding values on both
sides (the sinusoid is compared on its own: both codes round it in float32), to 1e-10 of the output's size.
"""

import copy
import re

import pytest
import torch
from torch import nn

from ddpm.checkpoint import load_checkpoint, load_for_sampling
from ddpm.unet import count_parameters, timestep_embedding

from conftest import run_import, save_diffusers_folder

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
IMPROVED_FLAGS = ("--image_size 32 --num_channels 32 --num_res_blocks 2 --learn_sigma True --dropout 0.3 "
                  "--diffusion_steps 4000 --noise_schedule cosine")
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




class _Embedding(nn.Module):
    """Our sinusoid (the values our network embeds), in the peer's order."""

    def __init__(self, ch: int, shift: int, cos_first: bool):
        super().__init__()
        self.ch, self.shift, self.cos_first = ch, shift, cos_first

    def forward(self, t):
        embedding = timestep_embedding(t, self.ch, self.shift)
        half = self.ch // 2
        return torch.cat([embedding[:, half:], embedding[:, :half]], 1) if self.cos_first else embedding


def assert_same_function(model, net, *, T: int = 1000, t_scale: float = 1.0):
    """Our imported ``model`` (fed t) computes ``net``'s function (fed t·t_scale)."""
    config = model.config
    cos_first = net.config.flip_sin_to_cos
    ours_embedding = _Embedding(config.ch, config.temb_freq_shift, cos_first)
    steps = torch.arange(T) * t_scale
    torch.testing.assert_close(ours_embedding(steps), net.time_proj(steps), rtol=0, atol=5e-5)
    twin = copy.deepcopy(net).double()
    twin.time_proj = ours_embedding
    size = net.config.sample_size
    x = torch.randn(2, net.config.in_channels, size, size, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    t = torch.tensor([1, T - 1])
    with torch.no_grad():
        ours, theirs = copy.deepcopy(model).double()(x, t), twin(x, t * t_scale).sample
    assert theirs.abs().max() > 0.5, "the network's output is ~0: the comparison would be blind"
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * float(theirs.abs().max()))


# ---------------------------------------------------------------------------------------------------- pytorch_diffusion


def test_a_pytorch_diffusion_file_is_recognised_and_computes_its_network(tmp_path):
    """``ema_diffusion_cifar10_model/model-790000.ckpt`` as pytorch_diffusion's downloader lays it out: recognised by
    its keys; image size (32), variance (fixedlarge) and β (DDPM's linear over T = 1000) from the model's name."""
    net = diffusers_net(tmp_path / "diffusers", DDPM_TF_NET)
    source = tmp_path / "ema_diffusion_cifar10_model" / "model-790000.ckpt"
    source.parent.mkdir()
    torch.save(ddpm_tf_state(net), source)
    out = tmp_path / "run" / "checkpoint.pt"
    run_import(source, "--out", out)
    model, diffusion, state = load_for_sampling(out)
    assert state["source"]["format"] == "pytorch-diffusion" and state["unet"]["image_size"] == 32
    assert (state["config"]["T"], state["config"]["schedule"], state["config"]["var_type"]) == (1000, "linear",
                                                                                                 "fixedlarge")
    assert any("pytorch_diffusion's cifar10 model" in note for note in state["source"]["notes"])
    assert_same_function(model, net)


def test_a_pytorch_diffusion_file_of_no_known_name_needs_its_image_size(tmp_path):
    net = diffusers_net(tmp_path / "diffusers", DDPM_TF_NET, seed=1)
    source = tmp_path / "model-1000.ckpt"
    torch.save(ddpm_tf_state(net), source)
    result = run_import(source, "--out", tmp_path / "refused" / "checkpoint.pt", check=False)
    assert result.returncode == 2 and "give --image-size or --data" in result.stderr
    out = tmp_path / "run" / "checkpoint.pt"
    run_import(source, "--out", out, "--image-size", "32")
    model, _, state = load_for_sampling(out)
    assert state["source"]["format"] == "pytorch-diffusion"
    assert_same_function(model, net)


# ---------------------------------------------------------------------------------------------------- ddim ckpt.pth


def ddim_checkpoint(path, model_net, ema_net, *, with_ema=True):
    """ermongroup/ddim's ckpt.pth: [model (DataParallel: 'module.' names), optimizer, epoch, step, EMA shadow]."""
    model_state = {f"module.{k}": v for k, v in ddpm_tf_state(model_net).items()}
    optimizer = {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0,
                                                "amsgrad": False, "params": list(range(len(model_state)))}]}
    states = [model_state, optimizer, 7, 1234] + ([ddpm_tf_state(ema_net)] if with_ema else [])
    torch.save(states, path)


def test_a_ddim_checkpoint_imports_its_ema_and_its_training_weights(tmp_path):
    raw_net = diffusers_net(tmp_path / "raw", DDPM_TF_NET, seed=2)
    ema_net = diffusers_net(tmp_path / "ema", DDPM_TF_NET, seed=3)
    source = tmp_path / "logs" / "celeba" / "ckpt.pth"
    source.parent.mkdir(parents=True)
    ddim_checkpoint(source, raw_net, ema_net)
    out = tmp_path / "run" / "checkpoint.pt"
    result = run_import(source, "--out", out, check=False)
    assert result.returncode == 2 and "does not say its image size" in result.stderr
    run_import(source, "--out", out, "--image-size", "32")
    ema, _, state = load_for_sampling(out)
    raw, _, _ = load_for_sampling(out, use_ema=False)
    assert state["source"]["format"] == "ddim" and state["source"]["weights"] == "ema and raw"
    assert_same_function(ema, ema_net)
    assert_same_function(raw, raw_net)

    without = tmp_path / "no-ema" / "ckpt.pth"
    without.parent.mkdir()
    ddim_checkpoint(without, raw_net, None, with_ema=False)
    run_import(without, "--out", tmp_path / "run2" / "checkpoint.pt", "--image-size", "32")
    state = load_checkpoint(tmp_path / "run2" / "checkpoint.pt")
    assert any("no EMA entry" in note for note in state["source"]["notes"])
    assert_same_function(load_for_sampling(tmp_path / "run2" / "checkpoint.pt")[0], raw_net)


# ---------------------------------------------------------------------------------------------------- improved-diffusion


def test_an_improved_diffusion_file_imports_with_its_flags_and_computes_its_network(tmp_path):
    """Four heads (their [q | k | v] per head), scale-shift norm, cos-first embedding, t·1000/T (T = 4000): the
    flags of a file improved-diffusion did not release are given with --flags."""
    net = diffusers_net(tmp_path / "diffusers", IMPROVED_NET, seed=4)
    source = tmp_path / "ema_0.9999_010000.pt"
    torch.save(improved_state(net, heads=4), source)
    result = run_import(source, "--out", tmp_path / "refused" / "checkpoint.pt", check=False)
    assert result.returncode == 2 and "--flags" in result.stderr and "cifar10_uncond_50M_500K.pt" in result.stderr
    out = tmp_path / "run" / "checkpoint.pt"
    run_import(source, "--out", out, "--flags", IMPROVED_FLAGS)
    model, diffusion, state = load_for_sampling(out)
    assert state["source"]["format"] == "improved-diffusion"
    unet = state["unet"]
    assert (unet["num_heads"], unet["scale_shift_norm"], unet["timestep_scale"]) == (4, True, 0.25)
    assert (state["config"]["T"], state["config"]["schedule"], state["config"]["var_type"]) == (4000, "cosine",
                                                                                                 "learned_range")
    assert_same_function(model, net, T=4000, t_scale=0.25)

    wrong_heads = tmp_path / "run-heads" / "checkpoint.pt"  # shapes cannot tell heads: 2 loads, and differs
    run_import(source, "--out", wrong_heads, "--flags", IMPROVED_FLAGS + " --num_heads 2")
    with pytest.raises(AssertionError):
        assert_same_function(load_for_sampling(wrong_heads)[0], net, T=4000, t_scale=0.25)


def test_a_released_improved_diffusion_file_is_known_by_its_name(tmp_path):
    """``cifar10_uncond_50M_500K.pt`` needs no flags (its README's); its network has their parameter count,
    52,546,438 (their UNetModel built from improved-diffusion's own code with these flags), and so does ours."""
    config = {**IMPROVED_NET, "attention_head_dim": 64, "block_out_channels": [128, 256, 256, 256],
              "layers_per_block": 3, "dropout": 0.3}
    net = diffusers_net(tmp_path / "diffusers", config, seed=5)
    source = tmp_path / "cifar10_uncond_50M_500K.pt"
    torch.save(improved_state(net, heads=4), source)
    out = tmp_path / "run" / "checkpoint.pt"
    run_import(source, "--out", out)
    model, _, state = load_for_sampling(out)
    assert count_parameters(model) == 52_546_438 == count_parameters(net)
    assert state["unet"]["dropout"] == 0.3 and state["config"]["T"] == 4000
    assert_same_function(model, net, T=4000, t_scale=0.25)


# ---------------------------------------------------------------------------------------------------- refused


def refused(tmp_path, source, *args) -> str:
    out = tmp_path / "refused" / "checkpoint.pt"
    result = run_import(source, "--out", out, *args, check=False)
    assert result.returncode == 2 and not out.exists()
    return result.stderr.strip().splitlines()[-1]


def test_damaged_and_foreign_files_are_refused_by_name(tmp_path):
    net = diffusers_net(tmp_path / "diffusers", DDPM_TF_NET, seed=6)
    state = ddpm_tf_state(net)
    folder = tmp_path / "diffusion_cifar10_model"
    folder.mkdir()

    truncated = folder / "truncated.ckpt"
    torch.save(state, truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    assert "truncated.ckpt" in (said := refused(tmp_path, truncated)) and "truncated or damaged" in said

    extra = folder / "extra.ckpt"
    torch.save({**state, "down.0.block.0.extra.weight": torch.zeros(3)}, extra)
    assert "unexpected e.g. down.0.block.0.extra.weight" in refused(tmp_path, extra)

    reshaped = folder / "reshaped.ckpt"
    torch.save({**state, "mid.attn_1.q.weight": torch.zeros(64, 32, 1, 1)}, reshaped)
    assert "mid.attn_1.q.weight is (64, 32, 1, 1), this U-Net has (64, 64, 1, 1)" in refused(tmp_path, reshaped)

    foreign = tmp_path / "foreign.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, foreign)
    said = refused(tmp_path, foreign)
    assert "none of diffusers, pytorch-ddpm, pytorch-diffusion, ddim, improved-diffusion" in said
    assert "encoder.weight" in said

    assert "not ddim" in refused(tmp_path, folder / "extra.ckpt", "--format", "ddim")


def test_flags_that_do_not_describe_the_weights_are_refused(tmp_path):
    net = diffusers_net(tmp_path / "diffusers", IMPROVED_NET, seed=7)
    source = tmp_path / "model.pt"
    torch.save(improved_state(net, heads=4), source)
    said = refused(tmp_path, source, "--flags", IMPROVED_FLAGS.replace("--num_res_blocks 2", "--num_res_blocks 3"))
    assert "--num_res_blocks is 3 but the weights have 2" in said
    said = refused(tmp_path, source, "--flags", IMPROVED_FLAGS + " --use_scale_shift_norm False")
    assert "--use_scale_shift_norm is False but the weights have True" in said
    assert "unknown improved-diffusion flag --heads" in refused(tmp_path, source, "--flags", IMPROVED_FLAGS + " --heads 4")
    assert "--class_cond True is not supported" in refused(tmp_path, source, "--flags",
                                                          IMPROVED_FLAGS + " --class_cond True")
    other = tmp_path / "model-1.ckpt"
    torch.save(ddpm_tf_state(diffusers_net(tmp_path / "tf", DDPM_TF_NET)), other)
    assert "--flags are improved-diffusion's" in refused(tmp_path, other, "--image-size", "32", "--flags",
                                                        IMPROVED_FLAGS)
