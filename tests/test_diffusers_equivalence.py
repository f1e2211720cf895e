"""Our samplers against diffusers' schedulers on the same tiny random UNet, timesteps and initial noise."""

import pytest
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from samplebench.models import NetworkDenoiser
from samplebench.samplers import get_solver
from samplebench.schedules import schedule_from_config

STEPS = 8


def _diffusers_loop(unet, scheduler, x):
    scheduler.set_timesteps(STEPS)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    return scheduler, x


def _ours(unet, scheduler, name, x, **options):
    schedule = schedule_from_config(dict(scheduler.config))
    denoiser = NetworkDenoiser(lambda x, t: unet(x, t).sample, schedule, "epsilon")
    # diffusers timestep n <-> continuous t = (n + 1) / N; the last step lands on alphas_cumprod[0] (t = 1/N)
    n = scheduler.config.num_train_timesteps
    grid = torch.tensor([(int(k) + 1) / n for k in scheduler.timesteps] + [1 / n], dtype=torch.float64)
    return get_solver(name)(denoiser, x, grid, **options)


CASES = [
    ("ddim", DDIMScheduler, dict(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False), {}),
    ("dpmpp-2m", DPMSolverMultistepScheduler, dict(solver_order=2, final_sigmas_type="sigma_min",
                                                  timestep_spacing="trailing"), dict(lower_order_final=True)),
    ("dpmpp-3m", DPMSolverMultistepScheduler, dict(solver_order=3, final_sigmas_type="sigma_min",
                                                  timestep_spacing="trailing"), dict(lower_order_final=True)),
    ("dpmpp-3m", DPMSolverMultistepScheduler, dict(solver_order=3, final_sigmas_type="sigma_min",
                                                  lower_order_final=False, timestep_spacing="trailing"),
     dict(lower_order_final=False)),
    ("unipc-bh1", UniPCMultistepScheduler, dict(solver_type="bh1", final_sigmas_type="sigma_min",
                                               timestep_spacing="trailing"), {}),
    ("unipc-bh2", UniPCMultistepScheduler, dict(solver_type="bh2", final_sigmas_type="sigma_min",
                                               timestep_spacing="trailing"), {}),
    ("unipc-bh2", UniPCMultistepScheduler, dict(solver_type="bh2", solver_order=3, final_sigmas_type="sigma_min",
                                               timestep_spacing="trailing"), dict(solver_order=3)),
    ("deis", DEISMultistepScheduler, dict(solver_order=3, timestep_spacing="trailing"), dict(basis="logrho")),
]


@pytest.mark.parametrize("name,cls,config,options", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_matches_diffusers(tiny_unet, name, cls, config, options):
    scheduler = cls(num_train_timesteps=1000, beta_schedule="linear", **config)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler, expected = _diffusers_loop(tiny_unet, scheduler, x.clone())
    if getattr(scheduler, "sigmas", None) is not None and name != "ddim":
        assert float(scheduler.sigmas[-1]) > 0  # the final step lands on sigma_min, not 0
    got = _ours(tiny_unet, scheduler, name, x.clone(), **options)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel


def test_equivalence_detects_a_different_solver(tiny_unet):
    """The comparison is sharp enough to tell DPM-Solver++(2M) from (3M) on the same inputs."""
    scheduler = DPMSolverMultistepScheduler(solver_order=3, final_sigmas_type="sigma_min", timestep_spacing="trailing")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler, expected = _diffusers_loop(tiny_unet, scheduler, x.clone())
    got = _ours(tiny_unet, scheduler, "dpmpp-2m", x.clone())
    assert ((got - expected).norm() / expected.norm()).item() > 1e-3


def test_ddpm_matches_ddim_scheduler_eta_one(tiny_unet):
    """Our DDPM (eta = 1) against DDIMScheduler(eta=1) fed the same per-step noise."""
    from samplebench.noise import SampleGenerators

    scheduler = DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False, clip_sample=False)
    scheduler.set_timesteps(STEPS)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    ours_gen = SampleGenerators([5, 6])
    ref_gen = SampleGenerators([5, 6])
    y = x.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            y = scheduler.step(tiny_unet(y, t).sample, t, y, eta=1.0,
                               variance_noise=ref_gen.randn((3, 8, 8))).prev_sample
    got = _ours(tiny_unet, scheduler, "ddpm", x.clone(), generator=ours_gen)
    rel = ((got - y).norm() / y.norm()).item()
    assert rel < 1e-4, rel


# ---- flow matching: the same network read as a velocity, diffusers' flow schedulers against ours -------------------

def _flow_ours(unet, sigmas, name, x, integer_timesteps=False, **options):
    """Ours on the flow path with diffusers' sigmas as the grid; the network sees t x 1000 (truncated to an integer
    where the diffusers scheduler passes integer timesteps, as its flow-sigma modes do)."""
    from samplebench.schedules import FlowMatching

    schedule = FlowMatching(T=max(0.9999, float(sigmas[0])), t_min=min(1e-3, float(sigmas[-1])))
    network = (lambda x, t: unet(x, t.to(torch.int64)).sample) if integer_timesteps else (
        lambda x, t: unet(x, t).sample)
    denoiser = NetworkDenoiser(network, schedule, "flow")
    grid = torch.tensor([float(s) for s in sigmas], dtype=torch.float64)
    return get_solver(name)(denoiser, x, grid, **options), denoiser


def test_flow_match_euler_is_ddim_on_the_flow_path(tiny_unet):
    """FlowMatchEulerDiscreteScheduler (SD3, shift 3) is DDIM on x_t = (1 - t) x_0 + t eps: the same update
    (t/s) x_s + (1 - t/s) x0_pred; its last step to sigma = 0 returns the data prediction."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler, expected = _diffusers_loop(tiny_unet, scheduler, x.clone())
    sigmas = scheduler.sigmas
    assert float(sigmas[-1]) == 0.0
    got, denoiser = _flow_ours(tiny_unet, sigmas[:-1], "ddim", x.clone())
    with torch.no_grad():
        got = denoiser(got, float(sigmas[-2])).denoised  # the final step to sigma = 0
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-5, rel


@pytest.mark.parametrize("name,cls,config", [
    ("dpmpp-2m", DPMSolverMultistepScheduler, dict(solver_order=2)),
    ("dpmpp-3m", DPMSolverMultistepScheduler, dict(solver_order=3)),
])
def test_flow_sigma_modes_of_diffusers_multistep_schedulers(tiny_unet, name, cls, config):
    scheduler = cls(num_train_timesteps=1000, use_flow_sigmas=True, prediction_type="flow_prediction",
                    flow_shift=3.0, final_sigmas_type="sigma_min", **config)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler, expected = _diffusers_loop(tiny_unet, scheduler, x.clone())
    options = {"lower_order_final": True} if name.startswith("dpmpp") else {}
    assert scheduler.timesteps.dtype == torch.int64
    got, _ = _flow_ours(tiny_unet, scheduler.sigmas, name, x.clone(), integer_timesteps=True, **options)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel


@pytest.mark.parametrize("variant", ["bh2"])
def test_flow_sigma_mode_of_diffusers_unipc(tiny_unet, variant):
    """UniPCMultistepScheduler with flow sigmas starts at sigma = 1 and, with ``final_sigmas_type="zero"``, ends
    with a first-order step to sigma = 0 (the data prediction at the last, uncorrected point); its timesteps are
    sigma x 1000 truncated and capped at 999. Ours: UniPC on the other sigmas (orders warm up, no lowering at the
    end: the diffusers run lowers only its final step), then that data prediction. (diffusers' bh1 gives NaN on a
    step to sigma = 0, where its B(h) = h is infinite; its "sigma_min" mode repeats the last sigma, a step of
    length 0 that only applies the corrector.)"""
    from diffusers import UniPCMultistepScheduler

    from samplebench.schedules import FlowMatching

    scheduler = UniPCMultistepScheduler(num_train_timesteps=1000, use_flow_sigmas=True, flow_shift=3.0,
                                        prediction_type="flow_prediction", final_sigmas_type="zero",
                                        solver_type=variant)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    scheduler, expected = _diffusers_loop(tiny_unet, scheduler, x.clone())
    sigmas = scheduler.sigmas
    assert float(sigmas[0]) == pytest.approx(1.0, abs=1e-5) and float(sigmas[-1]) == 0.0
    schedule = FlowMatching(T=1.0, t_min=float(sigmas[-2]))
    network = lambda x, t: tiny_unet(x, t.to(torch.int64).clamp(max=999)).sample  # noqa: E731
    denoiser = NetworkDenoiser(network, schedule, "flow")
    grid = sigmas[:-1].to(torch.float64)
    got = get_solver(f"unipc-{variant}")(denoiser, x.clone(), grid, lower_order_final=False)
    with torch.no_grad():
        got = denoiser(got, float(grid[-1])).denoised
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-4, rel
