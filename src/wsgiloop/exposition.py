"""The Prometheus text format (version 0.0.4), and the answers of the metrics listener. Sans-IO.

What a scrape returns, for one worker or a whole ``--workers N`` instance:

- every family of ``metrics.FAMILIES`` of the worker scope as ``wsgiloop_<name>``: the instance's
  figures, added up over the workers (counters and histograms also over the workers that have
  exited, so they never go backwards across a reload or a killed worker);
- the same figures per worker as ``wsgiloop_worker_<name>{worker="<slot>"}``. A separate name,
  not one more label on the same family, so that ``sum(wsgiloop_requests_total)`` cannot count
  every request twice. A worker's slot is reused by its replacement, whose counters start from 0:
  to Prometheus that is a counter reset, which ``rate()`` handles;
- the process figures (``wsgiloop_process_*{worker="<slot>"|"supervisor"}``) and the supervisor's
  own (workers started, exited, timed out, reloads), then ``wsgiloop_build_info``.

The listener answers ``GET /metrics``, the ``--health-path`` (200 ``ok`` while serving, 503
``stopping`` from the moment a graceful stop begins) and 404 to anything else, then closes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from .metrics import FAMILIES, HISTOGRAM, PROCESS, WORKER, Family

PREFIX = "wsgiloop_"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
#: A scrape request head larger than this is refused (Prometheus sends a few hundred bytes).
MAX_HEAD = 8192

#: One labelled source of figures: (labels as rendered, e.g. 'worker="0"', or "", vector).
Source = tuple[str, Sequence[float]]


def render(
    instance: Sequence[float],
    workers: Sequence[Source],
    processes: Sequence[Source],
    supervisor: Iterable[tuple[str, str, str, float]] = (),
    build: Mapping[str, str] | None = None,
) -> bytes:
    """The whole exposition. ``supervisor``: (name, kind, help, value) families of its own."""
    out: list[str] = []
    for family in FAMILIES:
        if family.scope == WORKER:
            _family(out, PREFIX + family.name, family, [("", instance)])
    for family in FAMILIES:
        if family.scope == WORKER:
            _family(out, PREFIX + "worker_" + family.name, family, workers)
    for family in FAMILIES:
        if family.scope == PROCESS:
            _family(out, PREFIX + family.name, family, processes)
    for name, kind, help_text, value in supervisor:
        _header(out, PREFIX + name, kind, help_text)
        out.append(f"{PREFIX}{name} {_number(value)}\n")
    if build is not None:
        _header(out, PREFIX + "build_info", "gauge", "The running wsgiloop: version, event "
                "loop, Python.")
        labels = ",".join(f'{k}="{escape(v)}"' for k, v in build.items())
        out.append(f"{PREFIX}build_info{{{labels}}} 1\n")
    return "".join(out).encode()


def _header(out: list[str], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")


def _family(out: list[str], name: str, family: Family, sources: Sequence[Source]) -> None:
    if not sources:
        return
    _header(out, name, family.kind, family.help)
    combos = _label_combinations(family)
    for source_labels, v in sources:
        index = family.offset
        for combo in combos:
            labels = ",".join(part for part in (source_labels, combo) if part)
            if family.kind == HISTOGRAM:
                cumulative = 0.0
                sep = "," if labels else ""
                for bound in family.buckets:
                    cumulative += v[index]
                    index += 1
                    out.append(f'{name}_bucket{{{labels}{sep}le="{_number(bound)}"}} '
                               f"{_number(cumulative)}\n")
                cumulative += v[index]  # the +Inf bucket: what passed the last bound
                index += 1
                out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {_number(cumulative)}\n')
                braces = f"{{{labels}}}" if labels else ""
                out.append(f"{name}_sum{braces} {_number(v[index])}\n")
                out.append(f"{name}_count{braces} {_number(cumulative)}\n")
                index += 1
            else:
                braces = f"{{{labels}}}" if labels else ""
                out.append(f"{name}{braces} {_number(v[index])}\n")
                index += 1


def _label_combinations(family: Family) -> list[str]:
    """Every combination of the family's label values, in vector order, rendered."""
    combos = [""]
    for label, values in family.labels:
        combos = [
            ",".join(part for part in (prefix, f'{label}="{escape(value)}"') if part)
            for prefix in combos
            for value in values
        ]
    return combos


def _number(value: float) -> str:
    if isinstance(value, int) or (value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))


def escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# -- the metrics listener's answers ----------------------------------------------------------


def answer(
    head: bytes,
    render_metrics: Callable[[], bytes],
    health_path: bytes | None,
    healthy: Callable[[], bool],
) -> bytes:
    """The whole response (closing the connection) to one request ``head`` on the listener."""
    line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _response(400, b"Bad Request", b"bad request\n")
    method, target = parts[0], parts[1]
    path = target.split(b"?", 1)[0]
    if method not in (b"GET", b"HEAD"):
        return _response(405, b"Method Not Allowed", b"GET only\n", head_only=False)
    head_only = method == b"HEAD"
    if path == b"/metrics":
        return _response(200, b"OK", render_metrics(), CONTENT_TYPE, head_only)
    if health_path is not None and path == health_path:
        if healthy():
            return _response(200, b"OK", b"ok\n", head_only=head_only)
        return _response(503, b"Service Unavailable", b"stopping\n", head_only=head_only)
    return _response(404, b"Not Found", b"not found: try /metrics\n", head_only=head_only)


def _response(
    status: int,
    reason: bytes,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    head_only: bool = False,
) -> bytes:
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
        b"Cache-Control: no-store\r\nConnection: close\r\n\r\n"
        % (status, reason, content_type, len(body))
    )
    return head if head_only else head + body
