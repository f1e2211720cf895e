"""Helpers shared by the samplers: per-grid coefficient tables and the callback call."""

from __future__ import annotations

import torch

from .registry import Callback, StepInfo


def tables(denoiser, grid: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """alpha, sigma and lambda at every grid point, as float64 Python floats."""
    s = denoiser.schedule
    grid = torch.as_tensor(grid, dtype=torch.float64)
    return s.alpha(grid).tolist(), s.sigma(grid).tolist(), s.lambda_(grid).tolist()


def report(callback: Callback | None, i: int, t: float, x: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback(StepInfo(i, float(t), x, denoised))


def step_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """Order of multistep step i: warm up from 1 (history), and with ``lower_order_final`` fall to 1 at the end."""
    k = min(order, i + 1)
    return min(k, steps - i) if lower_order_final else k
