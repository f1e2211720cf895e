"""Writes that appear whole or not at all: a temporary file beside the target (``.<name>.<pid>.tmp``), then a rename.
A process killed mid-write leaves only such a temporary file, which the next run may delete."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

__all__ = ["atomic_write", "atomic_savez", "earlier_run", "GRID_MARKER"]


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


def earlier_run(out: str | Path, overwrite: bool) -> list[Path]:
    """The files of an earlier ``sample`` run in ``out`` that a new run there replaces, checked before any work.

    An empty or missing folder gives ``[]``. A folder that holds anything is refused unless ``overwrite``; then it
    must hold an earlier run (its ``summary.json``), and only what that run wrote is returned: its images, grid,
    ``samples.npz`` and the summary. Other files stay, untouched."""
    import json

    from .checks import check_out_dir
    from .errors import UsageError

    out = check_out_dir(out)
    if not out.is_dir():
        return []
    entries = [p for p in out.iterdir() if not (p.name.startswith(".") and p.name.endswith(".tmp"))]
    if not entries:
        return []
    if not overwrite:
        raise UsageError(f"--out {str(out)!r} is not empty; give an empty or new folder, or --overwrite to replace "
                         "the earlier run there (only the files its summary.json lists)")
    summary = out / "summary.json"
    if not summary.is_file():
        raise UsageError(f"--out {str(out)!r} holds files that no samplebench run wrote (no summary.json), so "
                         "--overwrite removes nothing there; give an empty or new folder")
    try:
        s = json.loads(summary.read_text())
        names = [*s["images"], s.get("grid", "grid.png")]
        if not all(isinstance(n, str) for n in names):
            raise TypeError
    except (OSError, ValueError, TypeError, KeyError):
        raise UsageError(f"{str(summary)!r} is damaged (not a samplebench summary), so --overwrite cannot tell what "
                         "the earlier run wrote; remove the folder or give another one") from None
    files = [out / n for n in [*names, "samples.npz", "summary.json"] if Path(n).name == n and n not in ("", ".", "..")]
    return [f for f in dict.fromkeys(files) if f.is_file()]
