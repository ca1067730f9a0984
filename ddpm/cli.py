"""The ``ddpm`` command line: every pipeline step runs by hand too."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import TrainConfig

    for f in fields(TrainConfig):
        default = f.default if f.default is not MISSING else None
        kind = {"int": int, "float": float, "bool": _bool}.get(f.type.split(" |")[0], str)  # "float | None" → float
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                            help=f"default: {default}")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    config = TrainConfig.from_dict({f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    final = train(config, args.out, device=args.device)
    print(json.dumps(final))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import sample_checkpoint, save_grid

    images = sample_checkpoint(args.checkpoint, start=args.start, count=args.count, batch_size=args.batch_size,
                               seed=args.seed, steps=args.steps, device=args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=images, indices=np.arange(args.start, args.start + args.count))
    if args.grid:
        save_grid(images, args.grid)
    print(f"wrote {len(images)} samples to {out}" + (f" and a grid to {args.grid}" if args.grid else ""))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm", description="Denoising diffusion probabilistic models: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one setting; writes checkpoint.pt and metrics.jsonl")
    p.add_argument("--out", required=True, help="output folder of the run")
    p.add_argument("--device", default="cpu")
    _add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw samples from a checkpoint, each seeded by its index")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help=".npz file for the uint8 samples")
    p.add_argument("--grid", help="also write a PNG grid here")
    p.add_argument("--start", type=int, default=0, help="index of the first sample")
    p.add_argument("--count", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="respace to this many sampling steps (default: all T)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as err:
        print(f"ddpm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
