"""digits-FID and the class statistics of samples, in the shipped digits classifier's feature space (the
``digits`` extractor)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["digits_features", "fid_from_features", "fid_interval_from_features", "class_statistics"]


def digits_features(images: torch.Tensor | np.ndarray, extractor=None) -> tuple[np.ndarray, np.ndarray]:
    """Features [N, 128] and class probabilities [N, 10] of images quantised as PNGs hold them."""
    from .extractors import DigitsExtractor
    from .scores import extract

    f = extract(images, extractor or DigitsExtractor(), logits=True)
    return f.feats, torch.softmax(torch.from_numpy(f.logits), 1).numpy()


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    from .scores import fid, statistics

    return fid(*statistics(a), *statistics(b))


def fid_interval_from_features(a: np.ndarray, b: np.ndarray):
    """FID of features ``a`` against the fixed statistics of ``b``, with its 95% interval (``intervals.Interval``)."""
    from .intervals import fid_interval
    from .scores import statistics

    mu, sigma = statistics(b)
    return fid_interval(a, mu, sigma, estimate=fid_from_features(a, b))


def class_statistics(probs: np.ndarray, confidence: float = 0.9) -> dict[str, object]:
    """Fraction of samples classified with max probability >= ``confidence``, and the class histogram (%)."""
    hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs) * 100
    return {"confident_fraction": float((probs.max(1) >= confidence).mean()),
            "class_histogram_pct": [round(float(h), 2) for h in hist],
            "max_deviation_from_uniform_pct": float(np.abs(hist - 100 / probs.shape[1]).max())}
