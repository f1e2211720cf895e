import json

import numpy as np
import pytest
import torch

from samplebench.cli import main
from samplebench.data import load_digits
from samplebench.errors import UsageError
from samplebench.models import GaussianMixture, load_model
from samplebench.models.embedded import DEFAULT_MODEL, WEIGHTS
from samplebench.samplers import get_solver
from samplebench.sampling import sample, solver_grid


def test_loader_shapes_range_split_and_determinism():
    x, y = load_digits("train")
    xt, yt = load_digits("test")
    assert x.shape == (1437, 1, 16, 16) and xt.shape == (360, 1, 16, 16)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0 and x.dtype == torch.float32
    assert sorted(torch.bincount(yt).tolist())[0] >= 35  # stratified: every class in the test split
    x8, y8 = load_digits("train", resolution=8)
    assert x8.shape == (1437, 1, 8, 8) and torch.equal(y8, y)
    assert torch.equal(load_digits("train")[0], x)
    assert len(load_digits("all")[0]) == 1797


def test_digits_unet_loads_by_name_and_from_its_directory_and_samples_in_range():
    assert DEFAULT_MODEL == "digits"
    by_name = load_model("digits")
    by_path = load_model(str(WEIGHTS / "digits"))
    assert by_name.sample_shape == (1, 16, 16) and by_name.prediction_type == "epsilon"
    for path in (WEIGHTS / "digits").rglob("*.safetensors"):
        assert path.stat().st_size < 8 * 2**20
    solver = get_solver("dpmpp-2m")
    a = sample(by_name, solver, solver_grid(by_name, solver, 10), range(8)).images
    b = sample(by_path, solver, solver_grid(by_path, solver, 10), range(8)).images
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert float((a.abs() <= 1.1).float().mean()) > 0.99
    # recognisable digits: the shipped classifier is confident on most of them
    from samplebench.metrics.digits import digits_features

    _, probs = digits_features(a)
    assert (probs.max(1) >= 0.9).mean() >= 0.5


def test_digits_gmm_loads_by_name_and_samples_in_range():
    model = load_model("digits-gmm")
    assert (WEIGHTS / "digits-gmm" / "mixture.safetensors").stat().st_size < 8 * 2**20
    solver = get_solver("dpmpp-2m")
    images = sample(model, solver, solver_grid(model, solver, 10), range(8)).images
    assert images.shape == (8, 1, 16, 16) and torch.isfinite(images).all()
    # data lies in [-1, 1]; the mixture's regularised covariances (std >= 0.1) overshoot a little
    assert float((images.abs() <= 1.3).float().mean()) > 0.99
    assert abs(float(images.mean()) - float(load_digits("train")[0].mean())) < 0.1


def test_train_digits_gmm_smoke(tmp_path):
    assert main(["train", "digits-gmm", "--out", str(tmp_path / "gmm")]) == 0
    card = json.loads((tmp_path / "gmm" / "model_card.json").read_text())
    assert card["components"] == 10 and card["test_loglik_per_image"] > 200
    shipped = GaussianMixture.load(WEIGHTS / "digits-gmm")
    assert torch.allclose(GaussianMixture.load(tmp_path / "gmm").means, shipped.means, atol=1e-6)


def test_unknown_recipe(capsys):
    assert main(["train", "nope", "--out", "/tmp/never-written"]) == 2
    assert "unknown recipe 'nope'; valid: digits-unet, digits-dit, digits-flow, digits-lowdiff, digits-classifier, digits-gmm" in capsys.readouterr().err


def test_digits_dit_samples_with_and_without_early_exit(tmp_path):
    for name, extra in (("full", []), ("exit", ["--exit-threshold", "0.9"])):
        assert main(["sample", "--model", "digits-dit", "--nfe", "6", "--num", "4", "--out", str(tmp_path / name),
                     "--quiet", *extra]) == 0
    full, ee = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("full", "exit"))
    assert full["compute"]["block_fraction"] == 1.0 and full["nfe_per_sample"] == ee["nfe_per_sample"] == 6
    assert 0 < ee["compute"]["block_fraction"] < 1 and ee["exit_threshold"] == "0.9"


def test_train_digits_dit_smoke(tmp_path):
    from diffusers import DiTTransformer2DModel

    from samplebench.models.deediff import UncertaintyHeads, early_exit_forward
    from samplebench.train import train

    card = train("digits-dit", tmp_path, steps=2)
    assert card["steps"] == 2 and set(card["final_terms_last_500_this_run"]) == {"simple", "u", "ual"}
    dit = DiTTransformer2DModel.from_pretrained(tmp_path / "transformer")
    heads = UncertaintyHeads.from_pretrained(tmp_path / "uem")
    x, t, y = torch.zeros(2, 1, 16, 16), torch.tensor([10.0, 900.0]), torch.tensor([3, 10])
    with torch.no_grad():
        out, trace = early_exit_forward(dit, heads, x, t, y, 2.0)
    assert out.shape == x.shape and trace.blocks.tolist() == [8, 8]
    # the folder loads by path, like the shipped model, and samples with early exit
    model = load_model(str(tmp_path))
    assert model.name == str(tmp_path) and model.pipe.uem is not None and model.num_classes == 10
    assert torch.allclose(model.data_mean, load_digits("train")[0].mean(0))
    assert main(["sample", "--model", str(tmp_path), "--nfe", "4", "--num", "2", "--exit-threshold", "-1",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["compute"]["block_fraction"] == 2 / 8  # the patient rule: the second block for every row
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(b"broken")
    with pytest.raises(UsageError, match="could not load the DiT in"):
        load_model(str(tmp_path))


def test_digits_flow_is_a_flow_model_that_draws_the_asked_digits():
    """The embedded flow-matching DiT: velocity prediction on x_t = (1 - t) x_0 + t eps, shift-1 grid, and its
    class-conditional samples are the asked digits (a model that ignores its labels, or a sampler that treats the
    velocity as eps, fails)."""
    from samplebench.metrics.digits import digits_features
    from samplebench.schedules import FlowMatching

    model = load_model("digits-flow")
    assert isinstance(model.schedule, FlowMatching) and model.prediction_type == "flow"
    assert model.num_classes == 10 and model.default_grid == "flow-shift:1" and model.pipe.uem is None
    card = json.loads((WEIGHTS / "digits-flow" / "model_card.json").read_text())
    assert card["recipe"] == "digits-flow" and card["steps"] == 8000
    solver = get_solver("dpmpp-2m")
    images = sample(model, solver, solver_grid(model, solver, 10), range(40)).images
    _, probs = digits_features(images)
    assert (probs.argmax(1) == np.arange(40) % 10).mean() >= 0.9


def test_shipped_models_hold_the_training_mean():
    """The AFS "mean" first step of the digits models reads the folders' data_mean.npy."""
    mean = load_digits("train")[0].mean(0)
    for name in ("digits", "digits-dit", "digits-flow"):
        assert torch.equal(load_model(name).data_mean, mean)
    assert load_model("digits", dtype="bfloat16").data_mean.dtype == torch.bfloat16


def test_train_digits_lowdiff_smoke(tmp_path):
    from samplebench.train import train

    card = train("digits-lowdiff", tmp_path, steps=2)
    assert card["steps"] == 2 and set(card["final_terms_last_500_this_run"]) == {"8", "16"}
    model = load_model(str(tmp_path))
    assert model.takes_low_res and model.resolutions == (8, 16) and model.condition_noise == 0.1
    assert model.t_start == 0.3 == load_model("digits-lowdiff").t_start


def test_digits_lowdiff_follows_its_condition():
    """The shipped cascade model's 16x16 stage restores the image it is conditioned on: from heavy noise, the
    prediction is close to the condition's digit and far from another digit."""
    from samplebench.models import Conditioning
    from samplebench.models.lowdiff import upsample

    model = load_model("digits-lowdiff")
    x8 = load_digits("test", 8)[0][:8]
    up, other = upsample(x8, 16), upsample(x8.roll(1, 0), 16)
    t = torch.tensor(0.8, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x_t = float(model.schedule.alpha(t)) * up + float(model.schedule.sigma(t)) * torch.randn(up.shape, generator=g)
    s = torch.tensor([0.1], dtype=torch.float64)  # the model's default condition noise
    level, a_s, s_s = (float(f(s)) for f in (model.schedule.model_time, model.schedule.alpha, model.schedule.sigma))
    eps_c = torch.randn(up.shape, generator=g)
    pred = {name: model.denoiser(Conditioning(low_res=a_s * c + s_s * eps_c, low_res_level=level), 8)(x_t, t).denoised
            for name, c in (("own", up), ("other", other), ("zero", torch.zeros_like(up)))}
    err = {name: float(((p - up) ** 2).mean()) for name, p in pred.items()}
    assert err["own"] < 0.15 and err["other"] > 4 * err["own"] and err["zero"] > 4 * err["own"], err


def test_digits_lowdiff_cascade_out_of_the_box(tmp_path):
    assert main(["sample", "--model", "digits-lowdiff", "--cascade", "8:6,16:4", "--num", "16",
                 "--out", str(tmp_path), "--quiet"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["nfe_per_sample"] == 10 and [s["nfe"] for s in summary["compute"]["stages"]] == [6, 4]
    assert summary["cascade"]["t_start"] == 0.3 and summary["cascade"]["stages"][1]["grid_times"][0] == 0.3
    assert 0.5 < summary["compute"]["full_resolution_nfe_equivalent"] < 6
    from PIL import Image

    from samplebench.metrics.digits import digits_features

    images = torch.stack([torch.from_numpy(np.array(Image.open(tmp_path / f))) for f in summary["images"]])
    images = images.float().unsqueeze(1) / 127.5 - 1
    _, probs = digits_features(images)
    assert (probs.max(1) >= 0.9).mean() >= 0.5  # recognisable digits
