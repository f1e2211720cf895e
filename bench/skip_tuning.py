"""Skip-Tuning (Ma et al. 2024) on the digits UNet: digits-FID against rho, paired against rho = 1 on shared seeds,
and where in the network rho can act.

    python bench/skip_tuning.py [--num 5000] [--rhos 1.0,0.95,0.9,0.8,0.7] [--nfes 5,10] [--solver dpmpp-2m]
                                [--out evals/skip-tuning]

Every (rho, NFE) is a resumable ``samplebench eval --skip-rho`` job, seeds 0..num-1 for all, so the differences
against rho = 1 are paired. The structure table says, for every resnet of the up path, how the concatenated
channels (hidden + skip) fall into its GroupNorm groups: a group that holds only skip channels normalises the
scaling by rho away, so there rho reaches the block only through the 1x1 shortcut convolution (and through a group
that straddles the concatenation, if any).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import diff_cell, fid_cell, machine, table, write_section  # noqa: E402

from samplebench.compare import compare_runs  # noqa: E402
from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402
from samplebench.models import load_model  # noqa: E402


def structure(model: str = "digits") -> list[list[str]]:
    """Per up resnet: channels in (hidden + skip), group size, groups holding only skip channels, straddling ones."""
    unet = load_model(model).pipe.unet
    rows = []
    for i, block in enumerate(unet.up_blocks):
        for j, resnet in enumerate(block.resnets):
            total = resnet.norm1.num_channels
            hidden = _hidden_channels(unet, i, j)
            skip = total - hidden
            size = total // resnet.norm1.num_groups
            groups = [(g * size, (g + 1) * size) for g in range(resnet.norm1.num_groups)]
            only_skip = sum(lo >= hidden for lo, hi in groups)
            straddle = sum(lo < hidden < hi for lo, hi in groups)
            rows.append([f"up_blocks.{i}.resnets.{j}", f"{hidden} + {skip}", str(size), str(only_skip),
                         str(straddle), "yes" if resnet.conv_shortcut is not None else "no"])
    return rows


def _hidden_channels(unet, i: int, j: int) -> int:
    """The hidden (non-skip) channels entering resnet j of up block i, from diffusers' UNet2DModel layout."""
    block = unet.up_blocks[i]
    out = block.resnets[j].conv1.out_channels
    if j > 0:
        return out
    before = unet.up_blocks[i - 1] if i > 0 else unet.mid_block
    return before.resnets[-1].conv1.out_channels


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--rhos", default="1.0,0.95,0.9,0.8,0.7")
    p.add_argument("--nfes", default="5,10")
    p.add_argument("--solver", default="dpmpp-2m")
    p.add_argument("--out", default="evals/skip-tuning")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    root = Path(args.out)
    rhos = [float(r) for r in args.rhos.split(",")]
    nfes = tuple(int(n) for n in args.nfes.split(","))
    start = time.perf_counter()
    rows, jobs = {}, {}
    for rho in rhos:
        job = root / f"rho-{rho:g}"
        config = EvalConfig(model="digits", solvers=(args.solver,), nfes=nfes, num=args.num, metrics=("fid",),
                            skip_rho=None if rho == 1.0 else rho)
        for r in run_eval(config, job, db=root / "runs.db", progress=False):
            rows[rho, r["nfe"]] = r
            jobs[rho, r["nfe"]] = f"{job}:{args.solver}:{r['nfe']}"
            print(rho, r["nfe"], r["fid"], flush=True)
    lines = []
    for n in nfes:
        for rho in rhos:
            r = rows[rho, n]
            if rho == 1.0:
                diff = "-"
            else:
                d = compare_runs(jobs[rho, n], jobs[1.0, n])[2]
                diff = diff_cell(d, 4)
            lines.append([str(n), f"{rho:g}", fid_cell(r), diff])
    command = (f"python bench/skip_tuning.py --num {args.num} --rhos {args.rhos} --nfes {args.nfes} "
               f"--solver {args.solver} --out {args.out}")
    body = (f"## Skip-Tuning on the digits UNet\n\n`{command}` on {machine()}, "
            f"{(time.perf_counter() - start) / 60:.0f} min. {args.solver}, {args.num} samples per row, seeds "
            f"0..{args.num - 1} for every row; digits-FID against `digits-train` with its 95% interval, and the "
            "paired difference against rho = 1 on the shared seeds (below zero: Skip-Tuning helps). rho scales the "
            "innermost skip, rising linearly to 1 at the outermost (`samplebench.models.skip_tuning`).\n\n"
            + table(["NFE", "rho", "digits-FID [95%]", "minus rho = 1, paired [95%]"], lines)
            + "\n\nWhere rho can act: the up path's resnets, their concatenated input channels (hidden + skip), the "
            "GroupNorm group size of `norm1`, the groups holding only skip channels (their scaling by rho is "
            "normalised away) and those straddling the concatenation (the only place `norm1` sees rho), and whether "
            "the resnet has the 1x1 shortcut convolution (which sees rho unnormalised).\n\n"
            + table(["resnet", "channels in", "group size", "skip-only groups", "straddling groups", "1x1 shortcut"],
                    structure()))
    print(body)
    if not args.no_write:
        write_section("skip-tuning", body)


if __name__ == "__main__":
    main()
