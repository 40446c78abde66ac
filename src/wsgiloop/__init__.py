"""wsgiloop: a WSGI server with h11 on an asyncio event loop and apps on a thread pool."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "serve"]


def serve(app: Any, host: str = "127.0.0.1", port: int = 8000, **options: Any) -> int:
    """Serve ``app`` until SIGINT/SIGTERM. ``options`` are ``Config`` fields (``threads=8``...).

    ``bind=[...]`` replaces ``host``/``port``; returns the exit status.
    """
    from .config import Config
    from .logs import configure
    from .server import run

    if "bind" not in options:
        options["bind"] = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config = Config(**options).validate()
    configure(config.log_level, config.access_log)
    return run(app, config)
