"""Models that ship with samplebench and load by name, without a download."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..names import DEFAULT_MODEL  # noqa: F401  (re-exported)
from ..schedules import DiscreteVP
from .analytic import AnalyticDenoiser, GaussianMixture
from .base import Conditioning, DiffusionModel
from .protocol import Denoiser

__all__ = ["AnalyticModel", "EMBEDDED", "ddpm_linear_schedule"]


def ddpm_linear_schedule(num_train_timesteps: int = 1000, beta_start: float = 1e-4,
                         beta_end: float = 0.02) -> DiscreteVP:
    """The DDPM schedule (Ho et al. 2020, Sec. 4): linear betas over 1000 steps."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return DiscreteVP(torch.cumprod(1.0 - betas, 0))


@dataclass
class AnalyticModel(DiffusionModel):
    """Gaussian-mixture data with its exact denoiser (see ``analytic.py``)."""

    mixture: GaussianMixture | None = None

    def denoiser(self, cond: Conditioning, batch_size: int) -> Denoiser:
        self.check_conditioning(cond)
        return AnalyticDenoiser(self.mixture, self.schedule)


def _gaussian(device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    shape = (1, 16, 16)
    mixture = GaussianMixture.gaussian(0.0, 0.5, shape)
    return AnalyticModel("gaussian", ddpm_linear_schedule(), shape, device, dtype, mixture=mixture,
                         data_mean=torch.zeros(shape, dtype=dtype))


WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def _digits_gmm(device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    mixture = GaussianMixture.load(WEIGHTS / "digits-gmm")
    mean = (mixture.weights @ mixture.means).reshape(mixture.shape).to(dtype)
    return AnalyticModel("digits-gmm", ddpm_linear_schedule(), mixture.shape, device, dtype, mixture=mixture,
                         data_mean=mean, directory=WEIGHTS / "digits-gmm")


def _shipped_pipeline(name: str, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """A diffusers pipeline folder under weights/, loaded like any local pipeline and named by its folder."""
    from .loader import load_pipeline_model

    model = load_pipeline_model(str(WEIGHTS / name), device=device, dtype=dtype, local_files_only=True)
    model.name = name
    return model


def _shipped_dit(name: str, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """A folder under weights/ written by ``samplebench train digits-dit`` or ``digits-flow``."""
    from .loader import load_dit_folder

    return load_dit_folder(WEIGHTS / name, name=name, device=device, dtype=dtype)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    load: Callable[[torch.device, torch.dtype], DiffusionModel]


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel("digits", "UNet2DModel (1.1 M parameters, eps prediction, DDPM linear schedule) trained on the "
                                "16x16 digits (samplebench train digits-unet)", partial(_shipped_pipeline, "digits")),
        EmbeddedModel("gaussian", "analytic: N(0, 0.5^2 I) data on 1x16x16 with its exact denoiser, DDPM linear schedule",
                      _gaussian),
        EmbeddedModel("digits-gmm", "analytic: 10-component full-covariance Gaussian mixture fitted to the 16x16 "
                                    "digits (samplebench train digits-gmm), exact denoiser, DDPM linear schedule",
                      _digits_gmm),
        EmbeddedModel("digits-dit", "class-conditional DiTTransformer2DModel (0.78 M parameters, 8 blocks, patch 2) "
                                    "with DeeDiff uncertainty heads for early exit, trained on the 16x16 digits "
                                    "(samplebench train digits-dit)", partial(_shipped_dit, "digits-dit")),
        EmbeddedModel("digits-flow", "class-conditional flow-matching DiTTransformer2DModel (0.78 M parameters, the "
                                     "digits-dit transformer without uncertainty heads): velocity prediction on "
                                     "x_t = (1 - t) x_0 + t eps, trained on the 16x16 digits "
                                     "(samplebench train digits-flow)", partial(_shipped_dit, "digits-flow")),
        EmbeddedModel("digits-lowdiff", "LowDiff cascade UNet2DModel (1.1 M parameters) for 8x8 -> 16x16 digits: "
                                        "unconditional at 8x8, conditioned on the upsampled 8x8 sample at 16x16 "
                                        "(samplebench train digits-lowdiff; sample with --cascade 8:6,16:4)",
                      partial(_shipped_pipeline, "digits-lowdiff")),
    ]
}



