"""What a user reads: refusals that say what to do (the nearest-name hints are in test_hardening's table), records
and titles that name every setting, and an evaluation that says how long it will take and reports while it
scores."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from samplebench.cli import main
from samplebench.errors import UsageError


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_solver_list_names_s3_and_the_alignment_methods(capsys, tmp_path):
    err = _error(capsys, ["sample", "--solver", "nope", "--out", str(tmp_path / "o")])
    assert "s3" in err and "dts-star" in err and "best-of-n" in err and "did you mean" not in err


def test_a_search_budget_that_stage_0_uses_up_is_refused(capsys, tmp_path):
    err = _error(capsys, ["search", "--model", "digits-gmm", "--nfe", "3,4", "--budget", "20", "--out",
                          str(tmp_path / "s")])
    assert "--budget 20 gives 10 screenings at NFE 3" in err and "nothing would be searched" in err
    assert "or --budget quick" in err and not (tmp_path / "s").exists()


def test_kid_of_two_images_is_refused_not_a_collapsed_interval():
    import samplebench

    images = samplebench.sample("digits", nfe=4, seeds=range(3), output="uint8")
    with pytest.raises(UsageError, match="a KID interval needs at least 3 generated samples, got 2"):
        samplebench.kid(images[:2])
    k = samplebench.kid(images)
    assert k.low < k.estimate < k.high  # three images: a (wide) interval with spread


def test_a_folder_of_the_wrong_size_says_which_features_take_it(capsys, tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    err = _error(capsys, ["eval", "--folder", str(folder), "--ref", "digits-train", "--db", str(tmp_path / "r.db")])
    assert "takes 16x16 images, got 64x64; give --features inception" in err and "refs make" in err


def test_records_and_titles_name_every_setting(tmp_path, capsys):
    out = tmp_path / "dit"
    assert main(["sample", "--model", "digits-dit", "--class-label", "3", "--guidance-scale", "2", "--exit-threshold",
                 "0.9", "--nfe", "6", "--num", "2", "--quiet", "--out", str(out)]) == 0
    title = Image.open(out / "grid.png").text["samplebench-grid"]
    assert title == "digits-dit · dpmpp-2m on logsnr · NFE 6 · class 3 · guidance 2 · exit 0.9", title
    from PIL import ImageDraw

    from samplebench.sampling import _wrap

    draw, width = ImageDraw.Draw(Image.new("RGB", (1, 1))), Image.open(out / "grid.png").width
    lines = _wrap(title, width - 8, draw)
    assert len(lines) > 1 and all(draw.textlength(line.replace(" · ", "  |  ")) <= width - 4 for line in lines)
    schedule = tmp_path / "nfe4.json"
    from samplebench.usf.shipped import s3_folder

    schedule.write_text((s3_folder("digits") / "nfe4.json").read_text())
    assert main(["sample", "--schedule", str(schedule), "--num", "2", "--quiet", "--out", str(tmp_path / "u")]) == 0
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    from samplebench.plan import schedule_sha256
    from samplebench.usf import SolverSchedule

    assert summary["solver"] == "usf" and summary["schedule_file"] == str(schedule)
    assert summary["schedule_sha256"] == schedule_sha256(SolverSchedule.load(schedule))
    capsys.readouterr()
    assert main(["sample", "--solver", "dts", "--reward", "class:3", "--budget", "400", "--nfe", "20", "--num", "2",
                 "--quiet", "--out", str(tmp_path / "dts")]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "dts" / "summary.json").read_text())
    assert "nfe" not in summary and summary["nfe_total"] <= 400 and summary["nfe_per_sample"] == \
        summary["nfe_total"] / 2 and printed["nfe_total"] == summary["nfe_total"]
    title = Image.open(tmp_path / "dts" / "grid.png").text["samplebench-grid"]
    assert title.startswith("digits · dts, reward class:3, lambda 1 · ") and "budget 400" in title


def test_eval_says_its_estimated_time_and_reports_while_it_scores(tmp_path, capsys):
    argv = ["eval", "--model", "digits-gmm", "--solver", "ddim", "--nfe", "4", "--num", "40", "--shard-size", "20",
            "--metrics", "fid,kid", "--resamples", "50", "--out", str(tmp_path / "job"), "--db", str(tmp_path / "r.db")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    first = err.replace("\r", "\n").strip().splitlines()[0]
    assert first.startswith("eval digits-gmm: 1 cells x 40 samples; estimated ") and "scoring" in first, first
    assert "score ddim nfe=4: features" in err and "score ddim nfe=4: FID interval" in err
    assert "score ddim nfe=4: KID interval" in err
    assert main(argv) == 0  # done: nothing left to estimate, no probe drawn
    assert "every cell is sampled and scored" in capsys.readouterr().err


def test_the_results_plot_draws_the_most_runs_when_settings_mix():
    from samplebench.app import core

    rows = [{"model": m, "extractor": "digits", "mode": "clean", "ref": "digits-train", "ref_sha256": "a", "nfe": n,
             "fid": 1.0} for m, k in (("digits", 3), ("digits-dit", 1)) for n in range(k)]
    drawn, note = core.plot_rows(rows)
    assert {r["model"] for r in drawn} == {"digits"} and "most runs of 2 settings" in note
    assert core.plot_rows(rows[:3]) == (rows[:3], "")
