"""One registry of samplers, filled by a decorator; the CLI, the app, the search space and the tests iterate it.

A sampler is a pure function ``fn(denoiser, x, grid, *, generator, callback, **options) -> x_end`` over a
descending time grid of ``steps + 1`` points. Its spec declares how many network evaluations it makes for a
step count, so ``--nfe N`` maps to an exact step count or to a clear error. A grid that ends in 0 (k-diffusion's,
diffusers' and ComfyUI's convention) is run by the spec for every sampler alike: the sampler on the grid without
its 0, then one evaluation whose x0 prediction is the result, so its last step costs 1 NFE. Third-party samplers register
through the ``samplebench.samplers`` entry-point group (each entry point is a module that registers on import).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError, unknown

__all__ = ["SolverSpec", "StepInfo", "register", "get_solver", "solver_names", "SOLVERS"]


@dataclass(frozen=True)
class StepInfo:
    """What a sampler reports to its callback after step ``i`` (from ``grid[i]`` to ``grid[i + 1]``)."""

    i: int
    t: float
    x: torch.Tensor
    denoised: torch.Tensor


Callback = Callable[[StepInfo], None]


@dataclass(frozen=True)
class SolverSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    nfe_per_step: int
    # Global convergence order of a deterministic solver as shipped (warm-up included) on its default grid,
    # measured on the analytic Gaussian; None for stochastic samplers.
    order: int | None
    default_grid: str
    description: str
    stochastic: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    # Whether a grid may start at pure noise (alpha = 0, a flow path's t = 1): exponential integrators in lambda take
    # lambda = -inf as its limit; samplers in rho = sigma / alpha (and UniPC-bh1's B(h) = h) are undefined there.
    from_pure_noise: bool = True
    # The network's input times at the grid's times, where they differ from them (LD3's decoupled times); None: the
    # grid's own.
    input_times: tuple[float, ...] | None = None

    def check_start(self, schedule, grid: torch.Tensor) -> None:
        """A ``UsageError`` when ``grid`` starts at pure noise and this sampler is undefined there."""
        if not self.from_pure_noise and float(schedule.alpha(float(grid[0]))) == 0.0:
            raise UsageError(f"solver {self.name!r} is undefined at pure noise (t = {float(grid[0]):g}, alpha = 0), "
                             f"where the grid starts; start it below (e.g. at the schedule's T = {schedule.T:g}) "
                             f"or use a solver that starts there: "
                             f"{', '.join(n for n, s in SOLVERS.items() if s.from_pure_noise)}")

    def nfe(self, steps: int, to_zero: bool = False) -> int:
        """Network evaluations for ``steps`` steps; ``to_zero``: the last one goes to t = 0 (1 NFE)."""
        return self.nfe_per_step * (steps - 1) + 1 if to_zero else self.nfe_per_step * steps

    def steps_for_nfe(self, nfe: int, to_zero: bool = False) -> int:
        """The step count that makes exactly ``nfe`` network evaluations (on a grid ending in 0 with ``to_zero``),
        or a ``UsageError`` naming valid NFEs."""
        k, rest = self.nfe_per_step, 1 if to_zero else 0
        if nfe < self.nfe(1, to_zero):
            raise UsageError(f"--nfe {nfe} is below the minimum of solver {self.name!r}: at least "
                             f"{self.nfe(1, to_zero)}")
        if (nfe - rest) % k:
            below = nfe - (nfe - rest) % k
            ending = " on a grid ending in 0 (its last step costs 1)" if to_zero else ""
            raise UsageError(f"solver {self.name!r} cannot use exactly {nfe} NFE ({k} per step{ending}); "
                             f"nearest valid: {below}, {below + k}")
        return (nfe - rest) // k + rest

    def __call__(self, denoiser, x: torch.Tensor, grid: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        options = {**self.options, **kwargs}
        if not (len(grid) > 1 and float(grid[-1]) == 0.0):
            return self.fn(denoiser, x, grid, **options)
        # the step to t = 0 lands on the x0 prediction at the last nonzero time; it is the lower-order final step
        grid = torch.as_tensor(grid, dtype=torch.float64)
        if len(grid) > 2:
            if "lower_order_final" in inspect.signature(self.fn).parameters:
                options.setdefault("lower_order_final", False)
            x = self.fn(denoiser, x, grid[:-1], **options)
        denoised = denoiser(x, grid[-2]).denoised
        if options.get("callback") is not None:
            options["callback"](StepInfo(len(grid) - 2, float(grid[-2]), denoised, denoised))
        return denoised


SOLVERS: dict[str, SolverSpec] = {}


def register(name: str, *, nfe_per_step: int = 1, order: int | None, default_grid: str, description: str,
             stochastic: bool = False, from_pure_noise: bool = True, **options: Any) -> Callable[[Callable], Callable]:
    """Register ``fn`` under ``name``; ``options`` are bound keyword arguments (one function, several entries)."""

    def deco(fn: Callable) -> Callable:
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} is already registered")
        SOLVERS[name] = SolverSpec(name, fn, nfe_per_step, order, default_grid, description, stochastic, options,
                                   from_pure_noise)
        return fn

    return deco


_entry_points_loaded = False


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group="samplebench.samplers"):
        ep.load()


def solver_names() -> list[str]:
    _load_entry_points()
    return list(SOLVERS)


def get_solver(name: str) -> SolverSpec:
    _load_entry_points()
    if name not in SOLVERS:
        from ..names import ALIGN_METHODS

        # the command line also takes s3 (a shipped schedule) and the alignment methods where it takes a solver
        raise unknown("solver", name, [*SOLVERS, "s3", *ALIGN_METHODS])
    return SOLVERS[name]
