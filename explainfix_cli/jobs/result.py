"""The one result shape every job returns.

``report`` is the job's ``--json`` document (and what ``report.json`` holds where one is written); ``passed``
False means a check failed (exit 1), said in one line by ``failure_message()`` (+ ``failure_hint()``). The
CLI's command wrapper (cli/base.py ``command``) is the one place that turns a result into the ``--json``
document and the exit code — as onnxsim's ``compare() -> bool`` and optimum's uniform ``run()`` do.

    job = prune_job(...)          # any *_job
    job.passed, job.to_json()
"""
from __future__ import annotations

from typing import Any


class JobResult:
    """Mixed into each job's result dataclass (which holds ``report``)."""

    report: dict[str, Any]

    @property
    def passed(self) -> bool:
        return True

    def to_json(self) -> dict[str, Any]:
        return self.report

    def failure_message(self) -> str:
        return f"{self.report.get('command', 'the command')}: a check failed"

    def failure_hint(self) -> str | None:
        return None
