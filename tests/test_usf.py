"""USF solver schedules and their executor: equivalence with the registry's solvers, the derivative estimator,
the phi identity, convergence order on Gaussian data, NFE accounting, correctors, AFS and validation."""

import math

import numpy as np
import pytest
import torch

from samplebench.errors import UsageError
from samplebench.models import AnalyticDenoiser, CountingDenoiser, GaussianMixture, NetworkDenoiser, gaussian_ode_solution
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.noise import SampleGenerators
from samplebench.samplers import get_solver, make_grid
from samplebench.samplers import GRID_KINDS, solver_names
from samplebench.usf import (KNOWN_SCHEDULES, NOT_EXPRESSIBLE, Corrector, Derivative, SolverSchedule, Step,
                             ddim_schedule, dpmpp_2m_schedule, dpmpp_3m_schedule, known_schedule, phi, unipc_schedule,
                             usf_sample)
from samplebench.usf.executor import derivative_estimate

SCHEDULE = ddpm_linear_schedule()
SHAPE = (8,)
MIXTURE = GaussianMixture.gaussian(torch.linspace(-0.5, 0.5, 8), torch.linspace(0.1, 1.0, 8), SHAPE)
GMM = GaussianMixture(torch.tensor([0.3, 0.7]), torch.tensor([[-1.0] * 8, [0.5] * 8], dtype=torch.float64),
                      torch.tensor([[0.2] * 8, [0.05] * 8], dtype=torch.float64), None, SHAPE)
X_T = SampleGenerators(range(4)).randn(SHAPE, dtype=torch.float64)

EQUIVALENT = [
    ("ddim", {}, lambda g: ddim_schedule(g, "noise")),
    ("ddim", {}, lambda g: ddim_schedule(g, "data")),
    ("dpmpp-2m", {}, dpmpp_2m_schedule),
    ("dpmpp-2m", {"lower_order_final": False}, lambda g: dpmpp_2m_schedule(g, lower_order_final=False)),
    ("unipc-bh1", {}, lambda g: unipc_schedule(g, "bh1")),
    ("unipc-bh2", {}, lambda g: unipc_schedule(g, "bh2")),
]


@pytest.mark.parametrize("steps", [2, 5, 10])
@pytest.mark.parametrize("name,options,build", EQUIVALENT, ids=[f"{e[0]}-{i}" for i, e in enumerate(EQUIVALENT)])
def test_schedules_reproduce_registry_solvers_exactly(name, options, build, steps):
    denoiser = AnalyticDenoiser(GMM, SCHEDULE)
    grid = make_grid(SCHEDULE, "logsnr", steps)
    expected = get_solver(name)(denoiser, X_T.clone(), grid, **options)
    got = usf_sample(denoiser, X_T.clone(), build(grid))
    assert ((got - expected).norm() / expected.norm()).item() < 1e-12


@pytest.mark.parametrize("name", list(KNOWN_SCHEDULES))
def test_every_known_schedule_reproduces_its_registry_solver_on_every_grid(name):
    """float64 round-off (DEIS in log rho: its 32-point quadrature of the Lagrange integrals, ~1e-12)."""
    build, solver, options = KNOWN_SCHEDULES[name]
    denoiser = AnalyticDenoiser(GMM, SCHEDULE)
    worst = 0.0
    for kind in GRID_KINDS:
        for steps in (1, 2, 3, 5, 8, 11):
            grid = make_grid(SCHEDULE, kind, steps)
            expected = get_solver(solver)(denoiser, X_T.clone(), grid, **options)
            got = usf_sample(denoiser, X_T.clone(), build(grid))
            worst = max(worst, (got - expected).abs().max().item())
    assert worst < (1e-11 if name == "deis-logrho" else 1e-13)


def test_every_registry_solver_is_expressible_or_says_why():
    expressed = {solver for _, solver, options in KNOWN_SCHEDULES.values() if not options}
    assert set(solver_names()) == expressed | set(NOT_EXPRESSIBLE) and not expressed & set(NOT_EXPRESSIBLE)
    with pytest.raises(UsageError, match=r"solver .ipndm. has no USF schedule \(its fixed-step Adams-Bashforth"):
        known_schedule("ipndm", [1.0, 0.5, 0.001])


def test_dpmpp_3m_needs_its_halved_second_derivative():
    """The plain order-3 Taylor step (the closest schedule without ``half``) is a different solver, and it shows."""
    denoiser = AnalyticDenoiser(GMM, SCHEDULE)
    grid = make_grid(SCHEDULE, "time-quadratic", 8)
    expected = get_solver("dpmpp-3m")(denoiser, X_T.clone(), grid)
    exact = dpmpp_3m_schedule(grid)
    plain = SolverSchedule(exact.timesteps, tuple(
        Step(st.prediction, st.order, tuple(Derivative(d.active_points, "none" if n else d.relaxation)
                                            for n, d in enumerate(st.derivatives))) for st in exact.steps))
    assert (usf_sample(denoiser, X_T.clone(), exact) - expected).abs().max().item() < 1e-13
    assert (usf_sample(denoiser, X_T.clone(), plain) - expected).abs().max().item() > 1e-3


def test_equivalence_on_a_unet_and_a_wrong_relaxation_fails(tiny_unet):
    denoiser = NetworkDenoiser(lambda x, t: tiny_unet(x, t).sample, SCHEDULE, "epsilon")
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    grid = make_grid(SCHEDULE, "logsnr", 8)
    with torch.no_grad():
        for name, build in [("dpmpp-2m", dpmpp_2m_schedule), ("unipc-bh2", unipc_schedule)]:
            expected = get_solver(name)(denoiser, x.clone(), grid)
            got = usf_sample(denoiser, x.clone(), build(grid))
            assert ((got - expected).norm() / expected.norm()).item() < 1e-5
        # 2M without its relaxation is the "taylor" variant: a different solver, and the comparison sees it
        plain = dpmpp_2m_schedule(grid)
        plain = SolverSchedule(plain.timesteps, tuple(Step(s.prediction, s.order,
                                                           tuple(Derivative(d.active_points) for d in s.derivatives))
                                                      for s in plain.steps))
        expected = get_solver("dpmpp-2m")(denoiser, x.clone(), grid)
        assert ((usf_sample(denoiser, x.clone(), plain) - expected).norm() / expected.norm()).item() > 1e-4


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("h", [0.01, 0.3, 2.0])
def test_phi_identity(k, h):
    """h^{k+1} phi_{k+1}(-h) = int_0^h e^{u-h} u^k / k! du."""
    z, w = np.polynomial.legendre.leggauss(40)
    u = 0.5 * h * (z + 1)
    integral = float((0.5 * h * w * np.exp(u - h) * u**k / math.factorial(k)).sum())
    assert h ** (k + 1) * phi(k + 1, -h) == pytest.approx(integral, rel=1e-12)


def test_phi_series_and_recursion_agree_at_the_switch():
    for k in range(5):
        assert phi(k, 0.0499999) == pytest.approx(phi(k, 0.0500001), rel=1e-6)


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_derivative_estimator_is_exact_on_polynomials(degree):
    rng = np.random.default_rng(degree)
    coeffs = rng.normal(size=degree + 1)
    f = lambda x: sum(c * x**j for j, c in enumerate(coeffs))  # noqa: E731
    lam_s, dl = 0.3, list(rng.uniform(-1, 1, size=degree))
    for n in range(1, degree + 1):
        exact = sum(c * math.factorial(j) / math.factorial(j - n) * lam_s ** (j - n)
                    for j, c in enumerate(coeffs) if j >= n)
        diffs = [torch.tensor(f(lam_s + d) - f(lam_s), dtype=torch.float64) for d in dl]
        assert float(derivative_estimate(diffs, dl, n)) == pytest.approx(exact, rel=1e-8, abs=1e-10)


def _taylor_schedule(grid, order, prediction):
    steps = []
    for i in range(len(grid) - 1):
        k = min(order, i + 1)
        active = tuple(range(-2, -k - 1, -1))
        steps.append(Step(prediction, k, tuple(Derivative(active) for _ in range(k - 1))))
    return SolverSchedule(tuple(grid.tolist()), tuple(steps))


@pytest.mark.parametrize("prediction", ["noise", "data"])
@pytest.mark.parametrize("order", [1, 2])
def test_taylor_order_k_converges_with_order_k(order, prediction):
    denoiser = AnalyticDenoiser(MIXTURE, SCHEDULE)
    errors, steps_list = [], [64, 128, 256]
    for steps in steps_list:
        grid = make_grid(SCHEDULE, "logsnr", steps)
        exact = gaussian_ode_solution(MIXTURE, SCHEDULE, X_T, float(grid[0]), float(grid[-1]))
        errors.append((usf_sample(denoiser, X_T.clone(), _taylor_schedule(grid, order, prediction))
                       - exact).abs().max().item())
    slope = -np.polyfit(np.log(steps_list), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.2, (slope, errors)


def test_nfe_counts_afs_and_implicit_correctors():
    grid = make_grid(SCHEDULE, "logsnr", 6)
    base = unipc_schedule(grid)
    steps = list(base.steps)
    steps[1] = Step(steps[1].prediction, steps[1].order, steps[1].derivatives, -1,
                    Corrector("implicit", steps[1].corrector.order, steps[1].corrector.derivatives))
    for afs in ("none", "zero", "mean"):
        sch = SolverSchedule(base.timesteps, tuple(steps), afs)
        counting = CountingDenoiser(AnalyticDenoiser(GMM, SCHEDULE))
        usf_sample(counting, X_T.clone(), sch, data_mean=GMM.means.T @ GMM.weights.double())
        assert counting.nfe == sch.nfe == 6 - (afs != "none") + 1


def test_pseudo_corrector_is_free_and_keeps_the_uncorrected_output():
    grid = make_grid(SCHEDULE, "logsnr", 4)
    inner = AnalyticDenoiser(GMM, SCHEDULE)
    seen = []

    class Recording:
        schedule = SCHEDULE

        def __call__(self, x, t):
            seen.append(x.clone())
            return inner(x, t)

    plain = SolverSchedule(tuple(grid.tolist()), tuple(Step("data", 1) for _ in range(4)))
    corrected = SolverSchedule(plain.timesteps, (Step("data", 1, (), -1, Corrector("pseudo", 2,
                                                                                    (Derivative((-1,)),))),
                                                 *plain.steps[1:]))
    out_plain = usf_sample(Recording(), X_T.clone(), plain)
    first = seen[:]
    seen.clear()
    out_corrected = usf_sample(Recording(), X_T.clone(), corrected)
    assert len(seen) == 4  # no extra evaluation
    assert torch.equal(seen[1], first[1])  # evaluated at the predictor's point, before the correction
    assert not torch.allclose(out_plain, out_corrected)


def test_afs_zero_is_exact_for_zero_mean_data_at_the_prior():
    """With x0 = 0 data the exact first evaluation is eps = x_T / sigma_T, which afs='zero' assumes."""
    zero_mean = GaussianMixture.gaussian(0.0, 0.5, SHAPE)
    denoiser = AnalyticDenoiser(zero_mean, SCHEDULE)
    grid = make_grid(SCHEDULE, "logsnr", 5)
    sch = ddim_schedule(grid, "noise")
    with_afs = SolverSchedule(sch.timesteps, sch.steps, "zero")
    full, skipped = usf_sample(denoiser, X_T.clone(), sch), usf_sample(denoiser, X_T.clone(), with_afs)
    # the exact first x0 is alpha_T s^2 x_T / (alpha_T^2 s^2 + sigma_T^2) ~ 1e-3 x_T: close, not equal
    assert 0 < (full - skipped).abs().max().item() < 0.05


def test_json_round_trip_is_exact(tmp_path):
    grid = torch.tensor([1.0, 0.7 + 1e-13, 0.1 + 0.2, 0.001], dtype=torch.float64)
    sch = unipc_schedule(grid)
    sch = SolverSchedule(sch.timesteps, sch.steps[:-1] + (Step("noise", 2, (Derivative((-2,), "linear", 0.0137),)),),
                         "mean", (0.96, 0.977, 1.0))
    path = tmp_path / "s.json"
    sch.save(path)
    again = SolverSchedule.load(path)
    assert again == sch and again.timesteps == sch.timesteps and again.nfe == 2


@pytest.mark.parametrize("name", ["dpmpp-3m", "unipc-bh2"])
def test_model_times_run_ld3_exactly(name):
    """A schedule's ``model_times`` feed the network LD3's input times: the known schedule with them reproduces the
    registry solver behind LD3's time map (``learned.ld3.time_mapped``) to round-off, and differs without them."""
    from samplebench.learned.ld3 import time_mapped

    build, solver, options = KNOWN_SCHEDULES[name]
    denoiser = AnalyticDenoiser(GMM, SCHEDULE)
    grid = make_grid(SCHEDULE, "logsnr", 5)
    lam = SCHEDULE.lambda_(grid)
    shift = torch.tensor([0.0, 0.3, -0.2, 0.25, -0.3, 0.0], dtype=torch.float64) * (lam[1:] - lam[:-1]).min()
    model_times = SCHEDULE.inverse_lambda(lam + shift)  # LD3's parametrisation: ends fixed, shifts < half a gap
    expected = time_mapped(get_solver(solver), grid, model_times.tolist())(denoiser, X_T.clone(), grid, **options)
    schedule = build(grid)
    with_times = SolverSchedule(schedule.timesteps, schedule.steps, model_times=tuple(model_times.tolist()))
    assert with_times.network_times == tuple(model_times.tolist()) and schedule.network_times == schedule.timesteps
    got = usf_sample(denoiser, X_T.clone(), with_times)
    assert (got - expected).abs().max().item() < 1e-13
    assert (usf_sample(denoiser, X_T.clone(), schedule) - expected).abs().max().item() > 1e-4
    again = SolverSchedule.from_json(with_times.to_json())
    assert again == with_times and "model_times" not in schedule.to_dict()  # absent unless given: ids unchanged


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["steps"][0].update(order=2), "step 0: order 2 is above the available history (1 point; at most 1)"),
    (lambda d: d["timesteps"].__setitem__(2, 0.9), "timesteps[2]: 0.9 is not below timesteps[1]"),
    (lambda d: d["steps"][1].update(prediction="v"), "step 1: unknown prediction 'v'; valid: noise, data"),
    (lambda d: d["steps"][1]["derivatives"][0].update(relaxation="foo"), "step 1 derivative 1: unknown relaxation"),
    (lambda d: d["steps"][0]["corrector"].update(kind="magic"), "step 0 corrector: unknown kind 'magic'"),
    (lambda d: d["steps"][1]["corrector"]["derivatives"][1].update(relaxation="linear"),
     "step 1 corrector derivative 2: derivative 2 takes relaxation 'none' or 'half' only, got 'linear'"),
    (lambda d: d.update(afs="x"), "afs: unknown kind 'x'; valid: none, zero, zero-official, mean"),
    (lambda d: d["steps"][2].update(corrector={"kind": "pseudo", "order": 2, "start_point": -1,
                                               "derivatives": [{"active_points": [-2]}]}),
     "step 2 corrector: start point -1 is not an earlier point of the history (positions -2..-4"),
    (lambda d: d["steps"][1].update(corrector={"kind": "pseudo", "order": 4, "start_point": -2,
                                               "derivatives": [{"active_points": [-1, -3]}] * 3}),
     "step 1 corrector: order 4 is above the available history (at most 3)"),
    (lambda d: d["steps"][0].update(corrector={"kind": "none", "start_point": -3}),
     "step 0 corrector: kind 'none' takes no order, derivatives or start point"),
    (lambda d: d["steps"][0].update(corrector={"kind": "pseudo", "order": 2, "colour": 1}),
     "step 0: unknown corrector fields ['colour']"),
    (lambda d: d["steps"][1]["derivatives"][0].update(active_points=[-3]),
     "step 1 derivative 1: active point -3 is not in the history (positions -1..-2)"),
    (lambda d: d.update(model_times=[1.0, 0.5]), "model_times: one per timestep: 4 expected, got 2"),
    (lambda d: d.update(model_times=[1.0, 0.5, float("nan"), 0.01]), "model_times[2]: nan is not a finite time > 0"),
    (lambda d: d.update(model_times=[1.0, 0.5, 0.6, 0.01]), "model_times[2]: 0.6 is not below model_times[1] = 0.5"),
    (lambda d: d["steps"][1].update(derivatives=[]), "step 1: order 2 needs 1 derivative estimates, got 0"),
    (lambda d: d["steps"][1].update(colour="red"), "step 1: unknown step fields ['colour']"),
])
def test_invalid_schedules_name_the_step_and_field(mutate, message):
    d = unipc_schedule(torch.tensor([1.0, 0.5, 0.2, 0.01], dtype=torch.float64)).to_dict()
    mutate(d)
    with pytest.raises(UsageError, match="invalid solver schedule: " + __import__("re").escape(message)):
        SolverSchedule.from_dict(d)


def test_sample_with_a_schedule_file(tmp_path, capsys, monkeypatch):
    from samplebench import sampling
    from samplebench.cli import main
    from samplebench.models import load_model

    titles = []
    grid_image = sampling._grid_image
    monkeypatch.setattr(sampling, "_grid_image", lambda a, labels, title: titles.append(title) or grid_image(
        a, labels, title))

    model = load_model("digits-gmm")
    grid = make_grid(model.schedule, "logsnr", 6)
    dpmpp_2m_schedule(grid).save(tmp_path / "2m.json")
    args = ["--model", "digits-gmm", "--num", "3", "--save-npz", "--quiet"]
    assert main(["sample", *args, "--schedule", str(tmp_path / "2m.json"), "--out", str(tmp_path / "a")]) == 0
    assert main(["sample", *args, "--solver", "dpmpp-2m", "--nfe", "6", "--out", str(tmp_path / "b")]) == 0
    a, b = np.load(tmp_path / "a" / "samples.npz")["x"], np.load(tmp_path / "b" / "samples.npz")["x"]
    assert np.allclose(a, b, atol=1e-5)
    summary = __import__("json").loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["solver"] == "usf" and summary["nfe_per_sample"] == 6 and summary["schedule"]["steps"]
    assert titles == ["digits-gmm · USF schedule 2m.json · NFE 6", "digits-gmm · dpmpp-2m on logsnr · NFE 6"]
    capsys.readouterr()
    for extra, message in [(["--schedule", str(tmp_path / "2m.json"), "--nfe", "5"], "uses 6 NFE, not --nfe 5"),
                           (["--schedule", str(tmp_path / "none.json")], "does not exist"),
                           (["--schedule", str(tmp_path / "a" / "summary.json")], "invalid solver schedule")]:
        assert main(["sample", *args, *extra, "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "c").exists()


# --- the decision space of the official code (thu-nics/USF uni_sampler.py) and its schedule format ----------------

class _data_polynomial:
    """A denoiser whose data prediction is the polynomial sum_k c_k lambda^k (the same for every x): a data-prediction
    step of Taylor order K with exact derivative estimates is exact for degree < K."""

    def __init__(self, coefficients, schedule):
        self.coefficients, self.schedule = coefficients, schedule

    def __call__(self, x, t):
        from samplebench.models import Prediction

        t = float(t)
        lam = self.schedule.lambda_(t)
        x0 = torch.full_like(x, sum(c * lam**k for k, c in enumerate(self.coefficients)))
        return Prediction(x0, (x - self.schedule.alpha(t) * x0) / self.schedule.sigma(t))


def _exact_data_ode(coefficients, schedule, x_s, t_s, t_t):
    """x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda D(lambda) dlambda (Gauss-Legendre)."""
    ls, lt = schedule.lambda_(t_s), schedule.lambda_(t_t)
    z, w = np.polynomial.legendre.leggauss(64)
    lam = 0.5 * (lt - ls) * z + 0.5 * (lt + ls)
    integral = float(np.sum(0.5 * (lt - ls) * w * np.exp(lam) * sum(c * lam**k for k, c in enumerate(coefficients))))
    return schedule.sigma(t_t) / schedule.sigma(t_s) * x_s + schedule.sigma(t_t) * integral


def test_an_order_5_corrector_on_the_last_step_is_exact_for_a_degree_4_data_prediction():
    """The official search corrects a step to one order more than its Taylor order 4; on the last step it costs
    the evaluation at the end point (+1 NFE). A data prediction of degree 4 in lambda: the order-4 predictor is
    not exact, the order-5 corrector with four differences is."""
    coefficients = [0.3, -0.2, 0.05, 0.01, -0.002]
    ts = (1.0, 0.7, 0.5, 0.3, 0.15)
    d = _data_polynomial(coefficients, SCHEDULE)
    x = torch.full((1, *SHAPE), 0.7, dtype=torch.float64)
    ders = lambda pts: tuple(Derivative(pts) for _ in range(len(pts)))  # noqa: E731
    steps = [Step("data", 1), Step("data", 2, ders((-2,))), Step("data", 3, ders((-2, -3))),
             Step("data", 4, ders((-2, -3, -4)))]
    predicted = usf_sample(d, x, SolverSchedule(ts, tuple(steps)))
    steps[3] = Step("data", 4, ders((-2, -3, -4)), corrector=Corrector("pseudo", 5, ders((-1, -3, -4, -5)), -2))
    schedule = SolverSchedule(ts, tuple(steps))
    counted = CountingDenoiser(d)
    corrected = usf_sample(counted, x, schedule)
    assert counted.nfe == schedule.nfe == 5  # four steps, and the corrector's evaluation at the end
    x_3 = usf_sample(d, x, SolverSchedule(ts[:4], tuple(steps[:3])))
    exact = _exact_data_ode(coefficients, SCHEDULE, x_3, ts[3], ts[4])
    assert float((corrected - exact).abs().max()) < 1e-10 < float((predicted - exact).abs().max())


def test_a_corrector_starts_where_it_says():
    """A first-order corrector from start point -3 is the DDIM step from the point two before the new one, with
    that point's prediction."""
    coefficients = [0.3, -0.2, 0.05]
    ts = (1.0, 0.6, 0.3, 0.1)
    d = _data_polynomial(coefficients, SCHEDULE)
    x = torch.full((1, *SHAPE), 0.7, dtype=torch.float64)
    first = [Step("data", 1), Step("data", 1)]
    corrected = usf_sample(d, x, SolverSchedule(ts, (*first, Step("data", 1, corrector=Corrector("pseudo", 1, (), -3)))))
    x_1 = usf_sample(d, x, SolverSchedule(ts[:2], tuple(first[:1])))
    a, s, lam = (float(f(ts[3])) for f in (SCHEDULE.alpha, SCHEDULE.sigma, SCHEDULE.lambda_))
    x0_1 = sum(c * SCHEDULE.lambda_(ts[1]) ** k for k, c in enumerate(coefficients))
    h = lam - SCHEDULE.lambda_(ts[1])
    expected = s / SCHEDULE.sigma(ts[1]) * x_1 + a * -math.expm1(-h) * x0_1
    assert float((corrected - expected).abs().max()) < 1e-12


def test_implicit_and_last_step_correctors_are_counted_as_evaluated():
    ts = tuple(make_grid(SCHEDULE, "logsnr", 3).tolist())
    c = Corrector("implicit", 2, (Derivative((-1,)),))
    for steps, nfe in (((Step("data", 1, corrector=c), Step("data", 1), Step("data", 1)), 4),
                       ((Step("data", 1), Step("data", 1), Step("data", 1, corrector=c)), 4),
                       ((Step("data", 1), Step("data", 1), Step("data", 1, corrector=Corrector(
                           "pseudo", 2, (Derivative((-1,)),)))), 4)):
        schedule = SolverSchedule(ts, steps)
        counted = CountingDenoiser(AnalyticDenoiser(MIXTURE, SCHEDULE))
        usf_sample(counted, X_T.clone(), schedule)
        assert counted.nfe == schedule.nfe == nfe


def test_afs_zero_in_both_conventions():
    """samplebench's ``zero`` is USF's x0 = 0 with eps = x_T / sigma_T; the official code's ``zero_x0`` keeps that eps
    but takes x0 from eps = x_T: (1 - sigma_T) x_T / alpha_T. They differ only in data-prediction steps."""
    ts = (0.9, 0.5, 0.1)
    x = X_T.clone()
    d = AnalyticDenoiser(MIXTURE, SCHEDULE)
    run = lambda afs, prediction: usf_sample(d, x, SolverSchedule(ts, (Step(prediction, 1),) * 2, afs))  # noqa: E731
    assert torch.equal(run("zero", "noise"), run("zero-official", "noise"))
    a, s = SCHEDULE.alpha(ts[0]), SCHEDULE.sigma(ts[0])
    a1, s1, lam0, lam1 = SCHEDULE.alpha(ts[1]), SCHEDULE.sigma(ts[1]), SCHEDULE.lambda_(ts[0]), SCHEDULE.lambda_(ts[1])
    one_step = lambda afs, x0: s1 / s * x + a1 * -math.expm1(-(lam1 - lam0)) * x0  # noqa: E731
    assert torch.allclose(usf_sample(d, x, SolverSchedule(ts[:2], (Step("data", 1),), "zero-official")),
                          one_step("zero-official", (1 - s) * x / a), rtol=0, atol=1e-12)
    assert torch.allclose(usf_sample(d, x, SolverSchedule(ts[:2], (Step("data", 1),), "zero")),
                          one_step("zero", torch.zeros_like(x)), rtol=0, atol=1e-12)


OFFICIAL = {  # a hand-written decisions dict in the official format, every kind of decision
    "timesteps": [1.0, 0.7, 0.45, 0.25, 0.1, 0.02],
    "orders": [1, 2, 3, 2, 4],
    "prediction_types": ["noise_prediction", "data_prediction", "data_prediction", "noise_prediction",
                         "data_prediction"],
    "start_points": [-1, -1, -1, -2, -1],
    "derivative_types": [
        [],
        [{"estimate": "Difference_1", "active_points": [-2], "relaxation": "linear", "relaxation_coefficient": 0.05}],
        [{"estimate": "Difference_2", "active_points": [-3, -2], "relaxation": None},
         {"estimate": "Difference_2", "active_points": [-2, -3], "relaxation": "linear", "relaxation_coefficient": 9}],
        [{"estimate": "Difference_1", "relaxation": "unipc-bh1"}],
        [{"estimate": "Difference_3", "active_points": None, "relaxation": "no_relaxation"}] * 3],
    "corrector_types": [
        {"type": "pseudo", "start_point": -2, "taylor_order": 2,
         "derivative_type": [{"estimate": "Difference_1", "active_points": [-1], "relaxation": None}]},
        {"type": "no_corrector", "start_point": None, "taylor_order": None, "derivative_type": None},
        {"type": "implicit", "start_point": -2, "taylor_order": 4,
         "derivative_type": [{"estimate": "Difference_3", "active_points": [-4, -3, -1], "relaxation": None}] * 3},
        {"type": "no_corrector"},
        {"type": "pseudo", "start_point": -3, "taylor_order": 5,
         "derivative_type": [{"estimate": "Difference_4", "active_points": None, "relaxation": None}] * 4}],
    "afs": "zero_x0",
    "skip_coefficients": [1.0, 1.0, 1.0],
}


def test_the_official_decisions_dict_is_imported_decision_for_decision(tmp_path):
    import json

    schedule = SolverSchedule.from_dict(json.loads(json.dumps(OFFICIAL)))
    assert schedule.afs == "zero-official" and schedule.skip_coefficients is None  # all ones scale nothing
    s0, s1, s2, s3, s4 = schedule.steps
    assert s0 == Step("noise", 1, (), -1, Corrector("pseudo", 2, (Derivative((-1,)),), -2))
    assert s1 == Step("data", 2, (Derivative((-2,), "linear", 0.05),))
    # the official code relaxes the first derivative only
    assert s2.derivatives == (Derivative((-3, -2)), Derivative((-2, -3))) and s2.corrector.kind == "implicit"
    # missing active points as the official get_diff_derivative picks them: after the start, then before it
    assert s3 == Step("noise", 2, (Derivative((-1,), "unipc-bh1"),), -2)
    assert s4.derivatives == (Derivative((-2, -3, -4)),) * 3
    assert s4.corrector == Corrector("pseudo", 5, (Derivative((-2, -1, -4, -5)),) * 4, -3)
    assert schedule.nfe == 5 - 1 + 1 + 1  # AFS, the implicit corrector, the last step's corrector
    counted = CountingDenoiser(AnalyticDenoiser(MIXTURE, SCHEDULE))
    assert bool(torch.isfinite(usf_sample(counted, X_T.clone(), schedule)).all()) and counted.nfe == schedule.nfe
    # the same dict as a .pth file, as the official repository ships its schedules
    torch.save({**OFFICIAL, "timesteps": torch.tensor(OFFICIAL["timesteps"]),
                "skip_coefficients": torch.tensor([0.9, 1.0, 1.0])}, tmp_path / "nfe6.pth")
    loaded = SolverSchedule.load(tmp_path / "nfe6.pth")
    assert loaded.steps == schedule.steps and loaded.skip_coefficients == pytest.approx((0.9, 1.0, 1.0))
    # and it writes as a samplebench schedule that reads back the same
    assert SolverSchedule.from_json(loaded.to_json()) == loaded


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["prediction_types"].__setitem__(2, "dpmsolver_v3_prediction"),
     "step 2: a DPM-Solver-v3 prediction needs the model's empirical model statistics (EMS)"),
    (lambda d: d.update(afs="mean_x0"), "afs: unknown 'mean_x0'; valid: no_afs, zero_x0, average_x0"),
    (lambda d: d["derivative_types"][1][0].update(estimate="Difference_2"),
     "step 1 derivative 1: estimate Difference_2 needs 2 active points, got [-2]"),
    (lambda d: d["derivative_types"][1][0].update(relaxation="vary_coeff"),
     "step 1 derivative 1: unknown relaxation 'vary_coeff'"),
    (lambda d: d["orders"].append(1), "timesteps: 6 timesteps for 6 steps"),
    (lambda d: d["corrector_types"].__setitem__(1, {"type": "magic"}), "step 1 corrector: unknown corrector"),
])
def test_official_dicts_that_cannot_run_here_are_refused_in_one_line(mutate, message, tmp_path, capsys):
    import copy
    import json

    from samplebench.cli import main

    d = copy.deepcopy(OFFICIAL)
    mutate(d)
    (tmp_path / "s.json").write_text(json.dumps(d))
    assert main(["sample", "--schedule", str(tmp_path / "s.json"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "official USF schedule: " + message in err, err
    assert not (tmp_path / "out").exists()


def test_the_official_relaxations_are_the_schedules_but_half():
    """``official.py`` reads relaxation names without importing the schedule module (no import circle): its list
    must be the schedule's, less samplebench's own "half"."""
    from samplebench.usf import official, schedule

    assert set(official.RELAXATIONS) == set(schedule.RELAXATIONS) - {"half"}
