"""Metrics and health (issue 12): Prometheus exposition, saturation, statsd, health, and the
figures of a ``--workers N`` instance across reloads and killed workers. Real servers, real
sockets, the real promtool; the real Prometheus is in test_prometheus.py."""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import Process, read_response
from promtext import parse, total, value

from wsgiloop.board import Board, Fleet
from wsgiloop.cli import build_parser, config_from_args
from wsgiloop.config import Config, ConfigError
from wsgiloop.metrics import SIZE, Metrics

Samples = dict[Any, float]


def http_get(address: Any, path: str, timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(address[0], address[1], timeout=timeout)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def scrape_text(address: Any) -> str:
    status, body = http_get(address, "/metrics")
    assert status == 200
    return body.decode()


def scrape(address: Any) -> Samples:
    return parse(scrape_text(address))


def metrics_address(running: Any) -> Any:
    return running.server.telemetry.listener.sockets[0].getsockname()


def eventually(
    probe: Callable[[], Any], check: Callable[[Any], bool], timeout: float = 20.0
) -> Any:
    """Poll ``probe`` until ``check`` accepts its result; fail with the last one."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if check(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached: last {result!r}")
        time.sleep(0.05)


def status_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] == "/missing":
        start_response("404 Not Found", [("Content-Length", "0")])
        return []
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Length", str(len(body) + 2))])
    return [b"ok" + body]


# -- the exposition ----------------------------------------------------------------------------


def test_exposition_passes_a_strict_parser_and_promtool_and_counts_what_was_done(serve):
    running = serve(status_app, metrics_bind="127.0.0.1:0")
    for _ in range(3):
        assert running.request("GET", "/")[0].status == 200
    assert running.request("POST", "/", body=b"abc")[0].status == 200
    assert running.request("GET", "/missing")[0].status == 404
    # Two keep-alive connections left idle between requests: the IDLE phase's gauge.
    idle = [running.http(), running.http()]
    for conn in idle:
        conn.request("GET", "/")
        conn.getresponse().read()
    address = metrics_address(running)
    text = eventually(lambda: scrape_text(address), lambda t: "wsgiloop_connections_idle 2\n"
                      in t and "wsgiloop_connections_open 2\n" in t)
    samples = parse(text)  # strict: HELP/TYPE, cumulative buckets, _count == +Inf...
    checked = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                             capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert value(samples, "wsgiloop_requests_total", method="GET", status="2xx") == 5
    assert value(samples, "wsgiloop_requests_total", method="POST", status="2xx") == 1
    assert value(samples, "wsgiloop_requests_total", method="GET", status="4xx") == 1
    assert value(samples, "wsgiloop_worker_requests_total", worker="0", method="GET",
                 status="2xx") == 5
    assert value(samples, "wsgiloop_request_duration_seconds_count", until="end") == 7
    assert value(samples, "wsgiloop_request_duration_seconds_count", until="first_byte") == 7
    assert value(samples, "wsgiloop_request_wait_seconds_count") == 7
    assert value(samples, "wsgiloop_connections_accepted_total") == 7
    assert value(samples, "wsgiloop_connections_open") == 2
    assert value(samples, "wsgiloop_threads") == 4
    assert value(samples, "wsgiloop_threads_busy") == 0
    assert value(samples, "wsgiloop_received_bytes_total") > 0
    assert value(samples, "wsgiloop_sent_bytes_total") > 0
    assert value(samples, "wsgiloop_process_open_fds", worker="0") > 0
    assert value(samples, "wsgiloop_process_resident_memory_bytes", worker="0") > 1 << 20
    build = [labels for name, labels in samples if name == "wsgiloop_build_info"]
    assert dict(build[0])["version"] and dict(build[0])["loop"] in ("uvloop", "asyncio")
    for conn in idle:
        conn.close()


def test_refusals_timeouts_and_disconnects_are_counted_by_kind(serve):
    gate = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        gate.wait(10)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    running = serve(app, metrics_bind="127.0.0.1:0", header_timeout=0.5, max_body_size=10)
    for raw, status in [
        (b"GARBAGE\r\n\r\n", 400),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n", 413),
        (b"GET / HTTP/1.1\r\n", 408),  # then nothing: the head times out
    ]:
        with running.connect() as sock:
            sock.sendall(raw)
            assert read_response(sock)[0] == status
    # A client that resets its connection while its request is in the app.
    sock = running.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    address = metrics_address(running)
    eventually(lambda: scrape(address),
               lambda s: value(s, "wsgiloop_requests_in_flight") == 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    samples = eventually(lambda: scrape(address),
                         lambda s: value(s, "wsgiloop_client_disconnects_total") == 1)
    gate.set()
    assert value(samples, "wsgiloop_refused_requests_total", reason="malformed") == 1
    assert value(samples, "wsgiloop_refused_requests_total", reason="connect") == 1
    assert value(samples, "wsgiloop_refused_requests_total", reason="body_too_large") == 1
    assert value(samples, "wsgiloop_timeouts_total", kind="head") == 1
    assert value(samples, "wsgiloop_timeouts_total", kind="app") == 0
    assert total(samples, "wsgiloop_requests_total") == 0  # none of these reached the app


def test_app_and_body_timeouts_are_counted_and_their_503_408_are_responses(serve):
    gate = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ["REQUEST_METHOD"] == "POST":
            environ["wsgi.input"].read()  # the client stalls: --body-timeout
        else:
            gate.wait(10)  # the app stalls: --timeout
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    running = serve(app, metrics_bind="127.0.0.1:0", timeout=3, body_timeout=0.3)
    with running.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(sock)[0] == 503
    with running.connect() as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01")
        assert read_response(sock)[0] == 408
    gate.set()
    samples = eventually(lambda: scrape(metrics_address(running)),
                         lambda s: value(s, "wsgiloop_threads_hung") == 0)
    assert value(samples, "wsgiloop_timeouts_total", kind="app") == 1
    assert value(samples, "wsgiloop_timeouts_total", kind="body") == 1
    assert value(samples, "wsgiloop_requests_total", method="GET", status="5xx") == 1
    assert value(samples, "wsgiloop_requests_total", method="POST", status="4xx") == 1
    assert total(samples, "wsgiloop_refused_requests_total") == 0  # the app had them


# -- saturation ----------------------------------------------------------------------------------


def test_saturation_two_threads_ten_requests_busy_2_waiting_8_and_the_wait_histogram(serve):
    gate = threading.Event()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        gate.wait(20)  # held until the test has seen the queue, then 200 ms each
        time.sleep(0.2)
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    running = serve(app, threads=2, metrics_bind="127.0.0.1:0")
    address = metrics_address(running)
    statuses: list[int] = []
    clients = [
        threading.Thread(target=lambda: statuses.append(running.request("GET", "/")[0].status))
        for _ in range(10)
    ]
    for client in clients:
        client.start()
    # Scraped on the loop while both app threads are taken: the listener never waits for them.
    during = eventually(lambda: scrape(address),
                        lambda s: value(s, "wsgiloop_requests_waiting") == 8)
    assert value(during, "wsgiloop_threads_busy") == 2
    assert value(during, "wsgiloop_requests_in_flight") == 10
    gate.set()
    for client in clients:
        client.join(30)
    assert statuses == [200] * 10
    after = eventually(lambda: scrape(address),
                       lambda s: value(s, "wsgiloop_request_wait_seconds_count") == 10)
    bucket = "wsgiloop_request_wait_seconds_bucket"
    # Two found a thread at once; the eight queued waited for a pair of 200 ms requests to end
    # (the first pair of them), two pairs, three, four: at least 0.2 s, 0.4 s, 0.6 s, 0.8 s.
    assert value(after, bucket, le="0.001") == 2
    assert value(after, bucket, le="0.1") == 2
    assert value(after, bucket, le="0.25") <= 4
    assert value(after, "wsgiloop_request_wait_seconds_sum") >= 2 * (0.2 + 0.4 + 0.6 + 0.8)
    assert value(after, "wsgiloop_requests_waiting") == 0


# -- health --------------------------------------------------------------------------------------


def test_health_is_answered_on_the_loop_200_then_503_from_the_start_of_a_graceful_stop(serve):
    gate = threading.Event()
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        gate.wait(20)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"done"]

    running = serve(app, threads=1, metrics_bind="127.0.0.1:0", health_path="/healthz",
                    graceful_timeout=20)
    address = metrics_address(running)
    result: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: result.append(
        http_get(running.address, "/slow", timeout=30)))
    client.start()
    eventually(lambda: scrape(address), lambda s: value(s, "wsgiloop_threads_busy") == 1)
    # The only app thread is busy: the health path is answered on the loop all the same.
    assert http_get(running.address, "/healthz") == (200, b"ok\n")
    assert http_get(running.address, "/healthz?probe=1") == (200, b"ok\n")
    assert http_get(address, "/healthz") == (200, b"ok\n")
    assert calls == ["/slow"]
    running.loop.call_soon_threadsafe(running.server.stop)  # a graceful stop begins
    assert eventually(lambda: http_get(address, "/healthz"), lambda r: r[0] == 503) == (
        503, b"stopping\n")
    assert result == []  # the request in flight is still being served
    gate.set()
    client.join(20)
    assert result == [(200, b"done")]


def wait_log(server: Process, pattern: str, timeout: float = 20.0) -> re.Match[str]:
    regex = re.compile(pattern)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in list(server.log):
            match = regex.search(line)
            if match:
                return match
        time.sleep(0.05)
    raise AssertionError(f"no log line matching {pattern!r}:\n" + "".join(server.log))


def supervisor_metrics(server: Process) -> tuple[str, int]:
    match = wait_log(server, r"Metrics at: http://([\d.]+):(\d+)")
    return match.group(1), int(match.group(2))


def test_health_503_during_a_graceful_stop_of_workers_while_a_request_finishes(spawn):
    server = spawn("apps:slow", "--bind", "127.0.0.1:0", "--workers", "2",
                   "--metrics-bind", "127.0.0.1:0", "--health-path", "/healthz")
    address = supervisor_metrics(server)
    wait_log(server, "All 2 workers are serving")
    assert http_get(address, "/healthz") == (200, b"ok\n")
    result: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: result.append(
        http_get(("127.0.0.1", server.port), "/?seconds=3", timeout=30)))
    client.start()
    eventually(lambda: scrape(address), lambda s: value(s, "wsgiloop_requests_in_flight") == 1)
    server.proc.send_signal(signal.SIGTERM)
    assert eventually(lambda: http_get(address, "/healthz"), lambda r: r[0] == 503) == (
        503, b"stopping\n")
    assert result == []
    client.join(30)
    assert result == [(200, b"done")]
    assert server.proc.wait(20) == 0


# -- --workers N: one scrape, the whole instance ---------------------------------------------


def test_counters_never_go_backwards_across_a_reload_and_a_killed_worker(spawn):
    server = spawn("apps:pid", "--bind", "127.0.0.1:0", "--workers", "2",
                   "--metrics-bind", "127.0.0.1:0")
    address = supervisor_metrics(server)
    wait_log(server, "All 2 workers are serving")
    seen: list[float] = []

    def requests_total() -> Samples:
        samples = scrape(address)
        seen.append(total(samples, "wsgiloop_requests_total"))
        return samples

    def serve_some(count: int) -> set[int]:
        return {int(http_get(("127.0.0.1", server.port), "/")[1]) for _ in range(count)}

    pids = serve_some(20)
    samples = eventually(requests_total, lambda s: total(s, "wsgiloop_requests_total") == 20)
    workers = {dict(labels)["worker"] for name, labels in samples
               if name == "wsgiloop_worker_threads"}
    assert workers == {"0", "1"}  # every worker's figures, labelled by its slot
    assert value(samples, "wsgiloop_workers") == 2
    assert total(samples, "wsgiloop_worker_requests_total") == 20

    server.proc.send_signal(signal.SIGHUP)  # every worker is replaced
    samples = eventually(requests_total,
                         lambda s: value(s, "wsgiloop_workers_exited_total") == 2, timeout=40)
    assert value(samples, "wsgiloop_reloads_total") == 1
    assert value(samples, "wsgiloop_workers_started_total") == 4
    assert total(samples, "wsgiloop_requests_total") == 20  # the old workers' are kept
    pids = serve_some(10) - pids
    eventually(requests_total, lambda s: total(s, "wsgiloop_requests_total") == 30)

    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    samples = eventually(requests_total,
                         lambda s: value(s, "wsgiloop_workers_started_total") == 5, timeout=40)
    assert value(samples, "wsgiloop_workers_exited_total") == 3
    serve_some(5)
    samples = eventually(requests_total, lambda s: total(s, "wsgiloop_requests_total") == 35)
    assert value(samples, "wsgiloop_request_duration_seconds_count", until="end") == 35
    assert seen == sorted(seen), seen  # never backwards, scrape after scrape


def test_a_departed_workers_counters_join_the_totals_but_not_its_gauges():
    fleet = Fleet(Config(workers=2, metrics_bind="127.0.0.1:0"), 4)
    metrics = Metrics()
    metrics.accepted()
    metrics.waited(0.3)
    from wsgiloop.pool import ThreadPool

    vector = metrics.snapshot(ThreadPool(5), 0, 7, 3)
    fleet.spawned(1, 1234)
    fleet.board.publisher(1)(vector)
    instance, workers = fleet.vectors()
    assert workers == [(1, vector)] and instance == vector
    fleet.exited(1)
    instance, workers = fleet.vectors()
    assert workers == []
    samples = parse(fleet.render().decode())
    assert value(samples, "wsgiloop_connections_accepted_total") == 1
    assert value(samples, "wsgiloop_request_wait_seconds_count") == 1
    assert value(samples, "wsgiloop_connections_open") == 0  # a gauge of a gone worker is gone
    assert value(samples, "wsgiloop_threads") == 0
    assert fleet.board.read(1) == [0.0] * SIZE  # cleared for its replacement


def test_the_board_returns_the_last_complete_vector_of_a_slot():
    board = Board(2)
    assert board.read(0) == [0.0] * SIZE
    publish = board.publisher(0)
    publish([1.0] * SIZE)
    publish([2.0] * SIZE)
    assert board.read(0) == [2.0] * SIZE
    assert board.read(1) == [0.0] * SIZE


# -- statsd --------------------------------------------------------------------------------------


def test_statsd_gets_gunicorns_names_batched_with_dogstatsd_tags(serve):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(10)
    port = receiver.getsockname()[1]
    running = serve(status_app, statsd_host=f"127.0.0.1:{port}", statsd_prefix="svc",
                    dogstatsd_tags="env:test,team:web")
    for path in ["/", "/", "/", "/missing", "/missing"]:
        running.request("GET", path)
    lines: list[str] = []
    datagrams = 0
    counted = 0.0
    deadline = time.monotonic() + 20
    # Until the five requests are in, and the once-a-second gauge of workers.
    while (counted < 5 or not any(line.startswith("svc.gunicorn.workers:") for line in lines)) \
            and time.monotonic() < deadline:
        payload = receiver.recv(65536).decode()
        datagrams += 1
        for line in payload.split("\n"):
            lines.append(line)
            if line.startswith("svc.gunicorn.requests:"):
                counted += float(line.split(":")[1].split("|")[0])
    receiver.close()
    assert counted == 5

    def summed(name: str, kind: str) -> float:
        return sum(float(line.split(":")[1].split("|")[0]) for line in lines
                   if line.startswith(name + ":") and f"|{kind}" in line)

    assert summed("svc.gunicorn.request.status.200", "c") == 3
    assert summed("svc.gunicorn.request.status.404", "c") == 2
    durations = [line for line in lines if line.startswith("svc.gunicorn.request.duration:")]
    assert len(durations) == 5 and all("|ms" in line for line in durations)
    assert all(line.endswith("|#env:test,team:web") for line in lines)
    assert any(line.startswith("svc.wsgiloop.threads.busy:") and "|g" in line for line in lines)
    assert any(line.startswith("svc.gunicorn.workers:1|g") for line in lines)
    assert datagrams < len(lines)  # batched: several lines a datagram, not one per figure


# -- configuration -------------------------------------------------------------------------------


def test_metrics_options_are_off_by_default_and_never_on_an_app_address():
    config = Config()
    assert config.metrics_bind is None and config.statsd_host is None
    assert config.health_path is None
    with pytest.raises(ConfigError, match="must not be one of --bind"):
        Config(bind=["127.0.0.1:9000"], metrics_bind="127.0.0.1:9000").validate()
    with pytest.raises(ConfigError, match="--health-path"):
        Config(health_path="healthz").validate()
    with pytest.raises(ConfigError, match="--statsd-host"):
        Config(statsd_host="unix:/tmp/statsd").validate()


def test_metrics_flags_reach_the_config():
    args = build_parser().parse_args([
        "apps:hello", "--metrics-bind", "unix:/tmp/m.sock", "--health-path", "/healthz",
        "--statsd-host", "127.0.0.1:8125", "--statsd-prefix", "app", "--dogstatsd-tags", "a:1",
    ])
    config = config_from_args(args, environ={})
    assert (config.metrics_bind, config.health_path) == ("unix:/tmp/m.sock", "/healthz")
    assert (config.statsd_host, config.statsd_prefix, config.dogstatsd_tags) == (
        "127.0.0.1:8125", "app", "a:1")


def test_metrics_listener_serves_on_a_unix_socket(spawn, tmp_path):
    path = tmp_path / "metrics.sock"
    server = spawn("apps:hello", "--bind", "127.0.0.1:0", "--metrics-bind", f"unix:{path}",
                   "--health-path", "/healthz")
    wait_log(server, "Metrics at: unix:")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: m\r\n\r\n")
        assert read_response(sock)[::2] == (200, b"ok\n")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n")
        status, headers, body = read_response(sock)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    assert value(parse(body.decode()), "wsgiloop_threads") > 0


def test_folded_histograms_count_each_duration_in_the_bucket_bisect_would_and_sum_them(
    monkeypatch,
):
    # The hot path appends durations; a snapshot folds them (sorted, one bisect per edge). The
    # folded vector must be what counting each duration at once would give: bounds are "le",
    # so a duration equal to a bound is in that bound's bucket.
    from bisect import bisect_left

    from wsgiloop import metrics as metrics_module
    from wsgiloop.metrics import _DURATION, _END, _WAIT, DURATION_BUCKETS, WAIT_BUCKETS
    from wsgiloop.pool import ThreadPool
    from wsgiloop.response import Head

    class Ended:
        def __init__(self) -> None:
            self.environ = {"REQUEST_METHOD": "GET"}
            self.sent = 10
            self.started = 0.0

    metrics = Metrics()
    durations = [0.0, 0.005, 0.0051, 0.3, 1.0, 61.0, 0.004]
    waits = [0.0, 0.001, 0.0011, 40.0]
    head = Head(b"HTTP/1.1 200 OK\r\n", 1, False, 200)
    now = [0.0]
    monkeypatch.setattr(metrics_module, "_monotonic", lambda: now[0])
    for i, seconds in enumerate(durations):
        ended = Ended()  # started at 0.0: the clock reads the duration itself
        now[0] = seconds
        # alternately: head and end in one write, and head first then the end
        if i % 2:
            metrics.exchange_ended(ended, True, head)
        else:
            metrics.head_sent(ended, head)
            metrics.exchange_ended(ended, True)
    for seconds in waits:
        metrics.waited(seconds)
    v = metrics.snapshot(ThreadPool(2), 0, 0, 0)

    def expected(bounds, values):
        counts = [0] * (len(bounds) + 1)
        for x in values:
            counts[bisect_left(bounds, x)] += 1
        return counts

    n = len(DURATION_BUCKETS) + 1
    assert v[_DURATION : _DURATION + n] == expected(DURATION_BUCKETS, durations)
    assert v[_END : _END + n] == expected(DURATION_BUCKETS, durations)
    assert v[_DURATION + n] == v[_END + n] == pytest.approx(sum(durations))
    assert v[_WAIT : _WAIT + len(WAIT_BUCKETS) + 1] == expected(WAIT_BUCKETS, waits)
    assert v[_WAIT + len(WAIT_BUCKETS) + 1] == pytest.approx(sum(waits))
    samples, seen = metrics.take_durations()
    assert seen == len(durations)
    assert sorted(round(ms) for ms in samples) == sorted(round(s * 1000) for s in durations)
    assert metrics.snapshot(ThreadPool(2), 0, 0, 0)[_END : _END + n] == v[_END : _END + n]


def test_a_standalone_workers_tick_folds_the_durations_even_when_nobody_scrapes():
    # Requests append their durations; without statsd and without a supervisor nothing takes a
    # snapshot until a scrape, so the tick itself must fold them, or they would pile up.
    import asyncio

    from wsgiloop.response import Head
    from wsgiloop.state import ServerState
    from wsgiloop.telemetry import Telemetry

    class Streamed:
        def __init__(self) -> None:
            self.environ = {"REQUEST_METHOD": "GET"}
            self.sent = 0
            self.started = time.monotonic()

    loop = asyncio.new_event_loop()
    try:
        config = Config(metrics_bind="127.0.0.1:0").validate()
        state = ServerState(lambda environ, start_response: [], config, loop)
        telemetry = Telemetry(state, None, None)
        metrics = state.metrics
        assert metrics is not None
        head = Head(b"HTTP/1.1 200 OK\r\n", 2, False, 200)
        for _ in range(100):  # head first, then the end: the streamed-body path
            request = Streamed()
            metrics.head_sent(request, head)
            metrics.exchange_ended(request, True)
        metrics.waited(0.002)
        telemetry.report()
        assert (len(metrics._firsts), len(metrics._ends), len(metrics._waits)) == (0, 0, 0)
        from wsgiloop.metrics import _DURATION, _END, DURATION_BUCKETS

        v = list(metrics.v)
        n = len(DURATION_BUCKETS) + 1
        assert sum(v[_DURATION : _DURATION + n]) == sum(v[_END : _END + n]) == 100
    finally:
        loop.close()
