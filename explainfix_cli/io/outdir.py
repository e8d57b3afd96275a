"""Output directories: refuse to overwrite without ``--force``, and write every file atomically."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..core import dist
from ..core.errors import BadInput


def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        if out.is_dir() and any(out.iterdir()):
            raise BadInput(f"output {out} exists", hint="pass --force to overwrite it, or choose another -o")
        if not out.is_dir():
            raise BadInput(f"output {out} exists and is not a directory", hint="-o is always a directory")


def write_output_dir(out: Path, files: dict[str, bytes | str | dict], force: bool = False) -> Path:
    """Write ``files`` into ``out`` atomically: build a sibling temp dir, then rename it into place. Under
    torchrun only rank 0 writes (every rank computed the same model), between two barriers: every rank has
    checked OUT before it is created, and none goes on before it exists."""
    out = Path(out)
    dist.barrier()
    if dist.is_main():
        _write(out, files, force)
    dist.barrier()
    return out


def _write(out: Path, files: dict[str, bytes | str | dict], force: bool) -> Path:
    check_output_dir(out, force)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any mkdir
    except OSError as e:
        raise BadInput(f"cannot write to {parent}: {e.strerror}") from None
    try:
        for name, content in files.items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, dict):
                target.write_text(json.dumps(content, indent=2, default=_json_default) + "\n")
            elif isinstance(content, str):
                target.write_text(content)
            else:
                target.write_bytes(content)
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, backup / "old")
            os.replace(tmp, out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (Path,)):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def default_out(model_path: Path, suffix: str) -> Path:
    """``<model-stem>-<suffix>/`` in the current directory (the stem of an explainfix dir is its name)."""
    stem = model_path.name if model_path.is_dir() else model_path.stem
    if model_path.suffix == ".safetensors" and model_path.name == "model.safetensors":
        stem = model_path.parent.name
    return Path(f"{stem}-{suffix}")
