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
                     layer_labels: Sequence[str] | None = None, basis_labels: Sequence[str] | None = None,
                     colorbar_label: str | None = None) -> Any:
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
    gs = fig.add_gridspec(nrows=4, ncols=4, hspace=0.08, wspace=0.06, top=0.86,
                          bottom=0.24 if layer_labels is not None else 0.11)  # room for the rotated layer names
    ax = fig.add_subplot(gs[1:, :3])
    right = fig.add_subplot(gs[1:, 3], sharey=ax)
    top = fig.add_subplot(gs[0, :3], sharex=ax)
    cmap = colormaps["Greens"].with_extremes(bad="0.85")
    if E.size:
        im = ax.imshow(np.ma.masked_invalid(shown), vmin=0, aspect="auto", cmap=cmap, interpolation="nearest")
        corner = fig.add_subplot(gs[0, 3])
        corner.axis("off")
        cax = corner.inset_axes([0.1, 0.55, 0.8, 0.15])
        bar = fig.colorbar(im, cax=cax, orientation="horizontal")
        bar.ax.tick_params(labelsize=7)
        bar.set_label(colorbar_label or ("share of the layer's e^d" if normalize else "e^d") + (" (log log)" if loglog else ""),
                      fontsize=7)
        right.barh(np.arange(E.shape[0]), np.nansum(E, axis=1), color="tab:green", height=0.8)
        top.bar(np.arange(E.shape[1]), raw_totals, color="tab:blue", width=0.8)
    ax.set_ylabel("Basis vector index (low→high)" + (", log log" if loglog else ""))
    if layer_labels is not None:
        ax.set_xlabel("Spatial layer")
        step = max(1, len(layer_labels) // 20)
        ax.set_xticks(range(0, len(layer_labels), step), [layer_labels[i] for i in range(0, len(layer_labels), step)],
                      rotation=60, ha="right", rotation_mode="anchor", fontsize=7)
    else:
        ax.set_xlabel("Spatial layer index")
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


#: one line under the title: what the three spectra are (ExplainFix, Gaudio et al. 2022, "ExplainSteer")
SPECTRA_LEGEND = ("e^d: energy of each 2-D DCT-II basis filter in the layer's kernels (this figure) · "
                  "e^1: the same per 1-D frequency, rows then columns · e^0: e^1's two halves summed (low→high)")


def save_spectra_png(report, path: str | Path, *, loglog: bool = False, normalize: bool = True,
                     dpi: int = 110) -> Path:
    """Write :func:`spectra_figure` of an ``ExplainReport`` to ``path`` (PNG) and return the path.

    >>> save_spectra_png(explain_model(model, loader), "spectra.png")
    """
    path = Path(path)
    fig = spectra_figure(report, loglog=loglog, normalize=normalize)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def spectra_figure(report, *, loglog: bool = False, normalize: bool = True) -> Any:
    """The e^d figure of an ``ExplainReport`` (a matplotlib Figure, drawn off-screen).

    One row per kernel shape (layers of other sizes would mean other frequencies at the same index, so
    they are not mixed); columns: without saliency, and with saliency when the report has it. Columns are
    labelled with the layers' names; rows of kernels up to 5×5 by their (i, j) basis index; the colour bar
    says what the colour is; one line under the title says what e^d, e^1 and e^0 are.
    ``normalize`` (default) scales each layer to sum 1 so layers of very different magnitude stay visible.
    """
    from matplotlib.figure import Figure

    base = report.without_saliency
    runs = [("without saliency", base)] + ([("with saliency", report.with_saliency)] if report.with_saliency else [])
    groups = _groups(base)
    rows, cols = max(1, len(groups)), len(runs)
    fig = Figure(figsize=(6.5 * cols, 5.4 * rows + 0.4), layout="constrained" if not groups else None)
    if not groups:
        fig.text(0.5, 0.5, "no spatial conv layers", ha="center", va="center")
    else:
        fig.text(0.5, 0.995, SPECTRA_LEGEND, ha="center", va="top", fontsize=7)
        subs = fig.subfigures(rows, cols, squeeze=False, hspace=0.04, wspace=0.04)
        for r, (shape, idx) in enumerate(groups):
            order = base.layers[idx[0]].order
            basis_labels = [",".join(map(str, ij)) for ij in order] if len(order) <= 25 else None
            for c, (label, res) in enumerate(runs):
                plot_spectrum_ed(
                    [res.layers[k].ed for k in idx], fig=subs[r, c], loglog=loglog, normalize=normalize,
                    title=f"e^d, {shape[0]}×{shape[1]} kernels, {label} ({len(idx)} layers)"
                    + (", each layer sums to 1" if normalize else ""),
                    layer_labels=[res.layers[k].name for k in idx], basis_labels=basis_labels,
                )
    return fig


def plot_tradeoff(report: dict) -> bytes:
    """PNG of :func:`tradeoff_figure`."""
    import io

    buf = io.BytesIO()
    tradeoff_figure(report).savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _how_recovered(report: dict) -> str:
    epochs = report.get("finetune_epochs") or 0
    if not epochs:
        return "one-shot (no fine-tuning)"
    return f"{'distilled' if report.get('distill') else 'fine-tuned'} {epochs} epoch{'s' if epochs > 1 else ''} per point"


def _range(p: dict) -> tuple[float, float] | None:
    """(below, above) the p50 latency: p10/p90 when measured, else min/max; None when neither is."""
    for lo, hi in (("latency_p10_ms", "latency_p90_ms"), ("latency_min_ms", "latency_max_ms")):
        if p.get(lo) is not None and p.get(hi) is not None:
            return max(0.0, p["latency_ms"] - p[lo]), max(0.0, p[hi] - p["latency_ms"])
    return None


#: the series name of a sweep --compare peer (the importance and allocation it runs)
PEER_NAMES = {"torch-pruning": "Torch-Pruning L1 (uniform)"}


def tradeoff_figure(report: dict) -> Any:
    """A sweep's trade-off (a matplotlib Figure): accuracy against MACs kept, and against measured latency when
    timed (the original is the star). Points without labels plot top-1 agreement with the original instead.
    Each panel joins the points in the order of its x axis; latency points carry their measured range (p10–p90
    of the timed runs) as error bars. The title names the model, the data and how the points were recovered.
    ``sweep --compare``'s peer points are a second series (orange diamonds), joined the same way."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    pts, orig = report["points"], report["original"]
    use_acc = orig["accuracy"] is not None and all(p["accuracy"] is not None for p in pts)
    key, ylabel = ("accuracy", "top-1 accuracy (%)") if use_acc else ("agreement", "top-1 agreement with the original (%)")
    y0 = 100 * (orig["accuracy"] if use_acc else 1.0)
    timed = orig.get("latency_ms") is not None
    tuned = bool(report.get("finetune_epochs"))
    fig = Figure(figsize=(10 if timed else 5.5, 4.4), layout="constrained")
    axes = fig.subplots(1, 2 if timed else 1, squeeze=False)[0]
    panels = [("MACs kept (fraction of the original)", "macs_kept", 1.0, None)]
    if timed:
        panels.append(("latency p50 (ms, onnxruntime; bars: p10–p90)", "latency_ms", orig["latency_ms"], _range(orig)))
    for ax, (xlabel, xkey, x0, r0) in zip(axes, panels):
        order = sorted(pts, key=lambda p: p[xkey])  # joined along the axis, not in budget order
        xs, ys = [p[xkey] for p in order], [100 * p[key] for p in order]
        label = "pruned" + (" + " + ("distilled" if report.get("distill") else "fine-tuned") if tuned else " (one-shot)")
        ax.plot(xs, ys, "-", color="tab:blue", alpha=0.6)
        ranges = [_range(p) for p in order] if xkey == "latency_ms" else []
        if ranges and all(r is not None for r in ranges):
            ax.errorbar(xs, ys, xerr=[[r[0] for r in ranges], [r[1] for r in ranges]], fmt="o", color="tab:blue",
                        ecolor="tab:blue", elinewidth=1, capsize=3, label=label)
        else:
            ax.plot(xs, ys, "o", color="tab:blue", label=label)
        if tuned:
            ax.plot(xs, [100 * (p[key + "_after_prune"] or 0) for p in order], "o--", color="tab:gray", alpha=0.7,
                    label="pruned, before recovery")
        for x, y, p in zip(xs, ys, order):
            ax.annotate(p["target"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        q = [(p["int8"], p) for p in order if use_acc and (p.get("int8") or {}).get("accuracy") is not None]
        if q and (xkey == "macs_kept" or all(i.get(xkey) is not None for i, _ in q)):  # sweep --quantize int8
            q.sort(key=lambda ip: ip[0].get(xkey, ip[1][xkey]))
            ax.plot([i.get(xkey, p[xkey]) for i, p in q], [100 * i["accuracy"] for i, _ in q], "s-", color="tab:green",
                    alpha=0.8, label=label + " + INT8")
        peer = sorted((c for c in (p.get("compare") for p in order) if c and c.get(xkey) is not None
                       and c.get(key) is not None), key=lambda c: c[xkey])  # sweep --compare torch-pruning
        if peer:
            ax.plot([c[xkey] for c in peer], [100 * c[key] for c in peer], "D-", color="tab:orange", alpha=0.8,
                    label=f"{PEER_NAMES.get(peer[0]['tool'], peer[0]['tool'])}"
                    + (" + same recovery" if tuned else " (one-shot)"))
        if r0 is not None:
            ax.errorbar([x0], [y0], xerr=[[r0[0]], [r0[1]]], fmt="*", markersize=14, color="tab:red", capsize=3, label="original")
        else:
            ax.plot([x0], [y0], "*", markersize=14, color="tab:red", label="original")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    data = report.get("eval_data") or report.get("data") or {}
    where = f"{Path(str(data.get('source', '?'))).name} ({report.get('eval_samples') or data.get('samples', '?')} images)"
    fig.suptitle(f"explainfix sweep · {Path(str(report.get('model', '?'))).name} · {ylabel.split(' (')[0]} on {where} · "
                 f"{_how_recovered(report)} · {report['criterion']} criterion", fontsize=10)
    return fig
