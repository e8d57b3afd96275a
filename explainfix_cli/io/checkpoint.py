"""``MODEL`` arguments → (nn.Module, recipe): checkpoint formats, wrappers and the pickle rule.

Accepted ``MODEL`` inputs (docs/CLI.md, "Loading a model"):

1. an explainfix directory (``model.safetensors`` + ``explainfix.json``) or that ``.safetensors`` file;
2. weights (``.safetensors`` or a ``.pt/.pth/.bin`` state_dict, also wrapped in ``{"state_dict": …}``,
   ``{"model": …}``, ``{"model_state_dict": …}``, with ``module.`` prefixes) plus ``--arch``;
3. a pickled ``nn.Module``: refused unless ``trust_pickle=True`` (unpickling runs code);
4. a ``save_pretrained`` directory (``config.json`` + weights, timm or segmentation-models-pytorch), io/pretrained.py;
5. TorchScript / ``torch.export`` archives: recognised and refused by name.

State dicts are always read with ``torch.load(weights_only=True)``: no code runs.
"""
from __future__ import annotations

import argparse
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import BadInput
from .arch import arch_spec, build_arch, sha256_file
from .codec import load_into, read_safetensors, source_dtypes
from .hub import cached_weights, library_model
from .model_dir import LoadedModel, load_explainfix_dir, module_of
from .pretrained import CONFIG_NAME, pretrained_spec, pretrained_weights, read_config
from .recipe import RECIPE_NAME, Recipe

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
SAFE_ARCH_HINT = "save the weights with torch.save(model.state_dict(), 'model.pt') and pass --arch MODULE:CALLABLE"


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


EMA_KEYS = ("state_dict_ema", "model_ema", "ema")  # timm train.py and friends; preferred when present
STRIP_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")  # DDP, torch.compile, Lightning, wrappers


def unwrap_state_dict(obj: Any, notes: list[str] | None = None) -> dict[str, torch.Tensor] | None:
    """A flat {name: tensor} from the usual checkpoint wrappers (EMA weights preferred, said in ``notes``),
    ``module.``/``_orig_mod.`` stripped; the state dict's ``_metadata`` (module versions some layers
    read on load, e.g. torchvision MNASNet) is kept."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, dict):
            ema = next((k for k in EMA_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
            if ema is not None and notes is not None:
                notes.append(f"using the EMA weights ({ema}) of the checkpoint")
            key = ema or next((k for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if key is None:
                return None
            obj = obj[key]
        else:
            return None
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        return None
    sd = with_metadata(dict(obj), getattr(obj, "_metadata", None))
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = strip_prefix(sd, prefix)
    return sd


def with_metadata(sd: dict, metadata: Any) -> dict:
    out = OrderedDict(sd)
    if metadata is not None:
        out._metadata = metadata  # type: ignore[attr-defined]
    return out


def strip_prefix(sd: dict, prefix: str) -> dict:
    meta = getattr(sd, "_metadata", None)
    if meta is not None:
        meta = OrderedDict((k[len(prefix):] if k.startswith(prefix) else ("" if k == prefix.rstrip(".") else k), v)
                           for k, v in meta.items())
    return with_metadata({k[len(prefix):]: v for k, v in sd.items()}, meta)


def fit_prefix(sd: dict, model: nn.Module) -> dict:
    """``sd`` with a common wrapper prefix (``model.``, ``net.`` …) removed when the keys then fit the
    model exactly; else ``sd`` unchanged (the loader's own error names the mismatch)."""
    own = set(model.state_dict())
    if set(sd) == own:
        return sd
    for prefix in STRIP_PREFIXES:
        if all(k.startswith(prefix) for k in sd) and {k[len(prefix):] for k in sd} == own:
            return strip_prefix(sd, prefix)
    return sd


def load_model(
    path: str | Path,
    arch: str | None = None,
    arch_kwargs: dict | None = None,
    trust_pickle: bool = False,
    purpose: str = "restructure",
    trust_code: bool = False,
) -> LoadedModel:
    """Open ``MODEL`` as the contract describes. ``purpose`` only words the TorchScript refusal.
    An explainfix directory runs no code it names unless ``trust_code`` (io/trust.py); ``arch`` given
    with a directory replaces the recipe's architecture (the user's own code)."""
    path = Path(path)
    if not path.exists() and (named := library_model(str(path))) is not None:
        return _load_library_pretrained(*named, arch, arch_kwargs)
    if not path.exists():
        raise BadInput(f"model {path} does not exist")
    if path.is_dir() and not (path / RECIPE_NAME).is_file() and (weights := pretrained_weights(path)) is not None:
        return _load_pretrained_dir(path, weights, arch, arch_kwargs, trust_code)
    if path.is_dir() or (path.suffix == ".safetensors" and (path.parent / RECIPE_NAME).is_file() and arch is None):
        directory = path if path.is_dir() else path.parent
        own = arch_spec(arch, arch_kwargs or {}) if arch is not None else None
        return load_explainfix_dir(directory, trust_pickle=trust_pickle, trust_code=trust_code, arch=own)
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
            with torch.serialization.safe_globals([argparse.Namespace]):  # timm train.py's args: plain data
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError for disallowed globals; RuntimeError/EOFError for corrupt files
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text or "GLOBAL" in text:
            if not trust_pickle:
                raise BadInput(
                    f"{path} holds a pickled object, and unpickling it would run code from the file; refused",
                    hint=f"if you trust the file pass --trust-pickle; the safe way: {SAFE_ARCH_HINT}",
                ) from None
            return _load_pickled_module(path, sha, arch, arch_kwargs)
        raise BadInput(f"cannot read {path} as a torch checkpoint: {text.splitlines()[0] if text else type(e).__name__}") from None
    notes: list[str] = []
    state_dict = unwrap_state_dict(obj, notes)
    if state_dict is None:
        raise BadInput(f"{path} holds no state_dict (a {type(obj).__name__} without a tensor dict)", hint=SAFE_ARCH_HINT)
    loaded = _with_arch(path, sha, "state_dict", state_dict, arch, arch_kwargs)
    loaded.notes.extend(notes)
    return loaded


def _with_arch(path: Path, sha: str, fmt: str, state_dict: dict, arch: str | None, arch_kwargs: dict | None) -> LoadedModel:
    if arch is None:
        raise BadInput(f"{path} holds weights only; explainfix needs the architecture", hint="pass --arch MODULE:CALLABLE, e.g. --arch torchvision.models:resnet18")
    return _built(arch_spec(arch, arch_kwargs or {}), state_dict, path, sha, fmt)


def _built(spec: dict, state_dict: dict, path: Path, sha: str, fmt: str, *, trusted: bool = True,
           preprocessing: dict | None = None, notes: list[str] | None = None) -> LoadedModel:
    """The architecture of ``spec`` with ``state_dict`` loaded (a wrapper prefix stripped when the keys fit)."""
    model = build_arch(spec, trusted=trusted)
    load_into(model, fit_prefix(state_dict, model), path)
    recipe = replace(Recipe.new(spec, path, sha, fmt), preprocessing=preprocessing)
    return LoadedModel(model.eval(), recipe, path, sha, fmt, list(notes or []), source_dtypes(state_dict))


def read_weights(path: Path, named: str) -> dict[str, torch.Tensor]:
    """The state dict of a weights file: safetensors, or a torch.save state dict (``weights_only``, the usual
    wrappers unwrapped). ``named`` says in errors which file it is (``--teacher``, …)."""
    if sniff_format(path) == "safetensors":
        return read_safetensors(path)[0]
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling refused or a damaged file
        raise BadInput(f"cannot read {named} {path} as a state_dict: {type(e).__name__}") from None
    state_dict = unwrap_state_dict(obj)
    if state_dict is None:
        raise BadInput(f"{named} {path} holds no state_dict")
    return state_dict


def _load_pretrained_dir(directory: Path, weights: Path, arch: str | None, arch_kwargs: dict | None,
                         trust_code: bool) -> LoadedModel:
    """A save_pretrained directory (io/pretrained.py): its config.json builds the model, unless ``arch``."""
    if arch is not None:
        spec, pre, notes = arch_spec(arch, arch_kwargs or {}), None, []
    else:
        spec, pre, lib = pretrained_spec(read_config(directory), directory)
        notes = [f"architecture from {directory / CONFIG_NAME} ({lib}: {spec['kwargs'].get('model_name', spec['name'])})"]
    return _built(spec, read_weights(weights, "the weights"), weights, sha256_file(weights), "pretrained",
                  trusted=trust_code or arch is not None, preprocessing=pre, notes=notes)


def _load_library_pretrained(library: str, name: str, arch: str | None, arch_kwargs: dict | None) -> LoadedModel:
    """``MODEL`` = ``torchvision:NAME`` / ``timm:NAME``: that library's pretrained weights from its own cache
    (io/hub.py; never downloaded), built as ``--arch library:NAME``."""
    if arch is not None and arch != f"{library}:{name}":
        raise BadInput(f"MODEL {library}:{name} is that library's pretrained model; --arch {arch} names another",
                       hint=f"leave out --arch, or pass a weights file with --arch {arch}")
    weights, pre = cached_weights(library, name)
    notes = [f"pretrained weights of {library}:{name} from {library}'s cache: {weights}"]
    return _built(arch_spec(f"{library}:{name}", arch_kwargs or {}), read_weights(weights, "the pretrained weights"),
                  weights, sha256_file(weights), "pretrained", preprocessing=pre, notes=notes)


def _load_pickled_module(path: Path, sha: str, arch: str | None, arch_kwargs: dict | None = None) -> LoadedModel:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise BadInput(f"cannot unpickle {path}: {type(e).__name__}: {e}") from None
    module, key = module_of(obj)
    if module is None:
        sd = unwrap_state_dict(obj)
        if sd is not None:
            return _with_arch(path, sha, "state_dict", sd, arch, arch_kwargs)
        raise BadInput(f"{path} unpickled to a {type(obj).__name__}, not an nn.Module")
    notes = [f"using the module under {key!r} of the checkpoint"] if key else []
    dtypes = source_dtypes(module.state_dict())
    spec = {"kind": "pickle", "path": str(path.resolve()), "sha256": sha}
    return LoadedModel(module.float().eval(), Recipe.new(spec, path, sha, "pickle"), path, sha, "pickle", notes, dtypes)


# ------------------------------------------------------------------------------- explainfix dirs


def load_original(recipe: Recipe, path: str | Path | None = None, trust_pickle: bool = False) -> nn.Module:
    """The model a recipe was made from (the teacher for distillation): the recipe's architecture before
    any edit, with the weights of ``path`` or else of the recipe's source file (whose sha256 must still
    match). An explainfix directory as ``path`` is loaded as itself. The recipe's architecture was
    already allowed when its directory was opened."""
    from .model_dir import rebuild

    src = recipe.source or {}
    p = Path(path) if path is not None else Path(src.get("path", ""))
    named = "--teacher" if path is not None else "the recipe's source (the model before pruning)"
    if not p.exists() or not str(p):
        raise BadInput(f"{named} {p} does not exist", hint="pass --teacher PATH (the original model)")
    if p.is_dir():
        return load_explainfix_dir(p, trust_pickle=trust_pickle, trust_code=True).model
    if path is None and sha256_file(p) != src.get("sha256"):
        raise BadInput(f"{named} {p} changed since the recipe was written", hint="pass --teacher PATH (the original model)")
    if recipe.arch["kind"] == "pickle":
        return rebuild(recipe.original(), trust_pickle=trust_pickle).eval()
    model = rebuild(recipe.original(), trust_code=True)
    load_into(model, read_weights(p, named), p)
    return model.eval()
