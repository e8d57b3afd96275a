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
