"""The CLI end to end, and one-line errors with exit code 2 and nothing written for each bad input."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samplebench.cli import main
from samplebench.errors import UsageError

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
    (["--dtype", "float8"], "unknown dtype 'float8' (did you mean 'float32'?); valid: float32"),
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


def test_the_names_in_the_help_are_the_registries():
    from samplebench import names
    from samplebench.align import METHODS
    from samplebench.align.particles import POTENTIALS
    from samplebench.evaluate import METRICS
    from samplebench.metrics.extractors import EXTRACTORS, MODES
    from samplebench.models import DTYPES
    from samplebench.models.embedded import DEFAULT_MODEL, EMBEDDED
    from samplebench.models.lowdiff import UPSAMPLE_MODES
    from samplebench.samplers import solver_names
    from samplebench.samplers.grids import GRID_KINDS, LEARNED_KINDS
    from samplebench.train import RECIPES

    assert names.SOLVERS == tuple(solver_names()) and names.MODELS == tuple(EMBEDDED)
    assert names.DEFAULT_MODEL == DEFAULT_MODEL and names.ALIGN_METHODS == tuple(METHODS)
    assert names.GRIDS == GRID_KINDS and names.LEARNED_GRIDS == LEARNED_KINDS
    assert names.RECIPES == tuple(RECIPES) and names.METRICS == METRICS
    assert names.EXTRACTORS == tuple(EXTRACTORS) and names.MODES == tuple(MODES)
    assert names.DTYPES == tuple(DTYPES) and names.POTENTIALS == POTENTIALS and names.UPSAMPLE_MODES == UPSAMPLE_MODES


def test_help_explains_every_option_with_its_default_and_imports_no_torch():
    from samplebench.cli import _actions, build_parser

    parser = build_parser()
    missing = [a.option_strings or a.dest for a in _actions(parser) if not a.help]
    assert not missing, missing
    text = " ".join(subprocess.run([sys.executable, "-m", "samplebench", "sample", "--help"], capture_output=True,
                                   text=True).stdout.split())
    assert "(default: dpmpp-2m)" in text and "ipndm" in text and "(default: digits)" in text
    probe = ("import sys; from samplebench.cli import build_parser; build_parser(); "
             "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def _readme_commands() -> list[list[str]]:
    """The shell commands of the README's bash blocks, joined over backslash continuations, comments dropped."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and "=" in words[0] and words[0].split("=")[0].isidentifier():
                words = words[1:]  # an environment assignment before the program
            if words:
                commands.append(words)
    return commands


def test_readme_commands_run_as_pasted():
    """Every command names its program by path (bare ``eval`` is the shell builtin), parses, and no two sample
    runs write to one folder (a second run there is refused)."""
    from samplebench.cli import build_parser

    outs = []
    for words in _readme_commands():
        program = words[0]
        assert program in ("make", "mkdir", "printf") or program.startswith(".venv/bin/"), words
        if program in (".venv/bin/sample", ".venv/bin/samplebench"):
            argv = (["sample"] if program.endswith("/sample") else []) + words[1:]
            args = build_parser().parse_args(argv)
            if args.command == "sample":
                outs.append(args.out)
        elif program == ".venv/bin/accelerate":
            assert words[1] == "launch" and "-m" in words and words[words.index("-m") + 1] == "samplebench", words
            build_parser().parse_args(words[words.index("-m") + 2:])
    assert len(outs) == len(set(outs)) and "samples" not in outs, outs


def test_each_png_carries_the_command_that_redraws_it(tmp_path, capsys):
    import shlex

    out = tmp_path / "run"
    assert main(["sample", "--solver", "unipc-bh2", "--nfe", "4", "--num", "3", "--seed", "11", "--time-grid",
                 "time-quadratic", "--batch-size", "2", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == ("samplebench sample --model digits --solver unipc-bh2 --nfe 4 --num 3 --seed 11 "
                                  "--time-grid time-quadratic")
    png = Image.open(out / "00002.png")
    meta = json.loads(png.text["samplebench"])
    words = shlex.split(meta["command"])
    assert words[:2] == ["samplebench", "sample"] and "--seed" in words and words[words.index("--seed") + 1] == "13"
    assert main([*words[1:], "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "again" / "00000.png")), np.asarray(png))
    parameters = png.text["parameters"]  # AUTOMATIC1111-style tools read this chunk
    assert "Steps: 4, Sampler: unipc-bh2, CFG scale: 1.0, Seed: 13, Size: 16x16, Model: digits" in parameters


def test_the_one_call_api_gives_what_the_command_line_gives(tmp_path, capsys):
    import samplebench

    images = samplebench.sample("digits", solver="s3", nfe=4, seeds=[42, 43, 44])  # a schedule with skip coefficients
    assert main(["sample", "--solver", "s3", "--nfe", "4", "--num", "3", "--seed", "42", "--quiet", "--out",
                 str(tmp_path / "cli")]) == 0
    for i, im in enumerate(images):
        assert np.array_equal(np.asarray(im), np.asarray(Image.open(tmp_path / "cli" / f"{i:05d}.png")))
    assert samplebench.sample("digits", nfe=4, seeds=[5], output="uint8").shape == (1, 16, 16, 1)
    score = samplebench.fid(images, ref="digits-train")
    capsys.readouterr()
    distance = samplebench.kid(images, ref="digits-train")
    capsys.readouterr()
    assert main(["eval", "--folder", str(tmp_path / "cli"), "--ref", "digits-train", "--json", "--metrics", "fid,kid",
                 "--db", str(tmp_path / "r.db")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert score.estimate == pytest.approx(row["fid"]) and score.low <= score.estimate <= score.high
    assert distance.estimate == pytest.approx(row["kid"]) and distance.low <= distance.estimate <= distance.high
    assert score.n == 3
    with pytest.raises(UsageError, match="output 'png' is not valid"):
        samplebench.sample("digits", output="png")


@pytest.mark.parametrize("options", [
    {"model": "digits-lowdiff", "cascade": "8:6,16:4"},
    {"model": "digits", "cache": "deepcache:2", "nfe": 6},
    {"model": "digits-dit", "exit_threshold": "0.9", "nfe": 6, "class_label": 3, "guidance_scale": 2.0},
    {"model": "digits", "skip_rho": 0.8, "nfe": 6, "time_grid": "karras"},
], ids=["cascade", "deepcache", "exit+class+guidance", "skip-tuning"])
def test_the_one_call_api_takes_every_option_the_command_line_takes(options, tmp_path):
    """``samplebench.sample(**options)`` draws what ``samplebench sample --option ...`` draws (the same run spec
    and plan), and an unknown keyword is refused naming the nearest valid one."""
    import samplebench

    kw = {"nfe": None if "cascade" in options else 4, **options}
    images = samplebench.sample(**kw, seeds=[7, 8], output="uint8")
    argv = [x for k, v in kw.items() if v is not None for x in (f"--{k.replace('_', '-')}", str(v))]
    assert main(["sample", *argv, "--num", "2", "--seed", "7", "--quiet", "--out", str(tmp_path / "cli")]) == 0
    for i in range(2):
        png = np.asarray(Image.open(tmp_path / "cli" / f"{i:05d}.png"))
        assert np.array_equal(images[i][..., 0], png), i
    with pytest.raises(UsageError, match="unknown option 'skiprho' \\(did you mean 'skip_rho'\\?\\)"):
        samplebench.sample("digits", skiprho=0.8)
