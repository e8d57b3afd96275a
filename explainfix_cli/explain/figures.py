"""Figures of ExplainSteer spectra (matplotlib, imported lazily; figures are drawn off-screen and saved,
never shown).

Layout, as in the ExplainFix paper: a heatmap with one column per spatial layer and one row per DCT-II
basis filter (low→high frequency, top to bottom), a bar chart on top (total per layer) and one on the
right (total per basis filter over the layers).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def _matrix(ed: Sequence[torch.Tensor]):
    """(basis, layers) float array; shorter spectra padded with NaN (drawn grey, counted as 0)."""
    import numpy as np

    n = max((len(x) for x in ed), default=0)
    E = np.full((n, len(ed)), np.nan)
    for k, x in enumerate(ed):
        E[: len(x), k] = x.detach().double().cpu().numpy()
    return E


def plot_spectrum_ed(ed: Sequence[torch.Tensor], fig: Any = None, loglog: bool = False, *,
                     normalize: bool = False, title: str | None = None,
                     layer_labels: Sequence[str] | None = None, basis_labels: Sequence[str] | None = None) -> Any:
    """Heatmap of per-layer e^d (columns = layers, rows = basis index low→high) with marginal bars.

    ``fig`` may be a Figure or SubFigure (a new Figure otherwise). Spectra of different lengths are padded
    with blanks (grey) at the high end. ``loglog`` shows ``log1p(log1p(e))``; ``normalize`` scales each
    layer's column to sum 1 (the top bars still show the raw per-layer totals). Returns the figure.

    >>> fig = plot_spectrum_ed(explainsteer_layerwise_without_saliency(model).ed); fig.savefig("ed.png")
    """
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    if fig is None:
        fig = Figure(figsize=(7, 5))
    E = _matrix(ed)
    raw_totals = np.nansum(E, axis=0)
    if normalize:
        E = E / np.where(raw_totals > 0, raw_totals, 1.0)
    shown = np.log1p(np.log1p(E)) if loglog else E
    gs = fig.add_gridspec(nrows=4, ncols=4, hspace=0.08, wspace=0.06)
    ax = fig.add_subplot(gs[1:, :3])
    right = fig.add_subplot(gs[1:, 3], sharey=ax)
    top = fig.add_subplot(gs[0, :3], sharex=ax)
    cmap = colormaps["Greens"].with_extremes(bad="0.85")
    if E.size:
        im = ax.imshow(np.ma.masked_invalid(shown), vmin=0, aspect="auto", cmap=cmap, interpolation="nearest")
        corner = fig.add_subplot(gs[0, 3])
        corner.axis("off")
        cax = corner.inset_axes([0.1, 0.55, 0.8, 0.15])
        fig.colorbar(im, cax=cax, orientation="horizontal").ax.tick_params(labelsize=7)
        right.barh(np.arange(E.shape[0]), np.nansum(E, axis=1), color="tab:green", height=0.8)
        top.bar(np.arange(E.shape[1]), raw_totals, color="tab:blue", width=0.8)
    ax.set_xlabel("Spatial layer index")
    ax.set_ylabel("Basis vector index (low→high)" + (", log log" if loglog else ""))
    if layer_labels is not None:
        step = max(1, len(layer_labels) // 20)
        ax.set_xticks(range(0, len(layer_labels), step), [layer_labels[i] for i in range(0, len(layer_labels), step)])
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    if basis_labels is not None:
        ax.set_yticks(range(len(basis_labels)), basis_labels, fontsize=7)
    else:
        ax.yaxis.get_major_locator().set_params(integer=True)
    for a in (right, top):
        a.axis("off")
    top.text(-0.01, 0.5, "layer\ntotal", transform=top.transAxes, ha="right", va="center", fontsize=7)
    right.text(0.5, -0.01, "Σ over\nlayers", transform=right.transAxes, ha="center", va="top", fontsize=7)
    if title:
        top.set_title(title, fontsize=10)
    return fig


def _groups(result) -> list[tuple[tuple[int, int], list[int]]]:
    """Layer indices per kernel shape, shapes in order of first appearance."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, shape in enumerate(result.kernel_shapes):
        groups.setdefault(tuple(shape), []).append(k)
    return list(groups.items())


def save_spectra_png(report, path: str | Path, *, loglog: bool = False, normalize: bool = True,
                     dpi: int = 110) -> Path:
    """Write the e^d figure of an ``ExplainReport`` to ``path`` (PNG) and return the path.

    One row per kernel shape (layers of other sizes would mean other frequencies at the same index, so
    they are not mixed); columns: without saliency, and with saliency when the report has it. x ticks are
    the global spatial-layer indices; rows of kernels up to 5×5 are labelled by their (i, j) basis index.
    ``normalize`` (default) scales each layer to sum 1 so layers of very different magnitude stay visible.

    >>> save_spectra_png(explain_model(model, loader), "spectra.png")
    """
    from matplotlib.figure import Figure

    path = Path(path)
    base = report.without_saliency
    runs = [("without saliency", base)] + ([("with saliency", report.with_saliency)] if report.with_saliency else [])
    groups = _groups(base)
    rows, cols = max(1, len(groups)), len(runs)
    fig = Figure(figsize=(6.5 * cols, 4.8 * rows), layout="constrained" if not groups else None)
    if not groups:
        fig.text(0.5, 0.5, "no spatial conv layers", ha="center", va="center")
    else:
        subs = fig.subfigures(rows, cols, squeeze=False, hspace=0.04, wspace=0.04)
        for r, (shape, idx) in enumerate(groups):
            order = base.layers[idx[0]].order
            basis_labels = [",".join(map(str, ij)) for ij in order] if len(order) <= 25 else None
            for c, (label, res) in enumerate(runs):
                plot_spectrum_ed(
                    [res.layers[k].ed for k in idx], fig=subs[r, c], loglog=loglog, normalize=normalize,
                    title=f"e^d, {shape[0]}×{shape[1]} kernels, {label} ({len(idx)} layers)"
                    + (", each layer sums to 1" if normalize else ""),
                    layer_labels=[str(k) for k in idx], basis_labels=basis_labels,
                )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def plot_tradeoff(report: dict) -> bytes:
    """PNG of a sweep: accuracy against MACs kept, and against measured latency when timed (the original
    is the star). Points without labels plot top-1 agreement with the original instead."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pts, orig = report["points"], report["original"]
    use_acc = orig["accuracy"] is not None and all(p["accuracy"] is not None for p in pts)
    key, ylabel = ("accuracy", "top-1 accuracy (%)") if use_acc else ("agreement", "top-1 agreement with the original (%)")
    y0 = 100 * (orig["accuracy"] if use_acc else 1.0)
    timed = orig.get("latency_ms") is not None
    fig = Figure(figsize=(10 if timed else 5.5, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if timed else 1, squeeze=False)[0]
    panels = [("MACs kept (fraction of the original)", [p["macs_kept"] for p in pts], 1.0)]
    if timed:
        panels.append(("latency p50 (ms, onnxruntime)", [p["latency_ms"] for p in pts], orig["latency_ms"]))
    for ax, (xlabel, xs, x0) in zip(axes, panels):
        ys = [100 * p[key] for p in pts]
        ax.plot(xs, ys, "o-", color="tab:blue", label="pruned" + (" + fine-tune" if report.get("finetune_epochs") else ""))
        if report.get("finetune_epochs"):
            ax.plot(xs, [100 * (p[key + "_after_prune"] or 0) for p in pts], "o--", color="tab:gray", alpha=0.7,
                    label="pruned, before fine-tune")
        for x, y, p in zip(xs, ys, pts):
            ax.annotate(p["target"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.plot([x0], [y0], "*", markersize=14, color="tab:red", label="original")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"explainfix sweep · {report['criterion']} criterion", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()
