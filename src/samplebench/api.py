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
           output: str = "pil", progress: bool = False, time_grid: str | None = None, schedule: str | None = None,
           class_label: int | None = None, prompt: str | None = None, guidance_scale: float = 1.0,
           batch_size: int = 64, device: str = "cpu", dtype: str = "float32") -> Any:
    """Images of ``model`` with ``solver`` at exactly ``nfe`` network evaluations, one per seed (image i from its own
    generator seeded with ``seeds[i]``, as ``samplebench sample`` draws them). ``solver="s3"`` uses the model's
    shipped S3 schedule, ``schedule`` a USF schedule file. ``output``: "pil" (a list of PIL images), "uint8"
    ([N, H, W, C] array, as the PNGs hold it) or "tensor" (float [N, C, H, W] in [-1, 1]). Loaded models are kept
    for the next call."""
    from tqdm import tqdm

    from .checks import check_count, check_seeds
    from .errors import UsageError
    from .sampling import check_solver_nfe, load_schedule, resolve_solver, sample as draw, skips_applied, to_uint8

    if output not in ("pil", "uint8", "tensor"):
        raise UsageError(f"output {output!r} is not valid; valid: pil, uint8, tensor")
    seeds = [check_seeds(s, 1, "seed") for s in seeds]
    if not seeds:
        raise UsageError("give at least one seed")
    usf = load_schedule(model, solver, nfe, schedule)
    if usf is None:
        check_count("nfe", nfe, 1)
        check_solver_nfe(model, solver, nfe)
    m = _model(model, device, dtype)
    spec, grid = resolve_solver(m, solver, nfe, time_grid, usf)
    steps = len(grid) - 1
    bar = tqdm(total=steps * -(-len(seeds) // batch_size), unit="step", disable=not progress,
               desc=f"{solver} nfe={usf.nfe if usf is not None else nfe}")
    try:
        with skips_applied(m, None, usf):
            result = draw(m, spec, grid, seeds, class_label=class_label, prompt=prompt, guidance_scale=guidance_scale,
                          batch_size=batch_size, on_step=lambda info: bar.update(1))
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
