"""Where samplebench keeps what it computes once: reference statistics, Inception weights, the results database."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "CACHE_ENV"]

CACHE_ENV = "SAMPLEBENCH_CACHE"


def cache_dir() -> Path:
    """``$SAMPLEBENCH_CACHE``, else ``$XDG_CACHE_HOME/samplebench``, else ``~/.cache/samplebench``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "samplebench"
