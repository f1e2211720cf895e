"""Per-sample random streams: the seeding contract.

Sample i of a run with seed s draws its initial noise and every step noise from its own ``torch.Generator``
seeded with s + i, on the CPU. An image therefore depends only on (model, solver, NFE, s + i): never on the
batch size, the batch it landed in, the device, or the process that drew it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["SampleGenerators"]


class SampleGenerators:
    """One CPU ``torch.Generator`` per sample of a batch, seeded with the sample's own seed."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator("cpu").manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], *, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A ``[len(self), *shape]`` standard normal tensor; row i comes from generator i alone."""
        rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} rows but {len(self)} generators")
        return self.randn(x.shape[1:], device=x.device, dtype=x.dtype)

    def select(self, index: Sequence[int]) -> "SampleGenerators":
        """The generators of some rows (shares state with this object)."""
        out = SampleGenerators([])
        out.seeds = [self.seeds[i] for i in index]
        out.generators = [self.generators[i] for i in index]
        return out
