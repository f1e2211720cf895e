"""Hostile input to every subcommand: exit code 2, one stderr line, no traceback, and an unchanged file tree.

The cases are classes of bad input (out-of-range and non-finite numbers, seeds past 64 bits, output paths under a
file, files that are not what they claim, damaged job state, relative reward modules, a locked database, an
unreachable hub, a folder holding an earlier run); the app's side is in ``test_app_hostile.py``.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from samplebench.cli import main

BIG = str(10**12)
SEED_PAST = str(2**64)


def tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and modification time."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def eval_job(tmp_path_factory):
    """A small finished evaluation job (analytic model: seconds)."""
    out = tmp_path_factory.mktemp("hostile") / "job"
    assert main(["eval", "--model", "digits-gmm", "--solver", "ddim", "--nfe", "3", "--num", "20", "--shard-size",
                 "10", "--metrics", "fid", "--resamples", "10", "--quiet", "--out", str(out), "--db",
                 str(out.parent / "job.db")]) == 0
    return out


@pytest.fixture
def world(tmp_path, monkeypatch, eval_job):
    """Files of every wrong kind, in the working folder ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("a plain file\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "nan.json").write_text(json.dumps({"timesteps": [1.0, "NaN"], "steps": [{}]}).replace('"NaN"', "NaN"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    np.savez(tmp_path / "noimages.npz", a=np.arange(10), b=np.ones(3))
    np.savez(tmp_path / "vector.npz", images=np.arange(10))
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "imgs").mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("L", (16, 16), 40 * i).save(tmp_path / "imgs" / f"{i}.png")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint.pt").write_bytes(b"\x80\x04garbage")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "00000.png").write_bytes(b"x")
    (tmp_path / "earlier" / "summary.json").write_text(json.dumps({"images": ["00000.png"], "grid": "grid.png"}))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    for name, damage in (("job-manifest", "manifest"), ("job-sample", "sample"), ("job-feature", "feature"),
                         ("job-seeds", "seeds")):
        job = tmp_path / name
        shutil.copytree(eval_job, job)
        if damage == "manifest":
            (job / "job.json").write_text('{"settings": ')
        elif damage in ("sample", "feature"):
            shard = next((job / ("samples" if damage == "sample" else "features")).rglob("shard-00001.npz"))
            shard.write_bytes(shard.read_bytes()[:200])
        else:
            shard = next((job / "samples").rglob("shard-00001.npz"))
            with np.load(shard) as z:
                arrays = dict(z)
            np.savez(shard, **(arrays | {"seeds": arrays["seeds"] + 1}))
    for name, path, text in (("search-manifest", "search.json", "not json"),
                             ("search-eval", "evals/0123456789abcdef.json", '{"id": "x"'),
                             ("search-rescore", "rescore/0123456789abcdef.json", "[]")):
        (tmp_path / name / Path(path).parent).mkdir(parents=True, exist_ok=True)
        (tmp_path / name / path).write_text(text)
    return tmp_path


SEARCH = ["search", "--model", "digits-gmm", "--nfe", "3", "--budget", "2", "--samples", "10", "--rescore", "10",
          "--quiet"]
ALIGN = ["sample", "--solver", "dts", "--budget", "100", "--nfe", "10", "--num", "1", "--quiet"]

CASES = [
    # numbers: ranges, finiteness, sizes that would not fit in memory
    (["sample", "--nfe", BIG], "--nfe must be <= 10000"),
    (["sample", "--num", BIG], "--num must be <= 100000"),
    (["sample", "--seed", SEED_PAST], "runs past the largest seed"),
    (["sample", "--num", "3", "--seed", str(2**64 - 2)], "runs past the largest seed"),
    (["sample", "--seed", "-1"], "--seed must be >= 0"),
    (["sample", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["sample", "--skip-rho", "nan"], "'nan' is not a finite number"),
    (["sample", "--skip-rho", "inf"], "'inf' is not a finite number"),
    (["sample", "--skip-rho", "-0.5"], "--skip-rho"),
    (["sample", "--guidance-scale", "nan"], "'nan' is not a finite number"),
    (["sample", "--guidance-scale=-inf"], "'-inf' is not a finite number"),
    (["sample", "--guidance-scale", "-2"], "--guidance-scale -2.0 is not valid"),
    (["sample", "--class-label", str(10**40)], "--class-label must be <="),
    (["sample", "--cascade", "8:6,16:4", "--cascade-from", "nan"], "'nan' is not a finite number"),
    (["sample", "--cascade", "8:6000,16:6000", "--cascade-from", "0.5"], "at most 10000"),
    (["sample", "--model", "digits-dit", "--exit-threshold", "nan"], "--exit-threshold 'nan' is not valid"),
    (["sample", "--model", "digits-dit", "--exit-threshold", "0.9@0.5,inf"], "thresholds are finite"),
    (["sample", "--model", "digits-dit", "--cache", "fbcache:inf"], "--cache 'fbcache:inf' is not valid"),
    (["sample", "--solver", "ddim", "--nfe", "1", "--time-grid", "1,nan"], "strictly decreasing"),
    ([*ALIGN, "--reward", "class:3", "--lambda", "nan"], "'nan' is not a finite number"),
    ([*ALIGN, "--reward", "class:3", "--budget", BIG], "--budget must be <= 10000000"),
    (["eval", "--num", BIG, "--out", "j"], "--num must be <= 10000000"),
    (["eval", "--seed", SEED_PAST, "--out", "j"], "runs past the largest seed"),
    (["eval", "--guidance-scale", "inf", "--out", "j"], "'inf' is not a finite number"),
    ([*SEARCH, "--seed", SEED_PAST, "--out", "s"], "runs past the largest seed"),
    (["compare", "a", "b", "--level", "nan"], "'nan' is not a finite number"),
    (["compare", "a", "b", "--resamples", BIG], "--resamples must be <= 20000"),
    (["eval", "--resamples", BIG, "--out", "j"], "--resamples must be <= 20000"),
    # output paths
    (["sample", "--out", "file/sub"], "which is a file, not a folder"),
    (["sample", "--out", "file"], "exists and is not a folder"),
    (["sample", "--out", "earlier"], "is not empty; give an empty or new folder, or --overwrite"),
    (["sample", "--out", "foreign", "--overwrite"], "no summary.json"),
    (["eval", "--out", "file/job"], "which is a file"),
    ([*SEARCH, "--out", "file/s"], "which is a file"),
    (["train", "digits-unet", "--out", "file/t", "--steps", "1"], "which is a file"),
    (["runs", "--csv", "file/x.csv", "--db", "r.db"], "which is a file"),
    (["runs", "--csv", "folder", "--db", "r.db"], "is a folder; give a file path"),
    (["plot", "--out", "file/p.png", "--db", "r.db"], "which is a file"),
    (["runs", "--db", "file/r.db"], "which is a file"),
    (["sample", "--out", "/proc/samplebench-out"], "'/proc' cannot hold files"),
    (["sample", "--out", "/sys/samplebench-out/sub"], "'/sys' cannot hold files"),
    (["eval", "--out", "/proc/samplebench-job"], "'/proc' cannot hold files"),
    (["runs", "--csv", "/proc/runs.csv", "--db", "r.db"], "'/proc' cannot hold files"),
    (["runs", "--csv", "/sys/runs.csv", "--db", "r.db"], "'/sys' cannot hold files"),
    # conditioning a model does not take: refused before an eval job writes its job.json
    (["eval", "--model", "digits-dit", "--class-label", "12", "--num", "4", "--nfe", "2", "--out", "j"],
     "--class-label 12 is not a class of model 'digits-dit'; valid: 0..9"),
    (["eval", "--guidance-scale", "2", "--num", "4", "--nfe", "2", "--out", "j"],
     "model 'digits' is unconditional, so --guidance-scale must be 1"),
    (["sample", "--model", "digits-dit", "--class-label", "10", "--nfe", "2"], "--class-label 10 is not a class"),
    (["sample", "--model", "./no/such/model"], "model folder './no/such/model' does not exist"),
    (["runs", "--db", "folder"], "is a folder"),
    (["runs", "--db", "file"], "is not a samplebench results database"),
    # files that are not what they claim
    (["sample", "--schedule", "binary.json"], "is not a text file"),
    (["sample", "--schedule", "folder"], "is a folder of schedules; give --nfe"),
    (["sample", "--schedule", "nan.json"], "not a finite time"),
    (["sample", "--schedule", "deep.json"], "invalid solver schedule"),
    (["eval", "--folder", "imgs", "--ref", "noimages.npz", "--db", "r.db"], "name the image array 'images'"),
    (["eval", "--folder", "imgs", "--ref", "vector.npz", "--db", "r.db"], "is not an .npz of images"),
    (["eval", "--folder", "imgs", "--ref", "garbage.npz", "--db", "r.db"], "is not a readable .npz"),
    (["refs", "make", "noimages.npz", "--name", "x"], "name the image array 'images'"),
    (["refs", "make", "garbage.npz", "--name", "x"], "is not a readable .npz"),
    (["train", "digits-unet", "--out", "ckpt", "--steps", "1"], "is not a readable training checkpoint"),
    # damaged job state: named, with the way to recover, before anything is touched
    (["eval", "--model", "digits-gmm", "--solver", "ddim", "--nfe", "3", "--num", "20", "--shard-size", "10",
      "--metrics", "fid", "--quiet", "--out", "job-manifest", "--db", "r.db"], "job.json' is damaged"),
    (["eval", "--model", "digits-gmm", "--solver", "ddim", "--nfe", "3", "--num", "20", "--shard-size", "10",
      "--metrics", "fid", "--quiet", "--out", "job-sample", "--db", "r.db"], "shard-00001.npz' is damaged"),
    (["eval", "--model", "digits-gmm", "--solver", "ddim", "--nfe", "3", "--num", "20", "--shard-size", "10",
      "--metrics", "fid", "--quiet", "--out", "job-feature", "--db", "r.db"], "delete it and run the job again"),
    (["eval", "--model", "digits-gmm", "--solver", "ddim", "--nfe", "3", "--num", "20", "--shard-size", "10",
      "--metrics", "fid", "--quiet", "--out", "job-seeds", "--db", "r.db"], "holds seeds 11..20, which this job"),
    ([*SEARCH, "--out", "search-manifest"], "search.json' is damaged"),
    ([*SEARCH, "--out", "search-eval"], "0123456789abcdef.json' is damaged"),
    ([*SEARCH, "--out", "search-rescore"], "not a JSON object"),
    # rewards
    ([*ALIGN, "--reward", ".rel:fn"], "relative modules are not supported"),
    ([*ALIGN, "--reward", "no_such_module_anywhere:fn"], "cannot be loaded"),
    # names not among the valid ones: the message suggests the nearest
    (["sample", "--solver", "dpmpp2m"], "unknown solver 'dpmpp2m' (did you mean 'dpmpp-2m'?); valid: ddim"),
    (["sample", "--solver", "dts_star"], "(did you mean 'dts-star'?)"),
    (["sample", "--model", "digit"], "unknown model 'digit' (did you mean 'digits'?)"),
    (["sample", "--time-grid", "karas"], "unknown time grid 'karas' (did you mean 'karras'?)"),
    (["eval", "--metrics", "fdi", "--out", "x"], "unknown metric 'fdi' (did you mean 'fid'?)"),
    (["eval", "--features", "digit", "--out", "x"], "(did you mean 'digits'?)"),
    # the app's own flags
    (["app", "--port", "0"], "--port must be from 1 to 65535"),
    (["app", "--models", "./no/such/folder"], "neither a folder nor a hub id"),
]


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(world, capsys, argv, message):
    before = tree(world)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("samplebench: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err, err
    assert tree(world) == before


def test_from_the_shell_too(world):
    """The installed entry point: stderr holds the one line and nothing else (no warnings, no traceback)."""
    for argv in (["sample", "--skip-rho", "nan"], ["sample", "--out", "earlier"],
                 ["eval", "--folder", "imgs", "--ref", "garbage.npz", "--db", "r.db"]):
        r = subprocess.run([sys.executable, "-m", "samplebench", *argv], capture_output=True, text=True, cwd=world)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("samplebench: error:"), r.stderr


def test_overwrite_replaces_only_what_the_earlier_run_wrote(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["sample", "--model", "digits-gmm", "--nfe", "3", "--quiet", "--out", str(out)]
    assert main([*args, "--num", "4"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--num", "2"]) == 2 and "is not empty" in capsys.readouterr().err
    assert main([*args, "--num", "2", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "grid.png", "notes.txt",
                                                     "summary.json"]
    assert json.loads((out / "summary.json").read_text())["images"] == ["00000.png", "00001.png"]


def test_reward_module_in_the_working_folder(tmp_path, monkeypatch, capsys):
    """``--reward mypkg.rewards:fn`` finds a package in the working folder (the README's example puts it on
    PYTHONPATH instead, so that nothing is written outside samples/)."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "rewards.py").write_text("def sharpness(x0, cond=None):\n    return x0.flatten(1).std(1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main([*ALIGN, "--solver", "best-of-n", "--reward", "mypkg.rewards:sharpness", "--model", "digits-gmm",
                 "--num", "2", "--nfe", "5", "--budget", "20", "--out", "run"]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["reward"] == "mypkg.rewards:sharpness"
    (tmp_path / "broken.py").write_text("raise RuntimeError('import-time failure')\n")
    assert main([*ALIGN, "--reward", "broken:fn", "--model", "digits-gmm", "--out", "run2"]) == 2
    err = capsys.readouterr().err
    assert "importing 'broken' failed (RuntimeError: import-time failure)" in err and err.count("\n") == 1


def test_a_locked_database_is_named_locked_after_a_bounded_wait(tmp_path, monkeypatch, capsys):
    from samplebench import results

    db = tmp_path / "runs.db"
    results.ResultsDB(db).close()
    holder = sqlite3.connect(db)
    holder.execute("BEGIN EXCLUSIVE")
    monkeypatch.setattr(results, "LOCK_WAIT_S", 0.2)
    try:
        assert main(["runs", "--db", str(db)]) == 2
    finally:
        holder.rollback()
        holder.close()
    err = capsys.readouterr().err
    assert "is locked by another process (waited 0.2 s)" in err and err.count("\n") == 1, err


def test_an_unreachable_hub_fails_at_once(tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    start = time.perf_counter()
    assert main(["sample", "--model", "someone/not-cached-anywhere", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 10 and err.count("\n") == 1, err
    assert "cannot reach the Hugging Face hub (http://127.0.0.1:9) to fetch 'someone/not-cached-anywhere'" in err
    assert not (tmp_path / "x").exists()


def test_an_unknown_hub_id_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["sample", "--model", "someone/not-cached-anywhere", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not in the Hugging Face hub cache, and HF_HUB_OFFLINE is set" in err, err
    assert not (tmp_path / "x").exists()


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys):
    import samplebench.cli as cli

    def broken():
        raise RuntimeError("line one\nline two")

    monkeypatch.setattr(cli, "_solvers", broken)
    monkeypatch.delenv("SAMPLEBENCH_TRACEBACK", raising=False)
    assert main(["solvers"]) == 1
    err = capsys.readouterr().err
    assert err == ("samplebench: internal error: RuntimeError: line one line two (SAMPLEBENCH_TRACEBACK=1 shows "
                   "where)\n")
    monkeypatch.setenv("SAMPLEBENCH_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        main(["solvers"])
