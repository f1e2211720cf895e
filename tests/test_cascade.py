"""Low-resolution cascades (methods.md Sec. 4.6): shapes through the stages, the condition's effect, the
training-free cascade's limits t* = T and t* -> 0 against exact Gaussian solutions, seeding, and NFE and FLOPs
counted per stage."""

import json

import pytest
import torch

from samplebench.cascade import CascadeSpec, plan_cascade
from samplebench.cli import main
from samplebench.errors import UsageError
from samplebench.models import AnalyticModel, Conditioning, GaussianMixture, gaussian_ode_solution, load_model
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.models.lowdiff import NO_CONDITION, upsample
from samplebench.samplers import get_solver
from samplebench.sampling import sample, solver_grid


@pytest.fixture(scope="module")
def cascade_dir(tmp_path_factory):
    """The digits cascade architecture, randomly initialised, saved as a local cascade pipeline directory."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from samplebench.train import digits_lowdiff_unet

    out = tmp_path_factory.mktemp("cascade")
    DDPMPipeline(unet=digits_lowdiff_unet(0), scheduler=DDPMScheduler(beta_schedule="linear")).save_pretrained(out)
    (out / "cascade.json").write_text(json.dumps({"resolutions": [8, 16], "condition_noise": 0.1,
                                                  "upsample": "bilinear"}))
    return out


def _gaussian(shape, mean, std):
    return AnalyticModel(f"gaussian-{shape[-1]}", ddpm_linear_schedule(), shape,
                         mixture=GaussianMixture.gaussian(mean, std, shape))


HIGH, LOW = _gaussian((1, 16, 16), 0.0, 0.5), _gaussian((1, 8, 8), 0.7, 0.3)


def _plan(model, stages, solver="dpmpp-2m", low=None, **kw):
    return plan_cascade(model, CascadeSpec.parse(stages, **kw), solver, None, low)


def test_stages_run_at_their_resolutions_and_nfe(cascade_dir):
    model = load_model(str(cascade_dir))
    assert model.takes_low_res and model.resolutions == (8, 16) and model.sample_shape == (1, 16, 16)
    inputs = []
    handle = model.pipe.unet.register_forward_pre_hook(lambda m, a: inputs.append(tuple(a[0].shape)))
    try:
        result = _plan(model, "8:6,16:4:ddim").sample(range(3), batch_size=3)
    finally:
        handle.remove()
    assert result.images.shape == (3, 1, 16, 16) and result.nfe == 10
    sampled = [shape for shape in inputs if shape[0] == 3]  # (one-row calls: the size probe and FLOP counts)
    assert sampled == [(3, 2, 8, 8)] * 6 + [(3, 2, 16, 16)] * 4  # [x_t, condition] at each stage's size
    stages = result.compute["stages"]
    assert [(s["resolution"], s["nfe"], s["solver"]) for s in stages] == [(8, 6, "dpmpp-2m"), (16, 4, "ddim")]


def test_flops_per_stage_match_the_network(cascade_dir):
    from torch.utils.flop_counter import FlopCounterMode

    model = load_model(str(cascade_dir))

    def flops(size):
        with FlopCounterMode(display=False) as c:
            model.pipe.unet(torch.zeros(1, 2, size, size), torch.tensor([5.0]), class_labels=torch.tensor([1.0]))
        return c.get_total_flops() / 1e9

    result = _plan(model, "8:6,16:4").sample(range(2), batch_size=2)
    c = result.compute
    per_eval = [s["gflops_per_eval"] for s in c["stages"]]
    assert per_eval == pytest.approx([flops(8), flops(16)])
    assert 3.5 < per_eval[1] / per_eval[0] < 4.5  # a 16x16 evaluation costs about four 8x8 ones
    assert c["gflops_per_sample"] == pytest.approx(6 * per_eval[0] + 4 * per_eval[1])
    assert c["gflops"] == pytest.approx(2 * c["gflops_per_sample"])
    assert c["full_resolution_nfe_equivalent"] == pytest.approx(6 * per_eval[0] / per_eval[1] + 4)
    assert c["flop_fraction"] == pytest.approx(c["full_resolution_nfe_equivalent"] / 10)


def test_condition_enters_the_network(cascade_dir):
    model = load_model(str(cascade_dir))
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    c = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with_c = model.denoiser(Conditioning(low_res=c, low_res_level=99.0), 2)(x, 0.5).eps
    zeroed = model.denoiser(Conditioning(low_res=torch.zeros_like(c), low_res_level=99.0), 2)(x, 0.5).eps
    level = model.denoiser(Conditioning(low_res=c, low_res_level=500.0), 2)(x, 0.5).eps
    for other in (zeroed, level):
        assert (with_c - other).abs().max() > 1e-4
    x8 = x[..., ::2, ::2]  # the first stage: zero condition plus the no-condition level
    none = model.denoiser(Conditioning(), 2)(x8, 0.5).eps
    direct = model.pipe.unet(torch.cat([x8, torch.zeros_like(x8)], 1), model.schedule.model_time(torch.tensor(0.5)),
                             class_labels=torch.full((2,), NO_CONDITION)).sample
    assert torch.allclose(none, direct, atol=1e-5)


def test_images_depend_only_on_their_seeds(cascade_dir):
    model = load_model(str(cascade_dir))
    plan = _plan(model, "8:3,16:2", solver="ddpm")  # stochastic: step noise too comes from each sample's generator
    a = plan.sample(range(5), batch_size=5).images
    b = torch.cat([plan.sample([s], batch_size=1).images for s in range(5)])
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)  # (random weights: values in the hundreds)


@pytest.mark.parametrize("path", ["vp", "flow"])
def test_training_free_cascade_matches_the_exact_renoise_and_finish(path):
    """x_{t*} = alpha Up(x_low) + sigma eps, then the exact Gaussian flow from t* to t_min; x_low is the plain
    8x8 sample of the same seed, eps the next draw of that seed's generator. On the DDPM path and on the
    flow-matching one (x_{t*} = (1 - t*) Up(x_low) + t* eps)."""
    from dataclasses import replace

    from samplebench.schedules import FlowMatching

    high, low = (HIGH, LOW) if path == "vp" else (replace(m, schedule=FlowMatching()) for m in (HIGH, LOW))
    seeds, t_star = [3, 4, 5], 0.6
    plan = _plan(high, "8:40,16:40", solver="dpmpp-3m", low=low, t_start=t_star)
    out = plan.sample(seeds, batch_size=2).x
    solver = get_solver("dpmpp-3m")
    x_low = sample(low, solver, solver_grid(low, solver, 40), seeds).x
    eps = []
    for s in seeds:
        g = torch.Generator().manual_seed(s)
        torch.randn(1, 8, 8, generator=g)
        eps.append(torch.randn(1, 16, 16, generator=g))
    sched, t = high.schedule, torch.tensor(t_star, dtype=torch.float64)
    x_start = float(sched.alpha(t)) * upsample(x_low, 16) + float(sched.sigma(t)) * torch.stack(eps)
    exact = gaussian_ode_solution(high.mixture, sched, x_start, t_star, sched.t_min)
    assert (out - exact).abs().max() < 2e-3


def test_renoising_at_T_gives_the_plain_distribution_and_near_zero_the_upsampled_sample():
    n, seeds = 2000, range(2000)
    at_T = _plan(HIGH, "8:5,16:10", low=LOW, t_start=1.0).sample(seeds, batch_size=1000).x
    plain = sample(HIGH, get_solver("dpmpp-2m"), solver_grid(HIGH, get_solver("dpmpp-2m"), 10), seeds,
                   batch_size=1000).x
    # the plain sampler's N(0, 0.5^2) up to its own 10-NFE error: the low stage's mean 0.7 has gone
    assert abs(float(at_T.mean())) < 0.005 and abs(float(plain.mean())) < 0.005
    assert abs(float(at_T.std()) - float(plain.std())) < 0.004 and abs(float(plain.std()) - 0.5) < 0.02
    mid = _plan(HIGH, "8:5,16:10", low=LOW, t_start=0.3).sample(seeds[:200], batch_size=200).x
    assert float(mid.mean()) > 0.2  # from t* = 0.3 the low-resolution layout survives
    near_zero = _plan(HIGH, "8:10,16:1", solver="ddim", low=LOW, t_start=0.002).sample(seeds[:8],
                               batch_size=8).x
    x_low = sample(LOW, get_solver("ddim"), solver_grid(LOW, get_solver("ddim"), 10), seeds[:8]).x
    gap = (near_zero - upsample(x_low, 16)).abs()  # what is left: noise at the level sigma(t_min) ~ 0.01
    assert float(gap.mean()) < 0.015 and float(gap.max()) < 0.08
    assert n == len(at_T)


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpmpp-3m", "unipc-bh2"])
def test_nfe_is_exact_for_any_registry_solver(solver):
    nfe = {"heun": (4, 6)}.get(solver, (3, 5))
    result = _plan(HIGH, f"8:{nfe[0]},16:{nfe[1]}", solver=solver, low=LOW, t_start=0.5).sample(range(2))
    assert [s["nfe"] for s in result.compute["stages"]] == list(nfe) and result.nfe == sum(nfe)


@pytest.mark.parametrize("stages,kw,message", [
    ("8:6", {}, "at least two stages"),
    ("16:4,8:6", {}, "rising resolutions"),
    ("8:x,16:4", {}, "is not valid"),
    ("8:6,16:4", {"t_start": 0.0}, "--cascade-from must be a time in (0, 1]"),
    ("8:6,16:4", {"upsample": "lanczos"}, "valid: bilinear, nearest, bicubic"),
    ("8:6,16:4", {"condition_noise": 1.5}, "--cascade-noise must be a time in [0, 1)"),
])
def test_bad_cascade_specs(stages, kw, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        CascadeSpec.parse(stages, **kw)


def test_bad_cascades_for_the_model(cascade_dir):
    model = load_model(str(cascade_dir))
    with pytest.raises(UsageError, match="last --cascade stage must be the model's resolution 16x16"):
        _plan(model, "4:6,8:4")
    with pytest.raises(UsageError, match="trained at 8, 16, not 4"):
        _plan(model, "4:2,16:4")
    with pytest.raises(UsageError, match="not a cascade model: give --cascade-from"):
        _plan(HIGH, "8:6,16:4", low=LOW)
    with pytest.raises(UsageError, match="--cascade-noise applies to cascade models"):
        _plan(HIGH, "8:6,16:4", low=LOW, t_start=0.5, condition_noise=0.1)
    with pytest.raises(UsageError, match="not a cascade model, so it takes no low-resolution condition"):
        HIGH.denoiser(Conditioning(low_res=torch.zeros(1, 1, 16, 16), low_res_level=0.0), 1)


CLI_BAD = [
    (["--cascade", "8:6,16:4"], "model 'digits' is not a cascade model: give --cascade-from"),
    (["--cascade", "8:6,16:4", "--cascade-from", "0.5", "--nfe", "12"], "--nfe 12 differs from the cascade's 10"),
    (["--cascade", "8:6,16:4", "--cascade-from", "0.5", "--cache", "deepcache:2"], "does not combine"),
    (["--cascade", "8:6,16:4", "--cascade-from", "0.5", "--solver", "s3"], "--solver s3 do not apply"),
    (["--cascade", "8:6,12:4", "--cascade-from", "0.5"], "must be the model's resolution 16x16, got 12x12"),
    (["--cascade", "8:6,16:4", "--cascade-from", "0.5", "--time-grid", "1.0,0.5,0.001"], "must be a grid kind"),
    (["--cascade-from", "0.5"], "--cascade-from needs --cascade"),
    (["--model", "digits-lowdiff", "--cascade", "8:6,16:4", "--skip-rho", "0.8"],
     "--skip-rho does not combine with --cascade"),  # as eval refuses it: one check, in the run spec
    (["--cascade", "8:6,16:4", "--cascade-from", "0.5", "--cascade-model", "gaussian"],
     "model 'gaussian' cannot run at 8x8"),
]


@pytest.mark.parametrize("args,message", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_cli_bad_cascades(tmp_path, capsys, args, message, command):
    """``sample`` and ``eval`` refuse the same cascades with the same message (one run spec checks both)."""
    out = tmp_path / "never"
    extra = ["--num", "4", "--metrics", "fid"] if command == "eval" else []
    assert main([command, "--out", str(out), "--quiet", *extra, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()


def test_a_cascade_model_needs_a_cascade(tmp_path, capsys, cascade_dir):
    for command in (["sample"], ["eval", "--ref", "digits-train", "--num", "4"]):
        out = tmp_path / "never"
        assert main([*command, "--model", str(cascade_dir), "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "is a cascade model; give --cascade, e.g. 8:6,16:4" in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    with pytest.raises(UsageError, match="its 16x16 stage needs the lower-resolution result"):
        load_model(str(cascade_dir)).denoiser(Conditioning(), 1)(torch.zeros(1, 1, 16, 16), 0.5)


def test_cli_training_free_cascade_and_eval(tmp_path, cascade_dir):
    out = tmp_path / "s"
    assert main(["sample", "--model", "digits", "--cascade", "8:4,16:4", "--cascade-from", "0.4",
                 "--cascade-model", str(cascade_dir), "--num", "3", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nfe"] == 8 and summary["cascade"]["t_start"] == 0.4
    assert [s["model"] for s in summary["cascade"]["stages"]] == [str(cascade_dir), "digits"]
    assert summary["compute"]["flop_fraction"] < 0.7
    job, db = tmp_path / "job", tmp_path / "runs.db"
    args = ["eval", "--model", str(cascade_dir), "--cascade", "8:2,16:2", "--num", "20", "--shard-size", "10",
            "--ref", "digits-train", "--metrics", "fid", "--out", str(job), "--db", str(db), "--quiet"]
    assert main(args) == 0
    row = json.loads((job / "results.json").read_text())[0]
    assert row["nfe"] == 4 and row["compute"] == "cascade:8:2,16:2" and 0.2 < row["flop_fraction"] < 0.7
    assert row["gflops_per_sample"] == pytest.approx(2 * 0.0311 + 2 * 0.1239, rel=0.05)
    assert main(args) == 0  # resumes: nothing to sample
    assert json.loads((job / "results.json").read_text())[0]["fid"] == row["fid"]
