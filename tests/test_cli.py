"""The CLI end to end, and one-line errors with exit code 2 and nothing written for each bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samplebench.cli import main

BIN = Path(sys.executable).parent  # the console scripts installed beside this interpreter


def test_sample_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sample", "--solver", "unipc-bh2", "--nfe", "5", "--num", "5", "--seed", "3", "--batch-size", "2",
                 "--out", str(out), "--save-npz", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nfe_per_sample"] == 5 and summary["seeds"] == [3, 4, 5, 6, 7] and summary["wall_time_s"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png",
                                                     "00004.png", "grid.png", "samples.npz", "summary.json"]
    meta = json.loads(Image.open(out / "00001.png").text["samplebench"])
    assert meta["seed"] == 4 and meta["solver"] == "unipc-bh2" and meta["nfe"] == 5 and meta["model"] == "digits"
    assert "version" in meta and meta["time_grid"] == "logsnr"
    arrays = np.load(out / "samples.npz")
    assert arrays["images"].shape == (5, 1, 16, 16)
    png = np.asarray(Image.open(out / "00002.png"))
    assert np.array_equal(png, np.round((np.clip(arrays["images"][2, 0], -1, 1) + 1) * 127.5).astype(np.uint8))
    printed = json.loads(capsys.readouterr().out)
    assert printed["nfe_per_sample"] == 5


def test_explicit_grid_and_console_scripts(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "samplebench", "sample", "--solver", "ddim", "--nfe", "3",
                        "--time-grid", "1.0,0.5,0.1,0.001", "--num", "2", "--out", str(out), "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["grid_times"] == [1.0, 0.5, 0.1, 0.001]
    listing = subprocess.run([BIN / "samplebench", "solvers"], capture_output=True, text=True)
    assert listing.returncode == 0 and "dpmpp-2m" in listing.stdout and len(listing.stdout.splitlines()) >= 10
    assert "gaussian" in subprocess.run([BIN / "samplebench", "models"], capture_output=True, text=True).stdout


BAD = [
    (["--solver", "nope"], "unknown solver 'nope'; valid: ddim"),
    (["--model", "nope"], "unknown model 'nope'; valid: digits, gaussian, digits-gmm"),
    (["--solver", "heun", "--nfe", "1"], "below the minimum"),
    (["--solver", "heun", "--nfe", "7"], "nearest valid: 6, 8"),
    (["--nfe", "0"], "--nfe must be >= 1"),
    (["--dtype", "float8"], "unknown dtype 'float8'; valid: float32"),
    (["--device", "cuda:7"], "device 'cuda:7' is not available"),
    (["--device", "toaster"], "unknown device 'toaster'"),
    (["--time-grid", "wiggly"], "unknown time grid 'wiggly'"),
    (["--time-grid", "1.0,0.5", "--nfe", "3"], "explicit time grid has 1 steps"),
    (["--time-grid", "0.5,1.0", "--nfe", "1"], "strictly decreasing"),
    (["--class-label", "3"], "not class-conditional"),
    (["--prompt", "a cat"], "takes no prompt"),
    (["--num", "0"], "--num must be >= 1"),
    (["--nfe", "ten"], "invalid integer 'ten'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--cache", "deepcache:0"], "--cache 'deepcache:0' is not valid; valid: deepcache:N"),
    (["--cache", "deepcache:2:5"], "DeepCache branch 5 is out of range for this UNet; valid: 1..2"),
    (["--cache", "fbcache:0.1"], "--cache fbcache needs a transformer"),
    (["--exit-threshold", "0.9"], "--exit-threshold needs a DiT with DeeDiff uncertainty heads"),
    (["--exit-threshold", "0.9@2,0.8"], "--exit-threshold '0.9@2,0.8' is not valid"),
    (["--exit-threshold", "0.9", "--cache", "deepcache:2"], "not both"),
]


@pytest.mark.parametrize("args,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["sample", "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_not_a_diffusers_model_directory(tmp_path, capsys):
    bogus = tmp_path / "model"
    bogus.mkdir()
    (bogus / "weights.bin").write_bytes(b"\0")
    out = tmp_path / "never"
    assert main(["sample", "--model", str(bogus), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a diffusers pipeline" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_input_from_the_shell_prints_no_traceback(tmp_path):
    r = subprocess.run([BIN / "sample", "--solver", "nope", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().startswith("samplebench: error:") and "Traceback" not in r.stderr
