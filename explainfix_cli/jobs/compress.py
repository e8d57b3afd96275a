"""``explainfix compress``: prune → (fine-tune) → export ONNX → verify → bench → quality gates, for CI.

With ``steps=K`` (a budget only) the prune and fine-tune repeat K times: each round re-scores the current
model and prunes toward the geometric schedule ``budget^(k/K)`` of the original, and the last round aims
at the budget itself, so the run ends at the budget (within its tolerance). ``distill`` fine-tunes from
the original model's outputs (labels optional).

    job = compress_job(ModelSpec(Path("model.pt"), arch="…"), DataSpec(Path("calib")), PruneOptions(pct=70),
                       eval_data=Path("eval"), max_accuracy_drop=1.0, min_agreement=0.95)
    job.passed, [g.name for g in job.gates if not g.passed]

Gates (each only when asked for, except verification which always runs):

* accuracy drop, in percentage points: accuracy of the original minus that of the final model, both on
  ``--eval-data`` (else ``--data``); needs labels;
* top-1 agreement of the final model with the original on the same samples (a fraction);
* ONNX verification: onnxruntime vs the final torch model within ``--atol/--rtol`` (verify.py).

Everything is written into one directory even when a gate fails (CI keeps ``summary.md``); the
caller turns a failed gate into exit 1.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from ..core import dist
from ..core.errors import BadInput
from ..core.model import count_params
from ..core.progress import Progress
from ..deploy.verify import check_tolerances
from ..io.data import held_out, load_calibration
from ..io.model_dir import save_model_dir
from ..deploy.quantize import QuantizeOptions
from ..io.outdir import staging
from ..prune.budget import met
from ..prune.options import PruneOptions
from ..prune.pipeline import PruneResult
from ..train.finetune import TrainOptions, agreement
from .bench import BenchOptions, bench_models
from .common import DataSpec, ModelSpec, Run, evaluate_on, now, open_inputs, output_dir, read_back_example
from .export import export_verified, provenance_metadata
from .finetune import check_recovery_data, recovery_options
from .prune import pruner_for
from .rounds import Recovery, Round, run_round
from .result import JobResult
from .quantize import MAX_FLOAT, quantize_checked
from .summary import summary_markdown


@dataclass
class Gate:
    name: str  # accuracy-drop | agreement | verification
    flag: str
    threshold: str  # as written in the summary: "≤ 1 pts"
    value: str  # "0.7 pts"
    passed: bool
    detail: str = ""

    def failure_line(self) -> str:
        return f"{self.name} {self.value} (needs {self.threshold}, {self.flag}){': ' + self.detail if self.detail else ''}"


@dataclass
class CompressJob(JobResult):
    out: Path
    report: dict
    gates: list[Gate]
    summary_md: str
    model: nn.Module

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    def failure_message(self) -> str:
        return "gate failed: " + "; ".join(g.failure_line() for g in self.gates if not g.passed)


def compress_job(
    model: ModelSpec,
    data: DataSpec,
    options: PruneOptions,
    *,
    eval_data: Path | None = None,
    finetune_epochs: int = 0,
    train: TrainOptions | None = None,
    max_accuracy_drop: float | None = None,
    min_agreement: float | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    opset: int = 18,
    timing: BenchOptions = BenchOptions(),
    out: Path | None = None,
    force: bool = False,
    run: Run = Run(),
    steps: int = 1,
    distill: Any = None,
    quantize: QuantizeOptions | None = None,
    max_float: int = MAX_FLOAT,
) -> CompressJob:
    """``options``: how much to prune (``PruneOptions(target_macs="4x")``, ``PruneOptions(pct=70)``); ``distill`` is a
    ``train.objectives.DistillOptions``; ``finetune_epochs`` are per step. ``quantize`` (``QuantizeOptions()``:
    INT8) adds ``model.int8.onnx`` by the quantize job's own steps (jobs/quantize.py ``quantize_checked``), checked
    against the FP32 ONNX, accuracy-controlled toward ``max_accuracy_drop`` from the original, and timed.
    ``timing``: how the models are timed (``BenchOptions(bench=False)``: not at all); ``run``: the device, the seed
    and the progress callbacks (``Run(device="cpu", seed=1)``)."""
    _check_gate_values(max_accuracy_drop, min_agreement, atol, rtol)
    timing = timing.check()
    quantize = quantize.check() if quantize is not None else None
    if not (isinstance(max_float, int) and max_float >= 0):
        raise BadInput(f"--max-float must be an integer ≥ 0, got {max_float}")
    resolved = options.resolved(has_data=data.path is not None)
    if not (isinstance(steps, int) and 1 <= steps <= 20):
        raise BadInput(f"--steps must be an integer in [1, 20], got {steps}")
    if steps > 1 and resolved.budget is None:
        raise BadInput("--steps needs a budget (--target-macs or --target-params); --pct prunes in one step",
                       hint="e.g. --target-macs 4x --steps 3 --finetune-epochs 1")
    train = recovery_options(finetune_epochs, train, distill)
    if data.path is None:
        raise BadInput("compress needs --data PATH (calibration images for saliency)")
    out = output_dir(out, "compressed", model, force, data.path, eval_data)
    opened = open_inputs(model, data, run.device)
    resolved = resolved.with_model(opened.model)  # where --rank auto switches depends on the model
    costs = {"macs": opened.macs, "params": count_params(opened.model)}
    first = pruner_for(opened, data, _step_options(resolved, 1, steps, costs, costs), run.seed, run.progress)
    if steps > 1:  # an unreachable final budget: refused before any data is read (round 1 checks its own below)
        pruner_for(opened, data, resolved, run.seed).check()
    first.check()
    eval_calib = load_calibration(eval_data, opened.pre) if eval_data is not None else opened.calib
    if max_accuracy_drop is not None and not eval_calib.labeled:
        raise BadInput(f"--max-accuracy-drop needs labeled evaluation data; {eval_calib.source} is unlabeled",
                       hint="pass --eval-data with class subfolders")
    check_recovery_data(train, distill, opened.calib)
    bs = data.batch_size
    stage = _stages(run.progress)

    original = copy.deepcopy(opened.model).to("cpu")
    before = evaluate_on(opened.model.to(opened.device), eval_calib, bs, opened.device)
    if not len(before["preds"]) and (max_accuracy_drop is not None or min_agreement is not None):
        raise BadInput("--max-accuracy-drop and --min-agreement compare top-1 classes; this model's output is not "
                       "(N, classes) logits", hint="gate on the ONNX verification (always on) and the self-check")
    rounds: list[Round] = []
    recipe = None
    for k in range(1, steps + 1):
        current = {"macs": opened.macs, "params": count_params(opened.model)}
        step_options = _step_options(resolved, k, steps, current, costs)
        recovery = Recovery(train, distill, original if distill is not None else None, run.on_step)
        rnd = run_round(opened, data, step_options, recovery, eval_calib, seed=run.seed, train_seed=run.seed + k - 1,
                        recipe=recipe, progress=run.progress, pruner=first if k == 1 else None)
        rounds.append(rnd)
        recipe = rnd.recipe
    first_result = rounds[0].result
    result = _overall([r.result for r in rounds], resolved)
    tuned = rounds[-1].tuned
    final = opened.model.to("cpu").eval()
    after = rounds[-1].final  # the last round measured the final model
    acc_b, acc_a = before["accuracy"], after["accuracy"]

    extra: dict[str, bytes] = {}
    entry = {"command": "compress", "time": now(), "pct": result.pct, "budget": result.budget, "criterion": result.criterion,
             "finetune_epochs": finetune_epochs, "steps": steps, "distill": asdict(distill) if distill else None}
    with staging(out) as work:  # next to -o (io/outdir.py), removed whatever happens
        stage("export")  # the export job's own steps: provenance metadata, ONNX, onnxruntime check
        meta = provenance_metadata(recipe.record(entry), opened.pre, opened.loaded.source_sha256, command="compress")
        exported, check = export_verified(final, work / "model.onnx", meta, eval_calib, opened.pre, opset=opset,
                                          atol=atol, rtol=rtol, batch_size=bs, seed=run.seed)
        onnx_bytes = (work / "model.onnx").read_bytes()
        if exported.external_data:  # weights over the protobuf limit travel in a side file
            extra[exported.external_data] = (work / exported.external_data).read_bytes()
        int8 = None
        if quantize is not None:  # FP32 ONNX → INT8 → checked → controlled → timed (the quantize job's steps)
            left = None if max_accuracy_drop is None else max_accuracy_drop - 100 * (acc_b - acc_a)
            room = left if left is not None and left >= 0 else None  # FP32 already over: no layer in float helps
            int8 = quantize_checked(work / "model.onnx", work / "model.int8.onnx", opened.calib, eval_calib, quantize,
                                    work=work, shape=opened.pre.shape, max_accuracy_drop=room, max_float=max_float,
                                    timing=replace(timing, bench=timing.bench and dist.is_main()), progress=run.progress)
            extra["model.int8.onnx"] = (work / "model.int8.onnx").read_bytes()
    bench_rows = None
    if timing.bench and dist.is_main():  # timed once: ranks timing at once would slow each other
        stage("bench")  # the bench job's timing, on the two models in memory
        rows = bench_models([("original", original), ("compressed", final)], opened.pre, threads=timing.threads,
                            iters=timing.bench_iters, rounds=timing.bench_rounds, seed=run.seed, opset=opset)
        bench_rows = {"batch_size": 1, "threads": timing.threads, "iters": timing.bench_iters, "rows": rows}

    agree = agreement(before["preds"], after["preds"])
    gates = _gates(acc_b, acc_a, agree, check, max_accuracy_drop, min_agreement, after["samples"], eval_calib)
    if int8 is not None:
        gates += _int8_gates(int8, acc_b, max_accuracy_drop)
    report = {
        "load_notes": opened.loaded.notes, "command": "compress", "weights_dtype": opened.written_dtype, "model": str(model.path), "out": str(out), "time": now(), "pct": result.pct,
        "budget": result.budget, "criterion": result.criterion, "rank": resolved.rank,
        **({"rank_used": resolved.ranking[0], "rank_why": resolved.ranking[1]} if resolved.criterion == "channel" else {}),
        "preprocessing": opened.pre.to_dict(), "data": opened.calib.describe(), "eval_data": eval_calib.describe(),
        "passed": all(g.passed for g in gates), "gates": [asdict(g) for g in gates],
        "original": {"params": first_result.params_before, "macs": first_result.macs_before, "accuracy": acc_b},
        "compressed": {"params": result.params_after, "macs": result.macs_after, "accuracy": acc_a,
                       "accuracy_after_prune": rounds[-1].pruned["accuracy"], "agreement": agree,
                       "agreement_after_prune": agreement(before["preds"], rounds[-1].pruned["preds"])},
        "eval_samples": after["samples"], "held_out": held_out(eval_data, data.path), "steps": steps, "distill": asdict(distill) if distill else None,
        "rounds": [_round_json(i, r, {**before, **costs}) for i, r in enumerate(rounds, start=1)] if steps > 1 else None,
        "prune": result.to_json(), "finetune": tuned.to_json() if tuned else None,
        "export": {**exported.to_json(), "path": str(Path(out) / "model.onnx")}, "verify": check.to_json(), "verify_summary": check.summary_line(),
        "bench": bench_rows, "seed": run.seed, "int8": int8.to_json() if int8 is not None else None,
    }
    summary = summary_markdown(report)
    recipe = recipe.record({**entry, "passed": report["passed"], "gates": {g.name: g.value for g in gates}})
    save_model_dir(final, recipe, out, extra={"model.onnx": onnx_bytes, **extra, "report.json": report, "summary.md": summary}, force=force,
                   dtypes=opened.out_dtypes, example=read_back_example(opened))
    return CompressJob(out, report, gates, summary, final)


def _int8_gates(int8: Any, acc_before: float | None, max_drop: float | None) -> list[Gate]:
    """The INT8 model's gates in compress: its own check against the FP32 ONNX (accuracy control included) and,
    with ``--max-accuracy-drop``, its accuracy against the original's."""
    c = int8.comparison
    gates = []
    if int8.gates:  # the room left by the FP32 model's own drop, accuracy control included
        gates.append(Gate("INT8 vs FP32", "--quantize", "; ".join(g.threshold for g in int8.gates),
                          "; ".join(g.value for g in int8.gates), int8.passed, c.brief()))
    if max_drop is not None and c.accuracy_int8 is not None and acc_before is not None:
        drop = 100 * (acc_before - c.accuracy_int8)
        gates.append(Gate("INT8 accuracy drop", "--max-accuracy-drop", f"≤ {max_drop:g} pts", f"{drop:.2f} pts",
                          drop <= max_drop + 1e-9, f"{100 * acc_before:.2f}% → INT8 {100 * c.accuracy_int8:.2f}%"))
    return gates


def _step_options(opts: PruneOptions, k: int, steps: int, current: dict, original: dict) -> PruneOptions:
    """Round k of K: the budget ``fraction^(k/K)`` of the original, as a fraction of the current model."""
    if steps == 1:
        return opts
    metric, frac = opts.budget
    if opts.criterion == "channel":  # --rank auto decides on the whole budget, not on one round's share of it
        opts = replace(opts, rank=opts.ranking[0])
    want = original[metric] * frac ** (k / steps) / current[metric]
    if not 0 < want < 1:
        raise BadInput(f"round {k} of --steps {steps} has nothing left to remove ({metric} already at "
                       f"{current[metric] / original[metric]:.3f} of the original)", hint="use fewer --steps")
    return replace(opts, **{"target_macs" if metric == "macs" else "target_params": want})


def _overall(rounds: list[PruneResult], opts: PruneOptions) -> PruneResult:
    """The prune result the report shows: the last round's, with the original's costs and the whole budget."""
    first, last = rounds[0], rounds[-1]
    if len(rounds) == 1:
        return first
    out = copy.copy(last)
    out.params_before, out.macs_before = first.params_before, first.macs_before
    out.channels_before = first.channels_before
    out.channels_removed = sum(r.channels_removed for r in rounds)
    if opts.budget is not None and last.budget is not None:
        metric, frac = opts.budget
        achieved = (out.macs_after / out.macs_before) if metric == "macs" else (out.params_after / out.params_before)
        within = met(achieved, frac)
        note = "" if within else (f"after {len(rounds)} rounds {achieved:.3f} is kept (asked {frac:.3f}); in the last round "
                                  + last.budget["note"].replace("closest plan", "the closest plan"))
        out.budget = {**last.budget, "requested": frac, "achieved": achieved, "within_tolerance": within, "note": note,
                      "evaluations": sum(r.budget["evaluations"] for r in rounds)}
    return out


def _round_json(i: int, rnd: Round, before: dict) -> dict:
    result, pruned_eval, tuned = rnd.result, rnd.pruned, rnd.tuned
    return {"round": i, "macs_after": result.macs_after, "params_after": result.params_after,
            "macs_kept": result.macs_after / before["macs"], "params_kept": result.params_after / before["params"],
            "accuracy_after_prune": pruned_eval["accuracy"],
            "agreement_after_prune": agreement(before["preds"], pruned_eval["preds"]),
            "eval_accuracy_after_finetune": tuned.eval_accuracy_after if tuned else None}


def _check_gate_values(max_drop: float | None, min_agree: float | None, atol: float, rtol: float) -> None:
    if max_drop is not None and not (max_drop >= 0 and math.isfinite(max_drop)):
        raise BadInput(f"--max-accuracy-drop must be ≥ 0 percentage points, got {max_drop:g}")
    if min_agree is not None and not 0 <= min_agree <= 1:
        raise BadInput(f"--min-agreement is a fraction in [0, 1], got {min_agree:g}", hint="e.g. --min-agreement 0.98")
    check_tolerances(atol, rtol)


def _stages(progress: Progress | None):
    def stage(name: str) -> None:
        if progress:
            progress(name, 0, 1)
    return stage


def _gates(acc_b, acc_a, agree, check, max_drop, min_agree, samples, eval_calib) -> list[Gate]:
    gates = []
    where = f"on {samples} samples of {eval_calib.source}"
    if max_drop is not None:
        drop = 100 * (acc_b - acc_a)
        gates.append(Gate("accuracy drop", "--max-accuracy-drop", f"≤ {max_drop:g} pts", f"{drop:.2f} pts",
                          drop <= max_drop + 1e-9, f"{100 * acc_b:.2f}% → {100 * acc_a:.2f}% {where}"))
    if min_agree is not None:
        gates.append(Gate("top-1 agreement", "--min-agreement", f"≥ {min_agree:g}", f"{agree:.4f}",
                          agree >= min_agree - 1e-12, where))
    gates.append(Gate("ONNX verification", "--atol/--rtol", f"atol {check.atol:g}, rtol {check.rtol:g}",
                      "PASSED" if check.passed else "FAILED", check.passed, check.summary_line()))
    return gates
