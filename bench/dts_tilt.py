"""How close DTS's draws come to the tilted target p(x) exp(lambda r(x)) at finite budgets, on a case with a closed form.

    python bench/dts_tilt.py

Prior: the 10-step DDPM chain (DDIM eta = 1) of the exact denoiser of N(0, 1) data in 1-D; its own law is N(0, V) with
V below 1 (measured from 100,000 chains). Reward r(x) = x, lambda = 1, so the target is N(V, V). For each widening
(C, alpha), backup and number of rollouts, a tree is grown (seed 0, 64 rollouts per iteration) and 20,000 samples are
drawn from it; the table gives their mean and variance against the target's.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, table, write_section  # noqa: E402

from samplebench.align import Chain, CountedReward, draw, grow  # noqa: E402
from samplebench.models.analytic import GaussianMixture  # noqa: E402
from samplebench.models.embedded import AnalyticModel, ddpm_linear_schedule  # noqa: E402
from samplebench.noise import SampleGenerators  # noqa: E402

STEPS = 10
CASES = [  # (C, alpha, backup, rollouts)
    (2.0, 0.8, "soft", 1000), (2.0, 0.8, "soft", 4000), (2.0, 0.8, "soft", 16000),
    (2.0, 0.8, "max", 4000), (2.0, 0.8, "max", 16000),
    (1.0, 0.5, "soft", 8000), (2.0, 1.0, "soft", 4000),
]


def linear(x0, cond=None):
    return x0.flatten(1).sum(1)


def max_backup(tree, n, lam):
    return max(tree.value[c] for c in tree.children[n])


def main() -> None:
    import numpy as np

    model = AnalyticModel("g1", ddpm_linear_schedule(), (1,), mixture=GaussianMixture.gaussian(0.0, 1.0, (1,)))

    def chain():
        return Chain.build(model, CountedReward(linear), steps=STEPS, max_batch=100_000)

    c = chain()
    g = SampleGenerators(range(100_000))
    var = float(c.run(c.prior(g), 0, STEPS, g).double().var())
    rows = []
    for widen_c, alpha, backup, rollouts in CASES:
        start = time.perf_counter()
        tree = grow(chain(), budget=rollouts * STEPS, widen_c=widen_c, widen_alpha=alpha, batch=64,
                    backup=max_backup if backup == "max" else None)
        x = torch.stack([tree.state[n] for n in draw(tree, 20_000, lam=1.0, star=False,
                                                     rng=np.random.default_rng(1))]).double()
        rows.append([f"{widen_c:g}", f"{alpha:g}", backup, f"{rollouts:,}", str(len(tree.children[0])),
                     f"{float(x.mean()):.3f}", f"{float(x.mean()) / var:.2f}", f"{float(x.var()):.3f}",
                     f"{time.perf_counter() - start:.0f}"])
        print(rows[-1], flush=True)
    body = ("## DTS on a tilted Gaussian: how far finite trees are from the target\n\n"
            f"`python bench/dts_tilt.py` on {machine()}. Prior: the {STEPS}-step DDPM chain of N(0, 1) data in 1-D, "
            f"whose own law is N(0, {var:.3f}); r(x) = x, lambda = 1, so the target is N({var:.3f}, {var:.3f}). "
            "20,000 draws from each tree.\n\n"
            + table(["C", "alpha", "backup", "rollouts", "root children", "mean", "mean / target", "variance",
                     "s"], rows)
            + "\n\nWith alpha = 1 every rollout starts at the root, so the draws are importance samples and hit the "
              "target. With the paper's widening the draws are tilted too little, and 4x more rollouts barely "
              "help: nodes are revisited because their first rollouts scored high, so their averages fall back, "
              "while unlucky nodes keep low values. A max backup lands closer to the target here for the wrong "
              "reason, which is why the tests check exact tree identities rather than this mean.")
    print(body)
    write_section("dts-tilt", body)


if __name__ == "__main__":
    main()
