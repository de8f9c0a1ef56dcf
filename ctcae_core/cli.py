"""The one error boundary of every command line (``ctcae_core.*``, ``search/*.py``).

An expected failure (a bad file, a bad value, an OS error on a path, a server that cannot be
reached) prints one line, ``error: <what, naming the file or key>; <what to do>``, and exits 2.
Anything else is a bug and keeps its traceback. ``--debug`` or ``CTCAE_DEBUG=1`` shows the
traceback of every error.
"""
from __future__ import annotations

import argparse
import errno
import json
import math
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


class UserError(Exception):
    """An expected failure whose message names the file or key and says what to do."""


def _expected() -> tuple[type[BaseException], ...]:
    # Imported here: search/ reuses this module without paying for torch at import time.
    from ctcae_core.config import ConfigError
    from ctcae_core.data.storage import DatasetError

    return (UserError, ConfigError, DatasetError, OSError)


def debug_enabled(argv: Sequence[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("CTCAE_DEBUG", "") not in ("", "0")


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None,
             expected: tuple[type[BaseException], ...] = (), json_error: bool = False,
             clean: Callable[[str], str] = str) -> int:
    """Call ``main(argv)``; an expected failure becomes one ``error:`` line on stderr and exit code 2.

    ``expected`` adds exception types (e.g. an MLflow client's) to the ones every command expects.
    ``json_error``: also print ``{"error": ...}`` on stdout, for commands whose last stdout line is JSON.
    ``clean`` rewrites the message before it is printed (search/ takes passwords out of URLs).
    """
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's exits (--help, a bad argument) as return codes, for in-process callers
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C: what was done is kept; say how to continue
        if debug_enabled(argv):
            raise
        message = " ".join(str(exc).split()) or "interrupted by Ctrl-C; run the command again"
        print(f"error: {clean(message)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except _expected() + tuple(expected) as exc:
        if debug_enabled(argv):
            raise
        message = clean(describe(exc))
        if json_error:
            print(json.dumps({"error": message}))
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR


def describe(exc: BaseException) -> str:
    """One line for an expected exception (OS errors name their path and say what to check).

    The project's own errors carry their "; what to do" part; another library's error (an MLflow
    client's, an OS error without a path) gets a generic one.
    """
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not getattr(exc, "filename", None):
        return "no space left on device; free some space or write elsewhere, then run the command again"
    if isinstance(exc, OSError) and not isinstance(exc, UserError) and getattr(exc, "filename", None):
        what = exc.strerror or type(exc).__name__
        if exc.errno == errno.ENOSPC:
            return f"{exc.filename}: {what}; free some space or write elsewhere, then run the command again"
        return f"{exc.filename}: {what}; check the path and its permissions"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if type(exc).__module__.split(".")[0] not in ("ctcae_core", "search", "__main__") and "; " not in text:
        text += "; check the arguments (--debug shows the traceback)"
    return text


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None: a metric that is undefined (e.g. the phase spread
    when no output magnitude passes its threshold) prints as ``null``, never as invalid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the boundary's format: one ``error:`` line, exit code 2, and ``--debug``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help="show the Python traceback of any error")

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}; see {self.prog} --help", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def count(lo: int = 1) -> Callable[[str], int]:
    """argparse type: an integer >= ``lo`` (image counts, sizes, workers)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}") from None
        if value < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {value}")
        return value

    parse.__name__ = f"integer >= {lo}"
    return parse


def finite(text: str) -> float:
    """argparse type: a finite number (NaN and infinities are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value
