"""One registry of samplers, filled by a decorator; the CLI, the app, the search space and the tests iterate it.

A sampler is a pure function ``fn(denoiser, x, grid, *, generator, callback, **options) -> x_end`` over a
descending time grid of ``steps + 1`` points. Its spec declares how many network evaluations it makes for a
step count, so ``--nfe N`` maps to an exact step count or to a clear error. Third-party samplers register
through the ``samplebench.samplers`` entry-point group (each entry point is a module that registers on import).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UsageError

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

    def nfe(self, steps: int) -> int:
        """Network evaluations for ``steps`` steps."""
        return self.nfe_per_step * steps

    def steps_for_nfe(self, nfe: int) -> int:
        """The step count that makes exactly ``nfe`` network evaluations, or a ``UsageError`` naming valid NFEs."""
        if nfe < self.nfe(1):
            raise UsageError(f"--nfe {nfe} is below the minimum of solver {self.name!r}: at least {self.nfe(1)}")
        if nfe % self.nfe_per_step:
            below = nfe - nfe % self.nfe_per_step
            raise UsageError(f"solver {self.name!r} cannot use exactly {nfe} NFE ({self.nfe_per_step} per step); "
                             f"nearest valid: {below}, {below + self.nfe_per_step}")
        return nfe // self.nfe_per_step

    def __call__(self, denoiser, x: torch.Tensor, grid: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return self.fn(denoiser, x, grid, **{**self.options, **kwargs})


SOLVERS: dict[str, SolverSpec] = {}


def register(name: str, *, nfe_per_step: int = 1, order: int | None, default_grid: str, description: str,
             stochastic: bool = False, **options: Any) -> Callable[[Callable], Callable]:
    """Register ``fn`` under ``name``; ``options`` are bound keyword arguments (one function, several entries)."""

    def deco(fn: Callable) -> Callable:
        if name in SOLVERS:
            raise ValueError(f"solver {name!r} is already registered")
        SOLVERS[name] = SolverSpec(name, fn, nfe_per_step, order, default_grid, description, stochastic, options)
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
        raise UsageError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    return SOLVERS[name]
