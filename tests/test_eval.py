"""Evaluation jobs: resumable after SIGKILL, identical under a two-process accelerate launch, stored in the
results database, listed, exported and plotted; bad input is a one-line error with exit code 2."""

import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from samplebench.cli import main
from samplebench.errors import UsageError
from samplebench.evaluate import EvalConfig, run_eval
from samplebench.results import ResultsDB

BIN = Path(sys.executable).parent
JOB = ["--model", "digits", "--solver", "ddim,dpmpp-2m", "--nfe", "3,4", "--num", "60", "--shard-size", "10",
       "--metrics", "fid,kid,is", "--quiet"]


@contextlib.contextmanager
def one_thread():
    """CPU kernels can round differently with another thread count (a pixel off by one LSB, an FID in its ninth
    digit), so every run that is compared here computes with one thread per process, as accelerate's processes do."""
    import scipy.linalg  # noqa: F401  (its BLAS loaded now, so that the limit below reaches it)
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):  # numpy's BLAS too: the matrix square roots of FID and its bootstrap
            yield
    finally:
        torch.set_num_threads(n)


ONE_THREAD_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _shards(out: Path) -> dict[str, np.ndarray]:
    """Every sample shard's images and seeds (the wall time inside a shard is not part of its content)."""
    found = {}
    for p in sorted((out / "samples").rglob("shard-*.npz")):
        with np.load(p) as z:
            found[str(p.relative_to(out))] = (z["images"], z["seeds"], int(z["nfe"]))
    return found


def _metrics(out: Path) -> list[tuple]:
    return [(r["solver"], r["nfe"], r["fid"], r["kid"], r["inception_score"])
            for r in json.loads((out / "results.json").read_text())]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k][0], b[k][0]) and np.array_equal(a[k][1], b[k][1])
                                        and a[k][2] == b[k][2] for k in a)


@pytest.fixture(scope="module")
def reference_job(tmp_path_factory):
    out = tmp_path_factory.mktemp("jobs") / "uninterrupted"
    db = out.parent / "runs.db"
    with one_thread():
        assert main(["eval", *JOB, "--out", str(out), "--db", str(db)]) == 0
    return out, db


def test_job_outputs_and_database(reference_job, tmp_path, capsys):
    out, db = reference_job
    shards = _shards(out)
    assert len(shards) == 2 * 2 * 6
    images, seeds, nfe = shards["samples/ddim-nfe4/shard-00003.npz"]
    assert images.shape == (10, 16, 16, 1) and images.dtype == np.uint8 and list(seeds) == list(range(30, 40))
    assert nfe == 4
    rows = ResultsDB(db).query()
    assert [(r["solver"], r["nfe"]) for r in rows] == [("ddim", 3), ("ddim", 4), ("dpmpp-2m", 3), ("dpmpp-2m", 4)]
    r = rows[3]
    assert r["num_samples"] == 60 and r["extractor"] == "digits" and r["mode"] == "clean"
    assert r["ref"] == "digits-train" and r["ref_count"] == 1437 and len(r["ref_sha256"]) == 64
    assert r["fid"] > 0 and r["inception_score"] > 1 and r["wall_time_s"] > 0
    # every FID and KID carries its 95% interval, the sample count and the seeds it resampled
    assert r["fid_low"] < r["fid"] < r["fid_high"] and r["kid_low"] < r["kid"] < r["kid_high"]
    assert r["interval_level"] == 0.95 and r["interval_resamples"] == 1000 and r["seeds"] == "0-59"
    assert json.loads(r["versions"])["clean-fid"] and json.loads(r["settings"])["seed"] == 0
    # fewer steps, worse FID: 3-NFE DDIM is far from the data, 2M at 4 NFE much closer
    assert rows[0]["fid"] > rows[3]["fid"]
    # runs: filter, CSV
    capsys.readouterr()
    assert main(["runs", "--db", str(db), "--solver", "ddim", "--csv", str(tmp_path / "runs.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and "ddim" in printed[1] and "FID [95%]" in printed[0]
    assert f"[{rows[0]['fid_low']:.4f}, {rows[0]['fid_high']:.4f}]" in printed[1] and "0-59" in printed[1]
    with open(tmp_path / "runs.csv") as f:
        got = list(csv.DictReader(f))
    assert [int(g["nfe"]) for g in got] == [3, 4] and float(got[0]["fid"]) == pytest.approx(rows[0]["fid"])
    assert float(got[0]["fid_high"]) == pytest.approx(rows[0]["fid_high"]) and got[0]["seeds"] == "0-59"
    # plot
    assert main(["plot", "--db", str(db), "--out", str(tmp_path / "fid.png")]) == 0
    assert Image.open(tmp_path / "fid.png").size[0] > 500
    # a repeated job replaces its rows instead of adding duplicates (and rewrites the same numbers)
    with one_thread():
        assert main(["eval", *JOB, "--out", str(out), "--db", str(db)]) == 0
    assert len(ResultsDB(db).query()) == 4


def _kill_job_after(out: Path, db: Path, count: int, folder: str = "features") -> None:
    """Start the job in a subprocess and SIGKILL it once ``count`` shards exist under ``folder`` (samples are all
    drawn first, then each cell's features are extracted and scored)."""
    cmd = [str(BIN / "samplebench"), "eval", *JOB, "--out", str(out), "--db", str(db)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_ENV)
    deadline = time.time() + 300
    while len(list((out / folder).rglob("shard-*.npz"))) < count:
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.01)
    assert proc.poll() is None, "the job ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_job_resumes_to_the_same_files_and_numbers(reference_job, tmp_path):
    out, _ = reference_job
    resumed = tmp_path / "resumed"
    _kill_job_after(resumed, tmp_path / "r.db", 5, "samples")  # killed while sampling
    before = {p: p.stat().st_mtime_ns for p in (resumed / "samples").rglob("shard-*.npz")}
    assert 5 <= len(before) < 24 and not (resumed / "results.json").exists()
    with one_thread():
        assert main(["eval", *JOB, "--out", str(resumed), "--db", str(tmp_path / "r.db")]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished shards are kept, not redrawn
    assert _same(_shards(resumed), _shards(out))
    assert _metrics(resumed) == _metrics(out)
    assert not list(resumed.rglob("*.tmp"))


def test_a_kill_while_scoring_resumes_to_the_same_numbers(reference_job, tmp_path):
    """Killed after the last feature shard, while the intervals are computed: the resumed job reports the numbers
    of the uninterrupted one."""
    out, _ = reference_job
    resumed = tmp_path / "resumed"
    _kill_job_after(resumed, tmp_path / "r.db", 24)
    assert not (resumed / "results.json").exists()
    with one_thread():
        assert main(["eval", *JOB, "--out", str(resumed), "--db", str(tmp_path / "r.db")]) == 0
    assert _metrics(resumed) == _metrics(out)
    intervals = lambda o: [(r["fid_low"], r["fid_high"], r["kid_low"], r["kid_high"])  # noqa: E731
                           for r in json.loads((o / "results.json").read_text())]
    assert intervals(resumed) == intervals(out)


def test_two_processes_give_the_same_samples_and_metrics(reference_job, tmp_path):
    out, _ = reference_job
    two = tmp_path / "two"
    r = subprocess.run([str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "samplebench", "eval", *JOB,
                        "--out", str(two), "--db", str(tmp_path / "two.db")],
                       capture_output=True, text=True, timeout=300, env=ONE_THREAD_ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _same(_shards(two), _shards(out))
    assert _metrics(two) == _metrics(out)
    # each shard was drawn once, by the process the round-robin deal gave it to
    order = [f"samples/{s}-nfe{n}/shard-{j:05d}.npz" for s in ("ddim", "dpmpp-2m") for n in (3, 4) for j in range(6)]
    writers = [int(np.load(two / p)["process"]) for p in order]
    assert writers == [k % 2 for k in range(len(order))]
    rows = ResultsDB(tmp_path / "two.db").query()
    assert len(rows) == 4 and {row["num_processes"] for row in rows} == {2}


def test_a_finished_job_read_again_returns_its_rows_and_rescores_only_what_changed(reference_job, tmp_path,
                                                                                    monkeypatch):
    """Re-reading a finished job (a benchmark run again) takes its stored rows; a shard drawn again since, another
    bootstrap count or a moved folder is scored again."""
    import shutil

    import samplebench.evaluate as evaluate

    out, _ = reference_job
    scored = []
    real = evaluate._scores
    monkeypatch.setattr(evaluate, "_scores", lambda *a, **k: scored.append(1) or real(*a, **k))
    config = EvalConfig(model="digits", solvers=("ddim", "dpmpp-2m"), nfes=(3, 4), num=60, shard_size=10,
                        metrics=("fid", "kid", "is"))
    stored = json.loads((out / "results.json").read_text())
    assert run_eval(config, out, db=tmp_path / "a.db", progress=False) == stored and not scored
    assert len(ResultsDB(tmp_path / "a.db").query()) == 4  # into the database it was asked for
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)  # the copy keeps its files' times, but its rows name the old folder
    with one_thread():
        run_eval(config, moved, db=None, progress=False)
        assert len(scored) == 4
        run_eval(config, moved, db=None, progress=False)
        assert len(scored) == 4
        shard = moved / "features" / "digits-clean" / "dpmpp-2m-nfe4" / "shard-00002.npz"
        later = (moved / "results.json").stat().st_mtime_ns + 10**9
        os.utime(shard, ns=(later, later))  # as if drawn again after the rows were written
        again = run_eval(config, moved, db=None, progress=False)
        assert len(scored) == 5 and [r["fid"] for r in again] == [r["fid"] for r in stored]
        fewer = run_eval(config, moved, db=None, progress=False, resamples=200)
    assert len(scored) == 9 and {r["interval_resamples"] for r in fewer} == {200}


def test_resume_with_other_settings_is_refused(reference_job, capsys):
    out, db = reference_job
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for flag, value, message in (("--seed", "7", "holds a job with seed=0, not 7"),
                                 ("--model", "digits-gmm", "holds a job with model='digits', not 'digits-gmm'"),
                                 ("--ref", "digits-test", "holds a job with ref='digits-train', not 'digits-test'"),
                                 ("--time-grid", "karras", "holds a job with time_grid=None, not 'karras'")):
        assert main(["eval", *JOB, "--out", str(out), "--db", str(db), flag, value]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and "damaged" not in err, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing read as damaged, nothing written
    # the default reference named explicitly is the same job
    config = EvalConfig(model="digits", solvers=("ddim", "dpmpp-2m"), nfes=(3, 4), num=60, shard_size=10,
                        metrics=("fid", "kid", "is"), ref="digits-train")
    assert len(run_eval(config, out, db=None, progress=False)) == 4


def test_a_job_grows_to_the_samples_and_numbers_of_a_fresh_one(tmp_path, monkeypatch):
    """50 -> 80 samples keeps the full shards, draws the missing one and the half-full one again whole (one batch, as a
    fresh job draws it), and ends with the files and numbers of a fresh 80-sample job; 80 -> 50 scores the first 50
    as the 50-sample job did, deleting nothing."""
    import samplebench.evaluate as evaluate

    def config(num):
        return EvalConfig(model="digits", solvers=("dpmpp-2m",), nfes=(3,), num=num, shard_size=20, metrics=("fid", "kid"))

    drawn = []
    real = evaluate._Job.sample_shard
    monkeypatch.setattr(evaluate._Job, "sample_shard",
                        lambda self, s, n, j, p=0: drawn.append(j) or real(self, s, n, j, p))
    grown, fresh = tmp_path / "grown", tmp_path / "fresh"
    with one_thread():
        small = run_eval(config(50), grown, db=None, progress=False)
        assert drawn == [0, 1, 2]
        drawn.clear()
        rows = run_eval(config(80), grown, db=None, progress=False)
        assert drawn == [2, 3]  # full shards 0 and 1 kept
        expected = run_eval(config(80), fresh, db=None, progress=False)
        assert _same(_shards(grown), _shards(fresh))
        for key in ("fid", "fid_low", "fid_high", "kid", "kid_low", "kid_high", "seeds", "num_samples", "nfe"):
            assert rows[0][key] == expected[0][key], key
        files = sorted(p for p in grown.rglob("*.npz"))
        again = run_eval(config(50), grown, db=None, progress=False)
        assert sorted(p for p in grown.rglob("*.npz")) == files  # nothing deleted
        assert again[0]["seeds"] == small[0]["seeds"] and again[0]["num_samples"] == 50
        # shard 2 was drawn again as a batch of 20, not 10: a few pixels a level apart, FID nearly the same
        assert again[0]["fid"] == pytest.approx(small[0]["fid"], abs=0.01)
        assert json.loads((grown / "job.json").read_text())["settings"]["num"] == 80
        drawn.clear()
        assert run_eval(config(80), grown, db=None, progress=False)[0]["fid"] == rows[0]["fid"]
        assert drawn == []  # nothing drawn again


def test_only_a_file_that_cannot_be_read_is_damaged(tmp_path, capsys):
    out = tmp_path / "job"
    args = ["eval", "--num", "30", "--shard-size", "20", "--nfe", "2", "--metrics", "fid", "--quiet", "--out",
            str(out), "--db", str(tmp_path / "r.db")]
    assert main(args) == 0
    shard = out / "samples" / "dpmpp-2m-nfe2" / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-40])
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "shard-00001.npz' is damaged" in err and err.count("\n") == 1


def test_eval_folder(tmp_path, capsys):
    from samplebench.data import load_digits
    from samplebench.sampling import to_uint8

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(to_uint8(load_digits("test")[0])):
        Image.fromarray(a[..., 0]).save(folder / f"{i}.png")
    db = tmp_path / "f.db"
    assert main(["eval", "--folder", str(folder), "--ref", "digits-train", "--db", str(db), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["num_samples"] == 360 and 0.2 < row["fid"] < 1.0 and row["inception_score"] > 8
    assert ResultsDB(db).query()[0]["fid"] == pytest.approx(row["fid"])


@pytest.mark.parametrize("args, message", [
    (["--metrics", "fid,psnr"], "unknown metric 'psnr'; valid: fid, kid, is"),
    (["--features", "clip"], "unknown feature extractor 'clip'; valid: digits, inception"),
    (["--mode", "fast"], "unknown mode 'fast'; valid: clean, legacy_pytorch, legacy_tensorflow"),
    (["--solver", "nosuch"], "unknown solver 'nosuch'"),
    (["--solver", "heun", "--nfe", "5"], "heun"),
    (["--num", "0"], "--num must be >= 1, got 0"),
    (["--ref", "nosuch"], "unknown reference 'nosuch'"),
    (["--model", "./nowhere"], "no default reference"),
    (["--features", "inception"], "Inception weights not found"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "job"
    assert main(["eval", "--num", "20", "--out", str(out), "--db", str(tmp_path / "x.db"), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("samplebench: error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_bad_folder_and_reference_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "mixed").mkdir()
    Image.new("L", (16, 16)).save(tmp_path / "mixed" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "mixed" / "b.png")
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    cases = [(["--folder", str(tmp_path / "empty"), "--ref", "digits-train"], "has no images"),
             (["--folder", str(tmp_path / "mixed"), "--ref", "digits-train"], "mixes image sizes"),
             (["--folder", str(tmp_path / "mixed")], "--folder needs --ref"),
             (["--ref", str(tmp_path / "wrong.npz"), "--out", str(tmp_path / "j")], "dimension 2048"),
             ([], "--out is required")]
    for args, message in cases:
        assert main(["eval", "--db", str(tmp_path / "x.db"), *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main(["plot", "--db", str(tmp_path / "x.db"), "--out", str(tmp_path / "p.png")]) == 2
    assert "no runs" in capsys.readouterr().err and not (tmp_path / "p.png").exists()


def test_plot_refuses_to_mix_references(tmp_path):
    from samplebench.results import plot_runs

    base = {"model": "digits", "extractor": "digits", "mode": "clean", "solver": "ddim", "nfe": 5, "fid": 1.0,
            "wall_time_s": 1.0, "num_samples": 10}
    rows = [{**base, "ref": "digits-train", "ref_sha256": "a"}, {**base, "ref": "digits-test", "ref_sha256": "b"}]
    with pytest.raises(Exception, match="mix settings"):
        plot_runs(rows, tmp_path / "p.png")


def test_compare_runs_paired_on_shared_seeds(reference_job, tmp_path, capsys):
    out, db = reference_job
    capsys.readouterr()
    assert main(["compare", f"{out}:ddim:3", f"{out}:dpmpp-2m:4", "--db", str(db)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("A: digits ddim NFE 3") and "60 samples" in lines[0]
    assert "paired over 60 shared seeds" in lines[2] and "A is higher" in lines[2]  # 3-NFE DDIM is far worse
    # the same comparison from the results database by row id, as JSON
    ids = {(r["solver"], r["nfe"]): r["id"] for r in ResultsDB(db).query()}
    assert main(["compare", str(ids[("ddim", 3)]), str(ids[("dpmpp-2m", 4)]), "--db", str(db), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["paired"] and got["excludes_zero"] and got["low"] > 0
    assert got["a"] == pytest.approx(ResultsDB(db).query(solver="ddim", nfe=3)[0]["fid"])
    assert main(["compare", str(ids[("ddim", 3)]), str(ids[("ddim", 3)]), "--db", str(db), "--json",
                 "--metric", "kid"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["estimate"] == 0 and same["low"] == same["high"] == 0 and not same["excludes_zero"]
    # another seed range: unpaired, and said so
    other = tmp_path / "other"
    args = [a if a != "ddim,dpmpp-2m" else "ddim" for a in JOB]
    assert main(["eval", *args, "--nfe", "3", "--seed", "1000", "--out", str(other), "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["compare", str(other), f"{out}:ddim:3", "--db", str(db)]) == 0
    printed = capsys.readouterr().out
    assert "unpaired (60 vs 60 samples)" in printed and "compared unpaired" in printed
    for bad, message in ((str(out), "holds 4 runs; name one"), (f"{out}:ddim:7", "has no run 'ddim:7'"),
                         ("9999", "no run with id 9999"), (str(tmp_path / "nowhere"), "is not a run")):
        assert main(["compare", bad, str(other), "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("samplebench: error: ") and err.count("\n") == 1 and message in err, err
    assert main(["compare", str(other), str(other), "--metric", "is", "--db", str(db)]) == 2
    assert "unknown metric 'is'" in capsys.readouterr().err


def test_compare_sample_folders_by_their_png_seeds(tmp_path, capsys):
    for solver, nfe in (("ddim", 3), ("dpmpp-2m", 6)):
        assert main(["sample", "--solver", solver, "--nfe", str(nfe), "--num", "40", "--seed", "7", "--quiet",
                     "--out", str(tmp_path / solver)]) == 0  # the folder holds grid.png too, left out
    capsys.readouterr()
    db = tmp_path / "s.db"
    assert main(["eval", "--folder", str(tmp_path / "ddim"), "--ref", "digits-train", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seeds"] == "7-46"
    assert main(["eval", "--folder", str(tmp_path / "ddim"), "--ref", "digits-train", "--db", str(db)]) == 0
    table = capsys.readouterr().out.splitlines()  # a table to read by default
    assert table[0].split()[:4] == ["solver", "NFE", "N", "FID"] and table[1].split()[:3] == ["folder", "-", "40"]
    assert main(["compare", str(tmp_path / "ddim"), str(tmp_path / "dpmpp-2m"), "--ref", "digits-train",
                 "--json", "--db", str(db)]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["paired"] and got["n_a"] == 40 and got["estimate"] > 0
    assert main(["compare", str(tmp_path / "ddim"), str(tmp_path / "dpmpp-2m"), "--db", str(db)]) == 2
    assert "give --ref" in capsys.readouterr().err


def test_database_migrates_in_place(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)  # a database written before intervals were stored
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT UNIQUE NOT NULL, "
                 "created TEXT NOT NULL, model TEXT, solver TEXT, nfe INTEGER, num_samples INTEGER, fid REAL)")
    conn.execute("INSERT INTO runs (run_key, created, model, solver, nfe, num_samples, fid) VALUES "
                 "('k', 'then', 'digits', 'ddim', 5, 100, 1.5)")
    conn.commit()
    conn.close()
    db = ResultsDB(path)
    (old,) = db.query()
    assert old["fid"] == 1.5 and old["fid_low"] is None and old["seeds"] is None
    db.add({"run_key": "new", "created": "now", "model": "digits", "fid": 1.0, "fid_low": 0.9, "fid_high": 1.2,
            "num_samples": 10, "seeds": "0-9"})
    assert [r["fid_high"] for r in db.query()] == [None, 1.2]


def test_plot_never_joins_sample_counts(tmp_path, monkeypatch):
    import matplotlib.axes

    from samplebench.results import plot_runs

    drawn = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, **kw: drawn.append((kw["label"], list(x), kw["yerr"])) or
                        real(self, x, y, **kw))
    base = {"model": "digits", "extractor": "digits", "mode": "clean", "solver": "ddim", "fid": 1.0,
            "wall_time_s": 1.0, "ref": "digits-train", "ref_sha256": "a", "fid_low": 0.8, "fid_high": 1.3}
    rows = [{**base, "nfe": k, "num_samples": n} for n in (500, 2000) for k in (5, 10)]
    plot_runs(rows, tmp_path / "p.png")
    by_label = {label: x for label, x, _ in drawn[::2]}
    assert by_label == {"ddim (n=500)": [5, 10], "ddim (n=2000)": [5, 10]}
    assert np.allclose(drawn[0][2], [[0.2, 0.2], [0.3, 0.3]])  # error bars from the stored interval


def test_config_is_plain_data():
    c = EvalConfig(solvers=("ddim",), nfes=(5, 10), num=10)
    assert c.settings()["nfes"] == [5, 10] and c.num_shards == 1 and c.reference == "digits-train"
    assert run_eval.__doc__


def test_a_job_grows_by_solvers_and_nfes(tmp_path):
    """Other --solver and --nfe lists add cells to a job (its other cells' files untouched) or score some of them;
    job.json keeps every cell ever asked for, so compare finds them all."""
    out = tmp_path / "job"
    common = dict(model="digits-gmm", num=12, shard_size=12, metrics=("fid",))
    (first,) = run_eval(EvalConfig(solvers=("ddim",), nfes=(4,), **common), out, db=tmp_path / "r.db", progress=False)
    shard = out / "samples" / "ddim-nfe4" / "shard-00000.npz"
    before = shard.stat().st_mtime_ns
    rows = run_eval(EvalConfig(solvers=("ddim", "euler"), nfes=(4, 6), **common), out, db=tmp_path / "r.db",
                    progress=False)
    assert [(r["solver"], r["nfe"]) for r in rows] == [("ddim", 4), ("ddim", 6), ("euler", 4), ("euler", 6)]
    assert shard.stat().st_mtime_ns == before and rows[0]["fid"] == first["fid"]
    (only,) = run_eval(EvalConfig(solvers=("euler",), nfes=(6,), **common), out, db=tmp_path / "r.db",
                       progress=False)
    assert only["fid"] == rows[3]["fid"]
    settings = json.loads((out / "job.json").read_text())["settings"]
    assert settings["solvers"] == ["ddim", "euler"] and settings["nfes"] == [4, 6]
    with pytest.raises(UsageError, match="holds a job with seed=0, not 1"):
        run_eval(EvalConfig(solvers=("ddim",), nfes=(4,), seed=1, **common), out, db=tmp_path / "r.db",
                 progress=False)
