"""The digits classifier: its penultimate layer is the feature space of digits-FID, its softmax the class
probabilities of the Inception-Score analogue and of the class rewards. Saved in diffusers format
(``config.json`` + safetensors) through ``ModelMixin``."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn

__all__ = ["DigitsClassifier", "load_classifier"]


class DigitsClassifier(ModelMixin, ConfigMixin):
    """A small CNN on 1x16x16 images in [-1, 1]."""

    @register_to_config
    def __init__(self, num_classes: int = 10, width: int = 32, feature_dim: int = 128):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.GroupNorm(8, w), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.SiLU(),  # 8x8
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 4 * w), nn.SiLU(),  # 4x4
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(4 * w, feature_dim), nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [B, feature_dim]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [B, num_classes]."""
        return self.head(self.body(x))


def load_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitsClassifier:
    """The shipped classifier, or one saved with ``save_pretrained`` at ``path``."""
    from .base import LOADING
    from .embedded import WEIGHTS

    with LOADING:
        return DigitsClassifier.from_pretrained(str(path or WEIGHTS / "digits-classifier")).to(device).eval()
