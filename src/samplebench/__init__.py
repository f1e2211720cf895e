"""samplebench: a workbench for sampling from pretrained diffusion models.

``samplebench.sample(...)``, ``samplebench.fid(...)`` and ``samplebench.kid(...)`` are the one-call API (``api.py``); importing the package
itself loads nothing heavy.
"""

__version__ = "0.1.0"
__all__ = ["sample", "fid", "kid", "__version__"]


def __getattr__(name: str):
    if name in ("sample", "fid", "kid"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'samplebench' has no attribute {name!r}")
