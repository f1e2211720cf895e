"""LD3 (Tong et al., ICLR 2025, arXiv 2405.15506): N time steps, and decoupled network input times, learned by
backpropagating through the solver to teacher endpoints, with a soft-teacher slack.

- Times (``times``): p in R^{N+1} (init 1), q = softmax(p), c = cumsum(q), u_i = (c_i - c_0) / (c_N - c_0);
  lambda_i = lambda_T + u_i (lambda_eps - lambda_T) ("lambda" mode, pixel models; init = uniform lambda) or
  t_i = T + u_i (t_min - T) ("time" mode, latent models). Monotone by construction, exact ends.
- Decoupled input times (paper Sec. 4.3): the solver's coefficients use t_i, the network sees t~_i = t_i +
  clip(xi_i, +-g/2) (added in lambda in lambda mode), xi_0 = xi_N = 0, g = the grid's smallest gap (in lambda or t;
  the official code takes it from the raw parameters in lambda mode, where it starts at 0). Each solver reads its
  usual field (eps or x0_pred) of D(x, t~).
- Loss (Eq. 5/6): E min_{x' in B(x_T, r sigma_T)} d(Psi(x'), Psi*(x_T)), r = 0.001 C H W / NFE^2 (``adjust_hyper``);
  the inner minimum is one SGD step on x' (lr 12 / NFE), projected on the ball and kept per sample only where its
  loss fell. d: the shipped digits classifier's feature distance for 16x16 grey images (LPIPS' VGG weights cannot be
  downloaded here: a learned feature space, as LPIPS is, on the digits models), else L2 on the decoded images.
- Teacher: the ODE solved near-exactly, DPM-Solver++(3M) at 100 NFE on the logSNR grid (LD3 uses UniPC at 20).
- Training (``configs/*.yml``): 50 train and 50 validation pairs, batch 2; 2 rounds on the times, then 5 with the
  input times too; RMSprop (lr 0.005, momentum 0.9) on p, SGD (lr 0.1 / NFE) on xi, gradient norms clipped to 1;
  validation after every step, 5 without improvement reload the best and scale the learning rates by 0.8.

The student is the registry solver itself, differentiably: its USF schedule (``usf.known_schedule``) run by the
executor on tensor coefficients, or iPNDM's Adams-Bashforth steps written here.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..errors import UsageError

__all__ = ["LD3Config", "ld3_times", "ld3_parameters", "student", "train_ld3", "ld3_record", "time_mapped",
           "refine_schedule", "STUDENTS"]

SEED = 3_000_000  # teacher pairs: disjoint from benchmarks, searches, grid selection and GITS
_AB = {1: (1.0,), 2: (3 / 2, -1 / 2), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


STUDENTS = ("ddim", "euler", "dpmpp-2m", "dpmpp-3m", "unipc-bh1", "unipc-bh2", "ipndm")


@dataclass(frozen=True)
class LD3Config:
    mode: str = "lambda"  # or "time" (latent models)
    train: int = 50
    valid: int = 50
    batch: int = 2
    rounds_times: int = 2
    rounds_input_times: int = 5  # 0: no decoupled input times
    lr_times: float = 0.005
    lr_input_times: float | None = None  # None: 0.1 / NFE
    radius: float | None = None  # None: 0.001 C H W / NFE^2
    shift_lr: float | None = None  # None: 12 / NFE
    patience: int = 5
    decay: float = 0.8
    teacher: tuple[str, int] = ("dpmpp-3m", 100)
    seed: int = SEED
    distance: str = "auto"  # "features" (the digits classifier's), "l2", or "auto": features for 16x16 grey images


def ld3_times(schedule, p: torch.Tensor, mode: str = "lambda", ends: tuple[float, float] | None = None
              ) -> torch.Tensor:
    """The time grid of parameters ``p`` (N + 1 values): monotone, from T to t_min exactly (or ``ends``)."""
    t0, t1 = ends or (schedule.T, schedule.t_min)
    c = torch.cumsum(torch.softmax(p, 0), 0)
    u = (c - c[0]) / (c[-1] - c[0])
    if mode == "lambda":
        lam_T, lam_eps = schedule.lambda_(t0), schedule.lambda_(t1)
        t = schedule.inverse_lambda(lam_T + u * (lam_eps - lam_T))
    else:
        t = t0 + u * (t1 - t0)
    fixed = torch.tensor([t0, t1], dtype=torch.float64)
    return torch.cat([fixed[:1], t[1:-1], fixed[1:]])


def ld3_parameters(schedule, times: Sequence[float], mode: str = "lambda") -> torch.Tensor:
    """The parameters whose ``ld3_times`` (with the same ends) are ``times``: p_i = log of the i-th increment."""
    t = torch.tensor(list(times), dtype=torch.float64)
    v = schedule.lambda_(t) if mode == "lambda" else t
    return torch.cat([torch.zeros(1, dtype=torch.float64), torch.log((v[1:] - v[:-1]).abs())])


def input_times(schedule, times: torch.Tensor, xi: torch.Tensor | None, mode: str = "lambda") -> torch.Tensor:
    """t~_i = t_i + clip(xi_i, +-g/2) (in lambda in lambda mode); xi_0 = xi_N = 0."""
    if xi is None:
        return times
    var = schedule.lambda_(times) if mode == "lambda" else times
    g = (var[1:] - var[:-1]).abs().min().detach()
    shift = torch.cat([var.new_zeros(1), xi[1:-1].clamp(-0.5 * g, 0.5 * g), var.new_zeros(1)])
    return schedule.inverse_lambda(var + shift) if mode == "lambda" else var + shift


class _TimeMapped:
    """A denoiser that evaluates the network at t~_i when a solver asks for grid time t_i."""

    def __init__(self, inner, times: torch.Tensor, model_times: torch.Tensor):
        self.inner, self.schedule = inner, inner.schedule
        self.nfe_per_call = getattr(inner, "nfe_per_call", 1)
        self.map = {float(t): m for t, m in zip(times.detach().tolist(), model_times)}

    def __call__(self, x, t):
        return self.inner(x, self.map.get(float(t), t))


def time_mapped(spec, times: torch.Tensor, model_times: list[float]):
    """Registry solver ``spec`` whose network sees ``model_times`` at the grid's ``times`` (LD3's input times)."""
    from dataclasses import replace

    mt = torch.tensor(model_times, dtype=torch.float64)

    def fn(denoiser, x, grid, **options):
        return spec.fn(_TimeMapped(denoiser, times, mt), x, grid, **options)

    return replace(spec, fn=fn, input_times=tuple(float(t) for t in model_times))


def student(denoiser, x: torch.Tensor, times: torch.Tensor, solver,
            model_times: torch.Tensor | None = None, data_mean: torch.Tensor | None = None) -> torch.Tensor:
    """Registry solver ``solver`` (a name), or a USF ``SolverSchedule`` with its decisions on these times, from x at
    ``times[0]`` to ``times[-1]``, differentiable in ``times``, ``model_times`` (the network's input times, default
    ``times``) and x."""
    mt = times if model_times is None else model_times
    sch = denoiser.schedule
    a, s, lam = sch.alpha(times), sch.sigma(times), sch.lambda_(times)
    if solver == "ipndm":  # x~ = x / alpha, rho = sigma / alpha: x~_{i+1} = x~_i + (rho_{i+1} - rho_i) sum b_j eps_j
        rho, eps_hist = s / a, []
        for i in range(len(times) - 1):
            eps_hist = (eps_hist + [denoiser(x, mt[i]).eps])[-4:]
            d = sum(b * e for b, e in zip(_AB[len(eps_hist)], eps_hist[::-1]))
            x = a[i + 1] * (x / a[i] + (rho[i + 1] - rho[i]) * d)
        return x
    from ..usf import SolverSchedule, known_schedule
    from ..usf.executor import drive, usf_steps

    if isinstance(solver, SolverSchedule):
        schedule = solver
    elif solver in STUDENTS:
        schedule = known_schedule(solver, times.detach().tolist())
    else:
        raise UsageError(f"LD3 trains the grid of {', '.join(STUDENTS)}; solver {solver!r} is not one")
    return drive(usf_steps(x, schedule, list(a), list(s), list(lam), data_mean=data_mean), denoiser, mt)


def _distance(model, kind: str = "auto"):
    """d(a, b) per sample on decoded samples: digits classifier features (for 16x16 grey images with ``auto``), or
    L2."""
    if kind not in ("auto", "features", "l2"):
        raise UsageError(f"unknown LD3 distance {kind!r}; valid: auto, features, l2")
    digits = not model.latent and tuple(model.sample_shape) == (1, 16, 16)
    if kind == "features" or (kind == "auto" and digits):
        from ..models.classifier import load_classifier

        net = load_classifier().double().eval()
        for q in net.parameters():
            q.requires_grad_(False)
        return "digits-classifier-features", lambda a, b: (net.features(a.double()) - net.features(b.double())).norm(dim=1)
    return "l2", lambda a, b: (a - b).flatten(1).norm(dim=1)


def _frozen(model):
    """Stop gradients into the model's own weights (only times and inputs are learned)."""
    for m in model.modules():
        for q in m.parameters():
            q.requires_grad_(False)


def teacher_pairs(model, config: LD3Config, *, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The noises and teacher endpoints (decoded) of the train + validation pairs."""
    from ..loop import sample
    from ..samplers import get_solver, make_grid

    solver, nfe = config.teacher
    spec = get_solver(solver)
    seeds = list(range(config.seed, config.seed + config.train + config.valid))
    start = time.perf_counter()
    from ..noise import SampleGenerators

    x_T = SampleGenerators(seeds).randn(model.sample_shape, dtype=torch.float64) * model.schedule.prior_std()
    result = sample(model, spec, make_grid(model.schedule, "logsnr", spec.steps_for_nfe(nfe)), seeds,
                    batch_size=batch_size)
    return x_T, result.images.double(), {"teacher": f"{solver} at {nfe} NFE, logsnr", "teacher_seeds":
                                        f"{seeds[0]}..{seeds[-1]}",
                                        "teacher_network_evaluations": result.nfe * len(seeds),
                                        "teacher_wall_time_s": time.perf_counter() - start}


def train_ld3(model, solver, steps: int, config: LD3Config = LD3Config(), *, pairs=None,
              progress: bool = False, cond=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Learn the grid (and input times) of ``steps`` steps of ``solver`` on ``model``; returns the times, the input
    times and the provenance (losses, network evaluations forward and backward, wall time). ``solver``: a registry
    name (``STUDENTS``), or a USF ``SolverSchedule``, whose decisions stay and whose times are the start (its ends
    fixed; no input times: a schedule has no field for them)."""
    from ..models import Conditioning, CountingDenoiser, differentiable
    from ..loop import skip_coefficients, skips_applied
    from ..usf import SolverSchedule

    searched = isinstance(solver, SolverSchedule)
    if not searched and solver not in STUDENTS:
        raise UsageError(f"LD3 trains the grid of {', '.join(STUDENTS)}; solver {solver!r} is not one")
    start = time.perf_counter()
    _frozen(model)
    x_T, target, info = pairs if pairs is not None else teacher_pairs(model, config)
    nfe = solver.nfe if searched else steps  # one evaluation per step for every registry student here
    ends = (solver.timesteps[0], solver.timesteps[-1]) if searched else None
    numel = math.prod(model.sample_shape)
    radius = (0.001 * numel / nfe**2 if config.radius is None else config.radius) * model.schedule.prior_std()
    shift_lr = 12.0 / nfe if config.shift_lr is None else config.shift_lr
    lr_xi = 0.1 / nfe if config.lr_input_times is None else config.lr_input_times
    name, dist = _distance(model, config.distance)
    sch = model.schedule
    p = (ld3_parameters(sch, solver.timesteps, config.mode) if searched else
         torch.ones(steps + 1, dtype=torch.float64)).requires_grad_(True)
    xi = torch.zeros(steps + 1, dtype=torch.float64, requires_grad=True)
    opt_p = torch.optim.RMSprop([p], lr=config.lr_times, momentum=0.9)
    opt_xi = torch.optim.SGD([xi], lr=lr_xi)
    n_train = config.train
    latents = x_T[:n_train].clone()
    counted = {"forward": 0, "backward": 0}
    skips = skip_coefficients(model, None, solver) if searched else None

    def run(x, rows, with_xi, grad):
        labels = model.class_labels([config.seed + r for r in rows])
        den = CountingDenoiser(model.denoiser(cond or Conditioning(labels), len(rows)))
        times = ld3_times(sch, p, config.mode, ends)
        mt = input_times(sch, times, xi if with_xi and not searched else None, config.mode)
        with differentiable(), torch.set_grad_enabled(grad), skips_applied(model, skips):
            out = model.decode(student(den, x, times if grad else times.detach(), solver,
                                       mt if grad else mt.detach(), model.data_mean))
            loss = dist(out, target[rows])
        counted["backward" if grad else "forward"] += den.evaluations
        return loss

    def validate(with_xi):
        rows = list(range(n_train, n_train + config.valid))
        return float(run(x_T[n_train:], rows, with_xi, False).mean())

    init = validate(False)
    best = (init, p.detach().clone(), xi.detach().clone())
    history, bad, floors = [init], 0, 0
    rounds = config.rounds_times + config.rounds_input_times
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=rounds * -(-n_train // config.batch), unit="step", file=sys.stderr,
                   desc=f"LD3 {solver} {steps} steps")
    for r in range(rounds):
        with_xi = r >= config.rounds_times
        for lo in range(0, n_train, config.batch):
            rows = list(range(lo, min(lo + config.batch, n_train)))
            x = latents[rows].clone().requires_grad_(True)
            loss = run(x, rows, with_xi, True)
            opt_p.zero_grad()
            opt_xi.zero_grad()
            loss.mean().backward()
            torch.nn.utils.clip_grad_norm_([p], 1.0)
            torch.nn.utils.clip_grad_norm_([xi], 1.0)
            opt_p.step()
            if with_xi:
                opt_xi.step()
            if radius > 0:  # the soft teacher: one projected step of each latent, kept where its loss fell
                with torch.no_grad():
                    moved = x - shift_lr * x.grad
                    delta = moved - x_T[rows]
                    norm = delta.flatten(1).norm(dim=1).clamp(min=1e-30).view(-1, *([1] * (delta.ndim - 1)))
                    moved = x_T[rows] + delta * (radius / norm).clamp(max=1.0)
                new = run(moved, rows, with_xi, False)
                keep = (new < loss.detach()).view(-1, *([1] * (moved.ndim - 1)))
                latents[rows] = torch.where(keep, moved, latents[rows])
            v = validate(with_xi)
            history.append(v)
            if v < best[0]:
                best, bad = (v, p.detach().clone(), xi.detach().clone()), 0
            else:
                bad += 1
                if bad >= config.patience:
                    with torch.no_grad():
                        p.copy_(best[1])
                        xi.copy_(best[2])
                    for opt, floor in ((opt_p, 5e-5), (opt_xi, 1e-6)):
                        for group in opt.param_groups:
                            group["lr"] = max(floor, group["lr"] * config.decay)
                    floors += opt_xi.param_groups[0]["lr"] <= 1e-6
                    bad = 0
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"valid {v:.4g} (best {best[0]:.4g})")
        if floors >= 5:
            break
    if bar is not None:
        bar.close()
    with torch.no_grad():
        times = ld3_times(sch, best[1], config.mode, ends)
        mt = input_times(sch, times, best[2] if config.rounds_input_times and not searched else None, config.mode)
    return times, mt, {**info, "method": "ld3", "solver": "usf" if searched else solver, "steps": steps,
                       "distance": name,
                       "radius": radius, "config": asdict(config), "valid_loss_init": init, "valid_loss": best[0],
                       "valid_history": history, "network_evaluations_forward": counted["forward"],
                       "network_evaluations_backward": counted["backward"],
                       "wall_time_s": time.perf_counter() - start}


def ld3_record(model, solver, steps: int, *, progress: bool = True) -> dict[str, Any]:
    """The model's LD3 grid for registry solver ``solver`` (a ``SolverSpec``) and ``steps``: shipped, cached, or
    trained now (then cached, its cost printed)."""
    from .store import _must_compute, _read, _write

    name = f"ld3/{solver.name}-steps{steps}.json"
    record = _read(model, name)
    if record is not None:
        return record
    _must_compute(model, f"LD3 ({solver.name}, {steps} steps)")
    if solver.name not in STUDENTS:
        raise UsageError(f"LD3 trains the grid of {', '.join(STUDENTS)}; solver {solver.name!r} is not one")
    config = LD3Config(mode="time" if model.latent else "lambda")
    times, mt, info = train_ld3(model, solver.name, steps, config, progress=progress)
    record = {"model": str(model.name), "schedule": model.schedule.to_config(), "grid": times.tolist(),
              "model_times": mt.tolist(), **info}
    path = _write(model, name, record)
    print(f"LD3: {info['network_evaluations_forward'] + info['teacher_network_evaluations']:,} network evaluations "
          f"and {info['network_evaluations_backward']:,} with gradients in {info['wall_time_s']:.0f} s for model "
          f"{model.name!r}, {solver.name}, {steps} steps; cached at {path}", file=sys.stderr)
    return record


def refine_schedule(model, schedule, config: LD3Config = LD3Config(rounds_times=7, rounds_input_times=0), *,
                    pairs=None, progress: bool = False):
    """A USF schedule (S3's) with its times refined by LD3's objective, every discrete decision frozen (the LD3
    objective on a mixed schedule: decisions searched, times learned); its ends and NFE stay, and the network sees the
    refined times (input times apart from them are not learned here: ``model_times`` is dropped). Returns the schedule
    and the provenance of the refinement."""
    from dataclasses import replace

    times, _, info = train_ld3(model, schedule, schedule.num_steps, config, pairs=pairs, progress=progress)
    return replace(schedule, timesteps=tuple(times.tolist()), model_times=None), info
