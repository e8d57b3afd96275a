"""What an explainfix directory may make us run, decided before anything is imported (docs/CLI.md,
"Sharing results safely").

A directory written by someone else is data, not code. Its recipe names an architecture; rebuilding it
would import or execute what it names, so:

* an ``import`` architecture runs without opt-in only when it is a public model factory or ``nn.Module``
  class of an allow-listed model library (``ALLOWED_MODULES``), with JSON keyword arguments that cannot
  name files or downloads;
* a ``file`` architecture (the ``arch/*.py`` copy inside the directory) runs only when the user says so
  (``--trust-code`` / ``trust_code=True``, or ``EXPLAINFIX_TRUST_CODE=1``) or passes ``--arch`` themselves;
* anything else is refused with one line that names what the directory wanted to run and the flag.

An architecture the user types on the command line (``--arch``) is their own code and is not gated.
"""
from __future__ import annotations

import inspect
import re
from types import ModuleType

from torch import nn

from ..core.errors import BadInput

#: module → the library whose own objects it may hand out (checked on the object's ``__module__``).
ALLOWED_MODULES: dict[str, str] = {
    "torchvision.models": "torchvision.models",
    "torchvision.models.segmentation": "torchvision.models",
    "torchvision.models.detection": "torchvision.models",
    "timm": "timm",
    "timm.models": "timm",
    "segmentation_models_pytorch": "segmentation_models_pytorch",
    "ultralytics.nn.tasks": "ultralytics.nn",
}
#: keyword arguments with which a factory of an allow-listed library reads files or downloads weights
#: (torchvision: weights, weights_backbone and the old pretrained / pretrained_backbone; timm: pretrained,
#: pretrained_cfg, pretrained_cfg_overlay, checkpoint_path, cache_dir; smp: encoder_weights); any value but
#: None / False is refused. A boolean that only picks an initialisation (init_weights, transform_input) reads nothing.
FORBIDDEN_KWARGS = frozenset({
    "weights", "weights_backbone", "pretrained", "pretrained_backbone", "pretrained_cfg", "pretrained_cfg_overlay",
    "checkpoint_path", "encoder_weights", "cache_dir",
})
#: argument names that say "a place": a string given to one is a location (drop_path_rate=0.1 is not).
LOCATION_KWARG = re.compile(r"(^|_)(path|paths|file|filename|url|uri|dir|directory|cache|hub|repo|checkpoint)(_|$)",
                            re.IGNORECASE)
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PACKAGED_YAML = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\.yaml")  # resolved inside ultralytics' cfg folder, no path
TRUST_HINT = "pass --trust-code if you trust the directory's author (or --arch with your own architecture)"


def _refuse(what: str, why: str) -> BadInput:
    return BadInput(f"refused to run {what} named by the directory's recipe: {why}", hint=TRUST_HINT)


def looks_like_location(text: str) -> bool:
    """A path or URL (``/``, ``\\``, ``://``), a home or relative path (``~…``, ``.…``), or a source prefix or
    drive (``hf-hub:…``, ``local-dir:…``, ``C:…``): a string some model factories resolve to files."""
    return any(c in text for c in "/\\:") or text.startswith(("~", "."))


def _fetches(key: str, value: object, depth: int = 0) -> str | None:
    """Why ``key=value`` could read a file or download (None when it cannot), nested values included."""
    if isinstance(key, str) and value not in (None, False):
        if key.lower() in FORBIDDEN_KWARGS:
            return "could read files or download weights"
        if isinstance(value, str) and LOCATION_KWARG.search(key):  # cache_dir="cache": relative, yet a place
            return "names a file, a directory or a download"
    if isinstance(value, str) and looks_like_location(value):
        return "looks like a path or URL; a model library could read or fetch it"
    if depth < 8 and isinstance(value, dict):
        return next((why for k, v in value.items() if (why := _fetches(k, v, depth + 1))), None)
    if depth < 8 and isinstance(value, (list, tuple)):
        return next((why for v in value if (why := _fetches("", v, depth + 1))), None)
    if depth >= 8 and isinstance(value, (dict, list, tuple)):
        return "is nested too deeply to check"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


def check_import_target(module: str, name: str, kwargs: dict) -> None:
    """Strings only: may the recipe's ``module:name`` be imported at all (no import happens here)."""
    what = f"`{module}:{name}`"
    if module not in ALLOWED_MODULES:
        raise _refuse(what, f"{module!r} is not an allow-listed model library ({', '.join(sorted(ALLOWED_MODULES))})")
    if not NAME.fullmatch(name):
        raise _refuse(what, f"{name!r} is not a public name")
    cfg = kwargs.get("cfg")  # ultralytics reads it as a yaml file: only NAME.yaml of its own cfg folder (said first)
    if module.startswith("ultralytics") and cfg is not None and not (isinstance(cfg, str) and PACKAGED_YAML.fullmatch(cfg)):
        raise _refuse(what, f"cfg={cfg!r} is not one of ultralytics' packaged model names (NAME.yaml)")
    for key, value in kwargs.items():
        if why := _fetches(key, value):
            raise _refuse(what, f"its keyword argument {key}={_short(value)} {why}")


def check_import_object(module: ModuleType, spec: dict) -> object:
    """After importing an allow-listed module: the named object must be that library's own model class
    or factory function (not something it imported, like ``os`` or ``torch.hub.load``)."""
    obj = getattr(module, spec["name"], None)
    root = ALLOWED_MODULES[spec["module"]]
    owner = getattr(obj, "__module__", "") or ""
    own = owner == root or owner.startswith(root + ".")
    is_model = inspect.isclass(obj) and issubclass(obj, nn.Module)
    if not own or not (is_model or inspect.isfunction(obj)):
        raise _refuse(f"`{spec['module']}:{spec['name']}`", f"it is not a model class or factory of {root}")
    return obj


def refuse_file_arch(rel_path: str, name: str) -> BadInput:
    return _refuse(f"the Python file {rel_path} ({name})", "a file-kind architecture executes that file")
