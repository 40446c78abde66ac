"""What gunicorn accepts that wsgiloop does differently, and the one line that says so.

A gunicorn command line or ``gunicorn.conf.py`` should work with the word ``gunicorn`` replaced.
Most settings map one to one (their gunicorn spellings are declared with the settings, in
``config``); this module holds the rest, each with its verdict:

- **ignored**: harmless to skip; one info line at start says why (never a silent no-op);
- **refused**: honouring it is impossible or unsafe; the server does not start, and one line
  says what to do instead (exit status 2, like any bad option).

Worker classes are judged here too: gunicorn's ``sync`` and ``gthread`` (and their full
spellings) name what wsgiloop always is, an event loop in front of a thread pool; async and
ASGI worker classes belong to other servers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


class Refused(ValueError):
    """A gunicorn setting that wsgiloop cannot honour; the message says what to use."""


@dataclass(frozen=True, slots=True)
class Foreign:
    """A gunicorn setting with no wsgiloop equivalent."""

    name: str  # gunicorn's name in a config file
    flags: tuple[str, ...]  # its command-line spellings
    takes_value: bool
    verdict: Literal["ignored", "refused", "refused-if-true"]
    reason: str


_RELAXED = (
    "wsgiloop does not relax HTTP parsing (each relaxation is a request-smuggling risk; see "
    "docs/hardening.md)"
)

FOREIGN: tuple[Foreign, ...] = (
    Foreign("daemon", ("-D", "--daemon"), False, "refused-if-true",
            "wsgiloop does not daemonize: run it in the foreground under systemd "
            "(deploy/systemd), in a container or under a process manager"),
    Foreign("proc_name", ("-n", "--name"), True, "ignored",
            "process titles are left as they are (wsgiloop does not depend on setproctitle)"),
    Foreign("default_proc_name", (), True, "ignored", "process titles are left as they are"),
    Foreign("spew", ("--spew",), False, "ignored",
            "wsgiloop has no line tracer; use py-spy to see what a worker runs"),
    Foreign("tmp_upload_dir", (), True, "ignored", "gunicorn does not use it either"),
    Foreign("secure_scheme_headers", (), True, "ignored",
            "the scheme comes from X-Forwarded-Proto or Forwarded when --proxy-headers is on, "
            "from --forwarded-allow-ips only"),
    Foreign("forwarder_headers", ("--forwarder-headers",), True, "ignored",
            "which forwarded headers count is fixed (see --proxy-headers in the README)"),
    Foreign("logger_class", ("--logger-class",), True, "refused",
            "custom logger classes are not supported: configure logging with --log-config"),
    Foreign("syslog", ("--log-syslog",), False, "refused-if-true",
            "wsgiloop logs to stderr (journald and container runtimes collect it); for syslog "
            "use --log-config with a logging.handlers.SysLogHandler"),
    Foreign("syslog_addr", ("--log-syslog-to",), True, "refused",
            "for syslog use --log-config with a logging.handlers.SysLogHandler"),
    Foreign("syslog_prefix", ("--log-syslog-prefix",), True, "ignored", "there is no syslog"),
    Foreign("syslog_facility", ("--log-syslog-facility",), True, "ignored",
            "there is no syslog"),
    Foreign("disable_redirect_access_to_syslog", ("--disable-redirect-access-to-syslog",),
            False, "ignored", "there is no syslog"),
    Foreign("ssl_version", ("--ssl-version",), True, "ignored",
            "Python negotiates the newest TLS version both sides have; restrict with --ciphers"),
    Foreign("suppress_ragged_eofs", ("--suppress-ragged-eofs",), True, "ignored",
            "asyncio's TLS layer handles unclean TLS shutdowns itself"),
    Foreign("do_handshake_on_connect", ("--do-handshake-on-connect",), False, "ignored",
            "asyncio's TLS layer always handshakes on connect"),
    Foreign("ssl_context", (), True, "refused",
            "a custom SSLContext factory is not supported: use --certfile, --keyfile, "
            "--ca-certs, --cert-reqs and --ciphers"),
    Foreign("raw_paste_global_conf", ("--paste-global",), True, "ignored",
            "PasteDeploy global_conf values are not passed on"),
    Foreign("strip_header_spaces", ("--strip-header-spaces",), False, "refused-if-true",
            _RELAXED),
    Foreign("permit_obsolete_folding", ("--permit-obsolete-folding",), False,
            "refused-if-true", _RELAXED),
    Foreign("permit_unconventional_http_method", ("--permit-unconventional-http-method",),
            False, "refused-if-true", _RELAXED),
    Foreign("permit_unconventional_http_version", ("--permit-unconventional-http-version",),
            False, "refused-if-true", _RELAXED),
    Foreign("casefold_http_method", ("--casefold-http-method",), False, "refused-if-true",
            _RELAXED),
    Foreign("tolerate_dangerous_framing", ("--tolerate-dangerous-framing",), False,
            "refused-if-true", _RELAXED),
    Foreign("header_map", ("--header-map",), True, "ignored",
            "header names with underscores never reach the app (they could pass for dashes)"),
    Foreign("config", (), True, "ignored", "a config file cannot name another config file"),
    Foreign("print_config", (), False, "ignored", "use --check-config (or --print-config)"),
    Foreign("check_config", (), False, "ignored", "use --check-config on the command line"),
)
FOREIGN_BY_NAME = {f.name: f for f in FOREIGN}

#: Other gunicorn names of wsgiloop settings (beyond each setting's ``gunicorn_name``).
ALIASES = {"logconfig_json": "log_config"}


def judge(name: str, value: Any) -> str | None:
    """The info line for gunicorn setting ``name`` given ``value``; ``Refused`` if refused."""
    foreign = FOREIGN_BY_NAME[name]
    if not value:
        # False, None or empty (``proc_name = None``, ``spew = False``, as gunicorn's own
        # example config sets them): it asks for nothing wsgiloop lacks, so nothing to say.
        return None
    label = foreign.flags[-1] if foreign.flags else name
    if foreign.verdict != "ignored":
        raise Refused(f"{label} is not supported: {foreign.reason}")
    return f"{label} is ignored: {foreign.reason}"


# -- worker classes ------------------------------------------------------------------------------

_OURS = frozenset(
    {
        "sync",
        "gthread",
        "gunicorn.workers.sync.SyncWorker",
        "gunicorn.workers.gthread.ThreadWorker",
        "egg:gunicorn#sync",
        "egg:gunicorn#gthread",
    }
)
_GREEN = ("gevent", "eventlet", "tornado", "gaiohttp", "ggevent", "geventlet")


def check_worker_class(value: str | None) -> None:
    """Refuse a worker class wsgiloop cannot stand in for (``Refused`` names what to use)."""
    if value is None or value in _OURS:
        return
    lowered = value.lower()
    if "uvicorn" in lowered or "asgi" in lowered or "granian" in lowered:
        raise Refused(
            f"--worker-class {value}: wsgiloop serves WSGI apps; an ASGI app needs an ASGI server "
            "such as uvicorn (and a WSGI app runs here without a worker class)"
        )
    if any(name in lowered for name in _GREEN):
        raise Refused(
            f"--worker-class {value}: wsgiloop runs the app on threads beside an event loop; "
            "drop the green-thread worker (and its monkey-patching) and size --threads instead"
        )
    raise Refused(
        f"--worker-class {value}: unknown; wsgiloop accepts sync and gthread (both mean its own "
        "model: an event loop in front of --threads app threads)"
    )


def worker_class_note(value: str | None) -> str | None:
    """The info line for an accepted ``--worker-class``."""
    if value is None:
        return None
    return (
        f"--worker-class {value}: wsgiloop's own model stands in for it (an event loop for the "
        "connections, --threads app threads per worker)"
    )
