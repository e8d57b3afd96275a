"""explain through the real CLI: artifacts, JSON, pruned directories."""
import json

from PIL import Image
from typer.testing import CliRunner

from explainfix_cli.cli import app

from conftest import FIXTURE_ARGS, cli_json

FIXTURE = FIXTURE_ARGS


def test_explain_with_saliency_writes_png_and_json(tmp_path):
    out = tmp_path / "spectra"
    doc = cli_json("explain", *FIXTURE, "--data", "fixtures/digits/calib", "-o", out)
    assert doc["saliency"] is True and doc["num_batches"] == 4  # 100 images / 32
    assert len(doc["layers"]) == 7
    layer = doc["layers"][0]
    assert layer["kernel_shape"] == [3, 3] and len(layer["with_saliency"]["e_d"]) == 9
    assert len(layer["without_saliency"]["e_1"]) == 6 and len(layer["without_saliency"]["e_0"]) == 3
    assert json.loads((out / "spectra.json").read_text())["layers"][0]["name"] == "conv1"
    with Image.open(out / "spectra.png") as img:
        assert img.size[0] > 400 and img.size[1] > 200


def test_explain_without_data_and_on_a_pruned_dir(tmp_path):
    pruned = tmp_path / "pruned"
    res = CliRunner().invoke(app, ["prune", *FIXTURE, "--pct", "80", "--data", "fixtures/digits/calib", "-o", str(pruned)])
    assert res.exit_code == 0, res.output
    out = tmp_path / "spectra"
    doc = cli_json("explain", pruned, "--trust-code", "-o", out)
    assert doc["saliency"] is False and all(layer["with_saliency"] is None for layer in doc["layers"])
    # the pruned layers' kernels are counted as they are now (fewer channels, same 3×3 basis)
    assert all(len(layer["without_saliency"]["e_d"]) == 9 for layer in doc["layers"])
    res = CliRunner().invoke(app, ["explain", str(pruned), "--trust-code", "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output  # no overwrite without --force
