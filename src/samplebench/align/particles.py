"""The baselines of DTS under the same chain, reward and NFE accounting: best-of-N, and sequential Monte Carlo
with Feynman-Kac steering (Singhal et al. 2025), resampling at the chain's branch steps."""

from __future__ import annotations

import time

import torch

from ..errors import UsageError, unknown
from ..noise import SampleGenerators
from ..samplers._common import tables
from ..samplers.basic import ddim_update
from .chain import AlignResult, Chain, finish, stream_seed

__all__ = ["best_of_n", "fk_steering", "POTENTIALS"]

POTENTIALS = ("diff", "max")


def best_of_n(chain: Chain, *, budget: int, num: int, seed: int = 0, batch: int = 64) -> AlignResult:
    """Sample i is the highest-reward of N = budget // (num x steps) independent chains; chain j of sample i
    draws its noise from stream j of seed + i (chain 0 is the plain DDPM sample with that seed)."""
    start = time.perf_counter()
    n = budget // (num * chain.steps)
    if n < 1:
        raise UsageError(f"--budget {budget} is below one chain per sample for best-of-n: at least "
                         f"{num * chain.steps} (--num {num} x {chain.steps} steps)")
    jobs = [(i, j) for i in range(num) for j in range(n)]
    best_r = torch.full((num,), -torch.inf, dtype=torch.float64)
    best_x: list[torch.Tensor | None] = [None] * num
    for lo in range(0, len(jobs), batch):
        part = jobs[lo:lo + batch]
        gens = SampleGenerators([stream_seed(seed + i, j) for i, j in part])
        x = chain.run(chain.prior(gens), 0, chain.steps, gens)
        for (i, _), row, r in zip(part, x, chain.score(x).tolist()):
            if r > best_r[i]:
                best_r[i], best_x[i] = r, row
    return finish("best-of-n", chain, torch.stack(best_x), best_r, start, n=n)


class _Stream:
    """Step noise for a whole particle population from one seeded generator (resampled particles get fresh noise)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator("cpu").manual_seed(seed)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return torch.randn(x.shape, generator=self.generator, dtype=torch.float32).to(x)


def fk_steering(chain: Chain, *, budget: int, num: int, lam: float = 1.0, potential: str = "diff",
                ess_threshold: float = 0.5, seed: int = 0) -> AlignResult:
    """FK steering with K = budget // steps particles and proposal p_theta. At each branch step after the first,
    r_t = r(x0_pred(x_t)) from the prediction the step needs anyway (no extra NFE) and the log-weights gain
    log G_t: 'diff' lambda (r_t - r_prev) (r_prev = 0 at first); 'max' lambda max(r_t, best so far). At x_0 the
    potential makes every weight exp(lambda r(x_0)) in all (for 'max': divided by the product so far).
    Multinomial resampling when the effective sample size falls below ``ess_threshold`` K; the ``num`` outputs
    are drawn from the final weights. Every draw uses one generator seeded with ``seed``."""
    start = time.perf_counter()
    if potential not in POTENTIALS:
        raise unknown("potential", potential, POTENTIALS)
    k = budget // chain.steps
    if k < 1:
        raise UsageError(f"--budget {budget} is below one particle for fk: at least {chain.steps} "
                         f"({chain.steps} steps)")
    stream = _Stream(seed)
    a, s, _ = tables(chain.denoiser, chain.grid)
    x = stream.randn_like(torch.empty(k, *chain.model.sample_shape, device=chain.model.device))
    x = x * chain.model.schedule.prior_std()
    log_w = torch.zeros(k, dtype=torch.float64)
    prev = torch.zeros(k, dtype=torch.float64) if potential == "diff" else torch.full((k,), -torch.inf,
                                                                                       dtype=torch.float64)
    log_prod = torch.zeros(k, dtype=torch.float64)  # sum of log G so far ('max' divides it out at x_0)
    resamples = 0

    def resample(*tensors):
        nonlocal log_w, resamples
        p = torch.softmax(log_w, 0)
        if 1.0 / float((p**2).sum()) >= ess_threshold * k:
            return tensors
        idx = torch.multinomial(p, k, replacement=True, generator=stream.generator)
        log_w = torch.zeros(k, dtype=torch.float64)
        resamples += 1
        return tuple(t[idx.to(t.device)] for t in tensors)

    for i in range(chain.steps):
        x0, eps = chain.denoiser(x, chain.grid[i])
        if i in chain.branch_steps and i > 0:
            r = chain.score(x0)
            stat = r if potential == "diff" else torch.maximum(r, prev)
            log_g = lam * (stat - prev) if potential == "diff" else lam * stat
            log_w, log_prod, prev = log_w + log_g, log_prod + log_g, stat
            x, x0, eps, prev, log_prod = resample(x, x0, eps, prev, log_prod)
        x = ddim_update(x0, eps, a[i], s[i], a[i + 1], s[i + 1], 1.0, stream)
        chain.tick()
    r = chain.score(x)
    log_w = log_w + (lam * (r - prev) if potential == "diff" else lam * r - log_prod)
    idx = torch.multinomial(torch.softmax(log_w, 0), num, replacement=True, generator=stream.generator)
    return finish("fk", chain, x[idx.to(x.device)], r[idx], start, particles=k, resamples=resamples,
                  potential=potential)
