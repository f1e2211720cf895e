"""The Gradio app, ``samplebench app``: compare samplers on the same seeds, try each method, browse results.

``core`` holds what the callbacks do as plain library calls; ``ui`` lays them out. Requests queue with bounded
concurrency, each borrows its own model instance, and bad input shows its one-line message in the page.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["serve", "launch"]


def serve(host: str = "127.0.0.1", port: int = 7860, db: str | None = None, concurrency: int = 2,
          queue_size: int = 32, device: str = "cpu", models: Sequence[str] = (), any_model: bool = False) -> None:
    """Serve the app until interrupted (localhost by default; ``host=0.0.0.0`` shares it on the network).

    Requests may load the embedded models and ``models`` (local pipeline folders or hub ids the operator offers);
    ``any_model`` lets them name any hub id or server folder."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..errors import UsageError
    from ..models import parse_device
    from ..models.embedded import EMBEDDED
    from ..results import ResultsDB
    from .core import Limits
    from .ui import App

    if concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    if not 0 < port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, got {port}")
    parse_device(device)
    ResultsDB(db).close()  # a clear error now for a path that is not a results database
    for m in models:
        if m not in EMBEDDED and not Path(m).is_dir() and (m.count("/") != 1 or m.startswith((".", "/"))):
            raise UsageError(f"--models {m!r} is neither a folder nor a hub id (owner/name)")
    offered = None if any_model else tuple(dict.fromkeys([*EMBEDDED, *models]))
    app = App(db=db, device=device, limits=Limits(models=offered))
    try:
        launch(app, host, port, concurrency, queue_size)
    except OSError as e:
        raise UsageError(f"cannot serve on {host}:{port} ({e})") from None
    finally:
        app.close()


def launch(app, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 2, queue_size: int = 32,
           block: bool = True):
    """Serve ``app`` (a ``ui.App``): bounded queue, no error details for the browser, uploads capped at the
    app's limit. ``block=False`` returns the running Blocks at once (close it with ``.close()``)."""
    from .ui import CSS, build

    demo = build(app).queue(default_concurrency_limit=concurrency, max_size=queue_size)
    demo.launch(server_name=host, server_port=port, css=CSS, allowed_paths=[str(app.scratch)], footer_links=[],
                ssr_mode=False, show_error=False, max_file_size=app.limits.upload_bytes,
                prevent_thread_lock=not block, quiet=not block)
    return demo
