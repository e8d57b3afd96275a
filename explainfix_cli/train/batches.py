"""Shuffled training batches: epoch → (x, y), over a calibration set or in-memory tensors.

>>> batches, steps = shuffled_batches(calib, batch_size=32, seed=0)
>>> for x, y in batches(1): ...

Unlabeled data (``labels=False``, for distillation) yields ``y`` filled with -1."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from ..core import dist
from ..core.errors import BadInput
from ..io.data import CalibrationSet

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]  # epoch → (x, y) batches
CACHE_BYTES = 512 << 20  # decoded images are kept in memory after the first epoch below this size


def shuffled_batches(calib: CalibrationSet, batch_size: int, seed: int = 0,
                     cache_bytes: int = CACHE_BYTES, need_labels: bool = True) -> tuple[Batches, int]:
    """(epoch → shuffled (x, y) batches, batches per epoch) over a calibration set.

    The permutation is seeded by ``(seed, epoch)``; a trailing batch of one sample is merged into the
    previous one (BatchNorm cannot train on one sample). Decoded images are cached when they fit.
    ``need_labels=False`` accepts an unlabeled set (y = -1)."""
    if need_labels and not calib.labeled:
        raise BadInput(f"{calib.source} is unlabeled; fine-tuning with cross-entropy needs labels",
                       hint="use class subfolders (calib/<class>/*.png) or an .npz with arrays x and y, "
                            "or --distill, which learns from the original model's outputs")
    n = len(calib)
    if batch_size < 1:
        raise BadInput(f"--batch-size must be ≥ 1, got {batch_size}")
    labels = torch.tensor(calib.labels, dtype=torch.long)  # -1 where unlabeled
    pre = calib.preprocessing
    per_item = 4 * (pre.channels * pre.input_size[0] * pre.input_size[1] if pre else 0)
    cache: dict[int, torch.Tensor] = {}
    use_cache = calib.array is None and calib.workers <= 0 and per_item * n <= cache_bytes

    def item(i: int) -> torch.Tensor:
        if i not in cache:
            x = calib.item(i)
            if not use_cache:
                return x
            cache[i] = x
        return cache[i]

    bounds = batch_bounds(n, batch_size)
    # under torchrun: batch b of the epoch's one order goes to rank b % world, the same count to every rank
    # (DistributedDataParallel steps together; the last len(bounds) % world batches of an epoch are left out)
    world = dist.world()
    steps = len(bounds) // world
    if steps == 0:
        raise BadInput(f"{calib.source}: {len(bounds)} batches of {batch_size} cannot be shared by {world} processes",
                       hint="lower --batch-size or use fewer processes")

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        index = dist.shard([order[lo:hi].tolist() for lo, hi in bounds[: steps * world]])
        if calib.workers > 0:
            yield from calib.load(index)
            return
        for idx in index:
            yield torch.stack([item(i) for i in idx]), labels[idx]

    return epoch_batches, steps


def tensor_batches(x: torch.Tensor, y: torch.Tensor | None, batch_size: int, seed: int = 0) -> tuple[Batches, int]:
    """The same as :func:`shuffled_batches` for in-memory tensors (benchmarks, the Python API); ``y=None``
    is unlabeled."""
    bounds = batch_bounds(len(x), batch_size)
    y = torch.full((len(x),), -1, dtype=torch.long) if y is None else y

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for lo, hi in bounds:
            idx = order[lo:hi]
            yield x[idx], y[idx]

    return epoch_batches, len(bounds)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    bounds = [(lo, min(lo + batch_size, n)) for lo in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2:] = [(bounds[-2][0], n)]
    return bounds
