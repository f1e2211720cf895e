"""The USF executor: runs any solver schedule on any denoiser (Liu et al., ICLR 2024, Sec. 3, Eq. 5-6).

Noise prediction (DPM-Solver form), Taylor order k, from start point s to time t, h = lambda_t - lambda_s:
    x_t = (alpha_t / alpha_s) x_s - sigma_t sum_{n<k} h^{n+1} phi_{n+1}(h) eps^{(n)}(lambda_s)
Data prediction (DPM-Solver++ form):
    x_t = (sigma_t / sigma_s) x_s + alpha_t sum_{n<k} h^{n+1} phi_{n+1}(-h) x0^{(n)}(lambda_s)
with phi_0(z) = e^z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z, and derivative n estimated from the active points by
solving sum_j a_j dlambda_j^m / m! = delta_{mn}, m = 1..K.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UsageError
from ..samplers._common import report, step_order, tables
from ..samplers.registry import Callback
from .schedule import Corrector, Derivative, SolverSchedule, Step

__all__ = ["phi", "usf_sample", "usf_steps", "derivative_estimate", "relaxation_factor", "ddim_schedule",
           "dpmpp_2m_schedule", "dpmpp_3m_schedule", "unipc_schedule", "deis_schedule", "known_schedule",
           "KNOWN_SCHEDULES", "NOT_EXPRESSIBLE"]


SERIES = 0.05  # |z| below which phi_k is its power series


def phi(k: int, z: float | torch.Tensor) -> float | torch.Tensor:
    """phi_k(z) (phi_0 = e^z); the power series near 0, where the recursion cancels. A tensor ``z`` (the
    differentiable path, ``learned.ld3``) takes torch ops with both branches made safe, so gradients stay finite."""
    if isinstance(z, torch.Tensor):
        small = z.abs() < SERIES
        zs, zr = torch.where(small, z, torch.zeros_like(z)), torch.where(small, torch.ones_like(z), z)
        p = torch.exp(zr)
        for j in range(k):
            p = (p - 1.0 / math.factorial(j)) / zr
        return torch.where(small, sum(zs**m / math.factorial(m + k) for m in range(12)), p)
    if abs(z) < SERIES:
        return sum(z**m / math.factorial(m + k) for m in range(12))
    p = math.exp(z)
    for j in range(k):
        p = (p - 1.0 / math.factorial(j)) / z
    return p


def derivative_estimate(differences: list[torch.Tensor], dlambda: list, n: int) -> torch.Tensor:
    """F^{(n)}(lambda_s) from K differences F_j - F_s at offsets dlambda_j: sum_j a_j (F_j - F_s) with
    sum_j a_j dlambda_j^m / m! = delta_{mn}, m = 1..K (exact for polynomials of degree <= K). Tensor offsets solve
    in torch (differentiable in the times)."""
    if any(isinstance(x, torch.Tensor) for x in dlambda):
        dl = torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in dlambda])
        m = torch.stack([dl**r / math.factorial(r) for r in range(1, len(dlambda) + 1)])
        coeffs = torch.linalg.solve(m, torch.eye(len(dlambda), dtype=torch.float64)[n - 1])
        return sum(c * f for c, f in zip(coeffs, differences))
    m = np.array([[x**r / math.factorial(r) for x in dlambda] for r in range(1, len(dlambda) + 1)])
    coeffs = np.linalg.solve(m, np.eye(len(dlambda))[n - 1])
    return sum(float(c) * f for c, f in zip(coeffs, differences))


def relaxation_factor(d: Derivative, h, prediction: str):
    """Multiplier on the first-derivative estimate; the fixed kinds are evaluated at z = -h for data prediction."""
    z = -h if prediction == "data" else h
    em1 = torch.expm1(z) if isinstance(z, torch.Tensor) else math.expm1(z)
    kind = d.relaxation
    if kind == "none":
        return 1.0
    if kind == "linear":
        return 1.0 + d.coefficient * h
    if kind in ("dpmsolver-2", "unipc-bh2"):
        return 0.5 * z * em1 / (em1 - z)
    if kind == "unipc-bh1":
        return 0.5 * z * z / (em1 - z)
    if kind == "half":
        return 0.5
    return 1.0 + 0.5 * em1 if kind == "0.5exp" else 1.0 - 0.5 * em1


@dataclass
class _Point:
    index: int  # into the timesteps
    x: torch.Tensor
    eps: torch.Tensor
    x0: torch.Tensor


def _update(hist: list[_Point], start: int, order: int, derivatives: tuple[Derivative, ...], prediction: str,
            target: int, a: list[float], s: list[float], lam: list[float]) -> torch.Tensor:
    ps = hist[start]
    h = lam[target] - lam[ps.index]
    value = (lambda p: p.eps) if prediction == "noise" else (lambda p: p.x0)
    z = h if prediction == "noise" else -h
    total = h * phi(1, z) * value(ps)
    for n, d in enumerate(derivatives, 1):
        est = derivative_estimate([value(hist[p]) - value(ps) for p in d.active_points],
                                  [lam[hist[p].index] - lam[ps.index] for p in d.active_points], n)
        if d.relaxation != "none":
            est = est * relaxation_factor(d, h, prediction)
        total = total + h ** (n + 1) * phi(n + 1, z) * est
    if prediction == "noise":
        return (a[target] / a[ps.index]) * ps.x - s[target] * total
    return (s[target] / s[ps.index]) * ps.x + a[target] * total


def usf_steps(x: torch.Tensor, schedule: SolverSchedule, a: list[float], s: list[float], lam: list[float], *,
              data_mean: torch.Tensor | None = None, callback: Callback | None = None
              ) -> Generator[tuple[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The executor as a coroutine: it yields ``(x, i)`` (evaluate the model at x, time index i), receives the
    ``(eps, x0)`` predictions there, and returns the final x. ``usf_sample`` and the diffusers scheduler drive it,
    so both run the same arithmetic. ``a``, ``s``, ``lam``: alpha, sigma, lambda at the timesteps."""
    if schedule.afs == "none":
        eps, x0 = yield x, 0
        first = _Point(0, x, eps, x0)
    elif schedule.afs == "zero":  # x0 ~ 0, so eps(x_T) = x_T / sigma_T (= x_T for sigma_T = 1)
        first = _Point(0, x, x / s[0], torch.zeros_like(x))
    elif schedule.afs == "zero-official":  # thu-nics/USF zero_x0: eps = x_T / sigma_T, x0 from eps = x_T
        first = _Point(0, x, x / s[0], (x - s[0] * x) / a[0])
    else:
        if data_mean is None:
            raise UsageError("afs 'mean' needs the data mean (the model's mean training image)")
        x0 = data_mean.to(x).expand_as(x)
        first = _Point(0, x, (x - a[0] * x0) / s[0], x0)
    hist = [first]
    last = schedule.num_steps - 1
    for i, st in enumerate(schedule.steps):
        x = _update(hist, st.start_point, st.order, st.derivatives, st.prediction, i + 1, a, s, lam)
        report(callback, i, schedule.timesteps[i], x, hist[-1].x0)
        c = st.corrector
        if i == last and c.kind == "none":
            break
        eps, x0 = yield x, i + 1  # the next step's evaluation, or the last step's corrector's
        hist.append(_Point(i + 1, x, eps, x0))
        if c.kind != "none":
            x = _update(hist, c.start_point, c.order, c.derivatives, st.prediction, i + 1, a, s, lam)
            if c.kind == "implicit" and i < last:
                eps, x0 = yield x, i + 1
            hist[-1] = _Point(i + 1, x, eps, x0)  # pseudo: the outputs at the uncorrected point
    return x


def usf_sample(denoiser, x: torch.Tensor, schedule: SolverSchedule, *, data_mean: torch.Tensor | None = None,
               generator=None, callback: Callback | None = None) -> torch.Tensor:
    """Run ``schedule`` from x at ``timesteps[0]``; ``data_mean`` is the mean image for ``afs="mean"``. The network
    sees ``schedule.network_times`` (its ``model_times`` where given)."""
    ts = torch.tensor(schedule.timesteps, dtype=torch.float64)
    a, s, lam = tables(denoiser, ts)
    return drive(usf_steps(x, schedule, a, s, lam, data_mean=data_mean, callback=callback), denoiser,
                 torch.tensor(schedule.network_times, dtype=torch.float64))


def drive(steps: Generator, denoiser, times) -> torch.Tensor:
    """Run a ``usf_steps`` coroutine, evaluating ``denoiser`` at ``times[i]`` when it asks for time index i."""
    try:
        request = next(steps)
        while True:
            out = denoiser(request[0], times[request[1]])
            request = steps.send((out.eps, out.denoised))
    except StopIteration as done:
        return done.value


# --- schedules of known solvers (USF Sec. 3.3 and App. A): each reproduces a registry solver to float64 round-off --

def _times(grid) -> tuple[float, ...]:
    return tuple(float(t) for t in grid)


def ddim_schedule(grid, prediction: str = "noise") -> SolverSchedule:
    """DDIM: order 1 at every step (the same update in noise and data form)."""
    return SolverSchedule(_times(grid), tuple(Step(prediction, 1) for _ in range(len(grid) - 1)))


def dpmpp_2m_schedule(grid, lower_order_final: bool = True) -> SolverSchedule:
    """DPM-Solver++(2M), midpoint form: data prediction, multistep, the first derivative from point -2 with the
    ``dpmsolver-2`` relaxation."""
    return dpmpp_multistep_schedule(grid, 2, lower_order_final)


def dpmpp_3m_schedule(grid, lower_order_final: bool = True) -> SolverSchedule:
    """DPM-Solver++(3M) (Lu et al. 2022b, App. B): its D1 is the exact first derivative of the quadratic through the
    last three data predictions (Difference_2 on points -2, -3), its D2 term carries half the Taylor weight of the
    second derivative (``half``); the order-2 warm-up and final steps are 2M's."""
    return dpmpp_multistep_schedule(grid, 3, lower_order_final)


def dpmpp_multistep_schedule(grid, order: int, lower_order_final: bool = True) -> SolverSchedule:
    m = len(grid) - 1
    steps = []
    for i in range(m):
        k = step_order(order, i, m, lower_order_final)
        derivs = {1: (), 2: (Derivative((-2,), "dpmsolver-2"),),
                  3: (Derivative((-2, -3)), Derivative((-2, -3), "half"))}[k]
        steps.append(Step("data", k, derivs))
    return SolverSchedule(_times(grid), tuple(steps))


def unipc_schedule(grid, variant: str = "bh2", lower_order_final: bool = True) -> SolverSchedule:
    """UniPC with predictor order 2 (UniP-2's fixed 1/2 weight = the ``unipc-bh1`` relaxation, or for bh2 the
    ``dpmsolver-2`` one, the same function) and the UniC corrector as a ``pseudo`` corrector of one order more: with
    one difference its 1/2 weight is the same relaxation, with two the linear system is the exact Taylor estimate."""
    m = len(grid) - 1
    relax = "unipc-bh1" if variant == "bh1" else "dpmsolver-2"
    steps = []
    for i in range(m):
        k = step_order(2, i, m, lower_order_final)
        derivs = (Derivative((-2,), relax),) if k == 2 else ()
        if i == m - 1:
            corrector = Corrector()
        elif k == 1:
            corrector = Corrector("pseudo", 2, (Derivative((-1,), relax),))
        else:
            corrector = Corrector("pseudo", 3, (Derivative((-1, -3)), Derivative((-1, -3))))
        steps.append(Step("data", k, derivs, -1, corrector))
    return SolverSchedule(_times(grid), tuple(steps))


def deis_schedule(grid, order: int = 3, lower_order_final: bool = True) -> SolverSchedule:
    """DEIS with its Lagrange polynomial in log rho = -lambda (``deis(basis="logrho")``, diffusers'
    DEISMultistepScheduler): noise prediction, order k from the last k points; the Taylor expansion of that
    polynomial at lambda_s is what Difference_{k-1} on points -2..-k estimates, exactly."""
    m = len(grid) - 1
    steps = []
    for i in range(m):
        k = step_order(order, i, m, lower_order_final)
        points = tuple(range(-2, -k - 1, -1))
        steps.append(Step("noise", k, tuple(Derivative(points) for _ in range(k - 1))))
    return SolverSchedule(_times(grid), tuple(steps))


# Registry solvers as USF schedules: name -> (builder, the registry solver it reproduces, that solver's options).
KNOWN_SCHEDULES = {
    "ddim": (lambda g: ddim_schedule(g, "data"), "ddim", {}),
    "euler": (lambda g: ddim_schedule(g, "data"), "euler", {}),  # the same update as DDIM
    "dpmpp-2m": (dpmpp_2m_schedule, "dpmpp-2m", {}),
    "dpmpp-3m": (dpmpp_3m_schedule, "dpmpp-3m", {}),
    "unipc-bh1": (lambda g: unipc_schedule(g, "bh1"), "unipc-bh1", {}),
    "unipc-bh2": (lambda g: unipc_schedule(g, "bh2"), "unipc-bh2", {}),
    "deis-logrho": (deis_schedule, "deis", {"basis": "logrho"}),
}
# Registry solvers the executor cannot express, and why.
NOT_EXPRESSIBLE = {
    "deis": "its tAB polynomial (the default basis) is in t, not in lambda: no finite set of lambda-derivatives "
            "reproduces it (its log-rho basis is exact: deis-logrho)",
    "ipndm": "its fixed-step Adams-Bashforth weights need one free weight per history point; USF scales the first "
             "derivative only (and halves higher ones)",
    "heun": "its last step evaluates the model at the end point to correct it; USF never evaluates after the last step",
    "ddpm": "stochastic; USF schedules are deterministic",
}


def known_schedule(name: str, grid) -> SolverSchedule:
    """The USF schedule of registry solver ``name`` (a key of ``KNOWN_SCHEDULES``) on ``grid``."""
    if name not in KNOWN_SCHEDULES:
        why = f" ({NOT_EXPRESSIBLE[name]})" if name in NOT_EXPRESSIBLE else ""
        from ..names import nearest

        raise UsageError(f"solver {name!r} has no USF schedule{why}{nearest(name, KNOWN_SCHEDULES)}; valid: "
                         f"{', '.join(KNOWN_SCHEDULES)}")
    return KNOWN_SCHEDULES[name][0](grid)
