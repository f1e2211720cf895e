"""digits-FID and the class statistics of samples, in the shipped digits classifier's feature space.

Images are quantised to uint8 exactly as saved to PNG before features are taken (the same for real and generated
images), and statistics are computed in float64; the Fréchet distance is clean-fid's own.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["quantize", "digits_features", "feature_stats", "fid_from_features", "class_statistics"]


def quantize(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> the values their uint8 PNG encodes (``sampling.to_uint8``), back in [-1, 1]."""
    from ..sampling import to_uint8

    return torch.from_numpy(to_uint8(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@torch.no_grad()
def digits_features(images: torch.Tensor, classifier=None, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features [N, 128] (float64) and class probabilities [N, 10] of quantised images."""
    from ..models.classifier import load_classifier

    classifier = classifier or load_classifier()
    feats, probs = [], []
    for lo in range(0, len(images), batch_size):
        x = quantize(images[lo:lo + batch_size].float())
        f = classifier.features(x)
        feats.append(f.double().numpy())
        probs.append(torch.softmax(classifier.head(f), 1).double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def fid_from_features(a: np.ndarray, b: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance

    return float(frechet_distance(*feature_stats(a), *feature_stats(b)))


def class_statistics(probs: np.ndarray, confidence: float = 0.9) -> dict[str, object]:
    """Fraction of samples classified with max probability >= ``confidence``, and the class histogram (%)."""
    hist = np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs) * 100
    return {"confident_fraction": float((probs.max(1) >= confidence).mean()),
            "class_histogram_pct": [round(float(h), 2) for h in hist],
            "max_deviation_from_uniform_pct": float(np.abs(hist - 100 / probs.shape[1]).max())}
