"""The recipe's schema: every field of ``explainfix.json`` is checked before anything uses it.

A recipe read from disk may come from anyone (docs/CLI.md, "Sharing results safely"): wrong types, huge
values, unknown ops or attribute paths that leave the model are one :class:`BadInput` line (exit 2), never
a traceback and never partial execution. :func:`validate_recipe` only looks at the JSON; whether an edit's
indices fit the rebuilt model is checked when the edit is replayed (``model_dir.replay_edits``).
"""
from __future__ import annotations

import math
import re
from typing import Any

from ..core.errors import BadInput

MAX_CHANNELS = 1 << 16       # indices and channel counts
MAX_SIDE = 16384             # input size: one side
MAX_INPUT_ELEMENTS = 1 << 26  # input size: channels × H × W of one sample (256 MiB in float32)
MAX_ITEMS = 1 << 20          # list lengths
MAX_DEPTH = 6                # nesting of arch kwargs
SHA256 = re.compile(r"[0-9a-f]{64}")
# model.get_submodule / named_parameters paths: torch allows any non-empty name without "." (RegNet's
# "block1-0", ModuleDict keys with spaces…); names are only ever looked up in the model, never used as
# file paths. Control characters (C0, C1, line separators) are refused so that every message stays one line.
_NAME = r"[^.\x00-\x1f\x7f-\x9f\u2028\u2029]+"
MODULE_PATH = re.compile(rf"{_NAME}(\.{_NAME})*")
PY_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
ARCH_FILE = re.compile(r"arch/[A-Za-z0-9_][A-Za-z0-9_.-]*\.py")
EDIT_OPS = {"prune", "fix", "finetune", "bn-recalibrate"}
PRUNE_KEYS = {"out", "in", "channels", "in_block", "add_bias"}
SCHEMA_VERSION = 2           # io/recipe.py: 1 = recipes written before the field existed
TOP_LEVEL = {"format", "schema", "arch", "source", "preprocessing", "edits", "frozen", "provenance", "versions", "integrity"}


class _Bad(Exception):
    pass


def _need(ok: bool, where: str, what: str) -> None:
    if not ok:
        raise _Bad(f"{where}: {what}")


def _dict(v: Any, where: str) -> dict:
    _need(isinstance(v, dict), where, f"expected an object, got {type(v).__name__}")
    return v


def _str(v: Any, where: str, pattern: re.Pattern | None = None, limit: int = 4096) -> str:
    _need(isinstance(v, str) and len(v) <= limit, where, f"expected a string (≤ {limit} chars)")
    if pattern is not None:
        _need(pattern.fullmatch(v) is not None, where, f"{v[:60]!r} is not allowed here")
    return v


def _int(v: Any, where: str, lo: int, hi: int) -> int:
    _need(isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi, where, f"expected an integer in [{lo}, {hi}]")
    return v


def _num(v: Any, where: str) -> float:
    _need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and abs(v) < 1e6, where,
          "expected a finite number")
    return float(v)


def _list(v: Any, where: str, limit: int = MAX_ITEMS) -> list:
    _need(isinstance(v, list) and len(v) <= limit, where, f"expected a list (≤ {limit} items)")
    return v


def _module_path(v: Any, where: str) -> str:
    """A module or parameter path as torch names them (see MODULE_PATH); dunder names (``__class__``) are
    Python internals, never modules."""
    _str(v, where, limit=500)
    _need(MODULE_PATH.fullmatch(v) is not None, where,
          f"{v[:60]!r} is not a module path (names joined by '.', none empty, no control characters)")
    _need(not any(part.startswith("__") and part.endswith("__") for part in v.split(".")), where,
          "dunder attributes are not module paths")
    return v


def _json_value(v: Any, where: str, depth: int = 0) -> None:
    _need(depth <= MAX_DEPTH, where, "nested too deeply")
    if v is None or isinstance(v, (bool, str)):
        _need(not isinstance(v, str) or len(v) <= 4096, where, "string too long")
    elif isinstance(v, (int, float)):
        _need(math.isfinite(v) and abs(v) <= 2**53, where, "number out of range")
    elif isinstance(v, list):
        _need(len(v) <= 4096, where, "list too long")
        for i, x in enumerate(v):
            _json_value(x, f"{where}[{i}]", depth + 1)
    elif isinstance(v, dict):
        _need(len(v) <= 256, where, "too many keys")
        for k, x in v.items():
            _str(k, where, limit=200)
            _json_value(x, f"{where}.{k}", depth + 1)
    else:
        raise _Bad(f"{where}: not a JSON value")


def _arch(a: Any) -> None:
    a = _dict(a, "arch")
    kind = a.get("kind")
    _need(kind in ("import", "file", "pickle"), "arch.kind", f"expected import, file or pickle, got {kind!r}")
    allowed = {"import": {"kind", "module", "name", "kwargs"},
               "file": {"kind", "path", "name", "kwargs", "sha256"},
               "pickle": {"kind", "path", "sha256"}}[kind]
    _need(set(a) <= allowed, "arch", f"unknown keys {sorted(set(a) - allowed)}")
    if kind == "import":
        _str(a.get("module"), "arch.module", PY_MODULE, 200)
    if kind in ("import", "file"):
        _str(a.get("name"), "arch.name", re.compile(r"[A-Za-z_][A-Za-z0-9_]*"), 200)
        _dict(a.get("kwargs", {}), "arch.kwargs")
        _json_value(a.get("kwargs", {}), "arch.kwargs")
    if kind == "file":
        _str(a.get("path"), "arch.path", ARCH_FILE, 300)
    if kind == "pickle":
        _str(a.get("path"), "arch.path")
    if kind != "import":
        _str(a.get("sha256"), "arch.sha256", SHA256)


def _preprocessing(p: Any) -> None:
    if p is None:
        return
    p = _dict(p, "preprocessing")
    keys = {"input_size", "mean", "std", "channels", "resize", "sample_shape"}
    _need(set(p) <= keys, "preprocessing", f"unknown keys {sorted(set(p) - keys)}")
    for key in ("input_size", "channels", "mean", "std"):
        _need(key in p, "preprocessing", f"missing {key!r}")
    size = _list(p["input_size"], "preprocessing.input_size", 3)
    _need(len(size) == 2, "preprocessing.input_size", "expected [H, W]")
    for i, s in enumerate(size):
        _int(s, f"preprocessing.input_size[{i}]", 1, MAX_SIDE)
    channels = _int(p["channels"], "preprocessing.channels", 1, 4096)
    _need(channels * size[0] * size[1] <= MAX_INPUT_ELEMENTS, "preprocessing",
          f"an input of {channels}×{size[0]}×{size[1]} is over {MAX_INPUT_ELEMENTS} values (channels × H × W)")
    for key in ("mean", "std"):
        values = _list(p[key], f"preprocessing.{key}", 4096)
        _need(len(values) in (1, channels), f"preprocessing.{key}", f"expected 1 or {channels} values")
        for i, x in enumerate(values):
            _num(x, f"preprocessing.{key}[{i}]")
    _need(all(x > 0 for x in p["std"]), "preprocessing.std", "every std must be > 0")
    if "resize" in p:
        _str(p["resize"], "preprocessing.resize", re.compile(r"[a-z]{1,20}"))
    if "sample_shape" in p:  # one non-image input's shape (io/data.py Preprocessing.sample_shape)
        dims = _list(p["sample_shape"], "preprocessing.sample_shape", 5)
        _need(len(dims) >= 1, "preprocessing.sample_shape", "expected 1 to 5 sizes")
        for i, s in enumerate(dims):
            _int(s, f"preprocessing.sample_shape[{i}]", 1, MAX_INPUT_ELEMENTS)
        _need(math.prod(dims) <= MAX_INPUT_ELEMENTS, "preprocessing.sample_shape",
              f"an input of {'×'.join(map(str, dims))} is over {MAX_INPUT_ELEMENTS} values")


def _indices(v: Any, where: str) -> None:
    for i, x in enumerate(_list(v, where, MAX_CHANNELS)):
        _int(x, f"{where}[{i}]", 0, MAX_CHANNELS)


def _edit(e: Any, i: int) -> None:
    where = f"edits[{i}]"
    e = _dict(e, where)
    op = e.get("op")
    _need(isinstance(op, str) and op in EDIT_OPS, f"{where}.op", f"expected one of {sorted(EDIT_OPS)}, got {str(op)[:40]!r}")
    if op != "prune":
        _json_value(e, where)  # value-only edits: informational, never replayed
        return
    modules = _dict(e.get("modules"), f"{where}.modules")
    _need(len(modules) <= 100_000, f"{where}.modules", "too many modules")
    for path, m in modules.items():
        w = f"{where}.modules[{path[:60]!r}]"
        _module_path(path, w)
        m = _dict(m, w)
        _need(set(m) <= PRUNE_KEYS, w, f"unknown keys {sorted(set(m) - PRUNE_KEYS)}")
        for key in ("out", "in", "channels"):
            if key in m:
                _indices(m[key], f"{w}.{key}")
        if "in_block" in m:
            _int(m["in_block"], f"{w}.in_block", 1, MAX_CHANNELS)
        if "add_bias" in m:
            _need(isinstance(m["add_bias"], bool), f"{w}.add_bias", "expected true or false")


def validate_recipe(recipe: Any, where: str) -> dict:
    """``recipe`` as read from ``where``, checked field by field; raises BadInput (exit 2) naming the field."""
    try:
        r = _dict(recipe, "recipe")
        schema = r.get("schema", 1)
        _need(isinstance(schema, int) and not isinstance(schema, bool) and schema >= 1, "schema", "expected an integer ≥ 1")
        if schema > SCHEMA_VERSION:
            raise BadInput(f"{where} has recipe schema {schema}; this explainfix reads schemas 1 to {SCHEMA_VERSION}",
                           hint="upgrade explainfix to read it")
        unknown = set(r) - TOP_LEVEL
        _need(not unknown, "recipe", f"unknown fields {sorted(unknown)[:5]} (written by a newer explainfix?)")
        for key in ("format", "arch", "edits"):
            _need(key in r, "recipe", f"missing field {key!r}")
        _arch(r["arch"])
        for i, e in enumerate(_list(r["edits"], "edits", 10_000)):
            _edit(e, i)
        _preprocessing(r.get("preprocessing"))
        if r.get("source") is not None:
            src = _dict(r["source"], "source")
            _need(set(src) <= {"path", "sha256", "format"}, "source", f"unknown keys {sorted(set(src) - {'path', 'sha256', 'format'})}")
            for key in src:
                _str(src[key], f"source.{key}", SHA256 if key == "sha256" else None, 4096)
        for i, name in enumerate(_list(r.get("frozen", []), "frozen")):
            _module_path(name, f"frozen[{i}]")
        for i, p in enumerate(_list(r.get("provenance", []), "provenance", 10_000)):
            _json_value(_dict(p, f"provenance[{i}]"), f"provenance[{i}]")
        for k, v in _dict(r.get("versions", {}), "versions").items():
            _str(v, f"versions.{k}", limit=200)
        for k, v in _dict(r.get("integrity", {}), "integrity").items():
            _need(k == "model.safetensors" or ARCH_FILE.fullmatch(k) is not None, "integrity", f"unexpected file {k[:60]!r}")
            _str(v, f"integrity[{k!r}]", SHA256)
    except _Bad as e:
        raise BadInput(f"{where} is not a valid explainfix recipe: {e}",
                       hint="the directory was changed or damaged; rebuild it from the original checkpoint") from None
    return recipe
