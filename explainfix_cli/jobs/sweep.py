"""``explainfix sweep``: prune one model to several budgets from one scoring pass over the data, and show the trade-off.

    job = sweep_job(ModelSpec(Path("model.pt"), arch="…"), DataSpec(Path("calib")), "2x,3x,4x",
                    eval_data=Path("val"))
    [(p["target"], p["accuracy"], p["latency_ms"]) for p in job.report["points"]]

Every point starts from a copy of the original and reuses the one set of scores (the pass count does not
grow with the number of budgets); each may get the same short fine-tune or distillation. Writes
``sweep.json``, ``sweep.md`` and ``tradeoff.png`` (accuracy against MACs and against measured onnxruntime
latency, the original marked), and with ``save_models`` each point's explainfix directory under
``points/<target>/``. ``compare="torch-pruning"`` adds Torch-Pruning's point at each budget (jobs/compare.py:
the same recovery, evaluation and timing; those models are never written).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import dist
from ..core.errors import BadInput
from ..core.fmt import pct
from ..core.model import count_params
from ..core.progress import Progress
from ..io.data import load_calibration
from ..io.model_dir import model_dir_files, read_back
from ..deploy.quantize import QuantizeOptions
from ..io.outdir import staging, write_output_dir
from ..prune.options import PruneOptions, parse_target
from ..train.finetune import TrainOptions, agreement
from .compare import check_compare, peer_point
from .bench import BenchOptions, bench_models, model_target
from .quantize import quantize_checked
from .common import DataSpec, ModelSpec, Run, evaluate_on, now, open_inputs, output_dir, read_back_example
from .finetune import check_recovery_data, recovery_options
from .prune import pruner_for
from .result import JobResult
from .rounds import Recovery, run_round

MAX_POINTS = 12


@dataclass
class SweepJob(JobResult):
    out: Path
    report: dict
    figure: Path


def parse_targets(text: str, flag: str = "--targets") -> list[tuple[str, float]]:
    """``"2x,3x,0.25"`` → [(label, fraction kept)], largest fraction first; duplicates are bad input."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise BadInput(f"{flag} needs at least one budget", hint=f"e.g. {flag} 2x,3x,4x,10x")
    if len(items) > MAX_POINTS:
        raise BadInput(f"{flag}: at most {MAX_POINTS} budgets, got {len(items)}")
    parsed = [(t, parse_target(t, flag)) for t in items]
    fracs = [round(f, 9) for _, f in parsed]
    if len(set(fracs)) != len(fracs):
        raise BadInput(f"{flag} {text}: a budget is given twice")
    return sorted(parsed, key=lambda p: -p[1])


def sweep_job(
    model: ModelSpec,
    data: DataSpec,
    targets: str,
    *,
    metric: str = "macs",
    options: PruneOptions | None = None,
    eval_data: Path | None = None,
    finetune_epochs: int = 0,
    train: TrainOptions | None = None,
    distill: Any = None,
    timing: BenchOptions = BenchOptions(bench_iters=30),  # every point is timed: fewer runs per model
    save_models: bool = False,
    out: Path | None = None,
    force: bool = False,
    run: Run = Run(),
    quantize: QuantizeOptions | None = None,
    compare: str | None = None,
) -> SweepJob:
    """``options`` carries everything but the budget (criterion, rank, round_to, floor…). ``quantize``
    (``QuantizeOptions()``) adds each point's INT8 model (the quantize job's own steps, no gates) to the table, the
    timing and the figure. ``compare="torch-pruning"`` adds, per budget, Torch-Pruning L1 (uniform ratio) pruned
    from the original to the same fraction, BatchNorm re-estimated and recovered like explainfix's point, evaluated
    and timed with the others, as ``row["compare"]`` (comparison only: those models are never written to disk).
    ``timing`` and ``run`` as in :func:`~.compress.compress_job`."""
    from ..explain.figures import plot_tradeoff

    if metric not in ("macs", "params"):
        raise BadInput(f"--metric must be macs or params, got {metric!r}")
    points = parse_targets(targets)
    quantize = quantize.check() if quantize is not None else None  # a bad --quantize fails before any work
    compare = check_compare(compare)  # and an unknown peer, or its library missing
    timing = timing.check()
    base = options or PruneOptions()
    if base.pct is not None or base.target_macs is not None or base.target_params is not None:
        raise BadInput("sweep takes its budgets from --targets; do not give --pct or --target-*")
    field = "target_macs" if metric == "macs" else "target_params"
    per_point = [dataclasses.replace(base, **{field: f}).resolved(has_data=data.path is not None) for _, f in points]
    if data.path is None:
        raise BadInput("sweep needs --data PATH (calibration images for saliency)")
    train = recovery_options(finetune_epochs, train, distill)
    out = output_dir(out, "sweep", model, force, data.path, eval_data)
    opened = open_inputs(model, data, run.device)
    per_point = [o.with_model(opened.model) for o in per_point]  # where --rank auto switches depends on the model
    smallest = min(per_point, key=lambda o: o.budget[1])
    saliency = any(o.needs_saliency for o in per_point)  # auto may rank by it at some budgets and not at others
    pruner = pruner_for(opened, data, smallest, run.seed, run.progress, gradients=saliency)  # one scoring pass, on the original, for every point
    pruner.check()  # an unreachable budget is refused before any data is read
    eval_calib = load_calibration(eval_data, opened.pre) if eval_data is not None else opened.calib
    check_recovery_data(train, distill, opened.calib)
    bs = data.batch_size
    original = opened.model.to(opened.device).eval()
    macs0, params0 = opened.macs, count_params(original)
    before = evaluate_on(original, eval_calib, bs, opened.device)
    calib = opened.calib

    rows, models, peers, files = [], [], [], {}
    for k, ((label, frac), opts) in enumerate(zip(points, per_point), start=1):
        if run.progress:
            run.progress(f"budget {label}", k - 1, len(points))
        work = copy.deepcopy(original)
        point = dataclasses.replace(opened, loaded=dataclasses.replace(opened.loaded, model=work), macs=macs0)
        recovery = Recovery(train, distill, copy.deepcopy(original) if distill is not None else None, run.on_step)
        rnd = run_round(point, data, opts, recovery, eval_calib, seed=run.seed, pruner=pruner)
        result, pruned_eval, tuned, final, recipe = rnd.result, rnd.pruned, rnd.tuned, rnd.final, rnd.recipe
        rows.append({
            "target": label, "requested": frac,
            **({"rank_used": opts.ranking[0], "rank_why": opts.ranking[1]} if opts.criterion == "channel" else {}),
            "macs": result.macs_after, "params": result.params_after,
            "macs_kept": result.macs_after / macs0, "params_kept": result.params_after / params0,
            "within_tolerance": result.budget["within_tolerance"], "note": result.budget["note"],
            "self_check": result.check.status, "accuracy_after_prune": pruned_eval["accuracy"],
            "agreement_after_prune": agreement(before["preds"], pruned_eval["preds"]),
            "accuracy": final["accuracy"], "agreement": agreement(before["preds"], final["preds"]),
            "finetune": tuned.to_json() if tuned else None,
        })
        models.append((label, work.to("cpu").eval()))
        if compare:
            if run.progress:
                run.progress(f"{compare} {label}", k - 1, len(points))
            recovery = Recovery(train, distill, copy.deepcopy(original) if distill is not None else None, run.on_step)
            rows[-1]["compare"], peer = peer_point(original, opened, data, frac, metric, opts.recalibrate_bn,
                                                   recovery, eval_calib, before, seed=run.seed)
            if peer is not None:
                peers.append((rows[-1]["compare"], (f"{label} {compare}", peer)))
        if save_models:
            point_recipe = recipe.record({"command": "sweep", "time": now(), "target": label})
            files.update({f"points/{_safe(label)}/{name}": content
                          for name, content in model_dir_files(work, point_recipe, opened.out_dtypes).items()})
    original = original.to("cpu")
    latency = None
    with staging(out) as work:  # the INT8 models' files, next to -o
        int8 = _int8_points(models, rows, opened, eval_calib, quantize, work, timing, run.progress) if quantize else []
        if timing.bench and dist.is_main():  # timed once: ranks timing at once would slow each other
            if run.progress:
                run.progress("bench", 0, 1)
            latency = bench_models([("original", original), *models, *(m for _, m in peers)], opened.pre, threads=timing.threads,
                                   iters=timing.bench_iters, rounds=timing.bench_rounds, seed=run.seed, extra=int8)
            for row, timed in zip(rows, latency[1:]):
                row.update(latency_ms=timed["p50_ms"], latency_ratio=timed["latency_ratio"],
                           latency_p10_ms=timed.get("p10_ms"), latency_p90_ms=timed.get("p90_ms"))  # tradeoff.png's range
            for (entry, _), timed in zip(peers, latency[len(models) + 1:]):
                entry.update(latency_ms=timed["p50_ms"], latency_ratio=timed["latency_ratio"])
            for row, timed in zip(rows, latency[len(models) + len(peers) + 1:]):
                row["int8"].update(latency_ms=timed["p50_ms"], latency_ratio=timed["latency_ratio"])
    report = {
        "load_notes": opened.loaded.notes, "command": "sweep", "model": str(model.path), "out": str(out), "time": now(), "metric": metric,
        "criterion": per_point[0].criterion, "rank": base.rank, "round_to": per_point[0].round_to,
        "data": calib.describe(), "eval_data": eval_calib.describe(), "eval_samples": before["samples"],
        "saliency_passes": int(pruner.scored().gradients),  # 0: every point ranked by Σ|w|, no backward pass
        "finetune_epochs": finetune_epochs,
        "distill": dataclasses.asdict(distill) if distill else None, "seed": run.seed, "compare": compare,
        "original": {"macs": macs0, "params": params0, "accuracy": before["accuracy"],
                     "latency_ms": latency[0]["p50_ms"] if latency else None,
                     "latency_p10_ms": latency[0].get("p10_ms") if latency else None,
                     "latency_p90_ms": latency[0].get("p90_ms") if latency else None},
        "bench": {"threads": timing.threads, "iters": timing.bench_iters, "batch_size": 1} if timing.bench else None,
        "points": rows,
    }
    figure = out / "tradeoff.png"
    png = plot_tradeoff(report)
    files.update({"sweep.json": report, "sweep.md": sweep_markdown(report), "tradeoff.png": png})
    example = read_back_example(opened)
    write_output_dir(out, files, force=force, check=lambda tmp: read_back(tmp, example))  # every point's directory
    return SweepJob(out, report, figure)


def _int8_points(models: list, rows: list[dict], opened: Any, eval_calib: Any, quantize: QuantizeOptions, work: Path,
                 timing: BenchOptions, progress: Progress | None) -> list:
    """Each point's model as FP32 ONNX → INT8 (jobs/quantize.py ``quantize_checked``: calibrated on ``--data``,
    compared with its FP32 model on the evaluation data; no gates, no control); ``row["int8"]`` gets the numbers.
    Returns the INT8 files as bench targets (timed with the others)."""
    from ..deploy.bench import BenchTarget

    targets = []
    for (label, model), row in zip(models, rows):
        if progress:
            progress(f"int8 {label}", 0, 1)
        folder = work / _safe(label)
        fp32 = model_target(model, opened.pre, folder, label)
        step = quantize_checked(Path(fp32.path), folder / "model.int8.onnx", opened.calib, eval_calib, quantize,
                                work=folder, shape=opened.pre.shape, max_float=0,
                                timing=dataclasses.replace(timing, bench=False))  # timed below, with the others
        c = step.comparison
        row["int8"] = {"accuracy": c.accuracy_int8, "accuracy_fp32_onnx": c.accuracy_fp32, "agreement_fp32": c.agreement,
                       "snr_db": c.outputs[0]["snr_db"] if c.outputs else None, "settings": step.result.settings}
        targets.append(BenchTarget(folder / "model.int8.onnx", fp32.input_shape, fp32.cost, f"{label} int8"))
    return targets


def _safe(label: str) -> str:
    return label.replace(".", "_")


def sweep_markdown(report: dict) -> str:
    o = report["original"]
    lat0 = "—" if o["latency_ms"] is None else f"{o['latency_ms']:.3f} ms"
    lines = [f"# explainfix sweep · {report['model']}", "",
             f"{report['criterion']} criterion, "
             + (f"one saliency pass over {report['data']['samples']} images" if report["saliency_passes"] else
                "ranked by Σ|w| (no saliency pass)")
             + "; accuracy on "
             f"{report['eval_samples']} images of {report['eval_data']['source']}"
             + (f"; {report['finetune_epochs']} fine-tune epoch(s) per point"
                + (" (distillation)" if report["distill"] else "") if report["finetune_epochs"] else "; one-shot") + "."
             + (f" Torch-Pruning {_peer_version(report)} rows: L1 importance, one uniform ratio per budget, pruned from "
                "the original and treated as the explainfix rows (BatchNorm, recovery, evaluation)." if report.get("compare") else ""), "",
             ]
    tuned = bool(report["finetune_epochs"])
    head = ["budget", "MACs kept", "params kept"] + (["accuracy (pruned)"] if tuned else []) + \
        ["accuracy", "top-1 agreement", "latency p50", "speed-up"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines.append("| original | 1.000 | 1.000 | " + ("| " if tuned else "") + f"{pct(o['accuracy'])} | 100.0% | {lat0} | 1.00× |")
    for p in report["points"]:
        lat = f"{p['latency_ms']:.3f} ms" if p.get("latency_ms") is not None else "—"
        speed = f"{1 / p['latency_ratio']:.2f}×" if p.get("latency_ratio") else "—"
        pruned = f"{pct(p['accuracy_after_prune'])} | " if tuned else ""
        lines.append(f"| {p['target']} | {p['macs_kept']:.3f} | {p['params_kept']:.3f} | {pruned}"
                     f"{pct(p['accuracy'])} | {pct(p['agreement'])} | {lat} | {speed} |")
        c = p.get("compare")
        if c:  # the peer at the same budget, the same recovery (agreement: with the original)
            lines.append(_peer_row(p["target"], c, tuned))
        q = p.get("int8")
        if q:  # the same point as INT8 (agreement: with its own FP32 model)
            qlat = f"{q['latency_ms']:.3f} ms" if q.get("latency_ms") is not None else "—"
            qspeed = f"{1 / q['latency_ratio']:.2f}×" if q.get("latency_ratio") else "—"
            lines.append(f"| {p['target']} INT8 | | | {'| ' if tuned else ''}{pct(q['accuracy'])} | "
                         f"{pct(q['agreement_fp32'])} (vs FP32) | {qlat} | {qspeed} |")
    return "\n".join(lines) + "\n"


PEER_LABEL = {"torch-pruning": "Torch-Pruning L1"}  # the importance sweep --compare runs


def _peer_row(target: str, c: dict, tuned: bool) -> str:
    name = f"{target} {PEER_LABEL.get(c['tool'], c['tool'])}"
    if c.get("error"):
        return f"| {name} | failed: {c['error']} |"
    lat = f"{c['latency_ms']:.3f} ms" if c.get("latency_ms") is not None else "—"
    speed = f"{1 / c['latency_ratio']:.2f}×" if c.get("latency_ratio") else "—"
    pruned = f"{pct(c['accuracy_after_prune'])} | " if tuned else ""
    return (f"| {name} | {c['macs_kept']:.3f} | {c['params_kept']:.3f} | {pruned}{pct(c['accuracy'])} | "
            f"{pct(c['agreement'])} | {lat} | {speed} |")


def _peer_version(report: dict) -> str:
    return next((p["compare"]["version"] for p in report["points"] if p.get("compare")), "")
