"""Start cheroot's WSGI server the way ``python -m cheroot`` does, plus one option.

cheroot's own CLI cannot set ``keep_alive_conn_limit``, whose default (10) makes cheroot close
every keep-alive connection past the tenth after its response: with 50 wrk connections that
turns the keep-alive row into a mostly-reconnecting one, and the idle row into "held 10". The
harness raises it like the other servers' connection caps. Everything else maps 1:1 onto
``cheroot.wsgi.Server`` arguments of the same name.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cheroot import wsgi


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("app", help="module:callable")
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--max-threads", type=int, required=True)
    parser.add_argument("--request-queue-size", type=int, required=True, help="listen backlog")
    parser.add_argument("--timeout", type=int, required=True, help="idle connection timeout")
    parser.add_argument("--keep-alive-conn-limit", type=int, required=True)
    args = parser.parse_args(argv)

    module_name, _, attr = args.app.partition(":")
    app = getattr(importlib.import_module(module_name), attr)
    host, _, port = args.bind.rpartition(":")
    server = wsgi.Server(
        (host, int(port)),
        app,
        numthreads=args.threads,
        max=args.max_threads,
        request_queue_size=args.request_queue_size,
        timeout=args.timeout,
    )
    server.keep_alive_conn_limit = args.keep_alive_conn_limit
    server.safe_start()
    return 0


if __name__ == "__main__":
    sys.exit(main())
