"""Quality of the embedded digits models: digits-FID against the training split, confidence and class balance.

    python bench/digits_quality.py [--num 2000] [--nfe 100] [--solver dpmpp-2m] [--models digits,digits-gmm,digits-dit,digits-flow]

The floor is the held-out (test) split against the training split. Targets for `digits`: FID at most twice the
floor, >= 85% of samples classified with confidence >= 0.9, every class within 5 points of 10%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.data import load_digits  # noqa: E402
from samplebench.metrics.digits import class_statistics, digits_features, fid_from_features, fid_interval_from_features  # noqa: E402,E501
from samplebench.models import load_model  # noqa: E402
from samplebench.models.base import Conditioning  # noqa: E402
from samplebench.models.embedded import WEIGHTS  # noqa: E402
from samplebench.samplers import get_solver  # noqa: E402
from samplebench.sampling import sample, solver_grid  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num", type=int, default=2000)
    p.add_argument("--nfe", type=int, default=100)
    p.add_argument("--solver", default="dpmpp-2m")
    p.add_argument("--models", default="digits,digits-gmm,digits-dit,digits-flow")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-write", action="store_true", help="print only; leave docs and model cards alone")
    args = p.parse_args()

    train_f, _ = digits_features(load_digits("train")[0])
    test_f, test_p = digits_features(load_digits("test")[0])
    floor = fid_from_features(test_f, train_f)
    test_stats = class_statistics(test_p)
    command = (f"python bench/digits_quality.py --num {args.num} --nfe {args.nfe} --solver {args.solver} "
               f"--models {args.models}")
    quality: dict[str, dict] = {}
    forward_ms: dict[str, float] = {}
    rows = [["test split (360 real images)", "-", f"{floor:.3f}", "1.00", f"{test_stats['confident_fraction'] * 100:.1f}",
             f"{test_stats['max_deviation_from_uniform_pct']:.1f}", "-"]]
    print(rows[0], flush=True)
    for name in args.models.split(","):
        model = load_model(name)
        solver = get_solver(args.solver)
        start = time.perf_counter()
        images = sample(model, solver, solver_grid(model, solver, args.nfe), range(args.seed, args.seed + args.num),
                        batch_size=500).images
        wall = time.perf_counter() - start
        f, pr = digits_features(images)
        interval = fid_interval_from_features(f, train_f)
        fid = interval.estimate
        st = class_statistics(pr)
        rows.append([name, f"{args.solver} @ {args.nfe} NFE", f"{fid:.3f} [{interval.low:.3f}, {interval.high:.3f}]", f"{fid / floor:.2f}",
                     f"{st['confident_fraction'] * 100:.1f}", f"{st['max_deviation_from_uniform_pct']:.1f}",
                     f"{wall:.0f}"])
        print(rows[-1], st["class_histogram_pct"], flush=True)
        # one evaluation of the model's denoiser (its network, or the exact mixture denoiser) at batch 256, t = 0.5
        denoiser = model.denoiser(Conditioning(model.class_labels(range(256))), 256)
        x = torch.randn(256, *model.sample_shape)
        with torch.inference_mode():
            denoiser(x, 0.5)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                denoiser(x, 0.5)
                times.append(time.perf_counter() - t0)
        forward_ms[name] = statistics.median(times) * 1000
        quality[name] = {"command": command, "num_samples": args.num, "sampler": f"{args.solver} @ {args.nfe} NFE",
                         "digits_fid_vs_train": round(fid, 4), "floor_test_vs_train": round(floor, 4),
                         "fid_over_floor": round(fid / floor, 3), **st}
    body = (f"## Embedded digits models: quality\n\n`{command}` on {machine()}. {args.num} samples (seeds "
            f"{args.seed}..{args.seed + args.num - 1}); digits-FID in the shipped classifier's 128-d feature space "
            "against the 1,437 training images (uint8-quantised like saved PNGs); the floor is the 360 held-out "
            "images. Targets for `digits`: FID/floor <= 2, confident >= 85%, worst class within 5 points of 10%."
            " FID estimates carry a finite-sample bias that shrinks with the sample count, so 2,000 generated images can score below the 360-image floor; the model has also seen the training images it is compared with.\n\n"
            + table(["images", "sampler", "digits-FID vs train", "FID / floor", "confidence >= 0.9 (%)",
                     "worst class deviation (points)", "sampling wall (s)"], rows)
            + "\n\nOne denoiser evaluation at batch 256 (median of 5): "
            + ", ".join(f"`{n}` {ms:.0f} ms" for n, ms in forward_ms.items()) + ".")
    if not args.no_write:
        write_section("digits-quality", body)
        for name, q in quality.items():  # the quality figures go into each shipped model's card
            card_path = WEIGHTS / name / "model_card.json"
            if card_path.exists():
                card = json.loads(card_path.read_text())
                card["quality"] = q
                card_path.write_text(json.dumps(card, indent=2))
    print(body)


if __name__ == "__main__":
    main()
