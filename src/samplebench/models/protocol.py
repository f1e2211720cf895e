"""The model protocol: every network becomes a denoiser ``D(x, t) -> Prediction(denoised, eps)``.

A denoiser carries its noise schedule; samplers only ever call it and read ``denoiser.schedule``. Conditioning
(class labels, prompts) is bound when the denoiser is built, so samplers never see it. Guidance, early exit,
caching and cascades are wrappers around this protocol.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from ..errors import unknown_text
from ..schedules import NoiseSchedule

__all__ = [
    "Prediction",
    "Denoiser",
    "NetworkDenoiser",
    "CFGDenoiser",
    "CountingDenoiser",
    "PREDICTION_TYPES",
    "as_time",
    "differentiable",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow")


class Prediction(NamedTuple):
    """The data prediction x0_pred = E[x_0 | x_t] and the noise prediction eps = (x_t - alpha_t x0_pred) / sigma_t."""

    denoised: torch.Tensor
    eps: torch.Tensor


@runtime_checkable
class Denoiser(Protocol):
    schedule: NoiseSchedule

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> Prediction: ...


_DIFFERENTIABLE = contextvars.ContextVar("samplebench_differentiable", default=False)


@contextlib.contextmanager
def differentiable() -> Iterator[None]:
    """Network calls inside keep their autograd graph, for gradients with respect to the input and the time
    (``learned.ld3``); outside, they run in inference mode."""
    token = _DIFFERENTIABLE.set(True)
    try:
        yield
    finally:
        _DIFFERENTIABLE.reset(token)


def _inference() -> contextlib.AbstractContextManager:
    return torch.inference_mode(not _DIFFERENTIABLE.get())


def as_time(t: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a float64 vector of one time per row of ``x`` (a scalar is broadcast)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t


def _rows(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-row coefficient shaped to broadcast against ``x``."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


def convert_output(output: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                   prediction_type: str) -> Prediction:
    """Turn a network output (eps, v, x0, or the flow velocity eps - x0) into both predictions (Salimans & Ho,
    2022, Sec. 4 for v; for ``flow`` the path must be the linear one, alpha_t + sigma_t = 1)."""
    a, s = _rows(alpha, x), _rows(sigma, x)
    if prediction_type == "epsilon":
        eps = output
        return Prediction((x - s * eps) / a, eps)
    if prediction_type == "v_prediction":
        return Prediction(a * x - s * output, s * x + a * output)
    if prediction_type == "sample":
        return Prediction(output, (x - a * output) / s)
    if prediction_type == "flow":  # the velocity dx_t/dt = eps - x_0 of the path x_t = (1 - t) x_0 + t eps
        return Prediction((x - s * output) / (a + s), (x + a * output) / (a + s))
    raise ValueError(unknown_text("prediction type", prediction_type, PREDICTION_TYPES))


def _network_inputs(schedule: NoiseSchedule, dtype: torch.dtype | None, x: torch.Tensor, t: float | torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row times, the network's float32 timesteps, and x in the network's dtype."""
    t = as_time(t, x)
    timestep = schedule.model_time(t).to(device=x.device, dtype=torch.float32)
    return t, timestep, (x if dtype is None else x.to(dtype))


class NetworkDenoiser:
    """A network ``forward(x, timestep) -> output`` with its schedule and prediction type.

    The solver state stays in its own dtype (float32 or float64); the network runs in ``dtype``.
    """

    nfe_per_call = 1

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: NoiseSchedule,
                 prediction_type: str = "epsilon", dtype: torch.dtype | None = None):
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(unknown_text("prediction type", prediction_type, PREDICTION_TYPES))
        self.forward = forward
        self.schedule = schedule
        self.prediction_type = prediction_type
        self.dtype = dtype

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> Prediction:
        t, timestep, x_in = _network_inputs(self.schedule, self.dtype, x, t)
        with _inference():
            output = self.forward(x_in, timestep).to(x.dtype)
        return convert_output(output, x, self.schedule.alpha(t), self.schedule.sigma(t), self.prediction_type)


class CFGDenoiser:
    """Classifier-free guidance (Ho & Salimans, 2022, Eq. 6): eps = eps_u + w (eps_c - eps_u).

    ``forward(x, timestep, cond)`` takes a conditioning batch. With ``batched=True`` the conditional and
    unconditional halves go through the network as one call of twice the batch and count as 1 NFE; with
    ``batched=False`` they are two calls and count as 2 NFE.
    """

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor],
                 schedule: NoiseSchedule, cond: object, uncond: object, guidance_scale: float,
                 concat: Callable[[object, object], object], prediction_type: str = "epsilon",
                 dtype: torch.dtype | None = None, batched: bool = True):
        self.forward, self.schedule, self.cond, self.uncond = forward, schedule, cond, uncond
        self.guidance_scale = float(guidance_scale)
        self.concat, self.prediction_type, self.dtype, self.batched = concat, prediction_type, dtype, batched
        self.nfe_per_call = 1 if batched else 2

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> Prediction:
        t, timestep, x_in = _network_inputs(self.schedule, self.dtype, x, t)
        with _inference():
            if self.batched:
                out = self.forward(torch.cat([x_in, x_in]), torch.cat([timestep, timestep]),
                                   self.concat(self.cond, self.uncond))
                out_c, out_u = out.chunk(2)
            else:
                out_c = self.forward(x_in, timestep, self.cond)
                out_u = self.forward(x_in, timestep, self.uncond)
        output = (out_u + self.guidance_scale * (out_c - out_u)).to(x.dtype)
        return convert_output(output, x, self.schedule.alpha(t), self.schedule.sigma(t), self.prediction_type)


class CountingDenoiser:
    """Counts network evaluations through any denoiser: ``nfe`` per sample (``nfe_per_call`` per call) and
    ``evaluations`` over all rows (a call on a batch of B costs B x ``nfe_per_call``)."""

    def __init__(self, inner: Denoiser):
        self.inner = inner
        self.schedule = inner.schedule
        self.calls = 0
        self.nfe = 0
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, t: float | torch.Tensor) -> Prediction:
        per_call = getattr(self.inner, "nfe_per_call", 1)
        self.calls += 1
        self.nfe += per_call
        self.evaluations += per_call * x.shape[0]
        return self.inner(x, t)
