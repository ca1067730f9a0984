import pytest
import torch

from ddpm.unet import PRESETS, UNet, count_parameters, create_model, preset, timestep_embedding


def test_cifar10_preset_has_the_papers_35_7M_parameters():
    model = create_model("cifar10")
    # 35,746,307: the count of the official TF model (the paper's "35.7M").
    assert count_parameters(model) == 35_746_307


def test_256_preset_has_about_114M_parameters():
    assert count_parameters(create_model("256")) == 113_673_219  # the paper's "114M"


def test_cifar10_preset_layout():
    config = preset("cifar10")
    assert (config.ch, config.ch_mult, config.num_res_blocks, config.attn_resolutions, config.dropout) == (
        128, (1, 2, 2, 2), 2, (16,), 0.1)
    model = create_model("cifar10")
    attention_sizes = set()
    hooks = [m.register_forward_hook(lambda m, i, o: attention_sizes.add(o.shape[-1]))
             for name, m in model.named_modules() if type(m).__name__ == "AttnBlock"]
    model(torch.zeros(1, 3, 32, 32), torch.tensor([0]))
    for h in hooks:
        h.remove()
    assert attention_sizes == {16, 4}  # 16×16 as in the paper, plus the middle block at the lowest resolution


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_small_presets_run_and_learned_sigma_doubles_channels(name):
    config = PRESETS[name]
    size, channels = config.image_size, config.in_channels
    x = torch.randn(2, channels, size, size)
    t = torch.tensor([0, 999])
    assert create_model(name)(x, t).shape == x.shape
    assert create_model(name, learn_sigma=True)(x, t).shape == (2, 2 * channels, size, size)


def test_output_layer_starts_near_zero_and_depends_on_t():
    model = create_model("tiny").eval()
    torch.nn.init.normal_(model.conv_out.weight)
    x = torch.randn(1, 1, 8, 8)
    a, b = model(x, torch.tensor([1])), model(x, torch.tensor([500]))
    assert not torch.allclose(a, b)  # the timestep embedding reaches the output
    fresh = create_model("tiny")
    assert fresh(x, torch.tensor([1])).abs().max() < 1e-3  # zero-initialised output conv, as in the official code


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 1, 10]), 8)
    assert emb.shape == (3, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert emb[2, 0].item() == pytest.approx(torch.sin(torch.tensor(10.0)).item())


def test_bad_sizes_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="image_size 30 .* multiple of 8"):
        create_model("cifar10", image_size=30)
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*cifar10"):
        create_model("huge")
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, 8, 8\)"):
        create_model("tiny")(torch.zeros(1, 3, 8, 8), torch.tensor([0]))
    with pytest.raises(ValueError, match="multiples of 32"):
        UNet(preset("tiny", ch=48))


def test_attention_heads_must_divide_the_channels():
    with pytest.raises(ValueError, match="num_heads=3 must divide the 128 channels"):
        create_model("small", num_heads=3)
    model = create_model("small", num_heads=4)
    assert model(torch.randn(2, 1, 16, 16), torch.tensor([0, 5])).shape == (2, 1, 16, 16)
