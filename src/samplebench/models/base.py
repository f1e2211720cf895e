"""A loaded model: what ``--model`` names. It builds denoisers for one conditioning and decodes samples."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import UsageError
from ..schedules import NoiseSchedule
from .protocol import Denoiser

__all__ = ["DiffusionModel", "Conditioning", "LOADING"]

# Held while weights load: diffusers' ``from_pretrained`` builds modules inside accelerate's ``init_empty_weights``,
# which patches ``nn.Module`` for the whole process, so two threads loading at once can leave it patched (every later
# module on the meta device).
LOADING = threading.RLock()


@dataclass(frozen=True)
class Conditioning:
    """Per-batch conditioning: one class label per row, one prompt for the whole batch, a guidance scale; for a
    cascade model's later stages, the upsampled, noised lower-resolution sample (one row per sample) and the
    network time of its noise level."""

    class_labels: torch.Tensor | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    guidance_scale: float = 1.0
    low_res: torch.Tensor | None = None
    low_res_level: float | None = None


@dataclass
class DiffusionModel:
    """Base class. ``sample_shape`` is the shape the sampler works in (latents for latent models)."""

    name: str
    schedule: NoiseSchedule
    sample_shape: tuple[int, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    num_classes: int | None = None
    takes_prompt: bool = False
    takes_low_res: bool = False  # a cascade model (``lowdiff.py``): conditioned on a lower-resolution sample
    # The mean training image in sample space (USF's analytical first step "mean"), when known.
    data_mean: torch.Tensor | None = None
    # Where the model's files live (embedded folder or local pipeline directory): shipped S3 schedules are in
    # its ``s3/`` folder.
    directory: Path | None = None
    # The time grid this model is meant to be sampled on, overriding the solvers' own defaults (a flow pipeline's
    # shift, e.g. ``flow-shift:3`` for SD3); None keeps each solver's default.
    default_grid: str | None = None
    # Whether samples live in a latent space decoded by a VAE (DM-NonUniform weighs errors by sigma^2 / alpha there,
    # by sigma / alpha in pixel space)
    latent: bool = False
    # A cascade model's (``lowdiff.py``) trained resolutions, condition noise time, upsampling and the later stages'
    # default start time t*; None (bilinear) for every other model.
    resolutions: tuple[int, ...] | None = None
    condition_noise: float | None = None
    upsample_mode: str = "bilinear"
    t_start: float | None = None

    def denoiser(self, cond: Conditioning, batch_size: int) -> Denoiser:
        raise NotImplementedError

    def network(self) -> tuple[str | None, Any]:
        """The block-structured network that compute skipping and FLOP accounting work on: ("unet", a
        ``UNet2DModel``), ("dit", a transformer with ``transformer_blocks``), or (None, None)."""
        return None, None

    def modules(self) -> list[torch.nn.Module]:
        """Every network the model runs (denoiser, VAE, text encoders, heads); none for an analytic model."""
        return []

    def skip_network(self) -> Any:
        """The UNet whose skip connections Skip-Tuning scales (one with ``up_blocks``), or None."""
        return None

    def uncertainty_heads(self) -> Any:
        """DeeDiff's uncertainty heads (``deediff.py``) for early exit, or None."""
        return None

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Samples in image space, values nominally in [-1, 1], shape [B, C, H, W]."""
        return x

    def pipeline_grid(self, steps: int) -> torch.Tensor:
        """The times at which the model's own diffusers pipeline would evaluate it for ``num_inference_steps =
        steps`` (``--time-grid pipeline``), ending in 0 where its scheduler's last step lands on x0."""
        raise UsageError(f"model {self.name!r} has no diffusers pipeline scheduler, so --time-grid pipeline does not "
                         "apply; give logsnr, time-uniform, time-quadratic, karras or a list of times")

    def class_labels(self, seeds: Sequence[int], class_label: int | None = None) -> torch.Tensor | None:
        """Class labels of samples ``seeds``: ``class_label`` for all, else (seed mod num_classes) each for a
        class-conditional model; None for an unconditional one without ``class_label``."""
        if self.num_classes is None:
            return None if class_label is None else torch.full((len(seeds),), class_label)
        if class_label is not None:
            return torch.full((len(seeds),), class_label, dtype=torch.long)
        return torch.tensor([s % self.num_classes for s in seeds], dtype=torch.long)

    def check_conditioning(self, cond: Conditioning) -> None:
        if cond.class_labels is not None and self.num_classes is None:
            raise UsageError(f"model {self.name!r} is not class-conditional; drop --class-label")
        if cond.class_labels is not None:
            bad = cond.class_labels[(cond.class_labels < 0) | (cond.class_labels >= self.num_classes)]
            if bad.numel():
                raise UsageError(f"--class-label {int(bad[0])} is not a class of model {self.name!r}; valid: "
                                 f"0..{self.num_classes - 1}")
        if cond.prompt is not None and not self.takes_prompt:
            raise UsageError(f"model {self.name!r} takes no prompt; drop --prompt")
        if cond.low_res is not None and not self.takes_low_res:
            raise UsageError(f"model {self.name!r} is not a cascade model, so it takes no low-resolution condition")
        if cond.guidance_scale != 1.0 and self.num_classes is None and not self.takes_prompt:
            raise UsageError(f"model {self.name!r} is unconditional, so --guidance-scale must be 1")

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "schedule": self.schedule.to_config(), "sample_shape": list(self.sample_shape),
                "num_classes": self.num_classes, "takes_prompt": self.takes_prompt}
