"""Low-resolution cascades (methods.md Sec. 4.2-4.3): stages at rising resolutions, each with its own NFE and
solver, ``--cascade 8:6,16:4`` (6 NFE at 8x8, then 4 at 16x16; ``RES:NFE:SOLVER`` names a stage's solver).

Stage 0 samples from noise at its resolution. Stage k > 0 upsamples the previous stage's result, x_up = Up(x),
and starts from x_{t*} = alpha_{t*} x_up + sigma_{t*} eps at t* (``--cascade-from``):

- LowDiff (Xu et al. 2025): a cascade model (``models/lowdiff.py``) also sees x_up as its condition,
  c = alpha_s x_up + sigma_s eps_c at the augmentation time s (``--cascade-noise``); t* defaults to the
  model's (``cascade.json``), else T.
- Training-free (SDEdit, Meng et al. 2022, Sec. 3): any model, t* < T; the lower stages run the same network at
  the smaller size (fully convolutional UNets, latent models) or a second model (``--cascade-model``).

This module parses the stages and plans them against the models: ``plan_cascade`` returns a ``loop.Plan`` of one
stage per resolution, which the one sampling loop draws (``loop.py``: sample i draws stage 0's noise, then each
later stage's renoising and condition noise from its own generator; NFE and FLOPs per evaluation per stage, since
a 16x16 evaluation costs about four 8x8 ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from .checks import MAX_NFE
from .errors import UsageError, unknown
from .loop import Plan, Stage, gflops_per_eval
from .models import DiffusionModel
from .models.lowdiff import UPSAMPLE_MODES
from .samplers import get_solver, make_grid, parse_grid

__all__ = ["CascadeStage", "CascadeSpec", "plan_cascade", "require_cascade"]


@dataclass(frozen=True)
class CascadeStage:
    resolution: int
    nfe: int
    solver: str | None = None  # None: the run's solver

    def label(self) -> str:
        return f"{self.resolution}:{self.nfe}" + (f":{self.solver}" if self.solver else "")


@dataclass(frozen=True)
class CascadeSpec:
    """A cascade as given on the command line; the model fills in what is left as None (``plan_cascade``)."""

    stages: tuple[CascadeStage, ...]
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
            parsed.append(CascadeStage(res, nfe, fields[2] if len(fields) == 3 else None))
        if len(parsed) < 2:
            raise UsageError(bad + " (at least two stages)")
        if sum(s.nfe for s in parsed) > MAX_NFE:
            raise UsageError(f"--cascade {stages!r} spends {sum(s.nfe for s in parsed)} NFE; at most {MAX_NFE}")
        if t_start is not None and not 0 < t_start <= 1:
            raise UsageError(f"--cascade-from must be a time in (0, 1], got {t_start}")
        if upsample is not None and upsample not in UPSAMPLE_MODES:
            raise unknown("--cascade-up", upsample, UPSAMPLE_MODES)
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


def plan_cascade(model: DiffusionModel, spec: CascadeSpec, solver: str, time_grid: str | None = None,
                 low_model: DiffusionModel | None = None) -> Plan:
    """Check the cascade against the model (clear errors) and build every stage's solver and grid: a ``loop.Plan``
    (unconditioned; the run planner adds the conditioning)."""
    c, h, w = model.sample_shape
    top = spec.stages[-1].resolution
    if (h, w) != (top, top):
        raise UsageError(f"the last --cascade stage must be the model's resolution {h}x{w}, got {top}x{top}")
    if low_model is not None and low_model.sample_shape[0] != c:
        raise UsageError(f"--cascade-model {low_model.name!r} has {low_model.sample_shape[0]} channels but "
                         f"model {model.name!r} has {c}; the stages must share the sample space")
    resolutions = model.resolutions
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
    t_start = spec.t_start or model.t_start or model.schedule.T
    if t_start <= model.schedule.t_min:
        raise UsageError(f"--cascade-from must be above the schedule's t_min {model.schedule.t_min}, got {t_start}")
    models = [low_model if low_model is not None and k < len(spec.stages) - 1 else model
              for k in range(len(spec.stages))]
    stages = []
    for k, (stage, m) in enumerate(zip(spec.stages, models)):
        _check_runs_at(m, (c, stage.resolution, stage.resolution), conditioned=k > 0)  # counts its FLOPs too
        s = get_solver(stage.solver or solver)
        grid = make_grid(m.schedule, time_grid or m.default_grid or s.default_grid, s.steps_for_nfe(stage.nfe),
                         t_start=None if k == 0 else t_start)
        stages.append(Stage(m, s, grid, stage.resolution))
    noise = (spec.condition_noise if spec.condition_noise is not None else model.condition_noise
             ) if model.takes_low_res else None
    return Plan(stages, t_start=t_start, upsample=spec.upsample or model.upsample_mode, condition_noise=noise,
                cascade=spec, label=solver)


def require_cascade(model: DiffusionModel, spec: CascadeSpec | None) -> None:
    """A cascade model samples only through a cascade."""
    if spec is None and model.takes_low_res:
        raise UsageError(f"model {model.name!r} is a cascade model; give --cascade, e.g. {model.example_cascade}")


def _check_runs_at(model: DiffusionModel, shape: tuple[int, ...], conditioned: bool) -> None:
    """One evaluation at the stage's size, so that a model fixed to its own size fails here, in one line."""
    try:
        gflops_per_eval(model, shape, conditioned)
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of the network at this size
        raise UsageError(f"model {model.name!r} cannot run at {shape[-2]}x{shape[-1]} "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); give --cascade-model for "
                         "the lower stages") from None
