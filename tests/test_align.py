"""DTS / DTS* and the best-of-N and FK-steering baselines: backups, exact tree identities, tilted Gaussians,
NFE accounting, and the command line."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from pipelines import save_ddpm
from samplebench.align import AlignConfig, Chain, CountedReward, best_of_n, dts, fk_steering, get_reward, soft_backup
from samplebench.align.tree import draw, grow
from samplebench.cli import main
from samplebench.errors import UsageError
from samplebench.models.analytic import GaussianMixture
from samplebench.models.embedded import AnalyticModel, ddpm_linear_schedule
from samplebench.noise import SampleGenerators
from samplebench.sampling import sample, solver_grid
from samplebench.samplers import get_solver

STEPS = 10


def gaussian_1d():
    return AnalyticModel("g1", ddpm_linear_schedule(), (1,), mixture=GaussianMixture.gaussian(0.0, 1.0, (1,)))


def linear(x0, cond=None):
    """r(x) = a x with a = 1."""
    return x0.flatten(1).sum(1)


def constant(x0, cond=None):
    return torch.zeros(x0.shape[0])


def wrong_shape(x0, cond=None):
    return torch.zeros(x0.shape[0], 2)


def chain(reward=linear, steps=STEPS, **kw):
    return Chain.build(gaussian_1d(), CountedReward(reward), steps=steps, max_batch=100_000, **kw)


@pytest.fixture(scope="module")
def base_samples():
    """20,000 samples of the chain p_theta itself (DDPM, 10 steps; its variance V is below the data's 1)."""
    c = chain()
    g = SampleGenerators(range(20_000))
    return c.run(c.prior(g), 0, STEPS, g).flatten().double()


def test_soft_backup_and_its_limits():
    v = [-1.0, 0.5, 2.0]
    assert soft_backup(v, 2.0) == pytest.approx(0.5 * math.log(np.mean(np.exp(2.0 * np.array(v)))), rel=1e-12)
    assert soft_backup(v, 1e4) == pytest.approx(max(v), abs=1e-3)  # lambda -> inf: max
    assert soft_backup(v, 1e-6) == pytest.approx(np.mean(v), abs=1e-5)  # lambda -> 0: mean
    assert soft_backup(v, 0.0) == np.mean(v) and soft_backup(v, math.inf) == max(v)
    assert soft_backup([-1e4, -1e4 + 1], 1.0) == pytest.approx(-1e4 + math.log((math.exp(-1) + 1) / 2) + 1)


def _leaves(tree):
    return [n for n in range(len(tree)) if tree.level[n] == tree.terminal_level]


def _tree_probability(tree, lam, leaf):
    """exp(lambda r) / (exp(lambda v_root) prod over ancestors of |children|): Alg. 2's draw probability when
    every v is the uniform log-mean-exp of its children's."""
    p = math.exp(lam * (tree.value[leaf] - tree.value[0]))
    for a in tree.path(leaf)[1:]:
        p /= len(tree.children[a])
    return p


def _built_tree(backup=None, lam=1.0):
    return grow(chain(), budget=300 * STEPS, lam=lam, seed=3, widen_c=1.0, widen_alpha=0.5, backup=backup)


def _max_backup(tree, n, lam):
    return max(tree.value[c] for c in tree.children[n])


def _visit_weighted(tree, n, lam):
    kids = tree.children[n]
    w = np.array([tree.visits[c] for c in kids], dtype=float)
    return float(np.log(np.sum(w / w.sum() * np.exp(lam * np.array([tree.value[c] for c in kids])))) / lam)


def test_tree_draws_are_reward_tilted_tree_measure_and_wrong_backups_break_it():
    """Alg. 2 draws leaf l with probability exp(lambda r_l) / (exp(lambda v_root) prod |C(a)|): the tree's uniform
    measure tilted by exp(lambda r). These sum to 1 only with the uniform log-mean-exp backup; a max backup or a
    visit-weighted average breaks the identity (and so samples the wrong distribution)."""
    tree = _built_tree()
    leaves = _leaves(tree)
    probs = np.array([_tree_probability(tree, 1.0, n) for n in leaves])
    assert probs.sum() == pytest.approx(1.0, rel=1e-9)
    assert len({tree.level[n] for n in leaves}) == 1 and tree.state_bytes() > 0
    drawn = draw(tree, 40_000, lam=1.0, star=False, rng=np.random.default_rng(0))
    freq = np.bincount([leaves.index(n) for n in drawn], minlength=len(leaves)) / 40_000
    top = np.argsort(probs)[-20:]  # the likeliest leaves: binomial error bars
    assert np.all(np.abs(freq[top] - probs[top]) < 5 * np.sqrt(probs[top] * (1 - probs[top]) / 40_000) + 1e-4)
    for wrong in (_max_backup, _visit_weighted):
        bad = _built_tree(wrong)
        total = sum(_tree_probability(bad, 1.0, n) for n in _leaves(bad))
        assert abs(total - 1.0) > 0.05, wrong.__name__


def test_dts_samples_the_tilted_gaussian(base_samples):
    """Prior p_theta = N(0, V) (the chain's own law), r(x) = a x: the target is N(lambda a V, V). With widening
    alpha = 1 every rollout starts a new branch, so the draws are self-normalised importance samples: the mean is
    within 4 standard errors of lambda a V (errors from the effective sample size)."""
    var = float(base_samples.var())
    for lam in (0.5, 1.0):
        result = dts(chain(), budget=6000 * STEPS, num=20_000, lam=lam, seed=1, widen_alpha=1.0, batch=256)
        x = result.x.flatten().double()
        w = torch.softmax(lam * base_samples[:6000], 0)
        ess = 1.0 / float((w**2).sum())
        assert abs(float(x.mean()) - lam * var) < 4 * math.sqrt(var / ess) + 4 * math.sqrt(var / 20_000)
        assert float(x.var()) == pytest.approx(var, rel=0.1)


def test_constant_reward_gives_the_base_sampler(base_samples):
    result = dts(chain(constant), budget=2000 * STEPS, num=2000, seed=2, widen_c=1.0, widen_alpha=0.5)
    x = result.x.flatten().double().numpy()
    assert len(np.unique(x)) > 500  # draws spread over the tree's leaves
    assert stats.ks_2samp(np.unique(x), base_samples.numpy()).pvalue > 1e-3


def test_widening_bound_nfe_and_free_draws():
    tree = _built_tree()
    for n in range(len(tree)):
        assert len(tree.children[n]) <= math.ceil(tree.widen_c * tree.visits[n] ** tree.widen_alpha)
    c1, c2 = chain(), chain()
    one = dts(c1, budget=123 * STEPS + 7, num=1, seed=5)
    many = dts(c2, budget=123 * STEPS + 7, num=500, seed=5)
    # the counter equals the sum of the rollout lengths; drawing 500 samples instead of 1 costs nothing
    assert one.nfe == one.stats["rollout_nfe"] == many.nfe and one.nfe <= 123 * STEPS + 7
    assert one.nfe > 123 * STEPS + 7 - STEPS and one.reward_calls == one.stats["rollouts"]
    star = dts(chain(), budget=50 * STEPS, num=10, star=True, seed=5)
    assert len(set(star.x.flatten().tolist())) == 10  # DTS* draws distinct leaves


def test_dts_star_draws_follow_what_is_left_undrawn():
    """Node A holds one perfect leaf and one bad one, B three good ones. A wins the first draw; once its perfect leaf
    is taken, A's value over what is left is the bad leaf's, so B's good leaves come next. Descending by the values
    of the whole tree (which never change) would draw A's bad leaf second."""
    from samplebench.align.tree import Tree, _backup, _soft

    lam = 10.0
    tree = Tree(terminal_level=2)
    state = torch.zeros(1)
    a, b = tree.add(0, state), tree.add(0, state)
    leaves = [(a, 0.0), (a, -20.0), (b, -0.5), (b, -0.5), (b, -0.5)]
    for parent, reward in leaves:
        tree.value[tree.add(parent, state)] = reward
    _backup(tree, [n for n in range(len(tree)) if tree.level[n] == 2], lam, _soft)
    assert tree.value[a] > tree.value[b]  # A leads: log(mean(1, e^-200)) / 10 = -0.069 vs -0.5
    drawn = [tree.value[n] for n in draw(tree, 5, lam=lam, star=True, rng=np.random.default_rng(0))]
    assert drawn == [0.0, -0.5, -0.5, -0.5, -20.0]
    assert [tree.value[n] for n in draw(tree, 7, lam=lam, star=True, rng=np.random.default_rng(0))][5:] == [0.0, -0.5]


def test_dts_star_searches_for_high_rewards(base_samples):
    a = dts(chain(), budget=400 * STEPS, num=8, star=True, lam=4.0, seed=0)
    b = dts(chain(), budget=400 * STEPS, num=8, lam=4.0, seed=0)
    assert float(a.rewards.max()) >= float(b.rewards.max()) - 1e-9
    assert float(a.rewards[0]) > float(base_samples.quantile(0.95))  # the greedy path ends in the tail


def test_best_of_one_is_the_plain_ddpm_sample():
    m = gaussian_1d()
    c = Chain.build(m, CountedReward(linear), steps=STEPS)
    result = best_of_n(c, budget=8 * STEPS, num=8, seed=10)
    spec = get_solver("ddpm")
    plain = sample(m, spec, solver_grid(m, spec, STEPS), range(10, 18))
    torch.testing.assert_close(result.x, plain.x, rtol=0, atol=1e-6)
    more = best_of_n(chain(), budget=4 * 8 * STEPS, num=8, seed=10)
    assert more.nfe == 4 * 8 * STEPS and more.reward_calls == 32 and bool((more.rewards >= result.rewards).all())


@pytest.mark.parametrize("potential", ["diff", "max"])
def test_fk_steering_samples_the_tilted_gaussian(base_samples, potential):
    var = float(base_samples.var())
    c = chain(branch_steps=[0, 4, 8])
    result = fk_steering(c, budget=8000 * STEPS, num=8000, lam=1.0, potential=potential, seed=0)
    x = result.x.flatten().double()
    assert float(x.mean()) == pytest.approx(var, abs=0.06)
    assert result.nfe == 8000 * STEPS and result.reward_calls == 8000 * 3  # two resampling steps and x_0


def test_fk_with_zero_lambda_never_resamples(base_samples):
    result = fk_steering(chain(), budget=4000 * STEPS, num=4000, lam=0.0, seed=0)
    assert result.stats["resamples"] == 0
    assert stats.ks_2samp(np.unique(result.x.flatten().numpy()), base_samples.numpy()).pvalue > 1e-3


def test_rewards():
    x = torch.zeros(3, 1, 16, 16)
    r3, even = get_reward("class:3"), get_reward("even")
    assert r3(x, None).shape == (3,) and bool((even(x, None) >= r3(x, None) - 20).all())
    rgb = torch.zeros(2, 3, 32, 32)
    assert get_reward("odd")(rgb, None).shape == (2,)
    assert get_reward("test_align:linear") is linear
    for bad in ("class:10", "class:x", "nope", "test_align:missing", "no_such_module:f"):
        with pytest.raises(UsageError):
            get_reward(bad)
    counted = CountedReward(wrong_shape, "test_align:wrong_shape")
    with pytest.raises(UsageError, match=r"shape \(3, 2\).*shape \(3,\)"):
        counted(x)


def test_config_errors():
    with pytest.raises(UsageError, match="below one rollout"):
        AlignConfig(method="dts", budget=10, nfe=20)
    with pytest.raises(UsageError, match="at least 320"):
        AlignConfig(method="best-of-n", budget=100, num=16, nfe=20)
    with pytest.raises(UsageError, match="branch-steps"):
        AlignConfig(branch_steps=(2, 4))
    with pytest.raises(UsageError, match="widen-alpha"):
        AlignConfig(widen_alpha=1.5)


def test_cli_dts_and_bad_input(tmp_path, capsys):
    out = tmp_path / "dts"
    assert main(["sample", "--model", "digits-gmm", "--solver", "dts", "--reward", "class:3", "--budget", "400",
                 "--nfe", "10", "--num", "4", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nfe_total"] <= 400 and summary["reward_calls"] == summary["rollouts"] and len(summary["images"]) == 4
    assert summary["solver"] == "dts" and "state_bytes" in summary and len(summary["rewards"]) == 4
    bad = [["--reward", "class:11", "--budget", "400"], ["--reward", "test_align:wrong_shape", "--budget", "400"],
           ["--reward", "class:3", "--budget", "5"], ["--reward", "class:3"], ["--reward", "nope", "--budget", "400"]]
    for args in bad:
        capsys.readouterr()
        target = tmp_path / "bad"
        assert main(["sample", "--model", "digits-gmm", "--solver", "fk", "--nfe", "10", *args,
                     "--out", str(target), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("samplebench: error:") and err.count("\n") == 1 and not target.exists()
    assert main(["sample", "--solver", "ddim", "--reward", "class:3", "--out", str(tmp_path / "x")]) == 2


def test_dts_on_a_class_conditional_pipeline(tmp_path):
    model_dir = save_ddpm(tmp_path / "cond", num_class_embeds=4)
    out = tmp_path / "out"
    assert main(["sample", "--model", str(model_dir), "--solver", "dts-star", "--reward", "test_align:linear",
                 "--budget", "60", "--nfe", "5", "--num", "2", "--out", str(out), "--quiet"]) == 2  # needs a label
    assert main(["sample", "--model", str(model_dir), "--solver", "dts-star", "--reward", "test_align:linear",
                 "--budget", "60", "--nfe", "5", "--num", "2", "--class-label", "1",
                 "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nfe_total"] <= 60 and summary["class_label"] == 1


# ---- flow matching: the same stochastic chain (the DDPM posterior of the path x_t = (1 - t) x_0 + t eps) -----------

def gaussian_1d_flow(mean=0.0, std=1.0):
    from samplebench.schedules import FlowMatching

    return AnalyticModel("g1-flow", FlowMatching(), (1,), mixture=GaussianMixture.gaussian(mean, std, (1,)))


def test_the_chain_on_a_flow_path_samples_the_data():
    """DDPM's posterior step q(x_s | x_t, x0_pred) holds for any Gaussian path: on the flow path with the exact
    denoiser of N(0.5, 0.6^2), 100 steps give the data's mean and standard deviation."""
    c = Chain.build(gaussian_1d_flow(0.5, 0.6), CountedReward(linear), steps=100, max_batch=100_000)
    g = SampleGenerators(range(20_000))
    x = c.run(c.prior(g), 0, 100, g).flatten().double()
    assert float(x.mean()) == pytest.approx(0.5, abs=4 * 0.6 / math.sqrt(20_000))
    assert float(x.std()) == pytest.approx(0.6, rel=0.03)
    assert c.evaluations == 20_000 * 100


def test_dts_and_fk_on_a_flow_path_sample_the_tilted_gaussian():
    """As on the VP path: prior p_theta = N(0, V) (the flow chain's own law), r(x) = x, the target N(V, V)."""
    model = gaussian_1d_flow()
    make = lambda **kw: Chain.build(model, CountedReward(linear), steps=STEPS, max_batch=100_000, **kw)  # noqa: E731
    base = make()
    g = SampleGenerators(range(20_000))
    var = float(base.run(base.prior(g), 0, STEPS, g).flatten().double().var())
    result = dts(make(), budget=6000 * STEPS, num=20_000, lam=1.0, seed=1, widen_alpha=1.0, batch=256)
    assert float(result.x.flatten().double().mean()) == pytest.approx(var, abs=0.1)
    fk = fk_steering(make(branch_steps=[0, 4, 8]), budget=8000 * STEPS, num=8000, lam=1.0, seed=0)
    assert float(fk.x.flatten().double().mean()) == pytest.approx(var, abs=0.06)
