"""Low-resolution cascades (methods.md Sec. 4.2-4.3): stages at rising resolutions, each with its own NFE and
solver, ``--cascade 8:6,16:4`` (6 NFE at 8x8, then 4 at 16x16; ``RES:NFE:SOLVER`` names a stage's solver).

Stage 0 samples from noise at its resolution. Stage k > 0 upsamples the previous stage's result, x_up = Up(x),
and starts from x_{t*} = alpha_{t*} x_up + sigma_{t*} eps at t* (``--cascade-from``):

- LowDiff (Xu et al. 2025): a cascade model (``models/lowdiff.py``) also sees x_up as its condition,
  c = alpha_s x_up + sigma_s eps_c at the augmentation time s (``--cascade-noise``); t* defaults to the
  model's (``cascade.json``), else T.
- Training-free (SDEdit, Meng et al. 2022, Sec. 3): any model, t* < T; the lower stages run the same network at
  the smaller size (fully convolutional UNets, latent models) or a second model (``--cascade-model``).

Sample i draws stage 0's noise, then each later stage's renoising (and condition) noise from its own generator,
so a cascade image depends only on its seed. NFE is counted per stage; FLOPs per evaluation are measured per
stage (``torch.utils.flop_counter``), since a 16x16 evaluation costs about four 8x8 ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .checks import MAX_NFE
from .errors import UsageError
from .models import Conditioning, CountingDenoiser, DiffusionModel
from .models.lowdiff import UPSAMPLE_MODES, upsample
from .noise import SampleGenerators
from .samplers import SolverSpec, StepInfo, get_solver, make_grid, parse_grid

__all__ = ["Stage", "CascadeSpec", "CascadePlan", "plan_cascade", "require_cascade", "cascade_sample"]


@dataclass(frozen=True)
class Stage:
    resolution: int
    nfe: int
    solver: str | None = None  # None: the run's solver

    def label(self) -> str:
        return f"{self.resolution}:{self.nfe}" + (f":{self.solver}" if self.solver else "")


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade as given on the command line; the model fills in what is left as None (``plan_cascade``)."""

    stages: tuple[Stage, ...]
    t_start: float | None = None  # --cascade-from: t* of the later stages (None: the cascade model's, else T)
    upsample: str | None = None  # --cascade-up (None: the model's, else bilinear)
    condition_noise: float | None = None  # --cascade-noise: augmentation time s (None: the model's)
    low_model: str | None = None  # --cascade-model: the model of the lower stages (None: the same model)

    @classmethod
    def parse(cls, stages: str | None, t_start: float | None = None, upsample: str | None = None,
              condition_noise: float | None = None, low_model: str | None = None) -> CascadeSpec | None:
        """``--cascade`` and its options; None without ``--cascade`` (then the options must be unset too)."""
        if stages is None:
            given = [f for f, v in (("--cascade-from", t_start), ("--cascade-up", upsample),
                                    ("--cascade-noise", condition_noise), ("--cascade-model", low_model))
                     if v is not None]
            if given:
                raise UsageError(f"{given[0]} needs --cascade (stages such as 8:6,16:4)")
            return None
        bad = (f"--cascade {stages!r} is not valid; give RES:NFE stages with rising resolutions, e.g. 8:6,16:4 "
               "(or RES:NFE:SOLVER)")
        parsed = []
        for part in stages.split(","):
            fields = part.strip().split(":")
            try:
                res, nfe = int(fields[0]), int(fields[1])
            except (ValueError, IndexError):
                raise UsageError(bad) from None
            if len(fields) > 3 or res < 1 or nfe < 1 or (parsed and res <= parsed[-1].resolution):
                raise UsageError(bad)
            parsed.append(Stage(res, nfe, fields[2] if len(fields) == 3 else None))
        if len(parsed) < 2:
            raise UsageError(bad + " (at least two stages)")
        if sum(s.nfe for s in parsed) > MAX_NFE:
            raise UsageError(f"--cascade {stages!r} spends {sum(s.nfe for s in parsed)} NFE; at most {MAX_NFE}")
        if t_start is not None and not 0 < t_start <= 1:
            raise UsageError(f"--cascade-from must be a time in (0, 1], got {t_start}")
        if upsample is not None and upsample not in UPSAMPLE_MODES:
            raise UsageError(f"--cascade-up {upsample!r} is not valid; valid: {', '.join(UPSAMPLE_MODES)}")
        if condition_noise is not None and not 0 <= condition_noise < 1:
            raise UsageError(f"--cascade-noise must be a time in [0, 1), got {condition_noise}")
        return cls(tuple(parsed), t_start, upsample, condition_noise, low_model)

    @property
    def nfe(self) -> int:
        return sum(s.nfe for s in self.stages)

    def label(self) -> str:
        opts = [f"{k}={v}" for k, v in (("from", self.t_start), ("up", self.upsample),
                                        ("noise", self.condition_noise), ("low", self.low_model)) if v is not None]
        return " ".join([",".join(s.label() for s in self.stages), *opts])


@dataclass
class CascadePlan:
    """A cascade resolved against its models: per stage the model, solver and time grid."""

    spec: CascadeSpec
    models: list[DiffusionModel]
    solvers: list[SolverSpec]
    grids: list[torch.Tensor]
    t_start: float
    upsample: str
    condition_noise: float | None  # None when no stage is conditioned

    def describe(self) -> dict[str, Any]:
        return {"stages": [{"resolution": st.resolution, "nfe": st.nfe, "solver": s.name, "model": m.name,
                            "grid_times": g.tolist()}
                           for st, s, m, g in zip(self.spec.stages, self.solvers, self.models, self.grids)],
                "t_start": self.t_start, "upsample": self.upsample, "condition_noise": self.condition_noise}


def plan_cascade(model: DiffusionModel, spec: CascadeSpec, solver: str, time_grid: str | None = None,
                 low_model: DiffusionModel | None = None) -> CascadePlan:
    """Check the cascade against the model (clear errors) and build every stage's solver and grid."""
    c, h, w = model.sample_shape
    top = spec.stages[-1].resolution
    if (h, w) != (top, top):
        raise UsageError(f"the last --cascade stage must be the model's resolution {h}x{w}, got {top}x{top}")
    if low_model is not None and low_model.sample_shape[0] != c:
        raise UsageError(f"--cascade-model {low_model.name!r} has {low_model.sample_shape[0]} channels but "
                         f"model {model.name!r} has {c}; the stages must share the sample space")
    resolutions = getattr(model, "resolutions", None)
    if resolutions is not None and low_model is None:
        missing = [s.resolution for s in spec.stages if s.resolution not in resolutions]
        if missing:
            raise UsageError(f"cascade model {model.name!r} was trained at {', '.join(map(str, resolutions))}, not "
                             f"{missing[0]}; valid --cascade resolutions are those")
    if spec.t_start is None and not model.takes_low_res:
        raise UsageError(f"model {model.name!r} is not a cascade model: give --cascade-from T* (such as 0.5), the "
                         "time the full-resolution stage starts from the renoised upsampled sample")
    if spec.condition_noise is not None and not model.takes_low_res:
        raise UsageError(f"--cascade-noise applies to cascade models; model {model.name!r} is not one")
    if time_grid is not None and not isinstance(parse_grid(time_grid), str):
        raise UsageError("--time-grid with --cascade must be a grid kind (each stage has its own times)")
    t_start = spec.t_start or getattr(model, "t_start", None) or model.schedule.T
    if t_start <= model.schedule.t_min:
        raise UsageError(f"--cascade-from must be above the schedule's t_min {model.schedule.t_min}, got {t_start}")
    models = [low_model if low_model is not None and k < len(spec.stages) - 1 else model
              for k in range(len(spec.stages))]
    solvers, grids = [], []
    for k, (stage, m) in enumerate(zip(spec.stages, models)):
        _check_runs_at(m, (c, stage.resolution, stage.resolution), conditioned=k > 0)  # counts its FLOPs too
        s = get_solver(stage.solver or solver)
        steps = s.steps_for_nfe(stage.nfe)
        grids.append(make_grid(m.schedule, time_grid or m.default_grid or s.default_grid, steps,
                               t_start=None if k == 0 else t_start))
        solvers.append(s)
    noise = (spec.condition_noise if spec.condition_noise is not None else getattr(model, "condition_noise", None)
             ) if model.takes_low_res else None
    mode = spec.upsample or getattr(model, "upsample_mode", "bilinear")
    return CascadePlan(spec, models, solvers, grids, t_start, mode, noise)


def require_cascade(model: DiffusionModel, spec: CascadeSpec | None) -> None:
    """A cascade model samples only through a cascade."""
    if spec is None and model.takes_low_res:
        raise UsageError(f"model {model.name!r} is a cascade model; give --cascade, e.g. {model.example_cascade}")


def _check_runs_at(model: DiffusionModel, shape: tuple[int, ...], conditioned: bool) -> None:
    """One evaluation at the stage's size, so that a model fixed to its own size fails here, in one line."""
    try:
        _gflops_per_eval(model, shape, conditioned)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the network at this size
        raise UsageError(f"model {model.name!r} cannot run at {shape[-2]}x{shape[-1]} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); give --cascade-model for "
                         "the lower stages") from None


def _forward_noise(schedule, x: torch.Tensor, t: float, gens: SampleGenerators) -> torch.Tensor:
    """x_t = alpha_t x + sigma_t eps, eps from each sample's own generator."""
    t = torch.tensor([t], dtype=torch.float64)
    return float(schedule.alpha(t)) * x + float(schedule.sigma(t)) * gens.randn_like(x)


def _stage_conditioning(model: DiffusionModel, base: Conditioning, x_up: torch.Tensor | None, noise: float | None,
                        gens: SampleGenerators) -> Conditioning:
    """The stage's conditioning: for a cascade model's later stage, the noised condition c and its level."""
    if x_up is None or not model.takes_low_res:
        return base
    s = max(noise, model.schedule.t_min)
    return Conditioning(base.class_labels, base.prompt, base.negative_prompt, base.guidance_scale,
                        low_res=_forward_noise(model.schedule, x_up, s, gens),
                        low_res_level=float(model.schedule.model_time(torch.tensor([s], dtype=torch.float64))))


def _gflops_per_eval(model: DiffusionModel, shape: tuple[int, ...], conditioned: bool,
                     base: Conditioning = Conditioning()) -> float:
    """FLOPs of one evaluation of one sample at ``shape`` (with a condition when ``conditioned`` and the model takes
    one; both halves of guidance), counted on one forward once per model and key."""
    from torch.utils.flop_counter import FlopCounterMode

    conditioned = conditioned and model.takes_low_res
    key = (tuple(shape), conditioned, base.guidance_scale != 1.0)
    memo = model.__dict__.setdefault("_gflops_per_eval", {})
    if key not in memo:
        x = torch.zeros(1, *shape, device=model.device)
        labels = torch.zeros(1, dtype=torch.long) if model.num_classes is not None else None
        denoiser = model.denoiser(Conditioning(labels, base.prompt, base.negative_prompt, base.guidance_scale,
                                               low_res=x if conditioned else None,
                                               low_res_level=0.0 if conditioned else None), 1)
        with FlopCounterMode(display=False) as counter:
            denoiser(x, 0.5)
        memo[key] = counter.get_total_flops() / 1e9
    return memo[key]


def cascade_sample(plan: CascadePlan, seeds: Sequence[int], *, class_label: int | None = None,
                   prompt: str | None = None, negative_prompt: str = "", guidance_scale: float = 1.0,
                   batch_size: int = 64, on_step: Callable[[StepInfo], None] | None = None):
    """Sample ``len(seeds)`` images through the cascade; ``result.compute`` has NFE and GFLOPs per stage, and
    ``gflops_full``: the same NFE spent at the last stage's (the model's) resolution."""
    from .sampling import SampleResult, default_labels

    seeds = list(seeds)
    images, finals = [], []
    one = Conditioning(None, prompt, negative_prompt, guidance_scale)
    stages = [{"resolution": st.resolution, "solver": s.name, "model": m.name, "nfe": 0,
               "gflops_per_eval": _gflops_per_eval(m, (m.sample_shape[0], st.resolution, st.resolution), k > 0, one)}
              for k, (st, s, m) in enumerate(zip(plan.spec.stages, plan.solvers, plan.models))]
    top = plan.models[-1]
    start = time.perf_counter()
    for lo in range(0, len(seeds), batch_size):
        batch = seeds[lo:lo + batch_size]
        gens = SampleGenerators(batch)
        x = None
        for k, (m, solver, grid, info) in enumerate(zip(plan.models, plan.solvers, plan.grids, stages)):
            shape = (m.sample_shape[0], info["resolution"], info["resolution"])
            base = Conditioning(default_labels(m, batch, class_label), prompt, negative_prompt, guidance_scale)
            if x is None:
                x_up, x = None, gens.randn(shape, device=m.device) * m.schedule.prior_std()
            else:
                x_up = upsample(x, info["resolution"], plan.upsample)
                x = _forward_noise(m.schedule, x_up, plan.t_start, gens)
            cond = _stage_conditioning(m, base, x_up, plan.condition_noise, gens)
            denoiser = CountingDenoiser(m.denoiser(cond, len(batch)))
            x = solver(denoiser, x, grid, generator=gens, callback=on_step)
            if lo and denoiser.nfe != info["nfe"]:
                raise RuntimeError(f"NFE of stage {k} differs between batches: {info['nfe']} vs {denoiser.nfe}")
            info["nfe"] = denoiser.nfe
        finals.append(x.float().cpu())
        images.append(top.decode(x).float().cpu())
    full = stages[-1]["gflops_per_eval"]  # the last stage runs the model at its own resolution
    nfe = sum(s["nfe"] for s in stages)
    per_sample = sum(s["nfe"] * s["gflops_per_eval"] for s in stages)
    compute = {"cascade": plan.spec.label(), "stages": stages, "nfe": nfe, "gflops": per_sample * len(seeds),
               "gflops_full": nfe * full * len(seeds), "gflops_per_sample": per_sample,
               "gflops_per_full_eval": full, "flop_fraction": per_sample / (nfe * full) if full else None,
               "full_resolution_nfe_equivalent": per_sample / full if full else None}
    return SampleResult(torch.cat(images), torch.cat(finals), seeds, nfe, time.perf_counter() - start, compute)
