"""The app's callbacks at the library level: validation, limits, cells equal to ``sample`` runs, cancel, isolation of
concurrent requests, downloads, results view. The browser drives the served app in test_app_browser.py."""

import json
import re
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from samplebench.app import core
from samplebench.errors import UsageError
from samplebench.results import plot_runs
from samplebench.sampling import SampleConfig, run_sample


@pytest.fixture(scope="module")
def pool():
    return core.ModelPool()


def test_parse_seeds_and_nfes():
    assert core.parse_seeds("0-7", 16) == tuple(range(8))
    assert core.parse_seeds(" 5 ", 16) == (5,)
    assert core.parse_seeds("3 - 4", 16) == (3, 4)
    assert core.parse_seeds("42,1234, 7-8", 16) == (42, 1234, 7, 8)
    assert core.parse_nfes("5, 10,5", 250) == (5, 10)
    for text, limit, message in [("a", 16, "not valid"), ("0-16", 16, "at most 16"), ("7-3", 16, "backwards"),
                                 ("-1", 16, "not valid"), ("", 16, "not valid"), ("3,3", 16, "repeat"),
                                 ("0-9,20-29", 16, "at most 16")]:
        with pytest.raises(UsageError, match=message):
            core.parse_seeds(text, limit)
    for text, message in [("0", "'0' is not valid"), ("251", "'251'"), ("5,x", "'x'"), ("2.5", "'2.5'"),
                          (" , ", "at least one NFE")]:
        with pytest.raises(UsageError, match=message):
            core.parse_nfes(text, 250)


def test_compare_cells_grid_and_errors():
    cells = core.compare_cells("digits", ["ddim", "dpmpp-2m"], "5,10", "2-5")
    assert [(c.row, c.column) for c in cells] == [("ddim", "NFE 5"), ("ddim", "NFE 10"), ("dpmpp-2m", "NFE 5"),
                                                  ("dpmpp-2m", "NFE 10")]
    assert {(c.config.seed, c.config.num) for c in cells} == {(2, 4)}  # the same seeds in every cell
    assert [c.config.nfe for c in cells] == [5, 10, 5, 10]
    limits = core.Limits(cells=3)
    for args, message in [
        ((["ddim", "euler"], "5,10"), "4 cells; at most 3"),
        (([], "5"), "at least one solver"),
        ((["heun"], "5"), "heun.*exactly 5 NFE"),
        ((["nope"], "5"), "unknown solver 'nope'"),
        ((["s3"], "12"), "no S3 schedule for model 'digits' at --nfe 12"),
    ]:
        with pytest.raises(UsageError, match=message):
            core.compare_cells("digits", *args, "0-3", limits=limits)


def test_method_cells_validate():
    with pytest.raises(UsageError, match="reward 'os:system' is not offered here"):
        core.align_cells("dts", "os:system", 100, 4, 20, 1.0)
    with pytest.raises(UsageError, match="budget 60000"):
        core.align_cells("dts", "class:3", 60_000, 4, 20, 1.0)
    with pytest.raises(UsageError, match="--budget 10 is below one rollout"):
        core.align_cells("dts", "even", 10, 4, 20, 1.0)
    with pytest.raises(UsageError, match="exit threshold .* or a cache"):
        core.skipping_cells("digits", "ddim", 10, "0-3")
    with pytest.raises(UsageError, match="deepcache"):
        core.skipping_cells("digits", "ddim", 10, "0-3", cache="deepcache:x")
    with pytest.raises(UsageError, match="cascade stages"):
        core.cascade_cells("digits-lowdiff", " ", None, "0-3", "ddim")
    with pytest.raises(UsageError, match="'8:x' is not valid"):
        core.cascade_cells("digits-lowdiff", "8:x", None, "0-3", "ddim")
    cells = core.cascade_cells("digits-lowdiff", "8:20,16:2", None, "0-3", "dpmpp-2m")
    assert [c.config.model for c in cells] == ["digits-lowdiff", "digits"]
    assert cells[1].config.nfe == 22


def _pngs(folder, names):
    return [(folder / n).read_bytes() for n in names]


def test_cells_are_sample_runs(pool, tmp_path):
    """A cell writes exactly what ``sample`` writes for its settings: the same PNG bytes (settings inside)."""
    cells = core.compare_cells("digits", ["ddim", "dpmpp-2m"], "4,6", "3-6")
    progress = []
    results = list(core.run_cells(cells, tmp_path / "app", pool, on_progress=lambda f, text: progress.append(f)))
    assert [r.cell for r in results] == cells
    assert progress == sorted(progress) and progress[-1] == pytest.approx(1.0)
    for r in results:
        c = r.cell.config
        direct = run_sample(SampleConfig(model="digits", solver=c.solver, nfe=c.nfe, seed=3, num=4),
                            tmp_path / f"direct-{c.solver}-{c.nfe}", progress=False)
        assert _pngs(r.folder, r.summary["images"]) == _pngs(tmp_path / f"direct-{c.solver}-{c.nfe}",
                                                            direct["images"])
        assert r.summary["seeds"] == [3, 4, 5, 6] and r.summary["nfe_per_sample"] == c.nfe
        assert r.caption.startswith(f"{c.solver} · NFE {c.nfe} · ")
        with Image.open(r.folder / r.summary["images"][0]) as im:
            settings = json.loads(im.text["samplebench"])
        assert (settings["solver"], settings["nfe"], settings["seed"]) == (c.solver, c.nfe, 3)
    html = core.grid_html(cells, results)
    assert html.count("<figure") == 4 and html.count("<tr>") == 3  # header + one row per solver
    z = zipfile.ZipFile(core.zip_folder(tmp_path / "app"))
    names = z.namelist()
    assert sum(re.fullmatch(r"\d\d-.*/\d{5}\.png", n) is not None for n in names) == 16
    assert sum(n.endswith("/summary.json") for n in names) == 4 and sum(n.endswith("/grid.png") for n in names) == 4
    first = results[0]
    name = f"{first.folder.name}/{first.summary['images'][0]}"
    assert z.read(name) == (first.folder / first.summary["images"][0]).read_bytes()  # not re-encoded
    numbers = core.cell_numbers(results[0].images, "digits")
    assert numbers["n"] == 4 and numbers["fid"] is None  # 4 images: no FID, whose bias would swamp everything
    assert numbers["ref"] == "digits-train" and core.cell_numbers(results[0].images, "someone/else") is None
    numbered = core.CellResult(results[0].cell, results[0].folder, results[0].summary, results[0].images, numbers)
    assert f"FID needs {core.FID_MIN_IMAGES}+ images" in numbered.caption and "ms/image" in numbered.caption
    assert numbers["kid_low"] <= numbers["kid"] <= numbers["kid_high"] and f"KID {numbers['kid']:.3f} [" in \
        numbered.caption
    many = core.cell_numbers([results[0].images[k % 4] for k in range(core.FID_MIN_IMAGES)], "digits")
    assert many["fid_low"] <= many["fid"] <= many["fid_high"]
    assert numbered.label == f"{results[0].cell.row} · {results[0].cell.column}"  # the two-cell choices: short
    skipped = {**results[0].summary, "compute": {"block_fraction": 0.5, "flop_fraction": 0.4}}
    assert "50% blocks · 40% FLOPs" in core.CellResult(results[0].cell, results[0].folder, skipped,
                                                        results[0].images).caption
    picture = Image.open(core.comparison_image(cells, results, tmp_path / "comparison.png"))
    tile = results[0].tile
    assert picture.width > 2 * tile.width and picture.height > 2 * tile.height  # 2 x 2 tiles and their labels
    assert "command</summary><code>samplebench sample --model digits --solver ddim --nfe 4 --num 4 --seed 3" in html


def test_grid_shows_pending_cells(pool, tmp_path):
    cells = core.compare_cells("gaussian", ["ddim", "euler"], "3,4", "0-1")
    done = [next(core.run_cells(cells, tmp_path, pool))]
    html = core.grid_html(cells, done)
    assert html.count("<figure") == 1 and html.count('class="pending"') == 3


def test_cancel_stops_at_the_next_step_and_writes_nothing(pool, tmp_path):
    cells = core.compare_cells("digits", ["ddim"], "10,20", "0-3")
    steps = []

    def cancelled():
        steps.append(1)
        return len(steps) > 3

    run = core.run_cells(cells, tmp_path, pool, cancelled=cancelled)
    with pytest.raises(core.Cancelled):
        next(run)
    assert len(steps) == 4
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-written


def test_pool_lends_an_instance_to_one_request_at_a_time():
    pool = core.ModelPool(models=2, per_model=1)
    with pool.borrow("gaussian") as a:
        pass
    with pool.borrow("gaussian") as b:
        assert b is a  # an idle instance is reused
        with pool.borrow("gaussian") as c:
            assert c is not b  # a held instance is never lent again
    for name in ("digits-gmm", "digits"):
        with pool.borrow(name):
            pass
    assert [k[0] for k in pool._idle] == ["digits-gmm", "digits"]  # least recently used evicted


def test_concurrent_requests_get_their_own_results(tmp_path):
    """Three requests on the same model at once (one swapping in DeepCache's stubs for a call at a time) give what
    each gives alone."""
    pool = core.ModelPool()
    requests = {
        "cache": core.skipping_cells("digits", "dpmpp-2m", 20, "0-7", cache="deepcache:2"),
        "plain": core.compare_cells("digits", ["ddim", "dpmpp-2m"], "20", "0-7"),
        "s3": core.s3_cells("digits", 6, "0-7", "ddim"),
    }
    alone = {k: [r.images for r in core.run_cells(cells, tmp_path / f"alone-{k}", pool)]
             for k, cells in requests.items()}
    together, errors = {}, []

    def worker(k):
        try:
            together[k] = [r.images for r in core.run_cells(requests[k], tmp_path / f"together-{k}", pool)]
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in requests:
        for a, b in zip(alone[k], together[k]):
            assert all(np.array_equal(x, y) for x, y in zip(a, b)), k


def test_align_cell_counts_the_budget(pool, tmp_path):
    cells = core.align_cells("best-of-n", "class:3", 120, 2, 20, 1.0)
    (r,) = core.run_cells(cells, tmp_path, pool)
    assert r.summary["nfe_total"] == 120 and r.summary["nfe_per_sample"] == 60 and len(r.images) == 2
    assert "reward" in r.caption and "NFE 120" in r.caption


def test_results_table_plot_and_eval(tmp_path):
    db = tmp_path / "runs.db"
    with pytest.raises(UsageError, match="no runs"):
        plot_runs(core.query_runs(db), tmp_path / "fid.png")
    with pytest.raises(UsageError, match="samples 5000"):
        core.start_eval("digits", ["ddim"], "4", 5000, tmp_path / "job", db)
    rows = core.start_eval("gaussian", ["ddim", "euler"], "3", 50, tmp_path / "job", db)
    assert {(r["solver"], r["nfe"]) for r in rows} == {("ddim", 3), ("euler", 3)}
    table = core.results_table(core.query_runs(db, model="gaussian", solver="", extractor=None))
    assert [r["solver"] for r in table] == ["euler", "ddim"]  # newest first
    assert table[0]["fid"] == pytest.approx(rows[1]["fid"])
    assert table[0]["fid_low"] < table[0]["fid"] < table[0]["fid_high"] and table[0]["seeds"] == "0-49"
    assert core.results_table(core.query_runs(db, model="digits")) == []
    assert plot_runs(core.query_runs(db, model="gaussian"), tmp_path / "fid.png").stat().st_size > 1000


def test_guarded_turns_errors_into_one_line_messages():
    import gradio as gr

    from samplebench.app.ui import INTERNAL_ERROR, guarded

    @guarded
    def bad_input():
        raise UsageError("NFE '0' is not valid")

    @guarded
    def broken():
        raise RuntimeError("line one\nline two")

    @guarded
    def gen():
        yield 1
        raise core.Cancelled

    with pytest.raises(gr.Error) as e:
        bad_input()
    assert e.value.message == "NFE '0' is not valid"
    with pytest.raises(gr.Error) as e:
        broken()
    assert str(e.value.message) == INTERNAL_ERROR  # no Python message reaches the browser
    assert list(gen()) == [1]  # a cancelled run ends quietly


def test_models_load_from_several_threads_at_once():
    """Loading patches nn.Module process-wide (accelerate's init_empty_weights); loads from two requests at once
    must not leave it patched."""
    import torch

    from samplebench.models import load_model
    from samplebench.models.classifier import load_classifier

    loaders = [lambda: load_model("digits"), lambda: load_model("digits-dit"), load_classifier] * 3
    threads = [threading.Thread(target=f) for f in loaders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
    model = load_model("digits")
    assert all(p.device.type == "cpu" for p in model.pipe.unet.parameters())


def test_xyz_cells_put_any_setting_on_any_axis():
    cells = core.xyz_cells("digits", {"solver": "ddim", "nfe": 6, "seeds": "0-1", "guidance": 1.0},
                           ("time grid", "logsnr,karras"), ("solver", "ddim,dpmpp-3m"), ("seeds", "42,1234|7"))
    assert len(cells) == 8 and {c.panel for c in cells} == {"seeds 42,1234", "seeds 7"}
    assert {c.column for c in cells} == {"logsnr", "karras"} and {c.row for c in cells} == {"ddim", "dpmpp-3m"}
    first = cells[0].config
    assert first.time_grid == "logsnr" and first.solver == "ddim" and first.nfe == 6 and first.seed_list() == [42, 1234]
    rho = core.xyz_cells("digits", {"nfe": 5}, ("skip rho", "1.0,0.8"))
    assert [c.config.skip_rho for c in rho] == [1.0, 0.8] and [c.column for c in rho] == ["skip rho 1.0",
                                                                                         "skip rho 0.8"]
    for x, y, message in [(("NFE", "5"), ("NFE", "6"), "repeats one"), (("colour", "red"), None, "axis 'colour'"),
                          (("NFE", "1,2,3,4,5"), ("guidance", "1,2,3,4"), "20 cells; at most 16"),
                          (("time grid", "wiggly"), None, "time grid 'wiggly'"), (("NFE", ""), None, "its values")]:
        with pytest.raises(UsageError, match=message):
            core.xyz_cells("digits", {"nfe": 5}, x, y)


def test_errors_speak_of_the_app_fields():
    from samplebench.app.ui import app_terms

    assert app_terms("--solver s3 needs --nfe") == '"Solver" s3 needs "NFE"'
    assert app_terms("model 'digits' is unconditional, so --guidance-scale must be 1") == \
        "model 'digits' is unconditional, so \"Guidance scale\" must be 1"
    assert app_terms("--cascade-noise must be >= 0") == '"cascade noise" must be >= 0'  # no field: plain words
    assert app_terms("a - b, x--y") == "a - b, x--y"  # only flags are rewritten


def test_the_s3_view_offers_every_embedded_model_that_ships_schedules(tmp_path):
    """The S3 tab's model list follows what ships: each embedded model with an ``s3/`` folder, the flow model
    among them, and no model without one (a schedule it cannot load)."""
    import gradio as gr

    from samplebench.app.ui import App, build
    from samplebench.models.embedded import EMBEDDED
    from samplebench.usf.shipped import s3_nfes

    app = App(db=str(tmp_path / "runs.db"))
    try:
        demo = build(app)
        (tab,) = [b for b in demo.blocks.values() if isinstance(b, gr.Tab) and b.label == "S3 schedules"]

        def within(block):
            for child in getattr(block, "children", []):
                yield child
                yield from within(child)

        (model,) = [c for c in within(tab) if isinstance(c, gr.Dropdown) and c.label == "Model"]
        offered = [choice for choice, _ in model.choices]
    finally:
        app.close()
    assert offered == [m for m in EMBEDDED if s3_nfes(m)]
    assert {"digits", "digits-gmm", "digits-dit", "digits-flow"} <= set(offered) and "gaussian" not in offered
