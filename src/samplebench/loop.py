"""The one sampling loop: a ``Plan`` (stages of model, solver and time grid, with the conditioning and compute
skipping of the run) samples seeds.

A one-resolution run is a one-stage plan. A low-resolution cascade (methods.md Sec. 4.2-4.3; ``cascade.py`` plans
it) has stages at rising resolutions: stage 0 samples from noise; stage k > 0 upsamples the previous result,
x_up = Up(x), and starts from x_{t*} = alpha_{t*} x_up + sigma_{t*} eps at t*, a cascade model also seeing x_up as
its condition c = alpha_s x_up + sigma_s eps_c at the augmentation time s (LowDiff, Xu et al. 2025).

Seeding contract: sample i draws all its noise (the start, every renoising and condition, every stochastic step)
from its own generator seeded with ``seeds[i]``, so an image depends only on its seed, never on the batch.
NFE is counted per stage through ``CountingDenoiser``; the blocks and FLOPs that ran are measured per run
(``compute.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .compute import CacheSpec, ComputeMeter, ExitThreshold, check_skipping, flop_counts, metered_denoiser, \
    network_profile
from .errors import UsageError
from .models import Conditioning, CountingDenoiser, DiffusionModel
from .models.lowdiff import upsample
from .models.skip_tuning import apply_skip_tuning, count_skips, linear_skip_coefficients
from .noise import SampleGenerators
from .samplers import SolverSpec, StepInfo

__all__ = ["SampleResult", "Stage", "Plan", "sample", "skip_coefficients", "skips_applied", "gflops_per_eval",
           "to_uint8"]


@dataclass
class SampleResult:
    images: torch.Tensor  # decoded, [N, C, H, W], nominally in [-1, 1]
    x: torch.Tensor  # the sampler's final state (latents for latent models)
    seeds: list[int]
    nfe: int  # network evaluations per sample, counted
    wall_time_s: float
    compute: dict[str, Any] | None = None  # blocks and FLOPs actually run (``compute.ComputeMeter.summary``)


@dataclass
class Stage:
    """One resolution of a run: ``solver`` on ``grid`` with ``model``'s network at ``resolution`` (None: the
    model's own sample shape)."""

    model: DiffusionModel
    solver: SolverSpec
    grid: torch.Tensor
    resolution: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        c = self.model.sample_shape[0]
        return tuple(self.model.sample_shape) if self.resolution is None else (c, self.resolution, self.resolution)


@dataclass
class Plan:
    """A resolved run: its stages, conditioning and compute skipping; ``sample(seeds)`` draws it.

    ``skips``: Skip-Tuning coefficients of the last stage's UNet (``models.skip_tuning``). For cascades,
    ``t_start`` (t*), ``upsample`` and ``condition_noise`` (s, None when no stage is conditioned); ``cascade``
    is the ``cascade.CascadeSpec`` it was planned from. ``schedule``: the USF schedule of a one-stage run, if any;
    ``label``: the solver name a record shows (``s3`` for a shipped schedule)."""

    stages: list[Stage]
    class_label: int | None = None
    prompt: str | None = None
    negative_prompt: str = ""
    guidance_scale: float = 1.0
    exit_threshold: ExitThreshold | None = None
    cache: CacheSpec | None = None
    skips: list[float] | None = None
    t_start: float | None = None
    upsample: str = "bilinear"
    condition_noise: float | None = None
    cascade: Any = None
    schedule: Any = None
    label: str | None = None

    @property
    def model(self) -> DiffusionModel:
        return self.stages[-1].model

    @property
    def steps(self) -> int:
        return sum(len(s.grid) - 1 for s in self.stages)

    def base_conditioning(self, model: DiffusionModel, seeds: Sequence[int]) -> Conditioning:
        return Conditioning(model.class_labels(seeds, self.class_label), self.prompt, self.negative_prompt,
                            self.guidance_scale)

    def fingerprint(self) -> str:
        """SHA-256 of what the plan samples with beyond its options: each stage's model, solver, time grid and network
        input times, the USF schedule and the Skip-Tuning coefficients. A learned grid or a shipped schedule is read
        from a file that may change under the same options, so a resumed job compares this with its shards'."""
        import hashlib
        import json

        stages = [[str(s.model.name), s.solver.name, [float(t) for t in s.grid], s.solver.input_times, s.resolution]
                  for s in self.stages]
        parts = [stages, None if self.schedule is None else self.schedule.to_dict(), self.skips, self.t_start,
                 self.condition_noise]
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def check(self) -> Plan:
        """Clear one-line errors before any sampling: conditioning and compute skipping against the model."""
        self.model.check_conditioning(self.base_conditioning(self.model, [0]))
        check_skipping(self.model, self.exit_threshold, self.cache)
        if len(self.stages) > 1 and (self.exit_threshold is not None or self.cache is not None):
            raise UsageError("--cascade does not combine with --exit-threshold or --cache")
        return self

    def sample(self, seeds: Sequence[int], *, batch_size: int = 64,
               on_step: Callable[[StepInfo], None] | None = None) -> SampleResult:
        """Sample ``len(seeds)`` images, ``batch_size`` at a time; ``on_step`` after every solver step."""
        seeds = list(seeds)
        check_skipping(self.model, self.exit_threshold, self.cache)
        one = len(self.stages) == 1
        profile = network_profile(self.model) if one else None
        meter = ComputeMeter(profile) if profile is not None else None
        stages = None if one else self._stage_records()
        images, finals, nfe = [], [], None
        start = time.perf_counter()
        with skips_applied(self.model, self.skips):
            for lo in range(0, len(seeds), batch_size):
                batch = seeds[lo:lo + batch_size]
                gens = SampleGenerators(batch)
                x, counted = None, []
                for stage in self.stages:
                    x, n = self._run_stage(stage, x, batch, gens, meter, on_step)
                    counted.append(n)
                finals.append(x.float().cpu())
                images.append(self.model.decode(x).float().cpu())
                if nfe is not None and nfe != counted:
                    raise RuntimeError(f"NFE differs between batches: {nfe} vs {counted}")
                nfe = counted
        wall = time.perf_counter() - start
        if one:
            return SampleResult(torch.cat(images), torch.cat(finals), seeds, int(nfe[0]), wall,
                                meter.summary() if meter is not None else None)
        for record, n in zip(stages, nfe):
            record["nfe"] = n
        return SampleResult(torch.cat(images), torch.cat(finals), seeds, sum(nfe), wall,
                            self._cascade_compute(stages, len(seeds)))

    def _run_stage(self, stage: Stage, x: torch.Tensor | None, batch: list[int], gens: SampleGenerators,
                   meter: ComputeMeter | None, on_step) -> tuple[torch.Tensor, int]:
        """One stage of one batch: from noise (stage 0) or from the renoised upsampled previous result."""
        m = stage.model
        base = self.base_conditioning(m, batch)
        if x is None:
            x_up, x = None, gens.randn(stage.shape, device=m.device) * m.schedule.prior_std()
        else:
            x_up = upsample(x, stage.resolution, self.upsample)
            x = forward_noise(m.schedule, x_up, self.t_start, gens)
        cond = stage_conditioning(m, base, x_up, self.condition_noise, gens)
        inner = m.denoiser(cond, len(batch))
        metered = (metered_denoiser(m, inner, meter, self.exit_threshold, self.cache, steps=len(stage.grid) - 1)
                   if meter is not None else None)
        denoiser = CountingDenoiser(metered or inner)
        callback = on_step if metered is None else _stepping(metered, on_step)
        try:
            x = stage.solver(denoiser, x, stage.grid, generator=gens, callback=callback)
        finally:
            if metered is not None:
                metered.close()
        return x, denoiser.nfe

    def _stage_records(self) -> list[dict[str, Any]]:
        base = Conditioning(None, self.prompt, self.negative_prompt, self.guidance_scale)
        return [{"resolution": s.shape[-1], "solver": s.solver.name, "model": s.model.name, "nfe": 0,
                 "gflops_per_eval": gflops_per_eval(s.model, s.shape, k > 0, base)}
                for k, s in enumerate(self.stages)]

    def _cascade_compute(self, stages: list[dict[str, Any]], n: int) -> dict[str, Any]:
        """NFE and GFLOPs per stage, and ``gflops_full``: the same NFE spent at the model's resolution."""
        full = stages[-1]["gflops_per_eval"]  # the last stage runs the model at its own resolution
        nfe = sum(s["nfe"] for s in stages)
        per_sample = sum(s["nfe"] * s["gflops_per_eval"] for s in stages)
        return {"cascade": self.cascade.label() if self.cascade is not None else None, "stages": stages, "nfe": nfe,
                "gflops": per_sample * n, "gflops_full": nfe * full * n, "gflops_per_sample": per_sample,
                "gflops_per_full_eval": full, "flop_fraction": per_sample / (nfe * full) if full else None,
                "full_resolution_nfe_equivalent": per_sample / full if full else None}

    def describe_cascade(self) -> dict[str, Any]:
        return {"stages": [{"resolution": s.shape[-1], "nfe": st.nfe, "solver": s.solver.name, "model": s.model.name,
                            "grid_times": s.grid.tolist()} for st, s in zip(self.cascade.stages, self.stages)],
                "t_start": self.t_start, "upsample": self.upsample, "condition_noise": self.condition_noise}


def sample(model: DiffusionModel, solver: SolverSpec, grid: torch.Tensor, seeds: Sequence[int], *,
           class_label: int | None = None, prompt: str | None = None, negative_prompt: str = "",
           guidance_scale: float = 1.0, batch_size: int = 64,
           on_step: Callable[[StepInfo], None] | None = None, exit_threshold: ExitThreshold | None = None,
           cache: CacheSpec | None = None) -> SampleResult:
    """Sample ``len(seeds)`` images with ``solver`` on ``grid`` (a one-stage ``Plan``); sample i draws all its noise
    from a generator seeded with ``seeds[i]``. ``exit_threshold`` (DeeDiff early exit) or ``cache`` (DeepCache,
    FirstBlockCache) skip network work; the blocks and FLOPs that ran are in ``result.compute``."""
    plan = Plan([Stage(model, solver, grid)], class_label, prompt, negative_prompt, guidance_scale, exit_threshold,
                cache)
    return plan.sample(seeds, batch_size=batch_size, on_step=on_step)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats [N, C, H, W] to uint8 [N, H, W, C], as saved to PNG."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _stepping(metered, on_step):
    """The solver's step callback: tell the metered denoiser a step ended, then ``on_step``."""
    def step(info: StepInfo) -> None:
        metered.step_done()
        if on_step is not None:
            on_step(info)
    return step


def forward_noise(schedule, x: torch.Tensor, t: float, gens: SampleGenerators) -> torch.Tensor:
    """x_t = alpha_t x + sigma_t eps, eps from each sample's own generator."""
    t = torch.tensor([t], dtype=torch.float64)
    return float(schedule.alpha(t)) * x + float(schedule.sigma(t)) * gens.randn_like(x)


def stage_conditioning(model: DiffusionModel, base: Conditioning, x_up: torch.Tensor | None, noise: float | None,
                       gens: SampleGenerators) -> Conditioning:
    """The stage's conditioning: for a cascade model's later stage, the noised condition c and its level."""
    if x_up is None or not model.takes_low_res:
        return base
    s = max(noise, model.schedule.t_min)
    return Conditioning(base.class_labels, base.prompt, base.negative_prompt, base.guidance_scale,
                        low_res=forward_noise(model.schedule, x_up, s, gens),
                        low_res_level=float(model.schedule.model_time(torch.tensor([s], dtype=torch.float64))))


def gflops_per_eval(model: DiffusionModel, shape: tuple[int, ...], conditioned: bool,
                    base: Conditioning = Conditioning()) -> float:
    """GFLOPs of one evaluation of one sample at ``shape`` (with a condition when ``conditioned`` and the model
    takes one; both halves of guidance), counted once per model and key (``compute.flop_counts``)."""
    conditioned = conditioned and model.takes_low_res
    key = (tuple(shape), conditioned, base.guidance_scale != 1.0)
    memo = model.__dict__.setdefault("_gflops_per_eval", {})
    if key not in memo:
        x = torch.zeros(1, *shape, device=model.device)
        labels = torch.zeros(1, dtype=torch.long) if model.num_classes is not None else None
        cond = Conditioning(labels, base.prompt, base.negative_prompt, base.guidance_scale,
                            low_res=x if conditioned else None, low_res_level=0.0 if conditioned else None)
        memo[key] = flop_counts(model, shape, cond).get("Global", 0) / 1e9
    return memo[key]


def skip_coefficients(model: DiffusionModel, rho: float | None, schedule=None) -> list[float] | None:
    """Skip-Tuning coefficients from ``--skip-rho`` or a USF schedule (``apply_skip_tuning`` checks their count)."""
    coefficients = rho if rho is not None else getattr(schedule, "skip_coefficients", None)
    if coefficients is None:
        return None
    unet = model.skip_network()
    if unet is None:
        raise UsageError(f"Skip-Tuning needs a UNet2DModel-style network; model {model.name!r} has none")
    return linear_skip_coefficients(count_skips(unet), rho) if rho is not None else list(coefficients)


@contextmanager
def skips_applied(model: DiffusionModel, skips: list[float] | None) -> Iterator[list[float] | None]:
    """Skip-Tuning with ``skips`` (``skip_coefficients``) on the model's UNet for the duration of the block."""
    handles = apply_skip_tuning(model.skip_network(), skips) if skips is not None else []
    try:
        yield skips
    finally:
        for h in handles:
            h.remove()
