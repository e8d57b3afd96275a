"""`explainfix compress`: the CI step."""
from __future__ import annotations

from typing import Annotated, Any

import typer

from ..jobs.quantize import MAX_FLOAT
from .base import app, command
from .options import RECOVERY, Budget, Device, Gates, Json, MaxFloat, ModelArg, Opset, Quantize, Ranking, Recovery, Seed
from .options import Source
from .options import Timing, Tuning
from .options import Weights, grouped

Steps = Annotated[int, typer.Option("--steps", rich_help_panel=RECOVERY, help="Iterative compression: K rounds of re-score → prune "
                                    "toward the budget (geometric schedule) → fine-tune, ending at the budget. Needs a budget.")]


@app.command()
@command
@grouped
def compress(
    model: ModelArg, *, budget: Budget, ranking: Ranking, inputs: Tuning, recovery: Recovery, steps: Steps = 1,
    gates: Gates, timing: Timing, source: Source, output: Weights, opset: Opset = 18, quantize: Quantize = None,
    max_float: MaxFloat = MAX_FLOAT, device: Device = "auto", seed: Seed = 0, json_out: Json = False,
) -> Any:
    """Prune → (fine-tune) → export ONNX → verify → quality gates, in one command for CI.

    Writes OUT/ with model.safetensors, explainfix.json, model.onnx, report.json and summary.md (also when a gate
    fails, so CI can publish it). Exit 1 when a gate fails; the last line names it with its numbers.

    Example: explainfix compress model.pt --arch m.py:Net --target-macs 4x --data calib/ --eval-data val/ --max-accuracy-drop 1 -o out/

    Example (unlabeled calibration images, 3 rounds): explainfix compress model.pt --arch m.py:Net --target-macs 4x --steps 3
    --finetune-epochs 1 --distill --data unlabeled/ --eval-data val/ -o out/
    """
    from ..deploy.quantize import QuantizeOptions
    from ..jobs.common import Run
    from ..jobs.compress import compress_job
    from .render import render_compress, work_progress

    with work_progress(inputs.batch_size) as bar:
        job = compress_job(
            source.spec(model, output.dtype), inputs.spec(), eval_data=inputs.eval_data,
            finetune_epochs=recovery.finetune_epochs, train=recovery.train(), options=ranking.options(budget),
            max_accuracy_drop=gates.max_accuracy_drop, min_agreement=gates.min_agreement, atol=gates.atol, rtol=gates.rtol,
            opset=opset, timing=timing.options(), out=output.out, force=output.force,
            run=Run(device, seed, bar, bar.step if bar else None), steps=steps, distill=recovery.options(), max_float=max_float,
            quantize=QuantizeOptions(type=quantize, batch_size=inputs.batch_size, seed=seed) if quantize else None,
        )
    render_compress(job)
    return job  # a failed gate: exit 1 naming it (cli/base.py)
