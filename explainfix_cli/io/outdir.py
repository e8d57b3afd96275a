"""Output directories (docs/CLI.md, "Outputs"): what ``-o`` may name, and how it is written.

* ``-o`` is always a directory: an existing *file* is refused, ``--force`` or not;
* ``-o`` may not be, contain or lie inside an input (the model, its directory, the data);
* an existing non-empty ``-o`` needs ``--force``, and ``--force`` replaces only an explainfix output (a
  directory holding nothing but names explainfix writes): never a user's own files;
* everything is built in a staging directory next to ``-o`` (``.NAME.explainfix-tmp.HOST.PID.RANDOM``),
  checked (``check``: a model directory is loaded back first), then renamed into place while the parent
  directory is locked, so a run without ``--force`` never replaces an output that appeared meanwhile;
* staging directories whose process is gone (``kill -9``) are removed by the next run writing beside them;
* a full disk is one line naming the file (``no space left on device writing PATH``), exit 2.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..core import dist
from ..core.errors import BadInput

STAGING = ".explainfix-tmp."
#: the names explainfix writes at the top of an output directory (``--force`` replaces only such a directory)
OUTPUT_NAMES = frozenset({
    "explainfix.json", "model.safetensors", "model.onnx", "model.onnx.data", "model.int8.onnx", "report.json", "summary.md",
    "spectra.json", "spectra.png", "sweep.json", "sweep.md", "tradeoff.png", "arch", "points",
})
FORCE_HINT = "pass --force to replace it (only an explainfix output is ever replaced), or choose another -o"


def check_output_dir(out: Path, force: bool, inputs: Iterable[Path | str | None] = ()) -> None:
    """May ``out`` be written (now, and again just before the rename)? Raises BadInput (exit 2) if not."""
    out = Path(out)
    target = out.resolve()
    if target == Path.cwd().resolve() or target in Path.cwd().resolve().parents:
        raise BadInput(f"-o {out} is the current directory or one above it; explainfix writes a directory of its own",
                       hint="give -o a new name, e.g. -o out/pruned")
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if target == src or src in target.parents or target in src.parents:
            how = "is" if target == src else ("lies inside" if src in target.parents else "contains")
            raise BadInput(f"-o {out} {how} an input ({given}); explainfix never writes over or into what it reads",
                           hint="choose an -o outside the model and the data")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        what = "a symbolic link" if out.is_symlink() else "not a directory"
        raise BadInput(f"output {out} exists and is {what}; it is never replaced, --force or not",
                       hint="-o is always a directory: choose another name")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise BadInput(f"output {out} exists", hint=FORCE_HINT)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_NAMES and STAGING not in p.name)
        if foreign:
            raise BadInput(f"output {out} holds files explainfix did not write ({', '.join(foreign[:3])}"
                           f"{', …' if len(foreign) > 3 else ''}); --force replaces only an explainfix output",
                           hint="choose another -o, or empty that directory yourself")


def write_output_dir(out: Path, files: dict[str, bytes | str | dict], force: bool = False,
                     check: Callable[[Path], Any] | None = None) -> Path:
    """Write ``files`` into ``out`` atomically: build a staging directory beside it, run ``check`` on it,
    then rename it into place. Under torchrun only rank 0 writes (every rank computed the same model),
    between two barriers: every rank has checked OUT before it is created, and none goes on before it exists."""
    out = Path(out)
    dist.barrier()
    if dist.is_main():
        check_output_dir(out, force)
        with staging(out) as tmp:
            for name, content in files.items():
                write_file(tmp / name, content, shown=out / name)
            if check is not None:
                check(tmp)
            publish(tmp, out, force)
    dist.barrier()
    return out


def write_file(target: Path, content: bytes | str | dict, shown: Path | None = None) -> None:
    """One file (JSON for a dict); a full disk or a refused write is one BadInput line naming ``shown``."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            content = json.dumps(content, indent=2, default=_json_default) + "\n"
        if isinstance(content, str):
            content = content.encode()
        with open(target, "wb") as f:
            f.write(content)
    except OSError as e:
        raise disk_error(e, shown or target) from None


def disk_error(e: OSError, path: Path | str | None = None) -> BadInput:
    """An OSError met while writing, as the one line the user needs."""
    where = shown_path(path or e.filename or "the output")
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return BadInput(f"no space left on device writing {where}", hint="free some space or choose another -o; nothing was written")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BadInput(f"cannot write to {where}: {e.strerror}", hint="choose an -o you can write to; nothing was written")
    if e.errno == errno.ENOTDIR:
        return BadInput(f"cannot write to {where}: a part of that path is a file", hint="-o is always a directory")
    return BadInput(f"cannot write {where}: {e.strerror or e}", hint="nothing was written")


def shown_path(path: Path | str) -> str:
    """``path`` as the user will know it: a staging directory's name replaced by the output it becomes."""
    parts = []
    for part in Path(path).parts:
        if part.startswith(".") and STAGING in part:
            part = part[1:].split(STAGING, 1)[0]
        parts.append(part)
    return str(Path(*parts)) if parts else str(path)


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A fresh staging directory next to ``out`` (created with any missing parents); removed on exit, and
    the parents it created are removed too when the block fails."""
    parent = Path(out).resolve().parent
    created = _make_parents(parent, out)
    try:
        remove_dead_staging(parent)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}{STAGING}{_owner()}.", dir=parent))
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the result should look like any mkdir
        except OSError as e:
            raise disk_error(e, parent) from None
    except BaseException:
        _remove_created(created)
        raise
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename ``tmp`` to ``out`` with the parent directory locked: the check is repeated under the lock,
    so a run without ``--force`` never replaces an output another run finished meanwhile."""
    parent = Path(out).resolve().parent
    with locked(parent):
        check_output_dir(out, force)
        try:
            if out.is_dir() and any(out.iterdir()):  # --force: swap, then remove the old output
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}{STAGING}{_owner()}.", dir=parent))
                os.replace(out, old / "old")
                try:
                    os.replace(tmp, out)
                except BaseException:
                    os.replace(old / "old", out)  # the old output back where it was
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)  # replaces an empty directory, or creates OUT
        except OSError as e:  # a mount point (EBUSY), another filesystem (EXDEV), a full or read-only disk
            raise disk_error(e, out) from None


def remove_dead_staging(parent: Path) -> None:
    """Staging directories next to ``-o`` left by a run of this host that no longer exists (``kill -9``)."""
    host = socket.gethostname()
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for p in entries:
        if STAGING not in p.name or not p.name.startswith("."):
            continue
        parts = p.name.split(STAGING, 1)[1].split(".")
        if len(parts) < 3 or parts[0] != _host_tag(host) or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)


def _owner() -> str:
    return f"{_host_tag(socket.gethostname())}.{os.getpid()}"


def _host_tag(host: str) -> str:
    return "".join(c for c in host if c.isalnum() or c == "-")[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the directory itself (no lock file to leave behind; released if the process dies)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _make_parents(parent: Path, out: Path) -> list[Path]:
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            _remove_created(missing[missing.index(d) + 1:])
            raise disk_error(e, out) from None
    return missing  # deepest first


def _remove_created(created: list[Path]) -> None:
    for d in created:  # deepest first; only while still empty
        try:
            d.rmdir()
        except OSError:
            return


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
    if model_path.exists():
        model_path = model_path.resolve()  # "." or a bare model.safetensors still name their folder
    stem = model_path.name if model_path.is_dir() else model_path.stem
    if not model_path.exists() and ":" in model_path.name:  # a library's pretrained model: torchvision:resnet18
        stem = model_path.name.replace(":", "-")
    if model_path.suffix == ".safetensors" and model_path.name == "model.safetensors":
        stem = model_path.parent.name
    return Path(f"{stem}-{suffix}")
