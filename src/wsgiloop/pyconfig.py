"""A Python config file: ``-c wsgiloop.conf.py``, an existing ``gunicorn.conf.py``, or
``-c python:package.module``.

The file is run as a module. Its module-level names are read as settings, by wsgiloop's names or
gunicorn's (``workers = multiprocessing.cpu_count() * 2 + 1``, ``accesslog = "-"``,
``preload_app = True``), and its functions named after a server hook become hooks (``hooks``).
Skipped as the file's own machinery: modules, classes, functions that are not hooks, names that
start with ``_`` and UPPER_CASE constants. Any other name is a setting that does not exist, and
an error that names it, as in a TOML file: a typo must not pass for the default. gunicorn
settings that wsgiloop does without are judged by ``compat`` (an info line, or a refusal).
"""

from __future__ import annotations

import importlib
import inspect
import runpy
from typing import Any

from .compat import ALIASES, FOREIGN_BY_NAME, Refused, judge
from .config import ConfigError, coerce, field_names, gunicorn_names
from .hooks import HOOK_NAMES, Hooks


def is_python_config(path: str) -> bool:
    return path.endswith(".py") or path.startswith("python:")


def from_python(path: str) -> tuple[dict[str, Any], Hooks, list[str]]:
    """The settings, the hooks and the info lines (for ignored gunicorn settings) of ``path``."""
    label = f"--config {path}"
    try:
        if path.startswith("python:"):
            namespace = vars(importlib.import_module(path[len("python:"):]))
        else:
            namespace = runpy.run_path(path, run_name="__config__")
    except FileNotFoundError:
        raise ConfigError(f"{label}: no such file") from None
    except SyntaxError as exc:
        raise ConfigError(f"{label}: line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:
        raise ConfigError(f"{label}: {type(exc).__name__}: {exc}") from None
    known = set(field_names())
    renamed = {**gunicorn_names(), **ALIASES}
    values: dict[str, Any] = {}
    hooks = Hooks()
    notes: list[str] = []
    for key, value in namespace.items():
        if key.startswith("_") or key.isupper() or inspect.ismodule(value):
            continue
        if key in HOOK_NAMES:
            if not callable(value):
                raise ConfigError(f"{label}: {key} must be a function (it is a server hook)")
            setattr(hooks, key, value)
            continue
        if inspect.isclass(value) or inspect.isfunction(value) or inspect.isbuiltin(value):
            continue  # the file's own helpers
        name = renamed.get(key, key)
        if name in known:
            values[name] = coerce(name, value)
        elif key in FOREIGN_BY_NAME:
            try:
                note = judge(key, value)
            except Refused as exc:
                raise ConfigError(f"{label}: {exc}") from None
            if note is not None:
                notes.append(note)
        else:
            raise ConfigError(
                f"{label}: unknown setting {key!r} (name the file's own helpers with a leading "
                "underscore)"
            )
    if hooks.pre_exec is not None:
        notes.append("the pre_exec hook is never called: wsgiloop does not re-execute itself "
                     "(SIGHUP reloads the workers instead)")
    return values, hooks, notes
