"""``--reload``: watch the app's files and reload the workers when one changes (development).

The watcher is a thread of the supervisor (``--reload`` always runs one, even with one worker),
so the process that holds the sockets never imports the app: a change only starts a reload, and
a reload into code that does not import keeps the last good workers serving (see supervisor).

What is watched: every ``.py`` file under the current directory (after ``--chdir``) and the
``--pythonpath`` directories, as uvicorn does by default, plus each ``--reload-extra-file``
(templates, settings files). The engine is ``watchfiles`` (inotify, the watcher uvicorn and
granian use) when installed (``pip install 'wsgiloop[reload]'``), else a poll of modification
times once a second; ``--reload-engine poll`` forces the poll. Directories that never hold the
app's own code (``.git``, virtual environments, ``__pycache__``, ``node_modules``) are skipped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .config import Config
from .logs import error_log

POLL_INTERVAL = 1.0
_SKIPPED_DIRS = frozenset(
    {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", "venv", ".tox", ".mypy_cache",
     ".pytest_cache", ".ruff_cache", "site-packages"}
)


class Watcher:
    """Calls ``on_change(path)`` from its own thread for each change it sees."""

    def __init__(self, config: Config, on_change: Callable[[str], None]) -> None:
        self.roots = [Path(os.getcwd())] + [Path(p).resolve() for p in config.pythonpath]
        self.extra = [Path(p).resolve() for p in config.reload_extra_files]
        self.on_change = on_change
        self.engine = config.reload_engine
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="wsgiloop-reload", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        if self.engine != "poll":
            try:
                import watchfiles
            except ImportError:
                if self.engine == "inotify":
                    error_log.warning("--reload-engine inotify needs watchfiles "
                                      "(pip install 'wsgiloop[reload]'): polling instead")
            else:
                error_log.info("Reloading on changes to %s (watchfiles)", self._described())
                self._watch(watchfiles)
                return
        error_log.info("Reloading on changes to %s (polling every %gs)", self._described(),
                       POLL_INTERVAL)
        self._poll()

    def _described(self) -> str:
        return ", ".join([f"{root}/**/*.py" for root in self.roots] + [str(p) for p in self.extra])

    def _wanted(self, path: str) -> bool:
        candidate = Path(path)
        if candidate in self.extra:
            return True
        return candidate.suffix == ".py" and not _SKIPPED_DIRS.intersection(candidate.parts)

    def _watch(self, watchfiles: object) -> None:
        watch = watchfiles.watch  # type: ignore[attr-defined]
        paths = [str(p) for p in self.roots] + [str(p) for p in self.extra if p.exists()]
        for changes in watch(*paths, stop_event=self._stop, watch_filter=None,
                             raise_interrupt=False, rust_timeout=1000, debounce=300):
            changed = sorted({path for _, path in changes if self._wanted(path)})
            if changed:
                self.on_change(changed[0])

    def _poll(self) -> None:
        seen = self._snapshot()
        while not self._stop.wait(POLL_INTERVAL):
            now = self._snapshot()
            changed = sorted(path for path, mtime in now.items() if seen.get(path) != mtime)
            changed += sorted(path for path in seen if path not in now)
            seen = now
            if changed:
                self.on_change(changed[0])

    def _snapshot(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for path in self._files():
            try:
                found[path] = os.stat(path).st_mtime
            except OSError:
                continue
        return found

    def _files(self) -> Iterator[str]:
        for path in self.extra:
            yield str(path)
        for root in self.roots:
            for directory, dirs, files in os.walk(root):
                dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith(".")]
                for name in files:
                    if name.endswith(".py"):
                        yield os.path.join(directory, name)
