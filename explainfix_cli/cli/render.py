"""Rendering for people: rich tables on stderr, built from the library's result objects.

Nothing here computes; everything here may be swapped for ``--json`` output without losing information.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..core.fmt import human, pct, pruned_how, ratio
from ..jobs.summary import NOT_HELD_OUT, checks_ran
from .next_steps import compress_training_fell, next_steps, plural, rounding_line, short_labels, training_fell

console = Console(stderr=True, highlight=False)


def _changed(before: int, after: int) -> str:
    return f"{before}" if before == after else f"{before} → [bold green]{after}[/]"


def render_notes(report: dict) -> None:
    """What loading decided on the user's behalf (EMA weights, the architecture from --arch, …)."""
    for note in report.get("load_notes") or []:
        console.print(f"[dim]note: {note}[/]")


def _source(source: str, report: dict) -> str:
    """What the agreement was measured on, in words: calibration images (a folder) or samples (an .npz)."""
    if source != "calibration data":
        return source
    kind = (report.get("data") or {}).get("kind", "")
    return "calibration images" if "folder" in kind else "calibration samples"


def render_prune(job: Any) -> None:
    render_notes(job.report)
    r = job.result
    table = Table(title=f"explainfix prune · {pruned_how(r.pct, r.criterion, r.budget, r.options.get('rank_used'))}", title_justify="left")
    zeroing = r.criterion != "channel"  # the filter criteria zero kernels; the channel criterion removes weights
    for col in ("layer", "kind", "in", "out", "filters zeroed" if zeroing else "weights kept"):
        table.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for row in r.layers:
        if row.in_before == row.in_after and row.out_before == row.out_after and not row.zeroed:
            continue
        if zeroing:
            last = f"{row.zeroed}/{row.filters}" if row.filters else "—"
        else:
            last = pct(row.weights_after / row.weights_before) if row.weights_before else "—"
        table.add_row(row.name, row.kind, _changed(row.in_before, row.in_after), _changed(row.out_before, row.out_after), last)
    hidden = sum(1 for row in r.layers if row.in_before == row.in_after and row.out_before == row.out_after and not row.zeroed)
    if hidden:
        table.caption = f"{plural(hidden, 'unchanged layer')} not shown"
    console.print(table)

    totals = Table(show_header=True, title="totals", title_justify="left")
    for col in ("", "before", "after", "ratio"):
        totals.add_column(col, justify="left" if not col else "right")
    totals.add_row("params", human(r.params_before), human(r.params_after), ratio(r.params_after, r.params_before))
    totals.add_row("MACs", human(r.macs_before), human(r.macs_after), ratio(r.macs_after, r.macs_before))
    if r.filters_total:  # the channel criterion (a budget) zeroes no single kernels
        totals.add_row("spatial filters", str(r.filters_total), f"{r.filters_total - r.filters_zeroed} kept", "")
    totals.add_row("channels (all layers)", str(r.channels_before), str(r.channels_before - r.channels_removed),
                   ratio(r.channels_before - r.channels_removed, r.channels_before))
    if r.agreement is not None:
        totals.add_row("top-1 agreement", "100.0%", pct(r.agreement), f"on {r.eval_samples} {_source(r.eval_source, job.report)}")
    if r.accuracy_before is not None:
        totals.add_row("accuracy", pct(r.accuracy_before), pct(r.accuracy_after), "")
    console.print(totals)
    if r.budget and r.budget.get("note"):
        console.print(f"[yellow]budget[/]: {r.budget['note']}")
    if r.floor_layers:
        names = ", ".join(r.floor_layers[:6]) + (f" … +{len(r.floor_layers) - 6}" if len(r.floor_layers) > 6 else "")
        console.print(f"[yellow]at the floor[/]: {plural(len(r.floor_layers), 'layer')} cut to --floor "
                      f"({r.options.get('floor', 0.1):.0%} of their channels): {names}", soft_wrap=True)
    if r.quality_fell:
        first, *steps = next_steps(r, job, _source(r.eval_source, job.report))
        console.print(f"[bold yellow]quality fell[/]: {first}", soft_wrap=True)
        for step in steps:
            console.print(step, soft_wrap=True, markup=False)
    if r.refit:
        f = r.refit
        console.print(f"refit {plural(f['layers'], 'layer')} reading removed channels by least squares "
                      f"(relative output residual {f['residual_before']:.3g} → {f['residual_after']:.3g}, "
                      f"summed; {len(f['skipped'])} not refit)" if f["layers"] else
                      f"no layer refit ({len(f['skipped'])} read removed channels; none with a BatchNorm alone after it)")
    if r.recalibrated and r.recalibrated.get("skipped"):
        console.print(f"BatchNorm re-estimation skipped: {r.recalibrated['skipped']}")
    elif r.recalibrated:
        console.print(f"BatchNorm statistics re-estimated on {plural(r.recalibrated['batches'], 'calibration batch')}")
    for path, why in list(r.opaque.items())[:5]:
        console.print(f"[yellow]kept whole[/] {path}: {why}")
    if len(r.opaque) > 5:
        console.print(f"[yellow]kept whole[/] … and {len(r.opaque) - 5} more (report.json: opaque)")
    c = r.check
    folds = f"{r.nonzero_folds} constant channel·consumer pairs folded into biases"
    if r.inexact_kept:
        console.print(f"[yellow]kept[/] {plural(r.inexact_kept, 'channel')} whose removal needs an inexact fold into a zero-padded conv "
                      "(--allow-inexact-folds removes them, and the model then differs at the borders)")
    if r.channels_removed == 0:
        console.print("[yellow]no channel was removed[/]: " + r.nothing_removed)
    if r.frozen_by:  # what no budget can remove, and the op responsible for most of it
        (top, n), total = next(iter(r.frozen_by.items())), sum(r.frozen_by.values())
        console.print(f"[dim]frozen[/] {plural(n, 'channel')} by {top}" + (f" (of {total} frozen in all; report.json: frozen_by)"
                                                                          if total > n else ""), soft_wrap=True)
    for why, n in list(r.kept.items())[:3]:
        if why.startswith("rounded") and r.rounding:  # which layers, and what it cost
            console.print(f"[yellow]kept[/] {rounding_line(n, r)}", soft_wrap=True)
        elif not why.startswith("its removal needs an inexact"):  # said above
            console.print(f"[yellow]kept[/] {plural(n, 'channel')}: {why}")
    if c.status == "inexact":
        console.print(
            f"self-check [bold yellow]inexact[/] (--allow-inexact-folds): pruned ≡ masked equivalent (max rel err "
            f"{c.pruned_vs_masked_rel:.1e}), but {c.masked_vs_zeroed_rel:.1e} from the zeroed model: {r.inexact_folds} folds "
            f"into zero-padded convs differ at the borders; on {c.samples} inputs")
    else:
        reference = "zeroed model" if r.criterion != "channel" else "model with the removed channels masked"
        console.print(
            f"self-check [bold green]passed[/]: pruned ≡ {reference} (max rel err {max(c.pruned_vs_masked_rel, c.masked_vs_zeroed_rel):.1e}; "
            f"{folds}) on {c.samples} inputs")
    console.print(f"wrote {job.out}/ ({', '.join(sorted(p.name for p in job.out.iterdir()))})")


def render_info(info: dict) -> None:
    console.print(f"[bold]{info['model']}[/] ({info['source_format']})")
    summary = Table(show_header=False)
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    summary.add_row("params", human(info["params"]))
    summary.add_row("MACs (1 input)", f"{human(info['macs'])} at {'×'.join(map(str, info['input_shape']))}")
    summary.add_row("spatial conv layers", str(info["spatial_layers"]))
    summary.add_row("spatial filters", f"{info['spatial_filters']} ({info['zero_spatial_filters']} all-zero)")
    g = info["channel_groups"]
    if g.get("traced"):
        summary.add_row("prunable channel groups", f"{g['prunable']} of {g['spaces']}")
        summary.add_row("channels (prune's total)", f"{g['channels']} ({g['prunable_channels']} prunable, "
                        f"{g['channels'] - g['prunable_channels']} frozen)")
        if g.get("frozen_by"):
            top, n = next(iter(g["frozen_by"].items()))
            summary.add_row("most channels frozen by", f"{top} ({n})")
        if g.get("opaque"):
            kept = list(g["opaque"])
            summary.add_row("kept whole (not seen through)", ", ".join(kept[:5]) + (f" … +{len(kept) - 5}" if len(kept) > 5 else ""))
    else:
        summary.add_row("prunable channel groups", f"[yellow]none: {g['reason']}[/]")
    if info["edits"]:
        summary.add_row("structural edits in recipe", str(info["edits"]))
    if info.get("frozen_params"):
        summary.add_row("frozen (fixed) tensors", str(info["frozen_params"]))
    console.print(summary)
    layers = Table(title="spatial conv layers", title_justify="left")
    for col in ("layer", "kernel", "in", "out", "groups", "filters"):
        layers.add_column(col, justify="left" if col == "layer" else "right")
    for layer in info["layers"]:
        layers.add_row(layer["name"], "×".join(map(str, layer["kernel"])), str(layer["in"]), str(layer["out"]),
                       str(layer["groups"]), str(layer["filters"]))
    console.print(layers)


def _bands(shares: dict) -> str:
    return " · ".join(f"{100 * shares[b]:4.1f}" for b in ("low", "mid", "high"))


def render_explain(job: Any) -> None:
    doc = job.report
    sal = doc["saliency"]
    table = Table(title="ExplainSteer · % of spectral energy per layer", title_justify="left")
    table.add_column("layer", overflow="fold")
    table.add_column("kernel", justify="right")
    table.add_column("low · mid · high", justify="right")
    if sal:
        table.add_column("with saliency", justify="right")
    for layer in doc["layers"]:
        row = [layer["name"], "×".join(map(str, layer["kernel_shape"])), _bands(layer["without_saliency"]["shares"])]
        if sal and layer["with_saliency"]:
            row.append(_bands(layer["with_saliency"]["shares"]))
        table.add_row(*row)
    table.caption = "e^0 (e^d for non-square kernels) in thirds, low→high frequency" + (
        f"; saliency over {doc['num_batches']} batches" if sal else "; --data adds saliency-weighted spectra")
    console.print(table)
    for note in doc.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"wrote {job.out}/ (spectra.png, spectra.json)")


# ------------------------------------------------------------------------- fix / finetune / compress
@contextmanager
def work_progress(batch_size: int | None = None, enabled: bool = True) -> Iterator[Any]:
    """One live display for a whole job: ``cb(stage, completed, total)`` draws a bar per stage (steps are
    batches: the rate is shown in images/s when ``batch_size`` is known) and ``cb.step(train_step)`` a bar per
    training epoch with the running loss and accuracy. The live display is removed at the end, so a run that
    fails early prints nothing; a pipe or CI log gets no bar."""
    if not enabled or not console.is_terminal:
        yield None
        return
    from rich.progress import ProgressColumn, TaskProgressColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if not speed:
                return Text("")
            if task.description in ("refit", "layer probe"):  # layers, not batches
                return Text(f"{speed:.1f} layers/s", style="dim")
            return Text(f"{speed * batch_size:,.0f} img/s" if batch_size else f"{speed:.1f} it/s", style="dim")

    bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TimeElapsedColumn(), Rate(), TextColumn("{task.fields[info]}"), console=console, transient=True)
    tasks: dict[str, Any] = {}

    class Callback:
        def __call__(self, stage: str, completed: int, total: int | None) -> None:
            for name, task in tasks.items():  # a new stage ends the previous ones
                if name != stage and not bars.tasks[task].finished and bars.tasks[task].total:
                    bars.update(task, completed=bars.tasks[task].total)
            if stage not in tasks:
                tasks[stage] = bars.add_task(stage, total=total, info="")
            bars.update(tasks[stage], completed=completed, total=total)

        def step(self, s: Any) -> None:
            key = f"epoch {s.epoch}/{s.epochs}"
            if key not in tasks:
                tasks[key] = bars.add_task(key, total=s.steps, info="")
            bars.update(tasks[key], completed=s.step, total=s.steps,
                        info=f"loss {s.loss:.4f} · acc {pct(s.accuracy)} · lr {s.lr:.2g}")

    with bars:
        yield Callback()


def render_fix(job: Any) -> None:
    r = job.report
    console.print(f"explainfix fix · {r['init']} (seed {r['seed']}): {len(r['layers'])} spatial conv layers, "
                  f"{r['spatial_filters']} filters fixed and frozen")
    t = Table(show_header=True)
    for col in ("", "before", "after"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row("trainable params", human(r["trainable_params_before"]), human(r["trainable_params_after"]))
    t.add_row("frozen tensors", "", str(len(r["frozen"])))
    if r["accuracy_before"] is not None:
        t.add_row("accuracy (no training yet)", pct(r["accuracy_before"]), pct(r["accuracy_after"]))
    if r["agreement"] is not None:
        t.add_row("top-1 agreement", "100.0%", pct(r["agreement"]))
    console.print(t)
    if r["init"] != "keep":
        console.print("[dim]the filters changed: run `explainfix finetune` to train the rest of the network around them[/]")
    console.print(f"wrote {job.out}/ ({', '.join(sorted(p.name for p in job.out.iterdir()))})")


def _epochs_table(res: Any) -> Table:
    t = Table(title="fine-tuning", title_justify="left")
    for col in ("epoch", "loss", "train acc", "eval acc", "lr", "time"):
        t.add_column(col, justify="right")
    for e in res.epochs:
        used = getattr(e, "lr_used", None)  # the rates its steps used (the end-of-epoch rate is the next one's)
        lr = f"{e.lr:.2g}" if not used else (f"{used[0]:.2g}" if f"{used[0]:.2g}" == f"{used[1]:.2g}" else f"{used[0]:.2g}→{used[1]:.2g}")
        t.add_row(str(e.epoch), f"{e.loss:.4f}", pct(e.accuracy), pct(e.eval_accuracy), lr, f"{e.seconds:.1f}s")
    t.caption = "lr: the rates of the epoch's first → last step (cosine)"
    return t


def render_finetune(job: Any) -> None:
    render_notes(job.report)
    res = job.result
    o = res.options
    console.print(_epochs_table(res))
    frozen = (f"{len(res.frozen_tensors)} frozen tensors ({human(res.frozen_params)} params) unchanged"
              if res.frozen_tensors else "no frozen tensors")
    how = o.get("objective", "cross-entropy")
    if how == "distillation":
        how += f" (T {o['temperature']:g}, alpha {o['alpha']:g})"
    console.print(f"{how}; {o['optimizer']} lr {o['lr']:g} wd {o['weight_decay']:g} {o['schedule']}; "
                  f"{human(res.trainable_params)} trainable params; {frozen}")
    if res.eval_fell:
        first, *steps = training_fell(job)
        console.print(f"[bold yellow]training lowered the eval accuracy[/]: {first}", soft_wrap=True)
        console.print("\n".join(steps), soft_wrap=True, markup=False)
    elif res.eval_accuracy_before is not None:
        console.print(f"eval accuracy {pct(res.eval_accuracy_before)} → [bold]{pct(res.eval_accuracy_after)}[/]")
    console.print(f"wrote {job.out}/ ({', '.join(sorted(p.name for p in job.out.iterdir()))})")


def render_compress(job: Any) -> None:
    render_notes(job.report)
    r = job.report
    o, c = r["original"], r["compressed"]
    t = Table(title=f"explainfix compress · {pruned_how(r['pct'], r['criterion'], r['budget'], r.get('rank_used'))}", title_justify="left")
    for col in ("", "original", "compressed", "ratio"):
        t.add_column(col, justify="left" if not col else "right")
    t.add_row("params", human(o["params"]), human(c["params"]), ratio(c["params"], o["params"]))
    t.add_row("MACs", human(o["macs"]), human(c["macs"]), ratio(c["macs"], o["macs"]))
    if r.get("bench"):
        rows = {row["label"]: row for row in r["bench"]["rows"]}
        lo, lc = rows["original"]["p50_ms"], rows["compressed"]["p50_ms"]
        t.add_row(f"latency p50 ({r['bench']['threads']} threads)", f"{lo:.3f} ms", f"{lc:.3f} ms", ratio(lc, lo))
    if c["agreement"] is not None:  # a classifier (other outputs have no top-1)
        t.add_row(f"accuracy ({r['eval_samples']} {'eval' if r['held_out'] else 'calib.*'})", pct(o["accuracy"]), pct(c["accuracy"]), "")
        t.add_row("  after pruning only", "", pct(c["accuracy_after_prune"]), "")
        t.add_row("top-1 agreement", "100.0%", pct(c["agreement"]), "")
    if c["agreement"] is not None and not r["held_out"]:
        t.caption, t.caption_justify = f"* {NOT_HELD_OUT}", "left"
    console.print(t)
    if r.get("finetune"):
        from types import SimpleNamespace

        ft = r["finetune"]
        console.print(_epochs_table(SimpleNamespace(epochs=[SimpleNamespace(**e) for e in ft["epochs"]])))
        if fell := compress_training_fell(r):
            console.print(f"[bold yellow]training lowered the accuracy[/]: {fell}", soft_wrap=True)
    g = Table(title="gates", title_justify="left")
    for col in ("gate", "needs", "value", "result"):
        g.add_column(col)
    for gate in job.gates:
        g.add_row(gate.name, gate.threshold, gate.value, "[green]pass[/]" if gate.passed else "[bold red]FAIL[/]")
    console.print(g)
    console.print(checks_ran(r["gates"]), soft_wrap=True)
    console.print(r["verify_summary"], soft_wrap=True)
    q = r.get("int8")
    if q:
        bench = (q.get("bench") or {}).get("verdict")
        floats = (q.get("accuracy_control") or {}).get("kept_float") or []
        console.print(f"INT8 (model.int8.onnx): {q['comparison'].get('brief') or _int8_brief(q['comparison'])}"
                      + (f"; {len(floats)} layers kept in float" if floats else "") + (f"; {bench}" if bench else ""),
                      soft_wrap=True)
    files = "model.safetensors, explainfix.json, model.onnx" + (", model.int8.onnx" if q else "")
    console.print(f"wrote {job.out}/ ({files}, report.json, summary.md)")


def _int8_brief(c: dict) -> str:
    parts = []
    if c.get("agreement") is not None:
        parts.append(f"agreement with FP32 {100 * c['agreement']:.2f}%")
    if c.get("accuracy_int8") is not None:
        parts.append(f"accuracy {100 * c['accuracy_fp32']:.2f}% → {100 * c['accuracy_int8']:.2f}%")
    return ", ".join(parts) or f"{c.get('samples', 0)} samples compared"


def _sci(v: float | None) -> str:
    return "—" if v is None else f"{v:.2e}"


def render_verify(result: Any) -> None:
    table = Table(title="onnxruntime vs torch", title_justify="left")
    for col in ("output", "shape", "max abs", "p99 abs", "max rel", "top-1", "NaN/Inf", ""):
        table.add_column(col, justify="left" if col in ("output", "") else "right", overflow="fold")
    for o in result.outputs:
        nonfinite = (o.nonfinite_reference or 0) + (o.nonfinite_candidate or 0)
        table.add_row(
            o.name, "×".join(map(str, o.shape)) if o.shape else "—", _sci(o.max_abs), _sci(o.p99_abs), _sci(o.max_rel),
            pct(o.top1_agreement) if o.top1_agreement is not None else "—", str(nonfinite),
            "[green]ok[/]" if o.passed else f"[red]{o.reason or 'FAILED'}[/]",
        )
    table.caption = "mean/median errors: --json"
    console.print(table)
    line = result.summary_line()
    console.print(f"[bold {'green' if result.passed else 'red'}]{line}[/]", soft_wrap=True)


def render_export(job: Any) -> None:
    if job.export is not None:
        e = job.export
        fallback = f" (fell back: {e.fallback_reason})" if e.fallback_reason else ""
        console.print(f"exported with the {e.exporter} exporter{fallback}, opset {e.opset}, "
                      f"inputs {e.input_names}, outputs {e.output_names}, {human(e.file_bytes, 'B')}")
    if job.verify is not None:
        render_verify(job.verify)
    if job.passed:
        console.print(f"wrote {', '.join(str(job.out / f) for f in job.files)}")


def render_bench(rows: list[dict], batch_size: int, threads: int) -> None:
    from rich import box

    table = Table(title=f"onnxruntime latency · batch {batch_size} · {threads} threads", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1), collapse_padding=True, pad_edge=False, show_edge=False)
    for col in ("model", "p50 ms", "p90 ms", "latency ×", "MACs", "params"):  # one line per model at 80 columns
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True, overflow="ellipsis")
    for r, label in zip(rows, short_labels([r["label"] for r in rows])):
        def with_ratio(v, x):
            return human(v) if r is rows[0] or x is None else f"{human(v)} ×{x:.2f}"
        lat = "1" if r is rows[0] else ("—" if r.get("latency_ratio") is None else f"{r['latency_ratio']:.2f}")
        if r.get("latency_ratio_min") is not None and r is not rows[0]:
            lat += f" ({r['latency_ratio_min']:.2f}–{r['latency_ratio_max']:.2f})"
        table.add_row(label, f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", lat, with_ratio(r.get("macs"), r.get("macs_ratio")),
                      with_ratio(r.get("params"), r.get("params_ratio")))
    table.caption = "× is the ratio to the first model; latency × is the median of same-round ratios (range); full paths: --json"
    console.print(table)
