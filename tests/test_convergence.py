"""Every deterministic solver converges to the exact probability-flow ODE solution of Gaussian data with its order."""

import math

import numpy as np
import pytest
import torch

from samplebench.models import AnalyticDenoiser, GaussianMixture, gaussian_ode_solution
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.noise import SampleGenerators
from samplebench.samplers import SOLVERS, make_grid
from samplebench.schedules import VE, CosineVP, FlowMatching

SHAPE = (8,)
MIXTURE = GaussianMixture.gaussian(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.1, 1.0, 8), SHAPE)
SCHEDULES = {"discrete-vp": ddpm_linear_schedule(), "cosine-vp": CosineVP(), "ve": VE(), "flow-matching": FlowMatching()}
STEPS = [64, 128, 256, 512]
DETERMINISTIC = [name for name, spec in SOLVERS.items() if not spec.stochastic]


def _global_errors(name, schedule, steps_list, **options):
    spec = SOLVERS[name]
    denoiser = AnalyticDenoiser(MIXTURE, schedule)
    x_T = SampleGenerators(range(4)).randn(SHAPE, dtype=torch.float64) * schedule.prior_std()
    if "lower_order_final" in spec.fn.__code__.co_varnames:
        options.setdefault("lower_order_final", False)  # every step at full order
    errors = []
    for steps in steps_list:
        grid = make_grid(schedule, spec.default_grid, steps)
        exact = gaussian_ode_solution(MIXTURE, schedule, x_T, float(grid[0]), float(grid[-1]))
        errors.append((spec(denoiser, x_T.clone(), grid, **options) - exact).abs().max().item())
    return errors


def _slope(steps_list, errors):
    return -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]


@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_global_order(name, schedule):
    errors = _global_errors(name, SCHEDULES[schedule], STEPS)
    slope = _slope(STEPS, errors)
    assert abs(slope - SOLVERS[name].order) <= 0.3, (errors, slope)


def test_dpmpp_3m_third_order_steps_are_visible_before_the_warm_up_dominates():
    """3M's third-order steps: its error at few steps is well below 2M's (the warm-up caps the asymptotic order)."""
    e2 = _global_errors("dpmpp-2m", SCHEDULES["discrete-vp"], [16])[0]
    e3 = _global_errors("dpmpp-3m", SCHEDULES["discrete-vp"], [16])[0]
    assert e3 < 0.8 * e2, (e2, e3)


def test_order_test_can_fail():
    """A solver with a broken second-order term is first order, which the slope test would catch."""

    errors = _global_errors("dpmpp-2m", SCHEDULES["discrete-vp"], STEPS, solver_order=1)
    assert abs(_slope(STEPS, errors) - 2) > 0.3


def test_endpoint_of_the_exact_solution():
    """Sanity of the reference: the closed-form solution from T to t_min is the composition of two half solutions."""
    s = SCHEDULES["discrete-vp"]
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    direct = gaussian_ode_solution(MIXTURE, s, x, 1.0, s.t_min)
    via = gaussian_ode_solution(MIXTURE, s, gaussian_ode_solution(MIXTURE, s, x, 1.0, 0.3), 0.3, s.t_min)
    assert torch.allclose(direct, via, atol=1e-12)
    # and at t_min the marginal std along each axis is ~ the data std
    assert math.isclose(float(s.sigma(s.t_min)), 0.01, rel_tol=1e-2)
