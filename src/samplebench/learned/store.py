"""Where learned grids live: shipped in a model folder (``<folder>/grids/``) or cached (``cache_dir()/grids/<model
key>/``), each file with its provenance and cost; ``stored_only`` forbids computing one."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import UsageError

__all__ = ["GRIDS_FOLDER", "stored_only", "model_key", "grid_file", "grid_cost"]

GRIDS_FOLDER = "grids"
_COMPUTE = contextvars.ContextVar("samplebench_compute_learned_grids", default=True)


@contextlib.contextmanager
def stored_only() -> Iterator[None]:
    """Inside, GITS and LD3 grids that are neither shipped nor cached are refused instead of computed (the app: a
    request never starts a teacher pass or a training)."""
    token = _COMPUTE.set(False)
    try:
        yield
    finally:
        _COMPUTE.reset(token)


def _must_compute(model, what: str) -> None:
    if not _COMPUTE.get():
        raise UsageError(f"the {what} grid of model {model.name!r} is not computed yet; compute it once with "
                         f"'samplebench sample --model {model.name} --time-grid ...' (it is then cached)")


def model_key(model) -> str:
    """A cache key of what determines a model's learned grids: its name or folder, schedule and sample shape."""
    name = str(Path(model.name).resolve()) if Path(str(model.name)).is_dir() else str(model.name)
    text = json.dumps([name, model.schedule.to_config(), list(model.sample_shape)], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def grid_file(model, name: str) -> tuple[Path | None, Path]:
    """Where a learned-grid file ``name`` ships with the model (or None) and where it is cached."""
    shipped = model.directory / GRIDS_FOLDER / name if model.directory is not None else None
    from ..cache import cache_dir

    return shipped, cache_dir() / GRIDS_FOLDER / model_key(model) / name


def _read(model, name: str) -> dict[str, Any] | None:
    for path in grid_file(model, name):
        if path is not None and path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise UsageError(f"learned grid file {str(path)!r} is damaged ({e}); delete it to compute it "
                                 "again") from None
    return None


def grid_cost(model, name: str) -> dict[str, float] | None:
    """What the shipped or cached learned-grid file ``name`` cost to make: network evaluations (teacher, forward,
    with gradients) and wall time (LD3's includes its teacher's, GITS's is its teacher pass); None if absent."""
    record = _read(model, name)
    if record is None:
        return None
    keys = ("network_evaluations", "teacher_network_evaluations", "network_evaluations_forward",
            "network_evaluations_backward")
    return {"network_evaluations": sum(record.get(k, 0) for k in keys),
            "wall_time_s": record["wall_time_s"] if record.get("method") == "ld3" else record["teacher_wall_time_s"]}


def _write(model, name: str, record: dict[str, Any]) -> Path:
    from ..files import atomic_write

    path = grid_file(model, name)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=1))
    return path
