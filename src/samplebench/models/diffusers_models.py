"""Adapters for diffusers pipelines loaded with ``DiffusionPipeline.from_pretrained`` (hub id or local directory).

- ``UNet2DModel`` pipelines (DDPMPipeline / DDIMPipeline), eps, v or sample prediction, optional class labels;
- ``DiTTransformer2DModel`` (DiTPipeline): class-conditional, learned sigma (the eps half is used), VAE latents;
- Stable-Diffusion-style ``UNet2DConditionModel`` + ``AutoencoderKL`` + CLIP text encoder, prompts, VAE latents;
- a local ``UNet2DModel`` pipeline directory with ``cascade.json``: a LowDiff cascade model (``lowdiff.py``);
- SDXL, SD3, FLUX.1 and PixArt pipelines (``families.py``).

The base classes live here; ``loader.py`` reads a hub id or folder and picks the class.

The scheduler config of the pipeline gives the noise schedule and the prediction type; diffusers' scheduler
state machine is never used for sampling.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..schedules import FlowMatching
from .base import Conditioning, DiffusionModel
from .protocol import CFGDenoiser, Denoiser, NetworkDenoiser, _inference

__all__ = ["UNet2DPixelModel", "DiTLatentModel", "DiTPixelModel", "LatentUNetModel"]


def _cat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}


@dataclass
class _PipelineModel(DiffusionModel):
    pipe: Any = None
    prediction_type: str = "epsilon"

    def _network(self, x: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _cond(self, cond: Conditioning, batch_size: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _scheduler_kwargs(self, steps: int) -> dict[str, Any]:
        """What the pipeline passes to its scheduler's ``set_timesteps`` besides the step count."""
        return {}

    def pipeline_grid(self, steps: int) -> torch.Tensor:
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is None:
            return super().pipeline_grid(steps)
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(steps, device="cpu", **self._scheduler_kwargs(steps))
        return scheduler_grid(scheduler, self.schedule)

    def network(self) -> tuple[str | None, Any]:
        transformer, unet = getattr(self.pipe, "transformer", None), getattr(self.pipe, "unet", None)
        if transformer is not None and hasattr(transformer, "transformer_blocks"):
            return "dit", transformer
        if unet is not None and type(unet).__name__ == "UNet2DModel":
            return "unet", unet
        return None, None

    def modules(self) -> list[torch.nn.Module]:
        return [v for v in vars(self.pipe).values() if isinstance(v, torch.nn.Module)] if self.pipe is not None else []

    def skip_network(self) -> Any:
        unet = getattr(self.pipe, "unet", None)
        return unet if unet is not None and hasattr(unet, "up_blocks") else None

    def uncertainty_heads(self) -> Any:
        return getattr(self.pipe, "uem", None)

    def denoiser(self, cond: Conditioning, batch_size: int) -> Denoiser:
        self.check_conditioning(cond)
        c, u = self._cond(cond, batch_size)
        if cond.guidance_scale != 1.0:
            return CFGDenoiser(self._network, self.schedule, c, u, cond.guidance_scale, _cat,
                               self.prediction_type, self.dtype)
        return NetworkDenoiser(lambda x, t: self._network(x, t, c), self.schedule, self.prediction_type, self.dtype)


@dataclass
class UNet2DPixelModel(_PipelineModel):
    """A pixel-space ``UNet2DModel`` (e.g. google/ddpm-cifar10-32), unconditional or with class embeddings."""

    def _network(self, x, timestep, cond):
        return self.pipe.unet(x, timestep, class_labels=cond.get("class_labels")).sample

    def _cond(self, cond, batch_size):
        if cond.guidance_scale != 1.0:
            raise UsageError(f"model {self.name!r} has no unconditional input, so --guidance-scale must be 1")
        if self.num_classes is None:
            return {}, {}
        return {"class_labels": cond.class_labels.to(self.device)}, {}


@dataclass
class DiTLatentModel(_PipelineModel):
    """``DiTTransformer2DModel`` in VAE latent space; unconditional rows use the null class (index num_classes)."""

    latent: bool = True

    def _network(self, x, timestep, cond):
        out = self.pipe.transformer(x, timestep=timestep, class_labels=cond["class_labels"]).sample
        c = x.shape[1]
        return out[:, :c] if out.shape[1] == 2 * c else out  # learned sigma: keep the eps half

    def _cond(self, cond, batch_size):
        labels = cond.class_labels.to(self.device)
        return {"class_labels": labels}, {"class_labels": torch.full_like(labels, self.num_classes)}

    def decode(self, x):
        return _vae_decode(self.pipe.vae, x, self.dtype)


@dataclass
class DiTPixelModel(DiTLatentModel):
    """A pixel-space ``DiTTransformer2DModel`` (the embedded digits DiTs); ``pipe.uem`` holds DeeDiff heads or None."""

    latent: bool = False

    def decode(self, x):
        return x


@dataclass
class LatentUNetModel(_PipelineModel):
    """Stable-Diffusion-style text-to-image: CLIP prompt embeddings condition a latent ``UNet2DConditionModel``."""

    latent: bool = True

    def _network(self, x, timestep, cond):
        return self.pipe.unet(x, timestep, encoder_hidden_states=cond["encoder_hidden_states"]).sample

    def _cond(self, cond, batch_size):
        prompt = cond.prompt if cond.prompt is not None else ""
        with torch.no_grad():  # plain tensors: usable in a differentiable call
            c, u = self.pipe.encode_prompt(prompt, self.device, 1, True, negative_prompt=cond.negative_prompt)
        return ({"encoder_hidden_states": c.expand(batch_size, -1, -1)},
                {"encoder_hidden_states": u.expand(batch_size, -1, -1)})

    def decode(self, x):
        return _vae_decode(self.pipe.vae, x, self.dtype)


def _vae_decode(vae, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Latents to images: undo the VAE's scaling (and the shift of SD3's and FLUX's VAEs) and decode. A VAE that
    overflows in float16 (``force_upcast``, SDXL's) is moved to float32 first, as the pipelines do."""
    if vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
        vae.to(torch.float32)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    with _inference():  # differentiable inside ``protocol.differentiable()``
        return vae.decode(x.to(vae.dtype) / vae.config.scaling_factor + shift).sample.float()


@contextlib.contextmanager
def _quiet_diffusers():
    """No loading progress bars, warnings or info logs from diffusers, transformers or huggingface_hub (the CLI owns
    stderr: its errors are one line)."""
    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    saved = [(log, log.get_verbosity(), log.is_progress_bar_enabled()) for log in (dlog, tlog)]
    for log in (dlog, tlog):
        log.set_verbosity_error()
        log.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, verbosity, bars in saved:
            log.set_verbosity(verbosity)
            if bars:
                log.enable_progress_bar()


def _read_data_mean(directory: Path | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The training images' mean a model folder may hold as ``data_mean.npy`` (written by ``samplebench train``)."""
    path = directory / "data_mean.npy" if directory is not None else None
    return torch.from_numpy(np.load(path)).to(dtype) if path is not None and path.is_file() else None


def dynamic_shift(config: dict, image_seq_len: int, max_shift: float = 1.15) -> float:
    """FLUX's (and SD3.5's) resolution-dependent mu, linear in the number of image tokens (diffusers'
    ``calculate_shift``; the FLUX pipeline's default ``max_shift`` is 1.15, SD3's 1.16)."""
    lo, hi = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    b0, b1 = config.get("base_shift", 0.5), config.get("max_shift", max_shift)
    return b0 + (image_seq_len - lo) * (b1 - b0) / (hi - lo)


def flow_grid(config: dict, image_seq_len: int) -> str:
    """The pipeline's default shift as a ``flow-shift:S`` grid: SD3's fixed ``shift``, or FLUX's dynamic shift
    S = exp(mu)."""
    if config.get("use_dynamic_shifting"):
        return f"flow-shift:{math.exp(dynamic_shift(config, image_seq_len)):.6g}"
    return f"flow-shift:{float(config.get('shift', 1.0)):.6g}"


def scheduler_grid(scheduler, schedule) -> torch.Tensor:
    """A diffusers scheduler's times after ``set_timesteps``, in the schedule's t, ending where its last step lands.

    A flow path's t is the scheduler's sigma. On a discrete VP schedule timestep n is t = (n + 1) / N (also
    fractional ones); the end is the last sigma (0: the x0 prediction) or, for schedulers without sigmas (DDIM,
    DDPM), their final alpha (1: the x0 prediction). Repeated times (Heun's, PNDM's) appear once."""
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(schedule, FlowMatching):
        if sigmas is None:
            raise UsageError(f"{type(scheduler).__name__} gives no sigmas, so its flow grid is unknown")
        times = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    else:
        n = scheduler.config.num_train_timesteps
        times = (torch.as_tensor(scheduler.timesteps, dtype=torch.float64).flatten() + 1.0) / n
        if sigmas is not None:
            last = float(torch.as_tensor(sigmas).flatten()[-1])
            end = 0.0 if last == 0 else float(schedule.inverse_lambda(-math.log(last)))
        else:
            final = float(getattr(scheduler, "final_alpha_cumprod", 1.0))
            end = 0.0 if final >= 1 else float(schedule.inverse_lambda(0.5 * math.log(final / (1.0 - final))))
        times = torch.cat([times, torch.tensor([end], dtype=torch.float64)])
    return torch.unique_consecutive(times)
