"""The diffusers scheduler runs a USF schedule inside real pipelines and reproduces the executor."""

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, StableDiffusionPipeline

from pipelines import save_ddpm, save_sd
from samplebench.models import Conditioning, CountingDenoiser, load_model
from samplebench.samplers import make_grid
from samplebench.search.space import Gene, build
from samplebench.usf import SolverSchedule, Step, USFScheduler, usf_sample


def _mixed(model, steps: int, afs: str = "none") -> SolverSchedule:
    """A schedule with every kind of decision: orders 1-3, noise and data, relaxations, pseudo and implicit."""
    genes = [Gene("data", 1, corrector="pseudo"), Gene("noise", 2, 1, "unipc-bh1", corrector="implicit"),
             Gene("data", 3, 2, "linear", 0.05, "pseudo"), Gene("noise", 2, 2, "dpmsolver-2")] * 3
    return build(make_grid(model.schedule, "time-quadratic", steps).tolist(), genes[:steps], afs)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("usf-pipelines")
    return {"ddpm": save_ddpm(root / "ddpm"), "sd": save_sd(root / "sd")}


@pytest.mark.parametrize("afs, last_corrector, shifted", [("none", False, False), ("zero", False, True),
                                                          ("zero-official", True, False)])
def test_ddpm_pipeline_with_the_usf_scheduler_reproduces_the_executor(dirs, afs, last_corrector, shifted):
    import dataclasses

    from samplebench.usf import Corrector, Derivative

    model = load_model(str(dirs["ddpm"]))
    schedule = _mixed(model, 5, afs)
    if shifted:  # the network at input times apart from the solver's (LD3's), in the pipeline as in the executor
        ts = schedule.timesteps
        schedule = dataclasses.replace(schedule, model_times=(ts[0], *(0.97 * t for t in ts[1:-1]), ts[-1]))
    if last_corrector:  # the pipeline evaluates once more, at the end point, for the corrector
        last = dataclasses.replace(schedule.steps[-1], corrector=Corrector("pseudo", 3, (Derivative((-1, -3)),) * 2))
        schedule = dataclasses.replace(schedule, steps=(*schedule.steps[:-1], last))
    pipe = DDPMPipeline.from_pretrained(dirs["ddpm"])
    pipe.scheduler = USFScheduler.from_scheduler(pipe.scheduler, schedule)
    calls = schedule.nfe + (afs != "none")  # a pipeline cannot skip its first call
    assert pipe.scheduler.num_evaluations == calls
    with pytest.raises(ValueError, match=f"num_inference_steps={calls}"):
        pipe(batch_size=2, num_inference_steps=calls + 1)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=calls,
                  output_type="np").images
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    denoiser = CountingDenoiser(model.denoiser(Conditioning(), 2))
    x = usf_sample(denoiser, x_t, schedule)
    assert denoiser.nfe == schedule.nfe
    expected = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    assert np.abs(images - expected).max() < 1e-5
    # a second run on the same scheduler starts afresh
    again = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=calls,
                 output_type="np").images
    assert np.array_equal(images, again)


def test_stable_diffusion_pipeline_with_the_usf_scheduler_reproduces_the_executor(dirs):
    model = load_model(str(dirs["sd"]))
    schedule = _mixed(model, 4)
    pipe = StableDiffusionPipeline.from_pretrained(dirs["sd"], safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = USFScheduler.from_scheduler(pipe.scheduler, schedule)
    x_t = torch.randn(1, *model.sample_shape, generator=torch.Generator().manual_seed(3))
    latents = pipe("a digit", num_inference_steps=schedule.nfe, guidance_scale=3.0, latents=x_t.clone(),
                   output_type="latent").images
    x = usf_sample(model.denoiser(Conditioning(None, "a digit", "", 3.0), 1), x_t.clone(), schedule)
    assert ((latents - x).norm() / x.norm()).item() < 1e-5
    # and the comparison can fail: another schedule gives other latents
    other = _mixed(model, 5)
    y = usf_sample(model.denoiser(Conditioning(None, "a digit", "", 3.0), 1), x_t.clone(), other)
    assert ((latents - y).norm() / y.norm()).item() > 1e-3


def test_add_noise_is_what_diffusers_schedulers_add():
    """img2img and training call ``scheduler.add_noise``: the USF scheduler adds noise as DDPMScheduler does."""
    from diffusers import DDPMScheduler

    from samplebench.usf import USFScheduler, known_schedule

    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    grid = torch.tensor([1.0, 0.5, 0.1, 0.001], dtype=torch.float64)
    usf = USFScheduler.from_scheduler(ddpm, known_schedule("ddim", grid))
    x0 = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([0, 499, 999])
    torch.testing.assert_close(usf.add_noise(x0, noise, timesteps), ddpm.add_noise(x0, noise, timesteps),
                               rtol=1e-6, atol=1e-6)


def test_the_usf_scheduler_runs_on_a_flow_matching_pipeline_config(tiny_unet):
    """From a FlowMatchEulerDiscreteScheduler (SD3, FLUX): the flow path and the velocity read of the network, the
    pipeline's loop reproducing the executor, and add_noise on the flow path."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from samplebench.models import NetworkDenoiser
    from samplebench.schedules import FlowMatching
    from samplebench.usf import known_schedule

    flow = FlowMatching()
    schedule = known_schedule("dpmpp-3m", make_grid(flow, "flow-shift:3", 6))
    scheduler = USFScheduler.from_scheduler(FlowMatchEulerDiscreteScheduler(shift=3.0), schedule)
    assert isinstance(scheduler.noise_schedule, FlowMatching) and scheduler.config.flow
    assert USFScheduler.from_scheduler(scheduler, schedule).config.flow  # made again from a USF scheduler
    assert USFScheduler.for_solver(scheduler, "ddim", 4, "flow-shift:3").config.flow
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sample = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            sample = scheduler.step(tiny_unet(sample, t).sample, t, sample).prev_sample
        expected = usf_sample(NetworkDenoiser(lambda x, t: tiny_unet(x, t).sample, flow, "flow"), x.clone(), schedule)
    torch.testing.assert_close(sample, expected.to(sample.dtype), rtol=1e-5, atol=1e-5)
    x0, noise = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    assert float(scheduler.add_noise(x0, noise, torch.tensor([250.0])).mean()) == pytest.approx(0.75)


@pytest.fixture(scope="module")
def flow_dirs(tmp_path_factory):
    from pipelines import save_flux, save_sd3

    root = tmp_path_factory.mktemp("usf-flow-pipelines")
    return {"sd3": save_sd3(root / "sd3"), "flux": save_flux(root / "flux")}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_pipelines_run_the_usf_scheduler(flow_dirs, family):
    """``pipe.scheduler = USFScheduler...`` in SD3 and FLUX pipelines (which pass sigmas / mu and set a begin index)
    gives the executor's latents through our adapter; FLUX's are packed for its transformer and unpacked here."""
    model = load_model(str(flow_dirs[family]))
    schedule = _mixed(model, 4)
    pipe = model.pipe
    original = pipe.scheduler
    pipe.scheduler = USFScheduler.from_scheduler(original, schedule)
    z = torch.randn(1, *model.sample_shape, generator=torch.Generator().manual_seed(4))
    latents = model.pack(z.clone()) if family == "flux" else z.clone()
    try:
        out = pipe("a cat", num_inference_steps=schedule.nfe, guidance_scale=3.0, latents=latents,
                   output_type="latent").images
    finally:
        pipe.scheduler = original
    if family == "flux":
        out = model.unpack(out, *z.shape[2:])
    x = usf_sample(model.denoiser(Conditioning(None, "a cat", "", 3.0), 1), z.clone(), schedule)
    assert ((out - x).norm() / x.norm()).item() < 1e-5


def test_install_applies_the_schedules_skip_coefficients(dirs):
    """A schedule with Skip-Tuning coefficients: ``from_scheduler`` alone refuses to run it (never silently without
    them); ``install`` scales the UNet's skips, reproducing the executor under Skip-Tuning, until removed."""
    from dataclasses import replace

    from samplebench.models.skip_tuning import count_skips, skip_tuning

    model = load_model(str(dirs["ddpm"]))
    unet = model.pipe.unet
    skips = tuple(0.6 + 0.05 * j for j in range(count_skips(unet)))
    schedule = replace(_mixed(model, 4), skip_coefficients=skips)
    pipe = DDPMPipeline.from_pretrained(dirs["ddpm"])
    pipe.scheduler = USFScheduler.from_scheduler(pipe.scheduler, schedule)
    with pytest.raises(ValueError, match="USFScheduler.install"):
        pipe(batch_size=1, num_inference_steps=schedule.nfe, output_type="np")
    scheduler = USFScheduler.install(pipe, schedule)
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=schedule.nfe,
                  output_type="np").images
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with skip_tuning(model.pipe.unet, skips):
        x = usf_sample(model.denoiser(Conditioning(), 2), x_t.clone(), schedule)
    plain = usf_sample(model.denoiser(Conditioning(), 2), x_t.clone(), schedule)
    to_np = lambda v: (v / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()  # noqa: E731
    assert np.abs(images - to_np(x)).max() < 1e-5
    assert np.abs(images - to_np(plain)).max() > 1e-3  # the skips change the samples
    scheduler.remove_skip_tuning()
    pipe.scheduler = USFScheduler.from_scheduler(pipe.scheduler, replace(schedule, skip_coefficients=None))
    again = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=schedule.nfe,
                 output_type="np").images
    assert np.abs(again - to_np(plain)).max() < 1e-5


@pytest.mark.parametrize("solver", ["dpmpp-3m", "unipc-bh2"])
def test_a_registry_solver_as_a_pipeline_scheduler(dirs, solver):
    """``USFScheduler.for_solver``: a registry solver inside a diffusers pipeline equals our sampler on that grid."""
    from samplebench.samplers import get_solver

    model = load_model(str(dirs["ddpm"]))
    pipe = DDPMPipeline.from_pretrained(dirs["ddpm"])
    pipe.scheduler = USFScheduler.for_solver(pipe.scheduler, solver, nfe=5, time_grid="logsnr")
    images = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=5,
                  output_type="np").images
    x_t = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    x = get_solver(solver)(model.denoiser(Conditioning(), 2), x_t, make_grid(model.schedule, "logsnr", 5))
    assert np.abs(images - (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()).max() < 1e-5


@pytest.mark.parametrize("config", [{}, {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
                                    {"beta_schedule": "squaredcos_cap_v2"}, {"trained_betas": [0.1, 0.3]}])
def test_the_training_schedule_is_exposed_as_diffusers_schedulers_expose_it(config, tmp_path):
    """``betas``, ``alphas`` and ``alphas_cumprod`` as DDPMScheduler computes them, kept through save and load (the
    check of diffusers' ``SchedulerCommonTest.test_trained_betas``), and the noise schedule built from the same."""
    from diffusers import DDPMScheduler

    schedule = SolverSchedule((1.0, 0.5, 0.1), (Step(), Step()))
    scheduler = USFScheduler(usf_schedule=schedule.to_dict(), **config)
    ddpm = DDPMScheduler(**config)
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert getattr(scheduler, name).dtype == torch.float32
        assert torch.equal(getattr(scheduler, name), getattr(ddpm, name)), name
    scheduler.save_pretrained(tmp_path)
    loaded = USFScheduler.from_pretrained(tmp_path)
    assert scheduler.betas.tolist() == loaded.betas.tolist()
    assert torch.equal(scheduler.noise_schedule.alphas_cumprod, ddpm.alphas_cumprod.double())


@pytest.mark.filterwarnings("ignore")  # each scheduler warns of the config keys it does not take
def test_configs_carry_over_to_compatible_schedulers_and_back():
    """``compatibles`` (diffusers' ``SchedulerCommonTest.test_compatibles``): each compatible scheduler is made from a
    USF config, and a USF scheduler made from theirs has the same config, its schedule included."""
    from diffusers import DPMSolverSDEScheduler

    schedule = SolverSchedule((1.0, 0.5, 0.1), (Step(), Step()))
    scheduler = USFScheduler(usf_schedule=schedule.to_dict())
    assert len(scheduler.compatibles) > 5
    for cls in scheduler.compatibles:
        if cls is DPMSolverSDEScheduler:  # needs torchsde, not a dependency here
            continue
        other = cls.from_config(scheduler.config)
        back = USFScheduler.from_config(other.config)
        assert {k: v for k, v in back.config.items() if k in scheduler.config} == dict(scheduler.config), cls
