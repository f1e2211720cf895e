"""Time grids: ``steps + 1`` decreasing times from ``t_start`` (default T) to ``t_end`` (default t_min).

- ``logsnr``: uniform in lambda (DPM-Solver, Lu et al. 2022, Sec. 3.3);
- ``time-uniform`` and ``time-quadratic``: uniform in t and in sqrt(t) (DDIM, Song et al. 2021, App. D.2);
- ``karras``: uniform in rho_t^(1/rho), rho_t = sigma_t / alpha_t, rho = 7 (Karras et al. 2022, Eq. 5);
- ``flow-shift:S``: uniform u mapped by SD3's shift t = S u / (1 + (S - 1) u) (Esser et al. 2024, Eq. 23; S = 3
  for SD3, FLUX's dynamic shift is S = exp(mu)); meant for flow-matching schedules;
- ``pipeline``: a diffusers pipeline's own scheduler grid (``sampling.solver_grid`` asks the model for it);
- ``gits``, ``dmn``, ``ld3``: learned or optimised per model and solver (``samplebench.learned``);
- an explicit list of times, e.g. ``"1.0,0.5,0.2,0.001"``.

An explicit grid may start at the model's noise end (``schedules.noise_end``: t = 1 for flow paths) and may end in
0, as k-diffusion's, diffusers' and ComfyUI's sigmas do: the step to 0 lands on the denoiser's x0 prediction at the
grid's last nonzero time (one network evaluation, ``registry.SolverSpec.__call__``).
"""

from __future__ import annotations

import math

import torch

from ..errors import UsageError, unknown
from ..schedules import NoiseSchedule, flow_shift, noise_end

__all__ = ["GRID_KINDS", "PIPELINE", "make_grid", "parse_grid", "validate_grid", "ends_at_zero"]

GRID_KINDS = ("logsnr", "time-uniform", "time-quadratic", "karras")
PIPELINE = "pipeline"  # the loaded pipeline's own scheduler grid
LEARNED_KINDS = ("gits", "dmn", "ld3")  # learned per model (``samplebench.learned``)


def ends_at_zero(grid: torch.Tensor) -> bool:
    """Whether the grid's last step goes to t = 0: it lands on the denoiser's x0 prediction."""
    return len(grid) > 1 and float(grid[-1]) == 0.0


def validate_grid(schedule: NoiseSchedule, grid: torch.Tensor) -> torch.Tensor:
    """A float64 grid, strictly decreasing, from at most the schedule's noise end to at least ``t_min`` or to 0."""
    grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
    if grid.numel() < 2:
        raise UsageError("a time grid needs at least 2 points (1 step)")
    if not bool(torch.isfinite(grid).all()) or not bool((grid[1:] < grid[:-1]).all()):
        raise UsageError(f"time grid must be strictly decreasing, got {grid.tolist()}")
    lo, hi = schedule.t_min, noise_end(schedule)
    last = float(grid[-2] if ends_at_zero(grid) else grid[-1])
    if float(grid[0]) > hi * (1 + 1e-9) or last < lo * (1 - 1e-9):
        raise UsageError(f"time grid {grid.tolist()} leaves the schedule's range [{lo}, {hi}] (a final 0 is also "
                         "valid: the last step then lands on the x0 prediction)")
    return grid


def make_grid(schedule: NoiseSchedule, kind: str, steps: int, *, t_start: float | None = None,
              t_end: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """A float64 grid of ``steps + 1`` times, decreasing."""
    if steps < 1:
        raise UsageError(f"steps must be >= 1, got {steps}")
    t0 = schedule.T if t_start is None else float(t_start)
    t1 = schedule.t_min if t_end is None else float(t_end)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "logsnr":
        lam0, lam1 = schedule.lambda_(t0), schedule.lambda_(t1)
        grid = schedule.inverse_lambda(lam0 + u * (lam1 - lam0))
    elif kind == "time-uniform":
        grid = t0 + u * (t1 - t0)
    elif kind == "time-quadratic":
        grid = (math.sqrt(t0) + u * (math.sqrt(t1) - math.sqrt(t0))) ** 2
    elif kind.startswith("flow-shift:"):
        shift = _shift(kind)
        inverse = lambda t: t / (shift - (shift - 1.0) * t)  # noqa: E731
        u0, u1 = inverse(t0), inverse(t1)
        grid = flow_shift(u0 + u * (u1 - u0), shift)
    elif kind == "karras":
        r0, r1 = math.exp(-schedule.lambda_(t0)), math.exp(-schedule.lambda_(t1))
        r = (r0 ** (1 / rho) + u * (r1 ** (1 / rho) - r0 ** (1 / rho))) ** rho
        grid = schedule.inverse_lambda(-torch.log(r))
    elif kind == PIPELINE or kind in LEARNED_KINDS:
        raise UsageError(f"time grid {kind!r} comes from the model (sampling.solver_grid), not from a noise "
                         "schedule alone")
    else:
        raise unknown("time grid", kind, GRID_KINDS, f", flow-shift:S, {PIPELINE}, or a comma-separated list of "
                      "decreasing times")
    grid[0], grid[-1] = t0, t1  # exact end points (no round trip through lambda)
    return validate_grid(schedule, grid)


def _shift(kind: str) -> float:
    try:
        shift = float(kind.split(":", 1)[1])
    except ValueError:
        shift = math.nan
    if not (math.isfinite(shift) and shift > 0):
        raise UsageError(f"time grid {kind!r} is not valid; give flow-shift:S with a shift S > 0, e.g. flow-shift:3")
    return shift


def parse_grid(spec: str) -> str | list[float]:
    """A grid kind name, or the times of an explicit comma-separated list."""
    if spec in GRID_KINDS or spec == PIPELINE or spec in LEARNED_KINDS:
        return spec
    if spec.startswith("flow-shift:"):
        _shift(spec)
        return spec
    try:
        times = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise unknown("time grid", spec, GRID_KINDS + LEARNED_KINDS + (PIPELINE,),
                      ", flow-shift:S, or a comma-separated list of decreasing times") from None
    if len(times) < 2:
        raise UsageError(f"an explicit time grid needs at least 2 times, got {spec!r}")
    return times
