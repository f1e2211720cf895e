"""S3 search throughput: images x NFE per second of a search stage's evaluations against plain ``sample`` of the
same images at the same NFE (target: >= 0.9x).

    python bench/search_throughput.py [--models digits,digits-dit,digits-gmm] [--nfes 4,8] [--num 500] [--repeats 3]

Per model and NFE, in one process and alternating: ``sample`` with the registry's DPM-Solver++(3M) on the logSNR
grid, a screening evaluation of the same solver as a USF schedule (sampling, distance to the exact-ODE images,
feature extraction and FID), and a re-scoring evaluation (sampling, features, FID and its bootstrap interval), all on
the same seeds. Medians of ``--repeats``; ratios are evaluation / sample.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.sampling import resolve_solver, sample  # noqa: E402
from samplebench.search.run import SearchConfig, _Evaluator  # noqa: E402
from samplebench.usf import known_schedule  # noqa: E402


def evaluator(model: str, num: int) -> _Evaluator:
    config = SearchConfig(model=model, budget=8, samples=num, rescore=num, rescore_seed=10_000_000, batch_size=250)
    ev = _Evaluator(config, None)
    ev.target = ev.exact_images()[0]
    return ev


def bench(ev: _Evaluator, nfe: int, repeats: int) -> dict:
    config, num = ev.config, ev.config.samples
    solver, grid = resolve_solver(ev.model, "dpmpp-3m", nfe, "logsnr")
    schedule = known_schedule("dpmpp-3m", grid)
    times = {"sample": [], "screen": [], "rescore": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(ev.model, solver, grid, ev.seeds, batch_size=config.batch_size)
        times["sample"].append(time.perf_counter() - t0)
        times["screen"].append(ev.screen(schedule)["wall_time_s"])
        t0 = time.perf_counter()
        ev.rescore(schedule)
        times["rescore"].append(time.perf_counter() - t0)
    return {k: num * nfe / statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="digits,digits-dit,digits-gmm")
    p.add_argument("--nfes", default="4,8")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    rows = []
    for model in args.models.split(","):
        ev = evaluator(model, args.num)
        for nfe in map(int, args.nfes.split(",")):
            r = bench(ev, nfe, args.repeats)
            rows.append([model, str(nfe), f"{r['sample']:,.0f}", f"{r['screen']:,.0f}",
                         f"{r['screen'] / r['sample']:.2f}", f"{r['rescore']:,.0f}",
                         f"{r['rescore'] / r['sample']:.2f}"])
    command = (f"python bench/search_throughput.py --models {args.models} --nfes {args.nfes} --num {args.num} "
               f"--repeats {args.repeats}")
    body = (f"## S3 search throughput: evaluations against plain sampling\n\n`{command}` on {machine()}. Images x NFE "
            f"per second (medians of {args.repeats}), {args.num} images on the same seeds: `sample` with "
            "DPM-Solver++(3M) on the logSNR grid; a screening evaluation of the same solver as a USF schedule "
            "(sampling, RMS distance to the exact-ODE images, features and FID); a re-scoring evaluation (sampling, "
            "features, FID and its 1,000-resample bootstrap interval). Target: screening >= 0.9x of `sample`.\n\n"
            + table(["model", "NFE", "sample", "screening", "screening / sample", "re-scoring",
                     "re-scoring / sample"], rows))
    print(body)
    if not args.no_write:
        write_section("search-throughput", body)


if __name__ == "__main__":
    main()
