"""The ``wsgiloop`` command, in gunicorn's and uvicorn's habits.

``wsgiloop module:app --bind 0.0.0.0:8000 --threads 16``. Every option comes from the settings'
declarations in ``config``: their wsgiloop flags, and gunicorn's spellings as aliases, so that a
gunicorn command line works with the one word changed. gunicorn settings that wsgiloop does
without are accepted with a one-line reason or refused with one (``compat``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import __version__, exitcodes, handover
from .compat import FOREIGN, Refused, judge, worker_class_note
from .config import (
    Config,
    ConfigError,
    Option,
    field_names,
    from_environ,
    from_platform,
    from_toml,
    option_of,
    render,
)
from .loader import AppImportError, load_app, load_paste

__all__ = ["AppImportError", "build_parser", "config_from_args", "load_app", "main"]

#: Exit statuses (also in the README): 0 a clean stop; 1 the server failed while running;
#: 2 a bad command line or configuration, or (one worker) an app that does not import.
EXIT_CONFIG = exitcodes.USAGE

#: Read from the current directory when no --config is given, the first that exists.
DEFAULT_CONFIG_FILES = ("wsgiloop.conf.py", "gunicorn.conf.py")


def build_parser() -> argparse.ArgumentParser:
    """Options default to "not given" so that the config file and environment can fill them."""
    defaults = Config()
    p = argparse.ArgumentParser(
        prog="wsgiloop",
        usage="%(prog)s [OPTIONS] [APP]",
        description="Serve a WSGI application: h11 on an asyncio event loop, the app on threads.",
        epilog="Every option can also come from a config file (-c: TOML, or Python as a "
        "gunicorn.conf.py), a WSGILOOP_<NAME> environment variable or WSGILOOP_CMD_ARGS. "
        "Precedence: defaults < PORT/WEB_CONCURRENCY < file < WSGILOOP_<NAME> < "
        "WSGILOOP_CMD_ARGS (or GUNICORN_CMD_ARGS) < command line. Without -c, "
        "./wsgiloop.conf.py or ./gunicorn.conf.py is read if there.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("app", metavar="APP", nargs="?", help="MODULE:ATTRIBUTE or MODULE:FACTORY()")
    p.add_argument("--version", action="version", version=f"wsgiloop {__version__}")
    p.add_argument("-c", "--config", dest="config_file", default=None, metavar="FILE",
                   help="a TOML file of settings (threads = 8), or a Python one "
                   "(gunicorn.conf.py: settings as module names, server hooks as functions); "
                   "python:MODULE imports one")
    p.add_argument("--check-config", "--print-config", action="store_true", default=False,
                   help="print the effective configuration, check the app loads, and exit")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in field_names():
        option = option_of(name)
        if option is None or not option.flags:
            continue
        if option.group not in groups:
            groups[option.group] = p.add_argument_group(option.group)
        _add(groups[option.group], name, option, getattr(defaults, name))
    foreign = p.add_argument_group(
        "gunicorn settings wsgiloop does without (accepted with a reason, or refused with one)"
    )
    for item in FOREIGN:
        if item.flags:
            kwargs: dict[str, Any] = (
                {"metavar": "VALUE"} if item.takes_value else {"action": "store_true"}
            )
            foreign.add_argument(*item.flags, dest=f"foreign:{item.name}",
                                 help=f"{item.verdict.split('-')[0]}: {item.reason}", **kwargs)
    return p


def _add(group: argparse._ArgumentGroup, name: str, option: Option, default: Any) -> None:
    """One setting's flags; its gunicorn spellings are hidden aliases named in its help."""
    text = option.help
    if option.show_default and option.kind in ("value", "both"):
        shown = "on" if default is True else "off" if default is False else default
        if shown not in (None, ""):
            text += f" ({shown})"
    if option.gunicorn_flags:
        text += f"; gunicorn: {', '.join(option.gunicorn_flags)}"
    kwargs: dict[str, Any] = {"dest": name}
    if option.kind == "value":
        kwargs["type"] = option.parse or _parse_for(default)
        if option.choices is not None:
            kwargs["choices"] = option.choices
        if option.metavar:
            kwargs["metavar"] = option.metavar
    elif option.kind == "append":
        kwargs["action"] = "append"
        kwargs["type"] = option.parse or str
        if option.metavar:
            kwargs["metavar"] = option.metavar
    elif option.kind == "on":
        kwargs["action"] = "store_true"
    elif option.kind == "off":
        kwargs["action"] = "store_false"
    else:
        kwargs["action"] = argparse.BooleanOptionalAction
    group.add_argument(*option.flags, help=text, **kwargs)
    if option.gunicorn_flags:
        group.add_argument(*option.gunicorn_flags, help=argparse.SUPPRESS, **kwargs)


def _parse_for(default: Any) -> Callable[[str], Any]:
    if isinstance(default, float):
        return float
    if isinstance(default, int) and not isinstance(default, bool):
        return int
    return str


def config_from_args(
    args: argparse.Namespace,
    environ: Mapping[str, str] | None = None,
    notes: list[str] | None = None,
) -> Config:
    """Defaults < ``PORT``/``WEB_CONCURRENCY`` < ``--config`` file < ``WSGILOOP_*`` environment
    < ``WSGILOOP_CMD_ARGS`` < command line. Info lines for gunicorn settings that are ignored
    go to ``notes``."""
    environ = os.environ if environ is None else environ
    notes = [] if notes is None else notes
    given = _given(args, notes)
    config_file = given.pop("config_file", None)
    # GUNICORN_CMD_ARGS too, so that a Dockerfile's ENV keeps working once CMD says wsgiloop.
    source = "WSGILOOP_CMD_ARGS" if environ.get("WSGILOOP_CMD_ARGS") else "GUNICORN_CMD_ARGS"
    cmd_args = environ.get(source, "").strip()
    from_cmd_args: dict[str, Any] = {}
    if cmd_args:
        try:
            parsed = build_parser().parse_args(shlex.split(cmd_args))
        except SystemExit:
            raise ConfigError(f"{source}={cmd_args!r}: see the error above") from None
        from_cmd_args = _given(parsed, notes)
        config_file = from_cmd_args.pop("config_file", None) or config_file
    if config_file is None:
        # As gunicorn reads ./gunicorn.conf.py when no -c is given.
        for candidate in DEFAULT_CONFIG_FILES:
            if os.path.isfile(candidate):
                config_file = candidate
                notes.append(f"Using ./{candidate} (no --config given)")
                break
    values: dict[str, Any] = {}
    values.update(from_platform(environ))
    hooks = None
    if config_file:
        from .pyconfig import from_python, is_python_config

        if is_python_config(config_file):
            file_values, hooks, file_notes = from_python(config_file)
            notes += file_notes
        else:
            file_values = from_toml(config_file)
        values.update(file_values)
    values.update(from_environ(environ))
    values.update(from_cmd_args)
    values.update(given)
    config = Config(**values)
    if hooks is not None:
        config.hooks = hooks
    note = worker_class_note(config.worker_class)
    if note:
        notes.append(note)
    return config.validate()


def _given(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """The settings a parsed command line gave, with gunicorn-only flags judged."""
    given = dict(vars(args))
    given.pop("check_config", None)
    for key in [k for k in given if k.startswith("foreign:")]:
        try:
            note = judge(key.partition(":")[2], given.pop(key))
        except Refused as exc:
            raise ConfigError(str(exc)) from None
        if note:
            notes.append(note)
    if given.get("config_file") is None:
        given.pop("config_file", None)
    return given


def main(argv: Sequence[str] | None = None) -> int:
    """The command; its exit statuses are ``exitcodes``' (one per cause, whatever --workers)."""
    from . import process
    from .hooks import ServerView
    from .logs import configure, error_log
    from .sockets import ListenError, parse_bind

    parser = build_parser()
    args = parser.parse_args(argv)
    notes: list[str] = []
    try:
        config = config_from_args(args, notes=notes)
        if config.app is None and config.paste is None:
            raise ConfigError("the APP argument is required (e.g. wsgiloop wsgiloop.demo:app)")
        for value in config.bind:
            parse_bind(value)  # a malformed --bind is a usage error, found before anything starts
    except (ConfigError, TypeError, ValueError) as exc:
        sys.stderr.write(f"wsgiloop: error: {exc}\n")  # one line: the option and the reason
        return EXIT_CONFIG
    try:
        handover.remember_start_dir()
        process.prepare(config)
        ids = process.resolve_ids(config)
        configure(
            config.log_level,
            config.access_log,
            config.log_config,
            config.access_log_json,
            access_file=config.access_log_file,
            error_file=config.error_log_file,
            log_config_dict=config.log_config_dict,
            capture_output=config.capture_output,
        )
    except (ConfigError, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        sys.stderr.write(f"wsgiloop: error: {reason}\n")
        return EXIT_CONFIG
    for note in notes:
        error_log.info("%s", note)
    paste = config.paste
    spec = config.app or ""

    def load() -> Any:
        """The app, or an ``AppImportError`` whose message is one line, whatever went wrong (the
        original exception is its cause, logged with its traceback at debug level)."""
        try:
            return load_paste(paste) if paste else load_app(spec)
        except AppImportError:
            raise
        except Exception as exc:
            raise AppImportError(f"could not load {paste or spec!r}: {_one_line(exc)}") from exc

    if args.check_config:
        sys.stdout.write(render(config))
        try:
            load()
        except AppImportError as exc:
            error_log.error("Error: the app does not load: %s", exc)
            return exitcodes.APP_LOAD
        return exitcodes.OK
    pidfile = process.PidFile(config.pid) if config.pid else None
    server = ServerView(config, config.workers)
    try:
        if pidfile is not None:
            pidfile.create()
        config.hooks.run("on_starting", server)
        _check_tls(config)
        if config.workers > 1 or config.reload:
            from .supervisor import run_supervisor

            return run_supervisor(load, config, server, ids)
        from .server import run_alone

        return run_alone(load, config, server, ids)
    except ListenError as exc:
        error_log.error("Error: %s", exc)
        return exitcodes.LISTEN
    except AppImportError as exc:  # --preload, or --workers 1
        error_log.error("Error: %s", exc)
        error_log.debug("The app failed to load", exc_info=exc.__cause__ or exc)
        return exitcodes.APP_LOAD
    except ConfigError as exc:
        error_log.error("Error: %s", exc)
        return EXIT_CONFIG
    except handover.HandingOver as handing:
        handover.exec_self(handing.kept)  # the same pid goes on: no on_exit, the pid file stays
    finally:
        config.hooks.run("on_exit", server)
        if pidfile is not None:
            pidfile.remove()


def _one_line(exc: BaseException) -> str:
    """``RuntimeError: broken (app.py:3)``: the exception and the innermost place it came from."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f"{exc.filename}:{exc.lineno}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = f"{frames[-1].filename}:{frames[-1].lineno}"
    text = exc.msg if isinstance(exc, SyntaxError) else " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" + (f" ({where})" if where else "")


def _check_tls(config: Config) -> None:
    """Load the certificates once before anything starts, so a bad path is one line here
    rather than a worker crashing (and being restarted) on every attempt."""
    if not config.certfile:
        return
    import ssl

    from .server import tls_context

    try:
        tls_context(config)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLS: cannot use --certfile/--keyfile/--ca-certs: {exc}") from None
