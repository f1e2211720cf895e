"""The S3 search: its space (genes, mutation, crossover), the predictor, and the resumable search job."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines import save_ddpm
from samplebench.cli import main
from samplebench.errors import UsageError
from samplebench.models import AnalyticDenoiser, CountingDenoiser, load_model
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.noise import SampleGenerators
from samplebench.samplers import get_solver, make_grid
from samplebench.search.predictor import Predictor
from samplebench.search.run import SearchConfig, run_search
from samplebench.search.space import KNOWN, Space, build, crossover, encode, genes_of, known_solver, mutate
from samplebench.usf import KNOWN_SCHEDULES, SolverSchedule, usf_sample

SCHEDULE = ddpm_linear_schedule()
SPACE = Space(1.0, 1e-3, has_mean=True, num_skips=5)
GMM = load_model("digits-gmm")


@pytest.mark.parametrize("path", ["vp", "flow"])
@pytest.mark.parametrize("name", KNOWN)
def test_known_solvers_as_genes_reproduce_the_registry(name, path):
    """Stage 0 holds every expressible registry solver exactly, and its genes rebuild it (so mutations start there),
    on the DDPM path and on the flow-matching path (alpha_t = 1 - t, sigma_t = t, its shifted grid too)."""
    from samplebench.schedules import FlowMatching

    _, solver, options = KNOWN_SCHEDULES[name]
    noise = SCHEDULE if path == "vp" else FlowMatching()
    denoiser = AnalyticDenoiser(GMM.mixture, noise)
    x = SampleGenerators(range(3)).randn(GMM.sample_shape, dtype=torch.float64)
    for kind in ("logsnr", "time-quadratic") + (("flow-shift:3",) if path == "flow" else ()):
        grid = make_grid(noise, kind, 7)
        schedule = known_solver(name, grid.tolist())
        assert build(schedule.timesteps, genes_of(schedule)) == schedule
        expected = get_solver(solver)(denoiser, x.clone(), grid, **options)
        got = usf_sample(denoiser, x.clone(), schedule)
        assert ((got - expected).norm() / expected.norm()).item() < 1e-11


def test_stage_zero_holds_every_known_solver_on_every_grid_once():
    from samplebench.search.run import GRIDS, _initial

    origins = [o for o, _ in _initial(SCHEDULE, 6, 1000)]
    assert {o.split("/")[0] for o in origins} == set(KNOWN) - {"euler"}  # Euler is DDIM: a duplicate, left out
    assert {o.split("/")[1] for o in origins} == set(GRIDS) | {"logsnr+afs"}
    assert len(origins) == (len(KNOWN) - 1) * len(GRIDS) + 3
    few = [o for o, _ in _initial(SCHEDULE, 4, 1000)]  # at 4 steps 3M is 2M: it is there once, as 3M
    assert "dpmpp-3m/logsnr" in few and "dpmpp-2m/logsnr" not in few


def test_stage_zero_holds_the_learned_grids_too():
    """Every stage-0 solver on GITS and DMN grids (and LD3's where the model has it), after the fixed grids; their
    one-off cost is returned to be charged to the search."""
    from samplebench.search.run import GRIDS, STAGE0, _initial, _learned

    model = load_model("digits-gmm")
    learned, costs = _learned(model, 4)
    assert {f"{n}/{k}" for n in STAGE0 for k in ("gits", "dmn")} <= set(learned)
    assert costs["gits.json"]["network_evaluations"] == 256 * 60
    origins = [o for o, _ in _initial(model.schedule, 4, 1000, learned=learned)]
    assert any(o.endswith("/gits") for o in origins) and any(o.endswith("/dmn") for o in origins)
    fixed = [i for i, o in enumerate(origins) if o.split("/")[1] in GRIDS]
    assert max(fixed) < min(i for i, o in enumerate(origins) if o.split("/")[1] in ("gits", "dmn", "ld3"))


def test_stage_zero_runs_ld3_exactly_and_its_children_keep_the_input_times():
    """An LD3 baseline carries LD3's network input times (``model_times``), so on the search's seeds it is the
    ``--time-grid ld3`` run itself; a child on the same timesteps keeps them, one on moved times drops them, and a
    time refinement drops them (it learns the times the network sees)."""
    import numpy as np

    from samplebench.learned.ld3 import LD3Config, refine_schedule
    from samplebench.plan import RunSpec, plan
    from samplebench.search.run import _initial, _learned
    from samplebench.models import Conditioning

    model = load_model("digits-gmm")
    learned, _ = _learned(model, 4)
    baseline = dict(_initial(model.schedule, 4, 1000, learned=learned))["unipc-bh2/ld3"]
    times, model_times = learned["unipc-bh2/ld3"]
    assert baseline.timesteps == tuple(times) and baseline.model_times == tuple(model_times) != tuple(times)
    x_T = torch.randn(6, *model.sample_shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ld3 = plan(model, RunSpec(model="digits-gmm", solver="unipc-bh2", nfe=4, time_grid="ld3")).stages[0]
    denoiser = model.denoiser(Conditioning(), 6)
    run = ld3.solver(denoiser, x_T.clone(), ld3.grid)
    assert (run - usf_sample(denoiser, x_T.clone(), baseline)).abs().max().item() < 1e-12
    assert (run - usf_sample(denoiser, x_T.clone(), known_solver("unipc-bh2", times))).abs().max().item() > 1e-6
    rng = np.random.default_rng(0)
    kept = crossover(baseline, baseline, rng)
    assert kept.model_times == baseline.model_times
    moved = [c for c in (mutate(baseline, rng, SPACE) for _ in range(40)) if c.timesteps != baseline.timesteps]
    assert moved and all(c.model_times is None for c in moved)
    refined, _ = refine_schedule(model, baseline, LD3Config(train=2, valid=2, rounds_times=1, rounds_input_times=0))
    assert refined.model_times is None and refined.nfe == baseline.nfe


def test_stage_zero_of_a_flow_model_holds_its_pipelines_own_grid():
    """A flow pipeline's shifted grid (SD3's shift 3) is a baseline grid too; with shift 1 it is time-uniform."""
    from types import SimpleNamespace

    from samplebench.schedules import FlowMatching
    from samplebench.search.run import GRIDS, _grids, _initial

    assert _grids(SimpleNamespace(default_grid=None)) == GRIDS == _grids(SimpleNamespace(default_grid="logsnr"))
    grids = _grids(SimpleNamespace(default_grid="flow-shift:3"))
    assert grids == (*GRIDS, "flow-shift:3")
    origins = [o for o, _ in _initial(FlowMatching(), 6, 1000, grids)]
    assert {o for o in origins if o.endswith("/flow-shift:3")} == {f"{k}/flow-shift:3" for k in set(KNOWN) - {"euler"}}
    shift1 = [o for o, _ in _initial(FlowMatching(), 6, 1000, _grids(SimpleNamespace(default_grid="flow-shift:1")))]
    assert not any(o.endswith("/flow-shift:1") for o in shift1)  # the same schedules as time-uniform: each once


def _offspring(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pop = [known_solver(k, make_grid(SCHEDULE, "logsnr", 6).tolist()) for k in KNOWN]
    out, rejected = [], 0
    while len(out) < n:
        try:
            child = (crossover(pop[rng.integers(len(pop))], pop[rng.integers(len(pop))], rng) if rng.random() < 0.5
                     else mutate(pop[rng.integers(len(pop))], rng, SPACE))
        except UsageError as e:
            assert str(e).startswith("invalid solver schedule")
            rejected += 1
            continue
        out.append(child)
        pop.append(child)
    return out, rejected


def test_mutation_and_crossover_give_valid_diverse_schedules_and_the_counter_agrees():
    children, rejected = _offspring(300)
    assert rejected < 150  # most offspring are valid
    assert len({c.to_json() for c in children}) > 200
    nfes = {c.nfe for c in children}
    assert len(nfes) >= 3  # steps are added and removed, AFS and implicit correctors change the NFE
    assert {c.afs for c in children} == {"none", "zero", "mean"}
    assert any(c.skip_coefficients for c in children)
    assert {st.corrector.kind for c in children for st in c.steps} == {"none", "pseudo", "implicit"}
    assert {st.order for c in children for st in c.steps} == {1, 2, 3}  # orders up to 3
    assert any(d.relaxation == "half" for c in children for st in c.steps for d in st.derivatives)
    ends = {c.timesteps[-1] for c in children}  # t_end is searched, in [t_min, 10 t_min]
    assert SPACE.t_min in ends and len(ends) > 20 and all(SPACE.t_min <= t <= 10 * SPACE.t_min for t in ends)
    for c in children[:40]:  # every schedule runs, and the network is called exactly schedule.nfe times
        assert SolverSchedule.from_json(c.to_json()) == c
        assert genes_of(build(c.timesteps, genes_of(c), c.afs, c.skip_coefficients)) == genes_of(c)
        counter = CountingDenoiser(AnalyticDenoiser(GMM.mixture, GMM.schedule))
        x = usf_sample(counter, torch.randn(2, *GMM.sample_shape, dtype=torch.float64), c, data_mean=GMM.data_mean)
        assert counter.nfe == c.nfe and bool(torch.isfinite(x).all())
        assert encode(c, SPACE).shape == encode(children[0], SPACE).shape


def test_the_predictor_ranks_unseen_schedules_better_than_chance():
    """A synthetic metric (the mean Taylor order of the steps plus the first time jump): the fitted predictor's
    ranking of held-out schedules agrees with it; a shuffled-target predictor does not."""
    children, _ = _offspring(260, seed=1)
    x = np.stack([encode(c, SPACE) for c in children])
    score = np.array([np.mean([s.order for s in c.steps]) - 3 * (c.timesteps[0] - c.timesteps[1]) for c in children])
    groups = np.zeros(len(children))
    train, test = slice(0, 200), slice(200, None)

    def spearman(a, b):
        ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
        return float(np.corrcoef(ra, rb)[0, 1])

    fitted = Predictor(seed=0).fit(x[train], score[train], groups[train])
    assert spearman(fitted.predict(x[test]), score[test]) > 0.6
    shuffled = Predictor(seed=0).fit(x[train], np.random.default_rng(0).permutation(score[train]), groups[train])
    assert abs(spearman(shuffled.predict(x[test]), score[test])) < 0.4


TINY = dict(model="gaussian", nfes=(3, 4), budget=64, samples=64, batch_size=32, per_stage=3, pool=24, rescore=96,
            finalists=2, baselines=2)


def _evals(out, folder="evals"):
    return {p.name: json.loads(p.read_text()) for p in sorted((out / folder).glob("*.json"))}


def test_search_job_screens_rescores_and_ships_what_wins(tmp_path, monkeypatch):
    from samplebench.search.run import _initial, _learned, report_table

    out = tmp_path / "s"
    report = run_search(SearchConfig(**TINY), out, progress=False)
    evals, rescored = _evals(out), _evals(out, "rescore")
    assert len(evals) == report["evaluations"] == 64 and len(rescored) == report["rescored"] >= 8
    schedule = load_model("gaussian").schedule
    for nfe in (3, 4):
        learned = _learned(load_model("gaussian"), nfe)[0]
        assert all(o.endswith("/dmn") for o in learned)  # isotropic data: GITS has no signal, and no LD3 here
        assert sum(r["stage"] == 0 and r["nfe"] == nfe for r in evals.values()) == len(
            _initial(schedule, nfe, 32, learned=learned))
        assert sum(r["nfe"] == nfe for r in evals.values()) == 32
    assert all(r["endpoint"] > 0 and r["fid"] > 0 and r["score"] == r["endpoint"] for r in evals.values())
    assert all(r["num_samples"] == 96 and r["fid_low"] <= r["fid"] <= r["fid_high"] for r in rescored.values())
    assert report["network_evaluations"] == (sum(64 * r["nfe"] for r in evals.values())
                                             + sum(96 * r["nfe"] for r in rescored.values()) + 64 * 100)
    for nfe in (3, 4):
        d = report["decisions"][nfe]
        rows = d["rescored"]
        screened = sorted((r for r in evals.values() if r["nfe"] == nfe and r["stage"] > 0), key=lambda r: r["score"])
        assert {r["id"] for r in rows if r["stage"] > 0} == {r["id"] for r in screened[:2]}  # the best screened
        stage0 = [r for r in evals.values() if r["nfe"] == nfe and r["stage"] == 0]
        best_by = {r["id"] for key in ("endpoint", "fid") for r in sorted(stage0, key=lambda r: r[key])[:2]}
        assert {r["id"] for r in rows if r["stage"] == 0} == best_by  # the best baselines by either signal
        assert d["best_baseline"]["fid"] == min(r["fid"] for r in rows if r["stage"] == 0)
        assert d["best_searched"]["fid"] == min(r["fid"] for r in rows if r["stage"] > 0)
        assert d["difference"]["paired"] and d["difference"]["n_a"] == 96
        if d["searched"]:
            assert d["difference"]["high"] < 0 and d["shipped"] == d["best_searched"]
        else:
            assert d["shipped"] == d["best_baseline"] and "no searched schedule beats" in d["why"]
        shipped = SolverSchedule.load(out / "s3" / f"nfe{nfe}.json")
        assert shipped.nfe == nfe and shipped == SolverSchedule.from_dict(evals[f"{d['shipped']['id']}.json"]["schedule"])
        assert set(d["spearman"]) == {"endpoint", "fid"}
    table = report_table(report)
    assert "| 3 | 32 |" in table and "Spearman" in table
    # more budget continues the same search; other settings are refused
    report = run_search(SearchConfig(**{**TINY, "budget": 70}), out, progress=False)
    assert report["evaluations"] == 70 and set(_evals(out)) >= set(evals)
    # a last stage refines the best searched schedule's times per NFE (LD3's objective, decisions kept)
    before = _evals(out)
    report = run_search(SearchConfig(**{**TINY, "budget": 70, "refine": 1}), out, progress=False)
    refined = [r for r in _evals(out).values() if r["origin"].startswith("refined/")]
    assert len(refined) == 2 and report["evaluations"] == 72
    for r in refined:
        parent = SolverSchedule.from_dict(before[r["origin"].split("/")[1] + ".json"]["schedule"])
        child = SolverSchedule.from_dict(r["schedule"])
        assert child.steps == parent.steps and child.nfe == parent.nfe == r["nfe"]
        assert child.timesteps[0] == parent.timesteps[0] and child.timesteps != parent.timesteps
    assert sum(1 for k in report["learned_grids"] if k.startswith("refine/")) == 2
    # each refinement is kept as it ends: a search killed while refining redoes none of the finished ones
    assert sorted(p.stem for p in (out / "refine").glob("*.json")) == sorted(r["origin"][8:] for r in refined)
    last = max((out / "stages").glob("*.json"))
    for r in refined:
        (out / "evals" / f"{r['id']}.json").unlink()
    last.unlink(), (out / "refine.json").unlink(), (out / "report.json").unlink()

    def no_refining(*args, **kwargs):
        raise AssertionError("refined again")

    monkeypatch.setattr("samplebench.learned.ld3.refine_schedule", no_refining)
    again = run_search(SearchConfig(**{**TINY, "budget": 70, "refine": 1}), out, progress=False)
    assert sorted(r["id"] for r in _evals(out).values() if r["origin"].startswith("refined/")) == \
        sorted(r["id"] for r in refined) and again["decisions"] == report["decisions"]
    with pytest.raises(UsageError, match="other settings .*samples"):
        run_search(SearchConfig(**{**TINY, "samples": 32}), out, progress=False)


@pytest.mark.parametrize("searched, ships", [
    ("same-seeds", "S3"),  # clearly lower FID on the same seeds
    ("noisier", "baseline"),  # a little lower, on noise unrelated to the baseline's: the paired interval holds zero
    ("higher", "baseline"),
])
def test_a_searched_schedule_ships_only_if_its_paired_interval_is_below_zero(tmp_path, searched, ships):
    from types import SimpleNamespace

    from samplebench.metrics.scores import fid, statistics
    from samplebench.search.run import _report

    config = SearchConfig(model="gaussian", nfes=(4,), budget=2, rescore=3000, finalists=1, baselines=1)
    rng = np.random.default_rng(0)
    z, other = rng.normal(size=(3000, 4)), rng.normal(size=(3000, 4))
    feats = {"b": z + 0.3, "s": {"same-seeds": z, "noisier": other + 0.28, "higher": z + 0.45}[searched]}
    ref = SimpleNamespace(mu=np.zeros(4), sigma=np.eye(4))
    evals, rescored = {}, {}
    for cid, stage in (("b", 0), ("s", 1)):
        np.save(tmp_path / f"{cid}.npy", feats[cid].astype(np.float32))
        evals[cid] = {"id": cid, "stage": stage, "origin": cid, "nfe": 4, "score": 0.1 if stage else 0.2,
                      "endpoint": 0.1, "fid": 1.0, "network_evaluations": 0, "wall_time_s": 0.0}
        value = fid(*statistics(np.load(tmp_path / f"{cid}.npy").astype(np.float64)), ref.mu, ref.sigma)
        rescored[cid] = {"id": cid, "fid": value, "fid_low": value, "fid_high": value, "nfe": 4,
                         "network_evaluations": 0, "wall_time_s": 0.0}
    d = _report(config, evals, rescored, tmp_path, ref, {"network_evaluations": 0, "wall_time_s": 0.0},
                0.0)["decisions"][4]
    assert d["searched"] == (ships == "S3") and d["shipped"]["id"] == ("s" if ships == "S3" else "b")
    diff = d["difference"]
    assert diff["paired"] and (diff["high"] < 0) == (ships == "S3")
    if searched == "noisier":
        assert diff["estimate"] < 0 < diff["high"]  # lower, but not shown to be


def test_a_killed_search_resumes_to_the_same_result(tmp_path):
    args = [sys.executable, "-m", "samplebench", "search", "--model", "gaussian", "--nfe", "3,4", "--budget", "64",
            "--samples", "64", "--batch-size", "32", "--per-stage", "3", "--pool", "24", "--rescore", "96",
            "--finalists", "2", "--baselines", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run(args + ["--out", str(tmp_path / "whole")], check=True, env=env, capture_output=True,
                           text=True)
    total = whole.stdout.count("[search]")
    assert total == 64 + len(_evals(tmp_path / "whole", "rescore"))
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # one progress line per evaluation; kill in stage 2, after the predictor ranked
        lines.append(line)
        if len(lines) == 61:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    before = len(_evals(tmp_path / "cut"))
    assert 61 <= before < 64  # the killed evaluation (if any) left no file
    done = subprocess.run(args + ["--out", str(tmp_path / "cut")], check=True, env=env, capture_output=True, text=True)
    assert done.stdout.count("[search]") == total - before  # nothing is evaluated twice
    for folder in ("evals", "rescore"):
        a, b = _evals(tmp_path / "whole", folder), _evals(tmp_path / "cut", folder)
        assert set(a) == set(b)
        for k in a:  # the same candidates, scored the same
            assert a[k].get("score") == b[k].get("score") and a[k]["fid"] == b[k]["fid"]
            assert a[k].get("schedule") == b[k].get("schedule")
    assert (tmp_path / "whole" / "report.json").read_text().count("fid") > 0
    for nfe in (3, 4):
        assert ((tmp_path / "whole" / "s3" / f"nfe{nfe}.json").read_text()
                == (tmp_path / "cut" / "s3" / f"nfe{nfe}.json").read_text())
    assert not list((tmp_path / "cut").rglob("*.tmp"))


def test_two_processes_search_refine_and_rescore_as_one(tmp_path):
    """Under ``accelerate launch`` each stage's candidates, the time refinements and the re-scoring are dealt
    round-robin to the processes; the search screens, refines and ships exactly what one process does."""
    args = ["-m", "samplebench", "search", "--model", "gaussian", "--nfe", "3,4", "--budget", "70", "--samples", "64",
            "--batch-size", "32", "--per-stage", "3", "--pool", "24", "--rescore", "96", "--finalists", "2",
            "--baselines", "2", "--refine", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], check=True, env=env, capture_output=True)
    r = subprocess.run([str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu", "--num_processes",
                        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *args,
                        "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for folder in ("evals", "refine", "rescore"):
        one, two = _evals(tmp_path / "one", folder), _evals(tmp_path / "two", folder)
        assert set(one) == set(two) and one
        for k in one:
            assert {a: v for a, v in one[k].items() if a not in ("process", "wall_time_s", "eval_time_s")} == \
                {a: v for a, v in two[k].items() if a not in ("process", "wall_time_s", "eval_time_s")}, k
    refine = _evals(tmp_path / "two", "refine")
    assert len(refine) == 4 and sorted(r["process"] for r in refine.values()) == [0, 0, 1, 1]
    for nfe in (3, 4):
        assert ((tmp_path / "one" / "s3" / f"nfe{nfe}.json").read_text()
                == (tmp_path / "two" / "s3" / f"nfe{nfe}.json").read_text())


def test_search_cli_errors(capsys, tmp_path):
    for argv, message in [(["--nfe", "13"], "--nfe 13 is outside the search space: 1..12"),
                          (["--budget", "1", "--nfe", "4,5"], "--budget 1 is below one evaluation per NFE"),
                          (["--samples", "1"], "--samples must be >= 2"),
                          (["--signal", "psnr"], "unknown --signal 'psnr'; valid: endpoint, fid"),
                          (["--rescore-seed", "500100"], "--rescore-seed 500100: its 5000 seeds overlap the screening"),
                          (["--model", "nope", "--ref", "digits-train"], "unknown model 'nope'"),
                          (["--budget", "fast"], "--budget 'fast' is neither a number of screenings nor a level; "
                                                 "valid: quick, full, or a whole number")]:
        assert main(["search", "--out", str(tmp_path / "x"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "x").exists()


def test_solver_s3_uses_the_models_shipped_schedule(tmp_path, capsys):
    pipe = save_ddpm(tmp_path / "pipe")
    model = load_model(str(pipe))
    schedule = known_solver("dpmpp-2m", make_grid(model.schedule, "time-quadratic", 4).tolist())
    (pipe / "s3").mkdir()
    schedule.save(pipe / "s3" / "nfe4.json")
    assert main(["sample", "--model", str(pipe), "--solver", "s3", "--nfe", "4", "--num", "2", "--quiet",
                 "--save-npz", "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", "--model", str(pipe), "--schedule", str(pipe / "s3" / "nfe4.json"), "--num", "2",
                 "--quiet", "--save-npz", "--out", str(tmp_path / "b")]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["solver"] == "s3" and summary["nfe_per_sample"] == 4
    assert np.array_equal(np.load(tmp_path / "a" / "samples.npz")["x"], np.load(tmp_path / "b" / "samples.npz")["x"])
    capsys.readouterr()
    assert main(["sample", "--model", str(pipe), "--solver", "s3", "--nfe", "6", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "no S3 schedule for model" in err and "shipped NFEs: 4" in err and "samplebench search" in err
    assert not (tmp_path / "c").exists()


def test_eval_schedule_folder_is_solver_s3_from_that_folder(tmp_path, capsys):
    """``eval --schedule DIR`` (a search's OUT/s3) samples what ``--solver s3`` samples when DIR holds the shipped
    schedules, records their fingerprints, and refuses an NFE the folder lacks or other solvers, in one line."""
    import shutil

    from samplebench.usf.shipped import s3_folder

    folder = tmp_path / "s3"
    folder.mkdir()
    shutil.copy(s3_folder("digits-gmm") / "nfe4.json", folder / "nfe4.json")
    common = ["eval", "--model", "digits-gmm", "--nfe", "4", "--num", "12", "--shard-size", "12", "--metrics", "fid",
              "--quiet", "--json"]
    assert main([*common, "--schedule", str(folder), "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--solver", "s3", "--out", str(tmp_path / "b")]) == 0
    a, b = (np.load(tmp_path / d / "samples" / "s3-nfe4" / "shard-00000.npz")["images"] for d in "ab")
    assert np.array_equal(a, b)
    job = json.loads((tmp_path / "a" / "job.json").read_text())
    assert job["settings"]["schedule"] == str(folder) and job["plans"] == \
        json.loads((tmp_path / "b" / "job.json").read_text())["plans"]
    capsys.readouterr()
    for argv, message in ((["--schedule", str(folder), "--nfe", "5"], "holds no schedule for --nfe 5"),
                          (["--schedule", str(folder), "--solver", "ddim"], "--schedule runs as --solver s3")):
        assert main([*common[:-1], *argv, "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "c").exists()
    (folder / "nfe4.json").write_text(json.dumps({**json.loads((folder / "nfe4.json").read_text()), "timesteps":
                                                  [t * 0.99 for t in SolverSchedule.load(folder / "nfe4.json")
                                                   .timesteps]}))
    assert main([*common, "--schedule", str(folder), "--out", str(tmp_path / "a")]) == 2
    assert "another S3 schedule" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["digits", "digits-gmm", "digits-flow"])
def test_embedded_models_ship_s3_schedules_that_run_at_their_nfe(model, tmp_path):
    from samplebench.plan import RunSpec, plan
    from samplebench.usf.shipped import s3_nfes

    assert s3_nfes(model)
    m = load_model(model)
    for nfe in s3_nfes(model):
        result = plan(m, RunSpec(model=model, solver="s3", nfe=nfe)).sample(range(2))
        assert result.nfe == nfe and bool(torch.isfinite(result.images).all())


def test_shipped_schedules_are_what_their_search_report_decided():
    """Beside the schedules, the search report: one decision per NFE 3-10, and a searched schedule ships only where
    its paired interval against the best re-scored baseline lies below zero."""
    from samplebench.search.run import schedule_id
    from samplebench.usf.shipped import s3_folder, s3_nfes

    for model in ("digits-gmm", "digits", "digits-dit", "digits-flow"):
        report = json.loads((s3_folder(model) / "report.json").read_text())
        assert report["model"] == model and report["rescore"] >= 5000 and report["evaluations"] >= 800
        assert sorted(map(int, report["decisions"])) == s3_nfes(model) == list(range(3, 11))
        assert (s3_folder(model) / "report.md").read_text().startswith(f"S3 search on {model}")
        for nfe, d in report["decisions"].items():
            assert d["evaluations"] >= 100
            assert schedule_id(SolverSchedule.load(s3_folder(model) / f"nfe{nfe}.json")) == d["shipped"]["id"]
            if d["searched"]:
                assert d["difference"]["paired"] and d["difference"]["high"] < 0
            else:
                assert d["shipped"] == d["best_baseline"]


def test_eval_scores_shipped_s3_schedules(tmp_path):
    from samplebench.evaluate import EvalConfig, run_eval

    with pytest.raises(UsageError, match="no S3 schedule for model 'digits-gmm' at --nfe 12"):
        EvalConfig(model="digits-gmm", solvers=("s3",), nfes=(12,))
    rows = run_eval(EvalConfig(model="digits-gmm", solvers=("s3", "ddim"), nfes=(4,), num=200, metrics=("fid",)),
                    tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    by = {r["solver"]: r for r in rows}
    assert by["s3"]["nfe"] == 4 and by["s3"]["time_grid"] == "s3" and by["s3"]["settings"]["schedule"]["steps"]
    assert by["s3"]["fid"] < by["ddim"]["fid"]
    assert set(json.loads((tmp_path / "job" / "job.json").read_text())["plans"]) == {"s3-nfe4", "ddim-nfe4"}


def test_a_resumed_s3_job_refuses_a_changed_shipped_schedule(tmp_path, monkeypatch):
    """``--solver s3`` names the shipped schedule of the day: a job's shards from another schedule are never
    reused when it is resumed (the job records each schedule's fingerprint)."""
    import samplebench.plan
    from samplebench.evaluate import EvalConfig, run_eval
    from samplebench.usf import known_schedule

    def config():  # as each run of the command builds it, reading the schedule of the day
        return EvalConfig(model="digits-gmm", solvers=("s3",), nfes=(4,), num=20, metrics=("fid",))

    run_eval(config(), tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    shipped = samplebench.plan.load_schedule
    other = known_schedule("ddim", shipped("digits-gmm", "s3", 4, None).timesteps)
    monkeypatch.setattr(samplebench.plan, "load_schedule", lambda *a: other)
    with pytest.raises(UsageError, match="another S3 schedule for model 'digits-gmm' at NFE 4"):
        run_eval(config(), tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    monkeypatch.setattr(samplebench.plan, "load_schedule", shipped)
    assert run_eval(config(), tmp_path / "job", db=tmp_path / "runs.db", progress=False)[0]["nfe"] == 4
    # a job written before plan fingerprints held its S3 schedules' own: still checked
    manifest = tmp_path / "job" / "job.json"
    job = json.loads(manifest.read_text())
    del job["plans"]
    manifest.write_text(json.dumps({**job, "s3_schedules": {"4": "0" * 24}}))
    with pytest.raises(UsageError, match="another S3 schedule for model 'digits-gmm' at NFE 4"):
        run_eval(config(), tmp_path / "job", db=tmp_path / "runs.db", progress=False)


def test_budget_levels():
    """quick: about 60 screenings per NFE on 64 images, the times of the best 2 refined, 1,000-image re-scoring;
    full: the defaults; what is given explicitly wins."""
    quick = SearchConfig.at_level("quick", model="gaussian", nfes=(3, 4, 5, 6))
    assert (quick.budget, quick.samples, quick.rescore, quick.finalists, quick.baselines, quick.refine) == \
        (240, 64, 1000, 2, 2, 2)
    assert SearchConfig.at_level("quick", model="gaussian", refine=0).refine == 0
    full = SearchConfig.at_level("full", model="gaussian")
    assert full == SearchConfig(model="gaussian")  # the defaults: 800 screenings over NFE 3-10
    assert SearchConfig.at_level("quick", model="gaussian", nfes=(4,), samples=128).samples == 128
    assert SearchConfig.at_level("300", model="gaussian").budget == 300
