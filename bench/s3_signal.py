"""Which screening signal ranks S3 candidates the way the 5,000-sample FID does?

    python bench/s3_signal.py --model digits-gmm --search evals/search-digits-gmm [--per-nfe 12] [--num 5000]

From a finished search folder, per NFE, ``--per-nfe`` screened candidates evenly spread over the screening ranks
(best, worst and between; stage 0 and searched alike) are re-scored on ``--num`` fresh seeds (the search's
re-scoring seeds: its finalists' files are reused) and each screening signal's Spearman rank correlation with that
FID is reported: the endpoint distance and the FID of the screening samples. The re-scores are kept in
``SEARCH/calibration`` (resumable). The search's own report gives the same correlation over its finalists only,
the top of the ranking, where the signals must separate near-ties.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.files import atomic_write  # noqa: E402
from samplebench.search.run import SearchConfig, _Evaluator, _spearman  # noqa: E402
from samplebench.usf import SolverSchedule  # noqa: E402


def spread(rows: list[dict], k: int) -> list[dict]:
    """k rows at evenly spaced ranks of the screening score (all of them when there are fewer)."""
    rows = sorted(rows, key=lambda r: (r["score"], r["id"]))
    if len(rows) <= k:
        return rows
    return [rows[int(round(i))] for i in np.linspace(0, len(rows) - 1, k)]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="digits-gmm")
    p.add_argument("--search", default=None, help="search folder (default evals/search-MODEL)")
    p.add_argument("--per-nfe", type=int, default=12)
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    folder = Path(args.search or f"evals/search-{args.model}")
    settings = json.loads((folder / "search.json").read_text())
    config = SearchConfig(**{**settings, "nfes": tuple(settings["nfes"]), "rescore": args.num})
    evals = [json.loads(f.read_text()) for f in sorted((folder / "evals").glob("*.json"))]
    cal = folder / "calibration"
    cal.mkdir(exist_ok=True)
    ev = None
    rows, pooled = [], {"endpoint": [], "fid": []}
    for nfe in config.nfes:
        picked = spread([r for r in evals if r["nfe"] == nfe and r["score"] is not None], args.per_nfe)
        fids = []
        for r in picked:
            path = cal / f"{r['id']}.json"
            old = folder / "rescore" / f"{r['id']}.json"
            if not path.exists() and old.exists() and json.loads(old.read_text())["num_samples"] == args.num:
                atomic_write(path, old.read_text())
            if not path.exists():
                ev = ev or _Evaluator(config, None)
                row, _ = ev.rescore(SolverSchedule.from_dict(r["schedule"]))
                atomic_write(path, json.dumps({"id": r["id"], **row}, indent=1))
            fids.append(json.loads(path.read_text())["fid"])
        rho = {"endpoint": _spearman([r["endpoint"] for r in picked], fids),
               "fid": _spearman([r["fid"] for r in picked], fids)}
        for s, v in rho.items():
            if v is not None:
                pooled[s].append(v)
        rows.append([str(nfe), str(len(picked)), f"{min(f for f in fids if f is not None):.3f}-"
                     f"{max(f for f in fids if f is not None):.3f}"]
                    + ["-" if rho[s] is None else f"{rho[s]:.2f}" for s in ("endpoint", "fid")])
    mean = {s: float(np.mean(v)) if v else float("nan") for s, v in pooled.items()}
    rows.append(["mean", "", "", f"{mean['endpoint']:.2f}", f"{mean['fid']:.2f}"])
    command = f"python bench/s3_signal.py --model {args.model} --search {folder} --per-nfe {args.per_nfe} --num {args.num}"
    body = (f"### Screening signal on {args.model}\n\n`{command}` on {machine()}. Per NFE, {args.per_nfe} screened "
            f"candidates spread evenly over the screening ranks, re-scored on {args.num} fresh seeds (600,000+); "
            f"Spearman rank correlation of each screening signal ({config.samples} samples, seeds 500,000+) with that "
            "FID.\n\n" + table(["NFE", "candidates", f"FID-{args.num} range", "endpoint distance",
                                f"FID of the {config.samples} screening samples"], rows))
    print(body)
    if not args.no_write:
        write_section(f"s3-signal-{args.model}", body)


if __name__ == "__main__":
    main()
