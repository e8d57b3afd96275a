"""The one safetensors codec: a model's state_dict ⇄ a ``.safetensors`` file (or bytes) with string metadata.

A tensor reachable under several keys (tied weights) is stored once; the other keys are listed in the
metadata ``explainfix.aliases`` (JSON ``{alias: stored key}``), and reading restores them (re-tying the
Parameters when loading into a model).

    export_safetensors(model, "out/model.safetensors", metadata={"arch": "torchvision.models:resnet18"})
    load_safetensors_into(fresh_model, "out/model.safetensors")   # strict keys, re-ties shared weights
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import BadInput, CannotProcess, first_line

ALIASES_KEY = "explainfix.aliases"  # safetensors metadata: {alias name: stored name}


@dataclass
class SafetensorsExportResult:
    """``aliases`` maps a dropped duplicate key to the key whose tensor it shares."""

    path: str
    tensors: int
    file_bytes: int
    aliases: dict[str, str]
    metadata: dict[str, str]

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class SafetensorsLoadResult:
    tensors: int
    aliases: dict[str, str]
    retied: list[str]


# ---------------------------------------------------------------------------------------------- names


def dedupe_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Identical views → one key + alias; other tensors sharing storage → independent copies."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_view: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise CannotProcess(f"state_dict entry `{name}` is a {type(t).__name__}, not a tensor")
        t = t.detach()
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and view in by_view:
            aliases[name] = by_view[view]
            continue
        by_view[view] = name
        copy = t.to("cpu").contiguous()
        if storage in storages or copy.untyped_storage().nbytes() != copy.numel() * copy.element_size():
            copy = copy.clone()
        storages.add(storage)
        tensors[name] = copy
    return tensors, aliases


FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
WeightDtypes = Mapping[str, str] | str | None  # per tensor name, one for all floating tensors, or as in memory


def dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def source_dtypes(state: Mapping[str, Any]) -> dict[str, str]:
    """The stored dtype of every floating-point tensor, when any is not float32 (else ``{}``: the common case
    needs no record). Explainfix computes in float32 and writes each tensor back in its own dtype."""
    found = {k: dtype_name(t) for k, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
    return found if any(d != "float32" for d in found.values()) else {}


def main_dtype(dtypes: WeightDtypes) -> str:
    """The dtype most floating tensors are written in (what a report states)."""
    if isinstance(dtypes, str):
        return dtypes
    if not dtypes:
        return "float32"
    counts: dict[str, int] = {}
    for d in dtypes.values():
        counts[d] = counts.get(d, 0) + 1
    return max(counts, key=counts.get)


def cast_floats(tensors: dict[str, torch.Tensor], dtypes: WeightDtypes) -> dict[str, torch.Tensor]:
    """Floating tensors cast as ``dtypes`` says; a name it lacks (a bias added by a fold) gets the main dtype."""
    if not dtypes:
        return tensors
    default = main_dtype(dtypes)
    pick = (lambda _k: dtypes) if isinstance(dtypes, str) else (lambda k: dtypes.get(k, default))
    return {k: t.to(FLOAT_DTYPES[pick(k)]) if t.is_floating_point() else t for k, t in tensors.items()}


def safetensors_bytes(model: nn.Module, metadata: dict[str, str] | None = None, dtypes: WeightDtypes = None) -> bytes:
    """The model's state_dict as safetensors bytes with string metadata (tied weights stored once),
    floating tensors written in ``dtypes`` (see :func:`cast_floats`)."""
    from safetensors.torch import save

    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if ALIASES_KEY in meta:
        raise BadInput(f"metadata key {ALIASES_KEY!r} is reserved")
    tensors, aliases = dedupe_state_dict(model.state_dict())
    tensors = cast_floats(tensors, dtypes)
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    try:
        return canonical_header(save(tensors, metadata=meta))
    except Exception as e:  # noqa: BLE001 - safetensors' own error types
        raise CannotProcess(f"cannot serialise the state_dict to safetensors: {first_line(e)}") from None


def canonical_header(data: bytes) -> bytes:
    """Safetensors bytes with their JSON header rewritten with sorted keys: safetensors writes the metadata in
    hash-map order, which changes from one process to the next, so two identical runs would differ byte for
    byte. The tensor data (already in a fixed order: by dtype alignment, then name) and every offset stay."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def export_safetensors(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None,
                       dtypes: WeightDtypes = None) -> SafetensorsExportResult:
    """Write ``model.state_dict()`` to ``path`` atomically (temporary file, then rename).

        export_safetensors(model, "out/model.safetensors", metadata={"arch": "torchvision.models:resnet18"})
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise BadInput(f"output directory {target.parent} does not exist")
    data = safetensors_bytes(model, metadata, dtypes)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    stored, meta, aliases = _read(target)
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    return SafetensorsExportResult(path=str(target), tensors=len(stored), file_bytes=target.stat().st_size,
                                   aliases=aliases, metadata=meta)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict[str, str]]:
    """(stored tensors, metadata, aliases) of a safetensors file; BadInput when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise BadInput(f"weights file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for corrupt headers
        raise BadInput(f"cannot read {path} as safetensors: {first_line(e)}") from None
    try:
        aliases = json.loads(meta.get(ALIASES_KEY, "{}"))
        if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
            raise ValueError
    except ValueError:
        raise BadInput(f"{path} has corrupt {ALIASES_KEY!r} metadata") from None
    if bad := [a for a, k in aliases.items() if k not in stored]:
        raise BadInput(f"{path}: aliases point at missing tensors: {bad[:5]}")
    meta.pop(ALIASES_KEY, None)
    return stored, meta, aliases


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every key (aliases included, sharing their stored tensor) and the metadata of a safetensors file."""
    stored, meta, aliases = _read(Path(path))
    return {**stored, **{alias: stored[key] for alias, key in aliases.items()}}, meta


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike,
              aliases: Mapping[str, str] | None = None) -> list[str]:
    """Strict load with a readable error (first few missing / unexpected / mismatched keys); keys in
    ``aliases`` are re-tied to their stored key's Parameter. Returns the re-tied names."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
        if items:
            problems.append(f"{label} ({len(items)}): " + ", ".join(items[:3]) + (" …" if len(items) > 3 else ""))
    if problems:
        raise BadInput(
            f"weights in {source} do not fit the architecture: " + "; ".join(problems),
            hint="check --arch and --arch-kwargs (e.g. num_classes)",
        )
    retied = _retie(model, dict(aliases or {}))
    sd = OrderedDict(state_dict)
    # module versions that some layers' _load_from_state_dict read (MNASNet refuses None): as torch saved them
    # with the weights, else (safetensors, a plain dict) the versions of the model being filled, which is what
    # wrote every file explainfix writes
    versions = getattr(state_dict, "_metadata", None)
    sd._metadata = versions if versions is not None else getattr(own, "_metadata", None)  # type: ignore[attr-defined]
    model.load_state_dict(sd, strict=True)
    return retied


def load_safetensors_into(model: nn.Module, path: str | os.PathLike) -> SafetensorsLoadResult:
    """Load a file written by :func:`export_safetensors` into ``model``: every key must match (names
    and shapes, else :class:`BadInput` listing the first few), and aliased weights are re-tied so the
    model shares one Parameter again.

        load_safetensors_into(torchvision.models.resnet18(num_classes=10), "out/model.safetensors")
    """
    stored, _, aliases = _read(Path(path))
    full = {**stored, **{alias: stored[key] for alias, key in aliases.items()}}
    retied = load_into(model, full, path, aliases)
    return SafetensorsLoadResult(tensors=len(stored), aliases=aliases, retied=retied)


def _retie(model: nn.Module, aliases: dict[str, str]) -> list[str]:
    """Point each alias at its key's Parameter (or buffer) object; returns the names re-tied."""
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    retied = []
    for alias, key in aliases.items():
        for table, slot in ((params, "_parameters"), (buffers, "_buffers")):
            if alias in table and key in table and table[alias] is not table[key]:
                owner, _, attr = alias.rpartition(".")
                getattr(model.get_submodule(owner), slot)[attr] = table[key]
                retied.append(alias)
    return retied
