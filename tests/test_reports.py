"""What `prune` reports, on screen and in report.json, through the real `explainfix` process: the per-layer
table from the real modules (convT and linear included), an unreachable budget refused before any data is
read (with one number), --pct on a model without k×k kernels, and BatchNorm re-estimation skipped when the
model has none. Every pruned directory is loaded back."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import explainfix_cli
from conftest import cli_json, run_cli, write_image_folder

ZOO = "tests/models_for_tests.py"


def checkpoint(tmp_path: Path, name: str) -> Path:
    import models_for_tests as zoo

    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    torch.save(getattr(zoo, name)().state_dict(), path)
    return path


def prune_args(tmp_path: Path, name: str, *args: str, size: int = 16) -> list:
    """``prune`` of a fresh checkpoint of the zoo model ``name`` into ``tmp_path/out``."""
    return ["prune", checkpoint(tmp_path, name), "--arch", f"{ZOO}:{name}", "--input-size", str(size), *args,
            "-o", tmp_path / "out"]


def prune(tmp_path: Path, name: str, *args: str, size: int = 16):
    return run_cli(*prune_args(tmp_path, name, *args, size=size), "--json"), tmp_path / "out"


def channels(m: torch.nn.Module) -> tuple[int, int]:
    if isinstance(m, torch.nn.Linear):
        return m.in_features, m.out_features
    return m.in_channels, m.out_channels


def test_layer_table_counts_come_from_the_modules_convtranspose_and_linear_included(tmp_path):
    p, out = prune(tmp_path, "UpLinear", "--target-params", "2x")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert json.loads((out / "report.json").read_text())["layers"] == doc["layers"]
    rows = {r["name"]: r for r in doc["layers"]}
    assert {n: r["kind"] for n, r in rows.items()} == {"c1": "conv", "up": "convT", "c2": "conv", "fc1": "linear",
                                                       "fc2": "linear"}
    import models_for_tests as zoo

    original = zoo.UpLinear()
    pruned = explainfix_cli.load(out, trust_code=True)
    for name, r in rows.items():
        assert (r["in_before"], r["out_before"]) == channels(original.get_submodule(name)), name
        assert (r["in_after"], r["out_after"]) == channels(pruned.get_submodule(name)), name
    assert rows["fc1"]["out_after"] < rows["fc1"]["out_before"] == 256  # a linear layer's own outputs went
    assert rows["up"]["out_after"] < rows["up"]["out_before"]  # and a transposed conv's
    pruned(torch.randn(2, 3, 16, 16))
    # on screen: fc1's outputs as they are, not "256" hidden as unchanged
    assert f"256 → {rows['fc1']['out_after']}" in p.stderr and "convT" in p.stderr
    # the channel criterion zeroes no kernels: its last column is what it has, the weights each layer kept
    fc1 = rows["fc1"]
    assert fc1["weights_before"] == 16 * 256 and fc1["weights_after"] == fc1["in_after"] * fc1["out_after"]
    assert "weights kept" in p.stderr and "filters zeroed" not in p.stderr
    assert f"{100 * fc1['weights_after'] / fc1['weights_before']:.1f}%" in p.stderr
    assert "pruned ≡ model with the removed channels masked" in " ".join(p.stderr.split())


def test_counts_are_said_in_words():
    from explainfix_cli.cli.next_steps import plural

    assert [plural(1, "unchanged layer"), plural(2, "channel"), plural(1, "calibration batch"),
            plural(3, "calibration batch"), plural(2, "epoch")] == [
        "1 unchanged layer", "2 channels", "1 calibration batch", "3 calibration batches", "2 epochs"]


def test_pct_on_a_model_without_kxk_kernels_says_why_nothing_goes(tmp_path):
    p, out = prune(tmp_path, "MlpOnly", "--pct", "50")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["channels_removed"] == 0 and doc["filters_total"] == 0
    assert "no spatial (k×k) kernels" in doc["nothing_removed"] and "--target-macs" in doc["nothing_removed"]
    screen = " ".join(p.stderr.split())
    assert "no spatial (k×k) kernels" in screen and "raise --pct" not in screen
    explainfix_cli.load(out, trust_code=True)(torch.randn(1, 3, 16, 16))


def _data_with_a_broken_image_last(root: Path) -> Path:
    """10 good 16-px images and, sorted last, a PNG with a valid header whose pixel data is cut off: anything
    that reads the calibration set fails on it (the first 8 images, read by the input probe and the
    self-check's inputs, are good)."""
    write_image_folder(root, 10, size=16, labelled=False)
    good = (root / "0000.png").read_bytes()
    (root / "zzzz_broken.png").write_bytes(good[: len(good) // 2])
    return root


def test_an_unreachable_budget_is_refused_before_any_data_is_read_with_one_number(tmp_path):
    data = _data_with_a_broken_image_last(tmp_path / "calib")
    p, out = prune(tmp_path, "UpLinear", "--target-macs", "1000x", "--data", str(data))
    lines = p.stderr.splitlines()
    assert p.returncode == 2 and lines[0].startswith("error: ") and "smallest reachable is" in lines[0], p.stderr
    assert "zzzz_broken" not in p.stderr and not out.exists()
    least = lines[0].split("smallest reachable is ")[1].split()[0]
    assert lines[1] == f"hint: e.g. --target-macs {least} (the smallest reachable)"  # the same number
    # a reachable budget does read the data, so the refusal above came before it
    p, _ = prune(tmp_path, "UpLinear", "--target-macs", "2x", "--data", str(data))
    assert p.returncode == 2 and "zzzz_broken" in p.stderr, p.stderr
    # the number given is accepted and reached
    (data / "zzzz_broken.png").unlink()
    doc = cli_json(*prune_args(tmp_path, "UpLinear", "--target-macs", least, "--data", str(data)), spawn=True)
    assert doc["budget"]["achieved"] <= float(least) * 1.02 and doc["budget"]["within_tolerance"]
    explainfix_cli.load(tmp_path / "out", trust_code=True)(torch.randn(1, 3, 16, 16))


def test_batchnorm_reestimation_is_skipped_on_a_model_without_batchnorm(tmp_path):
    data = write_image_folder(tmp_path / "calib", 8, size=16)
    p, out = prune(tmp_path, "MlpOnly", "--target-macs", "2x", "--data", str(data))
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["recalibrated"] == {"batches": 0, "skipped": "the model has no BatchNorm"}
    assert doc["agreement"] is not None  # quality still measured after the (skipped) step
    screen = " ".join(p.stderr.split())
    assert "BatchNorm re-estimation skipped: the model has no BatchNorm" in screen and "on 0 calibration" not in screen
    assert "on 8 calibration images" in screen
    recipe = json.loads((out / "explainfix.json").read_text())
    assert [e["op"] for e in recipe["edits"]] == ["prune"]
    explainfix_cli.load(out, trust_code=True)(torch.randn(1, 3, 16, 16))


def test_a_model_with_two_inputs_is_refused_as_such(tmp_path):
    p, out = prune(tmp_path, "TwoInputs", "--target-macs", "2x")
    assert p.returncode == 2 and not out.exists()
    assert "2 inputs" in p.stderr.splitlines()[0] and "--input-size" not in p.stderr, p.stderr


def test_a_floor_above_the_target_after_scoring_gives_the_closest_plan_with_a_note():
    """The early check measures the floor on the plan that removes the most; a ranking whose own floor is higher
    (after the expensive pass) gives its smallest plan and says so, instead of failing late."""
    from explainfix_cli.prune.budget import search

    outcome = search(lambda k: 1 - 0.01 * k, 0, 10, 0.5, "macs", integer=True, why_floor=" (floor)")
    assert outcome.achieved == pytest.approx(0.9) and outcome.knob == 10 and not outcome.within_tolerance
    assert outcome.note == "closest plan keeps 0.900 (asked 0.500): the smallest this ranking reaches (floor)"


@pytest.mark.parametrize("criterion", ["channel", "magnitude"])
def test_the_early_budget_check_leaves_the_model_as_it_was(criterion):
    import models_for_tests as zoo
    from explainfix_cli.channels import graph as graph_mod
    from explainfix_cli.core.errors import BadInput
    from explainfix_cli.core.model import count_macs
    from explainfix_cli.prune.options import PruneOptions
    from explainfix_cli.prune.select import check_budget

    torch.manual_seed(0)
    model, x = zoo.UpLinear().eval(), torch.randn(1, 3, 16, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opts = PruneOptions(target_macs="1000x", criterion=criterion).resolved(has_data=False)
    with pytest.raises(BadInput, match="smallest reachable is"):
        check_budget(model, graph_mod.trace(model, x), opts, x, count_macs(model, x))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_frozen_channels_name_the_op_that_froze_the_most(tmp_path):
    """#24 item 4: whenever channels are frozen, info, the prune report and a refused budget name the op."""
    from conftest import FIXTURE_ARGS, FIXTURE_CALIB, cli_json, run_cli

    info = cli_json("info", *FIXTURE_ARGS)
    top = next(iter(info["channel_groups"]["frozen_by"]))
    assert "model output" in top  # the classifier's 10 output channels
    doc = cli_json("prune", *FIXTURE_ARGS, "--target-macs", "2x", "--data", FIXTURE_CALIB, "-o", tmp_path / "p")
    assert next(iter(doc["frozen_by"])) == top
    refused = run_cli("prune", *FIXTURE_ARGS, "--target-macs", "1000x", "-o", tmp_path / "q")
    assert refused.returncode == 2 and f"most of them by {top}" in " ".join(refused.stderr.split()), refused.stderr
