#!/usr/bin/env python3
"""Docker HEALTHCHECK probe: exit 0 if wsgiloop answers HTTP on this container's port.

The slim base image has no curl, and a Python one-liner in the Dockerfile is unreadable, so this
small script uses urllib. Any answer below 500 counts as healthy: a 404, 401 or redirect on the
probed path still proves the server and the app are serving; a 5xx, a refused connection or a
timeout does not. HEALTHCHECK_URL overrides the URL (point it at a cheap view such as /healthz).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Report a redirect instead of following it: it is an answer, and may point elsewhere."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def main() -> int:
    url = os.environ.get("HEALTHCHECK_URL", "http://127.0.0.1:8000/")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=4) as response:
            status: int = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:  # refused, reset, timed out
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status >= 500:
        print(f"unhealthy: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
