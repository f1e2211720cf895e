"""Compute skipping: blocks evaluated, FLOPs, wall time and digits-FID at NFE 10, 20, 50 for the digits DiT (full,
DeeDiff early exit at several thresholds, diffusers' FirstBlockCache at several thresholds) and the digits UNet
(full and DeepCache at several intervals).

    python bench/compute_skipping.py [--num 2000] [--thresholds 0.9,0.93,0.95] [--fbcache 0.1,0.2] [--intervals 2,4]
                                     [--dit digits-dit] [--out evals/compute]

``--dit`` may name a folder written by ``samplebench train digits-dit`` to measure a model before it ships.

Every configuration is a resumable ``samplebench eval`` job (dpmpp-2m, seeds 0..num-1, the same for every
configuration) whose rows also go to ``<out>/runs.db``. Wall time is the sampling time summed over shards of 250
images, measured in the same run; a resumed run re-times nothing it finds on disk, so for timings run it whole on
an idle machine. Target (per configuration and NFE): >= 30% fewer blocks and >= 25% less wall time at a digits-FID
within 10% of the full model at the same NFE. Writes the table and docs/compute-skipping.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, fid_cell, fid_panel, machine, table, write_section  # noqa: E402

from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402

NFES = (10, 20, 50)
SOLVER = "dpmpp-2m"


def configs(args) -> list[tuple[str, str, dict]]:
    """(model, label, EvalConfig options); the first of each model is its full-model reference."""
    out = [(args.dit, "full", {})]
    out += [(args.dit, f"exit {t}", {"exit_threshold": t}) for t in args.thresholds.split(",") if t]
    out += [(args.dit, f"fbcache:{t}", {"cache": f"fbcache:{t}"}) for t in args.fbcache.split(",") if t]
    out += [("digits", "full", {})]
    out += [("digits", f"deepcache:{n}", {"cache": f"deepcache:{n}"}) for n in args.intervals.split(",") if n]
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, model in zip(axes, dict.fromkeys(r["model"] for r in rows)):
        for label in dict.fromkeys(r["label"] for r in rows if r["model"] == model):
            pts = sorted((r["ms"], r["fid"], r["nfe"]) for r in rows if r["model"] == model and r["label"] == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", lw=2.2 if label == "full" else 1.2,
                    label=label)
            for ms, fid, nfe in pts:
                ax.annotate(str(nfe), (ms, fid), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.set_xscale("log")
        fid_panel(ax, "sampling ms / image (labels: NFE)", model)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--thresholds", default="0.9,0.93,0.95")
    p.add_argument("--fbcache", default="0.1,0.2")
    p.add_argument("--intervals", default="2,4")
    p.add_argument("--dit", default="digits-dit")
    p.add_argument("--out", default="evals/compute")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    root = Path(args.out)
    command = (f"python bench/compute_skipping.py --num {args.num} --thresholds {args.thresholds} "
               f"--fbcache {args.fbcache} --intervals {args.intervals}"
               + (f" --dit {args.dit}" if args.dit != "digits-dit" else "") + f" --out {args.out}")
    rows = []
    for model, label, options in configs(args):
        name = f"{Path(model).name}-{label.replace(' ', '-').replace(':', '')}"
        config = EvalConfig(model=model, solvers=(SOLVER,), nfes=NFES, num=args.num, metrics=("fid",),
                            ref="digits-train", **options)  # named, so that a --dit folder has it too
        for r in run_eval(config, root / name, db=root / "runs.db", progress=False):
            rows.append({"model": model, "label": label, "nfe": r["nfe"], "fid": r["fid"], "fid_low": r["fid_low"], "fid_high": r["fid_high"],
                         "ms": 1000 * r["wall_time_s"] / args.num, "blocks": r["block_fraction"],
                         "flops": r["flop_fraction"], "gflops": r["gflops_per_sample"]})
            print(rows[-1], flush=True)
    full = {(r["model"], r["nfe"]): r for r in rows if r["label"] == "full"}
    lines, met = [], []
    for r in rows:
        f = full[r["model"], r["nfe"]]
        time_ratio, fid_ratio = r["ms"] / f["ms"], r["fid"] / f["fid"]
        ok = r["label"] != "full" and r["blocks"] <= 0.7 and time_ratio <= 0.75 and fid_ratio <= 1.1
        if ok:
            met.append(f"{r['model']} {r['label']} at NFE {r['nfe']}")
        lines.append([r["model"], r["label"], str(r["nfe"]), f"{100 * r['blocks']:.0f}%", f"{100 * r['flops']:.0f}%",
                      f"{r['gflops']:.2f}", f"{r['ms']:.2f}", f"{time_ratio:.2f}", fid_cell(r),
                      f"{fid_ratio:.2f}", "yes" if ok else ""])
    plot = DOC.parent / "compute-skipping.png"
    if not args.no_write:
        _plot(rows, plot)
    body = (f"## Compute skipping: early exit (DeeDiff), FirstBlockCache and DeepCache\n\n"
            f"`{command}` on {machine()}. {SOLVER}, "
            f"{args.num} samples per row, seeds 0..{args.num - 1} for every row; digits-FID against `digits-train`. "
            "Blocks: DiT transformer blocks, or UNet down/mid/up blocks, evaluated out of the full model's; FLOPs from "
            "torch's FLOP counter per block; ms/image: sampling wall time in batches of 250. Ratios are against the "
            "full model at the same NFE. FirstBlockCache (diffusers' `apply_first_block_cache`, training-free): a call "
            "whose first block's output residual changed by less than the threshold (relative L1) since the last "
            "computed call skips the other blocks and reuses their cached residual; the decision is for the whole "
            "batch. Target: >= 30% fewer blocks, >= 25% less time, FID within 10%.\n\n"
            + table(["model", "method", "NFE", "blocks", "FLOPs", "GFLOPs/sample", "ms/image", "time vs full",
                     "digits-FID", "FID vs full", "target met"], lines)
            + f"\n\nTarget met by: {', '.join(met) if met else 'none'}.\n\n"
            + f"![speed vs quality]({plot.relative_to(DOC.parent)})")
    print(body)
    if not args.no_write:
        write_section("compute-skipping", body)


if __name__ == "__main__":
    main()
