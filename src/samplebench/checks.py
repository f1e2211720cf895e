"""Checks of user input shared by the command line, the library configs and the app: ranges, finiteness, seeds and
output paths, each failing with one ``UsageError`` line that names the bad value and what would be valid."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import UsageError

__all__ = ["MAX_SEED", "MAX_NFE", "MAX_SAMPLES", "MAX_EVAL_SAMPLES", "MAX_BUDGET", "check_count", "check_float",
           "check_seeds", "check_out_dir", "check_out_file"]

MAX_SEED = 2**64 - 1  # the range of torch.Generator.manual_seed for non-negative seeds
MAX_NFE = 10_000  # network evaluations per sample (a grid of MAX_NFE + 1 times is the largest allocated)
MAX_SAMPLES = 100_000  # images of one ``sample`` run, held in memory (``eval`` shards larger runs)
MAX_EVAL_SAMPLES = 10_000_000  # samples per (solver, NFE) of an evaluation job (written in shards)
MAX_BUDGET = 10_000_000  # network evaluations of one alignment run


def check_count(name: str, value: Any, lo: int = 1, hi: int | None = None) -> int:
    """``value`` as a whole number in lo..hi."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or isinstance(value, float) and (
            not math.isfinite(value) or value != int(value)):
        raise UsageError(f"{name} {value!r} is not a whole number")
    v = int(value)
    if v < lo:
        raise UsageError(f"{name} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise UsageError(f"{name} must be <= {hi}, got {v}")
    return v


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] (open ends with ``lo_open``, ``hi_open``)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} {value!r} is not a number") from None
    low_ok = lo is None or (v > lo if lo_open else v >= lo)
    high_ok = hi is None or (v < hi if hi_open else v <= hi)
    if not math.isfinite(v) or not (low_ok and high_ok):
        bounds = (f"{'(' if lo_open else '['}{'-inf' if lo is None else f'{lo:g}'}, "
                  f"{'inf' if hi is None else f'{hi:g}'}{')' if hi_open or hi is None else ']'}")
        raise UsageError(f"{name} {value!r} is not valid; give a finite number in {bounds}")
    return v


def check_seeds(seed: Any, num: int, name: str = "--seed") -> int:
    """A first seed such that seeds seed .. seed + num - 1 all fit a generator (0..2**64 - 1)."""
    seed = check_count(name, seed, 0)
    if seed + num - 1 > MAX_SEED:
        raise UsageError(f"{name} {seed} with {num} samples runs past the largest seed 2**64 - 1; valid: "
                         f"0..{MAX_SEED - num + 1}")
    return seed


def _check_base(path: Path, folder: Path, name: str) -> None:
    """The deepest existing part of ``folder`` (where ``path`` would be made) is a writable folder."""
    base = folder
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise UsageError(f"{name} {str(path)!r} lies under {str(base)!r}, which is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UsageError(f"{name} {str(path)!r}: {str(base)!r} is not writable")
    # os.access answers yes for root everywhere, /proc and /sys included: a file made and removed at once tells (and
    # the folder keeps its times, so a refused command leaves the tree as it was)
    import tempfile

    try:
        times = base.stat()
        fd, probe = tempfile.mkstemp(prefix=".samplebench-probe-", suffix=".tmp", dir=base)
        os.close(fd)
        os.unlink(probe)
        os.utime(base, ns=(times.st_atime_ns, times.st_mtime_ns))
    except OSError as e:
        raise UsageError(f"{name} {str(path)!r}: {str(base)!r} cannot hold files ({e.strerror or e})") from None


def check_out_dir(path: str | Path, name: str = "--out") -> Path:
    """A folder that exists or can be made: every existing part of the path is a folder and the deepest one is
    writable. Nothing is created."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{name} {str(path)!r} exists and is not a folder")
    _check_base(path, path, name)
    return path


def check_out_file(path: str | Path, name: str = "--out") -> Path:
    """A file path that can be written: not a folder, its folder exists or can be made. Nothing is created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{name} {str(path)!r} is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{name} {str(path)!r} is not writable")
    _check_base(path, path.parent, name)
    return path
