"""Writes that appear whole or not at all: a temporary file beside the target (``.<name>.<pid>.tmp``), then a rename.
A process killed mid-write leaves only such a temporary file, which the next run may delete."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "atomic_savez", "GRID_MARKER"]


def atomic_write(path: str | Path, data: bytes | str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.replace(path)


def atomic_savez(path: str | Path, *, compressed: bool = False, **arrays) -> None:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    atomic_write(path, buf.getvalue())


GRID_MARKER = "samplebench-grid"  # the PNG text key of the labelled grid that ``sample`` writes beside its images
