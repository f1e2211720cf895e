"""On one GPU: sampling, evaluation and search at the network's speed, in one prepared run of a few minutes.

    python bench/gpu.py [--device cuda] [--batches 256,2048] [--nfe 10] [--repeats 3] [--json OUT.json]
    python bench/gpu.py --quick --device cpu --no-write      # the same code on a CPU in seconds (tests run it)

1. ``sample()`` for every registry solver on the digits UNet and the digits DiT, at each batch size, in float32 and
   the half types the device has (bfloat16, and float16 on CUDA): the time of ``sample()`` against NFE bare network
   forwards timed right before it (overhead target <= 5%), against diffusers' own scheduler loop on the same
   network and batch (where diffusers has the solver), and images/s. The stochastic solver (ddpm) draws its step
   noise per image, as the seeding contract requires; so does the initial noise of every solver.
2. The digits feature extractor's throughput (images/s), the FID harness's feature pass.
3. One S3 search screening evaluation (sampling, distance to the exact-ODE images, features, FID): images x NFE/s.

Times are medians of ``--repeats`` after a warm-up, with the device synchronised. Writes the table to
docs/benchmarks.md (section ``gpu``) with the device name, and everything to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.models import load_model  # noqa: E402
from samplebench.samplers import SOLVERS, get_solver  # noqa: E402
from samplebench.sampling import sample, solver_grid  # noqa: E402

# diffusers' scheduler for each registry solver it has, configured as our equivalence tests configure it
DIFFUSERS = {
    "ddim": ("DDIMScheduler", dict(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)),
    "euler": ("EulerDiscreteScheduler", dict(timestep_spacing="trailing")),
    "ddpm": ("DDPMScheduler", dict(timestep_spacing="trailing", clip_sample=False)),
    "dpmpp-2m": ("DPMSolverMultistepScheduler", dict(solver_order=2, timestep_spacing="trailing")),
    "dpmpp-3m": ("DPMSolverMultistepScheduler", dict(solver_order=3, timestep_spacing="trailing")),
    "unipc-bh1": ("UniPCMultistepScheduler", dict(solver_type="bh1", timestep_spacing="trailing")),
    "unipc-bh2": ("UniPCMultistepScheduler", dict(solver_type="bh2", timestep_spacing="trailing")),
    "deis": ("DEISMultistepScheduler", dict(solver_order=3, timestep_spacing="trailing")),
}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def network(model):
    """``net(x, t)`` on the model's network, with class labels for the DiT (fixed per batch)."""
    pipe = model.pipe
    if getattr(pipe, "unet", None) is not None:
        return lambda x, t, labels: pipe.unet(x, t).sample
    return lambda x, t, labels: pipe.transformer(x, timestep=t, class_labels=labels).sample


def diffusers_loop(model, name: str, nfe: int, x: torch.Tensor, labels, device: str):
    """diffusers' own loop: ``set_timesteps``, ``scale_model_input``, the network, ``step`` (NFE steps)."""
    import diffusers

    cls, options = DIFFUSERS[name]
    scheduler = getattr(model.pipe, "scheduler", None)  # a DiT folder keeps its config in scheduler/
    config = dict(scheduler.config) if scheduler is not None else diffusers.DDPMScheduler.load_config(
        model.directory / "scheduler")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    scheduler = getattr(diffusers, cls).from_config({**config, **options, "prediction_type": "epsilon"})
    net = network(model)

    def run():
        scheduler.set_timesteps(nfe, device=device)  # each run starts the scheduler's state afresh
        y = x * scheduler.init_noise_sigma
        with torch.inference_mode():
            for t in scheduler.timesteps:
                out = net(scheduler.scale_model_input(y, t), t.expand(len(y)), labels)
                y = scheduler.step(out, t, y).prev_sample
        return y

    return run


def bench_sampling(name: str, device: str, dtype: str, batch: int, nfe: int, repeats: int, solvers) -> list[dict]:
    model = load_model(name, device=device, dtype=dtype)
    net = network(model)
    seeds = list(range(batch))
    labels = (torch.tensor([s % 10 for s in seeds], device=device) if model.num_classes is not None else None)
    x = torch.randn(batch, *model.sample_shape, device=device, dtype=model.dtype)
    t = torch.full((batch,), 500.0, device=device)

    def bare():
        with torch.inference_mode():
            for _ in range(nfe):
                net(x, t, labels)

    timed(bare, device)  # warm-up (kernels, allocator)
    rows = []
    for solver in solvers:
        spec = get_solver(solver)
        if nfe % spec.nfe_per_step:
            continue
        grid = solver_grid(model, spec, nfe)
        loop = diffusers_loop(model, solver, nfe, x, labels, device) if solver in DIFFUSERS else None
        run = lambda: sample(model, spec, grid, seeds, batch_size=batch)  # noqa: E731
        timed(run, device)
        if loop is not None:
            timed(loop, device)
        walls, bares, loops = [], [], []
        for _ in range(repeats):
            bares.append(timed(bare, device))
            walls.append(timed(run, device))
            if loop is not None:
                loops.append(timed(loop, device))
        wall, forward = statistics.median(walls), statistics.median(bares)
        row = {"model": name, "dtype": dtype, "batch": batch, "solver": solver, "nfe": nfe, "sample_s": wall,
               "bare_s": forward, "overhead": statistics.median(w / b for w, b in zip(walls, bares)) - 1,
               "diffusers_s": statistics.median(loops) if loops else None, "images_per_s": batch / wall}
        rows.append(row)
        vs = f"{row['diffusers_s'] * 1000:8.1f} ms" if loops else "       -"
        print(f"{name:10s} {dtype:8s} b{batch:<5d} {solver:10s} sample {wall * 1000:8.1f} ms  bare "
              f"{forward * 1000:8.1f} ms  overhead {row['overhead'] * 100:+6.1f}%  diffusers {vs}", flush=True)
    return rows


def bench_features(device: str, batch: int, repeats: int) -> dict:
    import numpy as np

    from samplebench.metrics.extractors import get_extractor
    from samplebench.metrics.scores import extract

    extractor = get_extractor("digits", "clean", device)
    images = np.random.default_rng(0).integers(0, 256, (batch, 16, 16, 3), dtype=np.uint8)
    extract(images, extractor)
    wall = statistics.median(timed(lambda: extract(images, extractor), device) for _ in range(repeats))
    return {"extractor": "digits", "batch": batch, "images_per_s": batch / wall}


def bench_search(device: str, num: int, nfe: int, repeats: int) -> dict:
    from samplebench.sampling import resolve_solver
    from samplebench.search.run import SearchConfig, _Evaluator
    from samplebench.usf import known_schedule

    config = SearchConfig(model="digits", budget=8, samples=num, rescore=num, batch_size=num)
    ev = _Evaluator(config, device)
    ev.target = ev.exact_images()[0]
    _, grid = resolve_solver(ev.model, "dpmpp-3m", nfe, "logsnr")
    schedule = known_schedule("dpmpp-3m", grid)
    ev.screen(schedule)
    wall = statistics.median(timed(lambda: ev.screen(schedule), device) for _ in range(repeats))
    return {"model": "digits", "images": num, "nfe": nfe, "images_x_nfe_per_s": num * nfe / wall}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="256,2048")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--models", default="digits,digits-dit")
    p.add_argument("--quick", action="store_true", help="batch 8, two solvers, one repeat: a check that it runs")
    p.add_argument("--json", default=None, help="also write every measurement here")
    p.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = p.parse_args(argv)
    device = args.device
    dtypes = ["float32", "bfloat16"] + (["float16"] if device.startswith("cuda") else [])
    batches = [8] if args.quick else [int(b) for b in args.batches.split(",")]
    solvers = ["dpmpp-2m", "ddpm"] if args.quick else list(SOLVERS)
    repeats = 1 if args.quick else args.repeats
    t0 = time.perf_counter()
    rows = [r for name in args.models.split(",") for dtype in dtypes for batch in batches
            for r in bench_sampling(name, device, dtype, batch, args.nfe, repeats, solvers)]
    features = bench_features(device, max(batches), repeats)
    search = bench_search(device, 16 if args.quick else 2000, 8, repeats)
    total = time.perf_counter() - t0
    result = {"machine": machine(), "device": device, "sampling": rows, "features": features, "search": search,
              "total_s": total}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    body = (f"## On a GPU: sampling overhead, diffusers' loop, features and search ({device})\n\n"
            f"`python bench/gpu.py --device {device} --batches {','.join(map(str, batches))} --nfe {args.nfe} "
            f"--repeats {repeats}` on {machine()}, {total:.0f} s in all. Per model, dtype, batch and solver: "
            f"`sample()` (per-image noise of the seeding contract, denoiser wrapper, solver) against NFE bare "
            "network forwards timed right before it (overhead = median of wall / forwards - 1; target <= 5%) and "
            "against diffusers' own scheduler loop on the same network and batch; medians of "
            f"{repeats}.\n\n"
            + table(["model", "dtype", "batch", "solver", "sample (ms)", "NFE forwards (ms)", "overhead",
                     "diffusers loop (ms)", "sample / diffusers", "images/s"],
                    [[r["model"], r["dtype"], str(r["batch"]), r["solver"], ms(r["sample_s"]), ms(r["bare_s"]),
                      f"{r['overhead'] * 100:+.1f}%", ms(r["diffusers_s"]) if r["diffusers_s"] else "-",
                      f"{r['sample_s'] / r['diffusers_s']:.2f}" if r["diffusers_s"] else "-",
                      f"{r['images_per_s']:,.0f}"] for r in rows])
            + f"\n\nDigits features: {features['images_per_s']:,.0f} images/s at batch {features['batch']}. "
            f"One S3 screening evaluation (digits, DPM-Solver++(3M) as a USF schedule, NFE {search['nfe']}, "
            f"{search['images']} images): {search['images_x_nfe_per_s']:,.0f} images x NFE per second.")
    print(body)
    if not args.no_write:
        write_section(f"gpu-{'cuda' if device.startswith('cuda') else device}", body)


if __name__ == "__main__":
    main()
