"""Meet a budget: search the one knob of a criterion (pct for the filter criteria, the number of groups
removed for the channel criterion) for the plan whose MACs / parameters come closest to the target.

Scores are computed once before the search; each step only re-plans and counts (no forward/backward
pass over the calibration data). Coupled groups and channel rounding move the cost in steps, so the
best plan may miss the target: :class:`BudgetOutcome` says by how much and why.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..core.errors import BadInput
from .options import BUDGET_TOLERANCE


@dataclass
class BudgetOutcome:
    metric: str  # macs | params
    requested: float  # fraction of the original kept
    achieved: float
    knob: float  # pct, or the number of groups removed
    evaluations: int
    within_tolerance: bool
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def search(evaluate: Callable[[float], float], lo: float, hi: float, target: float, metric: str, *,
           integer: bool, steps: int = 14, why_floor: str = "") -> BudgetOutcome:
    """``evaluate(knob)`` → fraction kept (non-increasing in the knob). Bisection on [lo, hi]; returns the
    evaluated knob whose fraction is closest to ``target`` without exceeding it by more than the tolerance."""
    seen: dict[float, float] = {}

    def at(x: float) -> float:
        x = float(round(x)) if integer else x
        if x not in seen:
            seen[x] = evaluate(x)
        return seen[x]

    flag = "--target-macs" if metric == "macs" else "--target-params"
    floor = at(hi)
    if floor > target * (1 + BUDGET_TOLERANCE):
        raise BadInput(f"{flag} {target:.3g} is below what this model allows: the smallest reachable is {floor:.3f} "
                       f"of the original ({1 / floor:.2f}x){why_floor}",
                       hint=f"e.g. {flag} {min(0.99, floor * 1.05):.3g}")
    a, b = lo, hi
    for _ in range(steps):
        if integer and b - a <= 1:
            break
        mid = (a + b) / 2
        if at(mid) > target:
            a = mid
        else:
            b = mid
    if integer:  # steps (coupled groups, rounding) make the cost non-monotone near the target: look around
        for x in range(max(int(lo), int(b) - 8), min(int(hi), int(b) + 8) + 1):
            at(x)
    ok = {x: f for x, f in seen.items() if f <= target * (1 + BUDGET_TOLERANCE)}
    knob = min(ok, key=lambda x: (abs(ok[x] - target), ok[x] > target, x))
    achieved = ok[knob]
    within = abs(achieved - target) <= BUDGET_TOLERANCE * target
    note = "" if within else (
        f"closest plan keeps {achieved:.3f} (asked {target:.3f}): coupled channel groups and channel rounding move "
        "the cost in steps; --round-to 1 gets closer")
    return BudgetOutcome(metric, target, achieved, knob, len(seen), within, note)
