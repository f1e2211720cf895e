"""SDXL, SD3, FLUX.1 and PixArt pipelines: tiny random ones saved here load through ``load_model``, and on the
same noise and timesteps our samplers through the adapters reproduce each pipeline's own denoising loop (its
scheduler, conditioning, guidance and latent packing)."""

import math

import pytest
import torch
from pipelines import save_flux, save_pixart, save_sd3, save_sdxl

from samplebench.models import Conditioning, load_model
from samplebench.samplers import get_solver
from samplebench.schedules import DiscreteVP, FlowMatching

STEPS = 6
PROMPT = "a cat 3"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {"sdxl": save_sdxl(root / "sdxl"), "sd3": save_sd3(root / "sd3"), "flux": save_flux(root / "flux"),
            "flux-cfg": save_flux(root / "flux-cfg", guidance_embeds=False), "pixart": save_pixart(root / "pixart")}


def test_families_load_as_their_adapters(saved):
    from diffusers import FluxPipeline

    expected = {"sdxl": ("SDXLModel", DiscreteVP, None), "sd3": ("SD3Model", FlowMatching, "flow-shift:3"),
                "flux": ("FluxModel", FlowMatching, None), "pixart": ("PixArtModel", DiscreteVP, None)}
    for name, (cls, schedule, grid) in expected.items():
        model = load_model(str(saved[name]))
        assert type(model).__name__ == cls and isinstance(model.schedule, schedule) and model.takes_prompt
        assert model.prediction_type == ("flow" if schedule is FlowMatching else "epsilon")
        if grid is not None:
            assert model.default_grid == grid
    flux = load_model(str(saved["flux"]))
    assert flux.sample_shape == (4, 128, 128)  # the pipeline's default 128 x vae factor 2 pixels, 2x2-packable
    mu = 0.5 + (64 * 64 - 256) * (1.15 - 0.5) / (4096 - 256)  # FLUX's dynamic shift for 4096 image tokens
    assert flux.default_grid == f"flow-shift:{math.exp(mu):.6g}"
    assert isinstance(flux.pipe, FluxPipeline)


def _final_denoise(denoiser, x, t):
    """The last step to sigma = 0 of Euler-type schedulers returns the data prediction."""
    return denoiser(x, float(t)).denoised


def _pipeline_latents(model, z, **kw):
    out = model.pipe(PROMPT, num_inference_steps=STEPS, num_images_per_prompt=z.shape[0], output_type="latent",
                     **kw).images
    if type(model).__name__ == "FluxModel":
        out = model.unpack(out, *z.shape[2:])
    return out


CASES = {
    # family: (guidance, pipeline kwargs, our solver, grid from the pipeline's scheduler)
    "sdxl": (3.0, {}, "ddim"),  # EulerDiscreteScheduler: Euler in sigma is DDIM on the VP path
    "sd3": (3.0, {"max_sequence_length": 256}, "ddim"),  # FlowMatchEuler, shift 3
    "flux": (3.5, {}, "ddim"),  # FlowMatchEuler with dynamic shift; guidance as an input (1 NFE)
    "flux-cfg": (2.5, {"negative_prompt": "", "guidance_scale": 1.0}, "ddim"),  # true CFG
    "pixart": (3.0, {"use_resolution_binning": False}, "dpmpp-2m"),  # DPMSolverMultistep, 2M, final step to 0
}


@pytest.mark.parametrize("family", list(CASES))
def test_adapter_reproduces_the_pipeline(saved, family):
    guidance, kw, solver = CASES[family]
    model = load_model(str(saved[family]))
    z = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(3))
    pipe_kw = {"guidance_scale": guidance, **kw}
    if family == "flux-cfg":
        pipe_kw["true_cfg_scale"] = guidance
    latents = model.pack(z) if family.startswith("flux") else z
    expected = _pipeline_latents(model, z, latents=latents.clone(), **pipe_kw)
    scheduler = model.pipe.scheduler
    denoiser = model.denoiser(Conditioning(prompt=PROMPT, guidance_scale=guidance), 2)
    if isinstance(model.schedule, FlowMatching):
        grid = scheduler.sigmas[:-1].to(torch.float64)
    else:  # diffusers timestep n is t = (n + 1) / N
        grid = (scheduler.timesteps.to(torch.float64) + 1) / scheduler.config.num_train_timesteps
    assert float(scheduler.sigmas[-1]) == 0.0
    options = {"lower_order_final": False} if solver == "dpmpp-2m" else {}
    x = get_solver(solver)(denoiser, z.clone(), grid, **options)
    got = _final_denoise(denoiser, x, grid[-1])
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel
    # the comparison is sharp: without guidance (or with another prompt) it fails
    other = model.denoiser(Conditioning(prompt="a dog 7", guidance_scale=guidance), 2)
    wrong = _final_denoise(other, get_solver(solver)(other, z.clone(), grid, **options), grid[-1])
    assert ((wrong - expected).norm() / expected.norm()).item() > 1e-3


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux", "pixart"])
def test_every_solver_family_samples_images(saved, family, tmp_path):
    """The full sample path: prompt, solver, NFE, decode to images (SDXL with DPM-Solver++, flow ones with UniPC)."""
    from samplebench.sampling import SampleConfig, run_sample

    solver = {"sdxl": "dpmpp-2m", "sd3": "unipc-bh2", "flux": "dpmpp-3m", "pixart": "unipc-bh1"}[family]
    from PIL import Image

    summary = run_sample(SampleConfig(model=str(saved[family]), solver=solver, nfe=3, num=2, prompt=PROMPT,
                                      guidance_scale=2.0), tmp_path / "out", progress=False)
    assert summary["nfe"] == 3 and len(summary["images"]) == 2
    model = load_model(str(saved[family]))
    size = model.sample_shape[1] * model.pipe.vae_scale_factor
    assert Image.open(tmp_path / "out" / summary["images"][0]).size == (size, size)
    assert summary["time_grid"] == (model.default_grid or get_solver(solver).default_grid)


def test_a_vae_that_overflows_in_float16_decodes_in_float32():
    """SDXL's VAE is marked ``force_upcast``: in a float16 model it is moved to float32 before decoding."""
    from pipelines import _tiny_vae

    from samplebench.models.diffusers_models import _vae_decode

    vae = _tiny_vae()
    vae.register_to_config(force_upcast=True)
    vae.to(torch.float16)
    z = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    images = _vae_decode(vae, z, torch.float16)
    assert vae.dtype == torch.float32 and images.dtype == torch.float32 and bool(torch.isfinite(images).all())
    plain = _tiny_vae()
    plain.register_to_config(force_upcast=False)
    plain.to(torch.bfloat16)
    _vae_decode(plain, z, torch.bfloat16)
    assert plain.dtype == torch.bfloat16  # others stay in the model's dtype


@pytest.mark.parametrize("solver", ["dpmpp-2m", "unipc-bh2"])
def test_sd3_with_the_flow_sigma_modes_of_diffusers_multistep_schedulers(saved, solver):
    """SD3 sampled with DPMSolverMultistepScheduler / UniPCMultistepScheduler in their flow-sigma modes (final step
    to sigma 0): ours through the adapter on the same sigmas. These schedulers hand the network sigma x 1000
    truncated to an integer (at most 999), so our schedule does the same here."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    class Truncated(FlowMatching):
        def model_time(self, t):
            return (1000.0 * t).to(torch.int64).clamp(max=999).to(torch.float64)

    model = load_model(str(saved["sd3"]))
    cls, options = ((DPMSolverMultistepScheduler, {"solver_order": 2}) if solver == "dpmpp-2m" else
                    (UniPCMultistepScheduler, {"solver_type": "bh2"}))
    model.pipe.scheduler = cls(num_train_timesteps=1000, use_flow_sigmas=True, prediction_type="flow_prediction",
                               flow_shift=3.0, final_sigmas_type="zero", **options)
    z = torch.randn((2, *model.sample_shape), generator=torch.Generator().manual_seed(5))
    expected = _pipeline_latents(model, z, latents=z.clone(), guidance_scale=3.0, max_sequence_length=256)
    sigmas = model.pipe.scheduler.sigmas
    grid = sigmas[:-1].to(torch.float64)
    model.schedule = Truncated(T=1.0, t_min=float(grid[-1]))
    denoiser = model.denoiser(Conditioning(prompt=PROMPT, guidance_scale=3.0), 2)
    x = get_solver(solver)(denoiser, z.clone(), grid, lower_order_final=False)
    got = _final_denoise(denoiser, x, grid[-1])
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel
