"""``ddpm import``: published weights in the layouts DDPM's releases reach users in, against their own code.

diffusers: for each of the two DDPM model configurations on the Hub (``google/ddpm-cifar10-32``, and the one that
``ddpm-church-256``, ``ddpm-bedroom-256``, ``ddpm-cat-256`` and ``ddpm-celebahq-256`` share; their ``config.json`` and
``scheduler_config.json`` written out below), a ``UNet2DModel`` built from that config with random weights (seeded;
nothing downloaded) is saved with ``save_pretrained`` and imported with the command line; then from the same x_T and
the same noise, our imported network and process and diffusers' network and ``DDPMScheduler`` take a few reverse
steps in float32: at each, the two networks' outputs and the two x_{t−1} must agree within 1e-4. At 32² the two
networks are also compared in float64, within 1e-5 (:func:`compare_networks_in_float64` says why not in float32).

pytorch-ddpm: its ``ckpt.pt`` layout (``net_model``, ``ema_model``; its module names) is built here by
:class:`PytorchDdpmLayout`, a network written for this test from the layout's description (a sinusoid table of
interleaved sin/cos with frequencies 10000^(-i/half), ``block1``/``temb_proj``/``block2``/``shortcut``/``attn``
residual blocks, ``main`` convolutions for resampling, ``head``/``tail``), not pytorch-ddpm's code.
"""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from torch import nn
from torch.nn import functional as F

from ddpm.checkpoint import load_checkpoint, load_for_sampling
from ddpm.datasets import prepare_dataset
from ddpm.pretrained import import_checkpoint, resolve_source
from ddpm.pretrained.diffusers import GOOGLE_DDPM_CIFAR10_UNET
from ddpm.unet import timestep_embedding

from conftest import run_import, save_diffusers_folder

#: The Hub's configs of the DDPM conversions (diffusers 0.0.4 era; keys diffusers has added since take their
#: defaults). The four 256² models share one architecture: the 256² U-Net of DDPM Appendix B.
CIFAR10_UNET = GOOGLE_DDPM_CIFAR10_UNET
LSUN_UNET = {
    **CIFAR10_UNET, "block_out_channels": [128, 128, 256, 256, 512, 512], "sample_size": 256,
    "down_block_types": ["DownBlock2D"] * 4 + ["AttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "AttnUpBlock2D"] + ["UpBlock2D"] * 4,
}
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
             "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}
CONFIGS = {
    "ddpm-cifar10-32": (CIFAR10_UNET, {**SCHEDULER, "variance_type": "fixed_large"}),
    # ddpm-church-256, -bedroom-256, -cat-256 and -celebahq-256 publish the same two files (config and scheduler):
    # one case imports that configuration (a case per release repeated it, a minute of CI for nothing)
    "ddpm-church-256": (LSUN_UNET, SCHEDULER),
}
STEPS = 2  # reverse steps compared per model (each is two forward passes of a 114M-parameter network at 256²)




def their_scheduler(folder: Path) -> DDPMScheduler:
    """The folder's scheduler, its ᾱ table in float64 (diffusers keeps float32: near t = 0 its posterior
    coefficients then differ from any float64 implementation by ~1e-4; tests/test_sampler_parity.py says more)."""
    scheduler = DDPMScheduler.from_pretrained(folder)
    scheduler.alphas_cumprod = torch.cumprod(1.0 - scheduler.betas.double(), dim=0)
    scheduler.set_timesteps(scheduler.config.num_train_timesteps)
    return scheduler


class _OurEmbedding(nn.Module):
    def __init__(self, ch, shift):
        super().__init__()
        self.ch, self.shift = ch, shift

    def forward(self, t):
        return timestep_embedding(t, self.ch, self.shift)


def compare_networks_in_float64(model, net: UNet2DModel, tol: float) -> None:
    """The import is exact up to float rounding: both networks in float64 on the same inputs, within ``tol``.

    Both codes compute the sinusoidal timestep embedding in float32, rounding differently: at t = 999 each is up to
    2.7e-5 from the exact value and they differ by 2.9e-5, which moves a 32² output by up to ~2e-5, in float32 and
    in float64 alike. So the embeddings are compared on their own (every t, within that rounding), and the networks
    with diffusers' embedding replaced by ours: everything after it must agree to float64 rounding."""
    steps = torch.arange(1000)
    ours_emb = timestep_embedding(steps, model.config.ch, model.config.temb_freq_shift)
    torch.testing.assert_close(ours_emb, net.time_proj(steps), rtol=0, atol=5e-5)
    size, channels = net.config.sample_size, net.config.in_channels
    x = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([1, 999])
    twin = copy.deepcopy(net).double()
    twin.time_proj = _OurEmbedding(model.config.ch, model.config.temb_freq_shift)
    with torch.no_grad():
        ours, theirs = copy.deepcopy(model).double()(x, t), twin(x, t).sample
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tol)


def compare_reverse_steps(net: UNet2DModel, folder: Path, model, diffusion, *, steps: int) -> None:
    """From the same x_T and noise, in float32: our imported network and process, and diffusers' network and
    ``DDPMScheduler`` (from the folder's own scheduler config); both networks' outputs and both x_{t−1} within 1e-4."""
    scheduler = their_scheduler(folder)
    size, channels = net.config.sample_size, net.config.in_channels
    x = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(1))
    ours_gen, their_gen = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    spread = []
    for timestep in scheduler.timesteps[:steps].tolist():
        t = torch.tensor([timestep])
        with torch.no_grad():
            ours_eps, their_eps = model(x, t), net(x, t).sample
            torch.testing.assert_close(ours_eps, their_eps, rtol=0, atol=1e-4,
                                       msg=lambda m: f"network output at t = {timestep}: {m}")
            spread.append(float(their_eps.std()))
            ours = diffusion.p_sample(lambda *_: ours_eps, x, t, generator=[ours_gen], clip_denoised=True)["sample"]
            theirs = scheduler.step(their_eps, timestep, x, generator=their_gen).prev_sample
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4, msg=lambda m: f"x_(t-1) at t = {timestep}: {m}")
        x = ours
    assert min(spread) > 0.5, f"the network's output is ~0 (std {spread}): the comparison would be blind"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_each_diffusers_ddpm_release_imports_and_steps_as_diffusers(tmp_path, name):
    unet_config, scheduler_config = CONFIGS[name]
    folder, checkpoint = tmp_path / name, tmp_path / "run" / "checkpoint.pt"
    net = save_diffusers_folder(folder, unet_config, scheduler_config)
    shown = json.loads(run_import(folder, "--out", checkpoint).stdout)
    assert shown["format"] == "diffusers" and shown["setting"] == (
        f"linear-T1000-eps-{'fixedlarge' if scheduler_config['variance_type'] == 'fixed_large' else 'fixedsmall'}"
        f"-mse-s0")
    state = load_checkpoint(checkpoint)
    assert state["source"]["files"]["diffusion_pytorch_model.safetensors"] == shown["files"][
        "diffusion_pytorch_model.safetensors"] and len(shown["files"]["config.json"]) == 64
    assert state["unet"]["norm_eps"] == 1e-6 and state["unet"]["downsample_padding"] == "same"
    assert json.loads((checkpoint.parent / "setting.json").read_text())["name"] == shown["setting"]
    model, diffusion, _ = load_for_sampling(checkpoint)
    small = unet_config["sample_size"] == 32
    if small:
        compare_networks_in_float64(model, net, tol=1e-5)
    compare_reverse_steps(net, folder, model, diffusion, steps=4 if small else STEPS)
    for big in (checkpoint, folder / "diffusion_pytorch_model.safetensors"):  # 434 MB each at 256²
        big.unlink()


def test_a_pipeline_folder_with_old_attention_names_and_a_bin_file_imports(tmp_path):
    """The Hub's folders: a DDPMPipeline with ``unet/`` and ``scheduler/``, weights in ``.bin`` with the attention
    layers under diffusers' names before 0.14 (query, key, value, proj_attn), and sin/cos flipped (another config)."""
    config = {**CIFAR10_UNET, "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
              "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "sample_size": 16, "layers_per_block": 1,
              "flip_sin_to_cos": True, "freq_shift": 0, "attention_head_dim": 16}
    net = save_diffusers_folder(tmp_path / "saved", config, SCHEDULER)
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for key, value in net.state_dict().items():
        for new, before in old.items():
            key = key.replace(f".{new}.", f".{before}.")
        state[key] = value
    assert any(".query." in k for k in state)
    (tmp_path / "pipe" / "unet").mkdir(parents=True)
    torch.save(state, tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.bin")
    (tmp_path / "pipe" / "unet" / "config.json").write_text(json.dumps(config))
    DDPMScheduler.from_config({**SCHEDULER, "variance_type": "fixed_large"}).save_config(tmp_path / "pipe" / "scheduler")
    checkpoint = tmp_path / "checkpoint.pt"
    import_checkpoint(tmp_path / "pipe", checkpoint)
    model, _, state = load_for_sampling(checkpoint)
    assert state["unet"]["num_heads"] == 4  # 64 channels / 16 per head at the attention resolution
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), net(x, t).sample, rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# pytorch-ddpm's layout


def interleaved_sinusoids(T: int, dim: int) -> torch.Tensor:
    """sin(t f_0), cos(t f_0), sin(t f_1), …, f_i = 10000^(-2i/dim): the table pytorch-ddpm's embedding looks up."""
    freqs = torch.exp(-np.log(10000.0) * torch.arange(0, dim, 2).float() / dim)
    args = torch.arange(T).float()[:, None] * freqs[None, :]
    return torch.stack([args.sin(), args.cos()], dim=2).reshape(T, dim)


class _Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.group_norm = nn.GroupNorm(32, c)
        self.proj_q, self.proj_k, self.proj_v, self.proj = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.group_norm(x)
        q, k, v = (m(y).flatten(2) for m in (self.proj_q, self.proj_k, self.proj_v))  # (b, c, hw)
        weights = torch.softmax(q.transpose(1, 2) @ k / c ** 0.5, dim=-1)  # (b, hw, hw)
        return x + self.proj((v @ weights.transpose(1, 2)).reshape(b, c, h, w))


class _Residual(nn.Module):
    def __init__(self, cin, cout, tdim, attn):
        super().__init__()
        self.block1 = nn.Sequential(nn.GroupNorm(32, cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.temb_proj = nn.Sequential(nn.SiLU(), nn.Linear(tdim, cout))
        self.block2 = nn.Sequential(nn.GroupNorm(32, cout), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(cout, cout, 3, padding=1))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.attn = _Attention(cout) if attn else nn.Identity()

    def forward(self, x, temb):
        h = self.block1(x) + self.temb_proj(temb)[:, :, None, None]
        return self.attn(self.block2(h) + self.shortcut(x))


class _Resample(nn.Module):
    def __init__(self, c, down):
        super().__init__()
        self.down = down
        self.main = nn.Conv2d(c, c, 3, stride=2 if down else 1, padding=1)

    def forward(self, x, temb):
        return self.main(x if self.down else F.interpolate(x, scale_factor=2, mode="nearest"))


class PytorchDdpmLayout(nn.Module):
    """A U-Net whose state dict has pytorch-ddpm's names and whose forward is that code's computation."""

    def __init__(self, T=1000, ch=128, ch_mult=(1, 2, 2, 2), attn=(1,), num_res_blocks=2):
        super().__init__()
        tdim = 4 * ch
        self.time_embedding = nn.Module()
        self.time_embedding.timembedding = nn.Sequential(
            nn.Embedding.from_pretrained(interleaved_sinusoids(T, ch)), nn.Linear(ch, tdim), nn.SiLU(),
            nn.Linear(tdim, tdim))
        self.head = nn.Conv2d(3, ch, 3, padding=1)
        self.downblocks, skips, now = nn.ModuleList(), [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                self.downblocks.append(_Residual(now, ch * mult, tdim, level in attn))
                now = ch * mult
                skips.append(now)
            if level != len(ch_mult) - 1:
                self.downblocks.append(_Resample(now, down=True))
                skips.append(now)
        self.middleblocks = nn.ModuleList([_Residual(now, now, tdim, True), _Residual(now, now, tdim, False)])
        self.upblocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                self.upblocks.append(_Residual(skips.pop() + now, ch * mult, tdim, level in attn))
                now = ch * mult
            if level != 0:
                self.upblocks.append(_Resample(now, down=False))
        self.tail = nn.Sequential(nn.GroupNorm(32, now), nn.SiLU(), nn.Conv2d(now, 3, 3, padding=1))

    def forward(self, x, t):
        temb = self.time_embedding.timembedding(t)
        hs = [self.head(x)]
        for layer in self.downblocks:
            hs.append(layer(hs[-1], temb))
        h = hs[-1]
        for layer in self.middleblocks:
            h = layer(h, temb)
        for layer in self.upblocks:
            h = layer(torch.cat([h, hs.pop()], 1) if isinstance(layer, _Residual) else h, temb)
        return self.tail(h)


def pytorch_ddpm_networks():
    nets = []
    for seed in (0, 1):  # net_model and ema_model differ
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = PytorchDdpmLayout()
            with torch.no_grad():
                for name, p in net.named_parameters():
                    if "timembedding.0" not in name:
                        p.add_(0.05 * torch.randn_like(p))
        nets.append(net.eval().requires_grad_(False))
    return nets


def test_a_pytorch_ddpm_checkpoint_imports_with_both_weights(tmp_path):
    raw, ema = pytorch_ddpm_networks()
    ckpt = tmp_path / "logs" / "DDPM_CIFAR10_EPS" / "ckpt.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"net_model": raw.state_dict(), "ema_model": ema.state_dict(), "step": 800000,
                "x_T": torch.randn(4, 3, 32, 32)}, ckpt)
    (ckpt.parent / "flagfile.txt").write_text("--T=1000\n--beta_1=0.0001\n--beta_T=0.02\n--img_size=32\n"
                                              "--mean_type=epsilon\n--var_type=fixedlarge\n--ch=128\n")
    out = tmp_path / "run" / "checkpoint.pt"
    shown = json.loads(run_import(ckpt, "--out", out).stdout)
    assert shown["format"] == "pytorch-ddpm" and shown["weights"] == "ema and raw"
    assert set(shown["files"]) == {"ckpt.pt", "flagfile.txt"}
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([0, 999])
    for use_ema, theirs in ((True, ema), (False, raw)):
        model, diffusion, state = load_for_sampling(out, use_ema=use_ema)
        with torch.no_grad():
            torch.testing.assert_close(model(x, t), theirs(x, t), rtol=0, atol=1e-5)
    assert state["unet"]["temb_freq_shift"] == 0 and state["unet"]["downsample_padding"] == "symmetric"
    assert diffusion.num_timesteps == 1000 and state["config"]["var_type"] == "fixedlarge"
    with torch.no_grad():  # the two weights really differ: each was read from its own key
        assert (raw(x, t) - ema(x, t)).abs().max() > 0.1


# ----------------------------------------------------------------------------------------------------------------
# Refused


SMALL = {**CIFAR10_UNET, "block_out_channels": [32, 64], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
         "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "sample_size": 8, "layers_per_block": 1}


def refused(tmp_path, source, *args):
    out = tmp_path / "refused" / "checkpoint.pt"
    result = run_import(source, "--out", out, *args, check=False)
    assert result.returncode != 0
    assert not out.exists() and not any(out.parent.glob("*")) if out.parent.exists() else True
    return result.stderr.strip().splitlines()[-1]


def test_weights_of_another_architecture_are_refused_with_what_differs(tmp_path):
    folder = tmp_path / "m"
    save_diffusers_folder(folder, SMALL, SCHEDULER)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [64, 128]}))  # weights: 32, 64
    message = refused(tmp_path, folder)
    assert "does not fit the U-Net its config describes" in message and "of another shape" in message
    assert "time_embedding.linear_1.weight is (128, 32), this U-Net has (256, 64)" in message

    (folder / "config.json").write_text(json.dumps({**config, "resnet_time_scale_shift": "scale_shift"}))
    assert "resnet_time_scale_shift = 'scale_shift' is not supported" in refused(tmp_path, folder)

    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    assert "is another architecture" in refused(tmp_path, folder)

    wrong = tmp_path / "improved" / "model.pt"  # a part of a state dict in improved-diffusion's names
    wrong.parent.mkdir()
    torch.save({"input_blocks.0.0.weight": torch.zeros(128, 3, 3, 3)}, wrong)
    said = refused(tmp_path, wrong)
    assert "none of diffusers, pytorch-ddpm" in said and "it holds a dict of input_blocks.0.0.weight" in said


def test_a_truncated_safetensors_file_is_refused(tmp_path):
    folder = tmp_path / "m"
    save_diffusers_folder(folder, SMALL, SCHEDULER)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    message = refused(tmp_path, folder)
    assert "diffusion_pytorch_model.safetensors" in message and "truncated or damaged" in message


def test_a_config_naming_unknown_blocks_is_refused(tmp_path):
    folder = tmp_path / "m"
    save_diffusers_folder(folder, SMALL, SCHEDULER)
    config = json.loads((folder / "config.json").read_text())
    config["down_block_types"] = ["DownBlock2D", "CrossAttnDownBlock2D"]
    (folder / "config.json").write_text(json.dumps(config))
    message = refused(tmp_path, folder)
    assert "CrossAttnDownBlock2D" in message and "down_block_types" in message


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data") / "digits"
    prepare_dataset("digits", folder)
    return folder


def test_a_source_that_is_not_the_setting_or_the_data_is_refused(tmp_path, prepared_digits):
    folder = tmp_path / "m"
    save_diffusers_folder(folder, {**SMALL, "in_channels": 1, "out_channels": 1},
                          {**SCHEDULER, "num_train_timesteps": 100})
    axes = ["--schedule", "linear", "--mean-type", "eps", "--var-type", "fixedlarge", "--loss-type", "mse",
            "--seed", "0"]
    message = refused(tmp_path, folder, "--T", "1000", *axes)
    assert "is not the setting linear-T1000-eps-fixedlarge-mse-s0" in message and "T 100" in message
    assert "give all of the setting's axes" in refused(tmp_path, folder, "--T", "100")
    # The source's linear schedule at T = 100 is 1e-4 → 0.02 in 100 steps: this project's linear schedule, unscaled.
    out = tmp_path / "ok" / "checkpoint.pt"
    shown = json.loads(run_import(folder, "--out", out, "--T", "100", *axes, "--data", prepared_digits).stdout)
    assert shown["setting"] == "linear-T100-eps-fixedlarge-mse-s0"  # the source's fixed_small: a sampling choice
    assert any("fixed" in note for note in shown["notes"])
    rgb = tmp_path / "rgb"
    save_diffusers_folder(rgb, SMALL, SCHEDULER)
    message = refused(tmp_path, rgb, "--data", prepared_digits)
    assert "generates images of shape [3, 8, 8]" in message and "[1, 8, 8]" in message


def test_a_hub_id_is_fetched_with_huggingface_hub_and_a_failure_says_what_to_do(monkeypatch):
    import huggingface_hub

    asked = []

    def offline(repo_id, **kwargs):
        asked.append((repo_id, kwargs))
        raise OSError("Cannot reach https://huggingface.co: no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="huggingface-cli download google/ddpm-cifar10-32"):
        resolve_source("google/ddpm-cifar10-32", revision="main")
    assert asked[0][0] == "google/ddpm-cifar10-32" and asked[0][1]["revision"] == "main"
    assert asked[0][1]["allow_patterns"] == ["*.json", "diffusion_pytorch_model.safetensors",
                                             "unet/diffusion_pytorch_model.safetensors"]
    with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a Hugging Face model id"):
        resolve_source("/no/such/ckpt.pt")


def test_a_hub_model_without_safetensors_is_fetched_with_its_bin_weights(monkeypatch, tmp_path):
    """Only one weights file is fetched: the safetensors, or the .bin where the model has none (as the Hub would
    answer: a snapshot with the files that match, here a folder that has only the .bin)."""
    import huggingface_hub

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    (hub / "diffusion_pytorch_model.bin").write_bytes(b"weights")
    asked = []

    def snapshot(repo_id, *, revision=None, allow_patterns=()):
        asked.append(allow_patterns[1])
        return str(hub)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert resolve_source("google/ddpm-church-256") == hub
    assert asked == ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"]
