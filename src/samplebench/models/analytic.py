"""Analytic denoisers: Gaussian and Gaussian-mixture data with exact posterior means.

For data x_0 ~ sum_k w_k N(mu_k, U_k diag(s_k) U_k^T) and x_t = alpha_t x_0 + sigma_t eps, the marginal is a
mixture of N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I) and the denoiser is exact (Tweedie):

    E[x_0 | x_t, k] = mu_k + alpha_t Sigma_k (alpha_t^2 Sigma_k + sigma_t^2 I)^{-1} (x_t - alpha_t mu_k),

weighted by the component responsibilities. For a single Gaussian the probability-flow ODE is linear and its
solution is closed-form along each eigen-direction:

    x_t - alpha_t mu = sqrt(alpha_t^2 s + sigma_t^2) / sqrt(alpha_u^2 s + sigma_u^2) (x_u - alpha_u mu).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..noise import SampleGenerators
from ..schedules import NoiseSchedule
from .protocol import Prediction, as_time

__all__ = ["GaussianMixture", "AnalyticDenoiser", "gaussian_ode_solution"]


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """Mixture weights [K], means [K, D], covariance eigenvalues [K, D] and eigenvectors [K, D, D] or None
    (axis-aligned covariances). ``shape`` is the sample shape, whose product is D."""

    weights: torch.Tensor
    means: torch.Tensor
    eigvals: torch.Tensor
    eigvecs: torch.Tensor | None
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float64).flatten()
        mu = torch.as_tensor(self.means, dtype=torch.float64)
        ev = torch.as_tensor(self.eigvals, dtype=torch.float64)
        k, d = mu.shape
        if w.shape != (k,) or ev.shape != (k, d) or math.prod(self.shape) != d:
            raise ValueError(f"inconsistent mixture: weights {tuple(w.shape)}, means {tuple(mu.shape)}, "
                             f"eigvals {tuple(ev.shape)}, shape {self.shape}")
        if bool((w < 0).any()) or bool((ev < 0).any()):
            raise ValueError("mixture weights and covariance eigenvalues must be non-negative")
        object.__setattr__(self, "weights", w / w.sum())
        object.__setattr__(self, "means", mu)
        object.__setattr__(self, "eigvals", ev)
        if self.eigvecs is not None:
            u = torch.as_tensor(self.eigvecs, dtype=torch.float64)
            if u.shape != (k, d, d):
                raise ValueError(f"eigvecs must have shape ({k}, {d}, {d}), got {tuple(u.shape)}")
            object.__setattr__(self, "eigvecs", u)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @classmethod
    def gaussian(cls, mean: torch.Tensor | float, std: torch.Tensor | float, shape: tuple[int, ...]) -> "GaussianMixture":
        """One axis-aligned Gaussian N(mean, diag(std^2)); scalars are broadcast over ``shape``."""
        d = math.prod(shape)
        mean = torch.as_tensor(mean, dtype=torch.float64).expand(shape).reshape(1, d)
        std = torch.as_tensor(std, dtype=torch.float64).expand(shape).reshape(1, d)
        return cls(torch.ones(1), mean, std**2, None, shape)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _to_eigenbasis(self, z: torch.Tensor, k: int) -> torch.Tensor:
        return z if self.eigvecs is None else z @ self.eigvecs[k].to(z.device)

    def _from_eigenbasis(self, c: torch.Tensor, k: int) -> torch.Tensor:
        return c if self.eigvecs is None else c @ self.eigvecs[k].to(c.device).T

    def posterior_mean(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """E[x_0 | x_t = x] for per-row alpha_t, sigma_t (float64 math, result in x's dtype)."""
        b = x.shape[0]
        y = x.reshape(b, -1).to(torch.float64)
        a = alpha.to(y.device, torch.float64).view(b, 1)
        s2 = (sigma.to(y.device, torch.float64) ** 2).view(b, 1)
        means, eigvals, logw = self.means.to(y.device), self.eigvals.to(y.device), self.weights.to(y.device).log()
        posts, logliks = [], []
        for k in range(means.shape[0]):
            c = self._to_eigenbasis(y - a * means[k], k)
            var = a**2 * eigvals[k] + s2
            posts.append(means[k] + self._from_eigenbasis(a * eigvals[k] / var * c, k))
            logliks.append(logw[k] - 0.5 * ((c**2 / var).sum(1) + var.log().sum(1)))
        resp = torch.softmax(torch.stack(logliks, 1), dim=1)
        x0 = (resp.unsqueeze(-1) * torch.stack(posts, 1)).sum(1)
        return x0.reshape(x.shape).to(x.dtype)

    def sample(self, generators: SampleGenerators, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Exact samples, one per generator (component index, then its Gaussian draw)."""
        rows = []
        for g in generators.generators:
            k = int(torch.multinomial(self.weights, 1, generator=g))
            z = torch.randn(self.dim, generator=g, dtype=torch.float64)
            rows.append(self.means[k] + self._from_eigenbasis((z * self.eigvals[k].sqrt()).unsqueeze(0), k)[0])
        return torch.stack(rows).reshape(len(rows), *self.shape).to(dtype)

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``mixture.safetensors`` (the layout the embedded models use)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"weights": self.weights, "means": self.means, "eigvals": self.eigvals}
        if self.eigvecs is not None:
            tensors["eigvecs"] = self.eigvecs
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, directory / "mixture.safetensors")
        (directory / "config.json").write_text(json.dumps({"_class_name": "GaussianMixture", "shape": list(self.shape)}))

    @classmethod
    def load(cls, directory: str | Path) -> "GaussianMixture":
        from safetensors.torch import load_file

        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        t = load_file(directory / "mixture.safetensors")
        return cls(t["weights"], t["means"], t["eigvals"], t.get("eigvecs"), tuple(config["shape"]))


class AnalyticDenoiser:
    """The exact denoiser of a Gaussian mixture under a noise schedule."""

    nfe_per_call = 1

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        self.mixture = mixture
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> Prediction:
        t = as_time(t, x)
        alpha, sigma = self.schedule.alpha(t), self.schedule.sigma(t)
        x0 = self.mixture.posterior_mean(x, alpha, sigma)
        a = alpha.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
        s = sigma.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))
        return Prediction(x0, (x - a * x0) / s)


def gaussian_ode_solution(mixture: GaussianMixture, schedule: NoiseSchedule, x_u: torch.Tensor,
                          u: float, t: float) -> torch.Tensor:
    """The exact probability-flow ODE solution from time u to time t for single-Gaussian data."""
    if mixture.means.shape[0] != 1:
        raise ValueError("the closed-form ODE solution exists for a single Gaussian only")
    b = x_u.shape[0]
    y = x_u.reshape(b, -1).to(torch.float64)
    mu, s = mixture.means[0].to(y.device), mixture.eigvals[0].to(y.device)
    a_u, s_u, a_t, s_t = schedule.alpha(u), schedule.sigma(u), schedule.alpha(t), schedule.sigma(t)
    ratio = torch.sqrt(a_t**2 * s + s_t**2) / torch.sqrt(a_u**2 * s + s_u**2)
    c = mixture._to_eigenbasis(y - a_u * mu, 0) * ratio
    return (a_t * mu + mixture._from_eigenbasis(c, 0)).reshape(x_u.shape).to(x_u.dtype)
