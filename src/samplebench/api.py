"""The one-call API for the common case, in the spirit of a diffusers pipeline call.

    import samplebench
    images = samplebench.sample("digits", solver="s3", nfe=10, seeds=range(16))   # PIL images
    score = samplebench.fid(images, ref="digits-train")                            # FID with its 95% interval

Both are thin over the library (``sampling.sample``, ``metrics``) and give the numbers and images the command line
gives for the same settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = ["sample", "fid", "kid"]


@lru_cache(maxsize=4)
def _model(name: str, device: str, dtype: str):
    from .models import load_model

    return load_model(name, device=device, dtype=dtype)


def sample(model: str = "digits", *, solver: str = "dpmpp-2m", nfe: int | None = 10, seeds: Iterable[int] = range(16),
           output: str = "pil", progress: bool = False, batch_size: int = 64, device: str = "cpu",
           **options: Any) -> Any:
    """Images of ``model`` with ``solver`` at exactly ``nfe`` network evaluations, one per seed (image i from its own
    generator seeded with ``seeds[i]``), as ``samplebench sample`` draws them for the same options. ``solver="s3"``
    uses the model's shipped S3 schedule. ``options``: every other option of the command, as keywords
    (``plan.RunOptions``): time_grid, schedule, class_label, guidance_scale, prompt, negative_prompt, dtype,
    skip_rho, exit_threshold, cache, cascade, cascade_from, cascade_up, cascade_noise, cascade_model. ``output``:
    "pil" (a list of PIL images), "uint8" ([N, H, W, C] array, as the PNGs hold it) or "tensor" (float [N, C, H, W]
    in [-1, 1]). Loaded models are kept for the next call."""
    from tqdm import tqdm

    from .checks import check_seeds
    from .errors import UsageError, unknown
    from .plan import RunOptions, RunSpec, plan
    from .loop import to_uint8

    if output not in ("pil", "uint8", "tensor"):
        raise UsageError(f"output {output!r} is not valid; valid: pil, uint8, tensor")
    valid = [f for f in RunOptions.__dataclass_fields__ if f != "model"]
    for key in options:
        if key not in valid:
            raise unknown("option", key, valid)
    seeds = [check_seeds(s, 1, "seed") for s in seeds]
    if not seeds:
        raise UsageError("give at least one seed")
    spec = RunSpec(model=model, solver=solver, nfe=nfe, **options)
    cascade = spec.cascade_spec
    low = _model(cascade.low_model, device, spec.dtype) if cascade is not None and cascade.low_model else None
    run = plan(_model(model, device, spec.dtype), spec, low)
    bar = tqdm(total=run.steps * -(-len(seeds) // batch_size), unit="step", disable=not progress,
               desc=f"{run.label} nfe={spec.total_nfe}")
    try:
        result = run.sample(seeds, batch_size=batch_size, on_step=lambda info: bar.update(1))
    finally:
        bar.close()
    if output == "tensor":
        return result.images
    pixels = to_uint8(result.images)
    if output == "uint8":
        return pixels
    from PIL import Image

    return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in pixels]


def _features(images, ref: str, features: str = "digits", mode: str = "clean", device: str = "cpu"):
    """The images' features and the reference, for ``fid_of`` / ``kid_of`` (one extraction serves both)."""
    from .metrics.extractors import get_extractor
    from .metrics.reference import get_reference
    from .metrics.scores import extract

    if isinstance(images, (list, tuple)):
        images = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    extractor = get_extractor(features, mode, device)
    return extract(images, extractor).feats, get_reference(ref, extractor)


def fid(images: Sequence[Any] | np.ndarray, *, ref: str = "digits-train", features: str = "digits",
        mode: str = "clean", device: str = "cpu", resamples: int = 1000):
    """The FID of ``images`` (PIL images, a uint8 [N, H, W, C] array or a float tensor in [-1, 1]) against the
    reference ``ref`` (a built-in name, a folder, an .npz or a cached name), with its 95% bootstrap interval: a
    ``metrics.intervals.Interval`` (``estimate``, ``low``, ``high``, ``n``). The estimate is the one ``samplebench
    eval --folder`` reports for the same images."""
    return fid_of(*_features(images, ref, features, mode, device), resamples)


def kid(images: Sequence[Any] | np.ndarray, *, ref: str = "digits-train", features: str = "digits",
        mode: str = "clean", device: str = "cpu", resamples: int = 1000):
    """The KID of ``images`` against ``ref`` with its 95% bootstrap interval, as ``fid`` (KID is unbiased, so a
    small set can read below zero)."""
    return kid_of(*_features(images, ref, features, mode, device), resamples)


def fid_of(feats: np.ndarray, reference, resamples: int = 1000):
    """``fid`` of extracted features against a loaded reference."""
    from .evaluate import estimate
    from .metrics.intervals import fid_interval

    return fid_interval(feats, reference.mu, reference.sigma, estimate=estimate("fid", feats, reference),
                        resamples=resamples)


def kid_of(feats: np.ndarray, reference, resamples: int = 1000):
    """``kid`` of extracted features against a loaded reference."""
    from .evaluate import estimate
    from .metrics.intervals import kid_interval

    return kid_interval(feats, reference.feats, estimate=estimate("kid", feats, reference), resamples=resamples)
