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


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["steps"][0].update(order=2), "step 0: order 2 is above the available history (1 point; at most 1)"),
    (lambda d: d["timesteps"].__setitem__(2, 0.9), "timesteps[2]: 0.9 is not below timesteps[1]"),
    (lambda d: d["steps"][1].update(prediction="v"), "step 1: unknown prediction 'v'; valid: noise, data"),
    (lambda d: d["steps"][1]["derivatives"][0].update(relaxation="foo"), "step 1 derivative 1: unknown relaxation"),
    (lambda d: d["steps"][0]["corrector"].update(kind="magic"), "step 0 corrector: unknown kind 'magic'"),
    (lambda d: d["steps"][1]["corrector"]["derivatives"][1].update(relaxation="linear"),
     "step 1 corrector derivative 2: derivative 2 takes relaxation 'none' or 'half' only, got 'linear'"),
    (lambda d: d.update(afs="x"), "afs: unknown kind 'x'; valid: none, zero, mean"),
    (lambda d: d["steps"][2].update(corrector={"kind": "pseudo", "order": 2,
                                               "derivatives": [{"active_points": [-1]}]}),
     "step 2 corrector: the last step cannot have a corrector"),
    (lambda d: d["steps"][1]["derivatives"][0].update(active_points=[-3]),
     "step 1 derivative 1: active point -3 is not in the history (positions -1..-2)"),
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
    assert titles == ["digits-gmm | usf | NFE 6", "digits-gmm | dpmpp-2m | NFE 6"]
    capsys.readouterr()
    for extra, message in [(["--schedule", str(tmp_path / "2m.json"), "--nfe", "5"], "uses 6 NFE, not --nfe 5"),
                           (["--schedule", str(tmp_path / "none.json")], "does not exist"),
                           (["--schedule", str(tmp_path / "a" / "summary.json")], "invalid solver schedule")]:
        assert main(["sample", *args, *extra, "--out", str(tmp_path / "c")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "c").exists()
