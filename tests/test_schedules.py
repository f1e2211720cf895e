import math

import pytest
import torch
from diffusers import DDPMScheduler

from samplebench.schedules import VE, CosineVP, DiscreteVP, LinearVP, schedule_from_config

T = torch.linspace(0.0, 1.0, 101, dtype=torch.float64)


@pytest.mark.parametrize("schedule", [DiscreteVP(DDPMScheduler().alphas_cumprod), LinearVP(), CosineVP(), VE()],
                         ids=["discrete", "linear", "cosine", "ve"])
def test_lambda_inverse_round_trip_and_monotone(schedule):
    t = schedule.t_min + T * (schedule.T - schedule.t_min)
    lam = schedule.lambda_(t)
    assert bool((lam[1:] < lam[:-1]).all())
    assert torch.allclose(schedule.inverse_lambda(lam), t, rtol=1e-9, atol=1e-9)
    a, s = schedule.alpha(t), schedule.sigma(t)
    assert torch.allclose(torch.log(a / s), lam, atol=1e-9)


@pytest.mark.parametrize("schedule", [DiscreteVP(DDPMScheduler().alphas_cumprod), LinearVP(), CosineVP()])
def test_vp_is_variance_preserving(schedule):
    t = schedule.t_min + T * (schedule.T - schedule.t_min)
    assert torch.allclose(schedule.alpha(t) ** 2 + schedule.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)


def test_discrete_schedule_hits_alphas_cumprod_on_its_grid_and_interpolates_log_alpha():
    config = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).config
    s = schedule_from_config(dict(config))
    ac = DDPMScheduler.from_config(config).alphas_cumprod.double()
    n = torch.tensor([0, 1, 10, 500, 999])
    t = (n.double() + 1) / 1000
    assert torch.allclose(s.alpha(t.double()) ** 2, ac[n], rtol=1e-9)
    assert torch.allclose(s.model_time(t.double()), n.double(), atol=1e-9)
    # fractional times interpolate log(alpha) linearly
    mid = s.log_alpha(torch.tensor([0.0105], dtype=torch.float64))
    assert torch.allclose(mid, 0.25 * (ac[9].log() + ac[10].log()).unsqueeze(0), atol=1e-12)


def test_closed_forms():
    lin = LinearVP()
    assert math.isclose(lin.log_alpha(1.0), -0.25 * 19.9 - 0.05)
    cos = CosineVP()
    assert math.isclose(cos.alpha(0.0), 1.0) and cos.lambda_(cos.T) > -5.2
    assert math.isclose(VE().sigma(3.0), 3.0) and VE().alpha(3.0) == 1.0
    assert isinstance(lin.alpha(0.5), float)


def test_bad_alphas_cumprod():
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVP(torch.tensor([0.5, 0.9]))


def test_flow_matching_path_and_configs():
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    from samplebench.schedules import FlowMatching, flow_shift, schedule_from_config

    s = FlowMatching()
    t = torch.tensor([0.001, 0.25, 0.5, 0.9], dtype=torch.float64)
    torch.testing.assert_close(s.alpha(t) + s.sigma(t), torch.ones_like(t))  # x_t = (1 - t) x_0 + t eps
    torch.testing.assert_close(s.inverse_lambda(s.lambda_(t)), t)
    assert s.lambda_(0.5) == 0.0 and float(s.model_time(torch.tensor(0.25))) == 250.0
    assert float(flow_shift(torch.tensor(0.5), 3.0)) == 0.75  # SD3's shift 3: t = 0.5 -> 0.75
    for config in (FlowMatchEulerDiscreteScheduler(shift=3.0).config,
                   DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction").config):
        assert isinstance(schedule_from_config(dict(config)), FlowMatching)
    assert not isinstance(schedule_from_config(dict(DDPMScheduler().config)), FlowMatching)
