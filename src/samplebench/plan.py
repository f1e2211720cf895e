"""The run planner: a typed spec of a run in, validated once; out a plan that samples seeds.

    spec = RunSpec(model="digits", solver="unipc-bh2", nfe=5, time_grid="ld3")
    images = plan(load_model(spec.model), spec).sample(range(16)).images

``RunOptions`` holds what determines a run's images besides its solver and NFE (model, grid, schedule,
conditioning, and the methods: Skip-Tuning, early exit, caching, cascade); ``RunSpec`` adds the solver and NFE.
The callers' configs are a spec plus what the caller adds: ``sampling.SampleConfig`` (seeds, batch, output),
``evaluate.EvalConfig`` (the options, a grid of solvers x NFEs, metrics, shards). Every value is checked when the
spec is made, before any model loads; ``plan`` then checks it against the loaded model and resolves the solver,
time grid and stages (``loop.Plan``). ``command_line`` renders a spec as the command that redraws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from .cascade import CascadeSpec, plan_cascade, require_cascade
from .checks import MAX_NFE, check_count, check_float
from .compute import CacheSpec, ExitThreshold, parse_skipping
from .errors import UsageError
from .loop import Plan, Stage, skip_coefficients
from .models import DEFAULT_MODEL, DiffusionModel, load_model
from .samplers import SolverSpec, get_solver, make_grid, parse_grid, validate_grid
from .samplers.grids import LEARNED_KINDS, PIPELINE, ends_at_zero

__all__ = ["S3", "RunOptions", "RunSpec", "plan", "plan_schedule", "load_models", "run_settings", "run_title",
           "schedule_sha256", "command_line", "solver_grid", "resolve_solver", "load_schedule", "schedule_solver",
           "check_solver_nfe", "default_grid"]

S3 = "s3"  # the solver name that means "the model's shipped S3 schedule for this NFE"
OPTIONAL = {"negative_prompt": "", "exit_threshold": None, "cache": None, "cascade": None, "cascade_from": None,
            "cascade_up": None, "cascade_noise": None, "cascade_model": None, "skip_rho": None, "schedule": None}


@dataclass(frozen=True)
class RunOptions:
    """What determines a run's images besides solver and NFE, as given on the command line; checked once here.
    The methods' texts are parsed once: ``cascade_spec``, ``exit_spec`` and ``cache_spec`` hold the typed values."""

    model: str = DEFAULT_MODEL
    time_grid: str | None = None  # a grid kind, a comma-separated list of times, or None for the default
    schedule: str | None = None  # a USF schedule file (or folder of nfe<k>.json); replaces solver and time grid
    class_label: int | None = None
    guidance_scale: float = 1.0
    prompt: str | None = None
    negative_prompt: str = ""
    dtype: str = "float32"
    skip_rho: float | None = None  # Skip-Tuning: innermost skip scaled by rho, linearly up to 1 at the outermost
    exit_threshold: str | None = None  # DeeDiff early exit: a threshold, or pieces "0.95@0.5,0.9"
    cache: str | None = None  # compute skipping: "deepcache:N[:BRANCH][:quad]" or "fbcache:THRESHOLD"
    cascade: str | None = None  # low-resolution cascade stages "8:6,16:4" (``cascade.py``); the NFE is their sum
    cascade_from: float | None = None  # t* of the later stages
    cascade_up: str | None = None  # upsampling operator
    cascade_noise: float | None = None  # condition noise augmentation time (cascade models)
    cascade_model: str | None = None  # the lower stages' model

    def __post_init__(self) -> None:
        if self.class_label is not None:
            check_count("--class-label", self.class_label, 0, 2**31 - 1)
        check_float("--guidance-scale", self.guidance_scale, 0)
        if self.skip_rho is not None:
            check_float("--skip-rho", self.skip_rho, 0)
        exit_spec, cache_spec = parse_skipping(self.exit_threshold, self.cache)
        cascade = CascadeSpec.parse(self.cascade, self.cascade_from, self.cascade_up, self.cascade_noise,
                                    self.cascade_model)
        object.__setattr__(self, "_parsed", (cascade, exit_spec, cache_spec))
        if self.time_grid is not None:
            kind = parse_grid(self.time_grid)
            if cascade is not None and not isinstance(kind, str):
                raise UsageError("--time-grid with --cascade must be a grid kind (each stage has its own times)")
            if self.schedule is not None:
                raise UsageError("--time-grid does not apply to a USF schedule (it holds its own timesteps)")
        if cascade is not None:
            if self.schedule is not None:
                raise UsageError("--cascade stages run registry solvers; --schedule and --solver s3 do not apply")
            if self.exit_threshold is not None or self.cache is not None:
                raise UsageError("--cascade does not combine with --exit-threshold or --cache")
            if self.skip_rho is not None:
                raise UsageError("--skip-rho does not combine with --cascade")

    @property
    def cascade_spec(self) -> CascadeSpec | None:
        return self._parsed[0]

    @property
    def exit_spec(self) -> ExitThreshold | None:
        return self._parsed[1]

    @property
    def cache_spec(self) -> CacheSpec | None:
        return self._parsed[2]

    def options(self) -> dict[str, Any]:
        """The option fields, for a spec of one solver and NFE: ``RunSpec(**options, solver=..., nfe=...)``."""
        return {f.name: getattr(self, f.name) for f in fields(RunOptions)}

    @property
    def compute_label(self) -> str | None:
        """The method a run's records name besides its solver (cascade, Skip-Tuning, early exit or cache)."""
        if self.cascade_spec is not None:
            return f"cascade:{self.cascade_spec.label()}"
        if self.skip_rho is not None:
            return f"skip-rho:{self.skip_rho:g}"
        return f"exit:{self.exit_threshold}" if self.exit_threshold is not None else self.cache


@dataclass(frozen=True)
class RunSpec(RunOptions):
    """A run's options with its solver (a registry name, ``s3`` for the model's shipped schedule) and NFE (None
    with a schedule or a cascade: theirs). Checked once, before any model loads."""

    solver: str = "dpmpp-2m"
    nfe: int | None = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        cascade = self.cascade_spec
        if self.nfe is None and self.schedule is None and cascade is None:
            raise UsageError("--nfe is required without --schedule")
        if self.nfe is not None:
            check_count("--nfe", self.nfe, 1, MAX_NFE)
        schedule = None
        if cascade is not None:
            if self.nfe is not None and self.nfe != cascade.nfe:
                raise UsageError(f"--nfe {self.nfe} differs from the cascade's {cascade.nfe} NFE ({cascade.label()}); "
                                 "drop --nfe")
            if self.solver == S3:
                raise UsageError("--cascade stages run registry solvers; --schedule and --solver s3 do not apply")
            for stage in cascade.stages:
                get_solver(stage.solver or self.solver).steps_for_nfe(stage.nfe)
        else:
            schedule = load_schedule(self.model, self.solver, self.nfe, self.schedule)
            if schedule is None:
                check_solver_nfe(self.model, self.solver, self.nfe)
        object.__setattr__(self, "_schedule", schedule)

    @property
    def usf_schedule(self):
        """The USF schedule the run samples with (``--schedule`` or ``--solver s3``), loaded once; else None."""
        return self._schedule

    @property
    def total_nfe(self) -> int:
        return self.nfe or (self.cascade_spec or self.usf_schedule).nfe


def load_models(spec: RunOptions, device: str | torch.device = "cpu",
                model: DiffusionModel | None = None) -> tuple[DiffusionModel, DiffusionModel | None]:
    """The run's model (``model`` if already loaded) and a cascade's lower-stage model (``--cascade-model``)."""
    cascade = spec.cascade_spec
    model = model or load_model(spec.model, device=device, dtype=spec.dtype)
    low = (load_model(cascade.low_model, device=device, dtype=spec.dtype)
           if cascade is not None and cascade.low_model is not None else None)
    return model, low


def plan(model: DiffusionModel, spec: RunSpec, low_model: DiffusionModel | None = None) -> Plan:
    """``spec`` resolved against the loaded ``model``: its stages (solver and time grid), Skip-Tuning coefficients,
    conditioning and compute skipping, with one-line errors for what the model cannot do."""
    cascade = spec.cascade_spec
    require_cascade(model, cascade)
    if cascade is not None:
        p = plan_cascade(model, cascade, spec.solver, spec.time_grid, low_model)
    else:
        schedule = spec.usf_schedule
        solver, grid = resolve_solver(model, spec.solver, spec.nfe, spec.time_grid, schedule)
        p = Plan([Stage(model, solver, grid)], schedule=schedule,
                 skips=skip_coefficients(model, spec.skip_rho, schedule),
                 label=S3 if spec.schedule is None and spec.solver == S3 else solver.name)
    return replace(p, class_label=spec.class_label, prompt=spec.prompt, negative_prompt=spec.negative_prompt,
                   guidance_scale=spec.guidance_scale, exit_threshold=spec.exit_spec, cache=spec.cache_spec).check()


def schedule_path(spec: RunSpec) -> Path | None:
    """The file a run's USF schedule came from: ``--schedule`` (or its ``nfe<k>.json``), or the shipped one."""
    from .usf.shipped import s3_schedule_path

    if spec.schedule is not None:
        return Path(spec.schedule) / f"nfe{spec.nfe}.json" if Path(spec.schedule).is_dir() else Path(spec.schedule)
    return s3_schedule_path(spec.model, spec.nfe) if spec.solver == S3 else None


def schedule_sha256(schedule) -> str:
    """The fingerprint of a USF schedule's decisions and times (as ``samplebench search`` names candidates by)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(schedule.to_dict(), sort_keys=True).encode()).hexdigest()


def plan_schedule(model: DiffusionModel, schedule) -> Plan:
    """A USF ``SolverSchedule`` held in memory (the search's candidates) as a plan: its own times and Skip-Tuning."""
    solver, grid = resolve_solver(model, "usf", schedule.nfe, None, schedule)
    return Plan([Stage(model, solver, grid)], schedule=schedule, skips=skip_coefficients(model, None, schedule),
                label=solver.name).check()


def run_settings(p: Plan, spec: RunSpec, nfe: int) -> dict[str, Any]:
    """What a run's records hold about how its images were made (summary.json, each PNG's text chunk)."""
    from . import __version__

    cascade = p.cascade is not None
    stage = p.stages[0]
    return {"model": spec.model, "solver": p.label, "nfe": nfe, "steps": p.steps,
            "time_grid": spec.time_grid or (None if cascade else stage.solver.default_grid if p.schedule is not None
                                            else default_grid(stage.model, stage.solver)),
            "grid_times": None if cascade else stage.grid.tolist(),
            "schedule": p.schedule.to_dict() if p.schedule is not None else None,
            **({"schedule_sha256": schedule_sha256(p.schedule), "schedule_file": str(schedule_path(spec))}
               if p.schedule is not None else {}),
            "skip_coefficients": p.skips,
            "exit_threshold": spec.exit_threshold, "cache": p.cache.label() if p.cache is not None else None,
            "cascade": p.describe_cascade() if cascade else None,
            "class_label": spec.class_label, "guidance_scale": spec.guidance_scale, "prompt": spec.prompt,
            "version": __version__}


def run_title(p: Plan, spec: RunSpec, nfe: int) -> str:
    """A run in one line, as grid.png's title: model, solver and grid, NFE, and every setting that changes the
    images (class, guidance, prompt, Skip-Tuning, early exit, cache, cascade)."""
    stage = p.stages[0]
    if p.cascade is not None:
        how = f"{p.label}, cascade {p.cascade.label()}"
    elif p.schedule is not None:
        how = p.label if spec.schedule is None else f"USF schedule {Path(spec.schedule).name}"
    else:
        how = f"{p.label} on {spec.time_grid or default_grid(stage.model, stage.solver)}"
    parts = [spec.model, how, f"NFE {nfe}"]
    parts += [f"class {spec.class_label}"] if spec.class_label is not None else []
    parts += [f"guidance {spec.guidance_scale:g}"] if spec.guidance_scale != 1 else []
    parts += [f"prompt {spec.prompt[:40]!r}"] if spec.prompt else []
    parts += [f"skip-rho {spec.skip_rho:g}"] if spec.skip_rho is not None else []
    parts += [f"exit {spec.exit_threshold}"] if spec.exit_threshold is not None else []
    parts += [p.cache.label()] if p.cache is not None else []
    return " · ".join(parts)


# the order in which a command lists a sample run's options
ORDER = ("model", "solver", "nfe", "num", "seed", "batch_size", "time_grid", "class_label", "guidance_scale", "prompt",
         "negative_prompt", "device", "dtype", "save_npz", "schedule", "skip_rho", "exit_threshold", "cache",
         "cascade", "cascade_from", "cascade_up", "cascade_noise", "cascade_model", "seeds")


def command_line(config: Any, default: Any, *, skip: Sequence[str] = (), flags: dict[str, str] | None = None,
                 always: Sequence[str] = ("model", "solver", "nfe", "num", "seed"), order: Sequence[str] = (),
                 **override: Any) -> str:
    """``samplebench sample`` with the options of ``config`` (a dataclass) that differ from ``default``'s, and
    ``always`` these, listed in ``order`` first; ``flags`` renames fields (field -> option). The one renderer of
    a run as the command that redraws it (sample runs, alignment runs, the app's cells)."""
    import shlex

    values, base, flags = asdict(config) | override, asdict(default), flags or {}
    names = sorted(values, key=lambda n: (order.index(n) if n in order else len(order), list(values).index(n)))
    parts = ["samplebench", "sample"]
    for name in names:
        v = values[name]
        if name in skip or v is None or (v == base[name] and name not in always and flags.get(name) not in always):
            continue
        text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        parts += [flags.get(name, f"--{name.replace('_', '-')}"), shlex.quote(text)]
    return " ".join(parts)


def default_grid(model: DiffusionModel, solver: SolverSpec) -> str:
    """The grid a run uses when none is given: the model's own (a flow pipeline's shift), else the solver's."""
    return model.default_grid or solver.default_grid


def solver_grid(model: DiffusionModel, solver: SolverSpec, nfe: int, time_grid: str | None = None) -> torch.Tensor:
    """The time grid that makes ``solver`` use exactly ``nfe`` network evaluations. A grid ending in 0 (explicit, or
    a pipeline's own) spends 1 NFE on its last step, the x0 prediction (``SolverSpec.__call__``)."""
    spec = parse_grid(time_grid) if time_grid is not None else default_grid(model, solver)
    if isinstance(spec, list):
        grid = validate_grid(model.schedule, torch.tensor(spec, dtype=torch.float64))
        solver.check_start(model.schedule, grid)
        steps = solver.steps_for_nfe(nfe, ends_at_zero(grid))
        if len(grid) - 1 != steps:
            ending = " (ending in 0: its last step costs 1 NFE)" if ends_at_zero(grid) else ""
            raise UsageError(f"explicit time grid has {len(grid) - 1} steps{ending} but solver {solver.name!r} "
                             f"needs {steps} steps for --nfe {nfe}")
        return grid
    if spec == PIPELINE:
        steps = solver.steps_for_nfe(nfe, ends_at_zero(model.pipeline_grid(2)))
        grid = validate_grid(model.schedule, model.pipeline_grid(steps))
        solver.check_start(model.schedule, grid)
        if len(grid) - 1 != steps:
            raise UsageError(f"the pipeline's scheduler gives {len(grid) - 1} steps for {steps} inference steps, "
                             f"so solver {solver.name!r} cannot spend exactly --nfe {nfe} on its grid")
        return grid
    if spec in LEARNED_KINDS:
        from .learned import learned_grid

        return validate_grid(model.schedule, learned_grid(model, solver, solver.steps_for_nfe(nfe), spec))
    return make_grid(model.schedule, spec, solver.steps_for_nfe(nfe))


def schedule_solver(schedule, data_mean: torch.Tensor | None = None) -> SolverSpec:
    """A USF solver schedule as a registry solver; it brings its own time grid (``schedule.timesteps``)."""
    from .usf import usf_sample

    if schedule.afs == "mean" and data_mean is None:
        raise UsageError("the schedule's analytical first step 'mean' needs the model's mean training image, and "
                         "this model has none (a pipeline directory may hold it as data_mean.npy)")

    def fn(denoiser, x, grid, *, generator=None, callback=None):
        return usf_sample(denoiser, x, schedule, data_mean=data_mean, generator=generator, callback=callback)

    return SolverSpec("usf", fn, 1, None, "explicit", "USF solver schedule (Liu et al. 2024)")


def load_schedule(model: str, solver: str, nfe: int | None, schedule_file: str | None):
    """The USF schedule a run uses: ``--schedule FILE``, ``nfe<k>.json`` of ``--schedule FOLDER`` (a search's
    ``OUT/s3``), the model's shipped one for ``--solver s3``, or None."""
    from .usf import SolverSchedule
    from .usf.shipped import s3_schedule_path

    if schedule_file is None and solver != S3:
        return None
    folder = schedule_file is not None and Path(schedule_file).is_dir()
    if (schedule_file is None or folder) and nfe is None:
        raise UsageError("--solver s3 needs --nfe" if schedule_file is None else
                         f"--schedule {str(schedule_file)!r} is a folder of schedules; give --nfe to pick one")
    if folder:
        path = Path(schedule_file) / f"nfe{nfe}.json"
        if not path.is_file():
            have = sorted(p.name for p in Path(schedule_file).glob("nfe*.json"))
            raise UsageError(f"--schedule {str(schedule_file)!r} holds no schedule for --nfe {nfe} (no {path.name}; "
                             f"it holds: {', '.join(have) or 'none'})")
    else:
        path = schedule_file or s3_schedule_path(model, nfe)
    schedule = SolverSchedule.load(path)
    if nfe is not None and nfe != schedule.nfe:
        raise UsageError(f"schedule {str(path)!r} uses {schedule.nfe} NFE, not --nfe {nfe}")
    return schedule


def resolve_solver(model: DiffusionModel, solver: str, nfe: int | None, time_grid: str | None = None,
                   schedule=None) -> tuple[SolverSpec, torch.Tensor]:
    """The sampler and time grid of a run: a USF schedule's own, or a registry solver's at exactly ``nfe``."""
    if schedule is None:
        spec = get_solver(solver)
        grid = solver_grid(model, spec, nfe, time_grid)
        if time_grid in LEARNED_KINDS:  # LD3's network input times
            from .learned import learned_solver

            spec = learned_solver(model, spec, grid, time_grid)
        return spec, grid
    if time_grid is not None:
        raise UsageError("--time-grid does not apply to a USF schedule (it holds its own timesteps)")
    grid = validate_grid(model.schedule, torch.tensor(schedule.timesteps, dtype=torch.float64))
    if schedule.model_times is not None:
        try:
            validate_grid(model.schedule, torch.tensor(schedule.model_times, dtype=torch.float64))
        except UsageError as e:
            raise UsageError(f"the schedule's model_times: {e}") from None
    return schedule_solver(schedule, model.data_mean), grid


def check_solver_nfe(model: str, solver: str, nfe: int) -> None:
    """A one-line error, before any model loads, when ``solver`` cannot spend exactly ``nfe`` evaluations (for
    ``s3``: when ``model`` ships no schedule for ``nfe``)."""
    from .usf.shipped import s3_schedule_path

    if solver == S3:
        s3_schedule_path(model, nfe)
    else:
        get_solver(solver).steps_for_nfe(nfe)
