"""``samplebench search``: the S3 search (Liu et al., ICLR 2024, Sec. 4) as a resumable, multi-process job.

Stage 0 evaluates the known solvers (DDIM, DPM-Solver++(2M), UniPC-bh2 on the logSNR, time-uniform and
time-quadratic grids, and 2M/UniPC with the zero analytical first step) at every target NFE. Each later stage, per
NFE, breeds a pool of candidates from the best schedules of that NFE (mutation and crossover, ``space.py``), ranks
the pool with the predictor trained on every evaluation so far, and evaluates the best-ranked few plus one drawn at
random (exploration keeps the predictor honest). An evaluation is the FID of ``samples`` images with fixed seeds
against the model's reference statistics, in the evaluation harness's feature space.

Files under ``--out``::

    search.json                 the settings (a resume with other settings is refused; the budget may grow)
    stages/stage-00003.json     the candidates of a stage, written before any of them is evaluated
    evals/<id>.json             one evaluated schedule: FID, NFE, origin, wall time, network evaluations
    s3/nfe<k>.json              the best schedule per NFE (copy the folder into a model directory to ship it)
    report.json                 evaluations spent, wall time, best FID per NFE against the best known solver

Every file is written whole (temporary file, then rename); a killed search resumes at the first unevaluated
candidate of the last stage and continues exactly as an uninterrupted one. Under ``accelerate launch`` the candidates
of a stage are dealt round-robin to the processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from ..files import atomic_write
from ..usf import SolverSchedule
from .predictor import Predictor
from .space import MAX_NFE, Space, build, crossover, encode, genes_of, known_solver, mutate

__all__ = ["SearchConfig", "run_search", "schedule_id", "report_table"]

GRIDS = ("logsnr", "time-uniform", "time-quadratic")
RANK_BAR = 15  # parents come from the best 15 of an NFE (reference ``rank_bar``)


@dataclass(frozen=True)
class SearchConfig:
    model: str = "digits"
    nfes: tuple[int, ...] = (5, 6, 8, 10)
    budget: int = 120  # real evaluations in all, split evenly over the NFEs
    samples: int = 1000  # images per evaluation
    seed: int = 500_000  # image i of every evaluation uses seed + i (benchmarks use 0, 1, ...)
    features: str = "digits"
    mode: str = "clean"
    ref: str | None = None
    batch_size: int = 250
    per_stage: int = 4  # real evaluations per NFE and stage
    pool: int = 128  # bred candidates per NFE and stage, ranked by the predictor
    predictor: bool = True  # False: the public code's plain evolutionary search (random picks from the pool)
    search_seed: int = 0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        from ..evaluate import DEFAULT_REFS
        from ..metrics.extractors import EXTRACTORS, MODES

        if not self.nfes:
            raise UsageError("give at least one --nfe")
        for n in self.nfes:
            if not 1 <= n <= MAX_NFE:
                raise UsageError(f"--nfe {n} is outside the search space: 1..{MAX_NFE}")
        if self.budget < len(self.nfes):
            raise UsageError(f"--budget {self.budget} is below one evaluation per NFE ({len(self.nfes)})")
        for name, v, lo in (("--samples", self.samples, 2), ("--batch-size", self.batch_size, 1),
                            ("--per-stage", self.per_stage, 1), ("--pool", self.pool, 1)):
            if v < lo:
                raise UsageError(f"{name} must be >= {lo}, got {v}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")
        if self.features not in EXTRACTORS:
            raise UsageError(f"unknown feature extractor {self.features!r}; valid: {', '.join(EXTRACTORS)}")
        if self.mode not in MODES:
            raise UsageError(f"unknown mode {self.mode!r}; valid: {', '.join(MODES)}")
        if self.ref is None and self.model not in DEFAULT_REFS:
            raise UsageError(f"model {self.model!r} has no default reference; give --ref")

    @property
    def reference(self) -> str:
        from ..evaluate import DEFAULT_REFS

        return self.ref or DEFAULT_REFS[self.model]

    def budget_for(self, nfe: int) -> int:
        i = self.nfes.index(nfe)
        return self.budget // len(self.nfes) + (i < self.budget % len(self.nfes))

    def settings(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def schedule_id(schedule) -> str:
    return hashlib.sha256(json.dumps(schedule.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


class _Evaluator:
    """FID of one schedule on fixed seeds; the model, extractor and reference are loaded once."""

    def __init__(self, config: SearchConfig, device: str | None, inception_weights: str | None = None):
        from ..metrics.extractors import get_extractor
        from ..metrics.reference import get_reference
        from ..models import load_model

        c = self.config = config
        self.model = load_model(c.model, device=device or "cpu", dtype=c.dtype)
        self.extractor = get_extractor(c.features, c.mode, device or "cpu", inception_weights)
        self.ref = get_reference(c.reference, self.extractor)
        self.seeds = list(range(c.seed, c.seed + c.samples))

    def space(self) -> Space:
        from ..models.skip_tuning import count_skips

        unet = getattr(getattr(self.model, "pipe", None), "unet", None)
        s = self.model.schedule
        return Space(float(s.T), float(s.t_min), self.model.data_mean is not None,
                     count_skips(unet) if unet is not None and hasattr(unet, "up_blocks") else 0)

    def __call__(self, schedule) -> dict[str, Any]:
        import torch

        from ..metrics.intervals import fid_interval
        from ..metrics.scores import extract, fid, statistics
        from ..sampling import resolve_solver, sample, skips_applied

        t0 = time.perf_counter()
        solver, grid = resolve_solver(self.model, "usf", schedule.nfe, None, schedule)
        with skips_applied(self.model, None, schedule):
            result = sample(self.model, solver, grid, self.seeds, batch_size=self.config.batch_size)
        value = interval = None
        if bool(torch.isfinite(result.images).all()):
            feats = extract(result.images, self.extractor).feats
            value = fid(*statistics(feats), self.ref.mu, self.ref.sigma)
            value = value if math.isfinite(value) else None
            if value is not None:
                interval = fid_interval(feats, self.ref.mu, self.ref.sigma, estimate=value)
        return {"fid": value, "fid_low": interval and interval.low, "fid_high": interval and interval.high,
                "num_samples": len(self.seeds), "nfe": result.nfe, "wall_time_s": time.perf_counter() - t0,
                "network_evaluations": result.nfe * len(self.seeds)}


def _fid(row: dict) -> float:
    return math.inf if row["fid"] is None else row["fid"]


def _initial(noise_schedule, nfe: int, limit: int) -> list[tuple[str, Any]]:
    """The known solvers at ``nfe`` on the usual grids of ``noise_schedule`` (stage 0), at most ``limit``."""
    from ..samplers import make_grid

    out = []
    for name in ("dpmpp-2m", "unipc-bh2", "ddim"):
        for kind in GRIDS:
            out.append((f"{name}/{kind}", known_solver(name, make_grid(noise_schedule, kind, nfe).tolist())))
    for name in ("dpmpp-2m", "unipc-bh2"):  # with the zero analytical first step: one more step, same NFE
        s = known_solver(name, make_grid(noise_schedule, "logsnr", nfe + 1).tolist())
        out.append((f"{name}/logsnr+afs", build(s.timesteps, genes_of(s), "zero")))
    return out[:limit]


def _breed(population: list, nfe: int, space: Space, rng: np.random.Generator, pool: int, seen: set) -> list:
    """Up to ``pool`` new valid schedules of exactly ``nfe`` NFE from the best of ``population``."""
    parents = [s for s, _ in sorted(population, key=lambda p: p[1])[:RANK_BAR]]
    out, ids = [], set(seen)
    for _ in range(pool * 50):
        if len(out) >= pool:
            break
        a = parents[rng.integers(len(parents))]
        try:
            if len(parents) > 1 and rng.random() < 0.5:
                b = parents[rng.integers(len(parents))]
                child = crossover(a, b, rng)
                if rng.random() < 0.5:
                    child = mutate(child, rng, space)
            else:
                child = mutate(a, rng, space)
        except UsageError:
            continue
        if child.nfe != nfe:
            continue
        cid = schedule_id(child)
        if cid in ids:
            continue
        ids.add(cid)
        out.append(child)
    return out


def run_search(config: SearchConfig, out: str | Path, *, device: str | None = None, progress: bool = True,
               inception_weights: str | None = None) -> dict[str, Any]:
    """Run (or resume) the search; returns the report (on every process; only the main one writes it)."""
    import torch
    from accelerate import PartialState

    out = Path(out)
    state = PartialState(cpu=not torch.cuda.is_available())
    if device is None and state.device.type == "cuda":
        device = str(state.device)
    t_start = time.perf_counter()
    ev = _Evaluator(config, device, inception_weights)  # bad models or references fail before anything is written
    space = ev.space()
    manifest = out / "search.json"
    if state.is_main_process:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {str(out)!r} exists and is not a directory")
        settings = config.settings()
        if manifest.exists():
            old = json.loads(manifest.read_text())
            diff = sorted(k for k in set(old) | set(settings) if k != "budget" and old.get(k) != settings.get(k))
            if diff:
                raise UsageError(f"{str(out)!r} holds a search with other settings ({', '.join(diff)}); resume it "
                                 f"with the same settings or choose another --out")
        for sub in ("stages", "evals", "s3"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        atomic_write(manifest, json.dumps(settings, indent=1))
    state.wait_for_everyone()

    def load_evals() -> dict[str, dict]:
        rows = {}
        for p in sorted((out / "evals").glob("*.json")):
            row = json.loads(p.read_text())
            rows[row["id"]] = row
        return rows

    stage = 0
    while True:
        path = out / "stages" / f"stage-{stage:05d}.json"
        evals = load_evals()  # every process's results so far (after the barrier that ended the last stage)
        if state.is_main_process and not path.exists():
            plan = _plan(config, stage, evals, space, ev.model.schedule)
            if plan:
                atomic_write(path, json.dumps({"stage": stage, "candidates": plan}, indent=1))
        state.wait_for_everyone()
        if not path.exists():
            break
        candidates = json.loads(path.read_text())["candidates"]
        for j, cand in enumerate(candidates):
            if j % state.num_processes != state.process_index:
                continue
            target = out / "evals" / f"{cand['id']}.json"
            if target.exists():
                continue
            schedule = SolverSchedule.from_dict(cand["schedule"])
            row = {"id": cand["id"], "stage": stage, "origin": cand["origin"], "predicted": cand.get("predicted"),
                   **ev(schedule), "process": state.process_index, "schedule": cand["schedule"]}
            atomic_write(target, json.dumps(row, indent=1))
            evals[row["id"]] = row
            if progress:  # the best so far as this process knows it (others' results of this stage join later)
                best = min(_fid(r) for r in evals.values() if r["nfe"] == row["nfe"])
                shown = "diverged" if row["fid"] is None else f"{row['fid']:.4f}"
                print(f"[search] stage {stage} nfe {row['nfe']} candidate {j + 1}/{len(candidates)} "
                      f"{cand['origin']}: fid {shown} (best at this nfe {best:.4f}) {row['wall_time_s']:.1f} s",
                      flush=True)
        state.wait_for_everyone()
        stage += 1

    evals = load_evals()
    report = _report(config, evals, time.perf_counter() - t_start)
    if state.is_main_process:
        for nfe, best in report["best"].items():
            if best["id"] is not None:
                row = evals[best["id"]]
                atomic_write(out / "s3" / f"nfe{nfe}.json",
                             SolverSchedule.from_dict(row["schedule"]).to_json() + "\n")
        atomic_write(out / "report.json", json.dumps(report, indent=1))
    state.wait_for_everyone()
    return report


def _plan(config: SearchConfig, stage: int, evals: dict, space: Space, noise_schedule) -> list:
    """The candidates of ``stage``: the known solvers at stage 0, then bred and predictor-ranked ones."""
    rng = np.random.default_rng([config.search_seed, stage])
    plan = []
    seen = set(evals)
    if stage == 0:
        for nfe in config.nfes:
            for origin, s in _initial(noise_schedule, nfe, config.budget_for(nfe)):
                cid = schedule_id(s)
                if cid not in seen:
                    seen.add(cid)
                    plan.append({"id": cid, "nfe": nfe, "origin": origin, "schedule": s.to_dict()})
        return plan
    schedules = {k: SolverSchedule.from_dict(r["schedule"]) for k, r in evals.items()}
    predictor = None
    if config.predictor and len(evals) >= 4:
        keys = sorted(evals)
        x = np.stack([encode(schedules[k], space) for k in keys])
        y = np.array([math.log(min(_fid(evals[k]), 1e6)) for k in keys])
        predictor = Predictor(seed=config.search_seed * 100_003 + stage).fit(x, y, np.array([evals[k]["nfe"] for k in keys]))
    for nfe in config.nfes:
        left = config.budget_for(nfe) - sum(r["nfe"] == nfe for r in evals.values())
        if left <= 0:
            continue
        population = [(schedules[k], _fid(r)) for k, r in evals.items() if r["nfe"] == nfe]
        if not population:
            continue
        pool = _breed(population, nfe, space, rng, config.pool, seen)
        take = min(config.per_stage, left, len(pool))
        if predictor is not None and take > 1:
            scores = predictor.predict(np.stack([encode(s, space) for s in pool]))
            order = list(np.argsort(scores, kind="stable"))
            picks = [(i, "predictor") for i in order[:take - 1]]
            rest = order[take - 1:]
            picks.append((int(rest[rng.integers(len(rest))]), "explore"))
        else:
            scores = None
            picks = [(int(i), "random") for i in rng.choice(len(pool), size=take, replace=False)]
        for i, origin in picks:
            s = pool[i]
            seen.add(schedule_id(s))
            plan.append({"id": schedule_id(s), "nfe": nfe, "origin": f"stage{stage}/{origin}",
                         "predicted": None if scores is None else float(scores[i]), "schedule": s.to_dict()})
    return plan


def _report(config: SearchConfig, evals: dict, elapsed: float) -> dict[str, Any]:
    best, known = {}, {}
    for nfe in config.nfes:
        rows = [r for r in evals.values() if r["nfe"] == nfe]
        top = min(rows, key=_fid, default=None)
        base = min((r for r in rows if r["stage"] == 0), key=_fid, default=None)
        best[nfe] = {"id": top and top["id"], "fid": top and top["fid"], "fid_low": top and top.get("fid_low"),
                     "fid_high": top and top.get("fid_high"), "origin": top and top["origin"],
                     "evaluations": len(rows)}
        known[nfe] = {"origin": base and base["origin"], "fid": base and base["fid"],
                      "fid_low": base and base.get("fid_low"), "fid_high": base and base.get("fid_high")}
    return {"model": config.model, "samples": config.samples, "reference": config.reference,
            "features": config.features, "evaluations": len(evals),
            "network_evaluations": int(sum(r["network_evaluations"] for r in evals.values())),
            "evaluation_time_s": float(sum(r["wall_time_s"] for r in evals.values())), "elapsed_s": elapsed,
            "best": best, "best_known_solver": known}


def report_table(report: dict[str, Any]) -> str:
    """The report as a Markdown table: best FID per NFE against the best known solver of stage 0."""
    lines = [f"S3 search on {report['model']}: {report['evaluations']} evaluations of {report['samples']} samples "
             f"({report['network_evaluations']:,} network evaluations, {report['evaluation_time_s']:.0f} s of "
             f"evaluation), FID against {report['reference']} ({report['features']} features)", "",
             "| NFE | evaluations | best known solver | its FID [95%] | S3 FID [95%] | ratio |",
             "|---|---|---|---|---|---|"]

    def fmt(r: dict) -> str:
        if r["fid"] is None:
            return "-"
        return f"{r['fid']:.3f}" + (f" [{r['fid_low']:.3f}, {r['fid_high']:.3f}]" if r.get("fid_low") is not None
                                    else "")

    for nfe, best in report["best"].items():
        known = report["best_known_solver"][nfe]
        ratio = (f"{best['fid'] / known['fid']:.2f}" if best["fid"] is not None and known["fid"] else "-")
        lines.append(f"| {nfe} | {best['evaluations']} | {known['origin']} | {fmt(known)} | {fmt(best)} | {ratio} |")
    return "\n".join(lines)
