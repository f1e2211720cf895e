"""Learned time grids (GITS, DM-NonUniform, LD3) against what is exact: closed-form weights and golden grids of the
official code (DMN), brute-force dynamic programming and closed-form truncation costs on Gaussian data (GITS),
finite-difference gradients and the registry solvers themselves (LD3)."""

import itertools
import math

import numpy as np
import pytest
import torch

from samplebench.learned import dmn, gits
from samplebench.learned.ld3 import STUDENTS, LD3Config, input_times, ld3_times, student, train_ld3
from samplebench.models import AnalyticDenoiser, GaussianMixture, gaussian_ode_solution
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.noise import SampleGenerators
from samplebench.samplers import get_solver, make_grid
from samplebench.schedules import VE, FlowMatching, LinearVP

SHAPE = (8,)
GMM = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0] * 8, [0.5] * 8], dtype=torch.float64),
                      torch.tensor([[0.2] * 8, [0.05] * 8], dtype=torch.float64), None, SHAPE)


# --- DM-NonUniform ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3])
def test_dmn_weights_are_integrals_of_the_lagrange_basis(k):
    lam = [-3.0, -1.7, -0.2, 0.9, 2.5]
    n = 3
    z, w = np.polynomial.legendre.leggauss(40)
    a, b = lam[n], lam[n + 1]
    u = 0.5 * (b - a) * z + 0.5 * (b + a)
    nodes = lam[n - k + 1:n + 1]
    for i, weight in enumerate(dmn.dmn_weights(lam, n, k)):
        basis = np.prod([(u - nodes[j]) / (nodes[i] - nodes[j]) for j in range(k) if j != i], axis=0)
        assert weight == pytest.approx(float(np.sum(0.5 * (b - a) * w * np.exp(u) * basis)), rel=1e-10, abs=1e-12)
    assert sum(dmn.dmn_weights(lam, n, k)) == pytest.approx(math.exp(lam[n + 1]) - math.exp(lam[n]), rel=1e-12)


@pytest.mark.parametrize("schedule, steps, p, expected", [
    # the LD3 copy of the official code, EDM sigma in [0.002, 80], p = 1
    (VE(), 4, 1.0, [80, 2.46054, 0.68026, 0.09166, 0.002]),
    (VE(), 5, 1.0, [80, 3.06275, 1.11353, 0.37370, 0.07227, 0.002]),
    (VE(), 6, 1.0, [80, 4.45590, 1.30252, 0.64618, 0.21760, 0.05202, 0.002]),
    # the official file, VP linear (beta 0.1 -> 20), eps 1e-3, p = 2
    (LinearVP(), 5, 2.0, [1, 0.65819, 0.49785, 0.30946, 0.10136, 0.001]),
])
def test_dmn_reproduces_the_official_grids(schedule, steps, p, expected):
    grid, info = dmn.dmn_grid(schedule, "dpmpp-3m", steps, p=p)
    assert grid.tolist() == pytest.approx(expected, rel=1e-3)
    assert info["objective"] <= info["objective_init"] and info["network_evaluations"] == 0


def test_dmn_depends_on_the_lambda_range_only():
    """The same lambda range and init give the same lambda grid on VP, VE and flow schedules."""
    vp = LinearVP()
    lam_T, lam_eps = vp.lambda_(vp.T), vp.lambda_(vp.t_min)
    ve = VE(T=math.exp(-lam_T), t_min=math.exp(-lam_eps))
    flow = FlowMatching(T=float(FlowMatching().inverse_lambda(lam_T)), t_min=float(FlowMatching().inverse_lambda(lam_eps)))
    grids = [s.lambda_(dmn.dmn_grid(s, "unipc-bh2", 5)[0]) for s in (vp, ve, flow)]
    for g in grids[1:]:
        assert torch.allclose(g, grids[0], atol=1e-5)


def test_dmn_first_order_is_the_brute_force_minimum():
    orders = [1, 1]
    lam, _ = dmn.dmn_lambdas(-4.0, 3.0, orders, p=1.0)
    candidates = np.linspace(-4.0 + 1e-3, 3.0 - 1e-3, 20001)
    values = [dmn.dmn_objective([-4.0, c, 3.0], orders) for c in candidates]
    best = candidates[int(np.argmin(values))]
    assert dmn.dmn_objective(lam, orders) <= min(values) + 1e-6
    assert lam[1] == pytest.approx(best, abs=1e-2)


def test_dmn_orders_follow_each_solver():
    assert dmn.solver_orders("ddim", 4) == [1, 1, 1, 1]
    assert dmn.solver_orders("dpmpp-2m", 4) == [1, 2, 2, 1]
    assert dmn.solver_orders("dpmpp-3m", 6) == [1, 2, 3, 3, 2, 1]
    assert dmn.solver_orders("ipndm", 6) == [1, 2, 3, 3, 2, 1]  # not an Adams data-prediction method: the 3M pattern


# --- GITS ------------------------------------------------------------------------------------------------------------

def _official_dp(cost, steps, coeff):
    """The official ``dp``: backtracking by exact float equality."""
    m1 = cost.shape[0]
    value = np.full((m1, steps + 1), np.inf)
    for i in range(m1):
        value[i][1] = cost[i][-1]
    for k in range(2, steps + 1):
        for j in range(m1 - 1):
            for i in range(j + 1, m1 - 1):
                value[j][k] = min(value[j][k], cost[j][i] + coeff * value[i][k - 1])
    path, w = [0], 0
    for temp in range(steps):
        k = steps - temp
        for j in range(w + 1, m1):
            if value[w][k] == cost[w][j] + coeff * value[j][k - 1]:
                path.append(j)
                w = j
                break
    return path + [m1 - 1]


@pytest.mark.parametrize("coeff", [0.9, 1.0, 1.15])
def test_gits_dp_is_the_brute_force_optimum(coeff):
    rng = np.random.default_rng(int(coeff * 100))
    m = 12
    cost = np.triu(rng.normal(size=(m + 1, m + 1)), 1)  # negative costs too
    for steps in range(1, 6):
        best = min((list(c) for c in itertools.combinations(range(1, m), steps - 1)),
                   key=lambda c: sum(coeff**i * cost[a, b] for i, (a, b) in enumerate(zip([0] + c, c + [m]))))
        assert gits.dp_path(cost, steps, coeff) == [0] + best + [m]
        assert gits.dp_path(cost, steps, coeff) == _official_dp(cost, steps, coeff)


def test_gits_golden_grid_is_the_official_index_set():
    """README of the official code: the CIFAR-10 NFE-6 grid is indices [0, 19, 27, 33, 39, 45, 60] of the 61-point
    EDM rho = 7 grid."""
    fine = make_grid(VE(), "karras", 60)
    assert fine[[0, 19, 27, 33, 39, 45, 60]].tolist() == pytest.approx([80, 10.9836, 3.8811, 1.584, 0.5666, 0.1698,
                                                                        0.002], abs=1e-4)


def _exact_trajectories(s2: torch.Tensor, mu: torch.Tensor, sigmas: torch.Tensor, num: int = 64):
    """States and slopes of the exact flow of N(mu, diag s2) in EDM coordinates (VE: x~ = x, sigma~ = t)."""
    mixture = GaussianMixture.gaussian(mu, s2.sqrt(), SHAPE)
    schedule = VE(T=float(sigmas[0]), t_min=float(sigmas[-1]))
    den = AnalyticDenoiser(mixture, schedule)
    x = SampleGenerators(range(num)).randn(SHAPE, dtype=torch.float64) * float(sigmas[0])
    states = [gaussian_ode_solution(mixture, schedule, x, float(sigmas[0]), float(t)) if i else x
              for i, t in enumerate(sigmas)]
    slopes = [den(xi, float(t)).eps for xi, t in zip(states[:-1], sigmas[:-1])]
    return states, slopes


def test_gits_l2_cost_is_the_closed_form_truncation_error():
    """Per coordinate y~ = x~ - mu: one Euler step gives f y~, the flow g y~, f = (s^2 + su st)/(s^2 + su^2),
    g = sqrt(s^2 + st^2)/sqrt(s^2 + su^2); the l2 cost is mean ||(f - g) y~_i||."""
    s2, mu = torch.linspace(0.05, 1.5, 8, dtype=torch.float64), torch.linspace(-0.5, 0.5, 8, dtype=torch.float64)
    sigmas = make_grid(VE(T=20.0, t_min=0.01), "karras", 10)
    states, slopes = _exact_trajectories(s2, mu, sigmas)
    cost = gits.jump_costs(sigmas, states, slopes, "l2")
    for i, j in ((0, 1), (2, 7), (5, 10)):
        su, st = float(sigmas[i]), float(sigmas[j])
        f = (s2 + su * st) / (s2 + su**2)
        g = torch.sqrt(s2 + st**2) / torch.sqrt(s2 + su**2)
        expected = float(((f - g) * (states[i] - mu)).norm(dim=1).mean())
        assert cost[i, j] == pytest.approx(expected, rel=1e-10)


def test_gits_deviation_is_zero_for_isotropic_data_and_not_otherwise():
    """Straight rays (isotropic Gaussian, any mean) have no deviation from the chord: every dev cost is 0, and the
    named grid refuses such a model; anisotropic data give costs."""
    sigmas = make_grid(VE(T=20.0, t_min=0.01), "karras", 10)
    iso = gits.jump_costs(sigmas, *_exact_trajectories(torch.full((8,), 0.3, dtype=torch.float64),
                                                        torch.linspace(-1, 1, 8, dtype=torch.float64), sigmas))
    assert np.abs(iso).max() < 1e-9
    aniso = gits.jump_costs(sigmas, *_exact_trajectories(torch.linspace(0.01, 1.0, 8, dtype=torch.float64),
                                                          torch.zeros(8, dtype=torch.float64), sigmas))
    assert np.abs(aniso).max() > 1e-3


def test_gits_l2_bounds_the_ddim_error_and_its_grid_minimises_the_bound():
    """0 < f <= 1, so DDIM's endpoint error on a fine-grid subset is at most the sum of the exact-teacher l2 costs of
    its jumps (e_{m+1} = f e_m + (f - g) y~_m); the l2 GITS path with gamma = 1 minimises that sum."""
    s2, mu = torch.linspace(0.05, 1.5, 8, dtype=torch.float64), torch.zeros(8, dtype=torch.float64)
    sigmas = make_grid(VE(T=20.0, t_min=0.01), "karras", 12)
    states, slopes = _exact_trajectories(s2, mu, sigmas)
    cost = gits.jump_costs(sigmas, states, slopes, "l2")
    mixture = GaussianMixture.gaussian(mu, s2.sqrt(), SHAPE)
    den = AnalyticDenoiser(mixture, VE(T=20.0, t_min=0.01))
    best = gits.dp_path(cost, 4, 1.0)
    for path in [best, [0, 3, 6, 9, 12], [0, 1, 2, 3, 12]]:
        x = get_solver("ddim")(den, states[0].clone(), sigmas[path])
        error = float((x - states[-1]).norm(dim=1).mean())
        bound = sum(cost[a, b] for a, b in zip(path, path[1:]))
        assert error <= bound + 1e-12
        assert sum(cost[a, b] for a, b in zip(best, best[1:])) <= bound + 1e-12


# --- LD3 -------------------------------------------------------------------------------------------------------------

def test_ld3_parameters_give_monotone_grids_with_exact_ends():
    schedule = ddpm_linear_schedule()
    uniform = ld3_times(schedule, torch.ones(6, dtype=torch.float64))
    assert torch.allclose(uniform, make_grid(schedule, "logsnr", 5), rtol=0, atol=1e-12)
    for seed in range(5):
        p = torch.randn(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2
        for mode in ("lambda", "time"):
            t = ld3_times(schedule, p, mode)
            assert t[0] == schedule.T and t[-1] == schedule.t_min and bool((t[1:] < t[:-1]).all())


@pytest.mark.parametrize("solver", STUDENTS)
def test_the_differentiable_student_is_the_registry_solver(solver):
    schedule = ddpm_linear_schedule()
    den = AnalyticDenoiser(GMM, schedule)
    grid = make_grid(schedule, "logsnr", 5)
    x = SampleGenerators(range(3)).randn(SHAPE, dtype=torch.float64)
    expected = get_solver(solver)(den, x.clone(), grid)
    got = student(den, x.clone(), grid.clone().requires_grad_(True), solver)
    assert float((got.detach() - expected).abs().max()) < 1e-12


@pytest.mark.parametrize("solver", ["dpmpp-3m", "unipc-bh2", "ipndm"])
def test_ld3_gradients_match_finite_differences(solver):
    """d loss / d p and d loss / d xi of the L2 endpoint loss against the exact ODE solution."""
    schedule = ddpm_linear_schedule()
    gaussian = GaussianMixture.gaussian(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.1, 1.0, 8), SHAPE)
    den = AnalyticDenoiser(gaussian, schedule)
    x = SampleGenerators(range(4)).randn(SHAPE, dtype=torch.float64)
    target = gaussian_ode_solution(gaussian, schedule, x, schedule.T, schedule.t_min)
    p0 = torch.tensor([1.0, 0.7, 1.3, 0.9, 1.1, 1.0], dtype=torch.float64)
    xi0 = torch.tensor([0.0, 0.02, -0.03, 0.01, 0.02, 0.0], dtype=torch.float64)

    def loss(p, xi):
        times = ld3_times(schedule, p)
        return (student(den, x, times, solver, input_times(schedule, times, xi)) - target).norm(dim=1).mean()

    p, xi = p0.clone().requires_grad_(True), xi0.clone().requires_grad_(True)
    loss(p, xi).backward()
    for param, grad, other in ((p0, p.grad, "p"), (xi0, xi.grad, "xi")):
        for i in range(1, len(param) - 1):
            e = torch.zeros_like(param)
            e[i] = 1e-6
            args = (param + e, xi0) if other == "p" else (p0, param + e)
            minus = (param - e, xi0) if other == "p" else (p0, param - e)
            fd = (float(loss(*args)) - float(loss(*minus))) / 2e-6
            assert float(grad[i]) == pytest.approx(fd, rel=1e-5, abs=1e-9), (other, i)


def test_ld3_two_ddim_steps_reach_the_brute_force_optimum():
    """DDIM, 2 steps, no slack, no input times: the learned middle time reaches the minimum of the validation
    loss found by trying every lambda_1."""
    from samplebench.models import load_model

    model = load_model("digits-gmm")
    config = LD3Config(train=16, valid=16, batch=16, rounds_times=60, rounds_input_times=0, radius=0.0,
                       lr_times=0.05, distance="l2", teacher=("dpmpp-3m", 40))
    times, _, info = train_ld3(model, "ddim", 2, config)
    assert info["valid_loss"] < info["valid_loss_init"]
    from samplebench.learned.ld3 import teacher_pairs

    x_T, target, _ = teacher_pairs(model, config)
    sch = model.schedule
    den = model.denoiser(__import__("samplebench.models", fromlist=["Conditioning"]).Conditioning(), 16)
    lam_T, lam_eps = sch.lambda_(sch.T), sch.lambda_(sch.t_min)

    def valid_loss(lam1):
        grid = torch.tensor([sch.T, float(sch.inverse_lambda(lam1)), sch.t_min], dtype=torch.float64)
        out = get_solver("ddim")(den, x_T[16:].clone(), grid)
        return float((out - target[16:]).flatten(1).norm(dim=1).mean())

    candidates = np.linspace(lam_T + 0.01, lam_eps - 0.01, 400)
    best = min(valid_loss(c) for c in candidates)
    assert info["valid_loss"] <= best * (1 + 2e-3)


def test_refining_a_searched_schedule_keeps_its_decisions_and_lowers_its_loss():
    """S3's decisions frozen, its times learned with LD3's objective: the same steps, ends and NFE, a validation loss
    no higher than the schedule's own."""
    from samplebench.learned.ld3 import ld3_parameters, refine_schedule
    from samplebench.models import load_model
    from samplebench.usf import Corrector, Derivative, SolverSchedule, Step

    model = load_model("digits-gmm")
    times = make_grid(model.schedule, "time-quadratic", 4).tolist()
    assert ld3_times(model.schedule, ld3_parameters(model.schedule, times), ends=(times[0], times[-1])).tolist() == \
        pytest.approx(times, rel=1e-12)
    schedule = SolverSchedule(tuple(times), (
        Step("data", 1, corrector=Corrector("pseudo", 2, (Derivative((-1,)),))),
        Step("noise", 2, (Derivative((-2,), "linear", 0.1),)), Step("data", 2, (Derivative((-2,), "unipc-bh1"),)),
        Step("data", 3, (Derivative((-2, -3)), Derivative((-2, -3), "half")))), "zero")
    config = LD3Config(train=8, valid=8, batch=4, rounds_times=3, rounds_input_times=0, distance="l2",
                       teacher=("dpmpp-3m", 40))
    refined, info = refine_schedule(model, schedule, config)
    assert refined.steps == schedule.steps and refined.nfe == schedule.nfe and refined.afs == "zero"
    assert refined.timesteps[0] == times[0] and refined.timesteps[-1] == times[-1]
    assert info["valid_loss"] <= info["valid_loss_init"] and info["valid_history"][0] == info["valid_loss_init"]


def test_named_learned_grids_from_the_command_line(tmp_path):
    """``--time-grid ld3`` takes the model's shipped grid, the network at its learned input times; ``dmn`` is
    computed when asked; what is neither shipped nor cached is refused where computing is not allowed (the app)."""
    import json

    from samplebench.cli import main
    from samplebench.errors import UsageError
    from samplebench.learned import grid_file, learned_grid, learned_solver, stored_only
    from samplebench.models import load_model

    model = load_model("digits")
    shipped = grid_file(model, "ld3/ipndm-steps4.json")[0]
    record = json.loads(shipped.read_text())
    assert record["grid"][0] == model.schedule.T and record["network_evaluations_backward"] > 0
    assert main(["sample", "--solver", "ipndm", "--nfe", "4", "--time-grid", "ld3", "--num", "2", "--out",
                 str(tmp_path / "ld3"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "ld3" / "summary.json").read_text())
    assert summary["nfe"] == 4 and summary["grid_times"] == pytest.approx(record["grid"], rel=1e-12)
    spec = learned_solver(model, get_solver("ipndm"), torch.tensor(record["grid"], dtype=torch.float64), "ld3")
    seen = []

    class Spy:
        schedule = model.schedule

        def __call__(self, x, t):
            seen.append(float(t))
            return AnalyticDenoiser(GMM, model.schedule)(x, t)

    spec(Spy(), torch.zeros(1, *SHAPE, dtype=torch.float64), torch.tensor(record["grid"], dtype=torch.float64))
    assert seen == pytest.approx(record["model_times"][:-1], rel=1e-12)  # the network sees the learned input times
    assert main(["sample", "--model", "digits-gmm", "--solver", "unipc-bh2", "--nfe", "5", "--time-grid", "dmn",
                 "--num", "2", "--out", str(tmp_path / "dmn"), "--quiet"]) == 0
    gmm = load_model("digits-gmm")
    expected = dmn.dmn_grid(gmm.schedule, "unipc-bh2", 5)[0].tolist()
    assert json.loads((tmp_path / "dmn" / "summary.json").read_text())["grid_times"] == pytest.approx(expected)
    with stored_only(), pytest.raises(UsageError, match="is not computed yet"):
        learned_grid(gmm, get_solver("ddim"), 3, "ld3")


def test_a_resumed_eval_job_refuses_a_changed_learned_grid(tmp_path, monkeypatch):
    """Shards drawn on an LD3 grid are never reused once the grid file changes (recomputed, or shipped anew) under
    the same options: each cell records its plan's fingerprint (its grid and the network's input times)."""
    import json

    from samplebench.errors import UsageError
    from samplebench.evaluate import EvalConfig, run_eval
    from samplebench.learned import ld3

    config = EvalConfig(model="digits-gmm", solvers=("ipndm", "unipc-bh2"), nfes=(4,), time_grid="ld3", num=20,
                        metrics=("fid",))
    first = run_eval(config, tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    assert set(json.loads((tmp_path / "job" / "job.json").read_text())["plans"]) == {"ipndm-nfe4", "unipc-bh2-nfe4"}
    shipped = ld3.ld3_record
    for key in ("model_times", "grid"):
        def changed(model, solver, steps, key=key, **kw):
            record = shipped(model, solver, steps, **kw)
            if solver.name != "ipndm":
                return record
            times = record[key] if record.get(key) is not None else record["grid"]
            return {**record, key: [times[0], *(0.99 * t for t in times[1:-1]), times[-1]]}

        monkeypatch.setattr(ld3, "ld3_record", changed)
        with pytest.raises(UsageError, match="holds samples of solver 'ipndm' at NFE 4 on another time grid"):
            run_eval(config, tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    monkeypatch.setattr(ld3, "ld3_record", shipped)
    again = run_eval(config, tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    assert [r["fid"] for r in again] == [r["fid"] for r in first]
