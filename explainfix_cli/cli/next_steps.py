"""What the terminal says about a result beyond its tables, in words a newcomer can act on (issue #27): the
next step when quality fell far, what rounding kept, short names for paths. Text only; render.py prints it."""
from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

from ..core.fmt import human


def plural(count: int, noun: str) -> str:
    """3 → '3 channels', 1 → '1 channel' (batch → batches, epoch → epochs)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}{'es' if noun.endswith(('tch', 'sh', 'ss', 'x')) else 's'}"


def rounding_line(n: int, r: Any) -> str:
    """``kept N channels`` for --round-to: in which layers, and the MACs that kept."""
    ro = r.rounding
    step = ("multiples of 8 in layers that keep ≥ 64 channels (--round-to auto)" if ro["round_to"] == "auto"
            else f"multiples of {ro['round_to']} (--round-to)")
    layers = sorted(ro["layers"].items(), key=lambda kv: -kv[1])
    named = ", ".join(f"{name} +{k}" for name, k in layers[:5]) + (f" … +{len(layers) - 5} layers" if len(layers) > 5 else "")
    cost = f"; cost {human(ro['macs'])} MACs ({100 * ro['macs'] / r.macs_before:.1f}% of the original)" if ro["macs"] else ""
    return f"{plural(n, 'channel')} to keep channel counts {step}: {named}{cost}; --round-to 1 removes them"


def budget_flags(options: dict, smaller: bool = False) -> str:
    """The budget of resolved prune options as flags (``smaller``: half the reduction: 2x → 1.5x, --pct 70 → 35)."""
    for key, flag in (("target_macs", "--target-macs"), ("target_params", "--target-params")):
        if options.get(key) is not None:
            factor = 1 / float(options[key])
            return f"{flag} {(1 + (factor - 1) / 2) if smaller else factor:.3g}x"
    return f"--pct {options['pct'] / 2 if smaller else options['pct']:g}"


def next_steps(r: Any, job: Any, measured_on: str) -> list[str]:
    """Quality fell far: the measured numbers (first line), then the three ways on, as commands."""
    data = (job.report.get("data") or {}).get("source") or "DATA"
    model = job.report.get("model", "MODEL")
    if not Path(model).is_dir():
        model += " --arch … (as in this run)"
    return [
        f"{r.quality_fell} (on {r.eval_samples} {measured_on}). Next, one of:",
        f"  recover it: explainfix finetune {job.out} --distill --data {data} --epochs 3 -o {job.out}-tuned",
        f"  prune and recover in one go: explainfix compress {model} {budget_flags(r.options)} "
        f"--finetune-epochs 3 --distill --data {data}",
        f"  or ask for less: {budget_flags(r.options, smaller=True)}",
    ]


def _distill_instead(o: dict) -> str:
    """How to switch a cross-entropy run to distillation: its own default rate needs --lr left out."""
    from ..train.finetune import TrainOptions

    lr = TrainOptions(optimizer=o.get("optimizer", "sgd")).resolved(distill=True).lr
    return f"--distill in place of --lr (it learns from the original's outputs, at lr {lr:g})"


def training_fell(job: Any) -> list[str]:
    """The fine-tune lowered the eval accuracy: the numbers (first line), then the ways on. Phrased as changes to
    the user's own command, which holds everything this run needed (--trust-code, --arch, --teacher, …)."""
    res, o = job.result, job.result.options
    lines = [f"eval accuracy {100 * res.eval_accuracy_before:.1f}% → {100 * res.eval_accuracy_after:.1f}% after "
             f"{plural(len(res.epochs), 'epoch')} at lr {o['lr']:g}. Next, one of:",
             f"  a lower rate: run this command again with --lr {o['lr'] / 3:.2g} and another -o"]
    if o.get("objective") != "distillation":
        lines.append(f"  learn from the original instead: run it again with {_distill_instead(o)}")
    lines.append(f"  or keep the model you started from: {job.report['model']} is unchanged")
    return lines


def compress_training_fell(report: dict) -> str | None:
    """compress: the fine-tune ended more than FELL below pruning alone (None where it did not)."""
    from ..train.finetune import fell

    c, ft = report["compressed"], report.get("finetune")
    if not ft or not fell(c.get("accuracy_after_prune"), c.get("accuracy")):
        return None
    o = ft["options"]
    other = "" if o.get("objective") == "distillation" else f", or with {_distill_instead(o)}"
    return (f"{100 * c['accuracy_after_prune']:.1f}% after pruning only → {100 * c['accuracy']:.1f}% after the fine-tune "
            f"at lr {o['lr']:g}: run this command again with --lr {o['lr'] / 3:.2g}{other}")


def short_labels(labels: list[str]) -> list[str]:
    """Paths as a table shows them: the last component, with as many parents as it takes to tell them apart
    (the full path stays in --json)."""
    parts = [PurePath(label.rstrip("/")).parts or (label,) for label in labels]
    depth = [1] * len(labels)
    for _ in range(max((len(p) for p in parts), default=1)):
        shown = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = {x for x in shown if shown.count(x) > 1}
        if not clash:
            return shown
        depth = [d + 1 if x in clash and d < len(p) else d for x, p, d in zip(shown, parts, depth)]
    return labels
