"""Files → (nn.Module, recipe), and explainfix output directories.

Accepted ``MODEL`` inputs (../shared/CLI.md, "Loading a model"):

1. an explainfix directory (``model.safetensors`` + ``explainfix.json``) or that ``.safetensors`` file;
2. weights (``.safetensors`` or a ``.pt/.pth/.bin`` state_dict, also wrapped in ``{"state_dict": …}``,
   ``{"model": …}``, ``{"model_state_dict": …}``, with ``module.`` prefixes) plus ``--arch``;
3. a pickled ``nn.Module``: refused unless ``trust_pickle=True`` (unpickling runs code);
4. TorchScript / ``torch.export`` archives: recognised and refused by name.

State dicts are always read with ``torch.load(weights_only=True)``: no code runs.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import BadInput, CannotProcess

RECIPE_NAME = "explainfix.json"
WEIGHTS_NAME = "model.safetensors"
RECIPE_FORMAT = "explainfix/1"
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
SAFE_ARCH_HINT = "save the weights with torch.save(model.state_dict(), 'model.pt') and pass --arch MODULE:CALLABLE"


@dataclass
class LoadedModel:
    """A model ready to use, with the recipe that rebuilds it and where it came from."""

    model: nn.Module
    recipe: dict
    source: Path
    source_sha256: str
    source_format: str  # explainfix | safetensors | state_dict | pickle
    notes: list[str] = field(default_factory=list)

    @property
    def preprocessing(self) -> dict | None:
        return self.recipe.get("preprocessing")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict[str, str]:
    return {"explainfix": __version__, "torch": torch.__version__, "python": platform.python_version()}


# ---------------------------------------------------------------------------------------------- arch
def parse_arch_kwargs(text: str | None) -> dict:
    if not text:
        return {}
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadInput(f"--arch-kwargs is not valid JSON: {e.msg} at char {e.pos}", hint='e.g. --arch-kwargs \'{"num_classes": 10}\'') from None
    if not isinstance(kwargs, dict):
        raise BadInput("--arch-kwargs must be a JSON object", hint='e.g. --arch-kwargs \'{"num_classes": 10}\'')
    return kwargs


def arch_spec(arch: str, kwargs: dict) -> dict:
    """The recipe's record of an architecture: importable ``module:callable`` or ``file.py:Name``."""
    if ":" not in arch:
        raise BadInput(f"--arch {arch!r} must be MODULE:CALLABLE or path/to/file.py:ClassName", hint="e.g. --arch torchvision.models:resnet18")
    where, _, name = arch.rpartition(":")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise BadInput(f"architecture file {path} does not exist")
        return {"kind": "file", "path": str(path.resolve()), "name": name, "kwargs": kwargs, "sha256": sha256_file(path)}
    return {"kind": "import", "module": where, "name": name, "kwargs": kwargs}


def arch_label(spec: dict) -> str:
    if spec["kind"] == "file":
        return f"{spec['path']}:{spec['name']}"
    if spec["kind"] == "import":
        return f"{spec['module']}:{spec['name']}"
    return f"pickle:{spec.get('path')}"


def build_arch(spec: dict) -> nn.Module:
    """Instantiate an architecture from its recipe record (random init)."""
    kind = spec["kind"]
    if kind == "import":
        try:
            module = importlib.import_module(spec["module"])
        except ImportError as e:
            raise BadInput(f"cannot import {spec['module']}: {e}", hint="install the package that defines the architecture") from None
    elif kind == "file":
        path = Path(spec["path"])
        if not path.is_file():
            raise BadInput(f"architecture file {path} does not exist", hint="the recipe points to it; restore it or pass --arch")
        sha = sha256_file(path)
        if spec.get("sha256") and sha != spec["sha256"]:
            raise BadInput(f"architecture file {path} changed since the recipe was written (sha256 differs)",
                           hint="restore it, or start again from the original checkpoint with --arch")
        mod_name = f"_explainfix_arch_{hashlib.sha1(f'{path}:{sha}'.encode()).hexdigest()[:12]}"
        module = sys.modules.get(mod_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_name] = module
            try:
                loader_spec.loader.exec_module(module)
            except Exception as e:
                del sys.modules[mod_name]
                raise BadInput(f"cannot import {path}: {type(e).__name__}: {e}") from None
    else:
        raise BadInput(f"this recipe's architecture is a pickled module ({spec.get('path')}); reload it with --trust-pickle")
    factory = getattr(module, spec["name"], None)
    if not callable(factory):
        raise BadInput(f"{arch_label(spec)} is not a callable in that module")
    try:
        model = factory(**spec.get("kwargs", {}))
    except TypeError as e:
        raise BadInput(f"{arch_label(spec)}({json.dumps(spec.get('kwargs', {}))}) failed: {e}", hint="check --arch-kwargs") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"{arch_label(spec)} returned {type(model).__name__}, not an nn.Module")
    return model


# ------------------------------------------------------------------------------------ file formats
def sniff_format(path: Path) -> str:
    """torchscript | torch-export | torch-zip | safetensors | legacy-pickle | unknown (never unpickles)."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if zipfile.is_zipfile(path):
        try:
            names = zipfile.ZipFile(path).namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("/archive_format") or "/serialized_exported_program" in n or n.endswith("/models/model.json") for n in names):
            return "torch-export"
        if any("/code/__torch__" in n or n.endswith("/constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") for n in names):
            return "torch-zip"
        return "unknown"
    with open(path, "rb") as f:
        head = f.read(2)
    return "legacy-pickle" if head[:1] == b"\x80" else "unknown"


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A flat {name: tensor} from the usual checkpoint wrappers, ``module.``/``_orig_mod.`` stripped."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                return None
            obj = inner
        else:
            return None
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        return None
    sd = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


ALIASES_KEY = "explainfix.aliases"  # safetensors metadata: {alias name: stored name}


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise BadInput(f"cannot read {path} as safetensors: {e}") from None
    try:  # tied weights are stored once; the other names are listed as aliases (see export.py)
        aliases = json.loads(meta.get(ALIASES_KEY, "{}"))
        tensors.update({alias: tensors[key] for alias, key in aliases.items()})
    except (json.JSONDecodeError, KeyError, AttributeError):
        raise BadInput(f"{path} has corrupt 'explainfix.aliases' metadata") from None
    return tensors, meta


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: Path) -> None:
    """Strict load with a readable error: first few missing / unexpected / mismatched keys."""
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
    model.load_state_dict(state_dict, strict=True)


def _empty_recipe(spec: dict, source: Path, sha: str, fmt: str) -> dict:
    return {
        "format": RECIPE_FORMAT,
        "arch": spec,
        "source": {"path": str(source.resolve()), "sha256": sha, "format": fmt},
        "preprocessing": None,
        "edits": [],
        "frozen": [],
        "provenance": [],
        "versions": versions(),
    }


def load_model(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    trust_pickle: bool = False,
    purpose: str = "restructure",
) -> LoadedModel:
    """Open ``MODEL`` as the contract describes. ``purpose`` only words the TorchScript refusal."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"model {path} does not exist")
    if path.is_dir():
        return load_explainfix_dir(path, trust_pickle=trust_pickle)
    if path.suffix == ".safetensors" and (path.parent / RECIPE_NAME).is_file() and arch is None:
        return load_explainfix_dir(path.parent, trust_pickle=trust_pickle)
    try:
        fmt = sniff_format(path)
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None
    sha = sha256_file(path)
    if fmt in ("torchscript", "torch-export"):
        name = "a TorchScript archive" if fmt == "torchscript" else "a torch.export archive"
        raise BadInput(
            f"{path} is {name}: its graph is compiled, so explainfix cannot {purpose} it",
            hint="pass the eager model's weights instead: torch.save(model.state_dict(), 'model.pt') plus --arch",
        )
    if fmt == "safetensors":
        state_dict, _ = read_safetensors(path)
        return _with_arch(path, sha, "safetensors", state_dict, arch, arch_kwargs)
    if fmt not in ("torch-zip", "legacy-pickle"):
        raise BadInput(f"{path} is not a checkpoint explainfix can read (not safetensors, not a torch.save file)")
    if fmt == "torch-zip":  # torch.load does not check the zip CRCs: a damaged file would load silently
        try:
            with zipfile.ZipFile(path) as archive:
                damaged = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise BadInput(f"cannot read {path} as a torch checkpoint: {e}") from None
        if damaged is not None:
            raise BadInput(f"{path} is corrupt: the record {damaged} fails its CRC check", hint="re-download or re-save the checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol N": stderr stays the one error line
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for disallowed globals; RuntimeError/EOFError for corrupt files
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            if not trust_pickle:
                raise BadInput(
                    f"{path} holds a pickled object, and unpickling it would run code from the file; refused",
                    hint=f"if you trust the file pass --trust-pickle; the safe way: {SAFE_ARCH_HINT}",
                ) from None
            return _load_pickled_module(path, sha, arch)
        raise BadInput(f"cannot read {path} as a torch checkpoint: {text.splitlines()[0] if text else type(e).__name__}") from None
    state_dict = unwrap_state_dict(obj)
    if state_dict is None:
        raise BadInput(f"{path} holds no state_dict (a {type(obj).__name__} without a tensor dict)", hint=SAFE_ARCH_HINT)
    return _with_arch(path, sha, "state_dict", state_dict, arch, arch_kwargs)


def _with_arch(path: Path, sha: str, fmt: str, state_dict: dict, arch: str | None, arch_kwargs: dict | None) -> LoadedModel:
    if arch is None:
        raise BadInput(f"{path} holds weights only; explainfix needs the architecture", hint="pass --arch MODULE:CALLABLE, e.g. --arch torchvision.models:resnet18")
    spec = arch_spec(arch, arch_kwargs or {})
    model = build_arch(spec)
    load_into(model, state_dict, path)
    model.eval()
    return LoadedModel(model, _empty_recipe(spec, path, sha, fmt), path, sha, fmt)


def _load_pickled_module(path: Path, sha: str, arch: str | None) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise BadInput(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, nn.Module):
        sd = unwrap_state_dict(obj)
        if sd is not None:
            return _with_arch(path, sha, "state_dict", sd, arch, None)
        raise BadInput(f"{path} unpickled to a {type(obj).__name__}, not an nn.Module")
    spec = {"kind": "pickle", "path": str(path.resolve()), "sha256": sha}
    return LoadedModel(obj.eval(), _empty_recipe(spec, path, sha, "pickle"), path, sha, "pickle")


# ------------------------------------------------------------------------------- explainfix dirs
def read_recipe(directory: Path) -> dict:
    try:
        recipe = json.loads((directory / RECIPE_NAME).read_text())
    except FileNotFoundError:
        raise BadInput(f"{directory} is not an explainfix directory (no {RECIPE_NAME})", hint="pass a model file, or a directory written by explainfix") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"{directory / RECIPE_NAME} is not valid JSON: {e}") from None
    if not isinstance(recipe, dict) or recipe.get("format") != RECIPE_FORMAT:
        raise BadInput(f"{directory / RECIPE_NAME} is not an explainfix recipe (format {recipe.get('format') if isinstance(recipe, dict) else '?'})")
    arch = recipe.get("arch", {})
    if arch.get("kind") == "file" and not Path(arch["path"]).is_absolute():  # shipped inside the directory
        recipe["arch"] = {**arch, "path": str((directory / arch["path"]).resolve())}
    return recipe


def portable_recipe(recipe: dict) -> tuple[dict, dict[str, bytes]]:
    """The recipe to write into an output directory, plus the files to write beside it: an architecture
    given as ``file.py:Class`` travels as ``arch/file.py`` (path relative to the directory, sha256 kept),
    so the directory reloads on another machine."""
    arch = recipe.get("arch", {})
    if arch.get("kind") != "file":
        return recipe, {}
    src = Path(arch["path"])
    rel = f"arch/{src.name}"
    return {**recipe, "arch": {**arch, "path": rel}}, {rel: src.read_bytes()}


def rebuild(recipe: dict, trust_pickle: bool = False) -> nn.Module:
    """The architecture of a recipe with every structural edit applied (weights not loaded)."""
    from .surgery import apply_edit

    spec = recipe["arch"]
    if spec["kind"] == "pickle":
        if not trust_pickle:
            raise BadInput(
                f"this model was made from a pickled module ({spec['path']}); rebuilding it unpickles that file",
                hint="pass --trust-pickle if you trust it",
            )
        p = Path(spec["path"])
        if not p.is_file() or sha256_file(p) != spec["sha256"]:
            raise BadInput(f"the pickled source {p} is missing or changed since the recipe was written")
        model = torch.load(p, map_location="cpu", weights_only=False)
    else:
        model = build_arch(spec)
    for edit in recipe.get("edits", []):
        apply_edit(model, edit)
    return model


def load_explainfix_dir(directory: Path, trust_pickle: bool = False) -> LoadedModel:
    recipe = read_recipe(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise BadInput(f"{directory} has {RECIPE_NAME} but no {WEIGHTS_NAME}")
    model = rebuild(recipe, trust_pickle=trust_pickle)
    state_dict, _ = read_safetensors(weights)
    load_into(model, state_dict, weights)
    frozen = set(recipe.get("frozen", []))
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    model.eval()
    return LoadedModel(model, recipe, directory, sha256_file(weights), "explainfix")


def load(path: str | Path, trust_pickle: bool = False) -> nn.Module:
    """Rebuild the nn.Module saved in an explainfix directory (no pickle involved)."""
    path = Path(path)
    return load_explainfix_dir(path.parent if path.suffix == ".safetensors" else path, trust_pickle).model


# ------------------------------------------------------------------------------------------ saving
def check_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not force:
        if out.is_dir() and any(out.iterdir()):
            raise BadInput(f"output {out} exists", hint="pass --force to overwrite it, or choose another -o")
        if not out.is_dir():
            raise BadInput(f"output {out} exists and is not a directory", hint="-o is always a directory")


def write_output_dir(out: Path, files: dict[str, bytes | str | dict], force: bool = False) -> Path:
    """Write ``files`` into ``out`` atomically: build a sibling temp dir, then rename it into place."""
    out = Path(out)
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


def safetensors_bytes(model: nn.Module, metadata: dict[str, str]) -> bytes:
    """The model's state_dict as safetensors bytes with string metadata; a tensor shared by several
    names (tied weights) is stored once and the other names are recorded as aliases, the same format
    as :func:`export.export_safetensors` (and :func:`read_safetensors` restores them)."""
    from safetensors.torch import save

    tensors, aliases = dedupe_state_dict(model.state_dict())
    meta = {k: str(v) for k, v in metadata.items()}
    if aliases:
        meta[ALIASES_KEY] = json.dumps(aliases, sort_keys=True)
    try:
        return save(tensors, metadata=meta)
    except Exception as e:
        raise CannotProcess(f"cannot serialise the state_dict to safetensors: {e}") from None


def save_model_dir(
    model: nn.Module, recipe: dict, out: Path, extra: dict[str, bytes | str | dict] | None = None, force: bool = False
) -> Path:
    """Write ``model.safetensors`` + ``explainfix.json`` (+ extra files) into ``out``, atomically."""
    recipe, arch_files = portable_recipe({**recipe, "versions": versions()})
    meta = {"format": RECIPE_FORMAT, "explainfix": __version__, "arch": arch_label(recipe["arch"])}
    files: dict[str, bytes | str | dict] = {WEIGHTS_NAME: safetensors_bytes(model, meta), RECIPE_NAME: recipe}
    files.update(arch_files)
    files.update(extra or {})
    return write_output_dir(out, files, force=force)
