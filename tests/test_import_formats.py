"""``ddpm import`` of the peers' own file formats, each recognised with no --format: pesser/pytorch_diffusion's
conversions of DDPM's TF checkpoints, ermongroup/ddim's ``ckpt.pth`` and openai/improved-diffusion's ``.pt``.

The files are made here in each peer's layout (read from their code: pytorch_diffusion/model.py, ddim's
runners/diffusion.py and models/ema.py, improved_diffusion/unet.py), with random weights: from a diffusers
``UNet2DModel`` configured as the peer's network, whose layers are renamed to the peer's names by this file's own
mapping. The imported network must compute diffusers' function: in float64, with the same embedding values on both
sides (the sinusoid is compared on its own: both codes round it in float32), to 1e-10 of the output's size.
"""

import copy
import json

import pytest
import torch
from torch import nn

from ddpm.checkpoint import load_checkpoint, load_for_sampling
from ddpm.unet import count_parameters, timestep_embedding

from conftest import run_import
from peer_layouts import DDPM_TF_NET, IMPROVED_NET, ddim_checkpoint, ddpm_tf_state, diffusers_net, improved_state

IMPROVED_FLAGS = ("--image_size 32 --num_channels 32 --num_res_blocks 2 --learn_sigma True --dropout 0.3 "
                  "--diffusion_steps 4000 --noise_schedule cosine")


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
    recorded = json.loads((out.parent / "setting.json").read_text())["imported"]  # what was inferred, beside the run
    assert recorded["format"] == "pytorch-diffusion" and recorded["notes"] == state["source"]["notes"]
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
    run_import(source, "--out", tmp_path / "run-raw" / "checkpoint.pt", "--image-size", "32", "--raw-weights")
    sampled, _, state = load_for_sampling(tmp_path / "run-raw" / "checkpoint.pt")  # the default: the "EMA" slot
    assert state["source"]["weights"].startswith("raw, sampled in place of the EMA")
    assert_same_function(sampled, raw_net)

    without = tmp_path / "no-ema" / "ckpt.pth"
    without.parent.mkdir()
    ddim_checkpoint(without, raw_net, None, with_ema=False)
    run_import(without, "--out", tmp_path / "run2" / "checkpoint.pt", "--image-size", "32")
    state = load_checkpoint(tmp_path / "run2" / "checkpoint.pt")
    assert any("no EMA entry" in note for note in state["source"]["notes"])
    assert_same_function(load_for_sampling(tmp_path / "run2" / "checkpoint.pt")[0], raw_net)
    assert "--raw-weights has nothing to take" in refused(tmp_path, without, "--image-size", "32", "--raw-weights")


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
