"""Generate samples from a model with a registered sampler at an exact NFE, honouring the seeding contract.

``sample`` is the library call (tensors in, tensors out); ``run_sample`` is the ``sample`` command: it validates
everything first, then writes one PNG per image (generation settings in a PNG text chunk), a labelled grid, a JSON
summary and optionally the raw arrays.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .checks import MAX_NFE, MAX_SAMPLES, check_count, check_float, check_seeds
from .cascade import CascadeSpec, cascade_sample, plan_cascade, require_cascade
from .compute import CacheSpec, ComputeMeter, ExitThreshold, check_skipping, metered_denoiser, network_profile, \
    parse_skipping
from .errors import UsageError
from .files import GRID_MARKER, earlier_run
from .models import DEFAULT_MODEL, Conditioning, CountingDenoiser, DiffusionModel, load_model
from .models.skip_tuning import apply_skip_tuning, count_skips, linear_skip_coefficients
from .noise import SampleGenerators
from .samplers import SolverSpec, StepInfo, get_solver, make_grid, parse_grid, validate_grid
from .samplers.grids import LEARNED_KINDS, PIPELINE, ends_at_zero

__all__ = ["SampleConfig", "SampleResult", "sample", "solver_grid", "run_sample", "write_samples", "to_uint8",
           "command_line", "a1111_parameters"]


@dataclass(frozen=True)
class SampleConfig:
    """Everything that determines a ``sample`` run. Image i depends only on (model, solver, nfe, grid, seed + i)."""

    model: str = DEFAULT_MODEL
    solver: str = "dpmpp-2m"
    nfe: int | None = 10  # None with a schedule: the schedule's own
    num: int = 16
    seed: int = 0
    batch_size: int = 64
    time_grid: str | None = None  # a grid kind, a comma-separated list of times, or None for the solver's default
    class_label: int | None = None
    guidance_scale: float = 1.0
    prompt: str | None = None
    negative_prompt: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    save_npz: bool = False
    schedule: str | None = None  # a USF solver schedule file; replaces solver and time grid
    skip_rho: float | None = None  # Skip-Tuning: innermost skip scaled by rho, linearly up to 1 at the outermost
    exit_threshold: str | None = None  # DeeDiff early exit: a threshold, or pieces "0.95@0.5,0.9"
    cache: str | None = None  # compute skipping: "deepcache:N[:BRANCH]" or "fbcache:THRESHOLD"
    cascade: str | None = None  # low-resolution cascade stages "8:6,16:4" (``cascade.py``); nfe is their sum
    cascade_from: float | None = None  # t* of the later stages
    cascade_up: str | None = None  # upsampling operator
    cascade_noise: float | None = None  # condition noise augmentation time (cascade models)
    cascade_model: str | None = None  # the lower stages' model
    seeds: tuple[int, ...] | None = None  # explicit seeds (then ``num`` is their count and ``seed`` the first)

    def __post_init__(self) -> None:
        if self.seeds is not None:
            seeds = tuple(check_seeds(s, 1) for s in self.seeds)
            if not seeds or len(set(seeds)) != len(seeds):
                raise UsageError(f"--seeds must be distinct seeds, at least one, got {list(self.seeds)[:10]}")
            object.__setattr__(self, "seeds", seeds)
            object.__setattr__(self, "num", len(seeds))
            object.__setattr__(self, "seed", seeds[0])
        check_count("--num", self.num, 1, MAX_SAMPLES)  # held in memory; ``eval`` writes larger runs in shards
        check_count("--batch-size", self.batch_size, 1)
        check_seeds(self.seed, self.num)
        if self.class_label is not None:
            check_count("--class-label", self.class_label, 0, 2**31 - 1)
        check_float("--guidance-scale", self.guidance_scale, 0)
        if self.skip_rho is not None:
            check_float("--skip-rho", self.skip_rho, 0)
        cascade = self.cascade_spec()
        if self.nfe is None and self.schedule is None and cascade is None:
            raise UsageError("--nfe is required without --schedule")
        if self.nfe is not None:
            check_count("--nfe", self.nfe, 1, MAX_NFE)
        parse_skipping(self.exit_threshold, self.cache)
        if cascade is not None:
            check_cascade_options(cascade, self.nfe, self.schedule, self.solver, self.exit_threshold, self.cache)

    def cascade_spec(self) -> CascadeSpec | None:
        return CascadeSpec.parse(self.cascade, self.cascade_from, self.cascade_up, self.cascade_noise,
                                 self.cascade_model)

    def seed_list(self) -> list[int]:
        """Image i's seed: ``seeds[i]``, else ``seed + i``."""
        return list(self.seeds) if self.seeds is not None else list(range(self.seed, self.seed + self.num))

    def command(self, **override: Any) -> str:
        """The ``samplebench sample`` command that draws these images (``override``: e.g. seed=s, num=1 for one
        image); options at their defaults, and those that change no image (batch size, output), are left out."""
        explicit = self.seeds is not None and "seed" not in override
        skip = ("batch_size", "save_npz") + (("seed", "num") if explicit else ("seeds",))
        return command_line(self, SampleConfig(), skip=skip, **override)


def command_line(config: Any, default: Any, *, skip: Sequence[str] = (), flags: dict[str, str] | None = None,
                 always: Sequence[str] = ("model", "solver", "nfe", "num", "seed"), **override: Any) -> str:
    """``samplebench sample`` with the options of ``config`` (a dataclass) that differ from ``default``'s, and
    ``always`` these; ``flags`` renames fields (field -> option)."""
    import shlex

    values, base, flags = asdict(config) | override, asdict(default), flags or {}
    parts = ["samplebench", "sample"]
    for name, v in values.items():
        if name in skip or v is None or (v == base[name] and name not in always and flags.get(name) not in always):
            continue
        text = ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        parts += [flags.get(name, f"--{name.replace('_', '-')}"), shlex.quote(text)]
    return " ".join(parts)


@dataclass
class SampleResult:
    images: torch.Tensor  # decoded, [N, C, H, W], nominally in [-1, 1]
    x: torch.Tensor  # the sampler's final state (latents for latent models)
    seeds: list[int]
    nfe: int  # network evaluations per sample, counted
    wall_time_s: float
    compute: dict[str, Any] | None = None  # blocks and FLOPs actually run (``compute.ComputeMeter.summary``)


def check_cascade_options(cascade: CascadeSpec, nfe: int | None, schedule: str | None, solver: str,
                          exit_threshold: str | None, cache: str | None) -> None:
    """What a cascade does not combine with, as one-line errors."""
    if nfe is not None and nfe != cascade.nfe:
        raise UsageError(f"--nfe {nfe} differs from the cascade's {cascade.nfe} NFE ({cascade.label()}); drop --nfe")
    if schedule is not None or solver == S3:
        raise UsageError("--cascade stages run registry solvers; --schedule and --solver s3 do not apply")
    if exit_threshold is not None or cache is not None:
        raise UsageError("--cascade does not combine with --exit-threshold or --cache")


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


GRID_IMAGES = 256  # images shown in grid.png (every image has its own PNG)
S3 = "s3"  # the solver name that means "the model's shipped S3 schedule for this NFE"


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
    return schedule_solver(schedule, model.data_mean), grid


def _skip_coefficients(model: DiffusionModel, rho: float | None, schedule) -> list[float] | None:
    """Skip-Tuning coefficients from ``--skip-rho`` or the schedule (``apply_skip_tuning`` checks their count)."""
    coefficients = rho if rho is not None else getattr(schedule, "skip_coefficients", None)
    if coefficients is None:
        return None
    unet = getattr(getattr(model, "pipe", None), "unet", None)
    if unet is None or not hasattr(unet, "up_blocks"):
        raise UsageError(f"Skip-Tuning needs a UNet2DModel-style network; model {model.name!r} has none")
    return linear_skip_coefficients(count_skips(unet), rho) if rho is not None else list(coefficients)


@contextmanager
def skips_applied(model: DiffusionModel, rho: float | None = None, schedule=None):
    """Skip-Tuning from ``--skip-rho`` or the schedule for the duration of the block; yields the coefficients."""
    skips = _skip_coefficients(model, rho, schedule)
    handles = apply_skip_tuning(model.pipe.unet, skips) if skips is not None else []
    try:
        yield skips
    finally:
        for h in handles:
            h.remove()


def default_labels(model: DiffusionModel, seeds: Sequence[int], class_label: int | None) -> torch.Tensor | None:
    """Class labels for a class-conditional model: the given one, or (seed mod num_classes) per sample."""
    if model.num_classes is None:
        return None if class_label is None else torch.full((len(seeds),), class_label)
    if class_label is not None:
        return torch.full((len(seeds),), class_label, dtype=torch.long)
    return torch.tensor([s % model.num_classes for s in seeds], dtype=torch.long)


def sample(model: DiffusionModel, solver: SolverSpec, grid: torch.Tensor, seeds: Sequence[int], *,
           class_label: int | None = None, prompt: str | None = None, negative_prompt: str = "",
           guidance_scale: float = 1.0, batch_size: int = 64,
           on_step: Callable[[StepInfo], None] | None = None, exit_threshold: ExitThreshold | None = None,
           cache: CacheSpec | None = None, **solver_options: Any) -> SampleResult:
    """Sample ``len(seeds)`` images; sample i draws all its noise from a generator seeded with ``seeds[i]``.

    ``exit_threshold`` (DeeDiff early exit) or ``cache`` (DeepCache, FirstBlockCache) skip network work; the
    blocks and FLOPs that ran are in ``result.compute`` for every model with a block-structured network."""
    seeds = list(seeds)
    images, finals, nfe = [], [], None
    check_skipping(model, exit_threshold, cache)
    profile = network_profile(model)
    meter = ComputeMeter(profile) if profile is not None else None
    start = time.perf_counter()
    for lo in range(0, len(seeds), batch_size):
        batch = seeds[lo:lo + batch_size]
        gens = SampleGenerators(batch)
        labels = default_labels(model, batch, class_label)
        cond = Conditioning(labels, prompt, negative_prompt, guidance_scale)
        inner = model.denoiser(cond, len(batch))
        metered = (metered_denoiser(model, inner, meter, exit_threshold, cache, steps=len(grid) - 1)
                   if meter is not None else None)
        denoiser = CountingDenoiser(metered or inner)
        x = gens.randn(model.sample_shape, device=model.device) * model.schedule.prior_std()
        callback = on_step if metered is None else _stepping(metered, on_step)
        try:
            x = solver(denoiser, x, grid, generator=gens, callback=callback, **solver_options)
        finally:
            if metered is not None:
                metered.close()
        finals.append(x.float().cpu())
        images.append(model.decode(x).float().cpu())
        if nfe is not None and nfe != denoiser.nfe:
            raise RuntimeError(f"NFE differs between batches: {nfe} vs {denoiser.nfe}")
        nfe = denoiser.nfe
    return SampleResult(torch.cat(images), torch.cat(finals), seeds, int(nfe), time.perf_counter() - start,
                        meter.summary() if meter is not None else None)


def a1111_parameters(meta: dict[str, Any], shape: tuple[int, ...]) -> str:
    """The generation settings as the ``parameters`` PNG text chunk that AUTOMATIC1111-style tools read: the prompt,
    then "Steps: ..., Sampler: ..., CFG scale: ..., Seed: ..., Size: WxH, Model: ..." (NFE stands for steps)."""
    fields = {"Steps": meta.get("nfe", meta.get("nfe_per_rollout")), "Sampler": meta.get("solver"),
              "CFG scale": meta.get("guidance_scale"), "Seed": meta.get("seed"), "Size": f"{shape[1]}x{shape[0]}",
              "Model": meta.get("model"), "Class": meta.get("class_label"), "Version": f"samplebench {__version__}"}
    text = ", ".join(f"{k}: {v}" for k, v in fields.items() if v is not None)
    return f"{meta.get('prompt') or ''}\n{text}"


def _stepping(metered, on_step):
    """The solver's step callback: tell the metered denoiser a step ended, then ``on_step``."""
    def step(info: StepInfo) -> None:
        metered.step_done()
        if on_step is not None:
            on_step(info)
    return step


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] floats [N, C, H, W] to uint8 [N, H, W, C], as saved to PNG."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def _png(array: np.ndarray):
    from PIL import Image

    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def contact_sheet(arrays: Sequence[np.ndarray], columns: int, min_side: int = 64,
                  labels: Sequence[str] | None = None, gap: int = 2, label_h: int = 12):
    """uint8 [H, W, C] images as one PIL sheet laid out by ``torchvision.utils.make_grid`` (white gaps), each
    nearest-neighbour upscaled to at least ``min_side`` pixels, with its label (e.g. its seed) below when given."""
    from PIL import Image, ImageDraw
    from torchvision.utils import make_grid

    h, w = arrays[0].shape[:2]
    scale = max(1, -(-min_side // max(h, w)))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255.0
    x = x.repeat_interleave(scale, 2).repeat_interleave(scale, 3)
    room = label_h if labels else 0
    x = torch.nn.functional.pad(x, (0, 0, 0, room), value=1.0)  # white space for the label under each image
    cols = min(columns, len(arrays))
    grid = make_grid(x, nrow=cols, padding=gap, pad_value=1.0)
    sheet = Image.fromarray((grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()).convert("RGB")
    if labels:
        draw = ImageDraw.Draw(sheet)
        for k, label in enumerate(labels):
            r, c = divmod(k, cols)
            draw.text((gap + c * (w * scale + gap) + 1, gap + r * (h * scale + room + gap) + h * scale),
                      str(label)[:16], fill="black")
    return sheet


def _grid_image(arrays: np.ndarray, labels: list[str], title: str):
    """grid.png: a titled contact sheet of the first images, 8 per row, each labelled."""
    from PIL import Image, ImageDraw

    body = contact_sheet(list(arrays), 8, labels=labels, gap=4, label_h=14)
    sheet = Image.new("RGB", (body.width, body.height + 18), "white")
    ImageDraw.Draw(sheet).text((4, 3), title, fill="black")
    sheet.paste(body, (0, 18))
    return sheet


def check_solver_nfe(model: str, solver: str, nfe: int) -> None:
    """A one-line error, before any model loads, when ``solver`` cannot spend exactly ``nfe`` evaluations (for
    ``s3``: when ``model`` ships no schedule for ``nfe``)."""
    from .usf.shipped import s3_schedule_path

    if solver == S3:
        s3_schedule_path(model, nfe)
    else:
        get_solver(solver).steps_for_nfe(nfe)


def run_sample(config: SampleConfig, out: str | Path, *, progress: bool = True, model: DiffusionModel | None = None,
               on_progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The ``sample`` command. Every input is validated before anything is printed or written (files are
    written only after sampling succeeded); returns the JSON summary. ``model``: ``config.model`` already loaded;
    ``on_progress(steps done, steps in all)`` after every solver step (an exception it raises stops the run with
    nothing written). A non-empty ``out`` is refused unless ``overwrite`` (``files.earlier_run``)."""
    from tqdm import tqdm

    cascade = config.cascade_spec()
    schedule = None if cascade else load_schedule(config.model, config.solver, config.nfe, config.schedule)
    if schedule is not None and config.time_grid is not None:
        raise UsageError("--time-grid does not apply to a USF schedule (it holds its own timesteps)")
    if cascade is None and schedule is None:
        check_solver_nfe(config.model, config.solver, config.nfe)  # a clear error before the model loads
    if config.time_grid is not None:
        parse_grid(config.time_grid)
    out = Path(out)
    stale = earlier_run(out, overwrite)
    t_load = time.perf_counter()
    model = model or load_model(config.model, device=config.device, dtype=config.dtype)
    low_model = (load_model(cascade.low_model, device=config.device, dtype=config.dtype)
                 if cascade is not None and cascade.low_model is not None else None)
    load_time = time.perf_counter() - t_load
    require_cascade(model, cascade)
    if cascade is not None:
        plan = plan_cascade(model, cascade, config.solver, config.time_grid, low_model)
        grids, label = plan.grids, config.solver
    else:
        solver, grid = resolve_solver(model, config.solver, config.nfe, config.time_grid, schedule)
        grids, label = [grid], S3 if config.schedule is None and config.solver == S3 else solver.name
    steps = sum(len(g) - 1 for g in grids)
    seeds = config.seed_list()
    # conditioning errors surface here, before the progress bar draws anything
    model.check_conditioning(Conditioning(default_labels(model, seeds[:1], config.class_label), config.prompt,
                                          config.negative_prompt, config.guidance_scale))
    exit_threshold, cache = parse_skipping(config.exit_threshold, config.cache)
    check_skipping(model, exit_threshold, cache)

    total = steps * -(-config.num // config.batch_size)
    bar = tqdm(total=total, unit="step", disable=not progress,
               desc=f"{label} nfe={config.nfe or (cascade or schedule).nfe}")
    done = 0

    def step(info: StepInfo) -> None:
        nonlocal done
        done += 1
        bar.update(1)
        if on_progress is not None:
            on_progress(done, total)

    common = dict(class_label=config.class_label, prompt=config.prompt, negative_prompt=config.negative_prompt,
                  guidance_scale=config.guidance_scale, batch_size=config.batch_size, on_step=step)
    try:
        with skips_applied(model, config.skip_rho, schedule) as skips:
            result = (cascade_sample(plan, seeds, **common) if cascade is not None else
                      sample(model, solver, grid, seeds, exit_threshold=exit_threshold, cache=cache, **common))
    finally:
        bar.close()

    settings = {"model": config.model, "solver": label, "nfe": result.nfe, "steps": steps,
                "time_grid": config.time_grid or (None if cascade else solver.default_grid if schedule is not None
                                                  else default_grid(model, solver)),
                "grid_times": None if cascade else grid.tolist(),
                "schedule": schedule.to_dict() if schedule is not None else None, "skip_coefficients": skips,
                "exit_threshold": config.exit_threshold, "cache": cache.label() if cache is not None else None,
                "cascade": plan.describe() if cascade is not None else None,
                "class_label": config.class_label, "guidance_scale": config.guidance_scale, "prompt": config.prompt,
                "version": __version__}
    extra = {"config": asdict(config), "command": config.command(), "seeds": seeds, "nfe_per_sample": result.nfe,
             "wall_time_s": result.wall_time_s, "load_time_s": load_time, "compute": result.compute}
    per_image = [{"seed": s, "command": config.command(seed=s, num=1)} for s in seeds]
    return write_samples(out, result.images, result.x, settings, extra, per_image=per_image,
                         labels=[f"seed {s}" for s in seeds], title=f"{config.model} | {label} | NFE {result.nfe}",
                         save_npz=config.save_npz, replaces=stale, arrays={"seeds": np.array(seeds)})


def write_samples(out: Path, images: torch.Tensor, x: torch.Tensor, settings: dict[str, Any], extra: dict[str, Any],
                  *, per_image: list[dict[str, Any]], labels: list[str], title: str, save_npz: bool = False,
                  arrays: dict[str, np.ndarray] | None = None, replaces: Sequence[Path] = ()) -> dict[str, Any]:
    """One PNG per image (``settings`` and its ``per_image`` entry in a text chunk), a labelled grid of the first
    ``GRID_IMAGES``, optionally the raw arrays, and summary.json = settings + extra + file names; returns the
    summary. ``replaces``: an earlier run's files (``files.earlier_run``), removed first."""
    from PIL.PngImagePlugin import PngInfo

    for stale in replaces:
        stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(images)
    files = []
    for i, (a, meta) in enumerate(zip(pixels, per_image)):
        info = PngInfo()
        info.add_text("samplebench", json.dumps({**settings, **meta}))
        info.add_text("parameters", a1111_parameters({**settings, **meta}, a.shape))
        name = f"{i:05d}.png"
        _png(a).save(out / name, pnginfo=info)
        files.append(name)
    marker = PngInfo()
    marker.add_text(GRID_MARKER, title)  # so that scoring the folder leaves the grid out
    _grid_image(pixels[:GRID_IMAGES], labels[:GRID_IMAGES], title).save(out / "grid.png", pnginfo=marker)
    if save_npz:
        np.savez(out / "samples.npz", images=images.numpy(), x=x.numpy(), **(arrays or {}))
    summary = {**settings, **extra, "images": files, "grid": "grid.png"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
