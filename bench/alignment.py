"""Reward alignment on the digits model: DTS, DTS*, best-of-N and FK steering at equal NFE budgets.

    python bench/alignment.py [--targets class:3,even] [--num 500] [--per-sample 20x3,100x3,500,2000] [--nfe 20]
                              [--out searches/alignment] [--no-write] [--cached-only] [--device cuda]

For each target reward and NFE budget (``--per-sample`` network evaluations per output sample, so a run's budget is
num x per-sample; ``BUDGETxRUNS`` asks for that many independent runs), every method makes ``--num`` samples per run
from a ``--nfe``-step DDPM chain branching at 5 evenly spaced steps. Reported: digits-FID against the real digits of
the target class(es) (all 1,797 digits), the median over runs or one run's with its 95% interval, mean reward, the
fraction classified as the target, for set rewards the coverage of the set's classes, diversity (mean pairwise cosine
distance of the samples' digits features), and wall time. Each cell's numbers are a small JSON file in ``--out``
(committed, so a long run continues where it stopped in a later run).
Targets (Jain et al. 2025): DTS reaches the best baseline's FID with 5x fewer NFE; DTS* reaches best-of-N's mean
reward with 5x fewer NFE.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import DOC, fid_cell, machine, table, write_section  # noqa: E402

from samplebench.align import METHODS, AlignConfig, align_sample, get_reward  # noqa: E402
from samplebench.align.rewards import EVEN, ODD  # noqa: E402
from samplebench.data import load_digits  # noqa: E402
from samplebench.metrics.digits import digits_features, fid_interval_from_features  # noqa: E402
from samplebench.models import load_model  # noqa: E402


COLUMNS = ["target", "NFE/sample", "NFE", "method", "runs", "FID", "FID [95%], run 0", "mean reward, each run",
           "on-target", "coverage", "diversity", "unique", "wall s"]
RUN_SEED = 1_000_000  # run r has seed r x RUN_SEED: best-of-N's sample i draws from seed + i, so no two runs share one


def parse_budgets(spec: str) -> dict[int, int]:
    """``"20x3,100x3,500,2000"``: NFE per sample -> number of independent runs (default 1)."""
    out = {}
    for part in spec.split(","):
        budget, _, runs = part.partition("x")
        if not budget.isdigit() or not (runs or "1").isdigit() or int(budget) < 1 or int(runs or 1) < 1:
            raise argparse.ArgumentTypeError(f"bad entry {part!r}; valid: BUDGET or BUDGETxRUNS, positive integers, "
                                             "e.g. 20x3,500")
        out[int(budget)] = int(runs or 1)
    return out


def target_classes(target: str) -> tuple[int, ...]:
    return {"even": EVEN, "odd": ODD}.get(target) or (int(target.split(":")[1]),)


def diversity(feats: np.ndarray) -> float:
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    sim = f @ f.T
    n = len(f)
    return float((n * n - sim.sum()) / (n * (n - 1)))


def run(model, target: str, method: str, per_sample: int, index: int, args, ref_feats: np.ndarray) -> dict | None:
    """Run ``index`` (one tree, particle system or set of chains making ``--num`` samples, seed index x RUN_SEED);
    cached as a JSON file. None for a run not in the cache under ``--cached-only``."""
    name = f"{method}-{per_sample}" + (f"-run{index}" if index else "")
    path = Path(args.out) / target.replace(":", "-") / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    if args.cached_only:
        return None
    seed = index * RUN_SEED
    config = AlignConfig(method=method, reward=target, budget=per_sample * args.num, num=args.num, nfe=args.nfe,
                         seed=seed, batch_size=16 if method.startswith("dts") else 64)
    result = align_sample(model, get_reward(target), config)
    feats, probs = digits_features(result.images)
    fid = fid_interval_from_features(feats, ref_feats)
    row = {"target": target, "method": method, "per_sample": per_sample, "seed": seed, "nfe": result.nfe,
           "fid": fid.estimate, "fid_low": fid.low, "fid_high": fid.high, "num_samples": len(feats),
           "reward": float(result.rewards.mean()), "diversity": diversity(feats),
           "unique": len(torch.unique(result.x.flatten(1), dim=0)),
           "on_target": float(np.isin(probs.argmax(1), target_classes(target)).mean()),
           "classes": np.bincount(probs.argmax(1), minlength=10).tolist(), "wall_time_s": result.wall_time_s}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row, indent=2))
    print(json.dumps(row), flush=True)
    return row


def coverage(row: dict) -> str:
    """For a set reward: how many of the set's classes hold at least 5% of the on-target samples, and the
    smallest share ("4/5, min 2%")."""
    wanted = target_classes(row["target"])
    counts = np.array([row["classes"][k] for k in wanted], dtype=float)
    if len(wanted) == 1 or counts.sum() == 0:
        return "-"
    share = counts / counts.sum()
    return f"{int((share >= 0.05).sum())}/{len(wanted)}, min {100 * share.min():.0f}%"


def _reward(v: float) -> str:
    """A mean log-probability reward: three decimals, or two significant digits near its maximum 0."""
    return f"{v:.3f}" if abs(v) >= 0.01 else f"{v:.1e}"


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def _fids(runs: list[dict]) -> str:
    """One run: its FID and 95% interval; several: their median and each run's FID."""
    if len(runs) == 1:
        return fid_cell(runs[0], digits=2)
    each = ", ".join(f"{r['fid']:.2f}" for r in runs)
    return f"{_median(runs, 'fid'):.2f} (median of {each})"


def _spread(cells: dict) -> str:
    """The cell whose runs disagree most, against run 0's interval."""
    multi = [(k, runs) for k, runs in cells.items() if len(runs) > 1]
    if not multi:
        return ""

    def ratio(item):
        fids = [r["fid"] for r in item[1]]
        return max(fids) / max(min(fids), 1e-9)

    (target, b, method), runs = max(multi, key=ratio)
    fids = [r["fid"] for r in runs]
    return (f" (most here: {method} on {target} at {b} NFE/sample, run 0 {fid_cell(runs[0], digits=2)}, runs from "
            f"{min(fids):.2f} to {max(fids):.2f})")


def targets_met(cells: dict, target: str, budgets: list[int]) -> list[str]:
    """The paper's two 5x claims at every budget pair (small, big >= 5 small): DTS at small against the lower-FID
    baseline (best-of-N or FK) at big, and DTS* at small against best-of-N's mean reward at big, on the median over
    runs. A FID comparison says when it holds in every pair of runs, or, for single runs, with disjoint intervals."""
    pairs = [(b, big) for b in budgets for big in budgets if big >= 5 * b]
    fid, star = [], []
    for b, big in pairs:
        dts, bon, fk = cells[target, b, "dts"], cells[target, big, "best-of-n"], cells[target, big, "fk"]
        if dts and bon and fk:
            base = min((bon, fk), key=lambda runs: _median(runs, "fid"))
            met = _median(dts, "fid") <= _median(base, "fid")
            if len(dts) == len(base) == 1:
                lo, hi = (dts[0], base[0]) if met else (base[0], dts[0])
                sure = " (intervals apart)" if lo["fid_high"] < hi["fid_low"] else ""
            else:
                sure = (" (in every pair of runs)" if all((d["fid"] <= r["fid"]) == met for d in dts for r in base)
                        else "")
            fid.append(f"DTS at {b} {_fids(dts)} {'<=' if met else '>'} {base[0]['method']} at {big} "
                       f"{_fids(base)}{sure}")
        if cells[target, b, "dts-star"] and bon:
            s, n = _median(cells[target, b, "dts-star"], "reward"), _median(bon, "reward")
            star.append(f"DTS* at {b} {_reward(s)} {'>=' if s >= n else '<'} best-of-N at {big} {_reward(n)}")
    return [f"{target}, FID: " + ("; ".join(fid) or "no two budgets 5x apart with runs to compare"),
            f"{target}, mean reward: " + ("; ".join(star) or "no two budgets 5x apart with runs to compare")]


def _plot(cells: dict, targets: list[str], budgets: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    fig, axes = plt.subplots(2, len(targets), figsize=(5 * len(targets), 7), squeeze=False, sharex=True)
    for col, target in enumerate(targets):
        for k, method in enumerate(METHODS):
            color = f"C{k}"
            done = [b for b in budgets if cells[target, b, method]]
            runs = [cells[target, b, method] for b in done]
            first = np.array([[r[0]["fid"], r[0]["fid"] - r[0]["fid_low"], r[0]["fid_high"] - r[0]["fid"]]
                              for r in runs])
            axes[0, col].errorbar(done, first[:, 0], yerr=first[:, 1:].T, fmt="none", ecolor=color, capsize=3)
            axes[0, col].plot(done, [_median(r, "fid") for r in runs], marker="o", color=color, label=method)
            for b, r in zip(done, runs):
                if len(r) > 1:
                    axes[0, col].scatter([b] * len(r), [x["fid"] for x in r], s=10, color=color, alpha=0.5)
            axes[1, col].plot(done, [_median(r, "reward") for r in runs], marker="o", color=color, label=method)
        axes[0, col].set(xscale="log", yscale="log", title=target,
                         ylabel="digits-FID to the target\n(median of runs; dots: runs; bars: 95%, run 0)")
        axes[1, col].set(xscale="log", xlabel="NFE per sample", ylabel="mean reward (log p), median of runs")
        for ax in axes[:, col]:
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", default="class:3,even")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--per-sample", default="20x3,100x3,500,2000", type=parse_budgets,
                   help="NFE per sample, each with its number of independent runs (BUDGETxRUNS)")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--out", default="searches/alignment")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--cached-only", action="store_true",
                   help="draw nothing: report the runs already in --out, a missing one as not run")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    targets = args.targets.split(",")
    budgets = sorted(args.per_sample)
    if budgets[0] < args.nfe:
        p.error(f"--per-sample {budgets[0]} is below one {args.nfe}-step chain per sample; valid: >= --nfe {args.nfe}")
    spec = ",".join(f"{b}x{n}" if n > 1 else str(b) for b, n in args.per_sample.items())
    model = load_model("digits", device=args.device)
    images, labels = load_digits("all", 16)
    start = time.perf_counter()
    cells = {}
    for target in targets:
        ref_feats, _ = digits_features(images[np.isin(labels.numpy(), target_classes(target))])
        for b in budgets:
            for method in METHODS:
                runs = [run(model, target, method, b, i, args, ref_feats) for i in range(args.per_sample[b])]
                cells[target, b, method] = [r for r in runs if r is not None]
    body_rows = []
    for target in targets:
        for b in budgets:
            low = min((_median(cells[target, b, m], "fid") for m in METHODS if cells[target, b, m]), default=None)
            for method in METHODS:
                runs = cells[target, b, method]
                if not runs:
                    body_rows.append([target, str(b), "-", method, "0", "not run"] + ["-"] * (len(COLUMNS) - 6))
                    continue
                r, fid = runs[0], _fids(runs)
                body_rows.append([target, str(b), f"{r['nfe']:,}", method, str(len(runs)),
                                  f"**{fid}**" if _median(runs, "fid") == low else fid,
                                  fid_cell(r, digits=2),
                                  ", ".join(_reward(x["reward"]) for x in runs),
                                  f"{100 * r['on_target']:.0f}%", coverage(r), f"{r['diversity']:.3f}",
                                  str(r["unique"]), f"{r['wall_time_s']:.0f}"])
    verdict = [v for target in targets for v in targets_met(cells, target, budgets)]
    plot = DOC.parent / "alignment.png"
    if not args.no_write:
        _plot(cells, targets, budgets, plot)
    command = (f"python bench/alignment.py --targets {args.targets} --num {args.num} --per-sample {spec} "
               f"--nfe {args.nfe}" + " --cached-only" * args.cached_only)
    body = (f"## Reward alignment: DTS, DTS*, best-of-N, FK steering on digits\n\n`{command}` on {machine()}, "
            f"{(time.perf_counter() - start) / 60:.0f} min (runs cached in {args.out}). A run makes {args.num} "
            f"samples (run r: seed r x {RUN_SEED:,}) from a {args.nfe}-step DDPM chain (DDIM eta = 1) "
            "branching/resampling at 5 evenly spaced steps; lambda = 1; DTS widening C = 2, alpha = 0.8, 16 rollouts "
            "per iteration; FK 'diff' potential. NFE = all network evaluations of a run. FID: digits-FID against all "
            "real digits of the target class(es), the median over independent runs where there are several (with "
            "each run's FID), else one run's with its 95% bootstrap interval. That interval resamples the outputs of "
            "one run as if they were independent; DTS's draws share a tree and FK's a particle system, so it "
            f"understates how much a rerun moves{_spread(cells)}. Columns after the rewards are run 0's: on-target "
            "(share classified as a target class), coverage (set rewards: the set's classes holding >= 5% of the "
            "on-target samples, and the smallest share), diversity (mean pairwise cosine distance of digits "
            "features), unique (distinct outputs; DTS draws may repeat a leaf). Lowest FID per budget in bold. NFE "
            "is the measure of compute; wall s is for orientation only (cached runs keep the time of the run that "
            "made them).\n\n"
            + table(COLUMNS, body_rows)
            + "\n\nTargets (Jain et al. 2025): DTS reaches the best baseline's FID, and DTS* best-of-N's mean reward, "
            "with >= 5x fewer NFE per sample. Every pair of budgets 5x or more apart:\n\n"
            + "\n".join(f"- {v}." for v in verdict)
            + f"\n\n![FID and reward vs NFE]({plot.relative_to(DOC.parent)})")
    print(body)
    if not args.no_write:
        write_section("alignment", body)


if __name__ == "__main__":
    main()
