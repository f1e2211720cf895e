"""Skip-Tuning on a diffusers UNet2DModel: skip count, coefficients, identity at rho = 1, and where it acts."""

import pytest
import torch

from samplebench.errors import UsageError
from samplebench.models.skip_tuning import apply_skip_tuning, count_skips, linear_skip_coefficients, skip_tuning


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 8, 8, generator=g), torch.tensor([10.0, 500.0])


def test_skip_count_follows_the_config(tiny_unet):
    c = tiny_unet.config
    downsamplers = len(c.down_block_types) - 1
    assert count_skips(tiny_unet) == 1 + len(c.down_block_types) * c.layers_per_block + downsamplers == 4


def test_linear_coefficients():
    rho = linear_skip_coefficients(5, 0.6)
    assert rho[0] == 1.0 and rho[-1] == pytest.approx(0.6) and rho[2] == pytest.approx(0.8)
    assert linear_skip_coefficients(3, 0.5, 0.9) == pytest.approx([0.9, 0.7, 0.5])


def test_rho_one_is_the_plain_model_and_removal_restores_it(tiny_unet):
    x, t = _inputs()
    with torch.no_grad():
        plain = tiny_unet(x, t).sample
        with skip_tuning(tiny_unet, [1.0] * 4):
            same = tiny_unet(x, t).sample
        with skip_tuning(tiny_unet, linear_skip_coefficients(4, 0.7)):
            tuned = tiny_unet(x, t).sample
        after = tiny_unet(x, t).sample
    assert torch.equal(plain, same) and torch.equal(plain, after)
    assert not torch.allclose(plain, tuned)


def test_each_coefficient_reaches_its_own_skip(tiny_unet):
    """Scaling skip j by 0 equals zeroing the j-th residual by hand (positions: conv_in output first)."""
    x, t = _inputs()
    captured = {}

    def grab(module, args, kwargs):
        captured.setdefault(id(module), []).append(args[1])

    with torch.no_grad():
        for j in range(4):
            rhos = [1.0] * 4
            rhos[j] = 0.0
            captured.clear()
            handles = apply_skip_tuning(tiny_unet, rhos)
            probes = [b.register_forward_pre_hook(grab, with_kwargs=True) for b in tiny_unet.up_blocks]
            tiny_unet(x, t)
            for h in handles + probes:
                h.remove()
            # the residuals each up block saw, in global order (up blocks consume the tuple from its end)
            seen = [r for b in reversed(tiny_unet.up_blocks) for r in captured[id(b)][0]]
            assert [bool((r == 0).all()) for r in seen] == [k == j for k in range(4)]


def test_bad_coefficients(tiny_unet):
    with pytest.raises(UsageError, match="the UNet has 4 skips, got 2 coefficients"):
        apply_skip_tuning(tiny_unet, [1.0, 0.9])
    with pytest.raises(UsageError, match=">= 0"):
        apply_skip_tuning(tiny_unet, [1.0, 1.0, 1.0, -0.1])


def test_sample_with_skip_rho(tmp_path, capsys):
    import json

    import numpy as np

    from samplebench.cli import main

    args = ["--solver", "ddim", "--nfe", "3", "--num", "2", "--save-npz", "--quiet"]
    assert main(["sample", *args, "--out", str(tmp_path / "plain")]) == 0
    assert main(["sample", *args, "--skip-rho", "1.0", "--out", str(tmp_path / "one")]) == 0
    assert main(["sample", *args, "--skip-rho", "0.8", "--out", str(tmp_path / "tuned")]) == 0
    x = {k: np.load(tmp_path / k / "samples.npz")["x"] for k in ("plain", "one", "tuned")}
    assert np.array_equal(x["plain"], x["one"]) and not np.allclose(x["plain"], x["tuned"])
    summary = json.loads((tmp_path / "tuned" / "summary.json").read_text())
    assert summary["skip_coefficients"][0] == 1.0 and summary["skip_coefficients"][-1] == pytest.approx(0.8)
    capsys.readouterr()
    assert main(["sample", *args, "--model", "digits-gmm", "--skip-rho", "0.9", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "needs a UNet2DModel-style network" in err and err.count("\n") == 1 and not (tmp_path / "x").exists()


def test_eval_with_skip_rho_draws_the_images_sample_draws(tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    from samplebench.cli import main

    job = tmp_path / "job"
    assert main(["eval", "--solver", "ddim", "--nfe", "3", "--num", "4", "--shard-size", "4", "--metrics", "fid",
                 "--resamples", "10", "--skip-rho", "0.8", "--quiet", "--out", str(job), "--db",
                 str(tmp_path / "r.db")]) == 0
    row = json.loads((job / "results.json").read_text())[0]
    assert row["compute"] == "skip-rho:0.8" and json.loads((job / "job.json").read_text())["settings"]["skip_rho"] == 0.8
    assert main(["sample", "--solver", "ddim", "--nfe", "3", "--num", "4", "--skip-rho", "0.8", "--quiet", "--out",
                 str(tmp_path / "s")]) == 0
    with np.load(job / "samples" / "ddim-nfe3" / "shard-00000.npz") as z:
        shard = z["images"]
    pngs = np.stack([np.asarray(Image.open(tmp_path / "s" / f"{i:05d}.png"))[..., None] for i in range(4)])
    assert np.array_equal(shard, pngs)
    capsys.readouterr()
    assert main(["eval", "--model", "digits-dit", "--skip-rho", "0.9", "--quiet", "--out", str(tmp_path / "j2"),
                 "--db", str(tmp_path / "r.db")]) == 2
    assert "needs a UNet2DModel-style network" in capsys.readouterr().err and not (tmp_path / "j2").exists()
