"""Multistep exponential-integrator samplers: DPM-Solver++ (2M, 3M), UniPC (bh1, bh2), DEIS and iPNDM.

Each uses one network evaluation per step and keeps its history in local lists. Step i goes from
grid[i] to grid[i + 1]; h = lambda_t - lambda_s > 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..noise import SampleGenerators
from ._common import report, step_order, tables
from .registry import Callback, register


@register("dpmpp-3m", order=2, default_grid="logsnr", solver_order=3,
          description="DPM-Solver++(3M), multistep data prediction (Lu et al. 2022b, App. B); third-order steps, "
                      "global order 2 from its first-order warm-up step")
@register("dpmpp-2m", order=2, default_grid="logsnr", solver_order=2,
          description="DPM-Solver++(2M), multistep data prediction (Lu et al. 2022b, Alg. 2)")
def dpmpp_multistep(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 2,
                    lower_order_final: bool = True, generator: SampleGenerators | None = None,
                    callback: Callback | None = None) -> torch.Tensor:
    """DPM-Solver++ multistep: x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) (D0 + corrections)."""
    if solver_order not in (1, 2, 3):
        raise ValueError(f"DPM-Solver++ multistep supports orders 1-3, got {solver_order}")
    a, s, lam = tables(denoiser, grid)
    steps = len(grid) - 1
    m: list[torch.Tensor] = []  # data predictions, newest last
    for i in range(steps):
        x0 = denoiser(x, grid[i]).denoised
        m = (m + [x0])[-3:]
        k = step_order(solver_order, i, steps, lower_order_final)
        h = lam[i + 1] - lam[i]
        phi_1 = math.expm1(-h)  # e^{-h} - 1
        x_next = (s[i + 1] / s[i]) * x - a[i + 1] * phi_1 * x0
        if k == 2:  # midpoint form, Alg. 2
            r0 = (lam[i] - lam[i - 1]) / h
            d1 = (m[-1] - m[-2]) / r0
            x_next = x_next - 0.5 * a[i + 1] * phi_1 * d1
        elif k == 3:
            r0, r1 = (lam[i] - lam[i - 1]) / h, (lam[i - 1] - lam[i - 2]) / h
            d1_0, d1_1 = (m[-1] - m[-2]) / r0, (m[-2] - m[-3]) / r1
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            x_next = (x_next + a[i + 1] * (phi_1 / h + 1.0) * d1
                      - a[i + 1] * ((phi_1 + h) / h**2 - 0.5) * d2)
        x = x_next
        report(callback, i, grid[i], x, x0)
    return x


def _unipc_coefficients(rks: list[float], h: float, order: int, variant: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """R, b, B(h) and h phi_1 of UniPC for data prediction (Zhao et al. 2023, Alg. 2 and App. C)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1.0
    b_h = hh if variant == "bh1" else math.expm1(hh)
    factorial = 1.0
    r = np.array(rks + [1.0], dtype=np.float64)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append(r ** (i - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return np.stack(rows), np.array(b), b_h, h_phi_1


def _unipc_differences(m: list[torch.Tensor], lam: list[float], start: int, h: float, count: int
                       ) -> tuple[list[float], list[torch.Tensor]]:
    """r_k and D1_k = (m_{start-k} - m_start) / r_k for k = 1..count (m indexed by grid position)."""
    rks, d1s = [], []
    for k in range(1, count + 1):
        rk = (lam[start - k] - lam[start]) / h
        rks.append(rk)
        d1s.append((m[start - k] - m[start]) / rk)
    return rks, d1s


@register("unipc-bh2", order=3, default_grid="logsnr", variant="bh2",
          description="UniPC, B(h) = e^h - 1, predictor order 2 + UniC (Zhao et al. 2023, Alg. 2)")
@register("unipc-bh1", order=3, default_grid="logsnr", variant="bh1", from_pure_noise=False,
          description="UniPC, B(h) = h, predictor order 2 + UniC (Zhao et al. 2023, Alg. 2)")
def unipc(denoiser, x: torch.Tensor, grid: torch.Tensor, *, variant: str = "bh2", solver_order: int = 2,
          lower_order_final: bool = True, generator: SampleGenerators | None = None,
          callback: Callback | None = None) -> torch.Tensor:
    """UniP-p predictor with the UniC corrector, data prediction. The corrector reuses the evaluation at the
    predicted point (0 extra NFE), so the model output kept for that time is the one at the uncorrected point."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; valid: bh1, bh2")
    a, s, lam = tables(denoiser, grid)
    steps = len(grid) - 1
    m: dict[int, torch.Tensor] = {}  # data predictions by grid index
    x_start, prev_order = x, 0
    for i in range(steps):
        x0 = denoiser(x, grid[i]).denoised
        m[i] = x0
        if i > 0:  # UniC-p on the step i-1 -> i, using the new evaluation at grid[i]
            p, h = prev_order, lam[i] - lam[i - 1]
            rks, d1s = _unipc_differences(m, lam, i - 1, h, p - 1)
            rr, bb, b_h, h_phi_1 = _unipc_coefficients(rks, h, p, variant)
            rhos_c = np.array([0.5]) if p == 1 else np.linalg.solve(rr, bb)
            res = sum(float(c) * d for c, d in zip(rhos_c[:-1], d1s)) + float(rhos_c[-1]) * (x0 - m[i - 1])
            x = (s[i] / s[i - 1]) * x_start - a[i] * h_phi_1 * m[i - 1] - a[i] * b_h * res
        m.pop(i - solver_order, None)
        k = step_order(solver_order, i, steps, lower_order_final)
        h = lam[i + 1] - lam[i]
        rks, d1s = _unipc_differences(m, lam, i, h, k - 1)
        rr, bb, b_h, h_phi_1 = _unipc_coefficients(rks, h, k, variant)
        x_start, prev_order = x, k
        x = (s[i + 1] / s[i]) * x - a[i + 1] * h_phi_1 * x0
        if k > 1:  # UniP-k
            rhos_p = np.array([0.5]) if k == 2 else np.linalg.solve(rr[:-1, :-1], bb[:-1])
            x = x - a[i + 1] * b_h * sum(float(c) * d for c, d in zip(rhos_p, d1s))
        report(callback, i, grid[i], x, x0)
    return x


def _lagrange_integrals(schedule, nodes: list[float], t_s: float, t_t: float, basis: str,
                        quad_points: int = 32) -> list[float]:
    """C_j = int_{rho_s}^{rho_t} l_j(u) d rho for the Lagrange basis l_j over ``nodes`` in the variable u
    (u = t for tAB, u = log rho for the log-rho variant), by Gauss-Legendre quadrature in v = log rho."""
    v_s, v_t = -schedule.lambda_(t_s), -schedule.lambda_(t_t)
    z, w = np.polynomial.legendre.leggauss(quad_points)
    v = 0.5 * (v_t - v_s) * z + 0.5 * (v_t + v_s)
    weight = 0.5 * (v_t - v_s) * w * np.exp(v)
    if basis == "t":
        u = schedule.inverse_lambda(torch.from_numpy(-v)).numpy()
        un = np.array(nodes)
    else:
        u = v
        un = -np.array([schedule.lambda_(t) for t in nodes])
    coeffs = []
    for j in range(len(nodes)):
        lj = np.ones_like(u)
        for k in range(len(nodes)):
            if k != j:
                lj *= (u - un[k]) / (un[j] - un[k])
        coeffs.append(float((weight * lj).sum()))
    return coeffs


@register("deis", order=3, default_grid="logsnr", basis="t", solver_order=3, from_pure_noise=False,
          description="DEIS tAB3: exponential integrator with eps extrapolated in t (Zhang & Chen 2023, Eq. 15)")
def deis(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 3, basis: str = "t",
         lower_order_final: bool = True, generator: SampleGenerators | None = None,
         callback: Callback | None = None) -> torch.Tensor:
    """x~_t = x~_s + sum_j C_j eps_j with x~ = x / alpha and C_j the exact integral of the Lagrange polynomial
    through the last ``solver_order`` noise predictions over rho = sigma / alpha. ``basis='logrho'`` interpolates in
    log rho instead (the variant in diffusers' DEISMultistepScheduler)."""
    if basis not in ("t", "logrho"):
        raise ValueError(f"unknown DEIS basis {basis!r}; valid: t, logrho")
    a, _, _ = tables(denoiser, grid)
    ts = grid.tolist()
    steps = len(grid) - 1
    eps_hist: list[torch.Tensor] = []
    for i in range(steps):
        x0, eps = denoiser(x, grid[i])
        eps_hist = (eps_hist + [eps])[-solver_order:]
        k = step_order(solver_order, i, steps, lower_order_final)
        nodes = ts[i - k + 1: i + 1][::-1]  # newest first
        coeffs = _lagrange_integrals(denoiser.schedule, nodes, ts[i], ts[i + 1], basis)
        x_tilde = x / a[i] + sum(c * e for c, e in zip(coeffs, eps_hist[::-1]))
        x = a[i + 1] * x_tilde
        report(callback, i, grid[i], x, x0)
    return x


_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


@register("ipndm", order=2, default_grid="karras", solver_order=4, from_pure_noise=False,
          description="improved PNDM: 4-step Adams-Bashforth on dx~/drho = eps (Zhang & Chen 2023, App. B); "
                      "fixed-step weights give global order 2 on non-uniform grids")
def ipndm(denoiser, x: torch.Tensor, grid: torch.Tensor, *, solver_order: int = 4,
          generator: SampleGenerators | None = None, callback: Callback | None = None) -> torch.Tensor:
    """x~_t = x~_s + (rho_t - rho_s) sum_j b_j eps_{s-j} with the fixed-step Adams-Bashforth weights b."""
    if solver_order not in _AB:
        raise ValueError(f"iPNDM supports orders 1-4, got {solver_order}")
    a, s, _ = tables(denoiser, grid)
    eps_hist: list[torch.Tensor] = []
    for i in range(len(grid) - 1):
        x0, eps = denoiser(x, grid[i])
        eps_hist = (eps_hist + [eps])[-solver_order:]
        weights = _AB[len(eps_hist)]
        d = sum(b * e for b, e in zip(weights, eps_hist[::-1]))
        x = a[i + 1] * (x / a[i] + (s[i + 1] / a[i + 1] - s[i] / a[i]) * d)
        report(callback, i, grid[i], x, x0)
    return x
