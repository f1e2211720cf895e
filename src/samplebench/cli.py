"""The command line: ``samplebench sample|solvers|models`` (``sample`` is an alias of ``samplebench sample``).

Bad input prints one line, ``samplebench: error: ...``, and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage too)
        raise UsageError(message)


def _int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {v!r}") from None


def _add_sample_args(p: argparse.ArgumentParser) -> None:
    from .models import DEFAULT_MODEL

    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"embedded model name, diffusers hub id or local directory (default: {DEFAULT_MODEL})")
    p.add_argument("--solver", default="dpmpp-2m", help="a registered solver (see 'samplebench solvers')")
    p.add_argument("--nfe", type=_int, default=10, help="network evaluations per sample, exactly")
    p.add_argument("--num", type=_int, default=16, help="number of images")
    p.add_argument("--seed", type=_int, default=0, help="image i uses seed + i")
    p.add_argument("--batch-size", type=_int, default=64)
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--time-grid", default=None,
                   help="logsnr, time-uniform, time-quadratic, karras, or a comma-separated list of decreasing times "
                        "(default: the solver's own)")
    p.add_argument("--class-label", type=_int, default=None,
                   help="class for class-conditional models (default: seed mod num_classes per image)")
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--prompt", default=None, help="text prompt for text-to-image models")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="network dtype: float32, float16 (cuda), bfloat16")
    p.add_argument("--save-npz", action="store_true", help="also write the raw float arrays to samples.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="samplebench", description="Sample from diffusion models with fast solvers.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_sample_args(sub.add_parser("sample", help="generate images"))
    sub.add_parser("solvers", help="list the registered solvers")
    sub.add_parser("models", help="list the embedded models")
    train = sub.add_parser("train", help="train an embedded model from its recipe")
    train.add_argument("recipe", help="digits-unet, digits-classifier or digits-gmm")
    train.add_argument("--out", required=True, help="output directory (a checkpoint there is resumed)")
    train.add_argument("--seed", type=_int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument("--steps", type=_int, default=None, help="optimiser steps (default: the recipe's)")
    return parser


def _sample(args: argparse.Namespace) -> int:
    from .sampling import SampleConfig, run_sample

    config = SampleConfig(model=args.model, solver=args.solver, nfe=args.nfe, num=args.num, seed=args.seed,
                          batch_size=args.batch_size, time_grid=args.time_grid, class_label=args.class_label,
                          guidance_scale=args.guidance_scale, prompt=args.prompt,
                          negative_prompt=args.negative_prompt, device=args.device, dtype=args.dtype,
                          save_npz=args.save_npz)
    summary = run_sample(config, args.out, progress=not args.quiet)
    print(json.dumps({k: summary[k] for k in ("model", "solver", "nfe_per_sample", "steps", "wall_time_s")}
                     | {"out": args.out}))
    return 0


def _solvers() -> int:
    from .samplers import SOLVERS, solver_names

    for name in solver_names():
        s = SOLVERS[name]
        kind = "stochastic" if s.stochastic else f"order {s.order}"
        print(f"{name:10s}  {s.nfe_per_step} NFE/step  {kind:10s}  grid {s.default_grid:13s}  {s.description}")
    return 0


def _models() -> int:
    from .models.embedded import DEFAULT_MODEL, EMBEDDED

    for name, m in EMBEDDED.items():
        print(f"{name:12s}  {m.description}{'  (default)' if name == DEFAULT_MODEL else ''}")
    print("any diffusers pipeline: a hub id (owner/name) or a local directory saved with save_pretrained")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "sample":
            return _sample(args)
        if args.command == "solvers":
            return _solvers()
        if args.command == "train":
            from .train import train

            print(json.dumps(train(args.recipe, args.out, seed=args.seed, device=args.device, steps=args.steps)))
            return 0
        return _models()
    except UsageError as e:
        print(f"samplebench: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("samplebench: interrupted", file=sys.stderr)
        return 130


def sample_main(argv: Sequence[str] | None = None) -> int:
    """The ``sample`` entry point: ``samplebench sample`` with the same arguments."""
    return main(["sample", *(sys.argv[1:] if argv is None else argv)])
