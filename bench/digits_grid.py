"""FID, KID and IS of five solvers at five NFEs on the embedded digits model: one resumable evaluation job.

    python bench/digits_grid.py [--num 2000] [--out evals/digits-grid]

The same as `samplebench eval --solver ddim,dpmpp-2m,dpmpp-3m,unipc-bh2,deis --nfe 4,5,6,8,10 --num 2000
--out evals/digits-grid`; a killed run resumes where it stopped. Writes the table and docs/eval-digits-grid.png.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, fid_cell, machine, table, write_section  # noqa: E402

from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402
from samplebench.results import plot_runs  # noqa: E402

SOLVERS = ("ddim", "dpmpp-2m", "dpmpp-3m", "unipc-bh2", "deis")
NFES = (4, 5, 6, 8, 10)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--out", default="evals/digits-grid")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    command = f"python bench/digits_grid.py --num {args.num} --out {args.out}"
    t0 = time.perf_counter()
    rows = run_eval(EvalConfig(model="digits", solvers=SOLVERS, nfes=NFES, num=args.num), args.out,
                    db=Path(args.out) / "runs.db")
    wall = time.perf_counter() - t0
    by = {(r["solver"], r["nfe"]): r for r in rows}
    body_rows = []
    for s in SOLVERS:
        body_rows.append([s] + [fid_cell(by[s, n]) for n in NFES])
    best = {n: min(SOLVERS, key=lambda s: by[s, n]["fid"]) for n in NFES}
    plot = plot_runs(rows, DOC.parent / "eval-digits-grid.png")
    body = (f"## Digits: FID vs NFE for five solvers\n\n`{command}` on {machine()} ({wall:.0f} s for this run; "
            f"a resumed run only scores). {args.num} samples per cell, seeds 0..{args.num - 1}, digits-FID against "
            f"`digits-train` (clean mode, the shipped classifier's features), with 95% intervals; each solver on its "
            f"default time grid. "
            f"Best per NFE: " + ", ".join(f"{n}: {best[n]}" for n in NFES) + ".\n\n"
            + table(["solver"] + [f"NFE {n}" for n in NFES], body_rows)
            + "\n\nKID x 1000 / IS at NFE 10: "
            + "; ".join(f"{s} {by[s, 10]['kid'] * 1000:.1f} / {by[s, 10]['inception_score']:.2f}" for s in SOLVERS)
            + f"\n\n![FID vs NFE and time]({plot.relative_to(DOC.parent)})")
    if not args.no_write:
        write_section("digits-grid", body)
    print(body)


if __name__ == "__main__":
    main()
