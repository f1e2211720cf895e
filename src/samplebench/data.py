"""The UCI handwritten digits shipped inside scikit-learn (1,797 images, 8x8, 10 classes).

Images are scaled to [-1, 1]; at 16x16 they are first resized bilinearly (``align_corners=False``). The split is
fixed: a stratified 80/20 split with ``random_state=0`` gives 1,437 training and 360 test images.
"""

from __future__ import annotations

import torch

from .errors import UsageError, unknown

__all__ = ["load_digits", "SPLITS", "RESOLUTIONS"]

SPLITS = ("train", "test", "all")
RESOLUTIONS = (8, 16)


def load_digits(split: str = "train", resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Images [N, 1, R, R] float32 in [-1, 1] and labels [N] int64."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    if split not in SPLITS:
        raise unknown("digits split", split, SPLITS)
    if resolution not in RESOLUTIONS:
        raise UsageError(f"unknown digits resolution {resolution}; valid: {', '.join(map(str, RESOLUTIONS))}")
    bunch = sk_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8] in [0, 1]
    labels = torch.tensor(bunch.target, dtype=torch.long)
    if resolution != 8:
        images = torch.nn.functional.interpolate(images, size=(resolution, resolution), mode="bilinear",
                                                 align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    if split == "all":
        return images, labels
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=0.2, random_state=0,
                                           stratify=labels.numpy())
    idx = torch.from_numpy(train_idx if split == "train" else test_idx)
    return images[idx], labels[idx]
