"""Per-sample noise on a device (issue 28, :class:`ddpm.noise.SampleNoise`): that it is deterministic there and the
same in any batches, that whole sample sets are, and what a draw costs against the per-sample CPU generators it
replaced (each image's draw made on the CPU and copied to the device at every step). A JSON record.

    python3 benchmarks/device_noise.py --device cuda --out $OUT       # on the GPU machine
    python3 benchmarks/device_noise.py --device cpu --out /tmp/noise  # a check here
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

import numpy as np
import torch

from ddpm.bench import seconds_per_call
from ddpm.checkpoint import build
from ddpm.noise import SampleNoise
from ddpm.samplers import SamplerPoint, sample_loop
from ddpm.settings import TrainConfig

SHAPE = (3, 32, 32)  # CIFAR-10's


def cpu_generators_draw(seed: int, indices, device) -> torch.Tensor:
    """The scheme before issue 28: one CPU generator per image, each draw copied to the device."""
    generators = []
    for index in indices:
        state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
        generators.append(torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1])))
    return lambda: torch.stack([torch.randn(SHAPE, generator=g) for g in generators]).to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch", type=int, default=128)
    options = parser.parse_args()
    device, batch = torch.device(options.device), options.batch
    result = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": str(device), "torch": torch.__version__, "batch": batch, "image_shape": list(SHAPE),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}

    whole = SampleNoise(7, range(batch))
    together = [whole.randn((batch, *SHAPE), device=device) for _ in range(5)]
    again = SampleNoise(7, range(batch))
    result["draws_repeat_bitwise"] = all(torch.equal(a, again.randn((batch, *SHAPE), device=device)) for a in together)
    chunks = [range(i, min(i + 7, batch)) for i in range(0, batch, 7)]
    streams = [SampleNoise(7, chunk, lookahead=1) for chunk in chunks]
    pieces = [torch.cat([s.randn((len(c), *SHAPE), device=device) for s, c in zip(streams, chunks)]) for _ in range(5)]
    result["any_batches_bitwise"] = all(torch.equal(a, b) for a, b in zip(together, pieces))
    values = torch.cat(together).double()
    result["mean"], result["std"] = float(values.mean()), float(values.std())

    torch.manual_seed(0)
    model, diffusion = build(TrainConfig(T=100), in_channels=1, image_size=8)  # the tiny preset, random weights
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.abs().max() < 1e-3:
                parameter.normal_(0, 0.05)
    model = model.to(device).eval()
    point, shape = SamplerPoint("ancestral", 20), (1, 8, 8)
    first = sample_loop(model, diffusion, point, (16, *shape), SampleNoise(3, range(16)), device=device)
    second = sample_loop(model, diffusion, point, (16, *shape), SampleNoise(3, range(16)), device=device)
    parts = torch.cat([sample_loop(model, diffusion, point, (4, *shape), SampleNoise(3, range(i, i + 4)), device=device)
                       for i in range(0, 16, 4)])
    result["sample_sets_repeat_bitwise"] = bool(torch.equal(first, second))
    result["sample_sets_in_other_batches_max_difference"] = float((first - parts).abs().max())

    count, one_by_one = 50, SampleNoise(7, range(batch), lookahead=1)

    def per_s(draw) -> float:  # one untimed draw first, then count timed ones
        return 1 / seconds_per_call(draw, count, 1, device)

    rates = {"sample_noise": per_s(lambda: whole.randn((batch, *SHAPE), device=device)),
             "sample_noise_no_lookahead": per_s(lambda: one_by_one.randn((batch, *SHAPE), device=device)),
             "cpu_generators_copied": per_s(cpu_generators_draw(7, range(batch), device))}
    result["draws_per_s"] = rates
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "noise.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
