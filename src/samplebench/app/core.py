"""What the app's callbacks do, as plain library calls (no Gradio here, so it is tested without a browser).

A view builds a list of ``Cell``s, each one ``sample`` run (a ``SampleConfig``, or an ``AlignConfig`` for tree
search and its baselines), and ``run_cells`` runs them in order on models borrowed from a ``ModelPool``. Every cell
writes what the ``sample`` command writes (one PNG per image with its generation settings in a text chunk, and
summary.json) into its own folder of the request's folder, which ``zip_folder`` packs for download.
"""

from __future__ import annotations

import io
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

from ..errors import UsageError
from ..models import DEFAULT_MODEL, load_model

__all__ = ["Limits", "Cell", "CellResult", "ModelPool", "Cancelled", "parse_seeds", "parse_nfes", "compare_cells",
           "s3_cells", "align_cells", "skipping_cells", "cascade_cells", "run_cells", "tile", "zip_folder",
           "grid_html", "query_runs", "results_table", "start_eval"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (the app is meant to be shared)."""

    images: int = 16  # seeds per cell
    cells: int = 16  # solvers x NFEs
    nfe: int = 250  # per sample
    budget: int = 50_000  # tree search: network evaluations per request
    eval_samples: int = 2000  # an evaluation job started from the app, per (solver, NFE)


class Cancelled(Exception):
    """Raised inside a run when its request was cancelled."""


def parse_seeds(text: str, limit: int) -> tuple[int, int]:
    """'0-7' or '3' -> (first seed, count); image i of every cell uses seed first + i."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if m is None:
        raise UsageError(f"seeds {text!r} are not valid; give a seed or a range, e.g. 0-7")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if hi < lo:
        raise UsageError(f"seeds {text!r}: the range runs backwards")
    if hi - lo + 1 > limit:
        raise UsageError(f"seeds {text!r} are {hi - lo + 1} images per cell; at most {limit}")
    return lo, hi - lo + 1


def _count(name: str, value: Any, limit: int, unit: str = "") -> int:
    """``value`` as a whole number in 1..limit, else a one-line error naming it."""
    if value is None or not 1 <= int(value) <= limit:
        raise UsageError(f"{name} {value} must be from 1 to {limit}{unit}")
    return int(value)


def _solver_grid(solvers: Sequence[str], nfes: Sequence[int], limits: Limits) -> list[str]:
    """The distinct ``solvers``, checked: at least one, and at most ``limits.cells`` (solver, NFE) cells."""
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
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        if not part.isdigit() or not 1 <= int(part) <= limit:
            raise UsageError(f"NFE {part!r} is not valid; give whole numbers from 1 to {limit}, e.g. 5,10")
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


@dataclass
class CellResult:
    cell: Cell
    folder: Path
    summary: dict[str, Any]
    images: list[np.ndarray] = field(repr=False)  # uint8 [H, W, C] as saved

    @cached_property
    def tile(self):
        """The cell's images as one picture (``tile``), made once for the grid and the slider."""
        return tile(self.images)

    @cached_property
    def tile_uri(self) -> str:
        return _data_uri(self.tile)

    @property
    def caption(self) -> str:
        s = self.summary
        nfe = s.get("nfe_per_sample", s.get("nfe"))
        text = f"{self.cell.row} · NFE {nfe} · {s['wall_time_s']:.2f} s"
        compute = s.get("compute") or {}
        if "block_fraction" in compute and compute["block_fraction"] < 1:
            text += f" · {compute['block_fraction']:.0%} blocks"
        if "reward_mean" in s:
            text += f" · reward {s['reward_mean']:.2f}"
        return text


def _conditioning(model: str, class_label: int | None, prompt: str | None, guidance: float) -> dict[str, Any]:
    return {"model": model or DEFAULT_MODEL, "class_label": class_label, "prompt": prompt or None,
            "guidance_scale": float(guidance)}


def compare_cells(model: str, solvers: Sequence[str], nfes: str | Sequence[int], seeds: str, *,
                  class_label: int | None = None, prompt: str | None = None, guidance: float = 1.0,
                  limits: Limits = Limits()) -> list[Cell]:
    """Rows = solvers, columns = NFEs, the same seeds in every cell; all checked before anything runs."""
    from ..sampling import check_solver_nfe

    nfes = parse_nfes(nfes, limits.nfe) if isinstance(nfes, str) else tuple(nfes)
    seeds = parse_seeds(seeds, limits.images)
    solvers = _solver_grid(solvers, nfes, limits)
    common = _conditioning(model, class_label, prompt, guidance)
    cells = []
    for s in solvers:
        for n in nfes:
            check_solver_nfe(common["model"], s, n)
            cells.append(Cell(s, f"NFE {n}", _sample_config(common, seeds, solver=s, nfe=n)))
    return cells


def _sample_config(common: dict[str, Any], seeds: tuple[int, int], **kwargs):
    from ..sampling import SampleConfig

    return SampleConfig(**common, seed=seeds[0], num=seeds[1], **kwargs)


def s3_cells(model: str, nfe: int, seeds: str, baseline: str, schedule_file: str | None = None,
             limits: Limits = Limits()) -> list[Cell]:
    """The shipped (or an uploaded) S3 schedule next to a baseline solver at the same NFE."""
    from ..sampling import check_solver_nfe
    from ..usf import SolverSchedule

    seeds = parse_seeds(seeds, limits.images)
    common = _conditioning(model, None, None, 1.0)
    if schedule_file:
        nfe = SolverSchedule.load(schedule_file).nfe
        s3 = Cell("schedule", f"NFE {nfe}", _sample_config(common, seeds, solver="usf", nfe=nfe,
                                                             schedule=str(schedule_file)))
    else:
        nfe = int(nfe)
        check_solver_nfe(common["model"], "s3", nfe)
        s3 = Cell("s3", f"NFE {nfe}", _sample_config(common, seeds, solver="s3", nfe=nfe))
    check_solver_nfe(common["model"], baseline, nfe)
    return [s3, Cell(baseline, f"NFE {nfe}", _sample_config(common, seeds, solver=baseline, nfe=nfe))]


ALIGN_REWARDS = re.compile(r"class:\d|even|odd")  # no module:function from a shared app


def align_cells(method: str, reward: str, budget: int, num: int, nfe: int, lam: float, *, model: str = "digits",
                seed: int = 0, limits: Limits = Limits()) -> list[Cell]:
    """One tree-search (or baseline) run: ``num`` samples of p(x) exp(lambda r(x)) for ``budget`` NFE."""
    from ..align import AlignConfig

    if not ALIGN_REWARDS.fullmatch(reward or ""):
        raise UsageError(f"reward {reward!r} is not offered here; valid: class:0 .. class:9, even, odd")
    config = AlignConfig(method=method, reward=reward, budget=_count("budget", budget, limits.budget,
                                                                     " network evaluations"),
                         num=_count("samples", num, limits.images), nfe=_count("chain NFE", nfe, limits.nfe),
                         lam=float(lam), model=model, seed=int(seed))
    return [Cell(method, reward, config)]


def skipping_cells(model: str, solver: str, nfe: int, seeds: str, *, exit_threshold: str | None = None,
                   cache: str | None = None, class_label: int | None = None,
                   limits: Limits = Limits()) -> list[Cell]:
    """The full network next to early exit (``exit_threshold``) or a cache, same solver, NFE and seeds."""
    from ..sampling import check_solver_nfe

    nfe = _count("NFE", nfe, limits.nfe)
    seeds = parse_seeds(seeds, limits.images)
    common = _conditioning(model, class_label, None, 1.0)
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
    from ..cascade import CascadeSpec
    from ..sampling import check_solver_nfe

    seeds = parse_seeds(seeds, limits.images)
    if not (stages or "").strip():
        raise UsageError("give cascade stages, e.g. 8:20,16:2")
    spec = CascadeSpec.parse(stages, cascade_from, None, None, None)
    if spec.nfe > limits.nfe:
        raise UsageError(f"the cascade spends {spec.nfe} NFE; at most {limits.nfe}")
    check_solver_nfe(single_model, solver, spec.nfe)
    return [Cell(f"cascade {spec.label()}", f"NFE {spec.nfe}",
                 _sample_config(_conditioning(model, None, None, 1.0), seeds, solver=solver, nfe=None,
                                cascade=stages, cascade_from=cascade_from)),
            Cell(f"{single_model} single resolution", f"NFE {spec.nfe}",
                 _sample_config(_conditioning(single_model, None, None, 1.0), seeds, solver=solver,
                                nfe=spec.nfe))]


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


def run_cells(cells: Sequence[Cell], folder: str | Path, pool: ModelPool, *,
              on_progress: Callable[[float, str], None] | None = None,
              cancelled: Callable[[], bool] | None = None) -> Iterator[CellResult]:
    """Run ``cells`` in order, yielding each result as it is done. ``on_progress(fraction, text)`` follows the
    solver steps; once ``cancelled()`` is true the run stops at the next step with ``Cancelled``."""
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
                summary = run_sample(config, out, progress=False, model=model, on_progress=tick)
        yield CellResult(cell, out, summary, _read_pngs(out, summary["images"]))


def _read_pngs(folder: Path, names: Sequence[str]) -> list[np.ndarray]:
    from PIL import Image

    arrays = []
    for name in names:
        with Image.open(folder / name) as im:
            arrays.append(np.array(im.convert("RGB")))
    return arrays


def tile(images: Sequence[np.ndarray], columns: int = 4, min_side: int = 64, max_width: int = 512):
    """The images of one cell side by side (nearest-neighbour upscaled so small images stay crisp)."""
    from PIL import Image

    h, w = images[0].shape[:2]
    scale = max(1, -(-min_side // max(h, w)))
    cols = min(columns, len(images))
    rows = -(-len(images) // cols)
    gap = 2
    sheet = Image.new("RGB", (cols * (w * scale + gap) - gap, rows * (h * scale + gap) - gap), "white")
    for k, a in enumerate(images):
        r, c = divmod(k, cols)
        sheet.paste(Image.fromarray(a).resize((w * scale, h * scale), Image.NEAREST),
                    (c * (w * scale + gap), r * (h * scale + gap)))
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
    images and caption, pending ones a placeholder."""
    from html import escape

    rows = list(dict.fromkeys(c.row for c in cells))
    cols = list(dict.fromkeys(c.column for c in cells))
    done = {(r.cell.row, r.cell.column): r for r in results}
    head = "".join(f"<th>{escape(c)}</th>" for c in cols)
    body = []
    for row in rows:
        tds = []
        for col in cols:
            r = done.get((row, col))
            if r is None:
                tds.append('<td class="pending">…</td>' if any(c.row == row and c.column == col for c in cells)
                           else "<td></td>")
                continue
            tds.append(f'<td><figure class="cell"><img alt="{escape(r.caption)}" '
                       f'src="{r.tile_uri}"/><figcaption>{escape(r.caption)}</figcaption>'
                       f'</figure></td>')
        body.append(f"<tr><th>{escape(row)}</th>{''.join(tds)}</tr>")
    return (f'<table class="sb-grid"><thead><tr><th></th>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
            f"</table>")


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
    config = EvalConfig(model=model, solvers=tuple(solvers), nfes=nfe_list, num=num, metrics=("fid", "kid"),
                        shard_size=min(250, num))
    return run_eval(config, folder, device=device, db=db, progress=progress)
