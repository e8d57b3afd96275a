"""Other tools' pruning, for comparison only (``sweep --compare``, benchmarks/): one adapter per peer.

    pruned, ratio = torch_pruning_to(model, example, 0.25)      # ≤ 25 % of the MACs, Torch-Pruning L1, uniform
    count_macs(pruned, example) <= 0.25 * count_macs(model, example)

The peer prunes a copy (``model`` is left as it is) with one per-layer ratio for every layer, the smallest ratio
(the largest model) whose cost meets the budget, found by bisection on the ratio; the classifier head keeps its outputs. The peer library
is imported lazily (``pip install 'explainfix-cli[compare]'``).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..core.errors import BadInput
from ..core.model import count_macs, count_params

TORCH_PRUNING = "torch-pruning"
IMPORTANCES = ("l1", "taylor")


class PeerFailed(RuntimeError):
    """The peer library itself failed on the model (its tracing or pruning); the message is one line."""


def import_torch_pruning() -> Any:
    """The ``torch_pruning`` module; BadInput (one line) when it is not installed."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise BadInput("--compare torch-pruning needs Torch-Pruning: pip install 'explainfix-cli[compare]'") from None
    return tp


def torch_pruning_version() -> str:
    """The installed distribution's version (Torch-Pruning 1.6.1's ``__version__`` still says 1.6.0)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return str(getattr(import_torch_pruning(), "__version__", "?"))


def head_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The Linear/conv layers that produce the model's output (the classifier head): the last one run, and any
    whose output is (a view of) one of the model's output tensors. Their outputs are the classes: not pruned."""
    ran: list[tuple[nn.Module, torch.Tensor]] = []
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    hooks = [m.register_forward_hook(lambda m, i, o: ran.append((m, o))) for m in model.modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            out = model(example)
    finally:
        for h in hooks:
            h.remove()
    ptrs = {t.data_ptr() for t in _tensors(out)}
    heads = [m for m, o in ran if isinstance(o, torch.Tensor) and o.data_ptr() in ptrs]
    if ran and ran[-1][0] not in heads:
        heads.append(ran[-1][0])
    return list(dict.fromkeys(heads))


def _tensors(out: Any) -> Iterable[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, dict):
        for v in out.values():
            yield from _tensors(v)
    elif isinstance(out, (list, tuple)):
        for v in out:
            yield from _tensors(v)


def torch_pruning_to(model: nn.Module, example: torch.Tensor, target_fraction: float, metric: str = "macs",
                     importance: str = "l1", batches: Any = None, steps: int = 14) -> tuple[nn.Module, float]:
    """Torch-Pruning one-shot (``MetaPruner``, one uniform ratio) at the smallest ratio (the largest model) whose
    MACs (or params) are ≤ ``target_fraction`` of ``model``'s; returns (pruned copy, ratio). ``importance``: ``"l1"`` (group L1
    magnitude) or ``"taylor"`` (group Taylor, from the loss gradients over ``batches`` — (x, y) pairs or a callable
    returning them; without labels, cross-entropy against the model's own top-1). BadInput when Torch-Pruning is
    not installed; :class:`PeerFailed` when it fails on this model."""
    tp = import_torch_pruning()
    if metric not in ("macs", "params"):
        raise BadInput(f"metric must be macs or params, got {metric!r}")
    if importance not in IMPORTANCES:
        raise BadInput(f"importance must be one of {', '.join(IMPORTANCES)}, got {importance!r}")
    if importance == "taylor" and batches is None:
        raise BadInput("Taylor importance needs batches (the loss gradients)")
    data = list(batches() if callable(batches) else batches) if batches is not None else []
    cost: Callable[[nn.Module], int] = (lambda m: count_macs(m, example)) if metric == "macs" else count_params
    limit = target_fraction * cost(model)
    head_ids = {id(m) for m in head_layers(model.eval(), example)}
    heads = [name for name, m in model.named_modules() if id(m) in head_ids]

    def prune_at(ratio: float) -> tuple[nn.Module, int]:
        m = copy.deepcopy(model).eval()
        found = dict(m.named_modules())
        try:
            if importance == "taylor":
                imp = tp.importance.GroupTaylorImportance()
                m.zero_grad()
                for x, y in data:  # gradients of the loss on the calibration set
                    logits = m(x)
                    labeled = y is not None and y.ndim == 1 and bool((y >= 0).all())  # y = -1: unlabeled images
                    target = y if labeled else logits.detach().argmax(1)
                    nn.functional.cross_entropy(logits, target).backward()
            else:
                imp = tp.importance.GroupMagnitudeImportance(p=1)
            pruner = tp.pruner.MetaPruner(m, example, importance=imp, pruning_ratio=ratio,
                                          ignored_layers=[found[h] for h in heads])
            pruner.step()
            m.zero_grad(set_to_none=True)
            kept = cost(m)  # the forward of what it made
        except Exception as e:  # the peer's own failure on this model: reported, not raised through the sweep
            text = " ".join(str(e).split())[:200]
            raise PeerFailed(f"Torch-Pruning failed on this model: {type(e).__name__}: {text}") from e
        return m, kept

    lo, hi, best = 0.0, 0.999, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        m, kept = prune_at(mid)
        if kept <= limit:
            best, hi = (m, mid), mid
        else:
            lo = mid
    if best is None:  # nothing tried met the budget: the most pruned one tried
        best = (prune_at(hi)[0], hi)
    return best
