"""The container image, built and run for real with podman.

The base comes from ``deploy/docker/build-base`` (debootstrap, cached as a tarball in
/var/cache/wsgiloop), the image from ``deploy/docker/Dockerfile`` exactly as a user builds it.
Every check runs the image: the demo through a published port, the health check passing and
failing (a hung server, no server), PID 1 and its user, a graceful ``podman stop`` that finishes
a request in flight (one worker and two), the bind replaced from CMD, the container spec of
deploy/kubernetes/deployment.yaml (read-only root, no capabilities, limits, workers from the CPU
limit, probes, preStop), an arbitrary uid in group 0 (as OpenShift runs images), compose's app
behind a real nginx with compose's nginx.conf, and a derived image built from the Dockerfile's
own comment serving Flask.

A machine without podman, runc, slirp4netns or debootstrap, or not root, fails these tests; it
never skips them (``.ci/run`` installs what is missing). Podman here needs: runc (crun refuses
hybrid cgroups), cgroupfs (no systemd), ulimits within the machine's hard limits, ``--format
docker`` (OCI drops HEALTHCHECK) and ``--network host`` for builds, slirp4netns to publish ports.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
BUILD_BASE = DOCKER / "build-base"
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose"

PODMAN = shutil.which("podman")
#: crun fails on this machine's hybrid cgroups; without systemd the cgroup manager is cgroupfs.
ENGINE = ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
#: podman's default of 1048576 open files is above the machine's hard limit: runc refuses it.
LIMITS = [
    f"--ulimit=nofile={min(65536, resource.getrlimit(resource.RLIMIT_NOFILE)[1])}",
    f"--ulimit=nproc={min(32768, resource.getrlimit(resource.RLIMIT_NPROC)[1])}",
]
BUILD = ["build", "--format", "docker", "--network", "host", "--label", "wsgiloop.test=true"]
APP_UID = 10001
GRACEFUL_LOG = "Received SIGTERM"

_names = itertools.count(1)


def podman(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run podman with this machine's engine settings; fail the test on an error unless
    ``check`` is false."""
    assert PODMAN is not None
    proc = subprocess.run([PODMAN, *ENGINE, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def engine() -> None:
    """Everything the container tests need is here, or the run fails saying what is missing."""
    missing = [
        tool for tool in ("podman", "runc", "slirp4netns", "debootstrap") if not shutil.which(tool)
    ]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install --no-install-recommends "
            "podman runc slirp4netns debootstrap (.ci/run does this)"
        )
    if os.geteuid() != 0:
        pytest.fail("the container tests run as root (debootstrap, rootful podman)")


@pytest.fixture(scope="session")
def base_image(engine: None) -> str:
    """The Debian base, from the cached tarball or built with debootstrap (a minute or so)."""
    proc = subprocess.run(
        [str(BUILD_BASE)], capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def image(base_image: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image ID of deploy/docker/Dockerfile built on that base (IDs, not tags: another
    checkout building at the same time cannot swap the image under these tests)."""
    iidfile = tmp_path_factory.mktemp("image") / "iid"
    podman(
        *BUILD,
        "--build-arg",
        f"BASE={base_image}",
        "--iidfile",
        str(iidfile),
        "-t",
        "localhost/wsgiloop:test",
        "-f",
        str(DOCKERFILE),
        str(ROOT),
        timeout=900,
    )
    # Earlier builds of this image, untagged by this one, would pile up run after run.
    podman("image", "prune", "--force", "--filter", "label=wsgiloop.test=true", check=False)
    return iidfile.read_text().strip()


@dataclass
class Container:
    name: str

    def port(self, inner: int = 8000) -> int:
        out = podman("port", self.name, str(inner)).stdout.strip()
        return int(out.rsplit(":", 1)[1])

    def exec(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *command, check=check, timeout=60)

    def logs(self) -> str:
        proc = podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.name).stdout.strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Status}}") in ("running", "stopping")

    def host_pid(self) -> int:
        return int(self.inspect("{{.State.Pid}}"))

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.logs().count(text) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} x{count} not logged within {timeout} s:\n{self.logs()}")
            time.sleep(0.1)


@pytest.fixture
def run(engine: None) -> Iterator[Callable[..., Container]]:
    """``run(image, *args, options=[...], ports=[8000])`` starts a detached container with the
    machine's podman settings and each port published on a free loopback port; all are
    removed at the end of the test."""
    started: list[Container] = []

    def start(
        image: str, *args: str, options: Sequence[str] = (), ports: Sequence[int] = (8000,)
    ) -> Container:
        container = Container(f"wsgiloop-test-{os.getpid()}-{next(_names)}")
        started.append(container)
        published = [f"--publish=127.0.0.1::{port}" for port in ports]
        podman(
            "run", "--detach", "--name", container.name, "--network", "slirp4netns",
            *LIMITS, *published, *options, image, *args,
        )
        return container

    yield start
    for container in started:
        podman("rm", "--force", "--time", "0", container.name, check=False)


def get(port: int, path: str = "/", timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_for_200(container: Container, inner: int = 8000, timeout: float = 60) -> bytes:
    """Poll until the container answers 200 through its published port; its body."""
    port = container.port(inner)
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = get(port, timeout=5)
            if status == 200:
                return body
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() > deadline or not container.running():
            pytest.fail(f"no 200 on port {port} within {timeout} s:\n{container.logs()}")
        time.sleep(0.1)


def processes(container: Container) -> list[tuple[int, int, int, str]]:
    """``(pid, ppid, uid, command line)`` of every process in the container, from /proc (the
    minimal base has no ps)."""
    script = (
        "import json, os\n"
        "out = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try:\n"
        "        status = open(f'/proc/{pid}/status').read()\n"
        "        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    except OSError:\n"
        "        continue\n"
        "    fields = dict(line.split(':', 1) for line in status.splitlines() if ':' in line)\n"
        "    out.append((int(pid), int(fields['PPid']), int(fields['Uid'].split()[0]),\n"
        "                ' '.join(a.decode() for a in argv if a)))\n"
        "print(json.dumps(out))\n"
    )
    found = json.loads(container.exec("python3", "-c", script).stdout)
    return [tuple(entry) for entry in found]  # type: ignore[misc]


# --- the image as built -------------------------------------------------------------------------


def test_built_image_keeps_its_configuration(image: str) -> None:
    """--format docker kept HEALTHCHECK; the bind is in the environment, not the ENTRYPOINT."""
    [inspected] = json.loads(podman("image", "inspect", image).stdout)
    assert inspected["Healthcheck"]["Test"] == ["CMD", "wsgiloop-healthcheck"]
    config = inspected["Config"]
    assert config["User"] == f"{APP_UID}:{APP_UID}"
    assert config["Entrypoint"] == ["wsgiloop"]
    assert config["Cmd"] == ["wsgiloop.demo:app"]
    assert "WSGILOOP_BIND=0.0.0.0:8000" in config["Env"]
    assert config["StopSignal"] == "SIGTERM"


def test_demo_serves_through_the_published_port(image: str, run: Callable[..., Container]) -> None:
    started = time.monotonic()
    container = run(image)
    body = wait_for_200(container)
    print(f"first 200 after {time.monotonic() - started:.2f} s (podman run included)")
    assert b"REQUEST_METHOD: GET" in body
    assert "Listening at: http://0.0.0.0:8000" in container.logs()


def test_pid_1_is_wsgiloop_as_the_unprivileged_user(
    image: str, run: Callable[..., Container]
) -> None:
    container = run(image)
    wait_for_200(container)
    by_pid = {pid: (uid, command) for pid, _, uid, command in processes(container)}
    uid, command = by_pid[1]
    assert command.split()[:2] == ["/opt/venv/bin/python3", "/opt/venv/bin/wsgiloop"], command
    assert uid == APP_UID
    # The code it runs is not its own to change.
    assert container.exec("touch", "/opt/venv/bin/wsgiloop", check=False).returncode != 0


def test_stdlib_and_venv_are_compiled(image: str, run: Callable[..., Container]) -> None:
    """Start-up does not compile anything: the .pyc of what wsgiloop imports are in the image."""
    script = (
        "import importlib.util, os, sys\n"
        "missing = []\n"
        "for name in ('json', 'asyncio.base_events', 'email.message', 'logging.config',\n"
        "             'wsgiloop.server', 'wsgiloop.supervisor', 'h11._connection', 'uvloop'):\n"
        "    origin = importlib.util.find_spec(name).origin\n"
        "    if origin.endswith('.py') and not os.path.exists(\n"
        "            importlib.util.cache_from_source(origin)):\n"
        "        missing.append(origin)\n"
        "print(missing)\n"
        "sys.exit(1 if missing else 0)\n"
    )
    proc = podman(
        "run", "--rm", "--network=none", *LIMITS, "--entrypoint", "python3", image, "-c", script
    )
    assert proc.stdout.strip() == "[]"


# --- health check -------------------------------------------------------------------------------


def test_healthcheck_passes_and_fails_while_the_server_is_hung(
    image: str, run: Callable[..., Container]
) -> None:
    container = run(image)
    wait_for_200(container)
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    # Run by name, as HEALTHCHECK does: in PATH, with a shebang, executable.
    assert container.exec("wsgiloop-healthcheck", check=False).returncode == 0

    # A hung server still accepts connections (the kernel does) but never answers.
    pid = container.host_pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        hung = podman("healthcheck", "run", container.name, check=False, timeout=60)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert hung.returncode != 0, hung.stdout + hung.stderr
    assert "unhealthy" in hung.stdout + hung.stderr
    # Answers again once it runs again.
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0


def test_healthcheck_fails_when_nothing_serves(image: str) -> None:
    proc = podman(
        "run", "--rm", "--network=none", *LIMITS, "--entrypoint", "wsgiloop-healthcheck", image,
        check=False,
    )
    assert proc.returncode == 1
    assert "unhealthy: http://127.0.0.1:8000/" in proc.stderr
    assert "refused" in proc.stderr.lower()


# --- stopping -----------------------------------------------------------------------------------

#: Starts its response at once, then reads the request body: a request the test holds in flight
#: until it has seen the server begin its graceful shutdown.
HELD_APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"started\\n"
    body = environ["wsgi.input"].read()
    yield b"read %d bytes\\n" % len(body)
"""


def read_until(sock: socket.socket, marker: bytes, received: bytes = b"") -> bytes:
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before {marker!r}; got {received!r}")
        received += chunk
    return received


@pytest.mark.parametrize("workers", [1, 2])
def test_podman_stop_is_graceful_and_finishes_the_request_in_flight(
    image: str, run: Callable[..., Container], tmp_path: Path, workers: int
) -> None:
    apps = tmp_path / "apps"
    apps.mkdir(mode=0o755)
    (apps / "held.py").write_text(HELD_APP)
    (apps / "held.py").chmod(0o644)
    container = run(
        image,
        "held:app",
        "--workers",
        str(workers),
        options=["--volume", f"{apps}:/srv/apps:ro", "--workdir", "/srv/apps"],
    )
    if workers > 1:
        container.wait_for_log(f"All {workers} workers are serving")
        children = [p for p in processes(container) if p[1] == 1]
        assert len(children) == workers, children
        assert all("wsgiloop" in command for *_, command in children)

    port = container.port()
    deadline = time.monotonic() + 60
    while True:  # the first connection that gets an answer holds the request
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        try:
            received = read_until(sock, b"started\n")
            break
        except OSError:  # not listening yet: slirp4netns accepted, then closed
            sock.close()
            if time.monotonic() > deadline:
                pytest.fail(f"no answer:\n{container.logs()}")
            time.sleep(0.2)

    with sock:
        stop = subprocess.Popen(
            [PODMAN or "podman", *ENGINE, "stop", "--time", "60", container.name],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            # Every process that serves has been told to stop, and the request is still open.
            container.wait_for_log(GRACEFUL_LOG, count=workers + (workers > 1))
            assert container.inspect("{{.State.Status}}") in ("running", "stopping")
            sock.sendall(b"67890")
            received = read_until(sock, b"0\r\n\r\n", received)
        finally:
            out, _ = stop.communicate(timeout=120)
    assert b"read 10 bytes\n" in received
    assert stop.returncode == 0, out
    # Exit 0, not 137: wsgiloop finished by itself, podman never had to SIGKILL it.
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
    assert "Shutdown complete" in container.logs()


# --- how it is run ------------------------------------------------------------------------------


def test_bind_in_cmd_replaces_the_default(image: str, run: Callable[..., Container]) -> None:
    container = run(image, "wsgiloop.demo:app", "--bind", "0.0.0.0:9000", ports=[9000])
    wait_for_200(container, inner=9000)
    probe = "import socket; socket.create_connection(('127.0.0.1', 8000), timeout=5)"
    refused = container.exec("python3", "-c", probe, check=False)
    assert "ConnectionRefusedError" in refused.stderr, "--bind added a listener, not replaced it"


def cpu_count_of(quantity: str) -> int:
    """A CPU quantity as the downward API gives it with divisor 1: whole CPUs, rounded up."""
    cores = int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    return math.ceil(cores)


def kubernetes_flags(pod: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``podman run`` options and arguments that run the Deployment's container as a kubelet
    would: its user, read-only root, capabilities, limits, volumes, environment and args."""
    [container] = pod["containers"]
    context = {**pod["securityContext"], **container["securityContext"]}
    limits = container["resources"]["limits"]
    options = [f"--user={context['runAsUser']}:{context['runAsGroup']}"]
    if context["readOnlyRootFilesystem"]:
        options += ["--read-only", "--read-only-tmpfs=false"]
    options += [f"--cap-drop={cap}" for cap in context["capabilities"]["drop"]]
    if not context["allowPrivilegeEscalation"]:
        options.append("--security-opt=no-new-privileges")
    options += [f"--cpus={cpu_count_of(limits['cpu'])}", f"--memory={limits['memory'][:-2]}m"]
    assert limits["memory"].endswith("Mi")
    for mount in container["volumeMounts"]:
        [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert "emptyDir" in volume
        options.append(f"--tmpfs={mount['mountPath']}")
    env: dict[str, str] = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            field = var["valueFrom"]["resourceFieldRef"]
            assert (field["resource"], field["divisor"]) == ("limits.cpu", "1")
            env[var["name"]] = str(cpu_count_of(limits["cpu"]))
    options += [f"--env={name}={value}" for name, value in env.items()]
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg) for arg in container["args"]]
    return options, args


def test_runs_as_the_kubernetes_deployment_runs_it(
    image: str, run: Callable[..., Container]
) -> None:
    """deploy/kubernetes/deployment.yaml's container, translated to podman: read-only root
    with only the emptyDir /tmp, no capabilities, its uid, its CPU and memory limits, a worker
    per CPU of the limit. Its probes pass; its termination (preStop, then SIGTERM within the
    grace period) serves during the preStop and ends with exit 0."""
    deployment = yaml.safe_load((KUBERNETES / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    [spec] = pod["containers"]
    options, args = kubernetes_flags(pod)
    workers = cpu_count_of(spec["resources"]["limits"]["cpu"])
    assert args[args.index("--workers") + 1] == str(workers)
    container = run(image, *args, options=options, ports=[spec["ports"][0]["containerPort"]])
    container.wait_for_log(f"All {workers} workers are serving")
    wait_for_200(container)
    port = container.port()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        status, _ = get(port, spec[probe]["httpGet"]["path"])
        assert 200 <= status < 400, probe  # what a kubelet's httpGet probe counts as success
    write = container.exec("python3", "-c", "open('/etc/x', 'w')", check=False)
    assert "Read-only file system" in write.stderr
    container.exec("python3", "-c", "open('/tmp/x', 'w')")  # the emptyDir

    # Termination: the preStop hook runs while the server still serves; then SIGTERM.
    pre_stop = subprocess.Popen(
        [PODMAN or "podman", *ENGINE, "exec", container.name, *spec["lifecycle"]["preStop"]
         ["exec"]["command"]],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert get(port)[0] == 200
    finally:
        out, _ = pre_stop.communicate(timeout=120)
    assert pre_stop.returncode == 0, out
    remaining = pod["terminationGracePeriodSeconds"] - int(
        spec["lifecycle"]["preStop"]["exec"]["command"][-1]
    )
    podman("stop", "--time", str(remaining), container.name, timeout=remaining + 60)
    assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()


def test_arbitrary_uid_in_group_0(image: str, run: Callable[..., Container]) -> None:
    """OpenShift runs an image as a random uid with gid 0 and no /etc/passwd entry."""
    container = run(image, options=["--user", "123456:0"])
    wait_for_200(container)
    [(_, _, uid, _)] = [p for p in processes(container) if p[0] == 1]
    assert uid == 123456
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0


# --- a project's image --------------------------------------------------------------------------

FLASK_PROJECT = {
    "requirements.txt": "flask>=3\n",
    "myproject/__init__.py": "",
    "myproject/wsgi.py": (
        "from flask import Flask\n\n"
        "application = Flask(__name__)\n\n\n"
        "@application.get('/')\n"
        "def index():\n"
        "    return 'hello from flask'\n"
    ),
}


def derived_dockerfile() -> str:
    """The example at the top of the Dockerfile, uncommented."""
    text = DOCKERFILE.read_text()
    match = re.search(r"^#   FROM wsgiloop\n(?:#   .*\n)+", text, re.MULTILINE)
    assert match, "the Dockerfile's comment shows no derived image"
    return "".join(line[4:] + "\n" for line in match.group(0).splitlines())


def test_derived_image_from_the_comment_serves_flask(
    image: str, run: Callable[..., Container], tmp_path: Path
) -> None:
    dockerfile = derived_dockerfile()
    assert 'CMD ["myproject.wsgi:application"' in dockerfile
    context = tmp_path / "project"
    for name, content in FLASK_PROJECT.items():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        (context / name).write_text(content)
    (context / "Dockerfile").write_text(dockerfile.replace("FROM wsgiloop", f"FROM {image}", 1))
    iidfile = tmp_path / "iid"
    podman(*BUILD, "--iidfile", str(iidfile), str(context), timeout=900)
    derived = iidfile.read_text().strip()
    try:
        container = run(derived)
        assert wait_for_200(container) == b"hello from flask"
        # Code installed as root: the app user can neither change it nor write .pyc next to
        # it, so the comment's compileall is what spares each start compiling it.
        assert container.exec("touch", "/app/myproject/wsgi.py", check=False).returncode != 0
        compiled = container.exec("sh", "-c", "ls /app/myproject/__pycache__/wsgi.*.pyc")
        assert compiled.stdout.strip()
    finally:
        podman("rmi", "--force", derived, check=False)  # --force: its container too


# --- compose: nginx in front -------------------------------------------------------------------

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def compose_flags(service: dict[str, Any]) -> list[str]:
    """``podman run`` options for a compose service's hardening settings."""
    options = []
    if service.get("read_only"):
        options += ["--read-only", "--read-only-tmpfs=false"]
    options += [f"--tmpfs={path}" for path in service.get("tmpfs", [])]
    options += [f"--cap-drop={cap}" for cap in service.get("cap_drop", [])]
    options += [f"--security-opt={opt}" for opt in service.get("security_opt", [])]
    return options


def test_compose_nginx_in_front_of_the_app(
    image: str, run: Callable[..., Container], tmp_path: Path
) -> None:
    """The compose file's app service, with its command and hardening, behind a real nginx
    running the compose nginx.conf: the demo sees the client nginx saw, not a spoofed one."""
    assert NGINX is not None, "nginx not installed (apt-get install nginx)"
    compose = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    app = compose["services"]["app"]
    container = run(image, *app["command"], options=compose_flags(app))
    wait_for_200(container)

    site = (COMPOSE / "nginx.conf").read_text()
    assert "server app:8000 " in site and "listen 80;" in site
    listen = free_port()
    site = site.replace("server app:8000 ", f"server 127.0.0.1:{container.port()} ")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{listen};")
    (tmp_path / "site.conf").write_text(site)
    temp = "".join(
        f"    {kind}_temp_path {tmp_path}/{kind}_temp;\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/error.log info;\nevents {{ worker_connections 64; }}\n"
        f"http {{\n    access_log off;\n{temp}    include {tmp_path}/site.conf;\n}}\n"
    )
    proxy = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
                conn.request("GET", "/page", headers={"X-Forwarded-For": "6.6.6.6"})
                response = conn.getresponse()
                body = response.read().decode()
                conn.close()
                break
            except OSError:
                if proxy.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"nginx did not answer: {(tmp_path / 'error.log').read_text()}")
                time.sleep(0.1)
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
    assert response.status == 200, body
    assert "PATH_INFO: /page" in body
    assert "REMOTE_ADDR: 127.0.0.1\n" in body  # the client nginx saw, not 6.6.6.6
    assert "X-Forwarded-For: 6.6.6.6, 127.0.0.1" in body
