"""What the FID and KID intervals cost, how often they cover, how far n-sample FIDs are from the limit, and what
pairing buys.

    python bench/intervals.py [--draws 50] [--num 5000] [--out evals/intervals]

1. Cost: one 2,000-sample `samplebench eval` of the digits model (dpmpp-2m, NFE 10, FID and KID), its wall time
   against the time of the two intervals (1,000 resamples each) on its features.
2. Coverage on real digits features: ``--draws`` independent sets of 2,000 exact digits-gmm samples (the floor:
   FID_inf close to 0), and of the same samples with pixel noise (std 0.15; FID_inf about 0.9), scored against the
   fixed digits-gmm reference. The target of an interval is the expected 2,000-sample value, estimated by the mean
   over the draws; the width is compared with 3.92 x the standard deviation over the draws (the ideal normal
   interval's). The plain percentile bootstrap is shown for contrast.
3. Bias: FID of the digits model at subsample sizes of ``--num`` samples (mean over 8 random subsets per size) and
   Chong & Forsyth's FID-infinity, for three solvers at NFE 6 and 10.
4. Pairing: on the same seeds, the paired interval of a difference against the unpaired one.
Every evaluation is a resumable eval job under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.compare import load_run  # noqa: E402
from samplebench.evaluate import EvalConfig, estimate, run_eval  # noqa: E402
from samplebench.metrics import intervals as I  # noqa: E402
from samplebench.metrics import scores  # noqa: E402
from samplebench.metrics.extractors import get_extractor  # noqa: E402
from samplebench.metrics.reference import get_reference  # noqa: E402

SOLVERS, NFES, SIZES = ("ddim", "dpmpp-2m", "dpmpp-3m"), (6, 10), (500, 1000, 2000, 5000)


def cost(out: Path) -> tuple[list[str], dict]:
    t0 = time.perf_counter()
    (row,) = run_eval(EvalConfig(model="digits", solvers=("dpmpp-2m",), nfes=(10,), num=2000, metrics=("fid", "kid")),
                      out / "cost", db=out / "runs.db", progress=False)
    wall = time.perf_counter() - t0
    run = load_run(f"{out / 'cost'}:dpmpp-2m:10")
    ref = get_reference("digits-train", get_extractor("digits", "clean", "cpu"))
    t0 = time.perf_counter()
    I.fid_interval(run.feats, ref.mu, ref.sigma, estimate=row["fid"])
    t_fid = time.perf_counter() - t0
    t0 = time.perf_counter()
    I.kid_interval(run.feats, ref.feats, estimate=row["kid"])
    t_kid = time.perf_counter() - t0
    return [f"{wall:.1f} s", f"{row['wall_time_s']:.1f} s", f"{t_fid:.2f} s", f"{t_kid:.2f} s",
            f"{(t_fid + t_kid) / wall:.1%}"], row


def coverage(draws: int) -> list[list[str]]:
    from samplebench.models import load_model
    from samplebench.noise import SampleGenerators

    model = load_model("digits-gmm")
    extractor = get_extractor("digits", "clean", "cpu")
    ref = get_reference("digits-gmm", extractor)
    rows = []
    for noise in (0.0, 0.15):
        fids, kids = [], []
        for r in range(draws):
            seeds = range(3 * 10**8 + r * 2000, 3 * 10**8 + (r + 1) * 2000)
            x = model.mixture.sample(SampleGenerators(seeds)).reshape(-1, *model.sample_shape)
            if noise:
                x = x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(r), dtype=x.dtype)
            f = scores.extract(x.clamp(-1, 1), extractor).feats
            fid, kid = estimate("fid", f, ref), estimate("kid", f, ref)
            boot = I._resampled_fids(f, I.bootstrap_counts(2000, I.RESAMPLES, I.SEED), I._Ref(ref.mu, ref.sigma))
            low, high = I._centred(fid, boot, I.LEVEL)  # fid_interval's, from the same resamples
            interval = I.Interval(fid, max(low, 0.0), high, I.LEVEL, 2000, I.RESAMPLES, "centred")
            fids.append((fid, interval, *np.quantile(boot, [0.025, 0.975])))
            kids.append((kid, I.kid_interval(f, ref.feats, estimate=kid)))
            print(f"coverage noise {noise} draw {r}: FID {fids[-1][1]}, KID {kids[-1][1]}", flush=True)
        for name, values in (("FID", fids), ("KID", kids)):
            est = np.array([v[0] for v in values])
            target, sd = est.mean(), est.std(ddof=1)
            ivs = [v[1] for v in values]
            cover = np.mean([iv.low <= target <= iv.high for iv in ivs])
            width = np.mean([iv.high - iv.low for iv in ivs])
            pct = (f"{np.mean([v[2] <= target <= v[3] for v in values]):.2f}" if name == "FID" else "-")
            scale = 1000 if name == "KID" else 1
            rows.append([f"{'exact' if not noise else 'noised 0.15'}", name + (" x 1000" if scale > 1 else ""),
                         f"{target * scale:.4f} +- {sd / np.sqrt(draws) * scale:.4f}", f"{sd * scale:.4f}",
                         f"{cover:.2f}", f"{width * scale:.4f}", f"{width / (3.92 * sd):.2f}", pct])
    return rows


def bias_and_pairing(out: Path, num: int) -> tuple[list[list[str]], list[list[str]]]:
    run_eval(EvalConfig(model="digits", solvers=SOLVERS, nfes=NFES, num=num, metrics=("fid",)), out / "bias",
             db=out / "runs.db", progress=False)
    ref = get_reference("digits-train", get_extractor("digits", "clean", "cpu"))
    runs = {(s, n): load_run(f"{out / 'bias'}:{s}:{n}") for s in SOLVERS for n in NFES}
    rng = np.random.default_rng(0)
    bias_rows = []
    for (s, n), run in runs.items():
        fids = [np.mean([I._fid(run.feats[rng.permutation(num)[:m]], I._Ref(ref.mu, ref.sigma))
                         for _ in range(1 if m == num else 8)]) for m in SIZES if m <= num]
        iv = I.fid_interval(run.feats, ref.mu, ref.sigma)
        inf = I.fid_infinity(run.feats, ref.mu, ref.sigma)
        bias_rows.append([s, str(n)] + [f"{f:.3f}" for f in fids] + [f"{iv}", f"{inf.fid_inf:.3f}",
                                                                    f"{inf.bias_at_n:.3f}"])
    pair_rows = []
    for n in NFES:
        for a, b in (("dpmpp-3m", "dpmpp-2m"), ("dpmpp-2m", "ddim")):
            ra, rb = runs[a, n], runs[b, n]
            kw = dict(mu_ref=ref.mu, sigma_ref=ref.sigma)
            paired = I.compare(ra.feats, rb.feats, seeds_a=ra.seeds, seeds_b=rb.seeds, **kw)
            unpaired = I.compare(ra.feats, rb.feats, **kw)
            pair_rows.append([f"{a} - {b}", str(n), f"{paired.estimate:+.4f}",
                              f"[{paired.low:+.4f}, {paired.high:+.4f}]", f"[{unpaired.low:+.4f}, {unpaired.high:+.4f}]",
                              f"{(unpaired.high - unpaired.low) / (paired.high - paired.low):.1f}x"])
    return bias_rows, pair_rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--draws", type=int, default=50)
    p.add_argument("--num", type=int, default=5000)
    p.add_argument("--out", default="evals/intervals")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    command = f"python bench/intervals.py --draws {args.draws} --num {args.num} --out {args.out}"
    t0 = time.perf_counter()
    cover_rows = coverage(args.draws)
    bias_rows, pair_rows = bias_and_pairing(out, args.num)
    cost_row, _ = cost(out)  # last, on a machine left idle by the rest
    sizes = [m for m in SIZES if m <= args.num]
    body = (
        f"## Intervals: cost, coverage, bias and pairing\n\n`{command}` on {machine()} "
        f"({time.perf_counter() - t0:.0f} s). Every FID and KID carries a 95% centred bootstrap interval over the "
        f"generated samples, the reference fixed (`samplebench.metrics.intervals`; README, Evaluation).\n\n"
        f"**Cost** (target: under 10% of a 2,000-sample digits eval), dpmpp-2m at NFE 10, 1,000 resamples each:\n\n"
        + table(["the whole eval", "of it sampling", "FID interval", "KID interval", "intervals / whole eval"],
                [cost_row])
        + f"\n\n**Coverage** of the expected 2,000-sample value over {args.draws} independent draws of digits-gmm "
        f"samples against the fixed digits-gmm reference. 'target' is the mean over the draws (+- its standard "
        f"error), 'sd' the spread of one draw's number; 'width / ideal' compares the mean width with 3.92 sd.\n\n"
        + table(["samples", "metric", "target", "sd", "coverage", "mean width", "width / ideal",
                 "percentile coverage"], cover_rows)
        + f"\n\n**Bias**: digits-FID of the digits model against digits-train at subsample sizes of {args.num} "
        f"samples (seeds 0..{args.num - 1}; mean of 8 random subsets below {args.num}), the full-count FID with its "
        f"interval, FID-infinity (Chong & Forsyth 2020: the line in 1 / m through FIDs at 8 sizes from "
        f"{args.num // 4} to {args.num}, at 1 / m = 0) and the bias at {args.num} it implies.\n\n"
        + table(["solver", "NFE"] + [f"FID-{m}" for m in sizes] + [f"FID-{args.num} [95%]", "FID-inf",
                                                                   f"bias at {args.num}"], bias_rows)
        + f"\n\n**Pairing**: A - B on the same {args.num} seeds, paired (one resample of seed indices for both) "
        f"against unpaired (independent resamples).\n\n"
        + table(["A - B", "NFE", "difference", "paired 95%", "unpaired 95%", "unpaired / paired width"], pair_rows))
    if not args.no_write:
        write_section("intervals", body)
    print(body)


if __name__ == "__main__":
    main()
