"""Written means loadable (issue 24, items 1 and 3): random-init torchvision models pruned through the CLI,
then their directory reloaded as a user would — ``explainfix info DIR`` and ``explainfix_cli.load`` — and
run once in eval and once in train mode.

RegNet names its blocks ``block1-0`` (the recipe schema refused the ``-``), MNASNet's layers read their module
version from the state dict's ``_metadata`` (safetensors carries none), and GoogLeNet built with
``init_weights=True`` was refused by the trust rule as if the flag read a file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import invoke, write_image_folder
from explainfix_cli import load

SIZE = 64
CLASSES = 5


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("zoo") / "calib", 8, size=SIZE)


def _weights(tmp_path: Path, name: str, kwargs: dict) -> Path:
    """A random-init torchvision model saved as a user does: ``torch.save(model.state_dict(), …)``."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=CLASSES, **kwargs).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return path


def _prune_and_reload(weights: Path, arch: str, kwargs: dict, calib: Path, out: Path, trust_code: bool = False):
    args = ["--arch", arch, "--arch-kwargs", json.dumps({"num_classes": CLASSES, **kwargs})]
    r = invoke("prune", weights, *args, "--input-size", SIZE, "--data", calib, "--target-macs", "2x", "--batch-size", 8,
               "-o", out)
    assert r.exit_code == 0, r.output
    trust = ["--trust-code"] if trust_code else []
    info = invoke("info", out, *trust, "--json")
    assert info.exit_code == 0, info.output
    model = load(out, trust_code=trust_code)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, CLASSES)
        assert model.train()(x).shape == (2, CLASSES)
    return model


ZOO = [
    ("regnet_y_400mf", {}),                                           # module names with "-"
    ("mnasnet0_5", {}),                                               # module versions in _metadata
    ("googlenet", {"init_weights": True, "aux_logits": False}),       # an init flag is not a download
    ("resnet18", {}),
    ("mobilenet_v3_small", {}),
]


@pytest.mark.parametrize("name,kwargs", ZOO, ids=[z[0] for z in ZOO])
def test_pruned_torchvision_dir_reloads(tmp_path, calib, name, kwargs):
    weights = _weights(tmp_path, name, kwargs)
    model = _prune_and_reload(weights, f"torchvision:{name}", kwargs, calib, tmp_path / "out")
    assert type(model).__name__.lower().startswith(name[:5])


def test_mnasnet_from_a_file_architecture_reloads(tmp_path, calib):
    """The issue's case: MNASNet built by the user's own file (``--arch file.py:Factory``)."""
    arch = tmp_path / "my_mnasnet.py"
    arch.write_text("import torchvision\n\n\ndef Factory(num_classes=1000):\n"
                    "    return torchvision.models.mnasnet0_5(num_classes=num_classes)\n")
    weights = _weights(tmp_path, "mnasnet0_5", {})
    out = tmp_path / "out"
    model = _prune_and_reload(weights, f"{arch}:Factory", {}, calib, out, trust_code=True)
    assert type(model).__name__ == "MNASNet"
    assert (out / "arch" / "my_mnasnet.py").is_file()


def test_mnasnet_safetensors_checkpoint_loads(tmp_path):
    """A safetensors file carries no module versions: MNASNet is filled with the versions of the model built."""
    from safetensors.torch import save_file

    from explainfix_cli.io.checkpoint import load_model

    torch.manual_seed(0)
    model = torchvision.models.mnasnet0_5(num_classes=CLASSES).eval()
    path = tmp_path / "mnasnet.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = load_model(path, "torchvision:mnasnet0_5", {"num_classes": CLASSES}).model
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
