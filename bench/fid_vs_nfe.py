"""digits-FID vs NFE: the shipped S3 schedules against DDIM, DPM-Solver++ 2M/3M, UniPC, DEIS and iPNDM, each
baseline at its best time grid, on the digits model and the digits Gaussian mixture.

    python bench/fid_vs_nfe.py [--num 5000] [--select-num 500] [--models digits,digits-gmm] [--out evals/fid-vs-nfe]

1. Grid selection: every baseline at every NFE on the logSNR, time-uniform and time-quadratic grids (and its own
   default), ``--select-num`` samples with seeds 1,000,000 + i (disjoint from the benchmark's and the search's).
2. The benchmark: every baseline on its selected grid and S3 (the model's shipped schedule), ``--num`` samples with
   seeds 0 .. num - 1, FID and KID against the model's reference. On digits-gmm the FID of ``--num`` exact mixture
   samples is the floor.
Every run is a resumable ``samplebench eval`` job under ``--out``; a killed benchmark resumes where it stopped. The
search cost comes from the search folders (``--search-dirs``). Writes the table and docs/fid-vs-nfe.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, fid_panel, machine, table, write_section  # noqa: E402

from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402
from samplebench.samplers import get_solver  # noqa: E402

BASELINES = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc-bh2", "deis", "ipndm")
GRIDS = ("logsnr", "time-uniform", "time-quadratic")
NFES = (4, 5, 6, 7, 8, 10)
SELECT_SEED = 1_000_000


def _grids(solver: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(GRIDS + (get_solver(solver).default_grid,)))


def _eval(out: Path, **kw) -> list[dict]:
    return run_eval(EvalConfig(metrics=("fid", "kid"), **kw), out, db=out.parent / "runs.db", progress=False)


def floor_fid(model: str, num: int) -> float:
    """FID of ``num`` exact samples of an analytic model (seeds 0..num-1) against its reference."""
    from samplebench.metrics.extractors import get_extractor
    from samplebench.metrics.reference import get_reference
    from samplebench.metrics.scores import extract, fid, statistics
    from samplebench.models import load_model
    from samplebench.noise import SampleGenerators

    m = load_model(model)
    ext = get_extractor("digits")
    ref = get_reference(model, ext)
    x = m.mixture.sample(SampleGenerators(range(num)))
    mu, sigma = statistics(extract(x.float(), ext).feats)
    return fid(mu, sigma, ref.mu, ref.sigma)


def bench_model(model: str, args, root: Path) -> dict:
    t0 = time.perf_counter()
    select: dict[tuple[str, int], tuple[str, float]] = {}
    for grid in sorted({g for s in BASELINES for g in _grids(s)}):
        solvers = tuple(s for s in BASELINES if grid in _grids(s))
        for r in _eval(root / model / f"select-{grid}", model=model, solvers=solvers, nfes=NFES,
                       num=args.select_num, seed=SELECT_SEED, time_grid=grid):
            key = (r["solver"], r["nfe"])
            if key not in select or r["fid"] < select[key][1]:
                select[key] = (grid, r["fid"])
    t_select = time.perf_counter() - t0
    final: dict[tuple[str, int], dict] = {}
    for s in BASELINES:
        for grid in _grids(s):
            nfes = tuple(n for n in NFES if select[s, n][0] == grid)
            if nfes:
                for r in _eval(root / model / f"{s}-{grid}", model=model, solvers=(s,), nfes=nfes, num=args.num,
                               seed=0, time_grid=grid):
                    final[s, r["nfe"]] = {**r, "grid": grid}
    for r in _eval(root / model / "s3", model=model, solvers=("s3",), nfes=NFES, num=args.num, seed=0):
        final["s3", r["nfe"]] = {**r, "grid": "s3"}
    out = {"final": final, "select_s": t_select, "total_s": time.perf_counter() - t0}
    if model != "digits":
        out["floor"] = floor_fid(model, args.num)
    return out


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (model, res) in zip(axes[0], results.items()):
        for s in ("s3",) + BASELINES:
            ys = [res["final"][s, n]["fid"] for n in NFES]
            ax.plot(NFES, ys, marker="o", lw=2.5 if s == "s3" else 1.2, label="S3 (searched)" if s == "s3" else s)
        if "floor" in res:
            ax.axhline(res["floor"], color="grey", ls="--", lw=1, label="exact samples")
        fid_panel(ax, "NFE", model)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--select-num", type=int, default=500)
    p.add_argument("--models", default="digits,digits-gmm")
    p.add_argument("--out", default="evals/fid-vs-nfe")
    p.add_argument("--search-dirs", default="evals/search-{model}", help="search folders, {model} substituted")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    root = Path(args.out)
    command = (f"python bench/fid_vs_nfe.py --num {args.num} --select-num {args.select_num} --models {args.models} "
               f"--out {args.out}")
    results = {m: bench_model(m, args, root) for m in args.models.split(",")}
    sections = []
    for model, res in results.items():
        f = res["final"]
        rows, lowest = [], []
        for n in NFES:
            best_base = min(BASELINES, key=lambda s: f[s, n]["fid"])
            lowest.append(f["s3", n]["fid"] < f[best_base, n]["fid"])
            low = min(f[s, n]["fid"] for s in ("s3",) + BASELINES)

            def cell(s, n=n, low=low):
                v = f"{f[s, n]['fid']:.3f}" + ("" if s == "s3" else f" ({f[s, n]['grid']})")
                return f"**{v}**" if f[s, n]["fid"] == low else v

            rows.append([str(n), cell("s3")] + [cell(s) for s in BASELINES]
                        + [f"{f['s3', n]['fid'] / f[best_base, n]['fid']:.2f}"])
        best10 = min(f[s, 10]["fid"] for s in BASELINES)
        search = Path(args.search_dirs.format(model=model)) / "report.json"
        cost = ""
        if search.exists():
            rep = json.loads(search.read_text())
            cost = (f" Search cost: {rep['evaluations']} evaluations of {rep['samples']} samples, "
                    f"{rep['network_evaluations']:,} network evaluations, {rep['evaluation_time_s'] / 60:.0f} min "
                    f"(`samplebench search --model {model} --nfe {','.join(map(str, rep['best']))} --budget "
                    f"{rep['evaluations']} --samples {rep['samples']}`).")
        floor = f" FID of {args.num} exact mixture samples (the floor): {res['floor']:.3f}." if "floor" in res else ""
        sections.append(
            f"### {model}\n\n"
            + table(["NFE", "S3"] + [f"{s} (grid)" for s in BASELINES] + ["S3 / best baseline"], rows)
            + f"\n\nS3 lowest at every NFE: {'yes' if all(lowest) else 'no (' + ', '.join(str(n) for n, ok in zip(NFES, lowest) if not ok) + ')'}."
            + f" S3 at 5 NFE ({f['s3', 5]['fid']:.3f}) vs the best baseline at 10 NFE ({best10:.3f}): "
            + f"{'no worse' if f['s3', 5]['fid'] <= best10 else 'worse'}.{floor}{cost}"
            + " The lowest FID per NFE is in bold."
            + f" Time: {res['total_s'] / 60:.0f} min ({res['select_s'] / 60:.0f} min grid selection).")
    plot = DOC.parent / "fid-vs-nfe.png"
    _plot(results, plot)
    body = (f"## S3 schedules vs solvers: digits-FID at 4-10 NFE\n\n`{command}` on {machine()}. {args.num} samples "
            f"per cell, seeds 0..{args.num - 1}; digits-FID (clean mode, the shipped classifier's features) against "
            f"each model's reference (`digits-train`; digits-gmm: 10,000 exact samples). Each baseline runs on its "
            f"best time grid, chosen per NFE on {args.select_num} other samples (seeds {SELECT_SEED:,}+) among "
            f"{', '.join(GRIDS)} and its default; S3 is the shipped schedule, searched on other seeds (500,000+).\n\n"
            + "\n\n".join(sections) + f"\n\n![FID vs NFE]({plot.relative_to(DOC.parent)})")
    print(body)
    if not args.no_write:
        write_section("fid-vs-nfe", body)


if __name__ == "__main__":
    main()
