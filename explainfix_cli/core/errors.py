"""One exception family; the CLI maps each class to the exit code of docs/CLI.md.

    ExplainFixError
    ├── BadInput         exit 2  (missing/corrupt file, wrong arch, empty data, refused pickle, bad value)
    ├── CannotProcess    exit 3  (an op or coupling the engine cannot prove correct, export failure)
    ├── CheckFailed      exit 1  (output mismatch, quality gate)
    └── InternalError    exit 4  (a bug: a self-check between explainfix's own models failed; please report)

Any other exception that reaches the CLI is also exit 4 (a bug here or in a library called).

Every error carries a one-line message and an optional hint ("what to do").
"""
from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (its type name when there is none), cut to ``limit``."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


class ExplainFixError(Exception):
    exit_code = 3

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class BadInput(ExplainFixError):
    exit_code = 2


class CannotProcess(ExplainFixError):
    exit_code = 3


class CheckFailed(ExplainFixError):
    exit_code = 1


class InternalError(ExplainFixError):
    exit_code = 4


class UnsupportedOp(CannotProcess):
    """The dependency engine met an op it cannot prove correct; names the op and the module path."""

    def __init__(self, op: str, where: str, why: str = "not supported by the channel-dependency engine",
                 module: str | None = None, hard: bool = False):
        super().__init__(
            f"cannot prune through op `{op}` at `{where}`: {why}",
            hint="the model was not changed; lower --pct will not help. Open an issue with this line, "
            "or prune a model without this op.",
        )
        self.op = op
        self.where = where
        self.why = why
        self.module = module  # the innermost submodule holding the op (None: the model's own forward)
        self.hard = hard  # True: keeping that submodule whole would not help either (shared weights)
