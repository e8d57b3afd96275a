"""Many processes, one result: the thin layer over ``torch.distributed`` that every stage uses.

Launched by ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` …), a command
initialises the process group once (:func:`init_from_env`: NCCL on CUDA, gloo on CPU) and then:

* **shards batches**, not images: batch ``b`` of the one seeded global order goes to rank ``b % world``, so
  every batch is exactly the one a single process would see (per-batch saliency ``|w·∂C/∂w|`` depends on
  the batch), no image is used twice and none is lost when the count is not a multiple of the world size;
* **sums** what each rank measured (:func:`all_reduce_sum`): saliency scores, agreement and accuracy counts,
  BatchNorm statistics — so every rank ranks the same filters and makes the same cut;
* **writes once**: only rank 0 writes artifacts (io/outdir.py) and the CLI prints only there.

Without ``torchrun`` (``WORLD_SIZE`` unset or 1) every function is the single-process identity.
"""
from __future__ import annotations

import atexit
import datetime as dt
import os
from collections.abc import Iterable

import torch
import torch.distributed as td

TIMEOUT_S = float(os.environ.get("EXPLAINFIX_DIST_TIMEOUT", "900"))  # a collective that waits longer fails


def launched() -> bool:
    """True when started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """The rank torchrun gave this process (readable before the process group exists); 0 without torchrun."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: torch.device) -> torch.device:
    """Join the launcher's process group (once) and return this rank's device: ``cuda:LOCAL_RANK`` on CUDA."""
    if not launched():
        return device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not td.is_initialized():
        td.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=dt.timedelta(seconds=TIMEOUT_S))
        atexit.register(shutdown)
    return device


def shutdown() -> None:
    if td.is_available() and td.is_initialized():
        td.destroy_process_group()


def barrier() -> None:
    if active():
        td.barrier()


def shard(batches: list) -> list:
    """This rank's share of a global list of batches: batch ``b`` goes to rank ``b % world``."""
    return batches[rank()::world()]


def all_reduce_sum(tensors: Iterable[torch.Tensor]) -> None:
    """Sum every tensor over the ranks, in place (float64 for floats: the sum must not depend on the world size
    beyond rounding). No-op in a single process."""
    if not active():
        return
    device = torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")
    for t in tensors:
        work = t.detach().to(device, torch.float64 if t.is_floating_point() else torch.int64)
        td.all_reduce(work, op=td.ReduceOp.SUM)
        t.copy_(work.to(t.device, t.dtype))


def sum_counts(*values: float) -> list[float]:
    """Plain numbers (counts, sums) summed over the ranks."""
    t = torch.tensor(values, dtype=torch.float64)
    all_reduce_sum([t])
    return t.tolist()
