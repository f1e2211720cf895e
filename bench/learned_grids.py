"""The cost-quality frontier: S3 against the learned time grids of 2024-2026 (GITS, DM-NonUniform, LD3) at NFE 3-6.

    python bench/learned_grids.py [--num 5000] [--models digits,digits-gmm,digits-dit,digits-flow]
                                  [--solvers ipndm,unipc-bh2,dpmpp-3m] [--nfes 3,4,5,6] [--out evals/learned-grids]
                                  [--searched 'S3 quick=searches/quick-{model}' ...] [--stretch]

Per model and NFE, digits-FID with its 95% interval on seeds 0 .. num - 1 (never searched, never used to fit a
grid) of: each learned grid with the solvers its paper pairs it with (iPNDM for GITS, UniPC and DPM-Solver++ for DMN
and LD3; every pair is run), the best hand-designed baseline (the registry solver on its best grid,
docs/baselines.json, from bench/fid_vs_nfe.py) and S3 (the model's shipped schedule); paired intervals of S3 minus
each, on the shared seeds. Each method's one-off cost is its wall time as recorded when it was made: GITS's
teacher pass, DMN's optimisation, LD3's teacher and training (per solver and NFE), S3's search (its report), 0 for
a fixed grid. ``--searched`` adds another search's schedules (its folder's ``s3/``) as a row with its one-off
cost (``search.run.search_cost_s``), paired against S3 and against the best LD3 grid. Writes the tables and
docs/frontier-MODEL.png: FID against that cost (log scale) at NFE 4 and 5.
Above NFE 5 each table says how far S3 and the lowest other method are from the floor: the ODE solved near-exactly
on the same seeds (DPM-Solver++(3M), 100 NFE; paired) on a network model, as many exact samples on digits-gmm.
``--stretch`` runs every method again at twice NFE 4 and 5 and tests S3 at k against the lowest of them at 2k,
paired. Every run is a resumable ``samplebench eval`` job under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import (ANALYTIC, DOC, ODE, baselines, diff_cell, fid_cell, fid_panel, floor_fid,  # noqa: E402
                     has_section, machine, table, write_section)

from samplebench.compare import compare_runs  # noqa: E402
from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402
from samplebench.search.run import search_cost_s  # noqa: E402
from samplebench.usf.shipped import s3_folder  # noqa: E402

MODELS = ("digits", "digits-gmm", "digits-dit", "digits-flow")
SOLVERS = ("ipndm", "unipc-bh2", "dpmpp-3m")
LEARNED = ("gits", "dmn", "ld3")
NFES = (3, 4, 5, 6)


def _eval(out: Path, **kw) -> dict[int, dict]:
    rows = run_eval(EvalConfig(metrics=("fid",), **kw), out, db=out.parent / "runs.db", progress=False)
    return {r["nfe"]: r for r in rows}


def _cost(model: str, grid: str, solver: str, nfe: int) -> float:
    """Seconds the grid cost to make, as recorded in its file (0 for fixed grids)."""
    from samplebench.learned import grid_cost, learned_grid
    from samplebench.learned.dmn import dmn_grid
    from samplebench.models import load_model
    from samplebench.samplers import get_solver

    m = load_model(model)
    spec = get_solver(solver)
    steps = spec.steps_for_nfe(nfe)
    if grid == "dmn":
        return dmn_grid(m.schedule, solver, steps, p=1.0)[1]["wall_time_s"]
    if grid in ("gits", "ld3"):
        learned_grid(m, spec, steps, grid, progress=False)  # shipped or cached
        return grid_cost(m, "gits.json" if grid == "gits" else f"ld3/{solver}-steps{steps}.json")["wall_time_s"]
    return 0.0


def _has_ld3(model: str, solver: str, nfe: int) -> bool:
    """Whether the model ships (or has cached) an LD3 grid for the solver and NFE (``bench/ship_grids.py``)."""
    from samplebench.learned import grid_file
    from samplebench.models import load_model

    return any(p is not None and p.is_file() for p in grid_file(load_model(model), f"ld3/{solver}-steps{nfe}.json"))


def _cells(model: str, args, root: Path, nfes: tuple[int, ...]) -> tuple[dict, dict, dict]:
    """FID cells, their eval jobs (``job:solver:nfe``) and one-off costs at ``nfes``: each learned grid with the
    solvers its paper pairs it with, the best hand-designed baseline and the shipped S3."""
    cells, jobs, costs = {}, {}, {}
    for s in args.solvers.split(","):
        for g in LEARNED:
            on = tuple(n for n in nfes if g != "ld3" or _has_ld3(model, s, n))
            if not on:
                continue
            job = root / model / f"{s}-{g}"
            for n, r in _eval(job, model=model, solvers=(s,), nfes=on, num=args.num, seed=0, time_grid=g).items():
                cells[f"{s}+{g}", n], jobs[f"{s}+{g}", n] = r, f"{job}:{s}:{n}"
                costs[f"{s}+{g}", n] = _cost(model, g, s, n)
    best = baselines(model)
    for n in nfes:
        b = best[n]
        s, g = b["best_registry_solver"], b["best_registry_grid"]
        job = root / model / f"baseline-{s}-{g}-nfe{n}"
        r = _eval(job, model=model, solvers=(s,), nfes=(n,), num=args.num, seed=0, time_grid=g)[n]
        cells["baseline", n], jobs["baseline", n], costs["baseline", n] = {**r, "label": f"{s} ({g})"}, \
            f"{job}:{s}:{n}", 0.0
    report = s3_folder(model) / "report.json"
    rep = json.loads(report.read_text()) if report.exists() else {}
    for n, r in _eval(root / model / "s3", model=model, solvers=("s3",), nfes=nfes, num=args.num, seed=0).items():
        cells["s3", n], jobs["s3", n], costs["s3", n] = r, f"{root / model / 's3'}:s3:{n}", search_cost_s(rep)
    return cells, jobs, costs


def bench_model(model: str, args, root: Path) -> dict:
    t0 = time.perf_counter()
    cells, jobs, costs = _cells(model, args, root, args.nfe_list)
    extra = {}  # other searches (--searched LABEL=FOLDER): their S3 schedules, cost and paired test against LD3
    for label, pattern in args.searched:
        folder = Path(pattern.format(model=model))
        if not (folder / "report.json").is_file():
            print(f"{model}: no search at {folder} for --searched {label!r}; left out", flush=True)
            continue
        rep = json.loads((folder / "report.json").read_text())
        nfes = tuple(n for n in args.nfe_list if (folder / "s3" / f"nfe{n}.json").is_file())
        job = root / model / f"searched-{label.replace(' ', '-')}"
        ld3_s = sum(c["wall_time_s"] for f, c in rep.get("learned_grids", {}).items() if f.startswith("ld3/"))
        for n, r in _eval(job, model=model, solvers=("s3",), nfes=nfes, num=args.num, seed=0,
                          schedule=str(folder / "s3")).items():
            cells[label, n], jobs[label, n], costs[label, n] = r, f"{job}:s3:{n}", search_cost_s(rep)
            ld3 = min((k for (k, m) in cells if m == n and k.endswith("+ld3")), key=lambda k: cells[k, n]["fid"],
                      default=None)
            if ld3 is not None:
                extra[label, n] = (ld3, compare_runs(jobs[label, n], jobs[ld3, n])[2], ld3_s)
    paired = {(k, n): compare_runs(jobs["s3", n], jobs[k, n])[2] for (k, n) in jobs if k != "s3"}
    floor = _floor(model, args, root, cells, jobs)
    stretch = _stretch(model, args, root, cells, jobs) if args.stretch else {}
    return {"cells": cells, "costs": costs, "paired": paired, "vs_ld3": extra, "floor": floor, "stretch": stretch,
            "total_s": time.perf_counter() - t0}


def _stretch(model: str, args, root: Path, cells: dict, jobs: dict) -> dict:
    """The stretch target: S3 at k against the lowest of every method here at 2k (k = 4, 5), paired on the same
    seeds."""
    ks = tuple(k for k in (4, 5) if ("s3", k) in cells)
    if not ks:
        return {}
    c2, j2, _ = _cells(model, args, root, tuple(2 * k for k in ks))
    out = {}
    for k in ks:
        best = min((m for (m, n) in c2 if n == 2 * k), key=lambda m: c2[m, 2 * k]["fid"])
        out[k] = (best, c2[best, 2 * k], compare_runs(jobs["s3", k], j2[best, 2 * k])[2])
    return out


def _floor(model: str, args, root: Path, cells: dict, jobs: dict) -> dict | None:
    """Above NFE 5, how far S3 and the lowest other method are from the ODE floor: on a network model the ODE solved
    near-exactly on the same seeds (``ODE``; paired), on an analytic one the FID of as many exact samples."""
    above = [n for n in args.nfe_list if n > 5]
    if not above:
        return None
    if model in ANALYTIC:
        f = floor_fid(model, args.num)
        out = {"text": f"FID of {args.num} exact mixture samples {f:.3f}"}
        dist = lambda k, n: f"{cells[k, n]['fid'] - f:+.3f}"  # noqa: E731
    else:
        ode = root / model / "ode"
        (r,) = _eval(ode, model=model, solvers=(ODE[0],), nfes=(ODE[1],), num=args.num, seed=0,
                     time_grid="logsnr").values()
        out = {"text": f"the ODE solved near-exactly ({ODE[0]} at {ODE[1]} NFE, logSNR grid, the same seeds) "
                       f"{fid_cell(r)}"}
        dist = lambda k, n: diff_cell(compare_runs(jobs[k, n], f"{ode}:{ODE[0]}:{ODE[1]}")[2]) + " paired"  # noqa: E731
    for n in above:
        other = min((k for (k, m) in cells if m == n and k != "s3"), key=lambda k: cells[k, n]["fid"])
        out[n] = (f"NFE {n}: S3 {dist('s3', n)}" if ("s3", n) in cells else f"NFE {n}:") + \
            f", the lowest other ({cells[other, n].get('label', other)}) {dist(other, n)}"
    return out


def _plot(model: str, res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ipndm": "tab:blue", "unipc-bh2": "tab:orange", "dpmpp-3m": "tab:green"}
    markers = {"gits": "^", "dmn": "o", "ld3": "D"}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, n in zip(axes, (4, 5)):
        for (k, m), r in sorted(res["cells"].items()):
            if m != n:
                continue
            cost = max(res["costs"][k, m], 0.1)  # fixed grids cost nothing: drawn at 0.1 s on the log axis
            solver, _, grid = k.partition("+")
            style = ({"color": "black", "marker": "*", "ms": 12} if k == "s3" else
                     {"color": "dimgrey", "marker": "PXhd"[res["searched"].index(k) % 4], "ms": 9}
                     if k in res["searched"] else
                     {"color": "grey", "marker": "s", "ms": 7} if k == "baseline" else
                     {"color": colors.get(solver, "tab:red"), "marker": markers.get(grid, "x"), "ms": 6})
            ax.errorbar([cost], [r["fid"]], yerr=[[r["fid"] - r["fid_low"]], [r["fid_high"] - r["fid"]]],
                        capsize=3, ls="none", label="S3 (shipped)" if k == "s3" else r.get("label", k), **style)
        ax.set_xscale("log")
        fid_panel(ax, "one-off cost, seconds (log; fixed grids at 0.1)", f"{model}, NFE {n}")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)



def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--solvers", default=",".join(SOLVERS))
    p.add_argument("--nfes", default=",".join(map(str, NFES)))
    p.add_argument("--out", default="evals/learned-grids")
    p.add_argument("--searched", action="append", default=[], metavar="LABEL=FOLDER",
                   help="another search's folder (samplebench search --out), {model} standing for the model, e.g. "
                        "'S3 quick=searches/quick-{model}': a row with its schedules and its one-off cost")
    p.add_argument("--stretch", action="store_true",
                   help="also run every method at twice NFE 4 and 5 and test S3 at k against the lowest at 2k")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    args.searched = [tuple(x.split("=", 1)) for x in args.searched]
    args.nfe_list = tuple(int(n) for n in args.nfes.split(","))
    root = Path(args.out)
    command = (f"python bench/learned_grids.py --num {args.num} --models MODEL --solvers {args.solvers} "
               f"--nfes {args.nfes}" + " --stretch" * args.stretch
               + "".join(f" --searched '{a}={b}'" for a, b in args.searched))
    for model in args.models.split(","):
        res = bench_model(model, args, root)
        res["searched"] = [label for label, _ in args.searched]
        keys = sorted({k for k, _ in res["cells"]}, key=lambda k: (k != "s3", k not in res["searched"],
                                                                 k != "baseline", k))
        rows, wins = [], {}
        for k in keys:
            row = [("S3 (shipped search)" if k == "s3" else "best baseline" if k == "baseline" else k)]
            for n in args.nfe_list:
                r = res["cells"].get((k, n))
                cell = "-" if r is None else fid_cell(r) + (f" ({r['label']})" if "label" in r else "")
                if k != "s3" and (k, n) in res["paired"]:
                    d = res["paired"][k, n]
                    cell += f"; S3 - it {diff_cell(d)}"
                    if k not in res["searched"]:  # the shipped S3 against every learned grid and the baseline
                        wins.setdefault(n, []).append(d.high < 0)
                row.append(cell)
            cost = max(res["costs"].get((k, n), 0.0) for n in args.nfe_list)
            row.append(f"{cost:.1f}" if cost else "0")
            rows.append(row)
        below = [n for n in args.nfe_list if wins.get(n) and all(wins[n])]
        vs_ld3 = "".join(f"\n- {label} at NFE {n}: {res['cells'][label, n]['fid']:.3f} for "
                         f"{res['costs'][label, n]:.0f} s ({res['costs'][label, n] - ld3_s:.0f} s without the LD3 "
                         f"grids its stage 0 starts from) against the best LD3 grid {k} "
                         f"({res['cells'][k, n]['fid']:.3f}, {res['costs'][k, n]:.0f} s for this solver and NFE): "
                         f"{label} - LD3 {diff_cell(d)}" for (label, n), (k, d, ld3_s) in sorted(res["vs_ld3"].items()))
        for label in res["searched"]:  # what a whole search costs against training every LD3 grid of the table
            ns = sorted(n for (k, n) in res["vs_ld3"] if k == label)
            if ns:
                every = sum(c for (k, n), c in res["costs"].items() if k.endswith("+ld3") and n in ns)
                vs_ld3 += (f"\n- {label}, one search for NFE {', '.join(map(str, ns))}: "
                           f"{res['costs'][label, ns[0]]:.0f} s; "
                           f"every LD3 grid of the table at those NFEs (each solver's, since the best is known only "
                           f"once all are trained): {every:.0f} s")
        vs_ld3 = f"\n\nOther searches against the best LD3 grid, paired:{vs_ld3}" if vs_ld3 else ""
        stretch = "".join(f"\n- S3 at NFE {k} {res['cells']['s3', k]['fid']:.3f} against the lowest at NFE {2 * k}, "
                          f"{r.get('label', m) if m != 's3' else 'S3'} {fid_cell(r)}: S3 - it {diff_cell(d)}, "
                          + ("not shown worse (the interval reaches 0)" if d.low <= 0 else "worse")
                          for k, (m, r, d) in sorted(res["stretch"].items()))
        stretch = (f"\n\nStretch target, S3 at k no worse than the best of every method above at 2k (each run "
                   f"at 2k on the same seeds; LD3 where the model ships its grid at 2k), paired:{stretch}"
                   if stretch else "")
        fl = res["floor"]
        floor = ("" if fl is None else f"\n\nAbove NFE 5, the distance to the floor ({fl['text']}): "
                 + "; ".join(fl[n] for n in args.nfe_list if n in fl) + ".")
        plot = DOC.parent / f"frontier-{model}.png"
        body = (f"### {model}\n\n`{command.replace('MODEL', model)}` on {machine()}: {args.num} samples per cell "
                f"(seeds 0..{args.num - 1}); digits-FID [95%], and S3 minus each, paired on the same seeds.\n\n"
                + table(["method"] + [f"NFE {n}" for n in args.nfe_list] + ["one-off cost, s (largest)"], rows)
                + f"\n\nThe shipped S3 below every learned grid and the best baseline with its paired interval below "
                f"zero at NFE {', '.join(map(str, below)) or 'none'} (of {', '.join(map(str, args.nfe_list))})."
                f"{floor}{vs_ld3}{stretch}\n\nThis run took {res['total_s'] / 60:.0f} min.\n\n"
                f"![cost-quality frontier, {model}]({plot.relative_to(DOC.parent)})")
        print(body, flush=True)
        if not args.no_write:
            _plot(model, res, plot)
            if not has_section("learned-grids"):
                write_section("learned-grids", "## S3 and the learned time grids: the cost-quality frontier\n\n"
                              "Written by `python bench/learned_grids.py` (one table per model).")
            write_section(f"learned-grids:{model}", body, after="learned-grids")


if __name__ == "__main__":
    main()
