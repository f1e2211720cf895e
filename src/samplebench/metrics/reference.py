"""Reference statistics: named, cached, and stored in clean-fid's custom-statistics format.

A reference is keyed by (name, extractor, mode). Its files, in ``<cache>/refs``, are clean-fid's:
``{name}_{mode}[_{extractor}]_custom_na.npz`` (``mu``, ``sigma``) and ``..._kid.npz`` (``feats``), the extractor
suffix left out for Inception as clean-fid leaves it out for ``inception_v3``; so a copy in clean-fid's ``stats``
folder works with ``compute_fid(..., dataset_name=name, dataset_split="custom")``. ``..._info.json`` adds the
sample count, the source and a SHA-256 of the statistics, which every result records.

Sources (``get_reference(spec, ...)``):
- ``digits-train``, ``digits-test``: the built-in digits splits at 16x16;
- ``digits-gmm``, ``gaussian``: 10,000 exact samples of the analytic model (seeds 10^9 + i, apart from sampling's);
- a folder of images, an ``.npz`` of image arrays (cached under ``<stem>-<content hash>``);
- an ``.npz`` of statistics (``mu``, ``sigma``; a ``_kid.npz`` beside it supplies features for KID);
- the name of a reference made before (``samplebench refs make``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..errors import UsageError, describe
from ..files import atomic_savez, atomic_write
from .extractors import Extractor
from .images import load_folder, load_npz_images
from .scores import as_uint8, extract, statistics

__all__ = ["Reference", "reference_stem", "BUILTIN_REFERENCES", "EXACT_SAMPLES", "EXACT_SEED", "get_reference", "reference_images",
           "refs_dir", "list_references"]

BUILTIN_REFERENCES = ("digits-train", "digits-test", "digits-gmm", "gaussian")
EXACT_SAMPLES = 10_000
EXACT_SEED = 10**9


def refs_dir() -> Path:
    return cache_dir() / "refs"


@dataclass
class Reference:
    name: str
    extractor: str
    mode: str
    mu: np.ndarray
    sigma: np.ndarray
    feats: np.ndarray | None
    count: int
    source: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.mu, np.float64).tobytes()
                              + np.ascontiguousarray(self.sigma, np.float64).tobytes()).hexdigest()

    @property
    def stem(self) -> str:
        return reference_stem(self.name, self.extractor, self.mode)

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the clean-fid files and the info file; each appears whole (temporary file, then rename)."""
        folder = Path(folder or refs_dir())
        folder.mkdir(parents=True, exist_ok=True)
        atomic_savez(folder / f"{self.stem}.npz", compressed=True, mu=self.mu, sigma=self.sigma)
        if self.feats is not None:
            atomic_savez(folder / f"{self.stem}_kid.npz", compressed=True, feats=self.feats)
        info = {"name": self.name, "extractor": self.extractor, "mode": self.mode, "count": self.count,
                "source": self.source, "sha256": self.sha256, "dim": int(self.mu.shape[0])}
        atomic_write(folder / f"{self.stem}_info.json", json.dumps(info, indent=2))
        return folder / f"{self.stem}.npz"

    def describe(self) -> dict[str, object]:
        return {"ref": self.name, "ref_sha256": self.sha256, "ref_count": self.count, "ref_source": self.source}


def reference_stem(name: str, extractor: str, mode: str) -> str:
    """clean-fid's custom-statistics file stem (no extractor suffix for Inception, as for its ``inception_v3``)."""
    modifier = "" if extractor == "inception" else f"_{extractor}"
    return f"{name}_{mode}{modifier}_custom_na".lower()


def reference_images(spec: str, resolution: int = 16) -> tuple[str, np.ndarray, str]:
    """(name, uint8 [N, H, W, 3] images, description) for a built-in name, a folder or an image ``.npz``."""
    if spec in ("digits-train", "digits-test"):
        from ..data import load_digits

        images, _ = load_digits(spec.split("-")[1], resolution)
        name = spec if resolution == 16 else f"{spec}-{resolution}"
        return name, as_uint8(images), f"scikit-learn digits, {spec.split('-')[1]} split, {resolution}x{resolution}"
    if spec in ("digits-gmm", "gaussian"):
        from ..models import load_model
        from ..noise import SampleGenerators

        model = load_model(spec)
        seeds = range(EXACT_SEED, EXACT_SEED + EXACT_SAMPLES)
        x = model.mixture.sample(SampleGenerators(seeds)).reshape(-1, *model.sample_shape)
        return spec, as_uint8(x), f"{EXACT_SAMPLES} exact samples of {spec} (seeds {EXACT_SEED}+i)"
    path = Path(spec)
    images = load_folder(path) if path.is_dir() else load_npz_images(path)
    digest = hashlib.sha256(images.tobytes() + str(images.shape).encode()).hexdigest()[:10]
    return f"{path.stem or path.name}-{digest}", images, f"{path.resolve()} ({len(images)} images)"


def _check_dim(ref: Reference, extractor: Extractor, origin: str) -> Reference:
    if ref.mu.shape != (extractor.dim,) or ref.sigma.shape != (extractor.dim, extractor.dim):
        raise UsageError(f"reference statistics {origin} have dimension {ref.mu.shape[0]}, but the "
                         f"{extractor.name} extractor gives {extractor.dim}")
    return ref


def _load(stem_path: Path, name: str, extractor: Extractor, origin: str) -> Reference:
    try:
        with np.load(stem_path) as stats:
            mu, sigma = stats["mu"], stats["sigma"]  # as saved: the same numbers as the freshly computed ones
        if (mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not np.issubdtype(mu.dtype, np.floating)
                or not (np.isfinite(mu).all() and np.isfinite(sigma).all())):
            raise ValueError(f"mu {list(mu.shape)} and sigma {list(sigma.shape)} are not finite statistics")
    except Exception as e:
        raise UsageError(f"{str(stem_path)!r} is not a statistics file with 'mu' and 'sigma' "
                         f"({describe(e)})") from None
    kid_file = stem_path.with_name(stem_path.stem + "_kid.npz")
    info_file = stem_path.with_name(stem_path.stem + "_info.json")
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    feats = np.load(kid_file)["feats"] if kid_file.exists() else None
    ref = Reference(info.get("name", name), extractor.name, extractor.mode, mu, sigma, feats,
                    int(info.get("count", len(feats) if feats is not None else 0)), info.get("source", str(stem_path)))
    return _check_dim(ref, extractor, origin)


def get_reference(spec: str, extractor: Extractor, *, name: str | None = None, recompute: bool = False,
                  resolution: int = 16, batch_size: int = 256) -> Reference:
    """The reference statistics ``spec`` names, in ``extractor``'s feature space; computed once, then cached
    (under ``name`` when given)."""
    path = Path(spec)
    if spec.endswith(".npz") and path.is_file():
        try:
            with np.load(path) as z:
                is_stats = "mu" in z.files and "sigma" in z.files
        except Exception as e:  # not a zip, truncated, an .npy
            raise UsageError(f"{spec!r} is not a readable .npz of images or of statistics (mu, sigma) "
                             f"({type(e).__name__})") from None
        if is_stats:
            return _load(path, path.stem, extractor, repr(spec))
    builtin = spec in BUILTIN_REFERENCES
    if not builtin and not path.exists():
        cached = refs_dir() / f"{reference_stem(spec, extractor.name, extractor.mode)}.npz"
        if cached.exists():
            return _load(cached, spec, extractor, repr(spec))
        raise UsageError(f"unknown reference {spec!r}: not a built-in ({', '.join(BUILTIN_REFERENCES)}), a folder, "
                         f"an .npz, or a reference made with 'samplebench refs make' for {extractor.name}/"
                         f"{extractor.mode}")
    derived, images, source = reference_images(spec, resolution)
    name = name or derived
    cached = refs_dir() / f"{reference_stem(name, extractor.name, extractor.mode)}.npz"
    if cached.exists() and not recompute:
        return _load(cached, name, extractor, repr(spec))
    feats = extract(images, extractor, batch_size=batch_size).feats
    mu, sigma = statistics(feats)
    ref = Reference(name, extractor.name, extractor.mode, mu, sigma, feats, len(feats), source)
    ref.save()
    return ref


def list_references() -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(refs_dir().glob("*_info.json"))]
