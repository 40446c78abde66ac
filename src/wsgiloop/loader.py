"""Finding the WSGI callable: ``module:attr``, a factory call, or a PasteDeploy .ini file."""

from __future__ import annotations

import ast
import importlib
import os
from typing import Any


class AppImportError(Exception):
    """The APP argument does not name a WSGI callable."""


def load_app(spec: str) -> Any:
    """``module:attr``, ``module:attr.sub``, ``module:factory()`` or ``module:factory(1, 'x')``.

    A bare ``module`` means ``module:application``, as with gunicorn.
    """
    module_name, _, expr = spec.partition(":")
    expr = expr or "application"
    call_args: tuple[Any, ...] | None = None
    kwargs: dict[str, Any] = {}
    if expr.endswith(")") and "(" in expr:
        expr, _, arg_text = expr.partition("(")
        try:
            call = ast.parse(f"f({arg_text}", mode="eval").body
            assert isinstance(call, ast.Call)
            call_args = tuple(ast.literal_eval(a) for a in call.args)
            kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        except (SyntaxError, ValueError, AssertionError) as exc:
            raise AppImportError(f"{spec!r}: factory arguments must be literals") from exc
    if not module_name or not all(part.isidentifier() for part in expr.split(".")):
        raise AppImportError(f"{spec!r}: expected MODULE:ATTRIBUTE, e.g. myproject.wsgi:app")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise  # an import inside the app failed: show the real traceback
        raise AppImportError(f"could not import module {module_name!r}") from exc
    for part in expr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AppImportError(f"module {module_name!r} has no attribute {expr!r}") from None
    if call_args is not None:
        obj = obj(*call_args, **kwargs)
    if not callable(obj):
        raise AppImportError(f"{spec!r} is not callable (got {type(obj).__name__})")
    return obj




def load_paste(path: str) -> Any:
    """The app of a PasteDeploy ``.ini`` file (``--paste``, as gunicorn's), its ``[app:main]``
    or the section named after ``#``: ``production.ini#api``."""
    try:
        from paste.deploy import loadapp  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise AppImportError(
            "--paste needs PasteDeploy: pip install 'wsgiloop[paste]'"
        ) from None
    file, _, name = path.partition("#")
    if not os.path.exists(file):
        raise AppImportError(f"--paste {file}: no such file")
    return loadapp(f"config:{os.path.abspath(file)}" + (f"#{name}" if name else ""))
