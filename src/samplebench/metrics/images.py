"""Image sets for evaluation: a folder of image files or an ``.npz`` of arrays, read as uint8 [N, H, W, 3].

Folders are read as clean-fid reads them (the same extensions, recursively, sorted, PIL ``convert("RGB")``), but
checked first: an empty folder, an unreadable file or mixed image sizes is a one-line error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UsageError, describe

__all__ = ["IMAGE_EXTENSIONS", "list_images", "load_folder", "load_npz_images"]

IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")  # clean-fid's, less .npy


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{str(folder)!r} is not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix[1:].lower() in IMAGE_EXTENSIONS)
    if not files:
        raise UsageError(f"folder {str(folder)!r} has no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


def _seed(im) -> int | None:
    """The seed that ``samplebench sample`` wrote into a PNG's ``samplebench`` text chunk, if any."""
    import json

    try:
        seed = json.loads(getattr(im, "text", {}).get("samplebench", "{}")).get("seed")
    except (ValueError, AttributeError):
        return None
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


def load_folder(folder: str | Path, *, with_seeds: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray | None]:
    """uint8 [N, H, W, 3]; with ``with_seeds`` also the seeds from the PNGs' settings (None unless every image has
    one and they are distinct). The labelled grid that ``samplebench sample`` writes beside its images is left out."""
    from PIL import Image, UnidentifiedImageError

    from ..files import GRID_MARKER

    files = list_images(folder)
    arrays, seeds, first = [], [], None
    for f in files:
        try:
            with Image.open(f) as im:
                if GRID_MARKER in getattr(im, "text", {}):
                    continue
                a = np.array(im.convert("RGB"))
                seeds.append(_seed(im))
        except (UnidentifiedImageError, OSError) as e:
            raise UsageError(f"{str(f)!r} is not a readable image ({type(e).__name__})") from None
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise UsageError(f"folder {str(folder)!r} mixes image sizes: {first[1][1]}x{first[1][0]} "
                             f"({first[0].name}) and {a.shape[1]}x{a.shape[0]} ({f.name})")
        arrays.append(a)
    if not with_seeds:
        return np.stack(arrays)
    known = None not in seeds and len(set(seeds)) == len(seeds)
    return np.stack(arrays), np.array(seeds, dtype=np.int64) if known else None


def load_npz_images(path: str | Path) -> np.ndarray:
    """The ``images`` array (else the only array) of an ``.npz``: uint8 [N, H, W, C] or [N, C, H, W], or float
    [N, C, H, W] in [-1, 1] (as ``sample --save-npz`` writes it)."""
    from .scores import as_uint8

    bad = f"{str(path)!r} is not an .npz of images"
    try:
        with np.load(path) as data:
            keys = list(data.keys())
            if "images" in keys:
                a = data["images"]
            elif len(keys) == 1:
                a = data[keys[0]]
            else:
                raise UsageError(f"{str(path)!r} holds {', '.join(keys) or 'no arrays'}; name the image array "
                                 "'images'")
    except UsageError:
        raise
    except Exception as e:  # not a zip, a truncated one, an .npy, pickled objects
        raise UsageError(f"{bad} ({describe(e)})") from None
    channels_first = a.ndim == 4 and a.shape[1] in (1, 3)
    if (a.ndim != 4 or len(a) < 1 or not (channels_first or a.shape[-1] in (1, 3))
            or not (a.dtype == np.uint8 or np.issubdtype(a.dtype, np.floating))):
        raise UsageError(f"{bad}: its array is {a.dtype} {list(a.shape)}; give uint8 [N, H, W, C] or [N, C, H, W], "
                         "or float [N, C, H, W] in [-1, 1], with C = 1 or 3")
    if a.dtype != np.uint8 and not np.isfinite(a).all():
        raise UsageError(f"{bad}: its float images hold NaN or infinity")
    if a.ndim == 4 and a.dtype == np.uint8 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(0, 2, 3, 1)
    if a.dtype != np.uint8:
        import torch

        a = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return as_uint8(a)
