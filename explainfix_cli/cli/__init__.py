"""The `explainfix` command line: Typer commands (parse → one job → render) and rich rendering.

The command modules register themselves on :data:`app` when imported; the import order is the order of
``explainfix --help``. :func:`main` imports them itself, so that Ctrl-C while torch is still importing is
the same one-line "interrupted" (exit 130) as later.
"""
from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["app", "main"]


def _commands() -> Any:
    from . import prune, inspect_cmds, train, compress, sweep, deploy, quantize  # noqa: F401,I001  (registers the commands, in this order)
    from .base import app

    globals()["app"] = app
    return app


class Interrupted(KeyboardInterrupt):
    """Ctrl-C in the command line. Its own type, because CPython kills the process with SIGINT at exit (status
    -2, overriding ``sys.exit(130)``) once a plain KeyboardInterrupt has passed through any ``exec``/``eval`` of
    a string - which dataclasses and namedtuples do while modules import."""


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted


def main() -> None:
    """Console entry point (``explainfix``, ``python -m explainfix_cli``)."""
    signal.signal(signal.SIGINT, _raise_interrupted)
    blocked = hasattr(signal, "pthread_sigmask")
    try:
        # Ctrl-C while torch and the rest import waits until they have: torch swallows an interrupt raised
        # while its C extension imports numpy and would run on. The pending signal is raised right below.
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            _commands()
            from .base import interrupted, main as run
        finally:
            if blocked:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    except KeyboardInterrupt:
        _interrupted_early()
    try:
        run()
    except KeyboardInterrupt:  # between two commands' own handlers (argument parsing, start-up)
        interrupted()


def _interrupted_early() -> None:
    """:func:`base.interrupted` before base.py could be imported (the same line and JSON document)."""
    import json

    sys.stderr.write("error: interrupted; nothing was written\n")
    if "--json" in sys.argv[1:]:
        doc = {"error": "interrupted; nothing was written", "hint": None, "exit_code": 130}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.exit(130)


def __getattr__(name: str) -> Any:
    if name == "app":
        return _commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
