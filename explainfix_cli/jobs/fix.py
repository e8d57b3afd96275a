"""``explainfix fix``: fixed spatial filters (GHaar, DCT, or the current ones), frozen in the recipe."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..core.errors import BadInput
from ..core.model import count_params, iter_spatial_convs
from ..io.model_dir import save_model_dir
from .result import JobResult
from .common import DataSpec, ModelSpec, evaluate_on, now, open_inputs, output_dir, read_back_example

FIX_INITS = {"ghaar": "ghaar", "dct": "dct", "keep": "unchanged", "haar": "haar", "ghaar4": "ghaar4",
             "dct_steered": "dct_steered"}  # CLI name → kernels.fix_spatial_conv2d method


@dataclass
class FixJob(JobResult):
    out: Path
    report: dict
    model: nn.Module


def fix_job(
    model: ModelSpec,
    init: str,
    data: DataSpec | None = None,
    out: Path | None = None,
    device: str = "auto",
    seed: int = 0,
    force: bool = False,
) -> FixJob:
    """Replace (or keep) every spatial conv's kernels by fixed filters and freeze them in the recipe."""
    from ..explain.kernels import fix_spatial_conv2d
    from ..train.finetune import agreement

    if init not in FIX_INITS:
        raise BadInput(f"--init must be one of {', '.join(FIX_INITS)}, got {init!r}", hint="e.g. --init ghaar")
    out = output_dir(out, f"fixed-{init}", model, force, data.path if data else None)
    opened = open_inputs(model, data, device)
    m = opened.model.to(opened.device)
    bs = data.batch_size if data else 32
    before = evaluate_on(m, opened.calib, bs, opened.device)
    trainable_before = sum(p.numel() for p in m.parameters() if p.requires_grad)
    layers = fix_spatial_conv2d(m, FIX_INITS[init], seed=seed)
    if not layers:
        raise BadInput("the model has no spatial Conv2d (kernel larger than 1×1) to fix")
    frozen_now = [f"{name}.{p}" for name in layers for p, _ in m.get_submodule(name).named_parameters(recurse=False)]
    after = evaluate_on(m, opened.calib, bs, opened.device)
    provenance = {"command": "fix", "time": now(), "init": init, "seed": seed,
                  "source": str(opened.loaded.source), "source_sha256": opened.loaded.source_sha256}
    recipe = opened.loaded.recipe.record(
        provenance, edits=[{"op": "fix", "init": init, "seed": seed, "layers": len(layers)}],
        frozen={*opened.loaded.recipe.frozen, *frozen_now}, preprocessing=opened.pre.to_dict())
    convs = dict(iter_spatial_convs(m))
    report = {
        "command": "fix", "weights_dtype": opened.written_dtype, "model": str(model.path), "out": str(out), "init": init, "seed": seed,
        "layers": [{"name": n, "kernel": list(convs[n].kernel_size), "filters": int(convs[n].weight.shape[0] * convs[n].weight.shape[1])}
                   for n in layers],
        "spatial_filters": sum(int(convs[n].weight.shape[0] * convs[n].weight.shape[1]) for n in layers),
        "frozen": list(recipe.frozen),
        "frozen_params": sum(p.numel() for n, p in m.named_parameters() if n in set(recipe.frozen)),
        "params": count_params(m), "trainable_params_before": trainable_before,
        "trainable_params_after": sum(p.numel() for p in m.parameters() if p.requires_grad),
        "data": opened.calib.describe() if opened.calib else None,
        "accuracy_before": before["accuracy"] if before else None,
        "accuracy_after": after["accuracy"] if after else None,
        "agreement": agreement(before["preds"], after["preds"]) if before else None,
    }
    m.to("cpu")
    save_model_dir(m, recipe, out, extra={"report.json": report}, force=force, dtypes=opened.out_dtypes,
                   example=read_back_example(opened))
    return FixJob(out, report, m)


