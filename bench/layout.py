"""Where a benchmark run happens: the directories, the loopback address, which CPU does what.

Every other module of the harness takes its places from here, so that moving the results or
pinning differently is one edit. Progress lines go to stderr (``log``), keeping stdout for the
report alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
SOURCE_DIR = REPO_ROOT / "src" / "wsgiloop"
VENV_DIR = BENCH_DIR / ".venv"
RESULTS_DIR = BENCH_DIR / "results"
REQUIREMENTS = BENCH_DIR / "requirements.txt"

HOST = "127.0.0.1"
#: The server gets one CPU, the load generator the other (``taskset -c``).
SERVER_CPU = "0"
LOAD_CPU = "1"


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
