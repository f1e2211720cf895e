"""The S3 predictor (Liu et al., ICLR 2024, Sec. 4.2): a small MLP from a schedule's encoding to its metric, trained
on the schedules evaluated so far and used only to rank mutated candidates, so that the real (costly) evaluation goes
to the most promising ones.

Targets are log-FIDs standardised within each NFE (schedules compete only with schedules of their own NFE); the loss
is the mean squared error plus a pairwise ranking (logistic) loss over pairs of the same NFE.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Predictor", "standardise"]


def standardise(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(v - mean) / std within each group (std 1 for groups of one)."""
    out = np.zeros_like(values, dtype=np.float64)
    for g in np.unique(groups):
        m = groups == g
        v = values[m]
        out[m] = (v - v.mean()) / (v.std() if len(v) > 1 and v.std() > 0 else 1.0)
    return out


class Predictor:
    def __init__(self, hidden: int = 64, epochs: int = 300, lr: float = 3e-3, weight_decay: float = 1e-4,
                 seed: int = 0):
        self.hidden, self.epochs, self.lr, self.weight_decay, self.seed = hidden, epochs, lr, weight_decay, seed
        self.net: torch.nn.Module | None = None

    def fit(self, x: np.ndarray, score: np.ndarray, groups: np.ndarray) -> "Predictor":
        """Fit to ``score`` (lower is better), compared only within equal ``groups``."""
        g = torch.Generator().manual_seed(self.seed)
        xt = torch.as_tensor(x, dtype=torch.float32)
        y = torch.as_tensor(standardise(np.asarray(score, dtype=np.float64), np.asarray(groups)), dtype=torch.float32)
        same = torch.as_tensor(np.asarray(groups)[:, None] == np.asarray(groups)[None, :])
        better = (y[:, None] < y[None, :]) & same  # i better than j
        net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], self.hidden), torch.nn.SiLU(),
                                  torch.nn.Linear(self.hidden, self.hidden), torch.nn.SiLU(),
                                  torch.nn.Linear(self.hidden, 1))
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(p.shape[-1], 1)) ** 0.5 if p.ndim > 1
                        else torch.zeros_like(p))
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        for _ in range(self.epochs):
            opt.zero_grad()
            pred = net(xt)[:, 0]
            loss = torch.mean((pred - y) ** 2)
            if bool(better.any()):
                margin = pred[None, :] - pred[:, None]  # > 0 when i is predicted better than j
                loss = loss + torch.nn.functional.softplus(-margin[better]).mean()
            loss.backward()
            opt.step()
        self.net = net.eval()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted standardised score (lower is better)."""
        if self.net is None:
            raise RuntimeError("predictor is not fitted")
        with torch.no_grad():
            return self.net(torch.as_tensor(x, dtype=torch.float32))[:, 0].numpy()
