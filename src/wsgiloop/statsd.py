"""statsd (and dogstatsd) for teams with gunicorn dashboards: ``--statsd-host HOST:PORT``.

gunicorn's names and types where the same thing exists, so its dashboards keep working:
``gunicorn.requests`` (counter), ``gunicorn.request.status.<code>`` (counter),
``gunicorn.request.duration`` (timer, ms) and ``gunicorn.workers`` (gauge, from the supervisor,
or from the worker itself under ``--workers 1``). wsgiloop's saturation figures follow under
``wsgiloop.``: gauges ``threads.busy``, ``threads.total``, ``requests.waiting``,
``requests.in_flight``, ``connections.open``, ``connections.idle``; counters
``connections.accepted``, ``client_disconnects``, ``requests.waited`` (requests that found no
free thread), ``timeouts.<kind>`` and ``refused.<reason>``.

Unlike gunicorn, which sends one datagram per figure per request, a worker's ticker sends once
every 0.25 s the increments since its last tick, batched in as few datagrams as fit 1432 bytes
(newline-separated lines, which statsd, dogstatsd and telegraf all accept): a request costs no
syscall and nothing formatted. The timer gets the tick's first ``metrics.SAMPLES`` durations,
marked with a sample rate when there were more. A worker's gauges are its own: with several
workers, dogstatsd gets a ``worker:<slot>`` tag, plain statsd a ``wsgiloop.worker.<slot>.`` name
(graphite: ``sumSeries(wsgiloop.worker.*.threads.busy)``). ``--dogstatsd-tags a:1,b`` appends
``|#a:1,b`` to every line (gunicorn's option), which is what turns dogstatsd tags on.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Sequence
from itertools import compress, count
from operator import ne

from .metrics import STATSD_COUNTERS, STATSD_GAUGES, WAITED_RANGE, requests_total
from .sockets import parse_bind

MAX_DATAGRAM = 1432  # fits an Ethernet MTU with the IP and UDP headers (as dogstatsd's default)


def parse_statsd_host(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` (port 8125 when left out)."""
    address = parse_bind(value, default_port=8125)
    if address.family == socket.AF_UNIX:
        raise ValueError(f"--statsd-host {value!r}: expected HOST:PORT")
    return address.host, address.port


class Statsd:
    """One process's statsd client: a connected, non-blocking UDP socket."""

    def __init__(self, host_port: str, prefix: str, tags: str, worker: str | None = None) -> None:
        host, port = parse_statsd_host(host_port)
        info = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(info[0], socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.connect(info[4])
        # gunicorn's normalisation: a prefix ends with exactly one dot.
        self.prefix = prefix.rstrip(".") + "." if prefix else ""
        tag_list = [t.strip() for t in tags.split(",") if t.strip()]
        self.tagged = bool(tag_list)
        gauge_tags = list(tag_list)
        self.gauge_prefix = self.prefix + "wsgiloop."
        if worker is not None:
            if self.tagged:
                gauge_tags.append(f"worker:{worker}")
            else:
                self.gauge_prefix += f"worker.{worker}."
        self.tags = "|#" + ",".join(tag_list) if tag_list else ""
        self.gauge_tags = "|#" + ",".join(gauge_tags) if gauge_tags else ""
        self._last: Sequence[float] | None = None
        self._last_codes: list[int] | None = None

    def close(self) -> None:
        self._sock.close()

    def lines_for_tick(
        self,
        vector: Sequence[float],
        codes: Sequence[int],
        durations: Sequence[float],
        seen: int,
    ) -> list[str]:
        """The lines for one tick: increments since the last tick, durations, gauges."""
        p, tags = self.prefix, self.tags
        last = self._last or [0] * len(vector)
        last_codes = self._last_codes or [0] * len(codes)
        lines: list[str] = []
        requests = requests_total(vector) - requests_total(last)
        if requests:
            lines.append(f"{p}gunicorn.requests:{_int(requests)}|c{tags}")
        # The codes seen this tick, found in C (a thousand entries, a handful changed).
        for code in compress(count(), map(ne, codes, last_codes)):
            lines.append(f"{p}gunicorn.request.status.{code}:{codes[code] - last_codes[code]}"
                         f"|c{tags}")
        rate = f"|@{len(durations) / seen:.4g}" if seen > len(durations) else ""
        for ms in durations:
            lines.append(f"{p}gunicorn.request.duration:{ms:.3f}|ms{rate}{tags}")
        w = self.prefix + "wsgiloop."
        for name, index in STATSD_COUNTERS:
            delta = vector[index] - last[index]
            if delta:
                lines.append(f"{w}{name}:{_int(delta)}|c{tags}")
        start, stop = WAITED_RANGE
        waited = sum(vector[start:stop]) - sum(last[start:stop])
        if waited:
            lines.append(f"{w}requests.waited:{_int(waited)}|c{tags}")
        g, gtags = self.gauge_prefix, self.gauge_tags
        for name, index in STATSD_GAUGES:
            lines.append(f"{g}{name}:{_int(vector[index])}|g{gtags}")
        self._last = vector
        self._last_codes = list(codes)
        return lines

    def send_tick(
        self,
        vector: Sequence[float],
        codes: Sequence[int],
        durations: Sequence[float],
        seen: int,
    ) -> None:
        self.send(self.lines_for_tick(vector, codes, durations, seen))

    def send_workers(self, count: int) -> None:
        self.send([f"{self.prefix}gunicorn.workers:{count}|g{self.tags}"])

    def send(self, lines: list[str]) -> None:
        """Batch ``lines`` into as few datagrams as fit; drop them if the network says no (UDP:
        metrics must never hold up serving)."""
        first = size = 0
        for i, length in enumerate(map(len, lines)):
            if i > first and size + 1 + length > MAX_DATAGRAM:
                self._send("\n".join(lines[first:i]))
                first, size = i, 0
            size += length + (1 if i > first else 0)
        if first < len(lines):
            self._send("\n".join(lines[first:]))

    def _send(self, payload: str) -> None:
        with contextlib.suppress(OSError):  # full buffer, nobody listening (ECONNREFUSED)...
            self._sock.send(payload.encode())


def _int(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
