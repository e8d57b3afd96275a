"""The `explainfix` command line: Typer commands (parse → one job → render) and rich rendering.

The command modules register themselves on :data:`app` when imported; the import order is the order of
``explainfix --help``. :func:`main` imports them itself, so that Ctrl-C while torch is still importing is
the same one-line "interrupted" (exit 130) as later.
"""
from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def _commands() -> Any:
    from . import prune, inspect_cmds, train, compress, sweep, deploy, quantize  # noqa: F401,I001  (registers the commands, in this order)
    from .base import app

    globals()["app"] = app
    return app


def main() -> None:
    """Console entry point (``explainfix``, ``python -m explainfix_cli``)."""
    try:
        _commands()
        from .base import interrupted, main as run
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
