"""Skip-Tuning (Ma et al., ICML 2024): scale the UNet's skip connections, rho linear from the innermost skip
(rho_bottom) to the outermost (rho_top, usually 1), or one rho per skip from a schedule.

For a diffusers ``UNet2DModel`` the skip tensors are the ``conv_in`` output and each down block's residuals, S in
all; up block b receives the last ``len(resnets)`` of those still unused. Global position j = 0 is the ``conv_in``
output (outermost), j = S - 1 the deepest. A forward pre-hook on every up block multiplies its residual tuple,
leaving the main path (and diffusers' code) untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from ..errors import UsageError

__all__ = ["count_skips", "linear_skip_coefficients", "apply_skip_tuning", "skip_tuning"]


def count_skips(unet) -> int:
    return sum(len(b.resnets) for b in unet.up_blocks)


def linear_skip_coefficients(num_skips: int, rho_bottom: float, rho_top: float = 1.0) -> list[float]:
    """rho_j for j = 0 (outermost) .. S - 1 (innermost): rho_top + (rho_bottom - rho_top) j / (S - 1)."""
    if num_skips < 1:
        raise ValueError("a UNet has at least one skip")
    if num_skips == 1:
        return [float(rho_bottom)]
    return [rho_top + (rho_bottom - rho_top) * j / (num_skips - 1) for j in range(num_skips)]


def apply_skip_tuning(unet, coefficients: Sequence[float]) -> list[torch.utils.hooks.RemovableHandle]:
    """Scale skip j by ``coefficients[j]`` (outermost first); returns the hook handles (``.remove()`` undoes it)."""
    total = count_skips(unet)
    coefficients = [float(c) for c in coefficients]
    if len(coefficients) != total:
        raise UsageError(f"skip coefficients: the UNet has {total} skips, got {len(coefficients)} coefficients")
    if any(c < 0 for c in coefficients):
        raise UsageError(f"skip coefficients must be >= 0, got {coefficients}")
    handles, end = [], total
    for block in unet.up_blocks:  # innermost first, consuming the skip tuple from its end
        start = end - len(block.resnets)
        rhos = coefficients[start:end]
        end = start

        def hook(module, args, kwargs, rhos=rhos):
            if "res_hidden_states_tuple" in kwargs:
                kwargs = {**kwargs, "res_hidden_states_tuple": tuple(
                    r * c for r, c in zip(kwargs["res_hidden_states_tuple"], rhos))}
            else:
                args = (args[0], tuple(r * c for r, c in zip(args[1], rhos)), *args[2:])
            return args, kwargs

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@contextmanager
def skip_tuning(unet, coefficients: Sequence[float]):
    handles = apply_skip_tuning(unet, coefficients)
    try:
        yield unet
    finally:
        for h in handles:
            h.remove()
