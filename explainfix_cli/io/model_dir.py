"""Explainfix output directories as models: rebuild one from its recipe and weights, or save one."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..core.errors import BadInput, ExplainFixError, InternalError, first_line
from ..core.model import call_model, output_tensors
from ..core.version import __version__
from .arch import arch_label, build_arch, sha256_file
from .codec import WeightDtypes, load_into, read_safetensors, safetensors_bytes, source_dtypes
from .edits import apply_edit
from .outdir import write_output_dir
from .recipe import RECIPE_FORMAT, RECIPE_NAME, WEIGHTS_NAME, Recipe, versions
from .trust import ALLOWED_MODULES, refuse_file_arch


@dataclass
class LoadedModel:
    """A model ready to use, with the recipe that rebuilds it and where it came from."""

    model: nn.Module
    recipe: Recipe
    source: Path
    source_sha256: str
    source_format: str  # explainfix | safetensors | state_dict | pickle | pretrained
    notes: list[str] = field(default_factory=list)
    dtypes: dict[str, str] = field(default_factory=dict)  # codec.source_dtypes: {} when all float32

    @property
    def preprocessing(self) -> dict | None:
        return self.recipe.preprocessing


def rebuild(recipe: Recipe, trust_pickle: bool = False, trust_code: bool = True) -> nn.Module:
    """The architecture of a recipe with every structural edit applied (weights not loaded).
    ``trust_code=False`` for a recipe read from a directory: see io/trust.py."""
    spec = recipe.arch
    if spec["kind"] == "pickle":
        if not trust_pickle:
            raise BadInput(
                f"this model was made from a pickled module ({spec['path']}); rebuilding it unpickles that file",
                hint="pass --trust-pickle if you trust it",
            )
        p = Path(spec["path"])
        if not p.is_file() or sha256_file(p) != spec["sha256"]:
            raise BadInput(f"the pickled source {p} is missing or changed since the recipe was written")
        model = module_of(torch.load(p, map_location="cpu", weights_only=False))[0].float()
    else:
        model = build_arch(spec, trusted=trust_code)
    replay_edits(model, recipe.edits)
    return model


def module_of(obj: object) -> tuple[nn.Module | None, str | None]:
    """The module of an unpickled object: the object itself, or a training checkpoint's ``{"ema": …,
    "model": …}`` (ultralytics and friends; EMA preferred). Returns (module, the key used) or (None, None)."""
    if isinstance(obj, nn.Module):
        return obj, None
    if isinstance(obj, dict):
        for key in ("ema", "model"):
            if isinstance(obj.get(key), nn.Module):
                return obj[key], key
    return None, None


def replay_edits(model: nn.Module, edits: tuple[dict, ...] | list[dict]) -> None:
    """Apply a recipe's structural edits; an edit that does not fit the architecture is bad input."""
    for i, edit in enumerate(edits):
        try:
            apply_edit(model, edit)
        except ExplainFixError as e:
            raise BadInput(f"the recipe's edit {i} does not fit the architecture: {e.message}") from None
        except (IndexError, RuntimeError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise BadInput(f"the recipe's edit {i} does not fit the architecture: {type(e).__name__}: {first_line(e, 200)}") from None


def check_integrity(directory: Path, recipe: Recipe) -> str:
    """The sha256 the recipe records for ``model.safetensors`` and ``arch/*`` (integrity against corruption
    or an accidental change; not authenticity: whoever edits a file can edit the recipe too). Returns the
    weights' sha256 (each file is hashed once)."""
    recorded = recipe.integrity
    for rel in {WEIGHTS_NAME, *recorded}:
        f = directory / rel
        if not f.is_file():
            raise BadInput(f"{directory} lacks {rel}, which its recipe records")
        sha = sha256_file(f)
        if rel in recorded and sha != recorded[rel]:
            raise BadInput(f"{f} does not match the sha256 recorded in {RECIPE_NAME}: the file is damaged or was changed",
                           hint="copy the directory again from its source")
        if rel == WEIGHTS_NAME:
            weights_sha = sha
    return weights_sha


def load_explainfix_dir(directory: Path, trust_pickle: bool = False, trust_code: bool = False,
                        arch: dict | None = None) -> LoadedModel:
    """An explainfix directory as a model. Nothing it names is imported unless allowed (io/trust.py):
    ``trust_code`` allows its ``arch/*.py`` and any import target; ``arch`` (the user's own ``--arch``
    spec) replaces the recipe's architecture."""
    recipe = Recipe.read(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise BadInput(f"{directory} has {RECIPE_NAME} but no {WEIGHTS_NAME}")
    weights_sha = check_integrity(directory, recipe)
    notes = []
    if arch is not None:
        notes.append(f"architecture from --arch {arch_label(arch)} (the recipe named {arch_label(recipe.arch)})")
        recipe = recipe.with_arch(arch)
    elif recipe.arch["kind"] == "file" and not trust_code:
        raise refuse_file_arch(str(Path(recipe.arch["path"]).relative_to(directory.resolve())), recipe.arch["name"])
    model = rebuild(recipe, trust_pickle=trust_pickle, trust_code=trust_code or arch is not None)
    state_dict, _ = read_safetensors(weights)
    load_into(model, state_dict, weights)
    dtypes = source_dtypes(state_dict)
    frozen = set(recipe.frozen)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    model.eval()
    return LoadedModel(model, recipe, directory, weights_sha, "explainfix", notes, dtypes)


def load(path: str | Path, trust_pickle: bool = False, trust_code: bool = False) -> nn.Module:
    """Rebuild the nn.Module saved in an explainfix directory (no pickle involved). A directory whose
    architecture is a Python file (``arch/*.py``) or a non-allow-listed import needs ``trust_code=True``."""
    path = Path(path)
    return load_explainfix_dir(path.parent if path.suffix == ".safetensors" else path, trust_pickle, trust_code).model


def dir_files(recipe: Recipe, weights: bytes) -> dict[str, bytes | dict]:
    """What an explainfix directory holds: the weights, the recipe (made portable, with the sha256 of
    every file beside it) and the ``arch/*.py`` copy of a file-kind architecture."""
    portable, arch_files = recipe.portable()
    integrity = {WEIGHTS_NAME: hashlib.sha256(weights).hexdigest(),
                 **{rel: hashlib.sha256(data).hexdigest() for rel, data in arch_files.items()}}
    written = replace(portable, versions=versions(), integrity=integrity)
    return {WEIGHTS_NAME: weights, RECIPE_NAME: written.to_dict(), **arch_files}


def model_dir_files(model: nn.Module, recipe: Recipe, dtypes: WeightDtypes = None) -> dict[str, bytes | dict]:
    """:func:`dir_files` of an in-memory model (its weights encoded with the directory's metadata, floating
    tensors in ``dtypes``: codec.cast_floats)."""
    meta = {"format": RECIPE_FORMAT, "explainfix": __version__, "arch": arch_label(recipe.arch)}
    return dir_files(recipe, safetensors_bytes(model, meta, dtypes))


def save_model_dir(
    model: nn.Module, recipe: Recipe, out: Path, extra: dict[str, bytes | str | dict] | None = None, force: bool = False,
    dtypes: WeightDtypes = None, example: torch.Tensor | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``explainfix.json`` (+ extra files) into ``out``, atomically, after
    loading the staged directory back (:func:`read_back`; with ``example``, one forward too)."""
    files: dict[str, bytes | str | dict] = dict(model_dir_files(model, recipe, dtypes))
    files.update(extra or {})
    return write_output_dir(out, files, force=force,
                            check=lambda tmp: read_back(tmp, example, model if exact(dtypes) else None))


def exact(dtypes: WeightDtypes) -> bool:
    """Are weights written in ``dtypes`` (codec.cast_floats) the float32 values in memory: the read-back then
    compares the reloaded model's outputs with the one in memory."""
    return dtypes is None or dtypes == "float32" or (isinstance(dtypes, dict) and not dtypes)


def read_back(directory: Path, example: torch.Tensor | None = None, reference: nn.Module | None = None) -> None:
    """What a job writes, it has loaded back: every explainfix directory under ``directory`` (a sweep holds
    several) is read as a user would read it — the recipe validated, the trust rule a user meets (an
    allow-listed import needs no flag), the weights' sha256 and shapes — and, given ``example``, run once in
    eval mode (equal to ``reference`` where the weights were written in float32) and once in train mode
    (on the reloaded copy: nothing of the caller's changes). Failing is a bug: InternalError (exit 4)."""
    for recipe_file in sorted(Path(directory).rglob(RECIPE_NAME)):
        where = recipe_file.parent
        try:
            _read_back_one(where, example, reference if where == Path(directory) else None)
        except ExplainFixError as e:
            raise InternalError(f"the output does not load back, so it was not written: {e.message}",
                                hint="this is an explainfix bug; please report it with --debug output") from e


def _read_back_one(where: Path, example: torch.Tensor | None, reference: nn.Module | None) -> None:
    recipe = Recipe.read(where)
    arch = recipe.arch
    own_code = arch["kind"] == "file" or (arch["kind"] == "import" and arch["module"] not in ALLOWED_MODULES)
    model = load_explainfix_dir(where, trust_pickle=arch["kind"] == "pickle", trust_code=own_code).model
    if example is None:
        return
    x = example if example.shape[0] > 1 else torch.cat([example, example])  # train-mode BatchNorm needs 2 rows
    x = x.to("cpu")
    try:
        with torch.no_grad():
            got = [t.float() for t in output_tensors(call_model(model.eval(), x))]
    except Exception as e:  # noqa: BLE001 - whatever the reloaded model's forward raises
        raise BadInput(f"its forward fails: {type(e).__name__}: {first_line(e, 200)}") from None
    if reference is not None:
        was = reference.training
        device = next((p.device for p in reference.parameters()), torch.device("cpu"))
        try:
            with torch.no_grad():
                want = [t.float().cpu() for t in output_tensors(call_model(reference.eval(), x.to(device)))]
        finally:
            reference.train(was)
        if len(want) != len(got) or any(a.shape != b.shape for a, b in zip(want, got)):
            raise BadInput("the reloaded model's outputs have other shapes than the model in memory")
        for a, b in zip(want, got):
            scale = 1.0 + float(a.abs().max()) if a.numel() else 1.0
            if a.numel() and float((a - b).abs().max()) > 1e-4 * scale:
                raise BadInput(f"the reloaded model computes something else (max |Δ| {float((a - b).abs().max()):.3g})")
    try:
        with torch.no_grad():
            output_tensors(call_model(model.train(), x))
    except Exception as e:  # noqa: BLE001
        raise BadInput(f"its forward fails in training mode: {type(e).__name__}: {first_line(e, 200)}") from None
