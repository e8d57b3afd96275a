"""fix: the real CLI replaces (or keeps) spatial kernels, freezes them in the recipe, and reloads that way."""
import json

import pytest
import torch
from typer.testing import CliRunner

from explainfix_cli import load
from explainfix_cli.io.codec import read_safetensors
from explainfix_cli.io.arch import sha256_file
from explainfix_cli.cli import app
from explainfix_cli.explain.kernels import dct_basis_nd, fix_spatial_conv2d
from explainfix_cli.core.model import iter_spatial_convs

from conftest import FIXTURE_ARCH, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, cli_json

BASE = FIXTURE_ARGS


def fix(tmp_path, init, *extra):
    out = tmp_path / f"fixed-{init}"
    return out, cli_json("fix", *BASE, "--init", init, "-o", out, *extra)


def original():
    from explainfix_cli.io.checkpoint import load_model

    return load_model(FIXTURE_PT, FIXTURE_ARCH).model


def test_fix_ghaar_replaces_freezes_and_reloads(tmp_path):
    before = sha256_file(FIXTURE_PT)
    out, report = fix(tmp_path, "ghaar", "--seed", "3", "--data", str(FIXTURE_CALIB))
    assert sha256_file(FIXTURE_PT) == before  # input untouched
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["edits"][-1] == {"op": "fix", "init": "ghaar", "seed": 3, "layers": 7}
    assert recipe["provenance"][-1]["command"] == "fix"
    model = load(out, trust_code=True)
    convs = iter_spatial_convs(model)
    assert sorted(recipe["frozen"]) == sorted(f"{n}.weight" for n, _ in convs)  # the fixture's convs have no bias
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(recipe["frozen"])
    expected = original()
    fix_spatial_conv2d(expected, "ghaar", seed=3)  # the library's own filters, same seed
    for (name, conv), (_, ref) in zip(convs, iter_spatial_convs(expected)):
        assert torch.equal(conv.weight, ref.weight), name
    assert report["trainable_params_after"] < report["trainable_params_before"]
    assert report["accuracy_before"] > 0.9 and report["accuracy_after"] is not None


def test_fix_keep_only_freezes(tmp_path):
    out, report = fix(tmp_path, "keep")
    model, ref = load(out, trust_code=True), original()
    for (n, conv), (_, r) in zip(iter_spatial_convs(model), iter_spatial_convs(ref)):
        assert torch.equal(conv.weight, r.weight), n
        assert not conv.weight.requires_grad
    assert report["agreement"] is None and report["frozen"]


def test_fix_dct_kernels_are_basis_filters(tmp_path):
    out, _ = fix(tmp_path, "dct")
    basis = dct_basis_nd((3, 3)).float().reshape(9, 9)
    for name, conv in iter_spatial_convs(load(out, trust_code=True)):
        k = conv.weight.detach().reshape(-1, 9)
        dist = (k[:, None, :] - basis[None]).abs().amax(dim=2).min(dim=1).values
        assert float(dist.max()) < 1e-5, name


def test_fix_bad_init_is_usage_error_and_writes_nothing(tmp_path):
    out = tmp_path / "x"
    res = CliRunner().invoke(app, ["fix", *BASE, "--init", "wavelets", "-o", str(out)])
    assert res.exit_code == 2
    assert "--init must be one of" in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("init", ["ghaar", "dct"])
def test_fix_is_deterministic_per_seed(tmp_path, init):
    a, _ = fix(tmp_path / "a", init, "--seed", "1")
    b, _ = fix(tmp_path / "b", init, "--seed", "1")
    ta, _ = read_safetensors(a / "model.safetensors")
    tb, _ = read_safetensors(b / "model.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
