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
from samplebench.evaluate import EvalConfig, run_eval
from samplebench.results import ResultsDB

BIN = Path(sys.executable).parent
JOB = ["--model", "digits", "--solver", "ddim,dpmpp-2m", "--nfe", "3,4", "--num", "60", "--shard-size", "10",
       "--metrics", "fid,kid,is", "--quiet"]


@contextlib.contextmanager
def one_thread():
    """CPU kernels can round differently with another thread count (a pixel off by one LSB), so every run that is
    compared here computes with one thread per process, as accelerate's processes do."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
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
    assert json.loads(r["versions"])["clean-fid"] and json.loads(r["settings"])["seed"] == 0
    # fewer steps, worse FID: 3-NFE DDIM is far from the data, 2M at 4 NFE much closer
    assert rows[0]["fid"] > rows[3]["fid"]
    # runs: filter, CSV
    capsys.readouterr()
    assert main(["runs", "--db", str(db), "--solver", "ddim", "--csv", str(tmp_path / "runs.csv")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 3 and "ddim" in printed[1]
    with open(tmp_path / "runs.csv") as f:
        got = list(csv.DictReader(f))
    assert [int(g["nfe"]) for g in got] == [3, 4] and float(got[0]["fid"]) == pytest.approx(rows[0]["fid"])
    # plot
    assert main(["plot", "--db", str(db), "--out", str(tmp_path / "fid.png")]) == 0
    assert Image.open(tmp_path / "fid.png").size[0] > 500
    # a repeated job replaces its rows instead of adding duplicates
    assert main(["eval", *JOB, "--out", str(out), "--db", str(db)]) == 0
    assert len(ResultsDB(db).query()) == 4


def test_killed_job_resumes_to_the_same_files_and_numbers(reference_job, tmp_path):
    out, _ = reference_job
    resumed = tmp_path / "resumed"
    cmd = [str(BIN / "samplebench"), "eval", *JOB, "--out", str(resumed), "--db", str(tmp_path / "r.db")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ONE_THREAD_ENV)
    deadline = time.time() + 120
    while len(list((resumed / "features").rglob("shard-*.npz"))) < 5:
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime_ns for p in (resumed / "samples").rglob("shard-*.npz")}
    assert 5 <= len(before) < 24 and not (resumed / "results.json").exists()
    with one_thread():
        assert main(["eval", *JOB, "--out", str(resumed), "--db", str(tmp_path / "r.db")]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before  # finished shards are kept, not redrawn
    assert _same(_shards(resumed), _shards(out))
    assert _metrics(resumed) == _metrics(out)
    assert not list(resumed.rglob("*.tmp"))


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


def test_resume_with_other_settings_is_refused(reference_job, capsys):
    out, db = reference_job
    args = ["eval", *JOB, "--out", str(out), "--db", str(db)]
    args[args.index("60")] = "80"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a job with num=60, not 80" in err


def test_eval_folder(tmp_path, capsys):
    from samplebench.data import load_digits
    from samplebench.sampling import to_uint8

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(to_uint8(load_digits("test")[0])):
        Image.fromarray(a[..., 0]).save(folder / f"{i}.png")
    db = tmp_path / "f.db"
    assert main(["eval", "--folder", str(folder), "--ref", "digits-train", "--db", str(db)]) == 0
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


def test_config_is_plain_data():
    c = EvalConfig(solvers=("ddim",), nfes=(5, 10), num=10)
    assert c.settings()["nfes"] == [5, 10] and c.num_shards == 1 and c.reference == "digits-train"
    assert run_eval.__doc__
