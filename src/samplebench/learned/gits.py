"""GITS (Chen et al., ICML 2024, arXiv 2405.11326): a time grid chosen by dynamic programming over a fine grid, from
the local truncation error of Euler jumps along teacher trajectories.

1. Teacher: ``num`` noises solved on a fine grid tau_0 > ... > tau_M (M = 60, the model's sampling grid kind) by
   iPNDM (order 4), keeping every state and the model's slope there, in EDM coordinates x~ = x / alpha,
   sigma~ = sigma / alpha: d_i = (x~_i - x0_pred(x_i)) / sigma~_i (M x num network evaluations, no gradients).
2. Jumps: x^_{i->j} = x~_i + (sigma~_j - sigma~_i) d_i (an Euler = DDIM step, no evaluation).
3. Cost c_ij, averaged over the samples: ``dev`` (the default), the distance from the sample's teacher chord
   x~_0 -> x~_M of the jump's end, minus the teacher's own distance there (signed); ``l2`` / ``l1``: the jump's distance
   to the teacher state x~_j.
4. Dynamic programming (paper Alg. 1): V_1(i) = c_{i,M}, V_k(j) = min_{j<i<M} c_{j,i} + gamma V_{k-1}(i); the K-step
   path from 0 minimises sum_m gamma^m c(step m), m counted from the noise end (gamma = 1.15: later steps weigh more).
One teacher pass serves every step count. GITS is solver-agnostic (Euler jumps), tuned with iPNDM.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["deviation", "jump_costs", "dp_path", "teacher_costs", "gits_grid", "FINE_STEPS", "COEFF", "WARMUP"]

FINE_STEPS = 60  # M: the fine grid has 61 points (the paper's README and launch script)
COEFF = 1.15  # gamma
WARMUP = 256  # teacher trajectories
TEACHER = "ipndm"
SEED = 2_000_000  # teacher seeds: disjoint from benchmarks (0+), searches (500,000+) and grid selection (1,000,000+)


def deviation(y: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Per sample, the norm of the component of ``end - y`` orthogonal to the chord ``end - start``."""
    b = y.shape[0]
    ay, chord = (end - y).reshape(b, -1), (end - start).reshape(b, -1)
    unit = chord / chord.norm(dim=1, keepdim=True)
    return (ay - (ay * unit).sum(1, keepdim=True) * unit).norm(dim=1)


def jump_costs(sigmas: torch.Tensor, states: Sequence[torch.Tensor], slopes: Sequence[torch.Tensor],
               metric: str = "dev") -> np.ndarray:
    """c_ij (i < j, zero elsewhere) for one batch of teacher trajectories: ``states`` x~_0..x~_M, ``slopes``
    d_0..d_{M-1}, at EDM sigmas ``sigmas`` (decreasing)."""
    if metric not in ("dev", "l2", "l1"):
        raise ValueError(f"unknown GITS metric {metric!r}; valid: dev, l2, l1")
    m = len(states) - 1
    cost = np.zeros((m + 1, m + 1))
    start, end = states[0], states[-1]
    own = [float(deviation(x, start, end).mean()) for x in states] if metric == "dev" else None
    for i in range(m):
        for j in range(i + 1, m + 1):
            jump = states[i] + float(sigmas[j] - sigmas[i]) * slopes[i]
            if metric == "dev":
                cost[i, j] = float(deviation(jump, start, end).mean()) - (own[j] if j < m else 0.0)
            else:
                p = 2 if metric == "l2" else 1
                cost[i, j] = float((jump - states[j]).reshape(jump.shape[0], -1).norm(p=p, dim=1).mean())
    return cost


def dp_path(cost: np.ndarray, steps: int, coeff: float = COEFF) -> list[int]:
    """The indices 0 = i_0 < i_1 < ... < i_K = M of the K-step path minimising sum_m coeff^m c(i_m, i_{m+1});
    argmins are stored (no backtracking by float equality)."""
    m = cost.shape[0] - 1
    if not 1 <= steps <= m:
        raise ValueError(f"a {steps}-step path needs 1..{m} steps on a fine grid of {m}")
    value = np.full((m + 1, steps + 1), np.inf)
    choice = np.zeros((m + 1, steps + 1), dtype=int)
    value[:m, 1] = cost[:m, m]
    choice[:m, 1] = m
    for k in range(2, steps + 1):
        for j in range(m - 1):
            candidates = cost[j, j + 1:m] + coeff * value[j + 1:m, k - 1]
            if candidates.size:
                best = int(np.argmin(candidates))
                value[j, k], choice[j, k] = candidates[best], j + 1 + best
    path, j = [0], 0
    for k in range(steps, 0, -1):
        j = int(choice[j, k])
        path.append(j)
    return path


def teacher_costs(model, fine_grid: torch.Tensor, *, num: int = WARMUP, metric: str = "dev", batch_size: int = 256,
                  seed: int = SEED, progress=None) -> tuple[np.ndarray, dict]:
    """The batch-averaged cost matrix of ``num`` iPNDM teacher trajectories on ``fine_grid``; ``progress(done,
    total)`` after each batch. Returns it with what it cost."""
    from ..models import Conditioning, CountingDenoiser
    from ..noise import SampleGenerators
    from ..samplers import get_solver

    start = time.perf_counter()
    schedule = model.schedule
    alphas = schedule.alpha(fine_grid).tolist()
    sigmas = schedule.sigma(fine_grid) / schedule.alpha(fine_grid)
    teacher = get_solver(TEACHER)
    total = np.zeros((len(fine_grid), len(fine_grid)))
    evaluations = 0
    seeds = list(range(seed, seed + num))
    for lo in range(0, num, batch_size):
        batch = seeds[lo:lo + batch_size]
        gens = SampleGenerators(batch)
        cond = Conditioning(model.class_labels(batch))
        denoiser = CountingDenoiser(model.denoiser(cond, len(batch)))
        x = gens.randn(model.sample_shape, device=model.device, dtype=torch.float64) * schedule.prior_std()
        states, slopes = [x / alphas[0]], []

        def keep(info, states=states, slopes=slopes):
            i = info.i
            states.append(info.x.double() / alphas[i + 1])
            slopes.append((states[i] - info.denoised.double()) / float(sigmas[i]))

        teacher(denoiser, x, fine_grid, generator=gens, callback=keep)
        evaluations += denoiser.evaluations
        total += jump_costs(sigmas, states, slopes, metric) * len(batch)
        if progress is not None:
            progress(min(lo + batch_size, num), num)
    return total / num, {"teacher": TEACHER, "warmup": num, "metric": metric, "seeds": f"{seed}..{seed + num - 1}",
                         "network_evaluations": evaluations, "teacher_wall_time_s": time.perf_counter() - start}


def gits_grid(fine_grid: torch.Tensor, cost: np.ndarray, steps: int, coeff: float = COEFF) -> torch.Tensor:
    """The student grid of ``steps`` steps: the fine grid at the DP path's indices."""
    return fine_grid[dp_path(cost, steps, coeff)].clone()
