"""Meet a budget: search the one knob of a criterion (pct for the filter criteria, the number of groups
removed for the channel criterion) for the plan whose MACs / parameters come closest to the target.

Scores are computed once before the search; each step only re-plans and counts (no forward/backward
pass over the calibration data). Coupled groups and channel rounding move the cost in steps, so the
best plan may miss the target: :class:`BudgetOutcome` says by how much and why.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..core.errors import BadInput
from .options import BUDGET_TOLERANCE


def met(achieved: float, target: float) -> bool:
    """Did a plan meet a budget: the fraction kept within :data:`BUDGET_TOLERANCE` of the one asked for."""
    return abs(achieved - target) <= BUDGET_TOLERANCE * target


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


def check_reachable(floor: float, target: float, metric: str, why_floor: str = "") -> None:
    """Refuse (exit 2) a budget below ``floor``, the smallest fraction any plan reaches — a property of the
    channel plan, checked before any data is read. The message and the hint give the same number: the floor
    rounded up to 3 significant digits, at least 3 decimals (so that value, given back, is accepted and met
    within the tolerance: 3 decimals of a floor near 0.02 were 5 % above it)."""
    if floor <= target * (1 + BUDGET_TOLERANCE):
        return
    flag = "--target-macs" if metric == "macs" else "--target-params"
    decimals = max(3, 2 - math.floor(math.log10(floor))) if floor > 0 else 3
    shown = math.ceil(floor * 10 ** decimals - 1e-9) / 10 ** decimals
    factor = math.floor(100 / shown) / 100
    if shown >= 1:
        raise BadInput(f"{flag} {target:.3g} is below what this model allows: no channel can be removed{why_floor}",
                       hint="`explainfix info MODEL` lists the prunable channel groups and what keeps channels whole")
    raise BadInput(f"{flag} {target:.3g} is below what this model allows: the smallest reachable is {shown:.{decimals}f} "
                   f"of the original ({factor:.2f}x){why_floor}",
                   hint=f"e.g. {flag} {shown:.{decimals}f} (the smallest reachable)")


def search(evaluate: Callable[[float], float], lo: float, hi: float, target: float, metric: str, *,
           integer: bool, steps: int = 24, why_floor: str = "") -> BudgetOutcome:
    """``evaluate(knob)`` → fraction kept (non-increasing in the knob, nearly linear). Safeguarded regula
    falsi on [lo, hi] (an interpolated probe, then a midpoint, in turn), stopping once a plan is within an
    eighth of the tolerance; returns the evaluated knob whose fraction is closest to ``target`` without
    exceeding it by more than the tolerance. Every probe is a full plan plus a cost count, so few probes
    matter (bisection alone took ~14, plus 17 around the result)."""
    seen: dict[float, float] = {}

    def at(x: float) -> float:
        x = float(round(x)) if integer else x
        if x not in seen:
            seen[x] = evaluate(x)
        return seen[x]

    floor = at(hi)
    close = BUDGET_TOLERANCE * target / 8
    a, b, fa, fb = lo, hi, at(lo), floor
    for i in range(steps):
        if (integer and b - a <= 1) or min(abs(fa - target), abs(fb - target)) <= close or fa == fb:
            break
        x = a + (fa - target) * (b - a) / (fa - fb) if i % 2 == 0 else (a + b) / 2
        if integer:
            x = float(min(max(round(x), a + 1), b - 1))
        fx = at(x)
        if fx > target:
            a, fa = x, fx
        else:
            b, fb = x, fx
    ok = {x: f for x, f in seen.items() if f <= target * (1 + BUDGET_TOLERANCE)}
    if integer and not any(abs(f - target) <= BUDGET_TOLERANCE * target for f in ok.values()):
        # steps (coupled groups, rounding) make the cost non-monotone near the target: look around
        for x in range(max(int(lo), int(b) - 8), min(int(hi), int(b) + 8) + 1):
            at(x)
        ok = {x: f for x, f in seen.items() if f <= target * (1 + BUDGET_TOLERANCE)}
    if not ok:  # this ranking's floor is above the target (check_reachable let it through): its smallest plan
        least = min(seen.values())
        ok = {x: f for x, f in seen.items() if f == least}
    knob = min(ok, key=lambda x: (abs(ok[x] - target), ok[x] > target, x))
    achieved = ok[knob]
    within = met(achieved, target)
    note = "" if within else (
        f"closest plan keeps {achieved:.3f} (asked {target:.3f}): the smallest this ranking reaches{why_floor}"
        if achieved > target else
        f"closest plan keeps {achieved:.3f} (asked {target:.3f}): coupled channel groups and channel rounding move "
        "the cost in steps; --round-to 1 gets closer")
    return BudgetOutcome(metric, target, achieved, knob, len(seen), within, note)
