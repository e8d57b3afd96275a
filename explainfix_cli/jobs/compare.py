"""``sweep --compare torch-pruning``: a peer tool's point beside each of explainfix's, on the user's own model.

    check_compare("torch-pruning")            # before any work: a known peer, and its library installed
    peer, model = peer_point(original, opened, data, 0.25, "macs", True, recovery, eval_calib, before, seed=0)
    peer["accuracy"], peer["macs_kept"]       # or peer["error"]: the peer failed on this model

The peer prunes a copy of the ORIGINAL model to the same fraction of the same metric (prune/peers.py), then gets
what explainfix's point got: the BatchNorm re-estimation on the calibration data, the same recovery (fine-tune
or distillation: epochs, seed, data) and the same evaluation (jobs/rounds.py ``recover_and_measure``). These
models are for comparison only: never written to disk.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..core.errors import BadInput
from ..core.layout import channels_last
from ..core.model import count_macs, count_params
from ..io.data import CalibrationSet
from ..prune.peers import TORCH_PRUNING, PeerFailed, import_torch_pruning, torch_pruning_to, torch_pruning_version
from ..train.finetune import agreement
from .common import DataSpec, Opened
from .prune import recalibrate_opened
from .rounds import Recovery, recover_and_measure

COMPARE_CHOICES = (TORCH_PRUNING,)


def check_compare(compare: str | None) -> str | None:
    """``compare`` when it names a known peer whose library is installed; BadInput (one line) otherwise."""
    if compare is None:
        return None
    if compare not in COMPARE_CHOICES:
        raise BadInput(f"--compare must be one of: {', '.join(COMPARE_CHOICES)}; got {compare!r}")
    import_torch_pruning()
    return compare


def peer_point(original: nn.Module, opened: Opened, data: DataSpec, fraction: float, metric: str,
               recalibrate_bn: bool, recovery: Recovery, eval_calib: CalibrationSet | None, before: dict, *,
               seed: int = 0) -> tuple[dict, nn.Module | None]:
    """Torch-Pruning L1 (uniform ratio) at ``fraction`` of ``metric``, recovered and measured like explainfix's
    point; returns (the numbers for the point's ``compare`` entry, the model on the CPU). When Torch-Pruning fails
    on the model: ({"error": one line, …}, None), and the sweep goes on. ``before``: the original's evaluation."""
    entry: dict[str, Any] = {"tool": TORCH_PRUNING, "version": torch_pruning_version(), "importance": "l1"}
    example = opened.example(1).to(opened.device)
    try:
        model, ratio = torch_pruning_to(original, example, fraction, metric, importance="l1")
    except PeerFailed as e:
        return {**entry, "error": str(e)}, None
    model = model.to(opened.device).eval()
    macs, params = count_macs(model, example), count_params(model)
    point = dataclasses.replace(opened, loaded=dataclasses.replace(opened.loaded, model=model), macs=macs)
    try:  # the peer's model runs in training mode here for the first time: its failure is the peer's
        if recalibrate_bn:  # as prune_opened does after explainfix's surgery
            with channels_last(model, example):
                recalibrate_opened(point, data, seed)
        pruned, _, final, _ = recover_and_measure(point, data, recovery, eval_calib, seed=seed)
    except BadInput:
        raise
    except Exception as e:  # noqa: BLE001 - the peer's model, not ours: recorded, and the sweep goes on
        if "out of memory" in str(e).lower():
            raise
        text = " ".join(str(e).split())[:200]
        return {**entry, "error": f"Torch-Pruning's pruned model failed to recover or run: {type(e).__name__}: {text}"}, None
    kept = (macs / count_macs(original, example), params / count_params(original))
    entry.update(ratio=ratio, macs=macs, params=params, macs_kept=kept[0], params_kept=kept[1],
                 within_budget=kept[0 if metric == "macs" else 1] <= fraction * 1.02,  # its bisection may miss it
                 accuracy_after_prune=pruned["accuracy"],
                 agreement_after_prune=agreement(before["preds"], pruned["preds"]), accuracy=final["accuracy"],
                 agreement=agreement(before["preds"], final["preds"]))
    return entry, model.to("cpu").eval()
