"""Continuous-time noise schedules: alpha_t, sigma_t, lambda_t = log(alpha_t / sigma_t) and its inverse.

Forward process x_t = alpha_t x_0 + sigma_t eps. Time runs from ``t_min`` (data end) to ``T`` (noise end);
lambda decreases with t. Conventions follow DPM-Solver (Lu et al., 2022, Sec. 2 and App. D): a discrete DDPM
schedule with N training steps lives on t_n = (n + 1) / N, n = 0..N-1, with log(alpha) interpolated
piecewise-linearly, and the network sees the fractional timestep N * (t - 1/N).

Scalar arguments give Python floats; tensor arguments give float64 tensors (float64 avoids the loss of
precision at the ends of the schedule that float32 solvers suffer from).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

import torch

Time = Union[float, torch.Tensor]

__all__ = [
    "NoiseSchedule",
    "DiscreteVP",
    "LinearVP",
    "CosineVP",
    "VE",
    "FlowMatching",
    "flow_shift",
    "noise_end",
    "is_flow_config",
    "schedule_from_config",
]


def _as_tensor(t: Time) -> torch.Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _out(t: Time, value: torch.Tensor) -> Time:
    return float(value) if not isinstance(t, torch.Tensor) else value


@runtime_checkable
class NoiseSchedule(Protocol):
    """What every schedule provides. ``t`` may be a float or a tensor of any shape."""

    T: float
    t_min: float

    def log_alpha(self, t: Time) -> Time: ...
    def alpha(self, t: Time) -> Time: ...
    def sigma(self, t: Time) -> Time: ...
    def lambda_(self, t: Time) -> Time: ...
    def inverse_lambda(self, lambda_: Time) -> Time: ...
    def model_time(self, t: torch.Tensor) -> torch.Tensor: ...
    def prior_std(self) -> float: ...
    def to_config(self) -> dict[str, Any]: ...


class _VPSchedule:
    """Shared VP algebra: sigma_t = sqrt(1 - alpha_t^2), lambda_t = log alpha_t - log sigma_t."""

    T: float
    t_min: float

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_alpha(self, t: Time) -> Time:
        return _out(t, self._log_alpha(_as_tensor(t)))

    def alpha(self, t: Time) -> Time:
        return _out(t, torch.exp(self._log_alpha(_as_tensor(t))))

    def sigma(self, t: Time) -> Time:
        la = self._log_alpha(_as_tensor(t))
        return _out(t, torch.sqrt(-torch.expm1(2.0 * la)))

    def lambda_(self, t: Time) -> Time:
        la = self._log_alpha(_as_tensor(t))
        return _out(t, la - 0.5 * torch.log(-torch.expm1(2.0 * la)))

    def inverse_lambda(self, lambda_: Time) -> Time:
        lam = _as_tensor(lambda_)
        # log alpha = -0.5 log(1 + e^{-2 lambda})
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lam), -2.0 * lam)
        return _out(lambda_, self._t_of_log_alpha(log_alpha))

    def prior_std(self) -> float:
        return 1.0

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t


@dataclass(frozen=True, eq=False)
class DiscreteVP(_VPSchedule):
    """A discrete DDPM schedule (``alphas_cumprod`` of N training steps) made continuous (DPM-Solver, App. D)."""

    alphas_cumprod: torch.Tensor
    t_grid: torch.Tensor = field(init=False, repr=False)
    log_alpha_grid: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ac = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()) or not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must be a strictly decreasing sequence in (0, 1) of length >= 2")
        n = ac.numel()
        object.__setattr__(self, "alphas_cumprod", ac)
        object.__setattr__(self, "t_grid", torch.arange(1, n + 1, dtype=torch.float64) / n)
        object.__setattr__(self, "log_alpha_grid", 0.5 * torch.log(ac))

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def T(self) -> float:  # type: ignore[override]
        return 1.0

    @property
    def t_min(self) -> float:  # type: ignore[override]
        return 1.0 / self.num_train_timesteps

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return _interp(t, self.t_grid, self.log_alpha_grid)

    def _t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        # log_alpha decreases along the grid: interpolate on the flipped (increasing) sequence.
        return _interp(log_alpha, self.log_alpha_grid.flip(0), self.t_grid.flip(0))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        """The network's (fractional) timestep, N * (t - 1/N): 0 .. N-1 on the training grid."""
        n = self.num_train_timesteps
        return (t - 1.0 / n).clamp(min=0.0) * n

    def to_config(self) -> dict[str, Any]:
        return {"kind": "discrete-vp", "num_train_timesteps": self.num_train_timesteps}


@dataclass(frozen=True)
class LinearVP(_VPSchedule):
    """VP-SDE with linear beta(t) = beta_0 + t (beta_1 - beta_0) (Song et al., 2021, Eq. 33)."""

    beta_0: float = 0.1
    beta_1: float = 20.0
    T: float = 1.0
    t_min: float = 1e-3

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0

    def _t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        # Solve 0.25 (b1 - b0) t^2 + 0.5 b0 t + log_alpha = 0 for t >= 0 (DPM-Solver, App. D).
        a = 0.25 * (self.beta_1 - self.beta_0)
        return (-0.5 * self.beta_0 + torch.sqrt(0.25 * self.beta_0**2 - 4.0 * a * log_alpha)) / (2.0 * a)

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return 1000.0 * t

    def to_config(self) -> dict[str, Any]:
        return {"kind": "linear-vp", "beta_0": self.beta_0, "beta_1": self.beta_1, "T": self.T, "t_min": self.t_min}


@dataclass(frozen=True)
class CosineVP(_VPSchedule):
    """Cosine schedule alpha_t = cos((t + s)/(1 + s) pi/2) / cos(s/(1 + s) pi/2) (Nichol & Dhariwal, 2021, Eq. 17).

    T = 0.9946 keeps lambda_T above -5.1, as DPM-Solver does (App. D).
    """

    s: float = 0.008
    T: float = 0.9946
    t_min: float = 1e-3

    def _log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        c = math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))
        return torch.log(torch.cos((t + self.s) / (1.0 + self.s) * math.pi / 2.0)) - c

    def _t_of_log_alpha(self, log_alpha: torch.Tensor) -> torch.Tensor:
        c = math.log(math.cos(self.s / (1.0 + self.s) * math.pi / 2.0))
        return 2.0 * (1.0 + self.s) / math.pi * torch.arccos(torch.exp(log_alpha + c)) - self.s

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return 1000.0 * t

    def to_config(self) -> dict[str, Any]:
        return {"kind": "cosine-vp", "s": self.s, "T": self.T, "t_min": self.t_min}


@dataclass(frozen=True)
class VE:
    """Variance-exploding / EDM schedule: alpha_t = 1, sigma_t = t (Karras et al., 2022, Table 1)."""

    T: float = 80.0
    t_min: float = 0.002

    def log_alpha(self, t: Time) -> Time:
        return _out(t, torch.zeros_like(_as_tensor(t)))

    def alpha(self, t: Time) -> Time:
        return _out(t, torch.ones_like(_as_tensor(t)))

    def sigma(self, t: Time) -> Time:
        return _out(t, _as_tensor(t))

    def lambda_(self, t: Time) -> Time:
        return _out(t, -torch.log(_as_tensor(t)))

    def inverse_lambda(self, lambda_: Time) -> Time:
        return _out(lambda_, torch.exp(-_as_tensor(lambda_)))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def prior_std(self) -> float:
        return self.T

    def to_config(self) -> dict[str, Any]:
        return {"kind": "ve", "T": self.T, "t_min": self.t_min}


@dataclass(frozen=True)
class FlowMatching:
    """The rectified-flow / flow-matching path x_t = (1 - t) x_0 + t eps: alpha_t = 1 - t, sigma_t = t,
    lambda_t = log((1 - t) / t) (Lipman et al. 2023; Liu et al. 2023; the path of SD3, FLUX, Sana).

    The network sees ``timestep_scale`` x t (1000 for SD3-style transformers, diffusers' ``timesteps = sigmas *
    num_train_timesteps``; 1 for FLUX). ``T`` < 1 keeps lambda_T finite for the exponential integrators (at
    T = 1 - 1e-4, x_T differs from pure noise by 1e-4 of the data); ``t_min`` is the last sampled time. The shifted
    time maps of SD3 and FLUX reshape the grid, not the path (``samplers.grids``: ``flow-shift:S``)."""

    T: float = 1.0 - 1e-4
    t_min: float = 1e-3
    timestep_scale: float = 1000.0
    t_noise = 1.0  # pure noise (alpha = 0): where a pipeline's own grid starts (``noise_end``)

    def log_alpha(self, t: Time) -> Time:
        return _out(t, torch.log1p(-_as_tensor(t)))

    def alpha(self, t: Time) -> Time:
        return _out(t, 1.0 - _as_tensor(t))

    def sigma(self, t: Time) -> Time:
        return _out(t, _as_tensor(t).clone())

    def lambda_(self, t: Time) -> Time:
        u = _as_tensor(t)
        return _out(t, torch.log1p(-u) - torch.log(u))

    def inverse_lambda(self, lambda_: Time) -> Time:
        return _out(lambda_, torch.sigmoid(-_as_tensor(lambda_)))

    def model_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.timestep_scale * t

    def prior_std(self) -> float:
        return 1.0

    def to_config(self) -> dict[str, Any]:
        return {"kind": "flow-matching", "T": self.T, "t_min": self.t_min, "timestep_scale": self.timestep_scale}


def noise_end(schedule: NoiseSchedule) -> float:
    """The largest time an explicit grid may start from: t = 1 (pure noise, alpha = 0) on a flow path, where the
    pipelines' own grids start (diffusers' FlowMatch schedulers, ComfyUI), else ``T``. Samplers run from there in
    float64: lambda = -inf makes every exponential integrator's first step the exact DDIM step from pure noise."""
    return float(getattr(schedule, "t_noise", schedule.T))


def flow_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's shifted time map t -> s t / (1 + (s - 1) t) (Esser et al. 2024, Eq. 23; diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=s)``); FLUX's dynamic shift is this with s = exp(mu) chosen from the
    image size."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation with linear extrapolation at both ends (as DPM-Solver's ``interpolate_fn``)."""
    xp = xp.to(x.device)
    fp = fp.to(x.device)
    idx = torch.searchsorted(xp, x.contiguous()).clamp(1, xp.numel() - 1)
    x0, x1 = xp[idx - 1], xp[idx]
    f0, f1 = fp[idx - 1], fp[idx]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


def is_flow_config(config: dict[str, Any]) -> bool:
    """Whether a diffusers scheduler config describes a flow-matching model."""
    name = str(config.get("_class_name", ""))
    return (name.startswith("FlowMatch") or bool(config.get("use_flow_sigmas"))
            or config.get("prediction_type") == "flow_prediction"
            or ("shift" in config and "beta_schedule" not in config and "trained_betas" not in config))


def schedule_from_config(config: dict[str, Any]) -> NoiseSchedule:
    """A continuous schedule from a diffusers scheduler config (betas, beta_schedule, trained_betas, ...).

    diffusers itself computes ``alphas_cumprod`` from the config, so every beta schedule it knows is supported. A
    flow-matching config (``FlowMatchEulerDiscreteScheduler``'s, or a multistep scheduler's with
    ``use_flow_sigmas``) gives ``FlowMatching``: the path is the same for every shift, which only moves the grid.
    """
    import inspect

    if is_flow_config(config):
        return FlowMatching(timestep_scale=float(config.get("num_train_timesteps", 1000)))

    from diffusers import DDPMScheduler

    accepted = set(inspect.signature(DDPMScheduler.__init__).parameters) - {"self"}
    scheduler = DDPMScheduler.from_config({k: v for k, v in config.items() if k in accepted})
    return DiscreteVP(scheduler.alphas_cumprod.to(torch.float64))
