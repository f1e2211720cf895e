"""Low-resolution cascades: images per second and digits-FID of the LowDiff cascade (digits-lowdiff) at several
NFE splits, the training-free cascade, and the single-resolution digits model at several NFEs, in one run.

    python bench/cascade.py [--num 2000] [--solver dpmpp-2m] [--out evals/cascade]

Every configuration is a resumable ``samplebench eval`` job (seeds 0..num-1 for all) whose rows also go to
``<out>/runs.db``. Throughput is num / sampling wall time (batches of 250), measured in the same run; a resumed run
re-times nothing it finds on disk, so for timings run it whole on an idle machine. The single-resolution settings
include, at each NFE 3-10, the strongest one the project has (docs/baselines.json, from bench/fid_vs_nfe.py). A
cascade meets the target when it reaches a digits-FID within 10% of a single-resolution setting at >= 1.5x that
setting's throughput; it is compared with the fastest single-resolution setting that good. Beside it, the lowest-FID
single-resolution setting at equal or lower FLOPs. Writes the table and docs/cascade.png.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, baselines, fid_cell, fid_panel, machine, table, write_section  # noqa: E402

from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402

SINGLE_NFES = (4, 5, 6, 8, 10, 15, 20, 30)
# (split, t*): the 16x16 stage from noise (t* = T = 1), or from the renoised upsampled 8x8 sample
LOWDIFF = (("8:6,16:2", 1.0), ("8:6,16:4", 1.0), ("8:10,16:2", 1.0), ("8:10,16:4", 1.0), ("8:15,16:3", 1.0),
           ("8:20,16:4", 1.0), ("8:30,16:6", 1.0), ("8:6,16:2", 0.3), ("8:10,16:2", 0.3), ("8:20,16:2", 0.3),
           ("8:30,16:3", 0.3))
# training-free: the digits UNet finishes from t* what another model (or itself) drew at 8x8
TRAINING_FREE = (("digits-lowdiff", "8:10,16:4", 0.3), ("digits-lowdiff", "8:20,16:6", 0.5),
                 ("digits", "8:10,16:6", 0.5))


def configs() -> list[tuple[str, str, str, dict]]:
    """(kind, label, model, EvalConfig options); options may name their own solvers."""
    out = [("single", f"NFE {n}", "digits", {"nfes": (n,)}) for n in SINGLE_NFES]
    for n, e in sorted(baselines("digits").items()):  # each NFE's strongest setting: solver on its grid, or S3
        grid = {} if e["solver"] == "s3" else {"time_grid": e["grid"]}
        out.append(("single", f"NFE {n} {e['solver']}" + (f"/{e['grid']}" if grid else ""), "digits",
                    {"nfes": (n,), "solvers": (e["solver"],), **grid}))
    out += [("lowdiff", s + (f" from {t}" if t < 1 else ""), "digits-lowdiff", {"cascade": s, "cascade_from": t})
            for s, t in LOWDIFF]
    out += [("training-free", f"{s} from {t} ({low} at 8x8)", "digits",
             {"cascade": s, "cascade_from": t, "cascade_model": None if low == "digits" else low})
            for low, s, t in TRAINING_FREE]
    return out


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for kind, style in (("single", "-o"), ("lowdiff", "s"), ("training-free", "^")):
        pts = sorted((r["ips"], r["fid"], r["label"]) for r in rows if r["kind"] == kind)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label={"single": "digits (16x16 only)",
                                                                        "lowdiff": "digits-lowdiff cascade",
                                                                        "training-free": "training-free"}[kind])
        for ips, fid, label in pts:
            ax.annotate(label.split(" (")[0].replace("NFE ", ""), (ips, fid), fontsize=6, xytext=(3, 2),
                        textcoords="offset points")
    ax.set_xscale("log")
    fid_panel(ax, "images / s (sampling, batches of 250)", "cascades vs single resolution")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--solver", default="dpmpp-2m")
    p.add_argument("--out", default="evals/cascade")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    root = Path(args.out)
    command = f"python bench/cascade.py --num {args.num} --solver {args.solver} --out {args.out}"
    rows = []
    for kind, label, model, options in configs():
        name = (f"{kind}-{model}-{label.split(' (')[0]}".replace(" ", "-").replace(":", "x").replace(",", "-")
                .replace("/", "-"))
        config = EvalConfig(model=model, num=args.num, metrics=("fid",), ref="digits-train",
                            **{"nfes": (), "solvers": (args.solver,), **options})
        for r in run_eval(config, root / name, db=root / "runs.db", progress=False):
            rows.append({"kind": kind, "label": label, "nfe": r["nfe"], "fid": r["fid"], "fid_low": r["fid_low"], "fid_high": r["fid_high"],
                         "ips": args.num / r["wall_time_s"], "gflops": r["gflops_per_sample"],
                         "flops": r["flop_fraction"]})
            print(rows[-1], flush=True)
    single = [r for r in rows if r["kind"] == "single"]
    full_gflops = single[0]["gflops"] / single[0]["nfe"]
    lines, met = [], []
    for r in rows:
        rival = ref = speedup = None
        if r["kind"] != "single":
            # at equal or lower cost, the single-resolution setting with the lowest FID
            rival = min((s for s in single if s["gflops"] <= r["gflops"] + 1e-9), key=lambda s: s["fid"], default=None)
            # at equal quality (FID at most 10% above the row's), the fastest single-resolution setting
            ref = max((s for s in single if s["fid"] <= 1.1 * r["fid"]), key=lambda s: s["ips"], default=None)
            speedup = r["ips"] / ref["ips"] if ref else None
        ok = speedup is not None and speedup >= 1.5
        if ok:
            met.append(f"{r['label']} ({speedup:.2f}x the throughput of {ref['label']})")
        single_row = r["kind"] == "single"
        lines.append([r["kind"], r["label"], str(r["nfe"]), f"{r['gflops'] / full_gflops:.1f}", f"{r['gflops']:.2f}",
                      f"{r['ips']:.0f}", fid_cell(r),
                      "-" if single_row else f"{rival['label']}: {rival['fid']:.3f} ({r['fid'] / rival['fid']:.2f}x)"
                      if rival else "none",
                      "-" if single_row else f"{ref['label']}: {ref['fid']:.3f}, {speedup:.2f}x" if ref else "none",
                      "yes" if ok else ""])
    plot = DOC.parent / "cascade.png"
    if not args.no_write:
        _plot(rows, plot)
    body = (f"## Low-resolution cascades (LowDiff and training-free)\n\n`{command}` on {machine()}. {args.solver} in "
            f"every stage, {args.num} samples per row, seeds 0..{args.num - 1} for every row; digits-FID against "
            "`digits-train`. LowDiff rows without \"from\" start the 16x16 stage at t* = T. Cost: FLOPs per sample in full-resolution (16x16) evaluations, from torch's FLOP counter "
            "per stage (an 8x8 evaluation costs about a quarter of a 16x16 one); images/s: sampling wall time in "
            "batches of 250. Single-resolution settings: the digits UNet with the cascade's solver on its own grid at "
            "several NFEs, and at each NFE 3-10 the strongest setting the project has (any registry solver on its "
            "best grid, or S3, chosen by bench/fid_vs_nfe.py on other seeds; docs/baselines.json), all on these "
            "seeds. Competitor at equal cost: the lowest-FID single-resolution setting with at most the row's "
            "GFLOPs per sample (the row's FID as a multiple of its). Equal quality: the fastest single-resolution "
            "setting whose FID is at most 10% above the row's, and the row's throughput against it; target: >= 1.5x. "
            "At 2,000 samples the FID intervals are wider than 10%, so a match within 10% is a match within noise."
            "\n\n"
            + table(["kind", "setting", "NFE", "16x16-equivalent NFE", "GFLOPs/sample", "images/s", "digits-FID",
                     "competitor at equal or lower cost (FID vs it)", "fastest at equal quality, throughput vs it",
                     "target met"], lines)
            + f"\n\nTarget met by: {', '.join(met) if met else 'none'}.\n\n"
            "The 16x16 digits are bilinear upsamplings of the native 8x8 images (`samplebench.data`), so the 8x8 "
            "stage carries all the information and the 16x16 stage only has to restore the upsampling; a data set "
            "with detail above the low resolution leaves the last stage more to do.\n\n"
            + f"![throughput vs FID]({plot.relative_to(DOC.parent)})")
    print(body)
    if not args.no_write:
        write_section("cascade", body)


if __name__ == "__main__":
    main()
