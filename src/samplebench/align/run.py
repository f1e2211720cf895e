"""``sample --solver dts|dts-star|best-of-n|fk --reward R --budget B``: reward-aligned samples under an NFE budget."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checks import MAX_BUDGET, MAX_NFE, MAX_SAMPLES, check_count, check_float, check_seeds
from ..errors import UsageError, unknown
from ..models import DEFAULT_MODEL, Conditioning, DiffusionModel
from .chain import AlignResult, Chain, default_branch_steps
from .particles import POTENTIALS, best_of_n, fk_steering
from .rewards import CountedReward, Reward, get_reward
from .tree import dts

__all__ = ["METHODS", "AlignConfig", "align_sample", "run_align"]

METHODS = {
    "dts": "Diffusion Tree Sampling: tree search sampling p(x) exp(lambda r(x)) (Jain et al. 2025)",
    "dts-star": "DTS*: the same tree with UCT selection, greedy draws: high-reward samples (Jain et al. 2025)",
    "best-of-n": "best of N = budget / (num x nfe) DDPM chains per sample",
    "fk": "SMC / Feynman-Kac steering with budget / nfe particles (Singhal et al. 2025)",
}


@dataclass(frozen=True)
class AlignConfig:
    """An alignment run. ``nfe`` is the length of one DDPM chain (a rollout); ``budget`` the network evaluations
    of the whole run. DTS/DTS* trees depend on the seed and on ``batch_size`` (rollouts per iteration)."""

    method: str = "dts"
    reward: str = "class:3"
    budget: int = 20_000
    num: int = 16
    nfe: int = 50
    model: str = DEFAULT_MODEL
    seed: int = 0
    lam: float = 1.0
    branch_steps: tuple[int, ...] | None = None  # default: 5 evenly spaced from 0
    widen_c: float = 2.0
    widen_alpha: float = 0.8
    c_uct: float = 1.0
    potential: str = "diff"
    batch_size: int = 16
    class_label: int | None = None
    guidance_scale: float = 1.0
    prompt: str | None = None
    negative_prompt: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    save_npz: bool = False

    def command(self) -> str:
        """The ``samplebench sample`` command of this run (the budget and seed make it the same run)."""
        from ..plan import command_line

        return command_line(self, AlignConfig(), skip=("save_npz",), flags={"method": "--solver", "lam": "--lambda"},
                            always=("model", "--solver", "reward", "budget", "num", "nfe", "seed"))

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise unknown("alignment method", self.method, METHODS)
        for name, hi in (("budget", MAX_BUDGET), ("num", MAX_SAMPLES), ("nfe", MAX_NFE), ("batch_size", None)):
            check_count(f"--{name.replace('_', '-')}", getattr(self, name), 1, hi)
        check_seeds(self.seed, self.num)
        check_float("--lambda", self.lam, 0)
        check_float("--widen-c", self.widen_c, 0, lo_open=True)
        check_float("--widen-alpha", self.widen_alpha, 0, 1, lo_open=True)
        check_float("--c-uct", self.c_uct, 0)
        check_float("--guidance-scale", self.guidance_scale, 0)
        if self.class_label is not None:
            check_count("--class-label", self.class_label, 0, 2**31 - 1)
        if self.potential not in POTENTIALS:
            raise unknown("--potential", self.potential, POTENTIALS)
        steps = self.branches
        if steps[0] != 0 or any(b >= self.nfe for b in steps) or len(set(steps)) != len(steps):
            raise UsageError(f"--branch-steps {','.join(map(str, steps))} must be distinct step indices in "
                             f"0..{self.nfe - 1} starting with 0")
        least = self.num * self.nfe if self.method == "best-of-n" else self.nfe
        if self.budget < least:
            per = f"--num {self.num} x --nfe {self.nfe}" if self.method == "best-of-n" else f"--nfe {self.nfe}"
            raise UsageError(f"--budget {self.budget} is below one rollout per sample for {self.method}: at least "
                             f"{least} ({per})")

    @property
    def branches(self) -> list[int]:
        return sorted(self.branch_steps) if self.branch_steps is not None else default_branch_steps(self.nfe)


def align_sample(model: DiffusionModel, reward: Reward, config: AlignConfig, *, reward_name: str | None = None,
                 cond: Conditioning | None = None, on_progress=None) -> AlignResult:
    """Run ``config.method`` on a loaded model; ``on_progress(evaluations)`` is called as the budget is spent."""
    chain = Chain.build(model, CountedReward(reward, reward_name or config.reward), steps=config.nfe,
                        branch_steps=config.branches, cond=cond, max_batch=max(config.batch_size, 64),
                        on_progress=on_progress)
    if config.method in ("dts", "dts-star"):
        return dts(chain, budget=config.budget, num=config.num, lam=config.lam, star=config.method == "dts-star",
                   c_uct=config.c_uct, widen_c=config.widen_c, widen_alpha=config.widen_alpha,
                   batch=config.batch_size, seed=config.seed, offload=True)
    if config.method == "best-of-n":
        return best_of_n(chain, budget=config.budget, num=config.num, seed=config.seed, batch=config.batch_size)
    return fk_steering(chain, budget=config.budget, num=config.num, lam=config.lam, potential=config.potential,
                       seed=config.seed)


def run_align(config: AlignConfig, out: str | Path, *, progress: bool = True, model: DiffusionModel | None = None,
              on_progress=None, overwrite: bool = False) -> dict[str, Any]:
    """The ``sample`` command for an alignment method: validates, samples, then writes images and summary.json.
    ``model``: ``config.model`` already loaded; ``on_progress(evaluations)`` as the budget is spent."""
    from tqdm import tqdm

    from .. import __version__
    from ..models import load_model
    from ..files import earlier_run
    from ..sampling import write_samples

    reward = get_reward(config.reward)
    out = Path(out)
    stale = earlier_run(out, overwrite)
    t_load = time.perf_counter()
    model = model or load_model(config.model, device=config.device, dtype=config.dtype)
    load_time = time.perf_counter() - t_load
    if model.num_classes is not None and config.class_label is None:
        raise UsageError(f"model {config.model!r} is class-conditional: give --class-label for {config.method}")
    labels = None if config.class_label is None else torch.tensor([config.class_label])
    cond = Conditioning(labels, config.prompt, config.negative_prompt, config.guidance_scale)
    model.check_conditioning(cond)
    bar = tqdm(total=config.budget, unit="nfe", disable=not progress, desc=f"{config.method} {config.reward}")
    try:
        def spent(n: int) -> None:
            bar.update(n - bar.n)
            if on_progress is not None:
                on_progress(n)

        result = align_sample(model, reward, config, cond=cond, on_progress=spent)
    finally:
        bar.close()
    settings = {"model": config.model, "solver": config.method, "reward": config.reward, "budget": config.budget,
                "nfe_per_rollout": config.nfe, "branch_steps": config.branches, "lambda": config.lam,
                "class_label": config.class_label, "guidance_scale": config.guidance_scale, "prompt": config.prompt,
                "version": __version__}
    if config.method in ("dts", "dts-star"):
        settings |= {"widen_c": config.widen_c, "widen_alpha": config.widen_alpha, "batch_size": config.batch_size}
        if config.method == "dts-star":
            settings["c_uct"] = config.c_uct
    if config.method == "fk":
        settings["potential"] = config.potential
    rewards = result.rewards.tolist()
    extra = {"config": asdict(config), "command": config.command(), "seed": config.seed, **result.summary(),
             "load_time_s": load_time, "rewards": rewards}
    return write_samples(out, result.images, result.x, settings, extra,
                         per_image=[{"index": i, "seed": config.seed, "reward": r} for i, r in enumerate(rewards)],
                         labels=[f"r {r:.3f}" for r in rewards],
                         title=_title(config, result.nfe), save_npz=config.save_npz, replaces=stale,
                         arrays={"rewards": np.array(rewards)})


def _title(config: AlignConfig, nfe: int) -> str:
    """The run in one line (grid.png's title): model, method, reward and lambda, NFE spent, budget, conditioning."""
    parts = [config.model, f"{config.method}, reward {config.reward}, lambda {config.lam:g}", f"{nfe} NFE in all",
             f"budget {config.budget}"]
    parts += [f"class {config.class_label}"] if config.class_label is not None else []
    parts += [f"guidance {config.guidance_scale:g}"] if config.guidance_scale != 1 else []
    return " · ".join(parts)
