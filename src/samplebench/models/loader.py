"""Loading diffusers models: a hub id or a pipeline folder (``load_pipeline_model``), or a folder written by
``samplebench train`` (``load_dit_folder``). The loader reads the pipeline's classes and picks the adapter: a family
(``families.py``), a LowDiff cascade (``lowdiff.py``) or a base class (``diffusers_models.py``); those modules never
import this one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import UsageError
from ..schedules import is_flow_config, schedule_from_config
from .base import DiffusionModel
from .diffusers_models import (DiTLatentModel, DiTPixelModel, LatentUNetModel, UNet2DPixelModel, _quiet_diffusers,
                               _read_data_mean, flow_grid)
from .families import family_model
from .lowdiff import CascadeUNetModel, read_cascade_config

__all__ = ["load_pipeline_model", "load_dit_folder", "is_dit_folder"]


def is_dit_folder(path: str | Path) -> bool:
    """A folder written by ``samplebench train digits-dit`` or ``digits-flow``: ``transformer/`` and ``scheduler/``
    (and ``uem/``, DeeDiff's heads, for digits-dit), without a pipeline's ``model_index.json``."""
    path = Path(path)
    return all((path / sub).is_dir() for sub in ("transformer", "scheduler")) and not (path / "model_index.json"
                                                                                        ).exists()


def load_dit_folder(folder: str | Path, *, name: str, device: torch.device, dtype: torch.dtype) -> DiffusionModel:
    """A pixel-space DiT from ``transformer/`` + ``scheduler/`` (+ ``uem/``, its DeeDiff uncertainty heads). The
    scheduler config gives the path: a DDPM schedule with eps prediction, or a flow-matching one (velocity, on the
    scheduler's shifted grid by default, as its pipeline would sample)."""
    from types import SimpleNamespace

    from diffusers import DDPMScheduler, DiTTransformer2DModel

    from .deediff import UncertaintyHeads

    folder = Path(folder)
    try:
        with _quiet_diffusers():
            transformer = DiTTransformer2DModel.from_pretrained(folder / "transformer", torch_dtype=dtype).to(device)
            heads = (UncertaintyHeads.from_pretrained(folder / "uem").to(device).eval()
                     if (folder / "uem").is_dir() else None)
            config = dict(DDPMScheduler.load_config(folder / "scheduler"))  # any class reads the file
    except Exception as e:
        raise UsageError(f"could not load the DiT in {str(folder)!r}: {str(e).splitlines()[0]}") from None
    cfg = transformer.config
    flow = is_flow_config(config)
    return DiTPixelModel(name=name, schedule=schedule_from_config(config),
                         sample_shape=(cfg.in_channels, cfg.sample_size, cfg.sample_size), device=device, dtype=dtype,
                         num_classes=cfg.num_embeds_ada_norm,
                         data_mean=_read_data_mean(folder, dtype), directory=folder,
                         pipe=SimpleNamespace(transformer=transformer.eval(), uem=heads),
                         default_grid=flow_grid(config, (cfg.sample_size // cfg.patch_size) ** 2) if flow else None,
                         prediction_type="flow" if flow else config.get("prediction_type", "epsilon"))


HUB_TIMEOUT_S = 5.0


def _in_hub_cache(name: str) -> bool:
    """Whether the hub cache holds ``name``'s model_index.json (then no network is needed to start)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "model_index.json"), str)
    except Exception:  # an id huggingface_hub refuses: the load below says why
        return False


def _check_hub_reachable(name: str) -> None:
    """One request with a short timeout, so that an offline machine fails at once instead of after retries."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/api/models/{name}", method="HEAD"),
                               timeout=HUB_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # the hub answered (an unknown or gated id is reported by the load itself)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise UsageError(f"cannot reach the Hugging Face hub ({endpoint}) to fetch {name!r}: {reason}; give an "
                         "embedded model (see 'samplebench models'), a local pipeline folder, or a hub id already "
                         "in the cache") from None


def load_pipeline_model(name: str, *, device: torch.device, dtype: torch.dtype,
                        local_files_only: bool | None = None) -> DiffusionModel:
    """Load a diffusers pipeline by hub id or local directory and wrap it. ``local_files_only`` defaults to
    the ``HF_HUB_OFFLINE`` environment variable."""
    from diffusers import DiffusionPipeline

    if local_files_only is None:
        local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not Path(name).is_dir() and not _in_hub_cache(name):
        if local_files_only:
            raise UsageError(f"model {name!r} is not in the Hugging Face hub cache, and HF_HUB_OFFLINE is set, so "
                             "nothing is downloaded; give an embedded model (see 'samplebench models'), a local "
                             "pipeline folder, or a hub id already in the cache")
        _check_hub_reachable(name)
    try:
        with _quiet_diffusers():
            index = DiffusionPipeline.load_config(name, local_files_only=local_files_only)
    except Exception as e:  # diffusers raises EnvironmentError / OSError / ValueError variants
        raise UsageError(f"{name!r} is not a diffusers pipeline (no readable model_index.json: "
                         f"{str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "give an embedded model name (see 'samplebench models'), a hub id or a local directory "
                         "saved with save_pretrained") from None
    extra = {"safety_checker": None, "requires_safety_checker": False} if "safety_checker" in index else {}
    try:
        with _quiet_diffusers():
            pipe = DiffusionPipeline.from_pretrained(name, torch_dtype=dtype, local_files_only=local_files_only,
                                                     **extra)
    except Exception as e:
        raise UsageError(f"could not load diffusers pipeline {name!r}: {str(e).splitlines()[0]}") from None
    pipe.to(device)
    config = dict(pipe.scheduler.config)
    schedule = schedule_from_config(config)
    prediction_type = "flow" if is_flow_config(config) else config.get("prediction_type", "epsilon")
    directory = Path(name) if Path(name).is_dir() else None
    common = dict(name=name, schedule=schedule, device=device, dtype=dtype, pipe=pipe, prediction_type=prediction_type,
                  data_mean=_read_data_mean(directory, dtype), directory=directory)
    family = family_model(pipe, common)
    if family is not None:
        return family
    transformer, unet = getattr(pipe, "transformer", None), getattr(pipe, "unet", None)
    if transformer is not None and type(transformer).__name__ == "DiTTransformer2DModel":
        cfg = transformer.config
        return DiTLatentModel(sample_shape=(cfg.in_channels, cfg.sample_size, cfg.sample_size),
                              num_classes=cfg.num_embeds_ada_norm, **common)
    if unet is not None and type(unet).__name__ == "UNet2DConditionModel" and hasattr(pipe, "text_encoder"):
        cfg = unet.config
        return LatentUNetModel(sample_shape=(cfg.in_channels, cfg.sample_size, cfg.sample_size),
                               takes_prompt=True, **common)
    cascade = read_cascade_config(directory) if directory is not None else None
    if unet is not None and type(unet).__name__ == "UNet2DModel" and cascade is not None:
        top = max(cascade["resolutions"])
        return CascadeUNetModel(sample_shape=(unet.config.out_channels, top, top),
                                resolutions=tuple(cascade["resolutions"]), condition_noise=cascade["condition_noise"],
                                upsample_mode=cascade["upsample"], t_start=cascade.get("t_start"), **common)
    if unet is not None and type(unet).__name__ == "UNet2DModel":
        cfg = unet.config
        size = cfg.sample_size if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
        h, w = (size, size) if isinstance(size, int) else size
        return UNet2DPixelModel(sample_shape=(cfg.in_channels, h, w), num_classes=cfg.num_class_embeds, **common)
    raise UsageError(f"pipeline {name!r} ({index.get('_class_name')}) is not supported; supported: UNet2DModel, "
                     "DiTTransformer2DModel, Stable-Diffusion-style UNet2DConditionModel pipelines, SDXL, SD3, "
                     "FLUX.1 and PixArt")
