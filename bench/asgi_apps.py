"""The apps of ``apps`` wrapped for ASGI servers (uvicorn) with a2wsgi's ``WSGIMiddleware``.

The middleware runs the WSGI app on its own thread pool; its size comes from the environment
variable ``BENCH_THREADS`` (set by ``bench/run`` to the same ``--threads`` every server gets).
Attributes are built on first access, so a server started with ``asgi_apps:hello`` creates only
one middleware and one pool.
"""

from __future__ import annotations

import os
from typing import Any

import apps


def __getattr__(name: str) -> Any:
    if name not in apps.APPS and name not in apps.FRAMEWORK_APPS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from a2wsgi import WSGIMiddleware  # imported lazily: only the bench venv has it

    middleware = WSGIMiddleware(
        getattr(apps, name), workers=int(os.environ.get("BENCH_THREADS", "8"))
    )
    globals()[name] = middleware
    return middleware
