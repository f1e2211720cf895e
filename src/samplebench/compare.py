"""``samplebench compare A B``: the difference of two runs' FID or KID with its bootstrap interval.

A run is named by
- a row id of the results database (``samplebench runs`` lists them): an ``eval`` job's (solver, NFE), or an
  ``eval --folder`` folder;
- an ``eval`` job folder (its ``--out``), as ``JOB`` when it holds one (solver, NFE), else ``JOB:SOLVER:NFE``;
- a folder of images, e.g. the output of ``samplebench sample`` (its PNGs carry their seeds).

Both runs must be scored in one feature space against one reference. Runs that hold the same seeds are compared
paired (``metrics.intervals.compare``), others unpaired, and the result says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UsageError

__all__ = ["Run", "load_run", "compare_runs"]


@dataclass
class Run:
    label: str
    feats: np.ndarray
    seeds: np.ndarray | None
    ref: str | None  # the reference it was scored against (None: give one)
    extractor: str
    mode: str


def _job_run(job: Path, selector: str | None) -> Run:
    from .evaluate import DEFAULT_REFS, feature_file, sample_file

    settings = json.loads((job / "job.json").read_text())["settings"]
    cells = [(s, n) for s in settings["solvers"] for n in settings["nfes"]]
    if selector is not None:
        solver, _, nfe = selector.rpartition(":")
        try:
            cell = (solver, int(nfe))
        except ValueError:
            cell = None
        if cell not in cells:
            from .names import nearest

            valid = [f"{job}:{s}:{n}" for s, n in cells]
            raise UsageError(f"job {str(job)!r} has no run {selector!r}{nearest(f'{job}:{selector}', valid)}; "
                             f"valid: {', '.join(valid)}")
    elif len(cells) == 1:
        cell = cells[0]
    else:
        valid = ", ".join(f"{job}:{s}:{n}" for s, n in cells)
        raise UsageError(f"job {str(job)!r} holds {len(cells)} runs; name one: {valid}")
    solver, nfe = cell
    extractor, mode = settings["features"], settings["mode"]
    shards = -(-settings["num"] // settings["shard_size"])
    feats, seeds = [], []
    for j in range(shards):
        fpath, spath = feature_file(job, extractor, mode, solver, nfe, j), sample_file(job, solver, nfe, j)
        if not fpath.exists() or not spath.exists():
            raise UsageError(f"job {str(job)!r} is not finished ({fpath.name} of {solver} at NFE {nfe} is missing); "
                             f"run its eval again to finish it")
        with np.load(fpath) as z:
            feats.append(z["feats"])
        with np.load(spath) as z:
            seeds.append(z["seeds"])
    ref = settings.get("ref") or DEFAULT_REFS.get(settings["model"])
    return Run(f"{settings['model']} {solver} NFE {nfe} ({job})", np.concatenate(feats), np.concatenate(seeds), ref,
               extractor, mode)


def _folder_run(folder: Path, extractor: str, mode: str, device: str, inception_weights: str | None) -> Run:
    from .metrics.extractors import get_extractor
    from .metrics.images import load_folder
    from .metrics.scores import extract

    images, seeds = load_folder(folder, with_seeds=True)
    feats = extract(images, get_extractor(extractor, mode, device, inception_weights)).feats
    return Run(f"folder {folder}", feats, seeds, None, extractor, mode)


def load_run(spec: str, *, db: str | Path | None = None, features: str = "digits", mode: str = "clean",
             device: str = "cpu", inception_weights: str | None = None) -> Run:
    """The features and seeds of the run ``spec`` names (see the module docstring)."""
    from .results import ResultsDB

    path = Path(spec)
    if spec.isdigit() and not path.exists():
        results = ResultsDB(db)
        try:
            rows = results.conn.execute("SELECT out, solver, settings, extractor, mode, ref FROM runs WHERE id = ?",
                                        (int(spec),)).fetchall()
        finally:
            results.close()
        if not rows:
            raise UsageError(f"no run with id {spec} in {str(results.path)!r} (see 'samplebench runs')")
        out, solver, settings, extractor, mode_, ref = rows[0]
        settings = json.loads(settings or "{}")
        where = settings.get("folder") or out
        if where is None:
            raise UsageError(f"run {spec} has no job folder or image folder to read its samples from")
        if not Path(where).exists():
            raise UsageError(f"run {spec}'s samples are gone ({where})")
        if "folder" in settings:
            run = _folder_run(Path(where), extractor, mode_, device, inception_weights)
            run.ref = ref
            return run
        return _job_run(Path(where), f"{solver}:{settings['nfe']}")
    job, selector = path, None
    if not path.exists() and spec.count(":") >= 2:
        head, solver, nfe = spec.rsplit(":", 2)
        job, selector = Path(head), f"{solver}:{nfe}"
    if (job / "job.json").is_file():
        return _job_run(job, selector)
    if path.is_dir():
        return _folder_run(path, features, mode, device, inception_weights)
    raise UsageError(f"{spec!r} is not a run: give a results-database id, an eval job folder (JOB or "
                     f"JOB:SOLVER:NFE) or a folder of images")


def compare_runs(spec_a: str, spec_b: str, *, metric: str = "fid", ref: str | None = None,
                 db: str | Path | None = None, features: str = "digits", mode: str = "clean", device: str = "cpu",
                 inception_weights: str | None = None, level: float | None = None,
                 resamples: int | None = None) -> tuple[Run, Run, object]:
    """(run A, run B, ``metrics.intervals.Difference`` of A - B) for two named runs."""
    from .evaluate import estimate
    from .metrics import intervals
    from .metrics.extractors import get_extractor
    from .metrics.reference import get_reference

    if metric not in ("fid", "kid"):
        raise UsageError(f"unknown metric {metric!r} to compare; valid: fid, kid")
    level = intervals.LEVEL if level is None else level
    resamples = intervals.RESAMPLES if resamples is None else resamples
    intervals.check(level, resamples)
    a, b = (load_run(s, db=db, features=features, mode=mode, device=device, inception_weights=inception_weights)
            for s in (spec_a, spec_b))
    if (a.extractor, a.mode) != (b.extractor, b.mode):
        raise UsageError(f"the runs use different features ({a.extractor}/{a.mode} vs {b.extractor}/{b.mode}); "
                         f"compare runs scored alike")
    refs = {r for r in (ref, a.ref, b.ref) if r is not None}
    if len(refs) > 1:
        raise UsageError(f"the runs were scored against different references ({', '.join(sorted(refs))}); "
                         f"compare runs against one reference")
    if not refs:
        raise UsageError("neither run names its reference; give --ref")
    reference = get_reference(refs.pop(), get_extractor(a.extractor, a.mode, device, inception_weights))
    if metric == "kid" and reference.feats is None:
        raise UsageError(f"reference {reference.name!r} has no features (its _kid.npz file), so KID cannot be compared")
    estimates = tuple(estimate(metric, r.feats, reference) for r in (a, b))
    diff = intervals.compare(a.feats, b.feats, metric=metric, seeds_a=a.seeds, seeds_b=b.seeds, mu_ref=reference.mu,
                             sigma_ref=reference.sigma, ref_feats=reference.feats, estimates=estimates,
                             level=level, resamples=resamples)
    return a, b, diff
