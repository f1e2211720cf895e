"""First- and second-order samplers: DDIM / Euler, DDPM (ancestral) and Heun (EDM)."""

from __future__ import annotations

import math

import torch

from ..noise import SampleGenerators
from ._common import report, tables
from .registry import Callback, register


@register("ddpm", order=None, stochastic=True, default_grid="time-uniform", eta=1.0,
          description="DDPM ancestral sampling = DDIM with eta = 1 (Song et al. 2021, Eq. 16)")
@register("euler", order=1, default_grid="karras", eta=0.0,
          description="Euler on the ODE in (x/alpha, sigma/alpha) (Karras et al. 2022, Alg. 1 without Heun); = DDIM")
@register("ddim", order=1, default_grid="time-uniform", eta=0.0,
          description="DDIM, eta = 0 (Song et al. 2021, Eq. 12)")
def ddim(denoiser, x: torch.Tensor, grid: torch.Tensor, *, eta: float = 0.0,
         generator: SampleGenerators | None = None, callback: Callback | None = None) -> torch.Tensor:
    """DDIM with stochasticity eta (Song et al. 2021, Eq. 12 and 16), written in rho_t = sigma_t / alpha_t:

    x_t = alpha_t (x0_pred + rho_down eps + rho_up z),  rho_up = eta rho_t sqrt(1 - rho_t^2 / rho_s^2),
    rho_down = sqrt(rho_t^2 - rho_up^2). With eta = 0 this is Euler's method on dx~/drho = eps, x~ = x / alpha.
    """
    a, s, _ = tables(denoiser, grid)
    if eta > 0 and generator is None:
        raise ValueError("a stochastic sampler (eta > 0) needs a generator")
    for i in range(len(grid) - 1):
        x0, eps = denoiser(x, grid[i])
        x = ddim_update(x0, eps, a[i], s[i], a[i + 1], s[i + 1], eta, generator)
        report(callback, i, grid[i], x, x0)
    return x


def ddim_update(x0: torch.Tensor, eps: torch.Tensor, alpha_s: float, sigma_s: float, alpha_t: float, sigma_t: float,
                eta: float, generator=None) -> torch.Tensor:
    """One DDIM step from time s to t given the predictions at s (Song et al. 2021, Eq. 12); ``generator`` has
    ``randn_like`` (a ``SampleGenerators``, or any object drawing the step noise of every row)."""
    rho_s = sigma_s / alpha_s if alpha_s > 0 else math.inf  # alpha_s = 0: a flow path's pure-noise end, t = 1
    rho_t = sigma_t / alpha_t
    rho_up = eta * rho_t * math.sqrt(max(0.0, 1.0 - rho_t**2 / rho_s**2))
    rho_down = math.sqrt(rho_t**2 - rho_up**2)
    x = alpha_t * (x0 + rho_down * eps)
    if rho_up > 0:
        x = x + alpha_t * rho_up * generator.randn_like(x)
    return x


@register("heun", nfe_per_step=2, order=2, default_grid="karras", from_pure_noise=False,
          description="Heun's 2nd-order method (Karras et al. 2022, Alg. 1, S_churn = 0)")
def heun(denoiser, x: torch.Tensor, grid: torch.Tensor, *, generator: SampleGenerators | None = None,
         callback: Callback | None = None) -> torch.Tensor:
    """Heun on dx~/drho = eps with x~ = x / alpha, rho = sigma / alpha; 2 NFE every step (the last one too)."""
    a, s, _ = tables(denoiser, grid)
    for i in range(len(grid) - 1):
        x0, eps = denoiser(x, grid[i])
        dr = s[i + 1] / a[i + 1] - s[i] / a[i]
        x_euler = a[i + 1] * (x / a[i] + dr * eps)  # Alg. 1, line 5
        _, eps_next = denoiser(x_euler, grid[i + 1])
        x = a[i + 1] * (x / a[i] + dr * 0.5 * (eps + eps_next))  # Alg. 1, line 8
        report(callback, i, grid[i], x, x0)
    return x
