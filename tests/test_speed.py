"""The speed-ups change how the network runs, never what the diffusion code computes; ``ddpm bench`` measures them
against the plain path in the same run."""

import json
import warnings

import pytest
import torch

from ddpm.bench import RATIO_KEYS, bits_per_dim_difference, run_bench
from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.schedules import make_betas
from ddpm.speed import FastForward, Speed, ema_update, make_optimizer
from ddpm.settings import TrainConfig
from ddpm.train import train
from ddpm.unet import create_model


def test_speed_parses_plain_auto_and_lists_and_names_a_bad_one():
    assert Speed.parse("plain") == Speed() and Speed().describe() == "plain"
    assert Speed.parse("auto", "cpu") == Speed(fused_adam=True, foreach_ema=True)
    assert Speed.parse("auto", "cuda") == Speed(**{name: True for name in Speed.names()})
    assert Speed.parse("bf16, channels_last") == Speed(bf16=True, channels_last=True)
    with pytest.raises(ValueError, match="unknown speed-up 'fp8'.*bf16"):
        Speed.parse("bf16,fp8")
    with pytest.raises(ValueError, match="'cuda_graph' needs 'compile'"):
        Speed.parse("cuda_graph")


def test_multi_tensor_ema_is_the_same_lerp_bit_for_bit():
    torch.manual_seed(0)
    model, ema_loop, ema_foreach = (create_model("tiny", in_channels=1, image_size=8) for _ in range(3))
    ema_foreach.load_state_dict(ema_loop.state_dict())
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema_update(ema_loop, model, 0.9, Speed())
        ema_update(ema_foreach, model, 0.9, Speed(foreach_ema=True))
    for (name, a), b in zip(ema_loop.state_dict().items(), ema_foreach.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(next(ema_loop.parameters()), next(model.parameters()))  # it moved, not copied


def test_fused_adam_takes_the_same_steps_as_the_default_within_rounding():
    torch.manual_seed(0)
    models = [create_model("tiny", in_channels=1, image_size=8) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    initial = {name: p.detach().clone() for name, p in models[0].named_parameters()}
    optimizers = [make_optimizer(models[0].parameters(), 1e-3, Speed()),
                  make_optimizer(models[1].parameters(), 1e-3, Speed(fused_adam=True))]
    assert optimizers[1].defaults.get("fused") or optimizers[1].defaults.get("foreach")
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    for _ in range(3):
        for model, optimizer in zip(models, optimizers):
            optimizer.zero_grad()
            model(x, t).square().mean().backward()
            optimizer.step()
    moved = max((a - initial[name]).abs().max() for name, a in models[0].named_parameters())
    assert moved > 1e-3  # the steps did move the weights
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        # each step moves a weight by about lr = 1e-3; the two kernels round differently, by far less than 1 %
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_bf16_runs_the_network_in_bf16_but_hands_fp32_to_the_diffusion_math():
    torch.manual_seed(0)
    model = create_model("tiny", in_channels=1, image_size=8).eval()
    seen = []
    model.conv_in.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    fast = FastForward(model, Speed(bf16=True, channels_last=True), "cpu")
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    out = fast(x, t)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32 and out.is_contiguous()
    torch.testing.assert_close(out, FastForward(model, Speed(), "cpu")(x, t), rtol=0.05, atol=0.05)
    # the whole bound of a random network, 20 terms: bf16 moves it, but its mean by less than the 1e-3 bits/dim allowed
    moved = bits_per_dim_difference("tiny", Speed(bf16=True), torch.device("cpu"))
    assert 0 < moved["bpd_mean_difference"] < 1e-3 and moved["bpd_max_image_difference"] > 0
    unchanged = bits_per_dim_difference("tiny", Speed(fused_adam=True, foreach_ema=True), torch.device("cpu"))
    assert unchanged == {"bpd_mean_difference": 0.0, "bpd_max_image_difference": 0.0}  # the forward pass is the same


def test_a_failing_compile_falls_back_to_the_eager_network(monkeypatch):
    def broken_compile(module, **kwargs):
        def compiled(*args):
            raise RuntimeError("no compiler on this node")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    model = create_model("tiny", in_channels=1, image_size=8).eval()
    fast = FastForward(model, Speed(compile=True), "cpu")
    x, t = torch.randn(2, 1, 8, 8), torch.randint(0, 10, (2,))
    with pytest.warns(RuntimeWarning, match="torch.compile failed.*no compiler on this node.*eagerly"):
        out = fast(x, t)
    assert torch.equal(out, model(x, t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, then eager without trying again
        fast(x, t)


def test_training_with_speed_ups_saves_the_plain_networks_weights(tmp_path):
    config = TrainConfig(T=50, steps=4, batch_size=8, log_every=2, warmup=1)
    train(config, tmp_path / "plain", progress=False)
    train(config, tmp_path / "fast", progress=False, speed=Speed(bf16=True, channels_last=True, fused_adam=True,
                                                                  foreach_ema=True))
    plain, fast = load_checkpoint(tmp_path / "plain" / "checkpoint.pt"), load_checkpoint(tmp_path / "fast" / "checkpoint.pt")
    assert plain["model"].keys() == fast["model"].keys() == fast["ema"].keys()  # no wrapper prefixes
    first = next(iter(plain["model"]))
    assert not torch.equal(plain["model"][first], fast["model"][first])  # bf16 took other steps
    losses = [json.loads(line)["loss"] for line in (tmp_path / "fast" / "metrics.jsonl").read_text().splitlines()]
    assert all(map(torch.isfinite, torch.tensor(losses)))


def test_bench_measures_both_paths_and_records_their_ratio(tmp_path, capsys):
    assert main(["bench", "--preset", "tiny", "--batch-size", "8", "--T", "50", "--steps", "2", "--warmup", "1",
                 "--out", str(tmp_path), "--speed", "foreach_ema,fused_adam", "--threads", "1", "--rounds", "2",
                 "--fid-images", "10"]) in (0, None)
    printed = json.loads(capsys.readouterr().out)
    record = json.loads(open(printed["record"]).read())
    assert record["speed"] == "fused_adam,foreach_ema" and record["device"] == "cpu" and record["preset"] == "tiny"
    for key in RATIO_KEYS:
        assert record["plain"][key] > 0 and record["optimised"][key] > 0
        assert record["ratio"][key] == pytest.approx(record["optimised"][key] / record["plain"][key])
    assert record["bpd_mean_difference"] == record["bpd_max_image_difference"] == 0.0  # forward pass untouched
    assert record["torch"] == torch.__version__ and record["parameters"] > 0
    against = record["against_straightforward"]
    assert len(against["ratio_per_round"]) == 2 and against["straightforward_train_images_per_s"] > 0
    assert against["ratio"] in against["ratio_per_round"]
    # the tiny preset's one attention block (the middle one) on the CPU's flash kernel, both paths
    assert record["attention_kernels"] == {part: {"64ch-1h-4px": ["FLASH_ATTENTION"]} for part in ("plain", "optimised")}
    fid = record["fid"]  # 10 samples and 10 reference images through Inception-v3 (offline: a stand-in, said so)
    assert (fid["samples"], fid["reference_images"], fid["metrics"]) == (10, 10, ["fid", "isc", "kid"])
    assert record["fid_images_per_s"] == pytest.approx(20 / fid["seconds"]) and "stand-in" in fid["extractor_weights"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(printed["mlflow_run_id"])
    assert run.data.tags["ddpm.kind"] == "bench" and run.info.status == "FINISHED"
    assert run.data.metrics["ratio.train_images_per_s"] == pytest.approx(record["ratio"]["train_images_per_s"])
    assert run.data.params["speed"] == "fused_adam,foreach_ema"
    assert run.data.metrics["against_straightforward.ratio"] == pytest.approx(against["ratio"])
    assert run.data.metrics["fid_images_per_s"] == pytest.approx(record["fid_images_per_s"])


def test_bench_against_diffusers_times_both_codes_on_the_same_network(tmp_path, capsys, monkeypatch):
    """``ddpm bench --against diffusers`` at the smallest size: both initialisations, the two networks computing the
    same function, each ratio the rounds' ours ÷ theirs, the record beside (not among) the rate records, MLflow.
    The network is google/ddpm-cifar10-32's architecture narrowed (2 levels of 32 and 64 channels, 16², attention
    at 8²) for CI time; the committed record is of the real one."""
    from ddpm.pretrained import diffusers as diffusers_format

    narrow = {**diffusers_format.GOOGLE_DDPM_CIFAR10_UNET, "block_out_channels": [32, 64], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
              "sample_size": 16}
    monkeypatch.setattr("ddpm.bench_diffusers.GOOGLE_DDPM_CIFAR10_UNET", narrow)
    assert main(["bench", "--against", "diffusers", "--batch-size", "2", "--sample-batch", "2", "--steps", "1",
                 "--warmup", "0", "--rounds", "2", "--sample-steps", "2", "--threads", "1",
                 "--out", str(tmp_path)]) in (0, None)
    printed = json.loads(capsys.readouterr().out)
    record = json.loads(open(printed["record"]).read())
    assert printed["record"].startswith(str(tmp_path / "diffusers")) and not list(tmp_path.glob("*.json"))
    assert record["against"] == "diffusers" and record["speed"] == "fused_adam,foreach_ema"
    assert set(record["initialisations"]) == {"diffusers", "ours"}
    for init, parts in record["initialisations"].items():
        assert parts["output_max_difference"] < 1e-4, init  # the same network, whichever side's weights
        train, sample = parts["train"], parts["sample"]
        assert set(train["images_per_s"]) == {"ours_fp32", "ours_bf16", "diffusers_fp32", "diffusers_bf16"}
        for precision in ("fp32", "bf16"):
            rates = train["images_per_s_per_round"]
            assert train["ratio_per_round"][precision] == pytest.approx(
                [a / b for a, b in zip(rates[f"ours_{precision}"], rates[f"diffusers_{precision}"])])
        rates = sample["images_per_s_per_round"]
        assert sample["ratio_per_round"]["fp32"] == pytest.approx([a / b for a, b in zip(rates["ours"], rates["diffusers"])])
        assert len(rates["ours"]) == 2
    assert record["train_ratio"] == min(p["train"]["ratio"][q] for p in record["initialisations"].values()
                                        for q in ("fp32", "bf16"))

    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(printed["mlflow_run_id"])
    assert run.data.params["against"] == "diffusers" and run.data.tags["ddpm.kind"] == "bench"
    assert run.data.metrics["train_ratio"] == pytest.approx(record["train_ratio"])
    assert run.data.metrics["ours.sample.ratio.fp32"] == pytest.approx(record["initialisations"]["ours"]["sample"]["ratio"]["fp32"])


def test_the_straightforward_reference_is_the_same_network_and_training_step():
    """The CPU comparison is fair only if the straightforward code computes the same function: with the U-Net's
    weights copied in, its output is the U-Net's (the ``small`` preset has attention), and its step trains."""
    from ddpm import straightforward

    torch.manual_seed(0)
    ours = create_model("small", dropout=0.0).eval()
    with torch.no_grad():
        for parameter in ours.parameters():  # no zero-initialised layer may hide a difference
            parameter.add_(torch.randn_like(parameter) * 0.05)
    theirs = straightforward.copy_weights(ours, straightforward.StraightforwardUNet(ours.config)).eval()
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 10, 500, 999])
    expected = ours(x, t)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(theirs(x, t), expected, rtol=1e-4, atol=1e-5)

    ema = straightforward.copy_weights(ours, straightforward.StraightforwardUNet(ours.config))
    optimizer = torch.optim.Adam(theirs.parameters(), lr=1e-3)
    betas = torch.as_tensor(make_betas("linear", 1000), dtype=torch.float32)
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    losses = [straightforward.training_step(theirs.train(), ema, optimizer, x0, betas) for _ in range(8)]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="not have the same parameters"):
        straightforward.copy_weights(create_model("tiny"), theirs)


def test_bench_refuses_bad_arguments_by_name():
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        run_bench("huge")
    with pytest.raises(ValueError, match="steps=0"):
        run_bench("tiny", steps=0)
