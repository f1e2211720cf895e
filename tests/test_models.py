"""Adapters: each diffusers model type round-trips save_pretrained / from_pretrained and samples."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline

from pipelines import save_ddpm, save_dit, save_sd
from samplebench.errors import UsageError
from samplebench.models import CFGDenoiser, Conditioning, CountingDenoiser, NetworkDenoiser, load_model
from samplebench.samplers import get_solver
from samplebench.sampling import sample, solver_grid


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "epsilon": save_ddpm(root / "ddpm-eps"),
        "v_prediction": save_ddpm(root / "ddpm-v", "v_prediction"),
        "sample": save_ddpm(root / "ddpm-x0", "sample"),
        "class": save_ddpm(root / "ddpm-class", num_class_embeds=3),
        "dit": save_dit(root / "dit"),
        "sd": save_sd(root / "sd"),
    }


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_unet2d_each_prediction_type_matches_diffusers_ddim(dirs, prediction_type):
    """The eps / v / x0 conversions: our DDIM on the loaded pipeline equals DDIMScheduler on the same pipeline."""
    model = load_model(str(dirs[prediction_type]))
    assert model.sample_shape == (1, 8, 8) and model.prediction_type == prediction_type
    pipe = DDPMPipeline.from_pretrained(dirs[prediction_type])
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                          set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(5)  # 1000 / 5: DDIM steps to t - 200, exactly the next timestep
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            expected = scheduler.step(pipe.unet(expected, t).sample, t, expected).prev_sample
    grid = torch.tensor([(int(k) + 1) / 1000 for k in scheduler.timesteps] + [1e-3], dtype=torch.float64)
    got = get_solver("ddim")(model.denoiser(Conditioning(), 2), x, grid)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-4


def test_class_conditional_unet_uses_labels(dirs):
    model = load_model(str(dirs["class"]))
    assert model.num_classes == 3
    solver = get_solver("dpmpp-2m")
    grid = solver_grid(model, solver, 4)
    a = sample(model, solver, grid, [0, 1], class_label=0).images
    b = sample(model, solver, grid, [0, 1], class_label=2).images
    assert torch.isfinite(a).all() and not torch.allclose(a, b)
    with pytest.raises(UsageError, match="no unconditional input"):
        sample(model, solver, grid, [0], class_label=0, guidance_scale=2.0)


def test_dit_latent_class_conditional_with_guidance(dirs):
    model = load_model(str(dirs["dit"]))
    assert model.num_classes == 10 and model.sample_shape == (4, 4, 4)
    solver = get_solver("ddim")
    grid = solver_grid(model, solver, 3)
    res = sample(model, solver, grid, [0, 1, 2], guidance_scale=4.0)
    assert res.images.shape == (3, 3, 8, 8) and torch.isfinite(res.images).all()
    assert res.nfe == 3  # batched guidance: one network call per step


def test_cfg_combination_and_nfe_accounting(dirs):
    """eps = eps_u + w (eps_c - eps_u); batched and unbatched guidance agree, counting 1 and 2 NFE per call."""
    model = load_model(str(dirs["dit"]))
    labels = torch.tensor([1, 2])
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    guided = model.denoiser(Conditioning(labels, guidance_scale=3.0), 2)
    assert isinstance(guided, CFGDenoiser)
    cond = model.denoiser(Conditioning(labels), 2)(x, 0.5).eps
    null = {"class_labels": torch.full_like(labels, 10)}  # DiT's null class
    uncond = NetworkDenoiser(lambda x, t: model._network(x, t, null), model.schedule)(x, 0.5).eps
    assert torch.allclose(guided(x, 0.5).eps, uncond + 3.0 * (cond - uncond), atol=1e-5)
    guided.batched, guided.nfe_per_call = False, 2
    counter = CountingDenoiser(guided)
    assert torch.allclose(counter(x, 0.5).eps, uncond + 3.0 * (cond - uncond), atol=1e-5)
    assert counter.nfe == 2 and counter.calls == 1


def test_stable_diffusion_style_latent_pipeline_with_prompts(dirs):
    model = load_model(str(dirs["sd"]))
    assert model.takes_prompt and model.prediction_type == "v_prediction" and model.sample_shape == (4, 4, 4)
    solver = get_solver("unipc-bh2")
    grid = solver_grid(model, solver, 4)
    a = sample(model, solver, grid, [0, 1], prompt="a red bird", guidance_scale=5.0)
    b = sample(model, solver, grid, [0, 1], prompt="a blue fish", guidance_scale=5.0)
    assert a.images.shape == (2, 3, 8, 8) and torch.isfinite(a.images).all()
    assert not torch.allclose(a.images, b.images)


def test_conditioning_errors(dirs):
    model = load_model(str(dirs["epsilon"]))
    with pytest.raises(UsageError, match="not class-conditional"):
        model.check_conditioning(Conditioning(class_labels=torch.tensor([1])))
    with pytest.raises(UsageError, match="takes no prompt"):
        model.check_conditioning(Conditioning(prompt="x"))
    dit = load_model(str(dirs["dit"]))
    with pytest.raises(UsageError, match="0..9"):
        dit.check_conditioning(Conditioning(class_labels=torch.tensor([10])))


def test_not_a_diffusers_directory(tmp_path):
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(UsageError, match="not a diffusers pipeline"):
        load_model(str(tmp_path))


def test_offline_hub_id_fails_cleanly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError):
        load_model("no-such-owner/no-such-model")


def test_bfloat16_network_with_float32_solver_state(dirs):
    """--dtype runs the network in that dtype; the solver state stays float32 and the result stays close."""
    solver = get_solver("dpmpp-2m")
    m32 = load_model(str(dirs["epsilon"]))
    m16 = load_model(str(dirs["epsilon"]), dtype="bfloat16")
    assert next(m16.pipe.unet.parameters()).dtype == torch.bfloat16
    grid = solver_grid(m32, solver, 4)
    a = sample(m32, solver, grid, [0, 1]).x
    b = sample(m16, solver, grid, [0, 1]).x
    assert b.dtype == torch.float32 and ((a - b).norm() / a.norm()).item() < 0.05
