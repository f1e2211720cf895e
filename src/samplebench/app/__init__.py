"""The Gradio app, ``samplebench app``: compare samplers on the same seeds, try each method, browse results.

``core`` holds what the callbacks do as plain library calls; ``ui`` lays them out. Requests queue with bounded
concurrency, each borrows its own model instance, and bad input shows its one-line message in the page.
"""

from __future__ import annotations

import os

__all__ = ["serve"]


def serve(host: str = "127.0.0.1", port: int = 7860, db: str | None = None, concurrency: int = 2,
          queue_size: int = 32, device: str = "cpu") -> None:
    """Serve the app until interrupted (localhost by default; ``host=0.0.0.0`` shares it on the network)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ..errors import UsageError
    from ..models import parse_device
    from ..results import ResultsDB
    from .ui import CSS, App, build

    if concurrency < 1:
        raise UsageError(f"--concurrency must be >= 1, got {concurrency}")
    if not 0 < port < 65536:
        raise UsageError(f"--port must be from 1 to 65535, got {port}")
    parse_device(device)
    ResultsDB(db).close()  # a clear error now for a path that is not a results database
    app = App(db=db, device=device)
    demo = build(app).queue(default_concurrency_limit=concurrency, max_size=queue_size)
    try:
        demo.launch(server_name=host, server_port=port, css=CSS, allowed_paths=[str(app.scratch)],
                    footer_links=[], ssr_mode=False, show_error=False)
    except OSError as e:
        raise UsageError(f"cannot serve on {host}:{port} ({e})") from None
    finally:
        app.close()
