"""The S3 search space (Liu et al., ICLR 2024, Sec. 4; reference code ``search_utils``): a schedule as timesteps plus
one ``Gene`` per step, the mutation and crossover operators of the reference search, and a fixed-length encoding for
the predictor.

A gene holds the per-step decisions; ``build`` turns genes into a validated ``SolverSchedule`` with the reference
code's derivative layout: derivative n of a Taylor order-k predictor from the points -2, -3, ... (K = ``k1`` points
for the first derivative, k - 1 for the others; the second may be halved, as DPM-Solver++(3M) does), a corrector of
one order more from the new point -1 and -3, -4, ... (UniC's layout), and the order capped by the available history.
Every registry solver the executor can express (``usf.KNOWN_SCHEDULES``: DDIM, DPM-Solver++ 2M and 3M, UniPC bh1 and
bh2, DEIS in log rho) is a list of genes exactly (``known_solver``), so the search starts from all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from ..usf.executor import KNOWN_SCHEDULES, known_schedule
from ..usf.schedule import MAX_ORDER, Corrector, Derivative, SolverSchedule, Step

__all__ = ["Gene", "Space", "build", "genes_of", "known_solver", "mutate", "crossover", "encode", "KNOWN"]

RELAX = ("linear", "dpmsolver-2", "unipc-bh1")
KNOWN = tuple(KNOWN_SCHEDULES)
MAX_NFE = 12
# Re-draw distributions of the reference search (methods notes, Sec. 1.8), without the v3 prediction type, and with
# orders up to 3 (order 4 takes the reference's 0.1 to order 3).
ORDER_P = {1: 0.2, 2: 0.4, 3: 0.4}
RELAX2_P = {"none": 0.5, "half": 0.5}
T_END_SPAN = 10.0  # the last time is drawn log-uniformly in [t_min, 10 t_min] (the reference: [1e-4, 1e-3])
SKIP_JITTER = (0.0, 0.02)  # mean and sd of the skip-coefficient jitter (the reference's EDM setting)
PREDICTION_P = {"noise": 0.5, "data": 0.5}
K1_P = {1: 0.5, 2: 0.5}
RELAX_P = {"linear": 0.5, "dpmsolver-2": 0.3, "unipc-bh1": 0.2}
MAX_STEPS = MAX_NFE + 1  # with an analytical first step


@dataclass(frozen=True)
class Gene:
    prediction: str = "data"
    order: int = 1
    k1: int = 1  # points estimating the first derivative (Difference_1 or Difference_2)
    relaxation: str = "linear"
    coefficient: float = 0.0
    corrector: str = "none"
    relaxation2: str = "none"  # of the second derivative: "none" or "half"


@dataclass(frozen=True)
class Space:
    """What the model allows: its time range, whether it has a mean image (AFS 'mean') and how many UNet skips."""

    T: float
    t_min: float
    has_mean: bool = False
    num_skips: int = 0


def _derivative(points: tuple[int, ...], relaxation: str = "none", coefficient: float = 0.0) -> Derivative:
    if relaxation == "linear" and coefficient == 0.0:
        relaxation = "none"
    return Derivative(points, relaxation, coefficient if relaxation == "linear" else 0.0)


def _step(g: Gene, i: int, last: bool) -> Step:
    available = i + 1
    k = max(1, min(g.order, available, MAX_ORDER))
    ders = []
    for n in range(1, k):
        width = min(max(g.k1, 1), available - 1) if n == 1 else k - 1
        points = tuple(-j for j in range(2, width + 2))
        ders.append(_derivative(points, g.relaxation, g.coefficient) if n == 1
                    else _derivative(points, g.relaxation2 if n == 2 else "none"))
    corrector = Corrector()
    if g.corrector != "none" and not last:
        kc = min(k + 1, MAX_ORDER, available + 1)
        points = (-1,) + tuple(-j for j in range(3, kc + 1))
        cders = tuple(_derivative(points, g.relaxation if kc == 2 else "none", g.coefficient) if n == 1
                      else _derivative(points) for n in range(1, kc))
        corrector = Corrector(g.corrector, kc, cders)
    return Step(g.prediction, k, tuple(ders), -1, corrector)


def build(timesteps, genes, afs: str = "none", skip=None) -> SolverSchedule:
    """Genes -> a validated schedule (raises ``UsageError`` for invalid timesteps)."""
    m = len(genes)
    return SolverSchedule(tuple(float(t) for t in timesteps), tuple(_step(g, i, i == m - 1) for i, g in enumerate(genes)),
                          afs, None if skip is None else tuple(float(c) for c in skip))


def genes_of(schedule: SolverSchedule) -> list[Gene]:
    """The genes of a schedule (exact for schedules made by ``build``)."""
    out = []
    for st in schedule.steps:
        d1 = st.derivatives[0] if st.derivatives else (st.corrector.derivatives[0] if st.corrector.derivatives
                                                         else Derivative((-2,)))
        relax = "linear" if d1.relaxation == "none" else d1.relaxation
        k1 = len(st.derivatives[0].active_points) if st.derivatives else 1
        relax2 = st.derivatives[1].relaxation if len(st.derivatives) > 1 else "none"
        out.append(Gene(st.prediction, st.order, k1, relax, d1.coefficient, st.corrector.kind, relax2))
    return out


def known_solver(name: str, timesteps) -> SolverSchedule:
    """Registry solver ``name`` (``KNOWN``, with lower_order_final) on ``timesteps``, exactly; its genes rebuild it."""
    return known_schedule(name, [float(t) for t in timesteps])


def _choice(rng: np.random.Generator, options: dict):
    keys = list(options)
    return keys[rng.choice(len(keys), p=np.array(list(options.values()), dtype=float))]


def random_gene(rng: np.random.Generator) -> Gene:
    """A new step (reference: implicit correctors are never drawn here)."""
    return Gene(_choice(rng, PREDICTION_P), _choice(rng, ORDER_P), _choice(rng, K1_P), _choice(rng, RELAX_P), 0.0,
                _choice(rng, {"none": 0.5, "pseudo": 0.5}), _choice(rng, RELAX2_P))


def _afs_options(space: Space) -> dict:
    return {"none": 0.3, "zero": 0.3, "mean": 0.4} if space.has_mean else {"none": 0.5, "zero": 0.5}


def mutate(schedule: SolverSchedule, rng: np.random.Generator, space: Space) -> SolverSchedule:
    """One mutation of the reference search (Sec. 1.8 of the method notes): add a step (0.2), delete one (0.2), or
    per step, each with probability 0.3, jitter the time (log t += N(0, 0.1^2): relative, where the reference adds
    N(0, 0.03^2) to t, which swamps the small times of a few-step grid), re-draw the order, the prediction type,
    the first-derivative estimation order, the second derivative's halving, the corrector, and jitter the linear
    relaxation coefficient (N(0, 0.03^2)), and with probability 0.3 re-draw the last time t_end (log-uniform in
    [t_min, 10 t_min]); then re-draw the AFS (0.3) and jitter the skip coefficients (0.3, N(0, 0.02^2), clamped to
    [0, 1]). The first time stays at T. Raises ``UsageError`` when the result is not a valid schedule."""
    ts, genes = list(schedule.timesteps), genes_of(schedule)
    afs, skip = schedule.afs, schedule.skip_coefficients
    u = rng.random()
    if u < 0.2:  # add a step
        t = float(rng.uniform(space.t_min, space.T))
        j = int(np.searchsorted(-np.array(ts), -t))
        if 0 < j < len(ts) and t not in ts:  # step j - 1 now ends at t, the new step j goes from t on
            ts.insert(j, t)
            genes.insert(j, random_gene(rng))
    elif u < 0.4:  # delete a step: drop time j, so step j - 1 runs on to the next time
        if len(ts) > 2:
            j = int(rng.integers(1, len(ts) - 1))
            del ts[j]
            del genes[j]
    else:
        for i in range(len(genes)):
            g = genes[i]
            if 0 < i and rng.random() < 0.3:
                ts[i] = float(ts[i] * math.exp(rng.normal(0.0, 0.1)))
            if rng.random() < 0.3:
                g = replace(g, order=_choice(rng, ORDER_P))
            if rng.random() < 0.3:
                g = replace(g, prediction=_choice(rng, PREDICTION_P))
            if rng.random() < 0.3:
                if g.relaxation != "linear" or rng.random() < 0.2:
                    g = replace(g, relaxation=_choice(rng, RELAX_P),
                                coefficient=0.0)
                else:
                    g = replace(g, coefficient=float(g.coefficient + rng.normal(0.0, 0.03)))
            if rng.random() < 0.3:
                g = replace(g, k1=_choice(rng, K1_P))
            if rng.random() < 0.3:
                g = replace(g, relaxation2=_choice(rng, RELAX2_P))
            if rng.random() < 0.3:
                g = replace(g, corrector=_choice(rng, {"none": 0.4, "pseudo": 0.4, "implicit": 0.2}))
            genes[i] = g
        order = sorted(range(1, len(ts) - 1), key=lambda k: -ts[k])  # keep each time with its step
        ts = [ts[0]] + [ts[k] for k in order] + [ts[-1]]
        genes = [genes[0]] + [genes[k] for k in order]
        if rng.random() < 0.3:
            t_end = float(space.t_min * T_END_SPAN ** rng.random())
            if len(ts) < 3 or t_end < ts[-2]:
                ts[-1] = t_end
    if rng.random() < 0.3:
        afs = _choice(rng, _afs_options(space))
    if space.num_skips and rng.random() < 0.3:
        base = np.ones(space.num_skips) if skip is None else np.array(skip)
        skip = tuple(float(c) for c in np.clip(base + rng.normal(*SKIP_JITTER, space.num_skips), 0.0, 1.0))
    return _keep_model_times(build(ts, genes, afs, skip), schedule)


def _keep_model_times(child: SolverSchedule, parent: SolverSchedule) -> SolverSchedule:
    """The parent's network input times (LD3's, ``SolverSchedule.model_times``) stay with its timesteps: a child on
    the same timesteps keeps them, one on moved times evaluates the network at its own times."""
    if parent.model_times is None or child.timesteps != parent.timesteps:
        return child
    return replace(child, model_times=parent.model_times)


def crossover(a: SolverSchedule, b: SolverSchedule, rng: np.random.Generator) -> SolverSchedule:
    """Each top-level part (timesteps with their genes, AFS, skip coefficients) from a random parent; with
    probability 0.5 (parents of equal length) a deep crossover mixes the genes step by step."""
    first, second = (a, b) if rng.random() < 0.5 else (b, a)
    genes = genes_of(first)
    if len(a.steps) == len(b.steps) and rng.random() < 0.5:
        other = genes_of(second)
        genes = [g if rng.random() < 0.5 else o for g, o in zip(genes, other)]
    afs = (a if rng.random() < 0.5 else b).afs
    skip = (a if rng.random() < 0.5 else b).skip_coefficients
    return _keep_model_times(build(first.timesteps, genes, afs, skip), first)


# --- the predictor's view of a schedule --------------------------------------------------------------------------

_PER_STEP = 1 + 2 + MAX_ORDER + 1 + 1 + len(RELAX) + 1 + 3 + 1


def encode(schedule: SolverSchedule, space: Space) -> np.ndarray:
    """A fixed-length vector: per step slot (padded to ``MAX_STEPS``) presence, t/T and log-ratio to t_min, one-hot
    order, prediction, first-derivative width, relaxation and corrector, the relaxation coefficient; then AFS, NFE
    and the skip coefficients' mean and minimum."""
    x = np.zeros(MAX_STEPS * _PER_STEP + 3 + MAX_NFE + 2, dtype=np.float32)
    ts = schedule.timesteps
    for i, g in enumerate(genes_of(schedule)[:MAX_STEPS]):
        v = x[i * _PER_STEP:(i + 1) * _PER_STEP]
        v[0] = 1.0
        v[1] = ts[i] / space.T
        v[2] = math.log(ts[i + 1] / space.t_min) / math.log(space.T / space.t_min)
        v[3 + min(g.order, MAX_ORDER) - 1] = 1.0
        o = 3 + MAX_ORDER
        v[o] = float(g.prediction == "data")
        v[o + 1] = float(g.k1 == 2)
        v[o + 2 + RELAX.index(g.relaxation)] = 1.0
        v[o + 2 + len(RELAX)] = g.coefficient
        v[o + 3 + len(RELAX) + ("none", "pseudo", "implicit").index(g.corrector)] = 1.0
        v[o + 6 + len(RELAX)] = float(g.relaxation2 == "half")
    o = MAX_STEPS * _PER_STEP
    x[o + ("none", "zero", "mean").index("zero" if schedule.afs == "zero-official" else schedule.afs)] = 1.0
    x[o + 3 + min(schedule.nfe, MAX_NFE) - 1] = 1.0
    skip = np.array(schedule.skip_coefficients or [1.0])
    x[-2:] = skip.mean(), skip.min()
    return x
