"""LowDiff's unified cascade model (Xu et al. 2025, arXiv 2509.15342; methods.md Sec. 4.2).

One ``UNet2DModel`` denoises every resolution of the cascade. Its input is ``[x_t, c]``: the noisy sample and the
condition c = alpha_s Up(x_low) + sigma_s eps_c, the lower-resolution result upsampled to x's size and noised to
the augmentation time s (noise-conditioning augmentation, Ho et al. 2022, Sec. 4.1). The condition level enters
through the UNet's class embedding (``class_embed_type="timestep"``): the network time of s, or ``NO_CONDITION``
for the first stage, whose condition is zeros. A pipeline directory is a cascade model when it holds
``cascade.json`` (its resolutions, default condition noise, upsampling operator and optionally t*).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UsageError, unknown
from .diffusers_models import UNet2DPixelModel

__all__ = ["CascadeUNetModel", "NO_CONDITION", "UPSAMPLE_MODES", "upsample", "read_cascade_config"]

NO_CONDITION = 2000.0  # the condition level of an unconditional stage: outside the network times 0..999
UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic")


def upsample(x: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Up(x): ``x`` [B, C, h, w] resized to ``size`` x ``size`` (``align_corners=False``, as the digits data)."""
    if mode not in UPSAMPLE_MODES:
        raise unknown("upsampling", mode, UPSAMPLE_MODES)
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    kw = {} if mode == "nearest" else {"align_corners": False}
    return torch.nn.functional.interpolate(x, size=(size, size), mode=mode, **kw)


def read_cascade_config(directory: Path) -> dict | None:
    path = Path(directory) / "cascade.json"
    return json.loads(path.read_text()) if path.is_file() else None


@dataclass
class CascadeUNetModel(UNet2DPixelModel):
    """A unified cascade ``UNet2DModel`` with ``2 C`` input channels. ``Conditioning.low_res`` is the (already
    upsampled and noised) condition and ``Conditioning.low_res_level`` its network time; without it the stage is
    unconditional. ``sample_shape`` is the top resolution; the network accepts any of ``resolutions``."""

    resolutions: tuple[int, ...] = (8, 16)
    condition_noise: float = 0.1
    upsample_mode: str = "bilinear"
    t_start: float | None = None  # the later stages' default t* (None: T)
    takes_low_res: bool = field(default=True, init=False)

    @property
    def example_cascade(self) -> str:
        return ",".join(f"{r}:{6 if k == 0 else 4}" for k, r in enumerate(self.resolutions))

    def _network(self, x, timestep, cond):
        c = cond.get("low_res")
        level = cond.get("level")
        if c is None:
            if x.shape[-1] == max(self.resolutions):
                raise UsageError(f"model {self.name!r} is a cascade model: its {x.shape[-1]}x{x.shape[-1]} stage "
                                 f"needs the lower-resolution result; give --cascade, e.g. {self.example_cascade}")
            c = torch.zeros_like(x)
            level = torch.full((x.shape[0],), NO_CONDITION, device=x.device)
        return self.pipe.unet(torch.cat([x, c.to(x.dtype)], 1), timestep, class_labels=level).sample

    def _cond(self, cond, batch_size):
        c, u = super()._cond(cond, batch_size)  # the guidance check
        if cond.low_res is None:
            return c, u
        level = torch.full((cond.low_res.shape[0],), float(cond.low_res_level), device=self.device)
        return {**c, "low_res": cond.low_res.to(self.device), "level": level}, u
