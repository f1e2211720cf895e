"""What the app's callbacks do, as plain library calls (no Gradio here, so it is tested without a browser).

A view builds a list of ``Cell``s, each one ``sample`` run (a ``SampleConfig``, or an ``AlignConfig`` for tree
search and its baselines), and ``run_cells`` runs them in order on models borrowed from a ``ModelPool``. Every cell
writes what the ``sample`` command writes (one PNG per image with its generation settings in a text chunk, and
summary.json) into its own folder of the request's folder, which ``zip_folder`` packs for download.
"""

from __future__ import annotations

import io
import itertools
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import MAX_SEED, check_count, check_float, check_seeds
from ..errors import UsageError, unknown
from ..learned import stored_only
from ..models import DEFAULT_MODEL, load_model
from ..models.embedded import EMBEDDED

__all__ = ["Limits", "check_model", "read_upload", "Cell", "CellResult", "ModelPool", "Cancelled", "parse_seeds", "parse_nfes", "compare_cells",
           "AXES", "parse_axis", "xyz_cells",
           "s3_cells", "align_cells", "skipping_cells", "cascade_cells", "run_cells", "cell_numbers", "plot_rows",
           "FID_MIN_IMAGES", "tile", "zip_folder",
           "grid_html", "comparison_image", "query_runs", "results_table", "start_eval"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the app is meant to be shared). Every value of a request is checked against
    these before anything runs, whichever way it arrives (the page, or its API called directly)."""

    images: int = 16  # seeds per cell
    cells: int = 16  # solvers x NFEs
    nfe: int = 250  # per sample, also for an uploaded schedule and a cascade's total
    budget: int = 50_000  # tree search: network evaluations per request
    eval_samples: int = 2000  # an evaluation job started from the app, per (solver, NFE)
    guidance: float = 15.0  # classifier-free guidance scale
    prompt_chars: int = 1000
    upload_bytes: int = 64 * 1024  # an uploaded schedule file
    models: tuple[str, ...] | None = tuple(EMBEDDED)  # what a request may load; None: anything (operator's choice)


def check_model(name: Any, limits: Limits) -> str:
    """``name`` if the app offers it. Every other name gets the same refusal, whether or not it names a folder or
    a hub id, so a request learns nothing about the server's files."""
    name = DEFAULT_MODEL if name in (None, "") else name
    if not isinstance(name, str) or (limits.models is not None and name not in limits.models):
        from ..names import nearest

        hint = nearest(name, limits.models or ()) if isinstance(name, str) and len(name) <= 40 else ""
        raise UsageError(f"that model is not offered here{hint}; valid: {', '.join(limits.models or ())}")
    return name


def read_upload(path: Any, upload_root: str | Path | None, limits: Limits) -> str:
    """The text of a file that Gradio received as an upload (inside ``upload_root``), at most
    ``limits.upload_bytes``. Any other path gets the same refusal, and no error quotes the file."""
    refused = UsageError("the schedule must be a JSON file uploaded through this page")
    if upload_root is None or not isinstance(path, (str, Path)):
        raise refused
    try:
        root = Path(upload_root).resolve(strict=True)
        file = Path(path).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):
        raise refused from None
    if root not in file.parents or not file.is_file():
        raise refused
    if file.stat().st_size > limits.upload_bytes:
        raise UsageError(f"the uploaded schedule is over {limits.upload_bytes // 1024} KiB; a schedule is a small "
                         "JSON file")
    try:
        return file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        raise UsageError("the uploaded file is not a text file; a schedule is JSON, as 'samplebench search' "
                         "writes") from None


class Cancelled(Exception):
    """Raised inside a run when its request was cancelled."""


def parse_seeds(text: str, limit: int) -> tuple[int, ...]:
    """'0-7', '3' or '42,1234' (seeds and ranges, comma-separated) -> the seeds; image i of every cell uses seed i."""
    text = str(text)[:200]
    seeds: list[int] = []
    parts = [p for p in text.split(",") if p.strip()] or [text]
    for part in parts:
        m = re.fullmatch(r"\s*(\d{1,20})\s*(?:-\s*(\d{1,20})\s*)?", part)
        if m is None:
            raise UsageError(f"seeds {text[:40]!r} are not valid; give seeds or ranges, e.g. 0-7 or 42,1234")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi > MAX_SEED:
            raise UsageError(f"seed {hi} is above the largest seed 2**64 - 1 = {MAX_SEED}")
        if hi < lo:
            raise UsageError(f"seeds {part.strip()!r}: the range runs backwards")
        if len(seeds) + hi - lo + 1 > limit:
            raise UsageError(f"seeds {text[:40]!r} are more than {limit} images per cell; at most {limit}")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"seeds {text[:40]!r} repeat a seed")
    return tuple(seeds)


def _count(name: str, value: Any, limit: int, unit: str = "") -> int:
    """``value`` as a whole number in 1..limit, else a one-line error naming it."""
    try:
        return check_count(name, value, 1, limit)
    except UsageError:
        raise UsageError(f"{name} {str(value)[:40]} must be a whole number from 1 to {limit}{unit}") from None


def _solver_grid(solvers: Sequence[str], nfes: Sequence[int], limits: Limits) -> list[str]:
    """The distinct ``solvers``, checked: at least one, and at most ``limits.cells`` (solver, NFE) cells."""
    if isinstance(solvers, str) or not all(isinstance(s, str) for s in solvers):
        raise UsageError("solvers must be a list of solver names")
    solvers = list(dict.fromkeys(solvers))
    if not solvers:
        raise UsageError("pick at least one solver")
    if len(solvers) * len(nfes) > limits.cells:
        raise UsageError(f"{len(solvers)} solvers x {len(nfes)} NFEs = {len(solvers) * len(nfes)} cells; at most "
                         f"{limits.cells}")
    return solvers


def parse_nfes(text: str, limit: int) -> tuple[int, ...]:
    """'5, 10, 20' -> NFEs, each in 1..limit."""
    nfes = []
    for part in [p.strip() for p in str(text)[:200].split(",") if p.strip()]:
        if not (part.isascii() and part.isdigit()) or len(part) > 6 or not 1 <= int(part) <= limit:
            raise UsageError(f"NFE {part[:20]!r} is not valid; give whole numbers from 1 to {limit}, e.g. 5,10")
        nfes.append(int(part))
    if not nfes:
        raise UsageError("give at least one NFE, e.g. 5,10")
    return tuple(dict.fromkeys(nfes))


@dataclass(frozen=True)
class Cell:
    """One ``sample`` run of a view: where it goes in the grid, and its configuration."""

    row: str
    column: str
    config: Any  # SampleConfig, or AlignConfig for tree search and its baselines
    panel: str = ""  # the Z axis value: one grid per panel


@dataclass
class CellResult:
    cell: Cell
    folder: Path
    summary: dict[str, Any]
    images: list[np.ndarray] = field(repr=False)  # uint8 [H, W, C] as saved
    numbers: dict[str, Any] | None = None  # KID (and FID from FID_MIN_IMAGES) of the cell's own images

    @property
    def label(self) -> str:
        """The cell in a few words (the two-cell comparison's choices)."""
        return " · ".join(p for p in (self.cell.panel, self.cell.row, self.cell.column) if p)

    @cached_property
    def tile(self):
        """The cell's images as one picture (``tile``), each labelled with its seed, made once for the grid, the
        slider and the comparison image."""
        seeds = self.summary.get("seeds")
        labels = [f"seed {s}" for s in seeds] if isinstance(seeds, list) and len(seeds) == len(self.images) else None
        return tile(self.images, labels=labels)

    @cached_property
    def tile_uri(self) -> str:
        return _data_uri(self.tile)

    @property
    def caption(self) -> str:
        s = self.summary
        nfe = (f"{s['nfe_total']} in all ({s['nfe_per_sample']:.0f} per sample)" if "nfe_total" in s else
               s.get("nfe_per_sample", s.get("nfe")))
        text = f"{self.cell.row} · NFE {nfe} · {s['wall_time_s']:.2f} s"
        compute = s.get("compute") or {}
        if "block_fraction" in compute and compute["block_fraction"] < 1:
            text += f" · {compute['block_fraction']:.0%} blocks"
        flops = compute.get("flop_fraction")
        if isinstance(flops, float) and flops < 1:
            text += f" · {flops:.0%} FLOPs"
        if "reward_mean" in s:
            text += f" · reward {s['reward_mean']:.2f}"
        schedule = s.get("schedule")
        if isinstance(schedule, dict) and schedule.get("steps"):  # which S3 schedule ran: its file and decisions
            steps = "-".join(f"{st.get('order', 1)}{'n' if st.get('prediction') == 'noise' else 'd'}"
                             + ("c" if (st.get("corrector") or {}).get("kind", "none") != "none" else "")
                             for st in schedule["steps"])
            where = s.get("schedule_file") or "shipped"
            text += f" · schedule {Path(str(where)).name} {str(s.get('schedule_sha256', ''))[:8]} ({steps})"
        if self.numbers is not None:
            n = self.numbers
            text += (f" · {1000 * s['wall_time_s'] / len(self.images):.0f} ms/image · KID {n['kid']:.3f} "
                     f"[{n['kid_low']:.3f}, {n['kid_high']:.3f}]")
            text += (f" · FID {n['fid']:.2f} [{n['fid_low']:.2f}, {n['fid_high']:.2f}]" if n.get("fid") is not None
                     else f" · FID needs {FID_MIN_IMAGES}+ images")
            text += f" (n={n['n']}, vs {n['ref']})"
        return text


def _conditioning(model: str, class_label: Any, prompt: str | None, guidance: Any,
                  limits: Limits) -> dict[str, Any]:
    """The request's model and conditioning, checked."""
    if class_label not in (None, "", "auto"):
        class_label = check_count("class label", class_label, 0, 2**31 - 1)
    else:
        class_label = None
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > limits.prompt_chars):
        raise UsageError(f"the prompt must be text of at most {limits.prompt_chars} characters")
    return {"model": check_model(model, limits), "class_label": class_label, "prompt": prompt or None,
            "guidance_scale": check_float("guidance scale", guidance, 0, limits.guidance)}


def compare_cells(model: str, solvers: Sequence[str], nfes: str | Sequence[int], seeds: str, *,
                  class_label: int | None = None, prompt: str | None = None, guidance: float = 1.0,
                  limits: Limits = Limits()) -> list[Cell]:
    """Rows = solvers, columns = NFEs, the same seeds in every cell; all checked before anything runs."""
    from ..sampling import check_solver_nfe

    nfes = (parse_nfes(nfes, limits.nfe) if isinstance(nfes, str) else
            tuple(dict.fromkeys(_count("NFE", n, limits.nfe) for n in nfes)))
    seeds = parse_seeds(seeds, limits.images)
    solvers = _solver_grid(solvers, nfes, limits)
    common = _conditioning(model, class_label, prompt, guidance, limits)
    cells = []
    for s in solvers:
        for n in nfes:
            check_solver_nfe(common["model"], s, n)
            cells.append(Cell(s, f"NFE {n}", _sample_config(common, seeds, solver=s, nfe=n)))
    return cells


# ---- XYZ plot: any setting on any axis ---------------------------------------------------------------------

# axis -> (SampleConfig field, separator of its values); prompts and per-time thresholds hold commas
AXES = {"solver": ("solver", ","), "NFE": ("nfe", ","), "time grid": ("time_grid", ","), "seeds": ("seeds", "|"),
        "class label": ("class_label", ","), "guidance": ("guidance_scale", ","), "prompt": ("prompt", "|"),
        "skip rho": ("skip_rho", ","), "exit threshold": ("exit_threshold", "|"), "cache": ("cache", ",")}


def parse_axis(name: str, text: str, limits: Limits) -> list[tuple[str, Any]]:
    """An axis's values as (label, value); checked here only for form (the cells check the rest)."""
    from ..names import GRIDS, LEARNED_GRIDS

    if name not in AXES:
        raise unknown("axis", str(name)[:40], AXES)
    field, sep = AXES[name]
    if not isinstance(text, str) or len(text) > 1000:
        raise UsageError(f"the {name} axis takes text of at most 1000 characters")
    parts = [p.strip() for p in text.split(sep) if p.strip()]
    if not parts:
        raise UsageError(f"give the {name} axis its values, separated by '{sep}'")
    values: list[tuple[str, Any]] = []
    for p in parts:
        if field == "nfe":
            v: Any = parse_nfes(p, limits.nfe)[0]
        elif field == "seeds":
            v = parse_seeds(p, limits.images)
        elif field == "class_label":
            v = check_count("class label", int(p) if p.isdigit() else p, 0, 2**31 - 1)
        elif field in ("guidance_scale", "skip_rho"):
            v = check_float(name, p, 0, limits.guidance if field == "guidance_scale" else 10)
        elif field == "time_grid" and p not in GRIDS + LEARNED_GRIDS:
            raise unknown("time grid", p[:40], GRIDS + LEARNED_GRIDS)
        elif field == "prompt" and len(p) > limits.prompt_chars:
            raise UsageError(f"the prompt must be text of at most {limits.prompt_chars} characters")
        else:
            v = p
        label = f"{name} {p}" if field in ("nfe", "class_label", "guidance_scale", "skip_rho", "seeds") else p
        values.append((label if field != "nfe" else f"NFE {v}", v))
    return list(dict(values).items())


def xyz_cells(model: str, base: dict[str, Any], x: tuple[str, str], y: tuple[str, str] | None = None,
              z: tuple[str, str] | None = None, limits: Limits = Limits()) -> list[Cell]:
    """An XYZ plot: a cell per (x, y, z) value; each axis any of ``AXES`` (its values as text), the rest from
    ``base`` (solver, nfe, seeds, class_label, guidance, prompt). Every cell is checked before anything runs."""
    from ..sampling import check_solver_nfe

    axes = [(a, t) for a, t in (axis or (None, "") for axis in (x, y, z)) if a not in (None, "", "none")]
    names = [a for a, _ in axes]
    if len(set(names)) != len(names):
        raise UsageError(f"each axis needs its own setting; {', '.join(names)} repeats one")
    values = [parse_axis(a, t, limits) for a, t in axes]
    count = 1
    for v in values:
        count *= len(v)
    if count > limits.cells:
        raise UsageError(f"{' x '.join(str(len(v)) for v in values)} = {count} cells; at most {limits.cells}")
    common = _conditioning(model, base.get("class_label"), base.get("prompt"), base.get("guidance", 1.0), limits)
    seeds = parse_seeds(base.get("seeds", "0-3"), limits.images)
    settings = {"solver": base.get("solver", "dpmpp-2m"), "nfe": _count("NFE", base.get("nfe", 10), limits.nfe)}
    cells = []
    for combo in itertools.product(*values) if values else [()]:
        fields = dict(settings)
        chosen = dict(common)
        labels = []
        for (axis, _), (label, v) in zip(axes, combo):
            field = AXES[axis][0]
            (chosen if field in chosen else fields)[field] = v
            labels.append(label)
        cell_seeds = fields.pop("seeds", seeds)
        check_solver_nfe(chosen["model"], fields["solver"], fields["nfe"])
        config = _sample_config(chosen, cell_seeds, **fields)
        labels += [""] * (3 - len(labels))
        cells.append(Cell(labels[1] or "", labels[0] or "", config, panel=labels[2]))
    return cells


def _sample_config(common: dict[str, Any], seeds: tuple[int, ...], **kwargs):
    from ..sampling import SampleConfig

    contiguous = list(seeds) == list(range(seeds[0], seeds[0] + len(seeds)))
    where = {"seed": seeds[0], "num": len(seeds)} if contiguous else {"seeds": tuple(seeds)}
    return SampleConfig(**common, **where, **kwargs)


def s3_cells(model: str, nfe: int, seeds: str, baseline: str, schedule_file: str | None = None,
             limits: Limits = Limits(), upload_root: str | Path | None = None) -> list[Cell]:
    """The shipped (or an uploaded) S3 schedule next to a baseline solver at the same NFE. An uploaded
    ``schedule_file`` must lie in ``upload_root`` (``read_upload``)."""
    from ..sampling import check_solver_nfe
    from ..usf import SolverSchedule

    seeds = parse_seeds(seeds, limits.images)
    common = _conditioning(model, None, None, 1.0, limits)
    if schedule_file:
        text = read_upload(schedule_file, upload_root, limits)
        try:
            nfe = SolverSchedule.from_json(text).nfe
        except UsageError:
            raise UsageError("the uploaded file is not a valid solver schedule; upload a schedule JSON that "
                             "'samplebench search' wrote (OUT/s3/nfe<K>.json)") from None
        if nfe > limits.nfe:
            raise UsageError(f"the uploaded schedule spends {nfe} NFE; at most {limits.nfe} here")
        s3 = Cell("schedule", f"NFE {nfe}", _sample_config(common, seeds, solver="usf", nfe=nfe,
                                                             schedule=str(schedule_file)))
    else:
        nfe = _count("NFE", nfe, limits.nfe)
        check_solver_nfe(common["model"], "s3", nfe)
        s3 = Cell("s3", f"NFE {nfe}", _sample_config(common, seeds, solver="s3", nfe=nfe))
    check_solver_nfe(common["model"], baseline, nfe)
    return [s3, Cell(baseline, f"NFE {nfe}", _sample_config(common, seeds, solver=baseline, nfe=nfe))]


ALIGN_REWARDS = re.compile(r"class:\d|even|odd")  # no module:function from a shared app
ALIGN_METHODS = ("dts", "dts-star", "best-of-n", "fk")


def align_cells(method: str, reward: str, budget: int, num: int, nfe: int, lam: float, *, model: str = "digits",
                seed: int = 0, limits: Limits = Limits()) -> list[Cell]:
    """One tree-search (or baseline) run: ``num`` samples of p(x) exp(lambda r(x)) for ``budget`` NFE."""
    from ..align import AlignConfig

    if not isinstance(reward, str) or not ALIGN_REWARDS.fullmatch(reward):
        raise UsageError(f"reward {str(reward)[:40]!r} is not offered here; valid: class:0 .. class:9, even, odd")
    if method not in ALIGN_METHODS:
        raise unknown("method", str(method)[:40], ALIGN_METHODS)
    config = AlignConfig(method=method, reward=reward, budget=_count("budget", budget, limits.budget,
                                                                     " network evaluations"),
                         num=_count("samples", num, limits.images), nfe=_count("chain NFE", nfe, limits.nfe),
                         lam=check_float("lambda", lam, 0, 1000), model=check_model(model, limits),
                         seed=check_seeds(seed, 1, "seed"))
    return [Cell(method, reward, config)]


def skipping_cells(model: str, solver: str, nfe: int, seeds: str, *, exit_threshold: str | None = None,
                   cache: str | None = None, class_label: int | None = None,
                   limits: Limits = Limits()) -> list[Cell]:
    """The full network next to early exit (``exit_threshold``) or a cache, same solver, NFE and seeds."""
    from ..sampling import check_solver_nfe

    nfe = _count("NFE", nfe, limits.nfe)
    seeds = parse_seeds(seeds, limits.images)
    common = _conditioning(model, class_label, None, 1.0, limits)
    check_solver_nfe(common["model"], solver, nfe)
    label = f"exit {exit_threshold}" if exit_threshold else cache
    if not label:
        raise UsageError("give an exit threshold (e.g. 0.9) or a cache (e.g. deepcache:3)")
    return [Cell("full", f"NFE {nfe}", _sample_config(common, seeds, solver=solver, nfe=nfe)),
            Cell(label, f"NFE {nfe}", _sample_config(common, seeds, solver=solver, nfe=nfe,
                                                      exit_threshold=exit_threshold or None, cache=cache or None))]


def cascade_cells(model: str, stages: str, cascade_from: float | None, seeds: str, solver: str,
                  single_model: str = DEFAULT_MODEL, limits: Limits = Limits()) -> list[Cell]:
    """A low-resolution cascade next to ``single_model`` at full resolution with the same total NFE."""
    seeds = parse_seeds(seeds, limits.images)
    if not isinstance(stages, str) or not stages.strip() or len(stages) > 200:
        raise UsageError("give cascade stages, e.g. 8:20,16:2")
    if cascade_from is not None:
        cascade_from = check_float("t*", cascade_from, 0, 1, lo_open=True)
    common, single = _conditioning(model, None, None, 1.0, limits), _conditioning(single_model, None, None, 1.0,
                                                                                   limits)
    cascade = _sample_config(common, seeds, solver=solver, nfe=None, cascade=stages, cascade_from=cascade_from)
    spec = cascade.cascade_spec  # parsed once, by the run spec
    if spec.nfe > limits.nfe:
        raise UsageError(f"the cascade spends {spec.nfe} NFE; at most {limits.nfe}")
    return [Cell(f"cascade {spec.label()}", f"NFE {spec.nfe}", cascade),
            Cell(f"{single['model']} single resolution", f"NFE {spec.nfe}",
                 _sample_config(single, seeds, solver=solver, nfe=spec.nfe))]


class ModelPool:
    """Loaded models lent to one request at a time: a borrowed instance is held by no other request, so the
    per-call hooks of Skip-Tuning, early exit and caches never meet another request's run. Keeps up to
    ``per_model`` idle instances of each of the ``models`` most recently used (name, dtype), all on ``device``."""

    def __init__(self, models: int = 3, per_model: int = 2, device: str = "cpu"):
        self.models, self.per_model, self.device = models, per_model, device
        self._idle: OrderedDict[tuple[str, str], list] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self, name: str, dtype: str = "float32"):
        key = (name, dtype)
        with self._lock:
            idle = self._idle.get(key)
            model = idle.pop() if idle else None
        if model is None:
            model = load_model(name, device=self.device, dtype=dtype)
        try:
            yield model
        finally:
            with self._lock:
                idle = self._idle.setdefault(key, [])
                if len(idle) < self.per_model:
                    idle.append(model)
                self._idle.move_to_end(key)
                while len(self._idle) > self.models:
                    self._idle.popitem(last=False)


FID_MIN_IMAGES = 250  # below, FID's bias (about 40 at 8 digits images) swamps the differences between solvers
NUMBER_RESAMPLES = 200  # bootstrap resamples of a cell's KID interval (quick; the evaluation harness uses 1,000)


def cell_numbers(images: Sequence[np.ndarray], model: str) -> dict[str, Any] | None:
    """The digits-KID of a cell's own images against the model's reference with its 95% interval (KID is unbiased
    at any count, so a few images give a wide interval, not a wrong number), and the FID from ``FID_MIN_IMAGES``
    images (None below: at 8 images its bias is several times the differences between solvers); None for a model
    without a reference or fewer than 3 images."""
    from ..api import _features, fid_of, kid_of
    from ..evaluate import DEFAULT_REFS

    if model not in DEFAULT_REFS or len(images) < 3:
        return None
    ref = DEFAULT_REFS[model]
    feats, reference = _features(np.stack(images), ref)  # one feature pass for both numbers
    k = kid_of(feats, reference, NUMBER_RESAMPLES)
    out = {"kid": k.estimate, "kid_low": k.low, "kid_high": k.high, "n": k.n, "ref": ref, "fid": None,
           "fid_low": None, "fid_high": None}
    if len(images) >= FID_MIN_IMAGES:
        f = fid_of(feats, reference, NUMBER_RESAMPLES)
        out |= {"fid": f.estimate, "fid_low": f.low, "fid_high": f.high}
    return out


def plot_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """The rows the Results plot draws, and a note: all of them when they share model, features and reference, else
    the group with the most runs (a plot never mixes harness settings), saying so."""
    key = lambda r: (r.get("model"), r.get("extractor"), r.get("mode"), r.get("ref"), r.get("ref_sha256"))  # noqa: E731
    groups: dict[Any, list] = {}
    for r in rows:
        if r.get("nfe") is not None and r.get("fid") is not None:
            groups.setdefault(key(r), []).append(r)
    if len(groups) <= 1:
        return list(rows), ""
    best = max(groups, key=lambda g: (len(groups[g]), str(g)))
    return groups[best], (f"Plot: model {best[0]} ({best[1]} features, vs {best[3]}), the most runs of "
                          f"{len(groups)} settings; choose a model or features above to see another")


def run_cells(cells: Sequence[Cell], folder: str | Path, pool: ModelPool, *,
              on_progress: Callable[[float, str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, numbers: bool = False) -> Iterator[CellResult]:
    """Run ``cells`` in order, yielding each result as it is done. ``on_progress(fraction, text)`` follows the
    solver steps; once ``cancelled()`` is true the run stops at the next step with ``Cancelled``. ``numbers``: each
    result carries the numbers of its images (``cell_numbers``; the app computes them after showing the images)."""
    from ..align import AlignConfig, run_align
    from ..sampling import run_sample

    folder = Path(folder)
    for k, cell in enumerate(cells):
        config = replace(cell.config, device=pool.device)  # the settings written say where it ran
        out = folder / f"{k:02d}-{re.sub(r'[^A-Za-z0-9.-]+', '_', f'{cell.row}-{cell.column}')}"

        def tick(done: int, total: int, k=k, cell=cell) -> None:
            if cancelled is not None and cancelled():
                raise Cancelled
            if on_progress is not None:
                on_progress((k + min(done / total, 1.0)) / len(cells), f"{cell.row} · {cell.column}")

        with pool.borrow(config.model, config.dtype) as model:
            if isinstance(config, AlignConfig):
                summary = run_align(config, out, progress=False, model=model,
                                    on_progress=lambda n, budget=config.budget: tick(n, budget))
            else:
                with stored_only():  # a request never starts a GITS teacher pass or an LD3 training
                    summary = run_sample(config, out, progress=False, model=model, on_progress=tick)
        images = _read_pngs(out, summary["images"])
        yield CellResult(cell, out, summary, images, cell_numbers(images, config.model) if numbers else None)


def _read_pngs(folder: Path, names: Sequence[str]) -> list[np.ndarray]:
    from PIL import Image

    arrays = []
    for name in names:
        with Image.open(folder / name) as im:
            arrays.append(np.array(im.convert("RGB")))
    return arrays


def tile(images: Sequence[np.ndarray], columns: int = 4, min_side: int = 64, max_width: int = 512,
         labels: Sequence[str] | None = None):
    """The images of one cell side by side (nearest-neighbour upscaled so small images stay crisp), each with its
    label (e.g. its seed) below when given; at most ``max_width`` pixels wide."""
    from PIL import Image

    from ..sampling import contact_sheet

    sheet = contact_sheet(images, columns, min_side, labels)
    if sheet.width > max_width:
        sheet = sheet.resize((max_width, round(sheet.height * max_width / sheet.width)), Image.LANCZOS)
    return sheet


def zip_folder(folder: str | Path, name: str = "samplebench.zip") -> Path:
    """Every PNG (settings in its text chunk, bytes as written) and summary.json under ``folder``, zipped."""
    folder = Path(folder)
    target = folder / name
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path != target and path.suffix in (".png", ".json"):
                z.write(path, path.relative_to(folder).as_posix())
    return target


def _data_uri(image) -> str:
    import base64

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def grid_html(cells: Sequence[Cell], results: Sequence[CellResult]) -> str:
    """The compare grid: one row per ``cell.row``, one column per ``cell.column``; finished cells show their
    images (a click enlarges them), caption and command, pending ones a placeholder."""
    from html import escape

    tables = []
    for panel in dict.fromkeys(c.panel for c in cells):
        mine = [c for c in cells if c.panel == panel]
        rows = list(dict.fromkeys(c.row for c in mine))
        cols = list(dict.fromkeys(c.column for c in mine))
        done = {(r.cell.row, r.cell.column): r for r in results if r.cell.panel == panel}
        head = "".join(f"<th>{escape(c)}</th>" for c in cols)
        body = []
        for row in rows:
            tds = []
            for col in cols:
                r = done.get((row, col))
                if r is None:
                    tds.append('<td class="pending">…</td>' if any(c.row == row and c.column == col for c in mine)
                               else "<td></td>")
                    continue
                command = r.summary.get("command")
                code = (f'<details class="sb-cmd"><summary>command</summary><code>{escape(command)}</code></details>'
                        if command else "")
                # click to enlarge (and again to close): a checkbox in the label toggles the image's size (CSS)
                tds.append(f'<td><figure class="cell"><label class="sb-zoom" title="click to enlarge">'
                           f'<input type="checkbox"/><img alt="{escape(r.caption)}" src="{r.tile_uri}"/></label>'
                           f'<figcaption>{escape(r.caption)}</figcaption>{code}</figure></td>')
            body.append(f"<tr><th>{escape(row)}</th>{''.join(tds)}</tr>")
        title = f'<caption class="sb-panel">{escape(panel)}</caption>' if panel else ""
        tables.append(f'<table class="sb-grid">{title}<thead><tr><th></th>{head}</tr></thead>'
                      f'<tbody>{"".join(body)}</tbody></table>')
    return "".join(tables)


def comparison_image(cells: Sequence[Cell], results: Sequence[CellResult], path: str | Path) -> Path:
    """The whole comparison as one labelled PNG: per panel (Z value) its title, the column (X) labels above, the
    row (Y) labels on the left, each finished cell's tile with its caption below."""
    from PIL import Image, ImageDraw

    done = {(r.cell.panel, r.cell.row, r.cell.column): r for r in results}
    pad, label_w, head_h, cap_h = 6, 110, 18, 14
    sheets = []
    for panel in dict.fromkeys(c.panel for c in cells):
        mine = [c for c in cells if c.panel == panel]
        rows = list(dict.fromkeys(c.row for c in mine))
        cols = list(dict.fromkeys(c.column for c in mine))
        tiles = {k: r.tile for k, r in done.items() if k[0] == panel}
        w = max([t.width for t in tiles.values()] or [64])
        h = max([t.height for t in tiles.values()] or [64])
        title_h = head_h if panel else 0
        sheet = Image.new("RGB", (label_w + len(cols) * (w + pad) + pad,
                                  title_h + head_h + len(rows) * (h + cap_h + pad) + pad), "white")
        draw = ImageDraw.Draw(sheet)
        if panel:
            draw.text((pad, 3), panel, fill="black")
        for j, col in enumerate(cols):
            draw.text((label_w + j * (w + pad) + pad, title_h + 3), col, fill="black")
        for i, row in enumerate(rows):
            y = title_h + head_h + i * (h + cap_h + pad) + pad
            draw.text((pad, y + h // 2), row[:18], fill="black")
            for j, col in enumerate(cols):
                r = done.get((panel, row, col))
                if r is not None:
                    x = label_w + j * (w + pad) + pad
                    sheet.paste(r.tile, (x, y))
                    draw.text((x, y + r.tile.height + 1), r.caption.split(" · ", 1)[-1][:40], fill="black")
        sheets.append(sheet)
    full = Image.new("RGB", (max(s.width for s in sheets), sum(s.height for s in sheets)), "white")
    y = 0
    for sheet in sheets:
        full.paste(sheet, (0, y))
        y += sheet.height
    path = Path(path)
    full.save(path)
    return path


# ---- results view --------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("id", "created", "model", "solver", "nfe", "num_samples", "seeds", "fid", "fid_low", "fid_high",
                 "kid", "kid_low", "kid_high", "inception_score", "extractor", "ref", "compute", "wall_time_s")


def query_runs(db: str | Path | None, **filters: Any) -> list[dict[str, Any]]:
    """Rows of the results database matching ``filters`` (empty or None = any), oldest first."""
    from ..results import ResultsDB

    results = ResultsDB(db)
    try:
        return results.query(**{k: (v or None) for k, v in filters.items()})
    finally:
        results.close()


def results_table(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The app's columns of ``rows``, newest first."""
    return [{k: r.get(k) for k in TABLE_COLUMNS} for r in reversed(rows)]


def start_eval(model: str, solvers: Sequence[str], nfes: str, num: int, folder: str | Path,
               db: str | Path | None, limits: Limits = Limits(), device: str = "cpu",
               progress: bool = False) -> list[dict[str, Any]]:
    """A small evaluation job (digits features, FID and KID) into the app's database; returns its rows."""
    from ..evaluate import EvalConfig, run_eval

    num = _count("samples", num, limits.eval_samples)
    nfe_list = parse_nfes(nfes, limits.nfe)
    solvers = _solver_grid(solvers, nfe_list, limits)
    model = check_model(model, limits)
    config = EvalConfig(model=model, solvers=tuple(solvers), nfes=nfe_list, num=num, metrics=("fid", "kid"),
                        shard_size=min(250, num))
    return run_eval(config, folder, device=device, db=db, progress=progress)
