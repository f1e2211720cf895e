"""Samplers: pure functions over a time grid, registered by name. Importing this package registers them all."""

from . import basic, multistep  # noqa: F401  (registration)
from .grids import GRID_KINDS, make_grid, parse_grid, validate_grid
from .registry import SOLVERS, SolverSpec, StepInfo, get_solver, register, solver_names

__all__ = ["GRID_KINDS", "make_grid", "parse_grid", "validate_grid", "SOLVERS", "SolverSpec", "StepInfo",
           "get_solver", "register", "solver_names"]
