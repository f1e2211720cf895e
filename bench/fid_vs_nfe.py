"""digits-FID vs NFE: the shipped S3 schedules against every registry ODE solver, each on its best time grid, on the
digits UNet, the digits DiT, the digits flow-matching DiT and the digits Gaussian mixture, NFE 3-10.

    python bench/fid_vs_nfe.py [--num 5000] [--select-num 500] [--models digits,digits-gmm,digits-dit,digits-flow]
                               [--out evals/fid-vs-nfe]

(or ``accelerate launch --multi_gpu --num_processes 2 bench/fid_vs_nfe.py ...``: every job's shards split across the
processes).

1. Grid selection: every baseline at every NFE on the logSNR, time-uniform, time-quadratic and Karras grids,
   ``--select-num`` samples with seeds 1,000,000 + i (disjoint from the benchmark's and the search's).
2. The benchmark: every baseline on its selected grid and S3 (the model's shipped schedule), ``--num`` samples with
   seeds 0 .. num - 1 (never searched), FID with its 95% interval against the model's reference; the paired
   interval of S3 minus the best baseline at the same NFE, and of S3 at k minus the best baseline at 2k (k <= 5),
   on the shared seeds. On digits-gmm the FID of ``--num`` exact mixture samples is the floor; on a network model the
   ODE solved near-exactly (DPM-Solver++(3M) at 100 NFE, same seeds) is, and each NFE's best baseline is paired
   against it: where they agree, no schedule has much to win.
Euler is DDIM (the same update) and DDPM is stochastic, so neither is a separate baseline; Heun runs at even NFEs.
Every run is a resumable ``samplebench eval`` job under ``--out``; a killed benchmark resumes where it stopped. The
search cost comes from each model's shipped search report. Writes per model its table and docs/fid-vs-nfe-MODEL.png
(a run rewrites only the models it ran: a model's row takes hours on a CPU, so models run one at a time), and per
model and NFE the strongest setting (lowest FID: a baseline on its grid, or S3) to docs/baselines.json, which the
cascade and compute-skipping benchmarks match against.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from accelerate import PartialState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (ANALYTIC, DOC, ODE, diff_cell, fid_cell, fid_panel, floor_fid, has_section,  # noqa: E402
                     machine, table, write_baselines, write_section)

from samplebench.compare import compare_runs  # noqa: E402
from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402
from samplebench.samplers import get_solver  # noqa: E402
from samplebench.search.run import search_cost_s  # noqa: E402
from samplebench.usf.shipped import s3_folder  # noqa: E402

BASELINES = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2", "deis", "ipndm", "heun")
GRIDS = ("logsnr", "time-uniform", "time-quadratic", "karras")
NFES = (3, 4, 5, 6, 7, 8, 9, 10)
MODELS = ("digits", "digits-gmm", "digits-dit", "digits-flow")  # the default, and the order of the tables
SELECT_SEED = 1_000_000


def _nfes(solver: str) -> tuple[int, ...]:
    per = get_solver(solver).nfe_per_step
    return tuple(n for n in NFES if n % per == 0)


def _eval(out: Path, **kw) -> list[dict]:
    """One resumable job; under ``accelerate launch`` its shards split across the processes, and every process gets
    the rows (which grid each baseline's final job runs on depends on them)."""
    from accelerate.utils import broadcast_object_list

    rows = run_eval(EvalConfig(metrics=("fid",), **kw), out, db=out.parent / "runs.db", progress=False)
    return broadcast_object_list([rows])[0] if PartialState().num_processes > 1 else rows


def bench_model(model: str, args, root: Path) -> dict:
    t0 = time.perf_counter()
    select: dict[tuple[str, int], tuple[str, float]] = {}
    drawn = {"select": 0.0, "final": 0.0}  # sampling seconds as the jobs' shards recorded them when drawn
    for grid in GRIDS:
        for s in BASELINES:
            for r in _eval(root / model / f"select-{grid}-{s}", model=model, solvers=(s,), nfes=_nfes(s),
                           num=args.select_num, seed=SELECT_SEED, time_grid=grid):
                drawn["select"] += r["wall_time_s"]
                key = (r["solver"], r["nfe"])
                if key not in select or r["fid"] < select[key][1]:
                    select[key] = (grid, r["fid"])
    t_select = time.perf_counter() - t0
    final: dict[tuple[str, int], dict] = {}
    jobs: dict[tuple[str, int] | str, str] = {}
    for s in BASELINES:
        for grid in GRIDS:
            nfes = tuple(n for n in _nfes(s) if select[s, n][0] == grid)
            if nfes:
                job = root / model / f"{s}-{grid}"
                for r in _eval(job, model=model, solvers=(s,), nfes=nfes, num=args.num, seed=0, time_grid=grid):
                    drawn["final"] += r["wall_time_s"]
                    final[s, r["nfe"]] = {**r, "grid": grid}
                    jobs[s, r["nfe"]] = f"{job}:{s}:{r['nfe']}"
    for r in _eval(root / model / "s3", model=model, solvers=("s3",), nfes=NFES, num=args.num, seed=0):
        drawn["final"] += r["wall_time_s"]
        final["s3", r["nfe"]] = {**r, "grid": "s3"}
        jobs["s3", r["nfe"]] = f"{root / model / 's3'}:s3:{r['nfe']}"
    best = {n: min((s for s in BASELINES if (s, n) in final), key=lambda s: final[s, n]["fid"]) for n in NFES}
    ode = None
    if model not in ANALYTIC:  # the ODE itself, near-exactly solved: what no solver at 3-10 NFE can beat by much
        (ode,) = _eval(root / model / "ode", model=model, solvers=(ODE[0],), nfes=(ODE[1],), num=args.num, seed=0,
                       time_grid="logsnr")
        drawn["final"] += ode["wall_time_s"]
        jobs["ode"] = f"{root / model / 'ode'}:{ODE[0]}:{ODE[1]}"
    paired, double, converged = {}, {}, {}
    for n in NFES:
        paired[n] = compare_runs(jobs["s3", n], jobs[best[n], n])[2]
        if ode is not None:
            converged[n] = compare_runs(jobs[best[n], n], jobs["ode"])[2]
        if 2 * n in best:
            double[n] = (best[2 * n], compare_runs(jobs["s3", n], jobs[best[2 * n], 2 * n])[2])
    strongest = {}
    for n in NFES:
        s = min((s for s in ("s3",) + BASELINES if (s, n) in final), key=lambda s: final[s, n]["fid"])
        r = final[s, n]
        strongest[n] = {"solver": s, "grid": r["grid"], "nfe": n, "fid": r["fid"], "fid_low": r["fid_low"],
                        "fid_high": r["fid_high"], "num_samples": r["num_samples"], "seeds": r["seeds"],
                        "best_registry_solver": best[n], "best_registry_grid": final[best[n], n]["grid"]}
    out = {"final": final, "best": best, "paired": paired, "double": double, "ode": ode, "converged": converged,
           "select_s": t_select, "total_s": time.perf_counter() - t0, "drawn_s": drawn, "strongest": strongest}
    if model in ANALYTIC:
        out["floor"] = floor_fid(model, args.num)
    return out


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), squeeze=False)
    for ax, (model, res) in zip(axes[0], results.items()):
        for s in ("s3",) + BASELINES:
            ns = [n for n in NFES if (s, n) in res["final"]]
            rows = [res["final"][s, n] for n in ns]
            ys = [r["fid"] for r in rows]
            err = [[y - r.get("fid_low", y) for y, r in zip(ys, rows)], [r.get("fid_high", y) - y for y, r in zip(ys, rows)]]
            ax.errorbar(ns, ys, yerr=err, marker="o", capsize=2, lw=2.5 if s == "s3" else 1.0,
                        label="S3 (searched)" if s == "s3" else s)
        if "floor" in res:
            ax.axhline(res["floor"], color="grey", ls="--", lw=1, label="exact samples")
        if res.get("ode") is not None:
            ax.axhline(res["ode"]["fid"], color="grey", ls=":", lw=1, label=f"{ODE[0]} at {ODE[1]} NFE")
        fid_panel(ax, "NFE", model)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _replication(report: dict | None, final: dict, num: int) -> str:
    """The baselines the search re-scored (seeds 600,000+) that run here on the same grid (seeds 0..num-1): how far
    one setting's FID moves between two disjoint seed sets, the scale of any ranking by FID."""
    pairs = []
    for n, d in (report or {}).get("decisions", {}).items():
        for r in d.get("rescored", []):
            solver, _, grid = r["origin"].partition("/")
            here = final.get((solver, int(n)))
            if r["stage"] == 0 and here is not None and here["grid"] == grid and r.get("fid") is not None:
                pairs.append((abs(here["fid"] - r["fid"]), r["origin"], int(n), r["fid"], here["fid"]))
    if not pairs:
        return ""
    pairs.sort()
    gap, origin, n, a, b = pairs[-1]
    return (f" The same setting on the search's {report['rescore']:,} re-scoring seeds and on these {num:,} "
            f"({len(pairs)} baselines the search re-scored that run here on the same grid): FID moves by "
            f"{pairs[len(pairs) // 2][0]:.3f} (median) and at most {gap:.3f} ({origin} at NFE {n}: {a:.3f} there, "
            f"{b:.3f} here).")



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--select-num", type=int, default=500)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--out", default="evals/fid-vs-nfe")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    root = Path(args.out)
    command = (f"python bench/fid_vs_nfe.py --num {args.num} --select-num {args.select_num} --models {args.models} "
               f"--out {args.out}")
    results = {m: bench_model(m, args, root) for m in args.models.split(",")}
    if not PartialState().is_main_process:
        return
    sections = {}
    for model, res in results.items():
        f, best = res["final"], res["best"]
        rows, misses, slower, unclear = [], [], [], []
        report = s3_folder(model) / "report.json"
        rep = json.loads(report.read_text()) if report.exists() else None
        shipped_baseline = {int(n): d["shipped"]["origin"] for n, d in (rep or {}).get("decisions", {}).items()
                            if not d["searched"]}
        for n in NFES:
            low = min(f[s, n]["fid"] for s in ("s3",) + BASELINES if (s, n) in f)

            def cell(s, n=n, low=low):
                if (s, n) not in f:
                    return "-"
                v = fid_cell(f[s, n]) + ("" if s == "s3" else f" ({f[s, n]['grid']})")
                return f"**{v}**" if f[s, n]["fid"] == low else v

            d = res["paired"][n]
            if not d.high < 0:
                misses.append(n)
            two = "-"
            if n in res["double"] and n <= 5:
                name, dd = res["double"][n]
                two = f"{diff_cell(dd)} ({name})"
                if dd.low > 0:
                    slower.append(n)
                elif dd.high > 0:
                    unclear.append(n)
            s3 = cell("s3")
            if n in shipped_baseline:
                s3 += f" (= {shipped_baseline[n]})"
            ode = [f"{diff_cell(res['converged'][n])}"] if res["ode"] is not None else []
            rows.append([str(n), s3] + [cell(s) for s in BASELINES] + [f"{diff_cell(d)} ({best[n]})", two] + ode)
        cost = ""
        if rep is not None:
            minutes = search_cost_s(rep) / 60
            cost = (f" Search cost: {rep['evaluations']} screenings of {rep['samples']} samples and {rep['rescored']} "
                    f"re-scorings of {rep['rescore']}, {rep['network_evaluations']:,} network evaluations, "
                    f"{minutes:.0f} min of sampling and learned grids (the report beside the schedules).")
        floor = f" FID of {args.num} exact mixture samples (the floor): {res['floor']:.3f}." if "floor" in res else ""
        if res["ode"] is not None:
            at = [n for n in NFES if res["converged"][n].low <= 0]
            floor = (f" The ODE solved near-exactly ({ODE[0]} at {ODE[1]} NFE, logSNR grid, the same seeds): "
                     f"{fid_cell(res['ode'])}; the best baseline is not shown worse than it (paired interval "
                     f"reaching zero) at NFE {', '.join(map(str, at)) or 'none'}, where a schedule has little left to win.")
        again = _replication(rep, f, args.num)
        plot = DOC.parent / f"fid-vs-nfe-{model}.png"
        sections[model] = (
            f"### {model}\n\n`{command}` on {machine()}: {args.num} samples per cell (seeds 0..{args.num - 1}), grids "
            f"selected on {args.select_num}.\n\n"
            + table(["NFE", "S3 [95%]"] + [f"{s} [95%] (grid)" for s in BASELINES]
                    + ["S3 - best baseline, paired [95%]", "S3 at k - best baseline at 2k, paired"]
                    + ([f"best baseline - ODE ({ODE[0]} at {ODE[1]} NFE), paired"] if res["ode"] is not None else []),
                    rows)
            + "\n\nS3 lowest with the paired interval below zero at every NFE: "
            + ("yes" if not misses else f"no (not at {', '.join(map(str, misses))})")
            + ". S3 at k no worse than the best baseline at 2k for k <= 5: "
            + ("yes" if not slower and not unclear else
               "no" if slower else "not shown either way")
            + (f" (shown worse at k = {', '.join(map(str, slower))})" if slower else "")
            + (f" (interval holds zero, estimate above it, at k = {', '.join(map(str, unclear))})" if unclear else "")
            + ". Where the search did not beat the best baseline on its re-scoring seeds, S3 ships that baseline "
            "(marked '=')"
            + f".{floor}{cost}{again} The lowest FID per NFE is in bold."
            + f" Sampling time, as the jobs recorded it when their samples were drawn: "
            f"{sum(res['drawn_s'].values()) / 60:.0f} min ({res['drawn_s']['select'] / 60:.0f} min grid selection); "
            f"this run took {res['total_s'] / 60:.0f} min (a job already complete under `{args.out}` is read, not "
            "drawn again)."
            + f"\n\n![FID vs NFE, {model}]({plot.relative_to(DOC.parent)})")
        if not args.no_write:  # --no-write leaves docs/ alone, the figures included
            _plot({model: res}, plot)
    header = ("## S3 schedules vs solvers: digits-FID at 3-10 NFE\n\nOne table per model, each written by "
              "`python bench/fid_vs_nfe.py --models MODEL` (the default runs all four; each table names the command "
              "and machine that made it, and a run rewrites only its models' tables). Per cell, samples with seeds 0, "
              "1, ... (never searched); digits-FID (clean mode, the shipped classifier's features) with its 95% "
              "bootstrap interval against each model's reference (`digits-train`; digits-gmm: 10,000 exact "
              "samples). Each baseline runs on its best time grid, chosen per NFE on other samples "
              f"(seeds {SELECT_SEED:,}+) among {', '.join(GRIDS)}; S3 is the shipped schedule, screened on seeds "
              "500,000+ and re-scored on 600,000+. "
              "Paired differences resample the shared seeds jointly; below zero means S3 is lower.")
    print(header + "\n\n" + "\n\n".join(sections.values()))
    if not args.no_write:
        write_section("fid-vs-nfe", header)
        for model, body in sections.items():  # in the models' order, each after the one before it that is there
            k = MODELS.index(model) if model in MODELS else len(MODELS)
            before = [f"fid-vs-nfe:{m}" for m in MODELS[:k] if has_section(f"fid-vs-nfe:{m}")]
            write_section(f"fid-vs-nfe:{model}", body, after=(["fid-vs-nfe"] + before)[-1])
        for model, res in results.items():  # what the cascade and compute-skipping benches match against
            write_baselines(model, res["strongest"])


if __name__ == "__main__":
    main()
