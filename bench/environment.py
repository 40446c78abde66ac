"""What a run needs around it: wrk, the peers' virtualenv, the open-file limit, and the facts
the report records about the machine and the code (versions, a digest of wsgiloop's source).

Only the standard library is used here; the peers live in their own virtualenv
(``bench/.venv``) so nothing they pull in can change the interpreter the harness runs on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from layout import REPO_ROOT, REQUIREMENTS, SOURCE_DIR, VENV_DIR, log


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit("wrk is not installed; install it (apt-get install wrk) and rerun")
    log("wrk not found: installing it with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, env=env)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("apt-get installed wrk but it is not on PATH")
    return found


def _requirements_hash() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv(skip_install: bool, with_wsgiloop: bool) -> Path:
    """Create or reuse ``bench/.venv`` with the peers and an editable wsgiloop; its bin dir."""
    bindir = VENV_DIR / "bin"
    python = bindir / "python"
    if skip_install:
        if not python.exists():
            raise SystemExit(f"--skip-install: {VENV_DIR} does not exist")
        return bindir
    if not python.exists():
        log(f"creating {VENV_DIR}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    stamp = VENV_DIR / ".requirements.sha256"
    if not stamp.exists() or stamp.read_text().strip() != _requirements_hash():
        log(f"installing the peers from {REQUIREMENTS.name}")
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(_requirements_hash() + "\n")
    if not with_wsgiloop:
        return bindir
    probe = subprocess.run(
        [str(python), "-c", "import wsgiloop.cli, wsgiloop; print(wsgiloop.__file__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or not probe.stdout.strip().startswith(str(REPO_ROOT)):
        log(f"installing wsgiloop from {REPO_ROOT} (editable) into the venv")
        install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        done = subprocess.run(
            [*install, "-e", str(REPO_ROOT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            log("could not install wsgiloop into the venv; its rows will fail:")
            log(done.stderr.strip()[-800:])
    return bindir


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target != resource.RLIM_INFINITY and target < needed:
        log(f"open-file limit is {target}; the idle row needs about {needed}")


def package_versions(python: Path, names: Sequence[str]) -> dict[str, str]:
    code = (
        "import json, sys\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = version(n)\n"
        "    except PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=False
    )
    try:
        return dict(json.loads(proc.stdout))
    except json.JSONDecodeError:
        return {}


def wsgiloop_env(python: str) -> dict[str, str]:
    """Extra environment for running wsgiloop from ``python`` (repo's src/ if not installed)."""
    probe = subprocess.run([python, "-c", "import wsgiloop.cli"], capture_output=True, check=False)
    if probe.returncode == 0:
        return {}
    log(f"wsgiloop is not importable from {python}; using {REPO_ROOT / 'src'} on PYTHONPATH")
    return {"PYTHONPATH": str(REPO_ROOT / "src")}


def source_digest(package_dir: Path = SOURCE_DIR) -> str:
    """Short digest of a wsgiloop source tree (its .py files), to tell runs' code apart."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        with contextlib.suppress(OSError):
            digest.update(path.relative_to(package_dir).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot_source(dest: Path) -> Path:
    """Copy ``src/wsgiloop`` under ``dest`` and return the directory to put on PYTHONPATH.

    A full run takes ~10 minutes and the venv's editable install would run whatever the
    checkout holds at each server start; the snapshot makes every wsgiloop row of a run
    measure the same code, even while someone edits the tree.
    """
    root = dest / "src"
    shutil.copytree(SOURCE_DIR, root / "wsgiloop", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def machine_info() -> dict[str, str]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
