"""Models: the denoiser protocol, analytic denoisers, diffusers adapters and the embedded models."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UsageError, unknown
from .analytic import AnalyticDenoiser, GaussianMixture, gaussian_ode_solution
from .base import LOADING, Conditioning, DiffusionModel
from .embedded import DEFAULT_MODEL, EMBEDDED, AnalyticModel
from .protocol import CFGDenoiser, CountingDenoiser, Denoiser, NetworkDenoiser, Prediction, differentiable

__all__ = ["load_model", "model_names", "parse_device", "parse_dtype", "DEFAULT_MODEL", "Conditioning",
           "DiffusionModel", "Denoiser", "Prediction", "NetworkDenoiser", "CFGDenoiser", "CountingDenoiser",
           "AnalyticDenoiser", "AnalyticModel", "GaussianMixture", "gaussian_ode_solution", "differentiable"]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise unknown("dtype", name, DTYPES)
    return DTYPES[name]


def parse_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"unknown device {name!r}; valid: cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise UsageError(f"device {name!r} is not available here; valid: cpu"
                         + (f", cuda:0..{torch.cuda.device_count() - 1}" if torch.cuda.is_available() else ""))
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {name!r} is not available here; valid: cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"unsupported device {name!r}; valid: cpu, cuda, cuda:N, mps")
    return device


def model_names() -> list[str]:
    return list(EMBEDDED)


def load_model(name: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
               local_files_only: bool | None = None) -> DiffusionModel:
    """An embedded model by name, or a diffusers pipeline by hub id (``owner/name``) or local directory. Loads
    run one at a time (``base.LOADING``), so threads may call it."""
    with LOADING:
        return _load_model(name, device, dtype, local_files_only)


def _load_model(name: str, device, dtype, local_files_only: bool | None) -> DiffusionModel:
    device = parse_device(device) if isinstance(device, str) else device
    dtype = parse_dtype(dtype) if isinstance(dtype, str) else dtype
    if dtype == torch.float16 and device.type == "cpu":
        raise UsageError("dtype 'float16' is not supported on cpu; valid there: float32, bfloat16")
    if name in EMBEDDED:
        return EMBEDDED[name].load(device, dtype)
    if Path(name).is_dir() or ("/" in name and not Path(name).exists() and not name.startswith((".", "/"))):
        from .loader import is_dit_folder, load_dit_folder, load_pipeline_model

        if is_dit_folder(name):
            return load_dit_folder(name, name=name, device=device, dtype=dtype)
        return load_pipeline_model(name, device=device, dtype=dtype, local_files_only=local_files_only)
    if name.startswith((".", "/", "~")) or Path(name).exists():
        what = "is a file, not a folder" if Path(name).exists() else "does not exist"
        raise UsageError(f"model folder {name!r} {what}; give a local pipeline folder saved with save_pretrained, "
                         f"a folder from 'samplebench train', an embedded model ({', '.join(EMBEDDED)}) or a hub id "
                         "(owner/name)")
    raise unknown("model", name, EMBEDDED, ", a diffusers hub id (owner/name), a local directory saved with "
                  "save_pretrained, or a folder from 'samplebench train digits-dit'")
