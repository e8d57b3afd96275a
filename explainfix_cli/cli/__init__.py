"""The `explainfix` command line: Typer commands (parse → one job → render) and rich rendering.

The command modules register themselves on :data:`app` when imported; the import order is the order of
``explainfix --help``. :func:`main` imports them itself, so that Ctrl-C while torch is still importing is
the same one-line "interrupted" (exit 130) as later.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Callable, ContextManager, Iterator

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
    try:
        with _ctrl_c() as held_back:
            try:
                with held_back():  # a Ctrl-C during the imports is raised as this block ends, and caught here
                    _commands()
                    from .base import interrupted, main as run
            except KeyboardInterrupt:
                _interrupted_early()
            try:
                run()
            except KeyboardInterrupt:  # between two commands' own handlers (argument parsing, start-up)
                interrupted()
    except KeyboardInterrupt:  # the instant before the handler is in place, or a second Ctrl-C while exiting
        _interrupted_early()


@contextlib.contextmanager
def _ctrl_c() -> Iterator[Callable[[], ContextManager[None]]]:
    """Ctrl-C raises :class:`Interrupted` while ``main`` runs (the caller's handler is put back after), and
    inside the block it yields, waits until the block ends: torch swallows an interrupt raised while its C
    extension imports numpy, and would run on. Only where Ctrl-C is Python's default: a caller that ignores
    SIGINT (``cmd &`` in a script), a thread other than the main one, or a caller with its own handler keeps
    its own. Without pthread_sigmask (Windows) nothing is held back."""
    ours = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.default_int_handler

    @contextlib.contextmanager
    def held_back() -> Iterator[None]:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}) if ours and hasattr(signal, "pthread_sigmask") else None
        try:
            yield
        finally:
            if before is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, before)

    if ours:
        signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield held_back
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


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
