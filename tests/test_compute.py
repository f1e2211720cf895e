"""Early exit (DeeDiff), DeepCache and FirstBlockCache: exactness where nothing is skipped, exact counts where
something is, and the training losses' targets and gradients (methods.md Sec. 3.4 and 3.5)."""

import copy
import math
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from samplebench.compute import (ComputeMeter, ExitThreshold, metered_denoiser, network_profile, parse_cache)
from samplebench.errors import UsageError
from samplebench.models import Conditioning, load_model
from samplebench.models.deediff import deediff_losses, early_exit_forward, uncertainty_target
from samplebench.models.diffusers_models import DiTPixelModel
from samplebench.models.embedded import ddpm_linear_schedule
from samplebench.samplers import get_solver
from samplebench.sampling import sample, solver_grid


@pytest.fixture(scope="module")
def dit_model():
    """The digits-DiT architecture with random weights (adaLN-zero gates perturbed so that every block acts)."""
    from samplebench.train import digits_dit

    dit, heads = digits_dit(seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in [*dit.parameters(), *heads.parameters()]:
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return DiTPixelModel(name="tiny-dit", schedule=ddpm_linear_schedule(), sample_shape=(1, 16, 16), num_classes=10,
                         pipe=SimpleNamespace(transformer=dit.eval(), uem=heads.eval()))


def _inputs(rows=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 1, 16, 16, generator=g)
    t = torch.linspace(50, 950, rows)
    y = torch.arange(rows) % 11  # includes the null class 10
    return x, t, y


def _run(model, nfe=4, num=5, batch_size=5, **kw):
    solver = get_solver("dpmpp-2m")
    return sample(model, solver, solver_grid(model, solver, nfe), range(num), batch_size=batch_size, **kw)


def test_threshold_above_one_is_the_plain_model_bit_for_bit(dit_model):
    dit, heads = dit_model.pipe.transformer, dit_model.pipe.uem
    x, t, y = _inputs()
    with torch.no_grad():
        out, trace = early_exit_forward(dit, heads, x, t, y, 1.01)
        assert torch.equal(out, dit(x, t, y).sample)
    assert trace.blocks.tolist() == [8] * 6
    plain, ee = _run(dit_model), _run(dit_model, exit_threshold=ExitThreshold.parse("1.01"))
    assert torch.equal(plain.images, ee.images)
    assert ee.compute["block_fraction"] == 1.0 and ee.compute["blocks_evaluated"] == 5 * 4 * 8


def test_threshold_below_zero_exits_by_the_patient_rule(dit_model):
    dit, heads = dit_model.pipe.transformer, dit_model.pipe.uem
    x, t, y = _inputs()
    with torch.no_grad():
        out, trace = early_exit_forward(dit, heads, x, t, y, -0.01)
        assert trace.blocks.tolist() == [2] * 6  # the second exceedance, within the patient (first-half) blocks
        _, impatient = early_exit_forward(dit, heads, x, t, y, -0.01, patient_blocks=0)
        assert impatient.blocks.tolist() == [1] * 6
        # an exit after block 2 returns the shared head on block 2's output: a 2-block DiT's own forward
        two = copy.deepcopy(dit)
        two.transformer_blocks = two.transformer_blocks[:2]
        torch.testing.assert_close(out, two(x, t, y).sample, rtol=0, atol=1e-6)


def test_uncertainty_target_and_no_gradient_through_the_heads_inputs(dit_model):
    dit, heads = copy.deepcopy(dit_model.pipe.transformer).train(), copy.deepcopy(dit_model.pipe.uem)
    x, t, y = _inputs(4)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    losses = deediff_losses(dit, heads, x, t, y, eps)
    for i in (0, 3, 7):
        truncated = copy.deepcopy(dit)
        truncated.transformer_blocks = truncated.transformer_blocks[:i + 1]
        g_i = truncated(x, t, y).sample  # the shared head on block i, by diffusers' own forward
        torch.testing.assert_close(losses["targets"][i], 1 - torch.tanh((g_i - eps).abs()), rtol=0, atol=1e-6)
    assert torch.equal(uncertainty_target(losses["preds"][2], eps), 1 - torch.tanh((losses["preds"][2] - eps).abs()))
    losses["u"].backward()
    assert all(p.grad is None for p in dit.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())
    dit.zero_grad(set_to_none=True)
    heads.zero_grad(set_to_none=True)
    losses = deediff_losses(dit, heads, x, t, y, eps)
    (losses["simple"] + losses["ual"]).backward()
    assert all(p.grad is None for p in heads.parameters())  # L_UAL's weights are detached confidences
    assert dit.transformer_blocks[0].attn1.to_q.weight.grad.abs().sum() > 0


def _mixed_threshold(dit, heads, x, t, y):
    """A threshold at which rows of this batch leave at different blocks."""
    for thr in torch.linspace(0.3, 0.7, 41):
        _, trace = early_exit_forward(dit, heads, x, t, y, float(thr))
        if len(set(trace.blocks.tolist())) >= 3:
            return float(thr), trace
    pytest.fail("no threshold gives mixed exits")


def test_per_row_exit_in_a_batch_equals_rows_one_by_one(dit_model):
    dit, heads = dit_model.pipe.transformer, dit_model.pipe.uem
    x, t, y = _inputs(8)
    with torch.no_grad():
        thr, trace = _mixed_threshold(dit, heads, x, t, y)
        batched, _ = early_exit_forward(dit, heads, x, t, y, thr)
        for r in range(8):
            single, one = early_exit_forward(dit, heads, x[r:r + 1], t[r:r + 1], y[r:r + 1], thr)
            assert one.blocks.item() == trace.blocks[r].item()
            torch.testing.assert_close(batched[r:r + 1], single, rtol=0, atol=1e-5)


def test_block_counters_agree_with_the_exits(dit_model):
    dit = dit_model.pipe.transformer
    x, t, y = _inputs(8)
    with torch.no_grad():
        thr, _ = _mixed_threshold(dit, dit_model.pipe.uem, x, t, y)
    profile = network_profile(dit_model)  # its one-row forward happens here, not under the hooks
    entered = []
    hooks = [b.register_forward_pre_hook(lambda m, a, k: entered.append(a[0].shape[0] if a else
                                                                       k["hidden_states"].shape[0]), with_kwargs=True)
             for b in dit.transformer_blocks]
    try:
        result = _run(dit_model, nfe=6, num=7, batch_size=4, exit_threshold=ExitThreshold.parse(str(thr)))
    finally:
        for h in hooks:
            h.remove()
    c = result.compute
    assert c["blocks_evaluated"] == sum(entered) < c["blocks_full"] == 7 * 6 * 8
    assert c["network_rows"] == 7 * 6 and len(c["mean_blocks_by_step"]) == 6
    assert len(set(profile.block_flops)) == 1 and profile.block_flops[0] > 0
    assert c["gflops"] < c["gflops_full"] == pytest.approx(7 * 6 * profile.full_flops / 1e9)
    assert "forward" not in vars(dit)  # the exit forward is only installed during a call


def test_exit_with_guidance_and_per_time_thresholds(dit_model):
    thr = ExitThreshold.parse("1.5@0.5,-1")  # full depth for t <= 0.5, exit at block 2 above
    assert thr.at(torch.tensor([0.1, 0.5, 0.6, 1.0])).tolist() == [1.5, 1.5, -1.0, -1.0]
    result = _run(dit_model, nfe=6, num=3, class_label=4, guidance_scale=2.0, exit_threshold=thr)
    by_step = [(s["t"], s["mean_blocks"]) for s in result.compute["mean_blocks_by_step"]]
    assert all(b == (8 if tm <= 0.5 else 2) for tm, b in by_step) and {b for _, b in by_step} == {2, 8}
    assert result.compute["network_rows"] == 2 * 3 * 6  # the conditional and unconditional rows both count


@pytest.mark.parametrize("text,message", [("x", "not valid"), ("0.9@0.5", "the last piece without @"),
                                          ("0.9@0.6,0.8@0.5,0.7", "rising"), ("0.9@0,0.8", "rising")])
def test_bad_exit_thresholds(text, message):
    with pytest.raises(UsageError, match=message):
        ExitThreshold.parse(text)


@pytest.mark.parametrize("text", ["deepcache", "deepcache:0", "deepcache:2:0", "deepcache:a", "fbcache:0",
                                  "fbcache", "tgate:3"])
def test_bad_cache_specs(text):
    with pytest.raises(UsageError, match="is not valid"):
        parse_cache(text)


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


def test_deepcache_interval_one_is_the_plain_model_bit_for_bit(digits):
    plain, cached = _run(digits, nfe=5), _run(digits, nfe=5, cache=parse_cache("deepcache:1"))
    assert torch.equal(plain.images, cached.images)
    assert cached.compute["full_forwards"] == 5 * 5 and cached.compute["block_fraction"] == 1.0


@pytest.mark.parametrize("interval,branch", [(2, 1), (3, 1), (3, 2), (4, 2)])
def test_deepcache_runs_the_deep_branch_once_every_interval(digits, monkeypatch, interval, branch):
    unet = digits.pipe.unet
    calls = {}

    def counting(cls):
        original = cls.forward

        def forward(self, *args, **kwargs):
            calls[id(self)] = calls.get(id(self), 0) + 1
            return original(self, *args, **kwargs)
        monkeypatch.setattr(cls, "forward", forward)

    for cls in {type(b) for b in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]}:
        counting(cls)
    nfe, batches = 10, 2
    result = _run(digits, nfe=nfe, num=4, batch_size=2, cache=parse_cache(f"deepcache:{interval}:{branch}"))
    full = math.ceil(nfe / interval) * batches
    n_up = len(unet.up_blocks)
    for j, block in enumerate(unet.down_blocks):
        assert calls[id(block)] == (nfe * batches if j < branch else full)
    assert calls[id(unet.mid_block)] == full
    for j, block in enumerate(unet.up_blocks):
        assert calls[id(block)] == (nfe * batches if j >= n_up - branch else full)
    c = result.compute
    assert c["full_forwards"] == full * 2 and c["partial_forwards"] == (nfe * batches - full) * 2
    shallow = 2 * branch
    assert c["blocks_evaluated"] == 2 * (full * 7 + (nfe * batches - full) * shallow)
    assert all("forward" not in vars(b) for b in [*unet.down_blocks, unet.mid_block, *unet.up_blocks])


def test_deepcache_schedules():
    from samplebench.models.deepcache import cache_steps

    assert cache_steps(10, 3) == [0, 3, 6, 9] and cache_steps(4, 1) == [0, 1, 2, 3]
    quad = cache_steps(100, 5, "quad")
    assert len(quad) == 20 == len(set(quad)) and quad[0] == 0 and quad[-1] < 100 and quad == sorted(quad)
    gaps = np.diff(quad)
    middle = [g for a, g in zip(quad, gaps) if 35 <= a < 65]
    assert max(middle) < min(gaps[0], gaps[-1])  # crowded around the middle step, sparse at both ends
    for steps, n in ((10, 3), (7, 2), (50, 5), (25, 4), (100, 10)):
        q = cache_steps(steps, n, "quad")
        assert len(q) == -(-steps // n) == len(set(q)) and q[0] == 0 and q[-1] < steps
    assert parse_cache("deepcache:5:2:quad").label() == "deepcache:5:2:quad"


@pytest.mark.parametrize("solver, nfe, spec", [("heun", 10, "deepcache:2"), ("heun", 12, "deepcache:4"),
                                               ("ddim", 20, "deepcache:4:1:quad")])
def test_deepcache_refreshes_at_solver_steps_not_calls(digits, monkeypatch, solver, nfe, spec):
    """Heun's second call of a step reuses that step's cache: the full passes are the first calls of the scheduled
    steps (counting calls instead would refresh in the middle of a step)."""
    from samplebench.models.deepcache import cache_steps

    s, c = get_solver(solver), parse_cache(spec)
    steps = s.steps_for_nfe(nfe)
    full = len(cache_steps(steps, c.interval, c.schedule))
    assert full < -(-nfe // c.interval) or c.schedule == "quad"  # fewer than one per N calls
    calls = []
    mid = type(digits.pipe.unet.mid_block)
    forward = mid.forward  # a retrieve step replaces the deep blocks' forward on the instance

    def counted(self, *args, **kwargs):
        calls.append("full")
        return forward(self, *args, **kwargs)
    monkeypatch.setattr(mid, "forward", counted)
    result = sample(digits, s, solver_grid(digits, s, nfe), range(2), batch_size=2, cache=c,
                    on_step=lambda info: calls.append("step"))
    assert result.nfe == nfe and result.compute["full_forwards"] == full * 2, (steps, result.compute)
    assert result.compute["full_forwards"] + result.compute["partial_forwards"] == nfe * 2
    refreshed = [calls[:k].count("step") for k, e in enumerate(calls) if e == "full"]
    assert refreshed == cache_steps(steps, c.interval, c.schedule)  # at the scheduled steps, once each


def test_deepcache_retrieve_at_the_cached_input_equals_the_full_pass_and_uses_only_shallow_skips(digits):
    unet = digits.pipe.unet
    cond = Conditioning()
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    inner = digits.denoiser(cond, 3)
    meter = ComputeMeter(network_profile(digits))
    cached = metered_denoiser(digits, inner, meter, cache=parse_cache("deepcache:100:1"))
    full = cached(x, 0.4)
    produced, consumed = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda m, a, o: produced.append(o)),
             unet.down_blocks[0].register_forward_hook(lambda m, a, o: produced.extend(o[1])),
             unet.up_blocks[-1].register_forward_pre_hook(lambda m, a, k: consumed.extend(a[1] if len(a) > 1 else
                                                                                         k["res_hidden_states_tuple"]),
                                                          with_kwargs=True)]
    try:
        retrieved = cached(x, 0.4)
    finally:
        for h in hooks:
            h.remove()
    cached.close()
    torch.testing.assert_close(retrieved.denoised, full.denoised, rtol=0, atol=1e-5)
    assert consumed and all(any(c is p for p in produced) for c in consumed)
    assert meter.full_rows == 3 and meter.rows == 6


def test_first_block_cache_from_diffusers(dit_model):
    plain = _run(dit_model, nfe=6)
    never = _run(dit_model, nfe=6, cache=parse_cache("fbcache:1e-12"))
    assert torch.equal(plain.images, never.images) and never.compute["block_fraction"] == 1.0
    always = _run(dit_model, nfe=6, cache=parse_cache("fbcache:1e9"))  # every call after the first reuses
    assert always.compute["blocks_evaluated"] == 5 * (8 + 5 * 1) and always.compute["full_forwards"] == 5
    assert not torch.equal(plain.images, always.images)
    blocks = dit_model.pipe.transformer.transformer_blocks
    assert all(not getattr(b, "_diffusers_hook", None) or not b._diffusers_hook.hooks for b in blocks)


def test_results_database_gains_the_compute_columns(tmp_path):
    from samplebench.results import ResultsDB

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, run_key TEXT UNIQUE NOT NULL, "
                 "created TEXT NOT NULL, model TEXT)")
    conn.execute("INSERT INTO runs (run_key, created, model) VALUES ('k', 'now', 'digits')")
    conn.commit()
    conn.close()
    db = ResultsDB(path)
    db.add({"run_key": "k2", "created": "now", "model": "digits", "compute": "deepcache:3:1", "block_fraction": 0.5,
            "versions": {}, "settings": {}})
    rows = {r["run_key"]: r for r in db.query()}
    assert rows["k"]["compute"] is None and rows["k2"]["block_fraction"] == 0.5


def test_eval_reports_skipped_work(tmp_path):
    from samplebench.evaluate import EvalConfig, run_eval

    config = EvalConfig(model="digits", solvers=("ddim",), nfes=(4,), num=6, shard_size=3, metrics=("fid",),
                        cache="deepcache:2")
    (row,) = run_eval(config, tmp_path / "job", db=tmp_path / "runs.db", progress=False)
    assert row["compute"] == "deepcache:2" and row["block_fraction"] == pytest.approx((2 * 7 + 2 * 2) / (4 * 7))
    assert 0 < row["flop_fraction"] < 1 and row["gflops_per_sample"] > 0
    plain = EvalConfig(model="digits", solvers=("ddim",), nfes=(4,), num=6, shard_size=3, metrics=("fid",))
    assert "cache" not in plain.settings() and config.settings()["cache"] == "deepcache:2"


def test_compute_skipping_on_a_flow_matching_dit(dit_model):
    """The same DiT read as a flow-matching velocity model (FlowMatching path, "flow" prediction): FirstBlockCache
    and DeeDiff early exit run through the one protocol unchanged, with the same block accounting."""
    from dataclasses import replace

    from samplebench.schedules import FlowMatching

    flow = replace(dit_model, schedule=FlowMatching(), prediction_type="flow")
    plain = _run(flow, nfe=6)
    assert bool(torch.isfinite(plain.images).all())
    always = _run(flow, nfe=6, cache=parse_cache("fbcache:1e9"))
    assert always.compute["blocks_evaluated"] == 5 * (8 + 5 * 1) and always.compute["full_forwards"] == 5
    assert not torch.equal(plain.images, always.images)
    never = _run(flow, nfe=6, exit_threshold=ExitThreshold.parse("1.01"))
    assert torch.equal(plain.images, never.images) and never.compute["block_fraction"] == 1.0
    early = _run(flow, nfe=6, exit_threshold=ExitThreshold.parse("-1"))  # every row leaves at the second block
    assert early.compute["block_fraction"] == 2 / 8
