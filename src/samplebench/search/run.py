"""``samplebench search``: the S3 search (Liu et al., ICLR 2024, Sec. 4) as a resumable, multi-process job whose
selection measures what it ranks.

1. Stage 0 screens every registry solver that the USF executor expresses exactly (``usf.KNOWN_SCHEDULES``: DDIM,
   DPM-Solver++ 2M and 3M, UniPC bh1 and bh2, DEIS in log rho) on every time grid, the learned ones included (GITS,
   DMN, and LD3 where the model has it for the solver and NFE: its times; ``samplebench.learned``, their one-off cost
   charged to the search in ``learned.json`` and the report), and 2M, 3M and UniPC-bh2 with the zero analytical
   first step, at every target NFE; so the search starts from every baseline it can express.
2. Each later stage, per NFE, breeds a pool of candidates from the best-screened schedules of that NFE (mutation and
   crossover, ``space.py``), ranks the pool with the predictor trained on every screening so far, and screens the
   best-ranked few plus one drawn at random (exploration keeps the predictor honest).
   With ``refine`` > 0 a last stage screens, per NFE, the best ``refine`` searched schedules with their times
   refined by gradient on LD3's objective (``learned.ld3.refine_schedule``): discrete decisions searched, continuous
   times learned.
3. Re-scoring: per NFE the best ``finalists`` searched schedules and the best ``baselines`` of stage 0 by each
   screening signal get the FID of ``rescore`` fresh seeds, all on the same seeds. The best searched one ships only
   if the paired 95% interval of its FID minus the best re-scored baseline's lies below zero; otherwise that
   baseline ships, and the report says so.

A screening evaluation samples ``samples`` images on fixed seeds and records two signals: ``endpoint``, the RMS
distance of each image to the image of the exact probability-flow ODE from the same noise (a 100-NFE UniPC solve,
as in LD3 and GITS), and ``fid``, the FID of the images against the model's reference in the harness's features.
``signal`` picks the one that ranks; the report gives both signals' rank correlation (Spearman) with the re-scored
FID over the re-scored candidates, the measurement that chooses between them.

Files under ``--out``::

    search.json                 the settings (a resume with other settings is refused; the budget may grow and the
                                numbers of finalists and baselines may change)
    endpoint.npy                the exact-ODE images of the screening seeds
    stages/stage-00003.json     the candidates of a stage, written before any of them is screened
    evals/<id>.json             one screened schedule: both signals, NFE, origin, wall time, network evaluations
    refine/<id>.json            one time refinement (``--refine``) of searched schedule <id>: the refined schedule
                                and its cost, written as it ends (refine.json gathers them when all are done)
    rescore/<id>.json, .npy     one re-scored schedule: FID with its interval; its features (for the paired test)
    s3/nfe<k>.json              the shipped schedule per NFE, with report.json and report.md (copy the folder into
                                a model directory to ship it)
    report.json                 the decisions, rank correlations, evaluations, network evaluations and time

Every file is written whole (temporary file, then rename); a killed search resumes at the first unevaluated
candidate and continues exactly as an uninterrupted one. Under ``accelerate launch`` the candidates of a stage, the
time refinements and the re-scoring are dealt round-robin to the processes.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..checks import MAX_EVAL_SAMPLES, check_count, check_seeds
from ..errors import UsageError, damaged, describe, unknown
from ..files import atomic_write
from ..usf import SolverSchedule
from .predictor import Predictor
from .space import MAX_NFE, Space, build, crossover, encode, genes_of, known_solver, mutate

__all__ = ["SearchConfig", "run_search", "schedule_id", "report_table", "search_cost_s"]

GRIDS = ("logsnr", "time-uniform", "time-quadratic", "karras")
RANK_BAR = 15  # parents come from the best 15 of an NFE (reference ``rank_bar``)
SIGNALS = ("endpoint", "fid")
ADJUSTABLE = ("budget", "finalists", "baselines", "refine")  # settings a resume may change (more screening, other re-scoring)
STAGE0 = ("dpmpp-3m", "unipc-bh2", "unipc-bh1", "dpmpp-2m", "deis-logrho", "ddim", "euler")  # all of KNOWN
ENDPOINT_SOLVER, ENDPOINT_NFE = "unipc-bh2", 100  # the exact-ODE reference of the endpoint signal


# named budgets: screenings per NFE, images per screening, re-scored images and candidates, bred pool per stage.
# quick: stage 0 (every expressible solver on every fixed and learned grid, about 45-50 per NFE) and about 10 bred
# per NFE, screened on 64 images and re-scored on 1,000 (intervals about twice as wide: a searched schedule ships
# less often); full: as the shipped searches
LEVELS = {"quick": {"per_nfe": 60, "samples": 64, "rescore": 1000, "finalists": 2, "baselines": 2, "pool": 64,
                    "refine": 2},
          "full": {"per_nfe": 100, "samples": 500, "rescore": 5000, "finalists": 4, "baselines": 3, "pool": 128}}


@dataclass(frozen=True)
class SearchConfig:
    model: str = "digits"
    nfes: tuple[int, ...] = (3, 4, 5, 6, 7, 8, 9, 10)
    budget: int = 800  # screening evaluations in all, split evenly over the NFEs
    samples: int = 500  # images per screening evaluation
    seed: int = 500_000  # image i of every screening uses seed + i (benchmarks use 0, 1, ...)
    signal: str = "endpoint"  # the screening signal that ranks: endpoint or fid
    rescore: int = 5000  # fresh images per re-scored finalist
    rescore_seed: int = 600_000
    finalists: int = 4  # best searched schedules re-scored per NFE
    baselines: int = 3  # best stage-0 schedules re-scored per NFE
    features: str = "digits"
    mode: str = "clean"
    ref: str | None = None
    batch_size: int = 250
    per_stage: int = 4  # real evaluations per NFE and stage
    pool: int = 128  # bred candidates per NFE and stage, ranked by the predictor
    predictor: bool = True  # False: the public code's plain evolutionary search (random picks from the pool)
    search_seed: int = 0
    dtype: str = "float32"
    refine: int = 0  # best searched schedules per NFE whose times LD3's objective refines, screened as a last stage

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
        if self.signal not in SIGNALS:
            raise unknown("--signal", self.signal, SIGNALS)
        for name, v, lo, hi in (("--samples", self.samples, 2, MAX_EVAL_SAMPLES),
                                ("--batch-size", self.batch_size, 1, None),
                                ("--per-stage", self.per_stage, 1, None),
                                ("--pool", self.pool, 1, 1_000_000),
                                ("--rescore", self.rescore, 2, MAX_EVAL_SAMPLES),
                                ("--finalists", self.finalists, 1, None),
                                ("--baselines", self.baselines, 1, None),
                                ("--budget", self.budget, 1, 1_000_000),
                                ("--refine", self.refine, 0, 100)):
            check_count(name, v, lo, hi)
        check_seeds(self.seed, self.samples)
        check_seeds(self.rescore_seed, self.rescore, "--rescore-seed")
        if self.seed < self.rescore_seed + self.rescore and self.rescore_seed < self.seed + self.samples:
            raise UsageError(f"--rescore-seed {self.rescore_seed}: its {self.rescore} seeds overlap the screening "
                             f"seeds {self.seed}..{self.seed + self.samples - 1}; re-scoring needs fresh seeds")
        if self.features not in EXTRACTORS:
            raise unknown("feature extractor", self.features, EXTRACTORS)
        if self.mode not in MODES:
            raise unknown("mode", self.mode, MODES)
        if self.ref is None and self.model not in DEFAULT_REFS:
            raise UsageError(f"model {self.model!r} has no default reference; give --ref")

    @classmethod
    def at_level(cls, budget: str | int, **fields_: Any) -> "SearchConfig":
        """A search of ``budget`` screenings, or at a named level (``LEVELS``: screenings per NFE, samples, re-scoring);
        fields given explicitly win over the level's."""
        nfes = tuple(fields_.get("nfes", cls.nfes))
        if isinstance(budget, str) and budget in LEVELS:
            level = dict(LEVELS[budget])
            per_nfe = level.pop("per_nfe")
            return cls(**{**level, **fields_, "budget": per_nfe * len(nfes)})
        try:
            budget = int(budget)
        except (TypeError, ValueError):
            raise UsageError(f"--budget {budget!r} is neither a number of screenings nor a level; valid: "
                             f"{', '.join(LEVELS)}, or a whole number") from None
        return cls(**{**fields_, "budget": budget})

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
    """A candidate's name: the first 16 hex digits of its fingerprint (``plan.schedule_sha256``)."""
    from ..plan import schedule_sha256

    return schedule_sha256(schedule)[:16]


class _Evaluator:
    """Screens and re-scores schedules on fixed seeds; the model, extractor and reference are loaded once."""

    def __init__(self, config: SearchConfig, device: str | None, inception_weights: str | None = None):
        from ..metrics.extractors import get_extractor
        from ..metrics.reference import get_reference
        from ..models import load_model

        c = self.config = config
        self.model = load_model(c.model, device=device or "cpu", dtype=c.dtype)
        self.extractor = get_extractor(c.features, c.mode, device or "cpu", inception_weights)
        self.ref = get_reference(c.reference, self.extractor)
        self.seeds = list(range(c.seed, c.seed + c.samples))
        self.rescore_seeds = list(range(c.rescore_seed, c.rescore_seed + c.rescore))
        self.target = None  # the exact-ODE images of the screening seeds

    def space(self) -> Space:
        from ..models.skip_tuning import count_skips

        unet = self.model.skip_network()
        s = self.model.schedule
        return Space(float(s.T), float(s.t_min), self.model.data_mean is not None,
                     count_skips(unet) if unet is not None else 0)

    def exact_images(self):
        """The images of the exact ODE from the screening seeds' noise (``ENDPOINT_NFE`` UniPC steps, logSNR)."""
        from ..plan import RunSpec, plan

        spec = RunSpec(model=self.config.model, solver=ENDPOINT_SOLVER, nfe=ENDPOINT_NFE, time_grid="logsnr")
        result = plan(self.model, spec).sample(self.seeds, batch_size=self.config.batch_size)
        return result.images.numpy(), result.nfe * len(self.seeds), result.wall_time_s

    def _images(self, schedule, seeds):
        import torch

        from ..plan import plan_schedule

        result = plan_schedule(self.model, schedule).sample(seeds, batch_size=self.config.batch_size)
        ok = bool(torch.isfinite(result.images).all())
        return (result.images if ok else None), result.nfe

    def _fid(self, images):
        from ..metrics.scores import extract, fid, statistics

        feats = extract(images, self.extractor).feats
        value = fid(*statistics(feats), self.ref.mu, self.ref.sigma)
        return (value if math.isfinite(value) else None), feats

    def screen(self, schedule) -> dict[str, Any]:
        """Both screening signals of ``schedule`` on the screening seeds."""
        import torch

        t0 = time.perf_counter()
        images, nfe = self._images(schedule, self.seeds)
        endpoint = value = None
        if images is not None:
            d = images.double().flatten(1) - torch.from_numpy(self.target).double().flatten(1)
            endpoint = float(d.pow(2).mean(1).sqrt().mean())
            value, _ = self._fid(images)
        score = endpoint if self.config.signal == "endpoint" else value
        return {"score": score, "endpoint": endpoint, "fid": value, "num_samples": len(self.seeds), "nfe": nfe,
                "wall_time_s": time.perf_counter() - t0, "network_evaluations": nfe * len(self.seeds)}

    def rescore(self, schedule) -> tuple[dict[str, Any], np.ndarray | None]:
        """FID with its interval on the re-scoring seeds, and the features (None if it diverged)."""
        from ..metrics.intervals import fid_interval

        t0 = time.perf_counter()
        images, nfe = self._images(schedule, self.rescore_seeds)
        value = feats = interval = None
        if images is not None:
            value, feats = self._fid(images)
            if value is not None:
                interval = fid_interval(feats, self.ref.mu, self.ref.sigma, estimate=value)
        return ({"fid": value, "fid_low": interval and interval.low, "fid_high": interval and interval.high,
                 "num_samples": len(self.rescore_seeds), "nfe": nfe, "wall_time_s": time.perf_counter() - t0,
                 "network_evaluations": nfe * len(self.rescore_seeds)}, None if value is None else feats)


def _score(row: dict) -> float:
    return math.inf if row.get("score") is None else row["score"]


def _initial(noise_schedule, nfe: int, limit: int, grids: tuple[str, ...] = GRIDS,
             learned: dict[str, list[float]] | None = None) -> list[tuple[str, Any]]:
    """Stage 0 at ``nfe``: every expressible registry solver on every grid (``GRIDS``, and a pipeline's own, such as
    a flow model's shift), then on its learned grids (``learned``: origin "solver/kind" -> times, ``_learned``), and
    three with the zero analytical first step (one more step, the same NFE); at most ``limit``."""
    from ..samplers import make_grid

    out, ids = [], set()

    def add(origin: str, schedule) -> None:
        if schedule_id(schedule) not in ids:  # few-step 3M is 2M, Euler is DDIM: each schedule once
            ids.add(schedule_id(schedule))
            out.append((origin, schedule))

    for name in STAGE0:
        for kind in grids:
            add(f"{name}/{kind}", known_solver(name, make_grid(noise_schedule, kind, nfe).tolist()))
    for origin, times in (learned or {}).items():
        times, model_times = times if isinstance(times, tuple) else (times, None)
        add(origin, replace(known_solver(origin.split("/")[0], times),
                            model_times=None if model_times is None else tuple(model_times)))
    for name in ("dpmpp-3m", "unipc-bh2", "dpmpp-2m"):
        s = known_solver(name, make_grid(noise_schedule, "logsnr", nfe + 1).tolist())
        add(f"{name}/logsnr+afs", build(s.timesteps, genes_of(s), "zero"))
    return out[:limit]


def _check_budget(config: SearchConfig, model) -> None:
    """A one-line error when some NFE's share of ``--budget`` would be spent on stage 0 alone (the baselines), so
    that nothing would be searched there."""
    sizes = {n: len(_initial(model.schedule, n, 10**9, _grids(model), _learned(model, n)[0])) for n in config.nfes}
    short = [n for n in config.nfes if config.budget_for(n) <= sizes[n]]
    if short:
        n = short[0]
        need = len(config.nfes) * (max(sizes.values()) + config.per_stage)
        raise UsageError(f"--budget {config.budget} gives {config.budget_for(n)} screenings at NFE {n}, and stage 0 "
                         f"there (every expressible solver on every grid, the baselines) takes {sizes[n]}, so nothing "
                         f"would be searched; give --budget {need} or more (stage 0 and one bred stage at every NFE), "
                         f"or --budget quick")


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
        _check_state(out)  # a damaged file is named before anything is written
        if manifest.exists():
            old = json.loads(manifest.read_text())
            diff = sorted(k for k in set(old) | set(settings) if k not in ADJUSTABLE and old.get(k) != settings.get(k))
            if diff:
                raise UsageError(f"{str(out)!r} holds a search with other settings ({', '.join(diff)}); resume it "
                                 f"with the same settings or choose another --out")
        if not (out / "stages" / "stage-00000.json").exists():
            _check_budget(config, ev.model)  # a budget that stage 0 would use up is refused before anything is written
        for sub in ("stages", "evals", "rescore", "s3"):
            (out / sub).mkdir(parents=True, exist_ok=True)
        for tmp in out.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        atomic_write(manifest, json.dumps(settings, indent=1))
        target = out / "endpoint.npy"
        if not target.exists():
            images, nfe_total, wall = ev.exact_images()
            buf = io.BytesIO()
            np.save(buf, images)
            atomic_write(target, buf.getvalue())
            atomic_write(out / "endpoint.json", json.dumps({"solver": ENDPOINT_SOLVER, "nfe": ENDPOINT_NFE,
                                                            "network_evaluations": nfe_total, "wall_time_s": wall}))
    state.wait_for_everyone()
    ev.target = np.load(out / "endpoint.npy")

    def load(folder: str) -> dict[str, dict]:
        rows = {}
        for p in sorted((out / folder).glob("*.json")):
            row = json.loads(p.read_text())
            rows[row["id"]] = row
        return rows

    stage = 0
    while True:
        path = out / "stages" / f"stage-{stage:05d}.json"
        evals = load("evals")  # every process's results so far (after the barrier that ended the last stage)
        if state.is_main_process and not path.exists():
            plan = _plan(config, stage, evals, space, ev.model, out)
            if plan:
                atomic_write(path, json.dumps({"stage": stage, "candidates": plan}, indent=1))
        state.wait_for_everyone()
        if not path.exists() and _refine_due(config, evals):  # the last stage: every process refines its share
            _refine(config, evals, ev.model, out, state.process_index, state.num_processes)
            state.wait_for_everyone()
            if state.is_main_process:
                plan = _refined(config, evals, out)
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
                   **ev.screen(schedule), "process": state.process_index, "schedule": cand["schedule"]}
            atomic_write(target, json.dumps(row, indent=1))
            evals[row["id"]] = row
            if progress:  # the best so far as this process knows it (others' results of this stage join later)
                best = min(_score(r) for r in evals.values() if r["nfe"] == row["nfe"])
                shown = "diverged" if row["score"] is None else f"{row['score']:.4f}"
                print(f"[search] stage {stage} nfe {row['nfe']} candidate {j + 1}/{len(candidates)} "
                      f"{cand['origin']}: {config.signal} {shown} (best at this nfe {best:.4f}) "
                      f"{row['wall_time_s']:.1f} s", flush=True)
        state.wait_for_everyone()
        stage += 1

    evals = load("evals")
    finalists = _finalists(config, evals)
    for j, cid in enumerate(finalists):
        if j % state.num_processes != state.process_index or _rescored(out / "rescore", cid):
            continue
        row, feats = ev.rescore(SolverSchedule.from_dict(evals[cid]["schedule"]))
        if feats is not None:
            buf = io.BytesIO()
            np.save(buf, feats.astype(np.float32))
            atomic_write(out / "rescore" / f"{cid}.npy", buf.getvalue())
        row = {"id": cid, **row, "process": state.process_index}
        atomic_write(out / "rescore" / f"{cid}.json", json.dumps(row, indent=1))
        if progress:
            shown = "diverged" if row["fid"] is None else f"{row['fid']:.4f} [{row['fid_low']:.4f}, {row['fid_high']:.4f}]"
            print(f"[search] re-score {j + 1}/{len(finalists)} nfe {row['nfe']} {evals[cid]['origin']}: FID of "
                  f"{config.rescore} fresh samples {shown} {row['wall_time_s']:.1f} s", flush=True)
    state.wait_for_everyone()

    report = None
    if state.is_main_process:
        endpoint = json.loads((out / "endpoint.json").read_text())
        learned = json.loads((out / "learned.json").read_text()) if (out / "learned.json").exists() else {}
        if (out / "refine.json").exists():
            learned = {**learned, **{f"refine/{k}": v for k, v in json.loads((out / "refine.json").read_text()).items()}}
        report = _report(config, evals, load("rescore"), out / "rescore", ev.ref, endpoint,
                         time.perf_counter() - t_start, learned)
        for nfe, d in report["decisions"].items():
            if d["shipped"] is not None:
                atomic_write(out / "s3" / f"nfe{nfe}.json",
                             SolverSchedule.from_dict(evals[d["shipped"]["id"]]["schedule"]).to_json() + "\n")
        text = json.dumps(report, indent=1)
        atomic_write(out / "report.json", text)
        atomic_write(out / "s3" / "report.json", text)  # the report beside the schedules it chose
        atomic_write(out / "s3" / "report.md", report_table(report) + "\n")
    state.wait_for_everyone()
    return report if report is not None else json.loads((out / "report.json").read_text())


def _check_state(out: Path) -> None:
    """Read every state file a resume would read; a damaged one is named with how to recover. Files appear whole
    (``files.atomic_write``), so damage comes from outside (a copy cut short, an edit)."""
    def read(path: Path, keys: tuple[str, ...], recover: str) -> None:
        try:
            d = json.loads(path.read_text())
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            for k in keys:
                d[k]
        except Exception as e:
            raise damaged(path, describe(e), recover) from None

    if not out.is_dir():
        return
    redo = "delete it and resume: that part of the search is redone"
    if (out / "search.json").exists():
        read(out / "search.json", ("nfes", "samples", "seed"), "restore it, or remove the folder to start over")
    recompute = "delete endpoint.npy and endpoint.json and resume: they are recomputed"
    if (out / "endpoint.json").exists():
        read(out / "endpoint.json", ("network_evaluations", "wall_time_s"), recompute)
    if (out / "endpoint.npy").exists():
        try:
            np.load(out / "endpoint.npy")
        except Exception as e:
            raise damaged(out / "endpoint.npy", describe(e), recompute) from None
    for path in sorted((out / "stages").glob("*.json")) if (out / "stages").is_dir() else ():
        read(path, ("candidates",), redo)
    for path in sorted((out / "refine").glob("*.json")) if (out / "refine").is_dir() else ():
        read(path, ("from", "schedule", "network_evaluations", "wall_time_s"), redo)
    for path in sorted((out / "evals").glob("*.json")) if (out / "evals").is_dir() else ():
        read(path, ("id", "nfe", "stage", "score", "schedule", "network_evaluations", "wall_time_s"), redo)
    for path in sorted((out / "rescore").glob("*")) if (out / "rescore").is_dir() else ():
        if path.suffix == ".json":
            read(path, ("id", "fid", "nfe", "network_evaluations", "wall_time_s"), redo)
        elif path.suffix == ".npy":
            try:
                np.load(path)
            except Exception as e:
                raise damaged(path, describe(e), redo) from None


def _rescored(folder: Path, cid: str) -> bool:
    """Whether ``cid`` is re-scored: its row, and its features unless it diverged (a copied search folder may hold
    the rows without the features; those are re-scored again, to the same values)."""
    path = folder / f"{cid}.json"
    return path.exists() and (json.loads(path.read_text())["fid"] is None or (folder / f"{cid}.npy").exists())


def _grids(model) -> tuple[str, ...]:
    """Stage 0's grids for ``model``: ``GRIDS``, and the model's own default (a flow pipeline's shift) after them."""
    own = model.default_grid
    return GRIDS if own is None or own in GRIDS else (*GRIDS, own)


LEARNED = ("gits", "dmn", "ld3")  # learned grids stage 0 holds beside the fixed ones (``samplebench.learned``)


def _learned(model, nfe: int) -> tuple[dict[str, Any], dict[str, dict]]:
    """Every stage-0 solver on its learned grids at ``nfe`` (GITS and DMN made now if needed; LD3 where the model
    has it for that solver and NFE, as (times, network input times): the schedule runs LD3 exactly), and what the
    grids cost, by file."""
    from ..learned import grid_cost, learned_grid, stored_only
    from ..learned.ld3 import ld3_record
    from ..samplers import get_solver
    from ..usf import KNOWN_SCHEDULES

    grids, costs = {}, {}
    for name in STAGE0:
        spec = get_solver(KNOWN_SCHEDULES[name][1])
        for kind in LEARNED:
            try:
                with stored_only() if kind == "ld3" else contextlib.nullcontext():
                    times = learned_grid(model, spec, nfe, kind, progress=False).tolist()
                    grids[f"{name}/{kind}"] = times if kind != "ld3" else (
                        times, ld3_record(model, spec, len(times) - 1, progress=False).get("model_times"))
            except UsageError:  # no LD3 grid for this solver and NFE, or GITS on straight trajectories
                continue
            if kind != "dmn":
                file = "gits.json" if kind == "gits" else f"ld3/{spec.name}-steps{nfe}.json"
                costs[file] = grid_cost(model, file)
    return grids, costs


def _plan(config: SearchConfig, stage: int, evals: dict, space: Space, model, out: Path | None = None) -> list:
    """The candidates of ``stage``: the known solvers at stage 0, then bred and predictor-ranked ones."""
    rng = np.random.default_rng([config.search_seed, stage])
    plan = []
    seen = set(evals)
    if stage == 0:
        costs = {}
        for nfe in config.nfes:
            learned, cost = _learned(model, nfe)
            costs.update(cost)
            for origin, s in _initial(model.schedule, nfe, config.budget_for(nfe), _grids(model), learned):
                cid = schedule_id(s)
                if cid not in seen:
                    seen.add(cid)
                    plan.append({"id": cid, "nfe": nfe, "origin": origin, "schedule": s.to_dict()})
        if out is not None:  # the learned grids' one-off cost, charged to the search
            atomic_write(out / "learned.json", json.dumps(costs, indent=1))
        return plan
    schedules = {k: SolverSchedule.from_dict(r["schedule"]) for k, r in evals.items()}
    predictor = None
    if config.predictor and len(evals) >= 4:
        keys = sorted(evals)
        x = np.stack([encode(schedules[k], space) for k in keys])
        y = np.array([math.log(max(min(_score(evals[k]), 1e6), 1e-12)) for k in keys])
        predictor = Predictor(seed=config.search_seed * 100_003 + stage).fit(x, y, np.array([evals[k]["nfe"] for k in keys]))
    for nfe in config.nfes:
        left = config.budget_for(nfe) - sum(r["nfe"] == nfe for r in evals.values())
        if left <= 0:
            continue
        population = [(schedules[k], _score(r)) for k, r in evals.items() if r["nfe"] == nfe]
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


REFINE_PAIRS = 50  # screening seeds whose exact-ODE images train the refinement (as many more validate it)


def _refine_due(config: SearchConfig, evals: dict) -> bool:
    """Whether the screening stages are over and the refined stage is still to come (``--refine``)."""
    return bool(config.refine) and not any(r["origin"].startswith("refined/") for r in evals.values())


def _to_refine(config: SearchConfig, evals: dict) -> list[dict]:
    """Per NFE, the best ``refine`` searched schedules by screening score (every process ranks the same)."""
    out = []
    for nfe in config.nfes:
        rows = sorted((r for r in evals.values() if r["nfe"] == nfe and r["stage"] > 0 and r["score"] is not None),
                      key=lambda r: (r["score"], r["id"]))
        out += rows[:config.refine]
    return out


def _refine(config: SearchConfig, evals: dict, model, out: Path, process: int = 0, processes: int = 1) -> None:
    """Refine this process's share (round-robin) of ``_to_refine``: each schedule's times by LD3's objective
    (``learned.ld3.refine_schedule``: decisions frozen, times learned against the exact-ODE images of the first
    screening seeds), kept in ``refine/<id>.json`` as it ends, so a killed search redoes none it finished."""
    import torch

    from ..learned.ld3 import LD3Config, refine_schedule
    from ..noise import SampleGenerators

    todo = [r for j, r in enumerate(_to_refine(config, evals)) if j % processes == process
            and not (out / "refine" / f"{r['id']}.json").exists()]
    if not todo:
        return
    n = min(REFINE_PAIRS, config.samples // 2)
    seeds = list(range(config.seed, config.seed + 2 * n))
    x_T = SampleGenerators(seeds).randn(model.sample_shape, dtype=torch.float64) * model.schedule.prior_std()
    target = torch.from_numpy(np.load(out / "endpoint.npy")[:2 * n]).double()
    ld3 = LD3Config(train=n, valid=n, rounds_times=7, rounds_input_times=0, seed=config.seed,
                    mode="time" if model.latent else "lambda")
    (out / "refine").mkdir(exist_ok=True)
    for r in todo:
        refined, info = refine_schedule(model, SolverSchedule.from_dict(r["schedule"]), ld3, pairs=(x_T, target, {}))
        row = {"from": r["id"], "network_evaluations": info["network_evaluations_forward"]
               + info["network_evaluations_backward"], "wall_time_s": info["wall_time_s"],
               "valid_loss_init": info["valid_loss_init"], "valid_loss": info["valid_loss"],
               "schedule": refined.to_dict(), "process": process}
        atomic_write(out / "refine" / f"{r['id']}.json", json.dumps(row, indent=1))


def _refined(config: SearchConfig, evals: dict, out: Path) -> list:
    """The last stage's candidates: the refined schedules (``_refine``) not screened yet; their network evaluations
    and time are charged to the search (``refine.json``)."""
    plan, costs = [], {}
    for r in _to_refine(config, evals):
        row = json.loads((out / "refine" / f"{r['id']}.json").read_text())
        refined = SolverSchedule.from_dict(row["schedule"])
        cid = schedule_id(refined)
        costs[cid] = {k: v for k, v in row.items() if k not in ("schedule", "process")}
        if cid not in evals:
            plan.append({"id": cid, "nfe": r["nfe"], "origin": f"refined/{r['id']}", "schedule": refined.to_dict()})
    atomic_write(out / "refine.json", json.dumps(costs, indent=1))
    return plan


def _finalists(config: SearchConfig, evals: dict) -> list[str]:
    """Per NFE, the best-screened ``finalists`` searched schedules, and the best ``baselines`` stage-0 ones by each
    screening signal (the endpoint distance can rank a grid's baselines differently from FID; the shipped schedule
    must beat the strongest)."""
    out = []
    for nfe in config.nfes:
        rows = sorted((r for r in evals.values() if r["nfe"] == nfe and r["score"] is not None),
                      key=lambda r: (r["score"], r["id"]))
        out += [r["id"] for r in rows if r["stage"] > 0][:config.finalists]
        base = [r for r in rows if r["stage"] == 0]
        for key in SIGNALS:
            ranked = sorted((r for r in base if r[key] is not None), key=lambda r: (r[key], r["id"]))
            out += [r["id"] for r in ranked[:config.baselines] if r["id"] not in out]
    return out


def _spearman(a: list, b: list) -> float | None:
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 3 or len({x for x, _ in pairs}) < 2 or len({y for _, y in pairs}) < 2:
        return None
    return float(spearmanr(*zip(*pairs)).statistic)


def _summary(ev: dict, rs: dict | None) -> dict[str, Any]:
    out = {"id": ev["id"], "origin": ev["origin"], "stage": ev["stage"], "score": ev["score"],
           "endpoint": ev["endpoint"], "screen_fid": ev["fid"]}
    if rs is not None:
        out |= {"fid": rs["fid"], "fid_low": rs["fid_low"], "fid_high": rs["fid_high"]}
    return out


def _report(config: SearchConfig, evals: dict, rescored: dict, folder: Path, ref, endpoint: dict,
            elapsed: float, learned: dict | None = None) -> dict[str, Any]:
    from ..metrics.intervals import compare

    seeds = np.arange(config.rescore_seed, config.rescore_seed + config.rescore)
    decisions, correlations = {}, {s: [] for s in SIGNALS}
    finalists = _finalists(config, evals)
    for nfe in config.nfes:
        rows = [_summary(evals[k], rescored.get(k)) for k in finalists if evals[k]["nfe"] == nfe]
        done = [r for r in rows if r.get("fid") is not None]
        base = min((r for r in done if r["stage"] == 0), key=lambda r: r["fid"], default=None)
        cand = min((r for r in done if r["stage"] > 0), key=lambda r: r["fid"], default=None)
        difference, shipped, why = None, base, "no searched schedule was re-scored"
        if base is not None and cand is not None:
            diff = compare(np.load(folder / f"{cand['id']}.npy"), np.load(folder / f"{base['id']}.npy"),
                           metric="fid", seeds_a=seeds, seeds_b=seeds, mu_ref=ref.mu, sigma_ref=ref.sigma,
                           estimates=(cand["fid"], base["fid"]))
            difference = diff.to_dict()
            if diff.high < 0:
                shipped, why = cand, "the searched schedule beats the best baseline (paired interval below zero)"
            else:
                why = "no searched schedule beats the best baseline (paired interval not below zero)"
        rho = {s: _spearman([r[s if s == "endpoint" else "screen_fid"] for r in done], [r["fid"] for r in done])
               for s in SIGNALS}
        for s, v in rho.items():
            if v is not None:
                correlations[s].append(v)
        decisions[nfe] = {"evaluations": sum(r["nfe"] == nfe for r in evals.values()), "shipped": shipped,
                          "searched": shipped is not None and shipped is cand, "why": why,
                          "best_baseline": base, "best_searched": cand, "difference": difference,
                          "rescored": rows, "spearman": rho}
    screen, again = list(evals.values()), list(rescored.values())
    learned = learned or {}
    net = int(sum(r["network_evaluations"] for r in screen + again) + endpoint["network_evaluations"]
              + sum(c["network_evaluations"] for c in learned.values()))
    screen_time = float(sum(r["wall_time_s"] for r in screen))
    return {"model": config.model, "command": command(config), "settings": config.settings(),
            "signal": config.signal, "samples": config.samples, "rescore": config.rescore,
            "reference": config.reference, "features": config.features, "evaluations": len(evals),
            "rescored": len(rescored), "network_evaluations": net,
            "screening_time_s": screen_time, "rescoring_time_s": float(sum(r["wall_time_s"] for r in again)),
            "endpoint_time_s": endpoint["wall_time_s"], "elapsed_s": elapsed, "learned_grids": learned,
            "learned_time_s": float(sum(c["wall_time_s"] for c in learned.values())),
            "screening_throughput": sum(r["network_evaluations"] for r in screen) / max(screen_time, 1e-9),
            "spearman_mean": {s: (float(np.mean(v)) if v else None) for s, v in correlations.items()},
            "decisions": decisions}


def search_cost_s(report: dict[str, Any]) -> float:
    """A search's one-off cost in seconds: its screening, re-scoring and exact-ODE sampling, and the learned grids
    and time refinements charged to it (``learned_time_s``; the shipped grids' recorded cost where they were not made
    again)."""
    return float(sum(report.get(k, 0.0) for k in ("screening_time_s", "rescoring_time_s", "endpoint_time_s",
                                                   "learned_time_s")))


def command(config: SearchConfig) -> str:
    """The ``samplebench search`` command line of ``config`` (the options that differ from the defaults)."""
    default = SearchConfig()
    flags = {"nfes": "--nfe", "predictor": "--no-predictor"}
    parts = ["samplebench search"]
    for f in fields(config):
        v = getattr(config, f.name)
        if v == getattr(default, f.name) and f.name != "model":
            continue
        flag = flags.get(f.name, "--" + f.name.replace("_", "-"))
        if isinstance(v, bool):
            parts.append(flag)
        else:
            parts.append(f"{flag} {','.join(map(str, v)) if isinstance(v, tuple) else v}")
    return " ".join(parts) + " --out DIR"


def _learned_text(report: dict[str, Any]) -> str:
    t = report.get("learned_time_s") or 0.0
    return (f" and {t / 60:.1f} min of learned grids and time refinement (one-off cost in all "
            f"{search_cost_s(report) / 60:.1f} min)") if t else ""


def _fmt(r: dict | None) -> str:
    if r is None or r.get("fid") is None:
        return "-"
    return f"{r['fid']:.3f} [{r['fid_low']:.3f}, {r['fid_high']:.3f}]"


def report_table(report: dict[str, Any]) -> str:
    """The report as Markdown: per NFE the best re-scored baseline and searched schedule, their paired difference,
    what ships, and the screening signals' rank correlation with the re-scored FID."""
    rho = report["spearman_mean"]
    lines = [f"S3 search on {report['model']}: {report['evaluations']} screenings of {report['samples']} samples "
             f"(signal: {report['signal']}), {report['rescored']} finalists re-scored on {report['rescore']} fresh "
             f"seeds; {report['network_evaluations']:,} network evaluations, "
             f"{(report['screening_time_s'] + report['rescoring_time_s'] + report['endpoint_time_s']) / 60:.0f} min "
             f"of sampling{_learned_text(report)}; FID against {report['reference']} ({report['features']} features)", "",
             "| NFE | screened | best baseline | its FID [95%] | best searched | its FID [95%] | searched - baseline, "
             "paired [95%] | ships | Spearman endpoint / fid |", "|---|---|---|---|---|---|---|---|---|"]
    for nfe, d in report["decisions"].items():
        diff = d["difference"]
        dtext = "-" if diff is None else f"{diff['estimate']:+.3f} [{diff['low']:+.3f}, {diff['high']:+.3f}]"
        ships = "-" if d["shipped"] is None else ("S3" if d["searched"] else f"baseline ({d['shipped']['origin']})")
        r = d["spearman"]
        corr = " / ".join("-" if r[s] is None else f"{r[s]:.2f}" for s in SIGNALS)
        lines.append(f"| {nfe} | {d['evaluations']} | {d['best_baseline'] and d['best_baseline']['origin']} | "
                     f"{_fmt(d['best_baseline'])} | {d['best_searched'] and d['best_searched']['origin']} | "
                     f"{_fmt(d['best_searched'])} | {dtext} | {ships} | {corr} |")
    lines += ["", "Mean Spearman rank correlation with the re-scored FID over the re-scored candidates, per NFE: "
              + ", ".join(f"{s} {'-' if rho[s] is None else f'{rho[s]:.2f}'}" for s in SIGNALS)
              + f". Screening throughput: {report['screening_throughput']:.0f} images x NFE per second."]
    return "\n".join(lines)
