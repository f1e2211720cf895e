"""The Gradio layout: compare, methods and results views wired to ``core`` (every callback is a library call)."""

from __future__ import annotations

import functools
import inspect
import logging
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import gradio as gr
from gradio import utils as gradio_utils

from ..errors import UsageError
from ..models.embedded import DEFAULT_MODEL, EMBEDDED
from ..results import plot_runs
from ..samplers import solver_names
from ..usf.shipped import s3_nfes
from . import core

log = logging.getLogger("samplebench.app")

CSS = """
.sb-grid { border-collapse: collapse; }
.sb-grid th { padding: 4px 10px; font-weight: 600; text-align: center; }
.sb-grid tbody th { text-align: right; white-space: nowrap; }
.sb-grid td { padding: 4px; vertical-align: top; }
.sb-grid td.pending { color: #999; text-align: center; min-width: 120px; }
.sb-grid figure { margin: 0; }
.sb-grid img { image-rendering: pixelated; max-width: 100%; }
.sb-grid figcaption { font-size: 0.85em; text-align: center; padding-top: 2px; }
.sb-grid .sb-cmd { font-size: 0.75em; max-width: 260px; }
.sb-grid .sb-cmd code { white-space: pre-wrap; word-break: break-all; user-select: all; }
.sb-grid caption.sb-panel { font-weight: 600; text-align: left; padding: 6px 0 2px; }
.sb-grid label.sb-zoom { cursor: zoom-in; display: block; }
.sb-grid label.sb-zoom input { display: none; }
.sb-grid label.sb-zoom input:checked + img { position: fixed; inset: 0; margin: auto; z-index: 1000;
  width: min(90vw, 90vh); height: auto; max-width: none; background: #fff; cursor: zoom-out;
  box-shadow: 0 0 0 100vmax rgba(0, 0, 0, 0.6); }
"""

SOLVERS = [*solver_names(), "s3"]
GRID_COMPUTING = "Running…"
INTERNAL_ERROR = "the request failed on the server; its log has the details"


class App:
    """One app process: its database, limits, model pool and scratch folder. Requests share nothing else."""

    def __init__(self, db: str | None = None, limits: core.Limits = core.Limits(), device: str = "cpu",
                 keep_s: float = 3600):
        self.db, self.limits, self.keep_s = db, limits, keep_s
        self.any_model = limits.models is None
        self.models = list(EMBEDDED) if limits.models is None else list(limits.models)
        self.pool = core.ModelPool(device=device)
        self.scratch = Path(tempfile.mkdtemp(prefix="samplebench-app-"))
        self._cancel: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def offered(self, *preferred: str) -> list[str]:
        """The models of a view's dropdown: the embedded ones it suits (``preferred``), then the operator's."""
        return [m for m in preferred if m in self.models] + [m for m in self.models if m not in EMBEDDED]

    def request_folder(self) -> Path:
        """A fresh folder for one request; folders older than ``keep_s`` are removed."""
        now = time.time()
        for old in self.scratch.iterdir():
            if now - old.stat().st_mtime > self.keep_s:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.scratch))

    def cancel_flag(self, request: gr.Request | None, new: bool = False) -> threading.Event:
        key = getattr(request, "session_hash", None) or "local"
        with self._lock:
            if new or key not in self._cancel:
                self._cancel[key] = threading.Event()
            return self._cancel[key]

    def cancel(self, request: gr.Request) -> None:
        """The Cancel buttons: the session's running request stops at its next solver step."""
        self.cancel_flag(request).set()

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


# The app's field for each command-line flag a library message may name, so that errors speak of the page.
FIELDS = {"nfe": "NFE", "solver": "Solver", "seed": "Seeds", "seeds": "Seeds", "num": "Samples",
          "guidance-scale": "Guidance scale", "class-label": "Class label", "prompt": "Prompt", "model": "Model",
          "time-grid": "Time grid", "exit-threshold": "Exit threshold", "cache": "Cache", "cascade": "Stages",
          "cascade-from": "t* of later stages", "schedule": "schedule JSON", "skip-rho": "Skip-Tuning rho",
          "budget": "Budget (NFE)", "lambda": "λ", "reward": "Reward", "chain-nfe": "Chain NFE"}


def app_terms(message: str) -> str:
    """A library message in the app's words: each ``--flag`` becomes the label of its field, in quotes."""
    return re.sub(r"(?<![\w-])--([a-z][a-z0-9-]*)",
                  lambda m: f'"{FIELDS.get(m.group(1), m.group(1).replace("-", " "))}"', message)


def _message(e: Exception) -> str:
    return app_terms((str(e).strip().splitlines() or [type(e).__name__])[0])


def guarded(fn=None, *, status: tuple[int, int] | None = None):
    """Bad input -> its one-line message in the UI; anything else -> a one-line error there and the trace in the
    server log; a cancelled run ends quietly. ``status=(index, count)``: the callback's outputs hold a status line
    at ``index`` of ``count``; an error is written there instead of a toast, so it is said once and stays on the
    page until the next run (the callback runs as a generator for that)."""
    if fn is None:
        return functools.partial(guarded, status=status)

    def convert(e: Exception):
        if isinstance(e, gr.Error):
            return e
        if isinstance(e, UsageError):
            return gr.Error(_message(e), print_exception=False)
        log.exception("callback %s failed", fn.__name__)  # the details stay in the operator's log
        return gr.Error(INTERNAL_ERROR, print_exception=False)

    def on_page(error: gr.Error):
        """The outputs of a failed run: only the status line changes, to the error."""
        index, count = status
        updates = [gr.skip()] * count
        updates[index] = f"**Error:** {error.message}"
        return updates[0] if count == 1 else tuple(updates)

    if status is None and not inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as e:
                raise convert(e) from None
        return call

    steps = fn if inspect.isgeneratorfunction(fn) else (lambda *a, **k: iter([fn(*a, **k)]))

    @functools.wraps(fn)
    def gen(*args, **kwargs):
        try:
            yield from steps(*args, **kwargs)
        except core.Cancelled:
            return
        except Exception as e:
            error = convert(e)
            if status is not None:  # said once, on the status line: the event still fails (API callers see an
                yield on_page(error)  # error), but without the toast
                error.visible = False
            raise error from None
    return gen


def _text(value: Any, name: str, limit: int = 200) -> str:
    """A text field's value as sent, checked (a request may bypass the page)."""
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise UsageError(f"{name} must be text of at most {limit} characters")
    return value


def build(app: App) -> gr.Blocks:
    limits = app.limits
    models = app.models

    def run_grid(cells: list[core.Cell], request: gr.Request | None, progress: gr.Progress, numbers: bool = False):
        """Yields (grid html, status, zip or None, results) as the cells finish; ``numbers``: a quick FID per
        cell."""
        flag = app.cancel_flag(request, new=True)
        folder = app.request_folder()
        results: list[core.CellResult] = []
        yield core.grid_html(cells, results), f"{GRID_COMPUTING} 0 of {len(cells)} cells", None, results
        progress(0.0, desc="loading the model")
        try:
            for r in core.run_cells(cells, folder, app.pool, cancelled=flag.is_set,
                                    on_progress=lambda f, text: progress(f, desc=text)):
                results.append(r)
                status = f"{GRID_COMPUTING} {len(results)} of {len(cells)} cells"
                yield core.grid_html(cells, results), status, None, results
            if numbers:  # the images are on the page first; the numbers follow, cell by cell
                for k, r in enumerate(results):
                    if flag.is_set():
                        raise core.Cancelled
                    progress(k / len(results), desc=f"numbers of {r.cell.row} · {r.cell.column}")
                    r.numbers = core.cell_numbers(r.images, r.summary["model"])
                    yield core.grid_html(cells, results), f"Numbers: {k + 1} of {len(results)} cells", None, \
                        results
        except core.Cancelled:
            yield core.grid_html(cells, results), f"Cancelled after {len(results)} of {len(cells)} cells", \
                None, results
            return
        total = sum(r.summary["wall_time_s"] for r in results)
        status = f"Done: {len(cells)} cell{'s' * (len(cells) > 1)}, {total:.2f} s sampling"
        picture = core.comparison_image(cells, results, folder / "comparison.png")
        yield core.grid_html(cells, results), status, [str(core.zip_folder(folder)), str(picture)], results

    def slider_choices(results):
        labels = [r.label for r in results]
        return (gr.Dropdown(choices=labels, value=labels[0] if labels else None),
                gr.Dropdown(choices=labels, value=labels[-1] if labels else None))

    def slide(results, a, b):
        found = {r.label: r for r in results or []}
        if a in found and b in found:
            return found[a].tile, found[b].tile
        return None

    with gr.Blocks(title="samplebench") as demo:
        gr.Markdown("# samplebench\nSample from diffusion models with fast solvers; compare them on the same seeds.")
        with gr.Tab("Compare", id="compare"):
            with gr.Row():
                model = gr.Dropdown(models, value=DEFAULT_MODEL, allow_custom_value=app.any_model, label="Model",
                                    info="the models this app offers" + (
                                        "; or a diffusers hub id or a server folder" if app.any_model else ""))
                seeds = gr.Textbox("0-7", label="Seeds", info=f"e.g. 0-7 or 42,1234; at most {limits.images} images",
                                   elem_id="compare-seeds")
                solver = gr.Dropdown(SOLVERS, value="dpmpp-2m", label="Solver", info="unless an axis sets it")
                nfe = gr.Number(10, precision=0, label="NFE", info=f"unless an axis sets it; 1 to {limits.nfe}")
            axes = list(core.AXES)
            with gr.Row():
                x_axis = gr.Dropdown(axes, value="NFE", label="X axis (columns)", elem_id="compare-x-axis")
                x_values = gr.Textbox("5,10", label="X values", elem_id="compare-x",
                                      info="comma-separated; seed sets, prompts and exit thresholds separated by |")
                y_axis = gr.Dropdown(["none", *axes], value="solver", label="Y axis (rows)", elem_id="compare-y-axis")
                y_values = gr.Textbox("ddim,dpmpp-2m", label="Y values", elem_id="compare-y")
                z_axis = gr.Dropdown(["none", *axes], value="none", label="Z axis (one grid each)",
                                     elem_id="compare-z-axis")
                z_values = gr.Textbox("", label="Z values", elem_id="compare-z")
            with gr.Accordion("Conditioning", open=False):
                with gr.Row():
                    class_label = gr.Dropdown(["auto", *map(str, range(10))], value="auto", label="Class label",
                                              info="class-conditional models; auto = seed mod classes")
                    guidance = gr.Slider(1.0, limits.guidance, value=1.0, step=0.5, label="Guidance scale")
                    prompt = gr.Textbox("", label="Prompt", info="text-to-image models")
            numbers = gr.Checkbox(False, label="Numbers per cell, after the images: time per image and the KID of the "
                                               "cell's own images with its 95% interval (unbiased at any count); "
                                               f"FID from {core.FID_MIN_IMAGES} images (below, its bias swamps "
                                               "the differences: use the Results tab's evaluation)",
                                  elem_id="compare-numbers")
            with gr.Row():
                run = gr.Button("Run", variant="primary", elem_id="compare-run")
                stop = gr.Button("Cancel", elem_id="compare-cancel")
            status = gr.Markdown(elem_id="compare-status")
            grid = gr.HTML(elem_id="compare-grid")
            download = gr.File(label="Every image as PNG with its settings, and summary.json (zip); the whole "
                                     "comparison as one labelled PNG", file_count="multiple")
            results = gr.State([])
            with gr.Accordion("Compare two cells", open=True):
                with gr.Row():
                    cell_a = gr.Dropdown([], label="Left", elem_id="compare-left")
                    cell_b = gr.Dropdown([], label="Right", elem_id="compare-right")
                slider = gr.ImageSlider(label="Left | right", type="pil", format="png", max_height=360)

            @guarded(status=(1, 4))
            def compare(model, seeds, solver, nfe, x_axis, x_values, y_axis, y_values, z_axis, z_values,
                        class_label, guidance, prompt, numbers, request: gr.Request, progress=gr.Progress()):
                base = {"solver": solver, "nfe": nfe, "seeds": _text(seeds, "seeds"), "class_label": class_label,
                        "guidance": guidance, "prompt": prompt}  # checked in core
                cells = core.xyz_cells(model, base, (x_axis, _text(x_values, "X values", 1000)),
                                       (y_axis, _text(y_values, "Y values", 1000)),
                                       (z_axis, _text(z_values, "Z values", 1000)), limits=limits)
                yield from run_grid(cells, request, progress, numbers=numbers is True)

            inputs = [model, seeds, solver, nfe, x_axis, x_values, y_axis, y_values, z_axis, z_values, class_label,
                      guidance, prompt, numbers]
            busy = run.click(lambda: gr.Button(interactive=False), None, run, queue=False)  # no second run meanwhile
            event = busy.then(compare, inputs, [grid, status, download, results], concurrency_id="sampling",
                              show_progress_on=status)  # one progress text, above the grid (not over it)
            enable = lambda: gr.Button(interactive=True)  # noqa: E731
            event.success(enable, None, run, queue=False)
            event.failure(enable, None, run, queue=False)
            event.success(slider_choices, results, [cell_a, cell_b]).then(slide, [results, cell_a, cell_b], slider)
            stop.click(app.cancel, None, None, queue=False)
            for dropdown in (cell_a, cell_b):
                dropdown.input(slide, [results, cell_a, cell_b], slider)

        with gr.Tab("Methods", id="methods"):
            method_views(app, run_grid)

        with gr.Tab("Results", id="results"):
            results_view(app, demo)
    return demo


def _method_outputs(app: App):
    stop = gr.Button("Cancel", size="sm")
    stop.click(app.cancel, None, None, queue=False)
    status = gr.Markdown()
    grid = gr.HTML()
    download = gr.File(label="PNGs with settings, and summary.json (zip); the comparison as one PNG",
                       file_count="multiple")
    return grid, status, download, gr.State([])


def method_views(app: App, run_grid) -> None:
    limits = app.limits

    with gr.Tab("S3 schedules"):
        gr.Markdown("**S3**: a per-step solver schedule found by search (USF, Liu et al. 2024), next to a baseline "
                    "solver at the same NFE. Use the model's shipped schedule or upload one from "
                    "`samplebench search`.")
        with gr.Row():
            model = gr.Dropdown(app.offered(*(m for m in EMBEDDED if s3_nfes(m))), value="digits",
                                allow_custom_value=app.any_model, label="Model")
            nfe = gr.Dropdown(list(range(3, 11)), value=5, label="NFE (shipped schedule)")
            baseline = gr.Dropdown(solver_names(), value="dpmpp-2m", label="Baseline solver")
            seeds = gr.Textbox("0-7", label="Seeds")
        upload = gr.File(label="Or a schedule JSON (replaces the shipped one)", file_types=[".json"],
                         type="filepath")
        go = gr.Button("Run S3", variant="primary")
        outputs = _method_outputs(app)

        @guarded(status=(1, 4))
        def s3(model, nfe, baseline, seeds, upload, request: gr.Request, progress=gr.Progress()):
            cells = core.s3_cells(model, nfe, _text(seeds, "seeds"), baseline, upload, limits=limits,
                                  upload_root=gradio_utils.get_upload_folder())
            yield from run_grid(cells, request, progress, numbers=True)

        go.click(s3, [model, nfe, baseline, seeds, upload], list(outputs), concurrency_id="sampling",
                 show_progress_on=outputs[1])

    with gr.Tab("Tree search (DTS)"):
        gr.Markdown("**Diffusion Tree Sampling** (Jain et al. 2025): a tree search over a DDPM chain that samples "
                    "p(x) exp(λ r(x)) and reuses every rollout; DTS* searches for the highest reward. Best-of-N and "
                    "FK steering are the baselines under the same NFE budget (every network call counts).")
        with gr.Row():
            method = gr.Dropdown(["dts", "dts-star", "best-of-n", "fk"], value="dts", label="Method")
            reward = gr.Dropdown([*(f"class:{k}" for k in range(10)), "even", "odd"], value="class:3",
                                 label="Reward", info="log-probability under the digits classifier")
            budget = gr.Number(2000, precision=0, label="Budget (NFE)", info=f"at most {limits.budget}")
        with gr.Row():
            num = gr.Slider(1, limits.images, value=8, step=1, label="Samples")
            chain = gr.Slider(5, 100, value=20, step=1, label="Chain NFE (one rollout)")
            lam = gr.Number(1.0, label="λ (inverse temperature)")
        go = gr.Button("Run tree search", variant="primary")
        outputs = _method_outputs(app)

        @guarded(status=(1, 4))
        def align(method, reward, budget, num, chain, lam, request: gr.Request, progress=gr.Progress()):
            cells = core.align_cells(method, reward, budget, num, chain, lam, limits=limits)
            yield from run_grid(cells, request, progress, numbers=True)

        go.click(align, [method, reward, budget, num, chain, lam], list(outputs), concurrency_id="sampling",
                 show_progress_on=outputs[1])

    with gr.Tab("Early exit and caching"):
        gr.Markdown("**Compute skipping**: DeeDiff early exit leaves the DiT once its uncertainty heads are "
                    "confident (`digits-dit`); DeepCache reuses a UNet's deep features between steps "
                    "(`deepcache:N`, `digits`); `fbcache:THRESHOLD` is diffusers' FirstBlockCache for transformers. "
                    "Shown next to the full network on the same seeds.")
        with gr.Row():
            model = gr.Dropdown(app.offered("digits-dit", "digits", "digits-flow"), value="digits-dit",
                                allow_custom_value=app.any_model, label="Model")
            solver = gr.Dropdown(solver_names(), value="dpmpp-2m", label="Solver")
            nfe = gr.Number(10, precision=0, label="NFE")
            seeds = gr.Textbox("0-7", label="Seeds")
        with gr.Row():
            threshold = gr.Textbox("0.9", label="Exit threshold", info="e.g. 0.9 or 0.95@0.5,0.9; empty = off")
            cache = gr.Textbox("", label="Cache", info="deepcache:3 (UNet) or fbcache:0.1; empty = off")
        go = gr.Button("Run", variant="primary")
        outputs = _method_outputs(app)

        @guarded(status=(1, 4))
        def skipping(model, solver, nfe, seeds, threshold, cache, request: gr.Request, progress=gr.Progress()):
            cells = core.skipping_cells(model, solver, nfe, _text(seeds, "seeds"),
                                        exit_threshold=_text(threshold, "exit threshold").strip() or None,
                                        cache=_text(cache, "cache").strip() or None, limits=limits)
            yield from run_grid(cells, request, progress, numbers=True)

        go.click(skipping, [model, solver, nfe, seeds, threshold, cache], list(outputs), concurrency_id="sampling",
                 show_progress_on=outputs[1])

    with gr.Tab("Cascades"):
        gr.Markdown("**LowDiff cascade**: most steps at low resolution, a few at full resolution from the upsampled "
                    "sample (`digits-lowdiff`), next to the single-resolution model at the same total NFE.")
        with gr.Row():
            model = gr.Dropdown(app.offered("digits-lowdiff", "digits"), value="digits-lowdiff",
                                allow_custom_value=app.any_model, label="Model")
            stages = gr.Textbox("8:20,16:2", label="Stages", info="RES:NFE[:SOLVER] at rising resolutions")
            start = gr.Textbox("", label="t* of later stages", info="empty = the model's own")
            solver = gr.Dropdown(solver_names(), value="dpmpp-2m", label="Solver")
            seeds = gr.Textbox("0-7", label="Seeds")
        go = gr.Button("Run cascade", variant="primary")
        outputs = _method_outputs(app)

        @guarded(status=(1, 4))
        def cascade(model, stages, start, solver, seeds, request: gr.Request, progress=gr.Progress()):
            start = _text(start, "t*")
            t_star = _float(start, "t*") if start.strip() else None
            cells = core.cascade_cells(model, _text(stages, "stages"), t_star, _text(seeds, "seeds"), solver,
                                       limits=limits)
            yield from run_grid(cells, request, progress, numbers=True)

        go.click(cascade, [model, stages, start, solver, seeds], list(outputs), concurrency_id="sampling",
                 show_progress_on=outputs[1])


def _float(text: str, name: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{name} {text!r} is not a number") from None


def _cell(value: Any) -> Any:
    return float(f"{value:.4g}") if isinstance(value, float) else value


def results_view(app: App, demo: gr.Blocks) -> None:
    limits = app.limits
    from ..results import default_db

    db = Path(app.db).expanduser().resolve() if app.db else default_db()
    gr.Markdown(f"Evaluation runs from the results database `{db}`.")
    with gr.Row():
        f_model = gr.Dropdown(["", *EMBEDDED], value="", allow_custom_value=True, label="Model")
        f_solver = gr.Dropdown(["", *SOLVERS], value="", allow_custom_value=True, label="Solver")
        f_extractor = gr.Dropdown(["", "digits", "inception"], value="", label="Features")
        refresh = gr.Button("Refresh")
    table = gr.Dataframe(headers=list(core.TABLE_COLUMNS), interactive=False, label="Runs")
    plot_note = gr.Markdown(elem_id="results-plot-note")
    plot = gr.Image(label="FID vs NFE and vs time (bars: 95% intervals; one curve per solver and sample count)",
                    type="filepath", format="png")

    with gr.Accordion("Start a small evaluation (digits features, FID and KID)", open=False):
        with gr.Row():
            e_model = gr.Dropdown(app.offered("digits", "digits-gmm", "digits-dit", "digits-flow"), value="digits",
                                  allow_custom_value=app.any_model, label="Model")
            e_solvers = gr.CheckboxGroup(SOLVERS, value=["dpmpp-2m"], label="Solvers")
            e_nfes = gr.Textbox("5,10", label="NFEs")
            e_num = gr.Slider(50, limits.eval_samples, value=250, step=50, label="Samples per run")
        e_go = gr.Button("Run evaluation", variant="primary")
        e_status = gr.Markdown()

    @guarded(status=(1, 3))
    def show(model, solver, extractor):
        rows = core.query_runs(app.db, model=_text(model, "model", 500), solver=_text(solver, "solver"),
                               extractor=_text(extractor, "features"))
        data = [[_cell(r[k]) for k in core.TABLE_COLUMNS] for r in core.results_table(rows)]
        drawn, note = core.plot_rows(rows)
        try:
            return data, note, str(plot_runs(drawn, app.request_folder() / "fid.png"))
        except UsageError as e:  # nothing to draw: say so
            return data, f"Plot: {_message(e)}", None

    @guarded(status=(0, 1))
    def evaluate(model, solvers, nfes, num, progress=gr.Progress(track_tqdm=True)):
        folder = app.request_folder() / "job"
        rows = core.start_eval(model, solvers or [], _text(nfes, "NFEs"), num, folder, app.db, limits=limits,
                               device=app.pool.device, progress=True)
        lines = [f"{r['solver']} NFE {r['nfe']}: FID {r['fid']:.3f} [{r['fid_low']:.3f}, {r['fid_high']:.3f}]"
                 for r in rows]
        return f"Done ({num} samples per run): " + "; ".join(lines)

    filters = [f_model, f_solver, f_extractor]
    refresh.click(show, filters, [table, plot_note, plot])
    demo.load(show, filters, [table, plot_note, plot])
    e_go.click(evaluate, [e_model, e_solvers, e_nfes, e_num], e_status, concurrency_id="sampling").then(
        show, filters, [table, plot_note, plot])
