"""The recipe (``explainfix.json``): what rebuilds a model from its architecture, and where it came from.

:class:`Recipe` is the one type for it. It is read (and checked field by field, io/schema.py) by
:meth:`Recipe.read`, written by :meth:`Recipe.to_dict`, and grows only through :meth:`Recipe.record`, which
returns a new recipe: a job never changes the recipe of the model it was given.

Schema versions: 1 is every recipe written before the ``schema`` field existed (same fields, all optional
lists defaulting to empty); 2 adds the ``schema`` field. Older recipes load as they are; a newer one is refused
with a one-line error instead of being half understood.
"""
from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import torch

from ..core.errors import BadInput, first_line
from ..core.version import __version__
from .schema import SCHEMA_VERSION, validate_recipe

RECIPE_NAME = "explainfix.json"
WEIGHTS_NAME = "model.safetensors"
RECIPE_FORMAT = "explainfix/1"
MAX_RECIPE_BYTES = 64 << 20


def versions() -> dict[str, str]:
    return {"explainfix": __version__, "torch": torch.__version__, "python": platform.python_version()}


@dataclass(frozen=True)
class Recipe:
    """How to rebuild a model: ``arch`` (import / file / pickle spec), the structural ``edits`` replayed on it
    in order, the ``frozen`` parameter names, the ``preprocessing`` it expects, and the ``provenance`` of every
    command that made it. ``integrity`` (sha256 of the files beside it) is filled when written."""

    arch: dict
    source: dict | None = None
    preprocessing: dict | None = None
    edits: tuple[dict, ...] = ()
    frozen: tuple[str, ...] = ()
    provenance: tuple[dict, ...] = ()
    versions: dict = field(default_factory=versions)
    integrity: dict = field(default_factory=dict)
    schema: int = SCHEMA_VERSION

    # ------------------------------------------------------------------------------------------ make

    @classmethod
    def new(cls, arch: dict, source: Path, sha256: str, fmt: str) -> Recipe:
        """The recipe of a model just loaded from ``source`` (nothing done to it yet)."""
        return cls(arch=arch, source={"path": str(source.resolve()), "sha256": sha256, "format": fmt})

    @classmethod
    def from_dict(cls, raw: Any, where: str) -> Recipe:
        """A recipe from its JSON form; every field is checked first (BadInput naming the field)."""
        validate_recipe(raw, where)
        return cls(
            arch=raw["arch"], source=raw.get("source"), preprocessing=raw.get("preprocessing"),
            edits=tuple(raw.get("edits", ())), frozen=tuple(raw.get("frozen", ())),
            provenance=tuple(raw.get("provenance", ())), versions=dict(raw.get("versions", {})),
            integrity=dict(raw.get("integrity", {})), schema=SCHEMA_VERSION,  # older schemas are read as this one
        )

    @classmethod
    def read(cls, directory: Path) -> Recipe:
        """The recipe of an explainfix directory. A file-kind architecture (shipped as ``arch/NAME.py``) gets
        its absolute path, so the recipe is usable from anywhere."""
        path = directory / RECIPE_NAME
        try:
            if path.stat().st_size > MAX_RECIPE_BYTES:
                raise BadInput(f"{path} is larger than {MAX_RECIPE_BYTES >> 20} MiB; not an explainfix recipe")
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise BadInput(f"{directory} is not an explainfix directory (no {RECIPE_NAME})",
                           hint="pass a model file, or a directory written by explainfix") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise BadInput(f"{path} is not valid JSON: {first_line(e, 200)}") from None
        if not isinstance(raw, dict) or raw.get("format") != RECIPE_FORMAT:
            fmt = str(raw.get("format"))[:40] if isinstance(raw, dict) else "?"
            raise BadInput(f"{path} is not an explainfix recipe (format {fmt})")
        recipe = cls.from_dict(raw, str(path))
        if recipe.arch["kind"] == "file":  # the schema allows only arch/NAME.py here
            recipe = recipe.with_arch({**recipe.arch, "path": str((directory / recipe.arch["path"]).resolve())})
        return recipe

    # ------------------------------------------------------------------------------------------ grow

    def record(self, provenance: dict, *, edits: Iterable[dict] = (), frozen: Iterable[str] | None = None,
               preprocessing: dict | None = None) -> Recipe:
        """This recipe after one command: its ``provenance`` entry appended, its structural ``edits``
        appended in order, and (when given) the frozen names and the preprocessing replaced."""
        return replace(
            self, provenance=(*self.provenance, dict(provenance)), edits=(*self.edits, *map(dict, edits)),
            frozen=self.frozen if frozen is None else tuple(sorted(set(frozen))),
            preprocessing=self.preprocessing if preprocessing is None else preprocessing,
        )

    def with_arch(self, arch: dict) -> Recipe:
        """The same edits on another architecture spec (``--arch`` given with a directory)."""
        return replace(self, arch=arch)

    def original(self) -> Recipe:
        """The recipe of the model before any structural edit (the teacher of a distillation)."""
        return replace(self, edits=())

    # ------------------------------------------------------------------------------------------ write

    @property
    def source_sha256(self) -> str:
        return (self.source or {}).get("sha256", "")

    def to_dict(self) -> dict:
        """The JSON form (field order kept stable for diffs)."""
        return {
            "format": RECIPE_FORMAT, "schema": self.schema, "arch": self.arch, "source": self.source,
            "preprocessing": self.preprocessing, "edits": list(self.edits), "frozen": list(self.frozen),
            "provenance": list(self.provenance), "versions": self.versions, "integrity": self.integrity,
        }

    def portable(self) -> tuple[Recipe, dict[str, bytes]]:
        """The recipe to write into an output directory, plus the files to write beside it: an architecture
        given as ``file.py:Class`` travels as ``arch/file.py`` (path relative to the directory, sha256 kept),
        so the directory reloads on another machine."""
        if self.arch.get("kind") != "file":
            return self, {}
        src = Path(self.arch["path"])
        rel = f"arch/{src.name}"
        return self.with_arch({**self.arch, "path": rel}), {rel: src.read_bytes()}
