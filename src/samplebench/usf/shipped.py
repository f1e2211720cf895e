"""Searched S3 schedules that ship with a model: ``<model folder>/s3/nfe<k>.json``.

Embedded models keep theirs in ``samplebench/weights/<name>/s3``; a local diffusers pipeline directory may hold an
``s3/`` folder too (``samplebench search --out DIR`` writes ``DIR/s3``, ready to copy there).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import UsageError

__all__ = ["S3_FOLDER", "s3_folder", "s3_nfes", "s3_schedule_path"]

S3_FOLDER = "s3"


def s3_folder(model: str) -> Path | None:
    """The folder of ``model``'s shipped S3 schedules (it may not exist), or None for a hub id."""
    from ..models.embedded import EMBEDDED, WEIGHTS

    if model in EMBEDDED:
        return WEIGHTS / model / S3_FOLDER
    return Path(model) / S3_FOLDER if Path(model).is_dir() else None


def s3_nfes(model: str) -> list[int]:
    folder = s3_folder(model)
    if folder is None or not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.glob("nfe*.json") if (m := re.fullmatch(r"nfe(\d+)\.json", p.name)))


def s3_schedule_path(model: str, nfe: int) -> Path:
    """The shipped schedule for (model, NFE), or a ``UsageError`` that says what exists and how to search one."""
    folder = s3_folder(model)
    if folder is not None and (folder / f"nfe{nfe}.json").is_file():
        return folder / f"nfe{nfe}.json"
    have = s3_nfes(model)
    shipped = f"shipped NFEs: {', '.join(map(str, have))}" if have else "it ships none"
    raise UsageError(f"no S3 schedule for model {model!r} at --nfe {nfe} ({shipped}); search one with "
                     f"'samplebench search --model {model} --nfe {nfe} --out DIR', then sample with "
                     f"--schedule DIR/s3/nfe{nfe}.json")
