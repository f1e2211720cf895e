"""The base sampler every alignment method shares: the model's DDPM chain p_theta (DDIM with eta = 1, Song et al.
2021, Eq. 16) on a time-uniform grid, with the steps where trees branch and particles resample.

All methods count compute the same way: ``evaluations`` = network evaluations over all rows (the NFE budget),
reward calls (images scored) and reward time apart.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..models import Conditioning, CountingDenoiser, DiffusionModel
from ..noise import SampleGenerators
from ..samplers import make_grid
from ..samplers.basic import ddim
from .rewards import CountedReward

__all__ = ["Chain", "AlignResult", "BatchedDenoiser", "stream_seed", "default_branch_steps"]


def stream_seed(seed: int, k: int) -> int:
    """The seed of random stream ``k`` of a run with ``seed``: stream 0 is the seed itself, the others are hashed
    from (seed, k) to 32 bits (torch's CPU generator uses only the low 32 bits of a seed)."""
    return seed if k == 0 else int(np.random.SeedSequence([seed, k]).generate_state(1)[0])


def default_branch_steps(steps: int, count: int = 5) -> list[int]:
    """``count`` evenly spaced branch steps starting at 0 (DTS App. F: 50 steps branch at 0, 10, 20, 30, 40)."""
    return sorted({round(k * steps / count) for k in range(min(count, steps))})


class BatchedDenoiser:
    """The model's denoiser for one conditioning at any batch size, called in chunks of at most ``max_batch`` rows."""

    def __init__(self, model: DiffusionModel, cond: Conditioning, max_batch: int):
        self.model, self.cond, self.max_batch = model, cond, max_batch
        self.schedule = model.schedule
        self._by_size: dict[int, Any] = {}
        self.nfe_per_call = getattr(self._get(1), "nfe_per_call", 1)

    def _get(self, n: int):
        if n not in self._by_size:
            labels = None if self.cond.class_labels is None else self.cond.class_labels[:1].expand(n)
            self._by_size[n] = self.model.denoiser(
                Conditioning(labels, self.cond.prompt, self.cond.negative_prompt, self.cond.guidance_scale), n)
        return self._by_size[n]

    def __call__(self, x: torch.Tensor, t):
        parts = [self._get(len(c))(c, t) for c in x.split(self.max_batch)]
        if len(parts) == 1:
            return parts[0]
        return type(parts[0])(*(torch.cat(p) for p in zip(*parts)))


@dataclass
class Chain:
    """p_theta(x_{t-1} | x_t) over ``grid`` (steps + 1 times), branching at ``branch_steps`` (step indices, 0 first)."""

    model: DiffusionModel
    denoiser: CountingDenoiser
    grid: torch.Tensor
    branch_steps: list[int]
    reward: CountedReward
    cond: Conditioning
    on_progress: Callable[[int], None] | None = None  # called with the evaluations spent so far

    @classmethod
    def build(cls, model: DiffusionModel, reward: CountedReward, *, steps: int, branch_steps: list[int] | None = None,
              cond: Conditioning | None = None, max_batch: int = 256,
              on_progress: Callable[[int], None] | None = None) -> "Chain":
        cond = cond or Conditioning()
        grid = make_grid(model.schedule, "time-uniform", steps)
        branch = default_branch_steps(steps) if branch_steps is None else sorted(branch_steps)
        return cls(model, CountingDenoiser(BatchedDenoiser(model, cond, max_batch)), grid, branch, reward, cond,
                   on_progress)

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    @property
    def evaluations(self) -> int:
        return self.denoiser.evaluations

    def prior(self, gens: SampleGenerators) -> torch.Tensor:
        """x_T ~ N(0, prior_std^2 I), one row per generator."""
        return gens.randn(self.model.sample_shape, device=self.model.device) * self.model.schedule.prior_std()

    def run(self, x: torch.Tensor, start: int, stop: int, gens: SampleGenerators) -> torch.Tensor:
        """Steps ``start`` .. ``stop`` - 1 of the chain from x at grid[start]: (stop - start) NFE per row."""
        x = ddim(self.denoiser, x, self.grid[start:stop + 1], eta=1.0, generator=gens)
        self.tick()
        return x

    def tick(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.evaluations)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """r(decode(x)) per row, float64 on the CPU, in chunks of the denoiser's batch size."""
        size = self.denoiser.inner.max_batch
        return torch.cat([self.reward(self.model.decode(c), self.cond) for c in x.split(size)])


@dataclass
class AlignResult:
    """Samples of an alignment method with their rewards and what they cost."""

    method: str
    images: torch.Tensor  # decoded, [num, C, H, W]
    x: torch.Tensor  # final states
    rewards: torch.Tensor  # float64 [num]
    nfe: int  # network evaluations spent in all (every rollout / particle step)
    reward_calls: int  # images scored
    reward_time_s: float
    wall_time_s: float
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        r = self.rewards
        # network evaluations of the whole run (every rollout of every sample), and per sample as sampling records
        return {"method": self.method, "nfe_total": self.nfe, "nfe_per_sample": self.nfe / len(r),
                "reward_calls": self.reward_calls,
                "reward_time_s": self.reward_time_s, "wall_time_s": self.wall_time_s,
                "reward_mean": float(r.mean()), "reward_std": float(r.std()) if len(r) > 1 else 0.0,
                "reward_min": float(r.min()), "reward_max": float(r.max()), **self.stats}


def finish(method: str, chain: Chain, x: torch.Tensor, rewards: torch.Tensor, start: float,
           **stats: Any) -> AlignResult:
    return AlignResult(method, chain.model.decode(x).float().cpu(), x.float().cpu(), rewards, chain.evaluations,
                       chain.reward.calls, chain.reward.time_s, time.perf_counter() - start, stats)
