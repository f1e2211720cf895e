"""The command line: ``samplebench sample|eval|search|compare|runs|plot|refs|app|solvers|models|train`` (``sample`` is an alias of
``samplebench sample``).

Bad input prints one line, ``samplebench: error: ...``, and exits with code 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from collections.abc import Sequence

from .checks import check_out_dir, check_out_file
from .errors import UsageError
from .names import (ALIGN_METHODS, DEFAULT_MODEL, DTYPES, EXTRACTORS, GRIDS, LEARNED_GRIDS, METRICS, MODELS, MODES,
                    POTENTIALS, RECIPES, SOLVERS, UPSAMPLE_MODES)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print the usage too)
        raise UsageError(message)


def _int(v: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {v!r}") from None


def _float(v: str) -> float:
    """A finite float (NaN and infinity are refused here; each option's range is checked by its config)."""
    try:
        x = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {v!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"{v!r} is not a finite number")
    return x


def _add_sample_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--solver", default="dpmpp-2m",
                   help=f"{', '.join(SOLVERS)}; s3 (the model's shipped schedule); or {', '.join(ALIGN_METHODS)} "
                        "(alignment, below)")
    p.add_argument("--nfe", type=_int, default=None,
                   help="network evaluations per sample, exactly (default: 10, or the schedule's)")
    p.add_argument("--schedule", default=None,
                   help="a USF solver schedule JSON file (replaces --solver and --time-grid)")
    p.add_argument("--skip-rho", type=_float, default=None,
                   help="Skip-Tuning: scale the innermost UNet skip by this, linearly up to 1 at the outermost")
    p.add_argument("--exit-threshold", default=None,
                   help="DeeDiff early exit (models with uncertainty heads, e.g. digits-dit): leave the network once "
                        "the mean confidence exceeds this; or per time, e.g. 0.95@0.5,0.9")
    p.add_argument("--cache", default=None,
                   help="training-free compute skipping: deepcache:N[:BRANCH][:quad] (UNet2DModel; a full step every "
                        "N solver steps, or as many crowded mid-trajectory with quad) or fbcache:THRESHOLD "
                        "(transformers; diffusers' FirstBlockCache)")
    _add_cascade_args(p)
    p.add_argument("--num", type=_int, default=16, help="number of images")
    p.add_argument("--seed", type=_int, default=0, help="image i uses seed + i")
    p.add_argument("--seeds", type=_csv(int), default=None,
                   help="explicit seeds instead, e.g. 42,1234 (one image each; replaces --seed and --num)")
    p.add_argument("--batch-size", type=_int, default=None,
                   help="images per network batch (default 64); for dts/dts-star rollouts per iteration (default 16)")
    p.add_argument("--out", default="samples", help="output directory (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in --out: remove the files its summary.json lists, keep the rest")
    p.add_argument("--time-grid", default=None,
                   help="logsnr, time-uniform, time-quadratic, karras, flow-shift:S, gits, dmn, ld3 (learned per "
                        "model and solver: shipped for the embedded models, else computed once and cached), "
                        "pipeline (the loaded pipeline's own scheduler grid), or a comma-separated list of "
                        "decreasing times, which may "
                        "start at t = 1 on a flow path and end in 0 (the last step lands on the x0 prediction) "
                        "(default: the solver's own)")
    p.add_argument("--class-label", type=_int, default=None,
                   help="class for class-conditional models (default: seed mod num_classes per image)")
    p.add_argument("--guidance-scale", type=_float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--prompt", default=None, help="text prompt for text-to-image models")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", help="network dtype: float32, float16 (cuda), bfloat16")
    p.add_argument("--save-npz", action="store_true", help="also write the raw float arrays to samples.npz")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.add_argument_group("alignment (--solver dts, dts-star, best-of-n, fk; --nfe is one chain's length, "
                             "default 50)")
    a.add_argument("--reward", default=None, help="class:K, even, odd, or module:function")
    a.add_argument("--budget", type=_int, default=None, help="network evaluations for the whole run")
    a.add_argument("--lambda", dest="lam", type=_float, default=1.0, help="inverse temperature of p(x) exp(lambda r(x))")
    a.add_argument("--branch-steps", type=_csv(int), default=None,
                   help="chain steps where the tree branches / particles resample (default: 5 evenly from 0)")
    a.add_argument("--widen-c", type=_float, default=2.0, help="progressive widening: at most C N^alpha children")
    a.add_argument("--widen-alpha", type=_float, default=0.8)
    a.add_argument("--c-uct", type=_float, default=1.0, help="DTS* exploration constant")
    a.add_argument("--potential", default="diff", help=f"FK steering potential: {', '.join(POTENTIALS)}")


def _add_cascade_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("low-resolution cascade (LowDiff; training-free with --cascade-from)")
    g.add_argument("--cascade", default=None,
                   help="stages RES:NFE[:SOLVER] at rising resolutions, e.g. 8:6,16:4; the NFE is their sum")
    g.add_argument("--cascade-from", type=_float, default=None,
                   help="time t* in (0, 1] where each later stage starts from the renoised upsampled sample "
                        "(default for cascade models: their own, digits-lowdiff 0.3, else T = 1; required for "
                        "other models, e.g. 0.5)")
    g.add_argument("--cascade-up", default=None, help=f"upsampling: {', '.join(UPSAMPLE_MODES)} (default: bilinear)")
    g.add_argument("--cascade-noise", type=_float, default=None,
                   help="cascade models: noise augmentation time of the condition (default: the model's)")
    g.add_argument("--cascade-model", default=None,
                   help="the model of the lower-resolution stages (default: the same model)")


def _cascade_kwargs(args: argparse.Namespace) -> dict:
    return {"cascade": args.cascade, "cascade_from": args.cascade_from, "cascade_up": args.cascade_up,
            "cascade_noise": args.cascade_noise, "cascade_model": args.cascade_model}


def _csv(kind):
    def parse(v: str):
        items = [x.strip() for x in v.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty list {v!r}")
        return tuple(_int(x) for x in items) if kind is int else tuple(items)
    return parse


def _add_metric_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics", type=_csv(str), default=METRICS, help=f"comma-separated: {', '.join(METRICS)}")
    p.add_argument("--features", default="digits", help="feature extractor: digits or inception (default: digits)")
    p.add_argument("--mode", default="clean",
                   help="clean-fid resize/quantisation mode: clean, legacy_pytorch, legacy_tensorflow")
    p.add_argument("--inception-weights", default=None,
                   help="the Inception weights file (default: $SAMPLEBENCH_INCEPTION_WEIGHTS, else downloaded once)")
    p.add_argument("--db", default=None, help="results database (default: ~/.cache/samplebench/runs.db)")


def _add_filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="results database (default: ~/.cache/samplebench/runs.db)")
    p.add_argument("--model", default=None)
    p.add_argument("--solver", default=None)
    p.add_argument("--nfe", type=_int, default=None)
    p.add_argument("--features", dest="extractor", default=None)
    p.add_argument("--mode", default=None)
    p.add_argument("--ref", default=None)


def build_parser() -> argparse.ArgumentParser:
    """The parser; building it imports no torch (the names it shows are in ``names.py``)."""
    DEFAULT_MODEL_NAME = DEFAULT_MODEL
    parser = _Parser(prog="samplebench", description="Sample from diffusion models with fast solvers.",
                     formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", required=True,
                                 parser_class=functools.partial(_Parser, formatter_class=_Help))
    _add_sample_args(sub.add_parser("sample", help="generate images"))
    ev = sub.add_parser("eval", help="FID/KID/IS of solvers x NFEs (resumable; accelerate launch splits it)")
    ev.add_argument("--model", default=DEFAULT_MODEL_NAME)
    ev.add_argument("--solver", type=_csv(str), default=None, help="comma-separated solvers (default dpmpp-2m)")
    ev.add_argument("--schedule", default=None, help="a USF schedule file, or a folder of them (nfe<k>.json, e.g. a "
                    "search's OUT/s3): solver s3 samples with it instead of the model's shipped schedules")
    ev.add_argument("--nfe", type=_csv(int), default=None, help="comma-separated NFEs (default: 10, or the "
                                                                 "cascade's)")
    ev.add_argument("--num", type=_int, default=2000, help="samples per (solver, NFE)")
    ev.add_argument("--seed", type=_int, default=0, help="sample i uses seed + i")
    ev.add_argument("--ref", default=None,
                    help="reference: digits-train, digits-test, digits-gmm, gaussian, a folder, an .npz, or a name "
                         "from 'samplebench refs make' (default: the model's own)")
    ev.add_argument("--out", default=None, help="job folder: shards, features, results.json (resumed if present)")
    ev.add_argument("--folder", default=None, help="score this folder of images instead of sampling")
    ev.add_argument("--shard-size", type=_int, default=250, help="samples per shard (and per sampling batch)")
    ev.add_argument("--time-grid", default=None)
    ev.add_argument("--class-label", type=_int, default=None)
    ev.add_argument("--guidance-scale", type=_float, default=1.0)
    ev.add_argument("--prompt", default=None)
    ev.add_argument("--negative-prompt", default="", help="negative prompt (as for sample)")
    ev.add_argument("--device", default=None, help="default: accelerate's device for this process")
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--exit-threshold", default=None, help="DeeDiff early exit (as for sample)")
    ev.add_argument("--cache", default=None, help="deepcache:N[:BRANCH][:quad] or fbcache:THRESHOLD (as for sample)")
    ev.add_argument("--skip-rho", type=_float, default=None, help="Skip-Tuning (as for sample)")
    _add_cascade_args(ev)
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--json", action="store_true", help="print one JSON object per (solver, NFE) instead of a table")
    ev.add_argument("--resamples", type=_int, default=1000,
                    help="bootstrap resamples of each FID and KID interval (default 1000)")
    _add_metric_args(ev)
    se = sub.add_parser("search", help="S3: search USF solver schedules per NFE (resumable; accelerate launch splits it)")
    se.add_argument("--model", default=DEFAULT_MODEL_NAME)
    se.add_argument("--nfe", type=_csv(int), default=(3, 4, 5, 6, 7, 8, 9, 10), help="comma-separated target NFEs")
    se.add_argument("--budget", default="full", help="screening evaluations in all, split evenly over the NFEs, or a "
                    "level: quick (64-sample screenings, about 60 per NFE: stage 0 and a few bred; the times of the best 2 "
                    "refined; 1,000-sample re-scoring) or full (the default: 100 per NFE, 500-sample screenings, "
                    "5,000-sample re-scoring)")
    se.add_argument("--samples", type=_int, default=None, help="images per screening evaluation (default: the level's)")
    se.add_argument("--seed", type=_int, default=500_000, help="image i of every screening uses seed + i")
    se.add_argument("--signal", default="endpoint", help="screening signal that ranks candidates: endpoint (RMS "
                    "distance to the exact-ODE images from the same noise) or fid")
    se.add_argument("--rescore", type=_int, default=None, help="fresh images per re-scored finalist (FID)")
    se.add_argument("--rescore-seed", type=_int, default=600_000, help="image i of every re-scoring uses this + i")
    se.add_argument("--finalists", type=_int, default=None, help="best searched schedules re-scored per NFE")
    se.add_argument("--baselines", type=_int, default=None, help="best stage-0 schedules re-scored per NFE")
    se.add_argument("--ref", default=None, help="reference statistics (default: the model's own)")
    se.add_argument("--features", default="digits", help="feature extractor: digits or inception")
    se.add_argument("--mode", default="clean")
    se.add_argument("--inception-weights", default=None)
    se.add_argument("--per-stage", type=_int, default=4, help="real evaluations per NFE and stage")
    se.add_argument("--pool", type=_int, default=None, help="bred candidates per NFE and stage, ranked by the predictor")
    se.add_argument("--no-predictor", action="store_true", help="plain evolutionary search (no predictor)")
    se.add_argument("--refine", type=_int, default=None, help="best searched schedules per NFE whose times are "
                    "refined by gradient on LD3's objective (decisions kept), screened as a last stage (default: the "
                    "level's, 2 for quick; 0, none, for full or a number of screenings)")
    se.add_argument("--search-seed", type=_int, default=0)
    se.add_argument("--batch-size", type=_int, default=250)
    se.add_argument("--out", required=True, help="search folder (resumed if present); best schedules in OUT/s3")
    se.add_argument("--device", default=None)
    se.add_argument("--dtype", default="float32")
    se.add_argument("--quiet", action="store_true", help="no line per evaluation")
    runs = sub.add_parser("runs", help="list evaluation results from the database")
    _add_filters(runs)
    runs.add_argument("--csv", default=None, help="also write the rows to this CSV file")
    plot = sub.add_parser("plot", help="FID vs NFE and vs time per solver, to a PNG")
    _add_filters(plot)
    plot.add_argument("--metric", default="fid", help="fid, kid or inception_score")
    plot.add_argument("--out", default="fid.png")
    cmp_ = sub.add_parser("compare", help="A - B of two runs' FID or KID with its bootstrap interval (paired on "
                                          "shared seeds)")
    cmp_.add_argument("a", metavar="RUN_A", help="a results-database id, an eval job folder (JOB or JOB:SOLVER:NFE) "
                                                 "or a folder of images")
    cmp_.add_argument("b", metavar="RUN_B")
    cmp_.add_argument("--metric", default="fid", help="fid or kid")
    cmp_.add_argument("--ref", default=None, help="the reference (default: the runs' own)")
    cmp_.add_argument("--features", default="digits", help="for image folders: digits or inception")
    cmp_.add_argument("--mode", default="clean", help="for image folders: the clean-fid mode")
    cmp_.add_argument("--level", type=_float, default=0.95, help="interval level (default 0.95)")
    cmp_.add_argument("--resamples", type=_int, default=1000, help="bootstrap resamples (default 1000)")
    cmp_.add_argument("--inception-weights", default=None)
    cmp_.add_argument("--device", default="cpu")
    cmp_.add_argument("--db", default=None, help="results database (default: ~/.cache/samplebench/runs.db)")
    cmp_.add_argument("--json", action="store_true", help="print the result as one JSON object")
    refs = sub.add_parser("refs", help="make or list cached reference statistics")
    refs.add_argument("action", help="make or list")
    refs.add_argument("source", nargs="?", help="for make: a built-in name, a folder or an .npz")
    refs.add_argument("--name", default=None, help="name to cache it under (default: derived from the source)")
    refs.add_argument("--features", default="digits")
    refs.add_argument("--mode", default="clean")
    refs.add_argument("--inception-weights", default=None)
    refs.add_argument("--device", default="cpu")
    app = sub.add_parser("app", help="serve the web app: compare samplers, try methods, browse results")
    app.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only; 0.0.0.0 shares "
                                                          "it on the network)")
    app.add_argument("--port", type=_int, default=7860)
    app.add_argument("--db", default=None, help="results database (default: ~/.cache/samplebench/runs.db)")
    app.add_argument("--concurrency", type=_int, default=2, help="sampling requests run at once; others queue")
    app.add_argument("--device", default="cpu")
    app.add_argument("--models", type=_csv(str), default=(),
                     help="comma-separated pipeline folders or hub ids the app offers beside the embedded models")
    app.add_argument("--allow-any-model", action="store_true",
                     help="let requests name any hub id or server folder (a remote user could then load any "
                          "pipeline folder readable on the server, and make it download from the hub)")
    sub.add_parser("solvers", help="list the registered solvers")
    sub.add_parser("models", help="list the embedded models")
    train = sub.add_parser("train", help="train an embedded model from its recipe")
    train.add_argument("recipe", help=", ".join(RECIPES))
    train.add_argument("--out", required=True, help="output directory (a checkpoint there is resumed)")
    train.add_argument("--seed", type=_int, default=0)
    train.add_argument("--device", default="cpu")
    train.add_argument("--steps", type=_int, default=None, help="optimiser steps (default: the recipe's)")
    train.add_argument("--checkpoint-every", type=_int, default=None,
                       help="optimiser steps between checkpoints (default: the recipe's; the weights do not change)")
    for action in _actions(parser):  # every option explains itself
        if action.help is None:
            action.help = _HELP.get(action.dest, "")
    return parser


_HELP = {
    "model": f"an embedded model ({', '.join(MODELS)}), a diffusers hub id (owner/name) or a local pipeline folder",
    "device": "cpu, cuda, cuda:N or mps",
    "dtype": f"network dtype: {', '.join(DTYPES)} (float16 on cuda only)",
    "mode": f"clean-fid resize and quantisation mode: {', '.join(MODES)}",
    "features": f"feature extractor: {', '.join(EXTRACTORS)}",
    "extractor": f"only rows with this feature extractor: {', '.join(EXTRACTORS)}",
    "inception_weights": "the Inception weights file (default: $SAMPLEBENCH_INCEPTION_WEIGHTS, else downloaded once)",
    "quiet": "no progress bar",
    "negative_prompt": "negative prompt for text-to-image models (the unconditional branch of guidance)",
    "widen_alpha": "progressive widening exponent alpha in (0, 1]",
    "solver": "only rows of this solver",
    "nfe": "only rows at this NFE",
    "ref": "only rows scored against this reference",
    "time_grid": f"{', '.join(GRIDS + LEARNED_GRIDS)}, flow-shift:S, pipeline, or a comma-separated list of "
                 "decreasing times (default: the solver's own)",
    "class_label": "class for class-conditional models (default: seed mod num_classes per sample)",
    "guidance_scale": "classifier-free guidance scale (1 = off)",
    "prompt": "text prompt for text-to-image models",
    "search_seed": "seed of the search's own choices (mutation, crossover, the predictor)",
    "batch_size": "images per network batch",
    "out": "output file",
    "b": "the second run, as RUN_A",
    "port": "port to serve on",
    "seed": "seed of the recipe's initialisation and data order",
}


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in dict.fromkeys(action.choices.values()):
                yield from _actions(p)
        elif not isinstance(action, argparse._HelpAction):
            yield action


class _Help(argparse.HelpFormatter):
    """Every option's default after its help, unless the help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, (), argparse.SUPPRESS) or not action.option_strings):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        return f"{text} (default: {shown})" if text else f"(default: {shown})"


def _align(args: argparse.Namespace) -> int:
    from .align import AlignConfig, run_align

    if args.reward is None or args.budget is None:
        raise UsageError(f"--solver {args.solver} needs --reward (class:K, even, odd, module:function) and --budget")
    for flag, value in (("--schedule", args.schedule), ("--skip-rho", args.skip_rho), ("--time-grid", args.time_grid),
                        ("--exit-threshold", args.exit_threshold), ("--cache", args.cache),
                        ("--cascade", args.cascade), ("--seeds", args.seeds)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to --solver {args.solver}")
    config = AlignConfig(method=args.solver, reward=args.reward, budget=args.budget, num=args.num,
                         nfe=args.nfe if args.nfe is not None else 50, model=args.model, seed=args.seed, lam=args.lam,
                         branch_steps=args.branch_steps, widen_c=args.widen_c, widen_alpha=args.widen_alpha,
                         c_uct=args.c_uct, potential=args.potential,
                         batch_size=16 if args.batch_size is None else args.batch_size,
                         class_label=args.class_label, guidance_scale=args.guidance_scale, prompt=args.prompt,
                         negative_prompt=args.negative_prompt, device=args.device, dtype=args.dtype,
                         save_npz=args.save_npz)
    summary = run_align(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
    print(json.dumps({k: summary[k] for k in ("model", "solver", "reward", "nfe_total", "nfe_per_sample",
                                              "reward_mean", "reward_calls", "wall_time_s")} | {"out": args.out}))
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .align import METHODS
    from .sampling import SampleConfig, run_sample

    if args.solver in METHODS:
        return _align(args)
    if args.reward is not None or args.budget is not None:
        raise UsageError(f"--reward and --budget apply to --solver {', '.join(METHODS)}, not {args.solver!r}")
    nfe = args.nfe if args.nfe is not None or args.schedule is not None or args.cascade is not None else 10
    config = SampleConfig(model=args.model, solver=args.solver, nfe=nfe, num=args.num, seed=args.seed,
                          batch_size=64 if args.batch_size is None else args.batch_size, time_grid=args.time_grid,
                          class_label=args.class_label,
                          guidance_scale=args.guidance_scale, prompt=args.prompt,
                          negative_prompt=args.negative_prompt, device=args.device, dtype=args.dtype,
                          save_npz=args.save_npz, schedule=args.schedule, skip_rho=args.skip_rho,
                          exit_threshold=args.exit_threshold, cache=args.cache, seeds=args.seeds,
                          **_cascade_kwargs(args))
    summary = run_sample(config, args.out, progress=not args.quiet, overwrite=args.overwrite)
    compute = summary["compute"] or {}
    print(json.dumps({k: summary[k] for k in ("model", "solver", "nfe_per_sample", "steps", "wall_time_s")}
                     | {k: compute[k] for k in ("block_fraction", "flop_fraction", "full_resolution_nfe_equivalent")
                        if k in compute}
                     | {"out": args.out}))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalConfig, eval_folder, run_eval

    if args.folder is not None:
        if args.ref is None:
            raise UsageError("--folder needs --ref (digits-train, a folder, an .npz or a cached name)")
        row = eval_folder(args.folder, ref=args.ref, features=args.features, mode=args.mode, metrics=args.metrics,
                          device=args.device or "cpu", db=args.db, inception_weights=args.inception_weights,
                          resamples=args.resamples)
        _print_rows([row], args.json)
        return 0
    if args.out is None:
        raise UsageError("--out is required (the job folder), or give --folder to score images")
    check_out_dir(args.out)
    nfes = args.nfe or ((10,) if args.cascade is None else ())
    solvers = args.solver or (("s3",) if args.schedule is not None else ("dpmpp-2m",))
    config = EvalConfig(model=args.model, solvers=solvers, nfes=nfes, num=args.num, seed=args.seed,
                        metrics=args.metrics, features=args.features, mode=args.mode, ref=args.ref,
                        shard_size=args.shard_size, time_grid=args.time_grid, class_label=args.class_label,
                        guidance_scale=args.guidance_scale, prompt=args.prompt,
                        negative_prompt=args.negative_prompt, dtype=args.dtype,
                        exit_threshold=args.exit_threshold, cache=args.cache, skip_rho=args.skip_rho,
                        schedule=args.schedule, **_cascade_kwargs(args))
    rows = run_eval(config, args.out, device=args.device, db=args.db, inception_weights=args.inception_weights,
                    progress=not args.quiet, resamples=args.resamples)
    if rows:  # under accelerate launch only the main process has rows (and prints the table)
        _print_rows(rows, args.json)
    return 0


def _print_rows(rows: list[dict], as_json: bool) -> None:
    """The evaluation's rows: a table to read, or one JSON object per row with ``--json``."""
    if as_json:
        for row in rows:
            print(json.dumps({k: row.get(k) for k in _SHOWN}))
        return
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    print(f"{'solver':14}  {'NFE':>4}  {'N':>6}  {'FID [95%]':>26}  {'KID [95%]':>30}  {'IS':>6}  {'s/img':>7}  ref")
    for r in rows:
        fid = f"{fmt(r['fid'], '.4f')} [{fmt(r.get('fid_low'), '.4f')}, {fmt(r.get('fid_high'), '.4f')}]"
        kid = f"{fmt(r['kid'], '.5f')} [{fmt(r.get('kid_low'), '.5f')}, {fmt(r.get('kid_high'), '.5f')}]"
        per = r["wall_time_s"] / r["num_samples"] if r.get("wall_time_s") is not None else None
        print(f"{str(r['solver'] or 'folder'):14}  {fmt(r['nfe'], 'd'):>4}  {r['num_samples']:>6}  "
              f"{fid if r['fid'] is not None else '-':>26}  {kid if r['kid'] is not None else '-':>30}  "
              f"{fmt(r['inception_score'], '.3f'):>6}  {fmt(per, '.4f'):>7}  {r['ref']}")
    if any(r.get("kid") is not None and r["kid"] < 0 for r in rows):
        print("KID is an unbiased estimate, so it can fall below zero when the two sets are as alike as two samples "
              "of one distribution can be.")


_SHOWN = ("model", "solver", "nfe", "num_samples", "seeds", "fid", "fid_low", "fid_high", "kid", "kid_low", "kid_high",
          "interval_level", "inception_score", "extractor", "mode", "ref",
          "wall_time_s", "compute", "block_fraction", "flop_fraction")


def _search(args: argparse.Namespace) -> int:
    from .search.run import SearchConfig, report_table, run_search

    check_out_dir(args.out)
    given = {k: v for k in ("samples", "rescore", "finalists", "baselines", "pool", "refine")
             if (v := getattr(args, k)) is not None}
    config = SearchConfig.at_level(args.budget, model=args.model, nfes=args.nfe, seed=args.seed,
                                   features=args.features, mode=args.mode, ref=args.ref, batch_size=args.batch_size,
                                   per_stage=args.per_stage, predictor=not args.no_predictor, signal=args.signal,
                                   rescore_seed=args.rescore_seed, search_seed=args.search_seed, dtype=args.dtype,
                                   **given)
    report = run_search(config, args.out, device=args.device, progress=not args.quiet,
                        inception_weights=args.inception_weights)
    print(report_table(report))
    return 0


def _filters(args: argparse.Namespace) -> dict:
    return {k: getattr(args, k) for k in ("model", "solver", "nfe", "extractor", "mode", "ref")}


def _runs(args: argparse.Namespace) -> int:
    from .results import ResultsDB, write_csv

    if args.csv:
        check_out_file(args.csv, "--csv")
    rows = ResultsDB(args.db).query(**_filters(args))
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    cols = [("id", ">", lambda r: str(r["id"])), ("model", "<", lambda r: str(r["model"])),
            ("solver", "<", lambda r: str(r["solver"] or "-")), ("nfe", ">", lambda r: fmt(r["nfe"], "d")),
            ("N", ">", lambda r: str(r["num_samples"])), ("seeds", "<", lambda r: str(r.get("seeds") or "-")),
            ("FID [95%]", ">", lambda r: "-" if r["fid"] is None else
             f"{fmt(r['fid'], '.4f')} [{fmt(r.get('fid_low'), '.4f')}, {fmt(r.get('fid_high'), '.4f')}]"),
            ("KID [95%]", ">", lambda r: "-" if r["kid"] is None else
             f"{fmt(r['kid'], '.5f')} [{fmt(r.get('kid_low'), '.5f')}, {fmt(r.get('kid_high'), '.5f')}]"),
            ("IS", ">", lambda r: fmt(r["inception_score"], ".3f")),
            ("features", "<", lambda r: f"{r['extractor']}/{r['mode']}"), ("ref", "<", lambda r: str(r["ref"])),
            ("compute", "<", lambda r: str(r.get("compute") or "-")),
            ("s/img", ">", lambda r: fmt(r["wall_time_s"] / r["num_samples"] if r["wall_time_s"] is not None
                                         else None, ".4f"))]
    cells = [[get(r) for _, _, get in cols] for r in rows]
    widths = [max([len(name)] + [len(c[k]) for c in cells]) for k, (name, _, _) in enumerate(cols)]
    line = lambda values: "  ".join(f"{v:{a}{w}}" for v, (_, a, _), w in zip(values, cols, widths))  # noqa: E731
    print(line([name for name, _, _ in cols]))
    for c in cells:
        print(line(c))
    if any(r["kid"] is not None and r["kid"] < 0 for r in rows):
        print("KID is an unbiased estimate, so it can fall below zero when the two sets are as alike as two samples "
              "of one distribution can be.")
    if args.csv:
        write_csv(rows, args.csv)
    return 0


def _plot(args: argparse.Namespace) -> int:
    from .results import ResultsDB, plot_runs

    check_out_file(args.out)
    rows = ResultsDB(args.db).query(**_filters(args))
    print(plot_runs(rows, args.out, args.metric))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare_runs

    if not (isinstance(args.level, float) and 0 < args.level < 1):
        raise UsageError(f"--level must be in (0, 1), got {args.level}")
    a, b, diff = compare_runs(args.a, args.b, metric=args.metric, ref=args.ref, db=args.db, features=args.features,
                              mode=args.mode, device=args.device, inception_weights=args.inception_weights,
                              level=args.level, resamples=args.resamples)
    if args.json:
        print(json.dumps({"a": a.label, "b": b.label, **diff.to_dict()}))
        return 0
    print(f"A: {a.label}, {len(a.feats)} samples, {args.metric.upper()} {diff.a:.5g}")
    print(f"B: {b.label}, {len(b.feats)} samples, {args.metric.upper()} {diff.b:.5g}")
    print(str(diff))
    if not diff.paired:
        print("the runs do not hold the same seeds, so they are compared unpaired (independent resamples)")
    return 0


def _refs(args: argparse.Namespace) -> int:
    from .metrics.reference import get_reference, list_references

    if args.action == "list":
        for info in list_references():
            print(json.dumps(info))
        return 0
    if args.action != "make":
        raise UsageError(f"unknown refs action {args.action!r}; valid: make, list")
    if args.source is None:
        raise UsageError("refs make needs a SOURCE: a built-in name, a folder or an .npz")
    from .metrics.extractors import get_extractor

    extractor = get_extractor(args.features, args.mode, args.device, args.inception_weights)
    ref = get_reference(args.source, extractor, name=args.name, recompute=True)
    print(json.dumps({"name": ref.name, "extractor": ref.extractor, "mode": ref.mode, "count": ref.count,
                      "sha256": ref.sha256, "file": str(ref.save())}))
    return 0


def _solvers() -> int:
    from .samplers import SOLVERS, solver_names

    for name in solver_names():
        s = SOLVERS[name]
        kind = "stochastic" if s.stochastic else f"order {s.order}"
        print(f"{name:10s}  {s.nfe_per_step} NFE/step  {kind:10s}  grid {s.default_grid:13s}  {s.description}")
    print(f"{'s3':10s}  the model's shipped S3 solver schedule for --nfe (USF, Liu et al. 2024; 'samplebench search')")
    from .align import METHODS

    for name, description in METHODS.items():
        print(f"{name:10s}  needs --reward and --budget; {description}")
    return 0


def _models() -> int:
    from .models.embedded import DEFAULT_MODEL, EMBEDDED

    for name, m in EMBEDDED.items():
        print(f"{name:12s}  {m.description}{'  (default)' if name == DEFAULT_MODEL else ''}")
    print("a diffusers pipeline, by hub id (owner/name) or a local directory saved with save_pretrained: "
          "UNet2DModel (DDPM/DDIM), DiT, Stable Diffusion 1.x/2.x, SDXL, SD3, FLUX.1, PixArt-alpha/sigma")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        if args.command == "sample":
            return _sample(args)
        if args.command in ("eval", "search", "runs", "plot", "refs", "compare"):
            return {"eval": _eval, "search": _search, "runs": _runs, "plot": _plot, "refs": _refs,
                    "compare": _compare}[args.command](args)
        if args.command == "solvers":
            return _solvers()
        if args.command == "app":
            from .app import serve

            serve(host=args.host, port=args.port, db=args.db, concurrency=args.concurrency, device=args.device,
                  models=args.models, any_model=args.allow_any_model)
            return 0
        if args.command == "train":
            from .train import train

            check_out_dir(args.out)
            print(json.dumps(train(args.recipe, args.out, seed=args.seed, device=args.device, steps=args.steps,
                                   checkpoint_every=args.checkpoint_every)))
            return 0
        return _models()
    except UsageError as e:
        print(f"samplebench: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("samplebench: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("samplebench: error: out of memory; use a smaller --num, --batch-size or --nfe", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or a failing system, not bad input: one line unless asked for the trace
        if os.environ.get("SAMPLEBENCH_TRACEBACK"):
            raise
        print(f"samplebench: internal error: {type(e).__name__}: {_one_line(e)} (SAMPLEBENCH_TRACEBACK=1 shows "
              "where)", file=sys.stderr)
        return 1


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= 500 else text[:497] + "..."


def sample_main(argv: Sequence[str] | None = None) -> int:
    """The ``sample`` entry point: ``samplebench sample`` with the same arguments."""
    return main(["sample", *(sys.argv[1:] if argv is None else argv)])
