"""Where a benchmark run happens: the directories, the loopback address, which CPU does what.

Every other module of the harness takes its places from here, so that moving the results or
pinning differently is one edit. Progress lines go to stderr (``log``), keeping stdout for the
report alone.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SOURCE_DIR = REPO_ROOT / "src" / "wsgiloop"
VENV_DIR = BENCH_DIR / ".venv"
RESULTS_DIR = BENCH_DIR / "results"
REQUIREMENTS = BENCH_DIR / "requirements.txt"

HOST = "127.0.0.1"
#: The server gets one CPU, the load generator the other (``taskset -c``) ...
SERVER_CPU = "0"
LOAD_CPU = "1"
#: ... except with several worker processes, when both get both.
SHARED_CPUS = f"{SERVER_CPU},{LOAD_CPU}"


@dataclass(frozen=True)
class Placement:
    """The CPU list (``taskset -c``) the server and the load generators run on; None: free."""

    server: str | None
    load: str | None


def placement(pin: bool, workers: int) -> Placement:
    if not pin:
        return Placement(None, None)
    if workers > 1:
        return Placement(SHARED_CPUS, SHARED_CPUS)
    return Placement(SERVER_CPU, LOAD_CPU)


def taskset(cpus: str | None) -> list[str]:
    """The argv prefix that pins a command to ``cpus`` (None: not pinned); taskset execs the
    command, so the pid of the child is the command's own, not a wrapper's."""
    return ["taskset", "-c", cpus] if cpus else []


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
