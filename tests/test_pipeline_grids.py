"""Grids as pipelines give them: ``--time-grid pipeline`` (or the same sigmas as an explicit list, from t = 1 and
ending in 0) makes ``sample`` reproduce diffusers' own pipeline call on tiny local SD3, FLUX.1 and SDXL pipelines,
from the same noise, at guidance 1 and above; the step to 0 lands on the x0 prediction for every solver and costs
one network evaluation."""

import json

import numpy as np
import pytest
import torch
from pipelines import save_flux, save_sd3, save_sdxl

from samplebench.cli import main
from samplebench.errors import UsageError
from samplebench.models import load_model
from samplebench.noise import SampleGenerators

PROMPT = "a cat 3"
SEEDS = [3, 4]
NFE = 4


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline-grids")
    return {"sd3": save_sd3(root / "sd3"), "flux": save_flux(root / "flux"), "sdxl": save_sdxl(root / "sdxl")}


def _pipeline_images(model, family: str, guidance: float, **kw) -> torch.Tensor:
    """diffusers' own pipeline call from samplebench's noise for SEEDS, as images in [0, 1]."""
    z = SampleGenerators(SEEDS).randn(model.sample_shape)
    latents = model.pack(z) if family == "flux" else z
    extra = {"max_sequence_length": 256} if family == "sd3" else {}
    out = model.pipe(PROMPT, num_inference_steps=NFE, num_images_per_prompt=len(SEEDS), latents=latents,
                     guidance_scale=guidance, output_type="pt", **extra, **kw)
    return out.images.float()


def _sample(model_dir, guidance: float, grid: str, out) -> tuple[torch.Tensor, dict]:
    assert main(["sample", "--model", str(model_dir), "--solver", "euler", "--nfe", str(NFE), "--seeds",
                 ",".join(map(str, SEEDS)), "--prompt", PROMPT, "--guidance-scale", str(guidance), "--time-grid",
                 grid, "--save-npz", "--out", str(out), "--quiet"]) == 0
    images = torch.from_numpy(np.load(out / "samples.npz")["images"])
    return (images / 2 + 0.5).clamp(0, 1), json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("family", ["sd3", "flux", "sdxl"])
def test_sample_on_the_pipeline_grid_reproduces_the_pipeline(saved, family, guidance, tmp_path):
    model = load_model(str(saved[family]))
    expected = _pipeline_images(model, family, guidance)
    got, summary = _sample(saved[family], guidance, "pipeline", tmp_path / "out")
    err = (got - expected).abs().max().item()
    assert err < 1e-4, err
    assert summary["nfe"] == NFE and summary["grid_times"][-1] == 0.0  # the last step, to 0, cost one NFE
    if family != "sdxl":
        assert summary["grid_times"][0] == 1.0  # pure noise
    # the comparison is sharp: the nearest grid inside the schedule's range (from T = 1 - 1e-4, to t_min) is not it
    times = summary["grid_times"]
    near = [min(times[0], model.schedule.T), *times[1:-1], model.schedule.t_min]
    off, _ = _sample(saved[family], guidance, ",".join(map(repr, near)), tmp_path / "near")
    assert (off - expected).abs().max().item() > 1e-4  # would fail the tolerance above


def test_the_pipeline_sigmas_as_an_explicit_list(saved, tmp_path):
    """The same grid typed out (as ComfyUI's SIGMAS or diffusers' ``scheduler.sigmas`` hold it) gives the same
    images; the convention is the same for every solver."""
    model = load_model(str(saved["sd3"]))
    scheduler = model.pipe.scheduler
    scheduler.set_timesteps(NFE)
    sigmas = ",".join(repr(float(s)) for s in scheduler.sigmas)
    expected = _pipeline_images(model, "sd3", 3.0)
    got, summary = _sample(saved["sd3"], 3.0, sigmas, tmp_path / "out")
    assert (got - expected).abs().max().item() < 1e-4 and summary["nfe"] == NFE


def test_the_step_to_zero_is_the_x0_prediction_for_every_solver():
    """On an exact Gaussian-mixture denoiser and a flow path from pure noise (t = 1, lambda = -inf) to 0: every
    deterministic solver runs its own steps on the grid without its 0, then returns the x0 prediction at the last
    nonzero time; NFE: the solver's on the rest of the grid, plus 1; nothing is NaN."""
    from samplebench.models import AnalyticDenoiser, CountingDenoiser, GaussianMixture
    from samplebench.samplers import SOLVERS
    from samplebench.schedules import FlowMatching

    mixture = GaussianMixture.gaussian(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.1, 1.0, 8), (8,))
    denoiser = AnalyticDenoiser(mixture, FlowMatching())
    grid = torch.tensor([1.0, 0.6, 0.3, 0.1, 0.0], dtype=torch.float64)
    for name, spec in SOLVERS.items():
        if spec.stochastic:
            continue
        if not spec.from_pure_noise:  # refused with a clear error before any work
            with pytest.raises(UsageError, match="is undefined at pure noise"):
                spec.check_start(denoiser.schedule, grid)
            continue
        x = SampleGenerators([0, 1]).randn((8,), dtype=torch.float64)
        counted = CountingDenoiser(denoiser)
        got = spec(counted, x.clone(), grid)
        assert counted.nfe == spec.nfe(len(grid) - 1, to_zero=True) and bool(torch.isfinite(got).all()), name
        kw = {"lower_order_final": False} if "lower_order_final" in spec.fn.__code__.co_varnames else {}
        expected = denoiser(spec.fn(denoiser, x.clone(), grid[:-1], **{**spec.options, **kw}), 0.1).denoised
        assert torch.equal(got, expected), name
