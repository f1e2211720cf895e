"""The S3 search: its space (genes, mutation, crossover), the predictor, and the resumable search job."""

import json
import os
import signal
import subprocess
import sys

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
from samplebench.usf import SolverSchedule, usf_sample

SCHEDULE = ddpm_linear_schedule()
SPACE = Space(1.0, 1e-3, has_mean=True, num_skips=5)
GMM = load_model("digits-gmm")


@pytest.mark.parametrize("name", KNOWN)
def test_known_solvers_as_genes_reproduce_the_registry(name):
    denoiser = AnalyticDenoiser(GMM.mixture, GMM.schedule)
    x = SampleGenerators(range(3)).randn(GMM.sample_shape, dtype=torch.float64)
    grid = make_grid(SCHEDULE, "logsnr", 6)
    expected = get_solver(name)(denoiser, x.clone(), grid)
    got = usf_sample(denoiser, x.clone(), known_solver(name, grid.tolist()))
    assert ((got - expected).norm() / expected.norm()).item() < 1e-12


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
    assert {st.order for c in children for st in c.steps} >= {1, 2, 3}
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


TINY = dict(model="gaussian", nfes=(3, 4), budget=28, samples=64, batch_size=32, per_stage=3, pool=24)


def _evals(out):
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "evals").glob("*.json"))}


def test_search_job_finds_better_schedules_and_writes_its_report(tmp_path):
    report = run_search(SearchConfig(**TINY), tmp_path / "s", progress=False)
    evals = _evals(tmp_path / "s")
    assert len(evals) == report["evaluations"] == 28
    assert sum(r["nfe"] == 3 for r in evals.values()) == 14
    assert report["network_evaluations"] == sum(64 * r["nfe"] for r in evals.values())
    # stage 0: the 11 known solvers per NFE; stage 1: two ranked by the predictor and one explorer per NFE
    assert sum(r["stage"] == 0 for r in evals.values()) == 22
    assert sorted(r["origin"] for r in evals.values() if r["stage"] == 1) == ["stage1/explore"] * 2 + ["stage1/predictor"] * 4
    for nfe in (3, 4):
        best = report["best"][nfe]
        assert best["fid"] == min(r["fid"] for r in evals.values() if r["nfe"] == nfe)
        assert best["fid"] <= report["best_known_solver"][nfe]["fid"]
        schedule = SolverSchedule.load(tmp_path / "s" / "s3" / f"nfe{nfe}.json")
        assert schedule.nfe == nfe and SolverSchedule.from_dict(evals[f"{best['id']}.json"]["schedule"]) == schedule
    # more budget continues the same search; other settings are refused
    report = run_search(SearchConfig(**{**TINY, "budget": 32}), tmp_path / "s", progress=False)
    assert report["evaluations"] == 32 and set(_evals(tmp_path / "s")) >= set(evals)
    with pytest.raises(UsageError, match="other settings .*samples"):
        run_search(SearchConfig(**{**TINY, "samples": 32}), tmp_path / "s", progress=False)


def test_a_killed_search_resumes_to_the_same_result(tmp_path):
    args = [sys.executable, "-m", "samplebench", "search", "--model", "gaussian", "--nfe", "3,4", "--budget", "28",
            "--samples", "64", "--batch-size", "32", "--per-stage", "3", "--pool", "24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args + ["--out", str(tmp_path / "whole"), "--quiet"], check=True, env=env, capture_output=True)
    proc = subprocess.Popen(args + ["--out", str(tmp_path / "cut")], env=env, stdout=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:  # one progress line per evaluation; kill after the 24th (in stage 1, after the predictor)
        lines.append(line)
        if len(lines) == 24:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    before = len(_evals(tmp_path / "cut"))
    assert 24 <= before < 28  # the killed evaluation (if any) left no file
    done = subprocess.run(args + ["--out", str(tmp_path / "cut")], check=True, env=env, capture_output=True, text=True)
    assert done.stdout.count("[search]") == 28 - before  # nothing is evaluated twice
    whole, cut = _evals(tmp_path / "whole"), _evals(tmp_path / "cut")
    assert set(whole) == set(cut)
    for k in whole:  # the same candidates, scored the same
        assert whole[k]["fid"] == cut[k]["fid"] and whole[k]["schedule"] == cut[k]["schedule"]
    assert not list((tmp_path / "cut").rglob("*.tmp"))


def test_search_cli_errors(capsys, tmp_path):
    for argv, message in [(["--nfe", "13"], "--nfe 13 is outside the search space: 1..12"),
                          (["--budget", "1", "--nfe", "4,5"], "--budget 1 is below one evaluation per NFE"),
                          (["--samples", "1"], "--samples must be >= 2"),
                          (["--model", "nope", "--ref", "digits-train"], "unknown model 'nope'")]:
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


@pytest.mark.parametrize("model", ["digits", "digits-gmm"])
def test_embedded_models_ship_s3_schedules_that_run_at_their_nfe(model, tmp_path):
    from samplebench.sampling import load_schedule, resolve_solver, sample, skips_applied
    from samplebench.usf.shipped import s3_nfes

    assert s3_nfes(model) == [4, 5, 6, 7, 8, 10]
    m = load_model(model)
    for nfe in s3_nfes(model):
        schedule = load_schedule(model, "s3", nfe, None)
        solver, grid = resolve_solver(m, "s3", nfe, None, schedule)
        with skips_applied(m, None, schedule):
            result = sample(m, solver, grid, range(2))
        assert result.nfe == nfe and bool(torch.isfinite(result.images).all())


def test_eval_scores_shipped_s3_schedules(tmp_path):
    from samplebench.evaluate import EvalConfig, run_eval

    with pytest.raises(UsageError, match="no S3 schedule for model 'digits-gmm' at --nfe 9"):
        EvalConfig(model="digits-gmm", solvers=("s3",), nfes=(9,))
    rows = run_eval(EvalConfig(model="digits-gmm", solvers=("s3", "ddim"), nfes=(4,), num=200, metrics=("fid",)),
                    tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    by = {r["solver"]: r for r in rows}
    assert by["s3"]["nfe"] == 4 and by["s3"]["time_grid"] == "s3" and by["s3"]["settings"]["schedule"]["steps"]
    assert by["s3"]["fid"] < by["ddim"]["fid"]
