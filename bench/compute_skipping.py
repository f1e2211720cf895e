"""Compute skipping: blocks evaluated, FLOPs, wall time and digits-FID for the digits DiT (full, DeeDiff early exit at
several thresholds, diffusers' FirstBlockCache at several thresholds) and the digits UNet (full and DeepCache), each
matched against the strongest full-network setting at equal or lower cost.

    python bench/compute_skipping.py [--num 2000] [--thresholds 0.9,0.93,0.95] [--fbcache 0.1,0.2]
                                     [--intervals 2,4] [--dit digits-dit] [--out evals/compute]

``--dit`` may name a folder written by ``samplebench train digits-dit`` to measure a model before it ships.

Every configuration is a resumable ``samplebench eval`` job (seeds 0..num-1, the same for every configuration) whose
rows also go to ``<out>/runs.db``: dpmpp-2m at NFE 10, 20, 50; DeepCache also where the paper runs it, 100 DDIM
steps with N = 5 and branch 2, uniform and non-uniform (quad). The competitors: for each model, the strongest
full-network setting at every NFE 3-10 (any registry solver on its best grid, or S3, as ``bench/fid_vs_nfe.py``
chose it on other seeds; docs/baselines.json), run here on the same seeds, and the full model at every NFE of the
table. A row's cost is its full-network NFE equivalent (NFE x its FLOP fraction); its competitor is the lowest-FID
full-network row of cost at most that. Wall time is the sampling time summed over shards of 250 images, measured in
the same run; a resumed run re-times nothing it finds on disk, so for timings run it whole on an idle machine.
Target (per row): FID within 10% of its competitor's, with >= 30% fewer blocks than the full model at the same NFE.
Writes the table and docs/compute-skipping.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, baselines, fid_cell, fid_panel, machine, table, write_section  # noqa: E402

from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402

NFES = (10, 20, 50)
SOLVER = "dpmpp-2m"


PAPER = ("ddim", (100,), 5, 2)  # DeepCache's DDPM recipe: 100 DDIM steps, N = 5, branch 2


def configs(args) -> list[tuple[str, str, str, tuple[int, ...], dict]]:
    """(model, label, solver, NFEs, EvalConfig options); "full" rows are the full model."""
    nfes = NFES
    out = [(args.dit, "full", SOLVER, nfes, {})]
    out += [(args.dit, f"exit {t}", SOLVER, nfes, {"exit_threshold": t}) for t in args.thresholds.split(",") if t]
    out += [(args.dit, f"fbcache:{t}", SOLVER, nfes, {"cache": f"fbcache:{t}"}) for t in args.fbcache.split(",") if t]
    out += [("digits", "full", SOLVER, nfes, {})]
    out += [("digits", f"deepcache:{n}", SOLVER, nfes, {"cache": f"deepcache:{n}"})
            for n in args.intervals.split(",") if n]
    solver, paper, n, branch = PAPER
    out += [("digits", "full", solver, paper, {}),
            ("digits", f"deepcache:{n}:{branch}", solver, paper, {"cache": f"deepcache:{n}:{branch}"}),
            ("digits", f"deepcache:{n}:{branch}:quad", solver, paper, {"cache": f"deepcache:{n}:{branch}:quad"})]
    return out


def competitors(model: str, label: str) -> list[tuple[str, str, str, tuple[int, ...], dict]]:
    """The strongest full-network setting of ``model`` at each NFE of docs/baselines.json, as configs."""
    out = []
    for n, e in sorted(baselines(label).items()):
        options = {} if e["solver"] == "s3" else {"time_grid": e["grid"]}
        out.append((model, f"strongest {e['solver']}" + ("" if e["solver"] == "s3" else f"/{e['grid']}"),
                    e["solver"], (n,), options))
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(r: dict) -> str:  # each NFE's strongest setting is one curve; the others by method and solver
        return "strongest full network" if r["label"].startswith("strongest") else f"{r['label']} ({r['solver']})"

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, model in zip(axes, dict.fromkeys(r["model"] for r in rows)):
        for label in dict.fromkeys(series(r) for r in rows if r["model"] == model):
            pts = sorted((r["ms"], r["fid"], r["nfe"]) for r in rows if r["model"] == model and series(r) == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    lw=2.2 if label.startswith(("full", "strongest")) else 1.2, label=label)
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
    todo = configs(args)
    for model, name in ((args.dit, "digits-dit"), ("digits", "digits")):
        todo += competitors(model, name)  # a --dit folder meets the shipped DiT's strongest settings
    for model, label, solver, nfes, options in todo:
        name = f"{Path(model).name}-{label.replace(' ', '-').replace(':', '').replace('/', '-')}-{solver}"
        if label.startswith("strongest"):  # one folder per NFE: the strongest setting may repeat across NFEs
            name += f"-nfe{nfes[0]}"
        config = EvalConfig(model=model, solvers=(solver,), nfes=nfes, num=args.num, metrics=("fid",),
                            ref="digits-train", **options)  # named, so that a --dit folder has it too
        for r in run_eval(config, root / name, db=root / "runs.db", progress=False):
            rows.append({"model": model, "label": label, "solver": solver, "nfe": r["nfe"], "fid": r["fid"],
                         "fid_low": r["fid_low"], "fid_high": r["fid_high"], "ms": 1000 * r["wall_time_s"] / args.num,
                         "blocks": r["block_fraction"], "flops": r["flop_fraction"],
                         "gflops": r["gflops_per_sample"]})
            print(rows[-1], flush=True)
    full = {(r["model"], r["solver"], r["nfe"]): r for r in rows if r["label"] == "full"}
    network = [r for r in rows if r["label"] == "full" or r["label"].startswith("strongest")]
    lines, met = [], []
    for r in rows:
        if r["label"].startswith("strongest"):
            continue
        f = full[r["model"], r["solver"], r["nfe"]]
        cost = r["nfe"] * r["flops"]
        rival = min((c for c in network if c["model"] == r["model"] and c["nfe"] * c["flops"] <= cost + 1e-9
                     and c is not r), key=lambda c: c["fid"], default=None)
        time_ratio = r["ms"] / f["ms"]
        vs = r["fid"] / rival["fid"] if rival is not None else None
        ok = r["label"] != "full" and r["blocks"] <= 0.7 and vs is not None and vs <= 1.1
        if ok:
            met.append(f"{r['model']} {r['label']} at NFE {r['nfe']}")
        who = "-" if rival is None else (f"{rival['label'].replace('strongest ', '')}"
                                         f"{'' if rival['label'].startswith('strongest') else ' ' + rival['solver']}"
                                         f" NFE {rival['nfe']}: {rival['fid']:.3f}")
        lines.append([r["model"], r["label"], r["solver"], str(r["nfe"]), f"{100 * r['blocks']:.0f}%",
                      f"{100 * r['flops']:.0f}%", f"{cost:.1f}", f"{r['ms']:.2f}", f"{time_ratio:.2f}", fid_cell(r),
                      who, "-" if vs is None else f"{vs:.2f}", "yes" if ok else ""])
    plot = DOC.parent / "compute-skipping.png"
    if not args.no_write:
        _plot(rows, plot)
    body = (f"## Compute skipping: early exit (DeeDiff), FirstBlockCache and DeepCache\n\n"
            f"`{command}` on {machine()}. "
            f"{args.num} samples per row, seeds 0..{args.num - 1} for every row; digits-FID against `digits-train`. "
            "Blocks: DiT transformer blocks, or UNet down/mid/up blocks, evaluated out of the full model's; FLOPs from "
            "torch's FLOP counter per block; cost: NFE x FLOP fraction, in full-network evaluations; ms/image: "
            "sampling wall time in batches of 250, 'time vs full' against the full model with the same solver and "
            "NFE. Competitor: the lowest-FID full-network row of the same model at equal or lower cost: the full "
            "model's rows and each NFE's strongest setting from docs/baselines.json (a registry solver on its best "
            "grid, or S3), all on these seeds. FirstBlockCache (diffusers' `apply_first_block_cache`, training-free): "
            "a call whose first block's output residual changed by less than the threshold (relative L1) since the "
            "last computed call skips the other blocks and reuses their cached residual; the decision is for the "
            "whole batch. DeepCache N:B[:quad]: a full pass at every N-th solver step (quad: as many, crowded around "
            "the middle), branch B. Target: >= 30% fewer blocks, FID within 10% of the competitor's.\n\n"
            + table(["model", "method", "solver", "NFE", "blocks", "FLOPs", "cost", "ms/image", "time vs full",
                     "digits-FID [95%]", "competitor (FID)", "FID vs competitor", "target met"], lines)
            + f"\n\nTarget met by: {', '.join(met) if met else 'none'}.\n\n"
            + f"![speed vs quality]({plot.relative_to(DOC.parent)})")
    print(body)
    if not args.no_write:
        write_section("compute-skipping", body)


if __name__ == "__main__":
    main()
