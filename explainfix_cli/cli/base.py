"""The Typer app and the one place where errors become exit codes (docs/CLI.md, "Exit codes").

0 done, 1 a check failed, 2 bad usage or input, 3 cannot process, 4 internal error (a bug; please report). Commands live in the sibling modules
(prune.py, inspect_cmds.py, train.py, compress.py, deploy.py); each is parse → one job → render.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import traceback
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer

from ..core.dist import launch_rank as _rank
from ..core.errors import ExplainFixError, first_line
from ..io.outdir import disk_error

app = typer.Typer(
    name="explainfix",
    help="ExplainFix for real checkpoints: prune spatial filters and dead channels, explain spectra, "
    "fix filters, export and verify ONNX.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)

def _version(value: bool) -> None:
    if value:
        from ..core.version import __version__

        sys.stdout.write(f"explainfix {__version__}\n")
        raise typer.Exit(0)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", "-V", is_eager=True, callback=_version,
                                        help="Print the version and exit.")) -> None:
    """ExplainFix for real checkpoints: prune spatial filters and dead channels, explain spectra, fix filters,
    export and verify ONNX."""


def _print_error(message: str, hint: str | None = None) -> None:
    from .render import console

    if _rank():  # other ranks print nothing but their errors, marked with the rank
        sys.stderr.write(f"error (rank {_rank()}): {' '.join(message.split())}\n")
        return
    from rich.markup import escape

    # the message is text, not markup: `pip install explainfix-cli[timm]` keeps its brackets
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True, markup=True, highlight=False)
    if hint:
        console.print(f"[dim]hint:[/] {escape(hint)}", soft_wrap=True)


def _fail(code: int, message: str, hint: str | None = None, json_out: bool = False) -> None:
    """The one way a command fails: one ``error:`` line (and ``hint:``) on stderr and, under ``--json``, one
    JSON error document on stdout, then the exit code."""
    global _failed_said
    _failed_said = True
    _print_error(message, hint)
    if json_out:
        emit_json(error_document(message, hint, code))
    raise typer.Exit(code)


_failed_said = False  # _fail printed the error line (main tells its exit 130 from Typer's silent one)


def error_document(message: str, hint: str | None, code: int) -> dict:
    """What ``--json`` prints on stdout for a failure (docs/CLI.md, "Exit codes")."""
    return {"error": " ".join(message.split()), "hint": hint, "exit_code": code}


def command(fn: Callable) -> Callable:
    """The one place where a command's outcome becomes output and an exit code. The command returns its job's
    result (jobs/result.py ``JobResult``): under ``--json`` its ``to_json()`` is the one document on stdout, and
    ``passed`` False is exit 1 with its ``failure_message()`` as the error line. The domain exceptions map to
    their exit codes (an error document on stdout under ``--json``). ``--debug`` (or EXPLAINFIX_DEBUG=1) prints
    the full traceback first; the exit code stays the documented one."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug") or os.environ.get("EXPLAINFIX_DEBUG") == "1"
        as_json = bool(kwargs.get("json_out"))
        if _rank():
            from .render import console

            console.quiet = True  # reports, tables and progress: rank 0 only (docs/CLI.md, "Running on many GPUs")
        try:
            if not as_json:
                result = fn(*args, **kwargs)
            else:
                # --json: stdout carries the one document; what libraries print on it meanwhile (ultralytics
                # logs to stdout) goes to stderr
                global _json_stream
                _json_stream = sys.stdout
                try:
                    with contextlib.redirect_stdout(sys.stderr):
                        result = fn(*args, **kwargs)
                finally:
                    _json_stream = None
            _finish(result, as_json)
        except typer.Exit:
            raise
        except ExplainFixError as e:
            if debug:
                traceback.print_exc()
            _fail(e.exit_code, e.message, e.hint, as_json)
        except KeyboardInterrupt:
            _fail(130, "interrupted; nothing was written", None, as_json)
        except OSError as e:
            if debug:
                traceback.print_exc()
            if e.errno in WRITE_ERRNOS:  # a full or read-only disk met outside io/outdir.py: the user's to fix
                err = disk_error(e)
                _fail(err.exit_code, err.message, err.hint, as_json)
            _internal(e, debug, as_json)
        except Exception as e:  # a bug or an unexpected library error: one line, exit 4
            if debug:
                traceback.print_exc()
            _internal(e, debug, as_json)

    return wrapper


_json_stream: Any = None  # the real stdout while a --json command runs (see command)


def _finish(result: Any, as_json: bool) -> None:
    """A job's result as the ``--json`` document and the exit code (0, or 1 when a check failed)."""
    if result is None:
        return
    if as_json:
        emit_json(result.to_json())
    if not result.passed:  # the document (under --json) already says why: no error document besides it
        _fail(1, result.failure_message(), result.failure_hint())
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS)


def _internal(e: Exception, debug: bool, as_json: bool) -> None:
    hint = "please report it with the traceback above" if debug else "rerun with --debug for the traceback, and report it"
    _fail(4, f"internal error: unexpected {type(e).__name__}: {first_line(e)}", hint, as_json)


def emit_json(doc: Any) -> None:
    if _rank():
        return
    (_json_stream or sys.stdout).write(json.dumps(doc, indent=2, default=str) + "\n")


def _usage_error_types() -> tuple[type, ...]:
    """Typer ≥ 0.2x vendors click (its errors derive from TyperException); older Typer uses click."""
    types: list[type] = []
    try:
        from typer.exceptions import TyperException

        types.append(TyperException)
    except ImportError:
        pass
    try:
        import click

        types.append(click.ClickException)
    except ImportError:
        pass
    return tuple(types)


def main() -> None:
    """Console entry point: usage errors become one ``error:`` line (exit 2) like every other error."""
    global _failed_said
    _failed_said = False  # a fresh process-level run (main may be called more than once in one interpreter)
    try:
        code = app(standalone_mode=False)  # returns the exit code of a typer.Exit raised in a command
        if code == 130 and not _failed_said:  # Typer made a Ctrl-C while it parsed the arguments a silent Exit(130)
            interrupted()
        sys.exit(code if isinstance(code, int) else 0)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        if code is not None and not isinstance(code, int):  # a library's sys.exit("message"): a failure, said
            _print_error(str(code))
            code = 1
        sys.exit(code or 0)
    except (typer.Abort, KeyboardInterrupt):
        interrupted()
    except _usage_error_types() as e:
        if type(e).__name__ == "NoArgsIsHelpError":
            sys.exit(0)  # the help was printed
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "explainfix"
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        code = getattr(e, "exit_code", 2) or 2
        hint = _pretrained_hint(message, cmd) or f"see `{cmd} --help`"
        _print_error(message, hint)
        if "--json" in sys.argv[1:]:
            emit_json(error_document(message, hint, code))
        sys.exit(code)


def _pretrained_hint(message: str, cmd: str) -> str | None:
    """MODEL left out with ``--arch timm:NAME``/``torchvision:NAME``: the library's pretrained model is MODEL itself."""
    args = sys.argv[1:]
    arch = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--arch"), None)
    if "Missing argument" in message and arch and arch.split(":")[0] in ("timm", "torchvision"):
        return f"for {arch}'s pretrained weights (from the library's cache) pass it as MODEL: {cmd} {arch} …"
    return None


def interrupted() -> None:
    """Ctrl-C at any moment (also while torch imports): one line, exit 130, and the JSON document under --json."""
    message = "interrupted; nothing was written"
    sys.stderr.write(f"error: {message}\n")
    if "--json" in sys.argv[1:]:
        sys.stdout.write(json.dumps(error_document(message, None, 130), indent=2) + "\n")
    sys.exit(130)
