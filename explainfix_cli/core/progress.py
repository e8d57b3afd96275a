"""Long work says how far it has come through one callback that the caller supplies, so the library never prints.

    def show(stage: str, done: int, total: int | None) -> None: ...
    prune_job(..., progress=show)   # show("saliency", 3, 10): 3 of 10 batches; total None: not known

The gradient loop, scoring, explain and the jobs all call the same :data:`Progress`; a caller that knows
how many units a stage will see puts that in with :func:`with_total`.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Optional

Progress = Callable[[str, int, Optional[int]], None]  # (stage, completed, total or None)


def with_total(progress: Progress | None, total: int | None) -> Progress | None:
    """``progress`` with every report's total replaced by ``total`` (None stays None)."""
    if progress is None:
        return None
    return lambda stage, done, _total: progress(stage, done, total)
