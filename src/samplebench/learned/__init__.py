"""Learned and optimised time grids as named grids every registry solver can use: ``--time-grid gits``, ``dmn``,
``ld3`` (``sampling.solver_grid`` asks ``learned_grid``).

- ``dmn`` (``dmn.py``) is a pure function of the schedule's lambda range, the step count and the solver's per-step
  orders: computed when asked (milliseconds to seconds), no network evaluation.
- ``gits`` (``gits.py``) needs one teacher pass per model (256 trajectories on a 60-step fine grid): its cost matrix
  serves every step count. ``ld3`` (``ld3.py``) is trained per solver and NFE.

A model folder ships its grids in ``<folder>/grids/`` (``gits.json``: the fine grid and cost matrix; ``ld3/<solver>-
nfe<k>.json``: the grid), as the embedded models do; for any other model they are computed on first use, with a
progress bar and the cost printed, and cached under ``cache_dir()/grids/<model key>/``. Every file holds the
provenance: method, model, schedule, hyper-parameters, seeds, network evaluations and wall time.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any

import torch

from ..errors import UsageError, unknown
from .store import _must_compute, _read, _write, grid_cost, grid_file, model_key, stored_only

__all__ = ["LEARNED", "learned_grid", "learned_solver", "grid_file", "grid_cost", "model_key", "stored_only"]

LEARNED = ("gits", "dmn", "ld3")
def _latent(model) -> bool:
    return bool(model.latent)


@functools.lru_cache(maxsize=256)
def _dmn(schedule_key: str, schedule, solver: str, steps: int, p: float, init: str) -> tuple[tuple[float, ...], str]:
    from .dmn import dmn_grid

    grid, info = dmn_grid(schedule, solver, steps, p=p, init=init)
    return tuple(grid.tolist()), json.dumps(info)


def gits_record(model, *, progress: bool = True) -> dict[str, Any]:
    """The model's GITS teacher costs: shipped, cached, or computed now (then cached, its cost printed)."""
    from ..samplers.grids import make_grid
    from . import gits

    record = _read(model, "gits.json")
    if record is not None:
        return record
    _must_compute(model, "GITS")
    fine = make_grid(model.schedule, model.default_grid or "karras", gits.FINE_STEPS)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=gits.WARMUP, unit="trajectory", desc=f"GITS teacher for {model.name}", file=sys.stderr)
    cost, info = gits.teacher_costs(model, fine, progress=(lambda done, total: bar.update(done - bar.n)) if bar else None)
    if bar is not None:
        bar.close()
    record = {"method": "gits", "model": str(model.name), "schedule": model.schedule.to_config(),
              "fine_grid": fine.tolist(), "fine_grid_kind": model.default_grid or "karras", "coeff": gits.COEFF,
              "cost": cost.tolist(), **info}
    path = _write(model, "gits.json", record)
    print(f"GITS: {info['network_evaluations']:,} network evaluations in {info['teacher_wall_time_s']:.1f} s for "
          f"model {model.name!r}; cached at {path}", file=sys.stderr)
    return record


def learned_grid(model, solver, steps: int, kind: str, *, progress: bool = True) -> torch.Tensor:
    """The ``kind`` grid (``gits``, ``dmn``, ``ld3``) of ``steps`` steps for registry solver ``solver`` (a
    ``SolverSpec``) on ``model``."""
    import numpy as np

    if kind == "dmn":
        latent = _latent(model)
        key = json.dumps(model.schedule.to_config(), sort_keys=True)
        grid, _ = _dmn(key, model.schedule, solver.name, steps, 2.0 if latent else 1.0,
                       "time-uniform" if latent else "logsnr")
        return torch.tensor(grid, dtype=torch.float64)
    if kind == "gits":
        from .gits import gits_grid

        record = gits_record(model, progress=progress)
        fine = torch.tensor(record["fine_grid"], dtype=torch.float64)
        cost = np.asarray(record["cost"])
        if not np.abs(cost).max() > 1e-12 * max(1.0, float(np.abs(np.diag(cost, 1)).max(initial=0.0))):
            raise UsageError(f"GITS costs are all zero for model {model.name!r}: its teacher trajectories are straight "
                             "lines, so every grid is as good (use logsnr or karras)")
        if steps > len(fine) - 1:
            raise UsageError(f"GITS chooses among {len(fine) - 1} fine steps; {steps} steps are more (use NFE at most "
                             f"{len(fine) - 1} per step)")
        return gits_grid(fine, cost, steps, record.get("coeff", 1.15))
    if kind == "ld3":
        from .ld3 import ld3_record

        return torch.tensor(ld3_record(model, solver, steps, progress=progress)["grid"], dtype=torch.float64)
    raise unknown("learned grid", kind, LEARNED)


def learned_solver(model, solver, grid: torch.Tensor, kind: str):
    """``solver`` as it runs on its learned ``kind`` grid: LD3's with the network at its learned input times."""
    if kind != "ld3":
        return solver
    from .ld3 import ld3_record, time_mapped

    record = ld3_record(model, solver, len(grid) - 1)
    if record.get("model_times") in (None, record["grid"]):
        return solver
    return time_mapped(solver, grid, record["model_times"])
