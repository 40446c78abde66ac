"""The real Prometheus (Debian's ``prometheus``) scrapes a ``--workers 2`` instance, and PromQL
over what it scraped returns the figures the test caused: busy threads during a burst of
requests held inside the app, and the number and rate of requests."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import read_response
from test_metrics import eventually, http_get, supervisor_metrics, wait_log


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[tuple[str, int]], str]]:
    """``start((host, port))``: a Prometheus scraping that target every second; its base URL."""
    binary = shutil.which("prometheus")
    assert binary is not None, "Debian's prometheus is not installed (.ci/run installs it)"
    started: list[subprocess.Popen[bytes]] = []

    def start(target: tuple[str, int]) -> str:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: wsgiloop\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target[0]}:{target[1]}']\n"
        )
        port = free_port()
        proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            with contextlib.suppress(OSError), urllib.request.urlopen(
                url + "/-/ready", timeout=5
            ) as resp:
                return bool(resp.status == 200)
            return proc.poll() is not None

        eventually(ready, bool, timeout=60)
        assert proc.poll() is None, "prometheus exited"
        return url

    yield start
    for proc in started:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(20)
        if proc.poll() is None:
            proc.kill()


def promql(url: str, query: str) -> float | None:
    """An instant query's single value, or None while it has no result yet."""
    with urllib.request.urlopen(
        url + "/api/v1/query?" + urllib.parse.urlencode({"query": query}), timeout=10
    ) as resp:
        data = json.load(resp)
    assert data["status"] == "success", data
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_two_workers_and_promql_returns_what_the_test_did(spawn, prometheus):
    server = spawn("apps:echo", "--bind", "127.0.0.1:0", "--workers", "2", "--threads", "4",
                   "--metrics-bind", "127.0.0.1:0")
    address = supervisor_metrics(server)
    wait_log(server, "All 2 workers are serving")
    url = prometheus(address)
    eventually(lambda: promql(url, 'count(up{job="wsgiloop"} == 1)'), lambda v: v == 1,
               timeout=60)
    assert eventually(lambda: promql(url, "count(wsgiloop_worker_threads)"),
                      lambda v: v is not None) == 2  # both workers, labelled

    for _ in range(20):
        assert http_get(("127.0.0.1", server.port), "/")[0] == 200
    # A burst held inside the app: three requests whose bodies have not come yet, each one on
    # an app thread (4 per worker, so 3 are busy however the two workers share them out).
    held = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
        held.append(sock)
    assert eventually(lambda: promql(url, "sum(wsgiloop_threads_busy)"), lambda v: v == 3,
                      timeout=60) == 3
    assert promql(url, "max_over_time(wsgiloop_requests_in_flight[1m])") == 3
    for sock in held:
        sock.sendall(b"hi")
        assert read_response(sock)[::2] == (200, b"hi")
        sock.close()

    assert eventually(lambda: promql(url, 'sum(wsgiloop_requests_total{status="2xx"})'),
                      lambda v: v == 23, timeout=60) == 23
    assert promql(url, "sum by (method) (wsgiloop_requests_total{method='POST'})") == 3
    rate = promql(url, "sum(rate(wsgiloop_requests_total[1m]))")
    assert rate is not None and rate > 0
    assert promql(url, "sum(wsgiloop_worker_requests_total)") == 23
    assert eventually(lambda: promql(url, "sum(wsgiloop_threads_busy)"), lambda v: v == 0,
                      timeout=60) == 0
