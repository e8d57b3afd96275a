"""Number formatting shared by the terminal tables (report.py) and the markdown summary (compress.py)."""
from __future__ import annotations


def human(n: float | int | None, unit: str = "") -> str:
    """1234567 → '1.23M'; None → '—'."""
    if n is None:
        return "—"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:g}{unit}" if isinstance(n, float) else f"{n}{unit}"


def pct(x: float | None, digits: int = 1) -> str:
    """0.987 → '98.7%'; None → '—'."""
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def ratio(after: float | None, before: float | None) -> str:
    """after / before as '0.421×'; '—' when either is unknown or before is 0."""
    return "—" if after is None or not before else f"{after / before:.3f}×"


def pruned_how(pct: float | None, criterion: str, budget: dict | None, rank: str | None = None) -> str:
    """One phrase for report titles: the budget asked and reached, or the pct of the reference's knob."""
    how = f"channel criterion ({rank})" if criterion == "channel" else f"{criterion} filter criterion"
    if budget:
        name = "MACs" if budget["metric"] == "macs" else "params"
        return (f"{name} {1 / budget['requested']:.2f}× fewer asked, {1 / budget['achieved']:.2f}× reached "
                f"({budget['achieved']:.3f} kept) · {how}")
    if pct is None:
        return how
    return f"{pct:g}% of spatial filters zeroed by {criterion}" if criterion != "channel" else f"{pct:g}% of channel groups · {how}"
