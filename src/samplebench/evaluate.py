"""Evaluation jobs: ``samplebench eval`` over a grid of solvers x NFEs, resumable and split across processes.

Layout under ``--out``::

    job.json                                        the settings (a resume with other settings is refused)
    samples/<solver>-nfe<k>/shard-00000.npz          uint8 images [S, H, W, C] as PNGs hold them, seeds, NFE, time,
                                                    the index of the process that drew them
    features/<extractor>-<mode>/<solver>-nfe<k>/...   features (and logits) of the same shard
    results.json                                    one row per (solver, NFE), also written to the results database

Shard j of every (solver, NFE) holds global sample indices [jS, (j+1)S) with seeds ``seed + index``, or the first
part of that range; every file appears whole (temporary file, then rename). So a killed job restarts at the first
missing shard and ends with exactly the files and numbers of an uninterrupted one, and under ``accelerate launch`` the
shards are dealt round-robin to the processes (no duplicates, no gaps) with the same result as one process. The main
process then scores every (solver, NFE) from the shard files. "The same" means bit for bit on the same device and
thread count: CPU kernels may round differently with more threads (a pixel then differs by one level).

Jobs grow: since every image has its own seed, the same job run again with a larger ``--num`` keeps every full
shard and draws only the shards it lacks, so it ends with the files and numbers of a job made at that size. The one
shard a smaller job left part-full is drawn again whole: a shard is one batch, and CPU kernels round differently
with the batch size (a few pixels one level apart), so completing it from a second batch would not be bit for bit
a fresh job's. A smaller ``--num`` scores the first N samples and deletes nothing (the sampling time and compute
counters of a shard read in part are prorated). Other ``--solver`` and ``--nfe`` lists add cells (or score some of
them); ``job.json`` records every cell ever asked for. Any other change (seed, model, solver settings, reference,
...) is refused before anything is read or written.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .checks import MAX_EVAL_SAMPLES, MAX_NFE, MAX_SAMPLES, check_count, check_seeds
from .errors import UsageError, damaged, describe, unknown
from .files import atomic_savez, atomic_write
from .plan import RunOptions
from .results import format_seeds

__all__ = ["EvalConfig", "METRICS", "DEFAULT_REFS", "run_eval", "eval_folder", "package_versions"]

METRICS = ("fid", "kid", "is")
DEFAULT_REFS = {"digits": "digits-train", "digits-dit": "digits-train", "digits-flow": "digits-train",
                "digits-lowdiff": "digits-train", "digits-gmm": "digits-gmm", "gaussian": "gaussian"}
KID_SUBSETS, KID_SUBSET_SIZE, IS_SPLITS, METRIC_SEED = 100, 1000, 10, 0
RESAMPLES = 1000  # bootstrap resamples of every FID and KID interval


def _parse_metrics(metrics: tuple[str, ...]) -> tuple[str, ...]:
    for m in metrics:
        if m not in METRICS:
            raise unknown("metric", m, METRICS)
    if not metrics:
        raise UsageError(f"no metrics given; valid: {', '.join(METRICS)}")
    return tuple(dict.fromkeys(metrics))


@dataclass(frozen=True)
class EvalConfig(RunOptions):
    """An evaluation: the run options (``plan.RunOptions``: model, grid, conditioning, methods), a grid of solvers x
    NFEs, the seeds, metrics and shards. What determines its samples and numbers (the device and database do not);
    each (solver, NFE) is the ``RunSpec`` ``spec(solver, nfe)``, checked once here."""

    solvers: tuple[str, ...] = ("dpmpp-2m",)
    nfes: tuple[int, ...] = (10,)
    num: int = 2000
    seed: int = 0
    metrics: tuple[str, ...] = METRICS
    features: str = "digits"
    mode: str = "clean"
    ref: str | None = None  # None: the model's default reference
    shard_size: int = 250

    def __post_init__(self) -> None:
        from .metrics.extractors import EXTRACTORS, MODES
        from .plan import S3

        super().__post_init__()
        check_count("--num", self.num, 1, MAX_EVAL_SAMPLES)
        check_count("--shard-size", self.shard_size, 1, MAX_SAMPLES)
        check_seeds(self.seed, self.num)
        for n in self.nfes:
            check_count("--nfe", n, 1, MAX_NFE)
        if self.schedule is not None and tuple(self.solvers) != (S3,):
            raise UsageError(f"--schedule runs as --solver s3, not {','.join(self.solvers)}; drop --solver (each "
                             "NFE's schedule is one solver)")
        cascade = self.cascade_spec
        if cascade is not None and not self.nfes:
            object.__setattr__(self, "nfes", (cascade.nfe,))
        if cascade is not None and tuple(self.nfes) != (cascade.nfe,):
            raise UsageError(f"--nfe {','.join(map(str, self.nfes))} differs from the cascade's {cascade.nfe} "
                             f"NFE ({cascade.label()}); drop --nfe")
        if not self.solvers or not self.nfes:
            raise UsageError("give at least one --solver and one --nfe")
        _parse_metrics(self.metrics)
        if self.features not in EXTRACTORS:
            raise unknown("feature extractor", self.features, EXTRACTORS)
        if self.mode not in MODES:
            raise unknown("mode", self.mode, MODES)
        for s in self.solvers:
            for n in self.nfes:
                self.spec(s, n)
        if self.ref is None and self.model not in DEFAULT_REFS:
            raise UsageError(f"model {self.model!r} has no default reference; give --ref (a folder, an .npz or a "
                             f"name made with 'samplebench refs make')")

    def spec(self, solver: str, nfe: int):
        """The run of one cell: ``plan.RunSpec`` with these options (built once per cell)."""
        from .plan import RunSpec

        specs = self.__dict__.setdefault("_specs", {})
        if (solver, nfe) not in specs:
            specs[solver, nfe] = RunSpec(**self.options(), solver=solver, nfe=nfe)
        return specs[solver, nfe]

    @property
    def reference(self) -> str:
        return self.ref or DEFAULT_REFS[self.model]

    @property
    def num_shards(self) -> int:
        return -(-self.num // self.shard_size)

    def settings(self) -> dict[str, Any]:
        """The settings as JSON values; the methods, a schedule and a negative prompt appear only when set (older
        jobs keep their keys)."""
        from .plan import OPTIONAL

        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
                if not (k in OPTIONAL and v == OPTIONAL[k])}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"samplebench": __version__}
    for p in ("torch", "diffusers", "clean-fid", "torchmetrics", "accelerate", "numpy", "scipy"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            pass
    return out


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sample_file(out: Path, solver: str, nfe: int, shard: int) -> Path:
    return out / "samples" / f"{solver}-nfe{nfe}" / f"shard-{shard:05d}.npz"


def feature_file(out: Path, features: str, mode: str, solver: str, nfe: int, shard: int) -> Path:
    return out / "features" / f"{features}-{mode}" / f"{solver}-nfe{nfe}" / f"shard-{shard:05d}.npz"


class _Job:
    def __init__(self, config: EvalConfig, out: Path, device: str | None):
        self.config, self.out, self.device = config, out, device
        self._models: dict[str, Any] = {}
        self._plans: dict[str, Any] = {}

    def sample_file(self, solver: str, nfe: int, shard: int) -> Path:
        return sample_file(self.out, solver, nfe, shard)

    def feature_file(self, solver: str, nfe: int, shard: int) -> Path:
        return feature_file(self.out, self.config.features, self.config.mode, solver, nfe, shard)

    def model(self, name: str | None = None):
        from .models import load_model

        name = name or self.config.model
        if name not in self._models:
            self._models[name] = load_model(name, device=self.device or "cpu", dtype=self.config.dtype)
        return self._models[name]

    def plan(self, solver: str, nfe: int):
        """The ``loop.Plan`` of one (solver, NFE), built once."""
        from .plan import plan

        if (solver, nfe) not in self._plans:
            spec = self.config.spec(solver, nfe)
            cascade = spec.cascade_spec  # a cascade's lower-stage model, loaded once for every cell
            low = self.model(cascade.low_model) if cascade is not None and cascade.low_model is not None else None
            self._plans[solver, nfe] = plan(self.model(), spec, low)
        return self._plans[solver, nfe]

    def sample_shard(self, solver_name: str, nfe: int, shard: int, process: int = 0) -> None:
        """Draw shard ``shard`` (its whole range up to ``num``) as one batch."""
        from .loop import to_uint8

        c = self.config
        lo, hi = shard * c.shard_size, min(c.num, (shard + 1) * c.shard_size)
        seeds = list(range(c.seed + lo, c.seed + hi))
        result = self.plan(solver_name, nfe).sample(seeds, batch_size=c.shard_size)
        path = self.sample_file(solver_name, nfe, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        work = {k: (result.compute or {}).get(k) or 0 for k in WORK}
        atomic_savez(path, images=to_uint8(result.images), seeds=np.array(seeds), nfe=result.nfe,
                     wall_time_s=result.wall_time_s, process=process, **work)

    def feature_shard(self, extractor, solver: str, nfe: int, shard: int, logits: bool) -> None:
        from .metrics.scores import extract

        with np.load(self.sample_file(solver, nfe, shard)) as z:
            images = z["images"]
        f = extract(images, extractor, logits=logits)
        path = self.feature_file(solver, nfe, shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"feats": f.feats} | ({"logits": f.logits} if logits else {})
        atomic_savez(path, **arrays)


WORK = ("blocks_evaluated", "blocks_full", "gflops", "gflops_full")  # compute counters summed over a shard


def _rows(path: Path, key: str) -> int:
    """Rows of a shard file that ``_check_shards`` has read; 0 when it does not exist."""
    if not path.exists():
        return 0
    with np.load(path) as z:
        return len(z[key])


def _check_shards(job: _Job) -> None:
    """Read every shard a resume would use (its arrays, their CRCs, its seeds). One that cannot be read is damaged
    and named with how to recover; shards appear whole (``files.atomic_write``), so damage comes from outside: a copy
    cut short, a disk. A shard holding part of its range is the start of a smaller job (it is completed); one
    holding other seeds belongs to another job."""
    c = job.config
    redo = "delete it and run the job again to redo that shard (the others are kept)"
    for s in c.solvers:
        for n in c.nfes:
            for j in range(c.num_shards):
                lo, hi = j * c.shard_size, (j + 1) * c.shard_size
                for path, keys in ((job.sample_file(s, n, j), ("images", "seeds", "nfe", "wall_time_s")),
                                   (job.feature_file(s, n, j), ("feats",))):
                    if not path.exists():
                        continue
                    try:
                        with np.load(path) as z:
                            arrays = {k: z[k] for k in keys}
                            if "logits" in z.files:
                                z["logits"]
                    except Exception as e:  # zipfile, zlib, pickle and format errors alike
                        raise damaged(path, describe(e), redo) from None
                    seeds = arrays.get("seeds")
                    if seeds is not None and not (0 < len(seeds) <= hi - lo and np.array_equal(
                            seeds, np.arange(c.seed + lo, c.seed + lo + len(seeds)))):
                        held = f"{seeds[0]}..{seeds[-1]}" if len(seeds) else "none"
                        raise UsageError(f"{str(path)!r} holds seeds {held}, which this job (--seed {c.seed}, "
                                         f"--shard-size {c.shard_size}) does not draw there; move it away or use "
                                         "another --out")


def _stored_rows(job: _Job, ref_sha256: str, resamples: int) -> dict[str, dict[str, Any]]:
    """The rows of ``results.json`` that still describe the job's shards, by their settings (as sorted JSON): scored
    against the same reference with the same bootstrap, in this folder, and written after every shard they read
    (a shard redrawn since makes its row stale)."""
    path = job.out / "results.json"
    try:
        stored = json.loads(path.read_text())
        written = path.stat().st_mtime_ns
    except (OSError, ValueError):
        return {}
    c = job.config
    found = {}
    for row in stored if isinstance(stored, list) else []:
        try:
            s, n = row["settings"]["solver"], row["settings"]["nfe"]
            fresh = (row["ref_sha256"] == ref_sha256 and row["interval_resamples"] == resamples
                     and row["out"] == str(job.out.resolve()) and all(
                         f.stat().st_mtime_ns <= written for j in range(c.num_shards)
                         for f in (job.sample_file(s, n, j), job.feature_file(s, n, j))))
        except (KeyError, TypeError, OSError):
            continue
        if fresh:
            found[json.dumps(row["settings"], sort_keys=True)] = row
    return found


def plan_fingerprints(job: _Job) -> dict[str, str]:
    """Per cell (``<solver>-nfe<k>``, as its samples folder), the fingerprint of its plan (``loop.Plan.fingerprint``):
    a learned grid or an S3 schedule (``--solver s3`` names the model's schedule of the day) is read from a file, so a
    resumed job checks that each cell's shards were drawn with what it would draw them with now."""
    c = job.config
    return {f"{s}-nfe{n}": job.plan(s, n).fingerprint() for s in c.solvers for n in c.nfes}


GROWS = ("num", "solvers", "nfes")  # settings a job may change when run again: it grows (or is scored in part)


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as compared between runs of a job: ``ref`` resolved to the model's default reference."""
    return {**settings, "ref": settings.get("ref") or DEFAULT_REFS.get(settings.get("model"))}


def _read_manifest(out: Path, config: EvalConfig, plans: dict[str, str]) -> dict[str, Any] | None:
    """The job's ``job.json``, checked against ``config`` without writing anything: a setting other than
    ``GROWS`` that differs is refused, naming it, and so is a cell whose plan fingerprint (``plans``) differs from
    the one its shards were drawn with; None for a new job."""
    manifest = out / "job.json"
    if not manifest.exists():
        return None
    try:
        job = json.loads(manifest.read_text())
        old = job["settings"]
        if not isinstance(old, dict):
            raise TypeError("settings is not an object")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise damaged(manifest, describe(e), "restore it, or remove the folder to start the job over") from None
    settings, held = _comparable(config.settings()), _comparable(old)
    diff = [k for k in dict.fromkeys([*settings, *held]) if k not in GROWS and held.get(k) != settings.get(k)]
    if diff:
        k = diff[0]
        raise UsageError(f"--out {str(out)!r} holds a job with {k}={held.get(k)!r}, not {settings.get(k)!r}; "
                         "use another --out, or the same settings to resume it (a job may change only --num, --solver "
                         "and --nfe)")
    from .plan import S3, load_schedule

    changed = [cell for cell, h in (job.get("plans") or {}).items() if plans.get(cell) not in (None, h)]
    if S3 in config.solvers:  # a job written before plan fingerprints holds its S3 schedules' own
        changed += [f"{S3}-nfe{n}" for n, h in (job.get("s3_schedules") or {}).items() if int(n) in config.nfes and
                    _key(load_schedule(config.model, S3, int(n), config.schedule).to_dict()) != h]
    if changed:
        solver, nfe = changed[0].rsplit("-nfe", 1)
        what = (f"another S3 schedule for model {config.model!r} at NFE {nfe} (the "
                f"{'--schedule file' if config.schedule else 'shipped one'} has changed since)" if solver == S3 else
                f"solver {solver!r} at NFE {nfe} on another time grid (its {config.time_grid or 'default'} grid has "
                "changed since: a learned grid recomputed or shipped anew)")
        raise UsageError(f"--out {str(out)!r} holds samples of {what}; use another --out or remove that folder")
    return job


def _write_manifest(out: Path, config: EvalConfig, job: dict[str, Any] | None, plans: dict[str, str]) -> None:
    """Record the job's settings (``num``: the most samples it has been asked for; ``solvers`` and ``nfes``: every
    one asked for) and each cell's plan fingerprint."""
    settings = config.settings()
    if job is not None:  # the most samples asked for, and every cell ever asked for
        settings["num"] = max(int(job["settings"].get("num") or 0), config.num)
        for key in ("solvers", "nfes"):
            settings[key] = list(dict.fromkeys([*(job["settings"].get(key) or []), *settings[key]]))
    record = {"settings": settings, "version": (job or {}).get("version", __version__),
              "plans": {**((job or {}).get("plans") or {}), **plans}}
    if record != job:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "job.json", json.dumps(record, indent=2))


def estimate(metric: str, feats: np.ndarray, ref) -> float:
    """The harness's FID (clean-fid's Fréchet distance) or KID (its seeded subset estimate) of ``feats``."""
    from .metrics import scores

    if metric == "fid":
        return scores.fid(*scores.statistics(feats), ref.mu, ref.sigma)
    return scores.kid(feats, ref.feats, num_subsets=KID_SUBSETS, max_subset_size=KID_SUBSET_SIZE, seed=METRIC_SEED)


def _need(c: EvalConfig, shard: int) -> int:
    """Samples shard ``shard`` holds in a job of ``c.num``."""
    return min(c.num, (shard + 1) * c.shard_size) - shard * c.shard_size


def _features_fresh(job, s: str, n: int, j: int, have: int, logits: bool) -> bool:
    ffile = job.feature_file(s, n, j)
    if not ffile.exists():
        return False
    with np.load(ffile) as z:
        return len(z["feats"]) == have and (not logits or "logits" in z.files)


def _cell_settings(c: EvalConfig, s: str, n: int) -> dict[str, Any]:
    """What a (solver, NFE) row records as its settings (and how a stored row is found again)."""
    schedule = c.spec(s, n).usf_schedule  # loaded once, with the spec
    return {**c.settings(), "solver": s, "nfe": n, **({"schedule": schedule.to_dict()} if schedule else {})}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def _forecast(job, todo: list, unscored: list, extractor, ref, resamples: int, processes: int) -> str:
    """The job's estimated time, from a probe: a batch of up to 32 images of its first cell sampled (after one
    warm-up draw) and their features extracted, and its intervals timed with 10 resamples on random features of
    the job's size."""
    from .metrics import intervals
    from .metrics.scores import extract
    from .loop import to_uint8

    c = job.config
    if not todo and not unscored:
        return f"eval {c.model}: every cell is sampled and scored; reading its numbers"
    sampled = featured = 0.0
    probe = list(range(c.seed, c.seed + min(32, c.num, c.shard_size)))  # a batch: per image, small ones cost more
    if todo:
        s, n = todo[0][0], todo[0][1]
        plan = job.plan(s, n)
        plan.sample(probe[:1])  # warm-up (the first call builds caches and counts FLOPs)
        t0 = time.perf_counter()
        images = plan.sample(probe, batch_size=len(probe)).images
        per_image_nfe = (time.perf_counter() - t0) / (len(probe) * max(n, 1))
        t0 = time.perf_counter()
        extract(to_uint8(images), extractor)
        per_feature = (time.perf_counter() - t0) / len(probe)
        sampled = sum(_need(c, j) * nfe for _, nfe, j in todo) * per_image_nfe
        featured = sum(_need(c, j) for _, _, j in todo) * per_feature
    dim = len(ref.mu)
    scored = 0.0
    if unscored and any(m in ("fid", "kid") for m in c.metrics):
        fake = np.random.default_rng(0).normal(size=(c.num, dim)) + ref.mu
        t0 = time.perf_counter()
        if "fid" in c.metrics:
            intervals.fid_interval(fake, ref.mu, ref.sigma, resamples=10)
        if "kid" in c.metrics and ref.feats is not None:
            intervals.kid_interval(fake, ref.feats, resamples=10)
        scored = (time.perf_counter() - t0) * resamples / 10 * len(unscored)
    each = f" (split over {processes} processes)" if processes > 1 else ""
    return (f"eval {c.model}: {len(c.solvers) * len(c.nfes)} cells x {c.num} samples; estimated "
            f"{_duration(sampled / processes)} sampling{each}, {_duration(featured / processes)} features, "
            f"{_duration(scored)} scoring ({resamples} bootstrap resamples per interval), "
            f"{_duration(sampled / processes + featured / processes + scored)} in all on this machine (from a "
            f"{len(probe)}-image probe)")


def _scores(feats: np.ndarray, logits: np.ndarray | None, ref, metrics: tuple[str, ...],
            resamples: int = RESAMPLES, progress=None) -> dict[str, float | None]:
    """FID, KID and IS of ``feats``, FID and KID with their 95% bootstrap intervals (``metrics.intervals``);
    ``progress(metric, done, total)`` as the intervals' resamples are done."""
    from .metrics import intervals, scores

    row: dict[str, float | None] = {"fid": None, "fid_low": None, "fid_high": None, "kid": None, "kid_low": None,
                                    "kid_high": None, "inception_score": None, "inception_score_std": None,
                                    "interval_level": intervals.LEVEL, "interval_resamples": resamples}
    if "fid" in metrics:
        row["fid"] = estimate("fid", feats, ref)
        iv = intervals.fid_interval(feats, ref.mu, ref.sigma, estimate=row["fid"], resamples=resamples,
                                    progress=None if progress is None else lambda k, t: progress("fid", k, t))
        row["fid_low"], row["fid_high"] = iv.low, iv.high
    if "kid" in metrics:
        if ref.feats is None:
            raise UsageError(f"reference {ref.name!r} has no features (its _kid.npz file), so KID cannot be computed")
        row["kid"] = estimate("kid", feats, ref)
        iv = intervals.kid_interval(feats, ref.feats, estimate=row["kid"], resamples=resamples,
                                    progress=None if progress is None else lambda k, t: progress("kid", k, t))
        row["kid_low"], row["kid_high"] = iv.low, iv.high
    if "is" in metrics:
        row["inception_score"], row["inception_score_std"] = scores.inception_score(
            logits, splits=min(IS_SPLITS, len(logits)), seed=METRIC_SEED)
    return row


def run_eval(config: EvalConfig, out: str | Path, *, device: str | None = None, db: str | Path | None = None,
             inception_weights: str | None = None, progress: bool = True,
             resamples: int = RESAMPLES) -> list[dict[str, Any]]:
    """Run (or resume) the job; on the main process, return the result rows (also in ``results.json`` and the
    database). Other processes of an ``accelerate launch`` return an empty list. ``resamples``: bootstrap resamples
    of the FID and KID intervals (they change no sample, so a job may be rescored with another count)."""
    import torch
    from accelerate import PartialState
    from tqdm import tqdm

    from .metrics.extractors import get_extractor
    from .metrics.reference import get_reference
    from .models import parse_device
    from .plan import S3
    from .results import ResultsDB

    from .metrics.intervals import LEVEL, check

    check(LEVEL, resamples)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} exists and is not a directory")
    if device is not None:
        parse_device(device)
    # without CUDA, processes started by accelerate (or torchrun) form a CPU group (gloo)
    state = PartialState(cpu=device == "cpu" or (device is None and not torch.cuda.is_available()))
    dev = device or str(state.device)
    c = config
    # everything that can fail on bad input fails here, before any sample is drawn
    extractor = get_extractor(c.features, c.mode, dev, inception_weights)
    ref = get_reference(c.reference, extractor) if state.is_main_process else None
    if state.is_main_process:
        ResultsDB.check(db)  # opened when the rows are ready: a failing job leaves no new database behind
    job = _Job(c, out, dev)
    for s in c.solvers:  # every cell planned against its models: one-line errors before anything is written
        for n in c.nfes:
            job.plan(s, n)
    if state.is_main_process:
        plans = plan_fingerprints(job)
        manifest = _read_manifest(out, c, plans)  # another job's folder is refused before anything is read as damaged
        _check_shards(job)  # a damaged file is named before anything is written
        _write_manifest(out, c, manifest, plans)
        for stale in out.rglob(".*.tmp"):  # a write cut short by a kill; its shard is redone below
            stale.unlink()
    state.wait_for_everyone()

    want_logits = "is" in c.metrics
    items = [(s, n, j) for s in c.solvers for n in c.nfes for j in range(c.num_shards)]
    mine = items[state.process_index::state.num_processes]
    todo = [(s, n, j) for s, n, j in mine if _rows(job.sample_file(s, n, j), "seeds") < _need(c, j)]
    pending = set(todo)
    stored = _stored_rows(job, ref.sha256, resamples) if state.is_main_process else {}
    cells = [(s, n, _cell_settings(c, s, n)) for s in c.solvers for n in c.nfes]
    show = progress and state.is_main_process
    if show:  # what the job will take, before it starts
        unscored = [(s, n) for s, n, key in cells if json.dumps(key, sort_keys=True) not in stored]
        print(_forecast(job, todo, unscored, extractor, ref, resamples, state.num_processes), file=sys.stderr,
              flush=True)
    bar = tqdm(mine, desc=f"eval {c.model}: sampling [process {state.process_index}]", unit="shard",
               disable=not show)
    for s, n, j in bar:
        if (s, n, j) in pending:  # missing, or the part a smaller job drew: drawn whole, as one batch like a fresh job's
            bar.set_postfix_str(f"{s} nfe={n} shard {j}")
            job.sample_shard(s, n, j, state.process_index)
    bar.close()
    state.wait_for_everyone()

    rows = []
    results_db = ResultsDB(db) if state.is_main_process else None
    intervals = sum(m in ("fid", "kid") for m in c.metrics)
    for s, n, settings in cells:
        row = stored.get(json.dumps(settings, sort_keys=True))
        shards = [j for (a, b, j) in mine if (a, b) == (s, n)]
        cell_bar = tqdm(total=len(shards) + 100 * intervals * (row is None), unit="%", disable=not show,
                        desc=f"score {s} nfe={n}: features", bar_format="{desc} |{bar}| {elapsed}")
        for j in shards:  # features of this process's shards (the main process scores them all)
            if not _features_fresh(job, s, n, j, _need(c, j), want_logits):
                job.feature_shard(extractor, s, n, j, want_logits)
            cell_bar.update(1)
        state.wait_for_everyone()
        if not state.is_main_process:
            continue
        if row is not None:  # a finished job read again: its numbers as scored, not a second bootstrap
            cell_bar.close()
            results_db.add(row)
            rows.append(row)
            continue
        done = {"fid": 0, "kid": 0}

        def moved(metric: str, k: int, total: int, bar=cell_bar, done=done) -> None:
            bar.set_description_str(f"score {s} nfe={n}: {metric.upper()} interval")
            step = int(100 * k / total) - done[metric]
            done[metric] += step
            bar.update(step)

        t0 = time.perf_counter()
        feats, logits, seeds, wall, nfe = [], [], [], 0.0, None
        work = dict.fromkeys(WORK, 0.0)
        for j in range(c.num_shards):
            need = _need(c, j)
            with np.load(job.feature_file(s, n, j)) as z:
                feats.append(z["feats"][:need])
                logits.append(z["logits"][:need] if want_logits else None)
            with np.load(job.sample_file(s, n, j)) as z:
                seeds.append(z["seeds"][:need])
                share = need / len(z["seeds"])  # a shard read in part: its time and work prorated
                wall += float(z["wall_time_s"]) * share
                nfe = int(z["nfe"])
                for k in work:
                    work[k] += float(z[k]) * share if k in z.files else 0.0
        row = {"model": c.model, "solver": s, "time_grid": "s3" if s == S3 else c.time_grid, "nfe": nfe,
               "seed": c.seed, "num_samples": c.num, "seeds": format_seeds(np.concatenate(seeds)),
               "compute": c.compute_label,
               "block_fraction": work["blocks_evaluated"] / work["blocks_full"] if work["blocks_full"] else None,
               "flop_fraction": work["gflops"] / work["gflops_full"] if work["gflops_full"] else None,
               "gflops_per_sample": work["gflops"] / c.num if work["gflops_full"] else None,
               **_scores(np.concatenate(feats), np.concatenate(logits) if want_logits else None, ref, c.metrics,
                         resamples, progress=moved),
               "extractor": c.features, "mode": c.mode, **ref.describe(), "wall_time_s": wall,
               "eval_time_s": time.perf_counter() - t0, "num_processes": state.num_processes,
               "out": str(out.resolve()), "versions": package_versions(), "settings": settings}
        row["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        row["run_key"] = _key(row["out"], c.settings(), s, n, ref.sha256)
        cell_bar.close()
        results_db.add(row)
        rows.append(row)
    if not state.is_main_process:
        return []
    atomic_write(out / "results.json", json.dumps(rows, indent=2))
    results_db.close()
    return rows


def eval_folder(folder: str | Path, *, ref: str, features: str = "digits", mode: str = "clean",
                metrics: tuple[str, ...] = METRICS, device: str = "cpu", db: str | Path | None = None,
                inception_weights: str | None = None, resamples: int = RESAMPLES) -> dict[str, Any]:
    """Score a folder of images against a reference; the row also goes to the database. The seeds that
    ``samplebench sample`` writes into its PNGs are kept, so two folders can be compared paired."""
    from .metrics.extractors import get_extractor
    from .metrics.images import load_folder
    from .metrics.reference import get_reference
    from .metrics.scores import extract
    from .results import ResultsDB

    from .metrics.intervals import LEVEL, check

    check(LEVEL, resamples)
    metrics = _parse_metrics(metrics)
    images, seeds = load_folder(folder, with_seeds=True)
    extractor = get_extractor(features, mode, device, inception_weights)
    reference = get_reference(ref, extractor)
    ResultsDB.check(db)
    t0 = time.perf_counter()
    f = extract(images, extractor, logits="is" in metrics)
    row = {"model": str(Path(folder).resolve()), "solver": None, "time_grid": None, "nfe": None, "seed": None,
           "num_samples": len(images), "seeds": None if seeds is None else format_seeds(seeds),
           **_scores(f.feats, f.logits, reference, metrics, resamples), "extractor": features,
           "mode": mode, **reference.describe(), "wall_time_s": None, "eval_time_s": time.perf_counter() - t0,
           "num_processes": 1, "out": None, "versions": package_versions(),
           "settings": {"folder": str(Path(folder).resolve()), "metrics": list(metrics)},
           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    row["run_key"] = _key("folder", row["model"], hashlib.sha256(images.tobytes()).hexdigest(), features, mode,
                          reference.sha256, list(metrics))
    results_db = ResultsDB(db)
    results_db.add(row)
    results_db.close()
    return row
