"""The evaluation harness: the time of a full digits evaluation, and feature-extraction throughput through the
harness against calling clean-fid directly on the same images, side by side in one run.

    python bench/eval_harness.py [--num 2000] [--repeats 3]

Target: harness throughput >= 0.95x clean-fid's on the same PNG folder (same extractor, mode, batch size and
process count: clean-fid with num_workers=0, as the harness reads files in the calling process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.evaluate import EvalConfig, run_eval  # noqa: E402
from samplebench.metrics import scores  # noqa: E402
from samplebench.metrics.extractors import DigitsExtractor  # noqa: E402
from samplebench.metrics.images import load_folder  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    command = f"python bench/eval_harness.py --num {args.num} --repeats {args.repeats}"

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. a full evaluation job from scratch: sampling, features, FID + KID + IS, database row
        t0 = time.perf_counter()
        config = EvalConfig(model="digits", solvers=("dpmpp-2m",), nfes=(10,), num=args.num,
                            metrics=("fid", "kid", "is"))
        row = run_eval(config, tmp / "job", db=tmp / "runs.db", progress=False)[0]
        total = time.perf_counter() - t0
        print(f"full evaluation: {total:.1f} s (sampling {row['wall_time_s']:.1f} s, scoring {row['eval_time_s']:.2f} s)"
              f" FID {row['fid']:.4f} KID {row['kid']:.5f} IS {row['inception_score']:.3f}", flush=True)

        # 2. feature extraction on the same PNG folder: harness vs clean-fid, alternating, median of repeats
        import numpy as np
        from cleanfid.fid import get_folder_features
        from PIL import Image

        folder = tmp / "pngs"
        folder.mkdir()
        for shard in sorted((tmp / "job" / "samples").rglob("shard-*.npz")):
            with np.load(shard) as z:
                for im, s in zip(z["images"], z["seeds"]):
                    Image.fromarray(im[..., 0]).save(folder / f"{s:06d}.png")
        ext = DigitsExtractor()
        arrays = load_folder(folder)
        runs: dict[str, list[float]] = {"harness (folder)": [], "clean-fid get_folder_features": [],
                                        "harness (in memory, no PNG decoding)": []}
        for _ in range(args.repeats):
            t = time.perf_counter()
            ours = scores.extract(load_folder(folder), ext, batch_size=128).feats
            runs["harness (folder)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            theirs = get_folder_features(str(folder), ext, num_workers=0, batch_size=128, device=torch.device("cpu"),
                                         mode="clean", custom_fn_resize=ext.resizer(), verbose=False)
            runs["clean-fid get_folder_features"].append(time.perf_counter() - t)
            t = time.perf_counter()
            scores.extract(arrays, ext, batch_size=128)
            runs["harness (in memory, no PNG decoding)"].append(time.perf_counter() - t)
        assert np.array_equal(ours, theirs), "harness and clean-fid features differ"
        base = statistics.median(runs["clean-fid get_folder_features"])
        rows = []
        for name, times in runs.items():
            med = statistics.median(times)
            rows.append([name, f"{med:.2f}", f"{len(arrays) / med:.0f}", f"{base / med:.2f}"])
            print(rows[-1], flush=True)

    body = (f"## Evaluation harness\n\n`{command}` on {machine()}.\n\n"
            f"A full digits evaluation from scratch (`samplebench eval --solver dpmpp-2m --nfe 10 --num {args.num} "
            f"--metrics fid,kid,is`): **{total:.1f} s** in all, of which sampling {row['wall_time_s']:.1f} s and "
            f"scoring (statistics, FID, KID with 100 subsets, IS with 10 splits) {row['eval_time_s']:.2f} s; "
            f"digits-FID {row['fid']:.4f} [{row['fid_low']:.4f}, {row['fid_high']:.4f}], KID {row['kid']:.5f} "
            f"[{row['kid_low']:.5f}, {row['kid_high']:.5f}] (95% intervals), IS {row['inception_score']:.3f}.\n\n"
            f"Feature extraction of the same {len(arrays)} PNGs with the digits extractor (batch 128, one process; "
            f"median of {args.repeats}, alternating; features identical bit for bit):\n\n"
            + table(["path", "seconds", "images/s", "throughput vs clean-fid"], rows))
    if not args.no_write:
        write_section("eval-harness", body)
    print(body)


if __name__ == "__main__":
    main()
