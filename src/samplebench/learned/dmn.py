"""DM-NonUniform (Xue et al., CVPR 2024, arXiv 2402.17376): a time grid that minimises a bound on how the model's
error propagates through a multistep data-prediction exponential integrator; no network evaluation.

The solution of the data-prediction ODE from lambda_0 to lambda_N is x_N = (sigma_N / sigma_0) x_0 +
sigma_N int e^lambda x0_pred dlambda; step n replaces x0_pred on [lambda_n, lambda_{n+1}] by the Lagrange polynomial
through its k nodes n-k+1..n, so the model's error at node i enters with the weight w_{n,i} = int e^lambda l_i. The
grid minimises (paper Eq. 35) sum_i e_i |sum_n w_{n,i}|, e_i = sigma_i^p / alpha_i (VP-equivalent alpha, sigma of
lambda_i), over lambda_1 <= ... <= lambda_{N-1}. First-order steps, and steps of higher order among the first
``trunc``, add their own |.| (root of squares) instead of sharing the per-node sums (the official code's ``truncNum``:
3 up to 7 steps, 0 above, as LD3's copy applies it). Each solver's own per-step orders build the objective (paper
Remark 2): DPM-Solver++ and UniPC's predictor theirs, DDIM order 1; solvers that are not data-prediction Adams
methods (iPNDM, DEIS, Heun) take the 3M pattern 1, 2, 3, ..., 3, 2, 1 the paper optimises for.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..samplers._common import step_order

__all__ = ["dmn_weights", "dmn_objective", "dmn_lambdas", "solver_orders", "dmn_grid"]

# per-step order of each registry solver's data-prediction update (their ``solver_order`` with lower-order warm-up
# and final step); others: the 3M pattern
ORDERS = {"ddim": 1, "euler": 1, "dpmpp-2m": 2, "dpmpp-3m": 3, "unipc-bh1": 2, "unipc-bh2": 2}
PATTERN_3M = 3
MIN_GAP = 1e-6  # the smallest lambda step the optimiser may take (order-2/3 weights divide by it)


def solver_orders(solver: str, steps: int) -> list[int]:
    """The order of each of ``steps`` steps whose error weights build the objective."""
    return [step_order(ORDERS.get(solver, PATTERN_3M), i, steps, True) for i in range(steps)]


def _i0(h: float) -> float:
    return math.expm1(h)


def _i1(h: float) -> float:
    return h * math.exp(h) - _i0(h)


def _i2(h: float) -> float:
    return h * h * math.exp(h) - 2.0 * _i1(h)


def dmn_weights(lam: Sequence[float], n: int, k: int) -> list[float]:
    """w_{n,i} = int_{lambda_n}^{lambda_{n+1}} e^lambda l_i(lambda) dlambda for the Lagrange basis l_i of nodes
    n-k+1..n (oldest first), k = 1, 2, 3, in closed form (spec weights of DMN's ``StepOptim``)."""
    e, h = math.exp(lam[n]), lam[n + 1] - lam[n]
    if k == 1:
        return [math.exp(lam[n + 1]) - e]
    if k == 2:
        a = lam[n] - lam[n - 1]
        return [-e * _i1(h) / a, e * (_i0(h) + _i1(h) / a)]
    if k == 3:
        a, b = lam[n - 1] - lam[n - 2], lam[n] - lam[n - 1]
        return [e * (_i2(h) + b * _i1(h)) / (a * (a + b)),
                -e * (_i2(h) + (a + b) * _i1(h)) / (a * b),
                e * (_i2(h) + (2 * b + a) * _i1(h) + b * (a + b) * _i0(h)) / (b * (a + b))]
    raise ValueError(f"DMN weights are for orders 1-3, got {k}")


def _error_weight(lam: np.ndarray, p: float) -> np.ndarray:
    """e_i = sigma_i^p / alpha_i with the VP-equivalent alpha = (1 + e^{-2 lambda})^{-1/2}, sigma = (1 + e^{2 lambda})^{-1/2}."""
    alpha, sigma = 1.0 / np.sqrt(1.0 + np.exp(-2.0 * lam)), 1.0 / np.sqrt(1.0 + np.exp(2.0 * lam))
    return sigma**p / alpha


def dmn_objective(lam: Sequence[float], orders: Sequence[int], *, p: float = 1.0, trunc: int | None = None) -> float:
    """The bound (paper Eq. 35) of the full grid ``lam`` (N + 1 increasing lambdas) for per-step ``orders``."""
    lam = [float(v) for v in lam]
    steps = len(lam) - 1
    trunc = (3 if steps <= 7 else 0) if trunc is None else trunc
    err = _error_weight(np.asarray(lam), p)
    shared, total = np.zeros(steps + 1), 0.0
    for n, k in enumerate(orders):
        nodes = range(n - k + 1, n + 1)
        terms = [err[i] * w for i, w in zip(nodes, dmn_weights(lam, n, k))]
        if k == 1:
            total += abs(terms[0])
        elif n < trunc:
            total += math.sqrt(sum(t * t for t in terms))
        else:
            for i, t in zip(nodes, terms):
                shared[i] += t
    return total + float(np.abs(shared).sum())


def dmn_lambdas(lambda_T: float, lambda_eps: float, orders: Sequence[int], *, p: float = 1.0,
                init: Sequence[float] | None = None, trunc: int | None = None) -> tuple[np.ndarray, dict]:
    """The optimised grid in lambda, from ``lambda_T`` to ``lambda_eps`` (increasing), for per-step ``orders``:
    scipy's ``trust-constr`` under lambda_{i+1} - lambda_i >= MIN_GAP, from ``init`` (default uniform in lambda).
    Returns the grid and what the optimiser did."""
    from scipy.optimize import LinearConstraint, minimize

    steps = len(orders)
    full = np.linspace(lambda_T, lambda_eps, steps + 1) if init is None else np.asarray(init, dtype=np.float64)
    if steps < 2:
        return full, {"objective_init": dmn_objective(full, orders, p=p, trunc=trunc), "iterations": 0,
                      "converged": True}
    inner = full[1:-1]
    diff = np.zeros((steps, steps - 1))  # rows: lambda_1 - lambda_T, lambda_2 - lambda_1, ..., lambda_eps - lambda_{N-1}
    for i in range(steps - 1):
        diff[i, i], diff[i + 1, i] = 1.0, -1.0
    lower = np.full(steps, MIN_GAP)
    lower[0] += lambda_T
    lower[-1] -= lambda_eps
    constraint = LinearConstraint(diff, lower, np.full(steps, np.inf))

    def objective(v):
        return dmn_objective(np.concatenate([[lambda_T], v, [lambda_eps]]), orders, p=p, trunc=trunc)

    with warnings.catch_warnings():  # trust-constr's quasi-Newton notes on flat stretches
        warnings.simplefilter("ignore")
        result = minimize(objective, inner, method="trust-constr", constraints=[constraint])
    lam = np.concatenate([[lambda_T], result.x, [lambda_eps]])
    return lam, {"objective_init": objective(inner), "objective": float(result.fun), "iterations": int(result.nit),
                 "converged": bool(result.status in (1, 2)), "message": str(result.message)}


def dmn_grid(schedule, solver: str, steps: int, *, p: float = 1.0, init: str = "logsnr",
             trunc: int | None = None) -> tuple[torch.Tensor, dict]:
    """DMN's time grid of ``steps`` steps for ``solver`` on ``schedule`` (T to t_min), and its provenance: p, the
    init (``logsnr``: uniform lambda, the paper's pixel default; ``time-uniform``: its latent default), the orders,
    the objective before and after, the optimiser's iterations, wall time. No network evaluation."""
    from ..samplers.grids import make_grid

    start = time.perf_counter()
    grid0 = make_grid(schedule, init, steps)
    lam0 = schedule.lambda_(grid0).numpy()
    orders = solver_orders(solver, steps)
    lam, info = dmn_lambdas(float(lam0[0]), float(lam0[-1]), orders, p=p, init=lam0, trunc=trunc)
    grid = schedule.inverse_lambda(torch.from_numpy(lam))
    grid[0], grid[-1] = grid0[0], grid0[-1]  # exact ends
    return grid, {"method": "dmn", "solver": solver, "steps": steps, "p": p, "init": init, "orders": orders,
                  "trunc": 3 if trunc is None and steps <= 7 else (0 if trunc is None else trunc),
                  "network_evaluations": 0, "wall_time_s": time.perf_counter() - start, **info}
