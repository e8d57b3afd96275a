"""Issue #27, a newcomer's first hour: what the CLI says happened and what to do next, the figures' words,
the ecosystem's conventions (--version, LICENSE, extras). Real CLI runs on the fixture and small models."""
from __future__ import annotations

import json
import re
import sys
import tomllib

import pytest

from tests.conftest import FIXTURE_ARGS, FIXTURE_PT, REPO, run_cli


# ----------------------------------------------------------------------------- 9: --version, LICENSE
def test_version_prints_the_version_and_exits_0():
    from explainfix_cli.core.version import __version__

    p = run_cli("--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"explainfix {__version__}"


def test_license_file_and_spdx_expression():
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 the explainfix authors" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # PEP 639 string, not the deprecated table
    assert "LICENSE" in project["project"]["license-files"]
    build = " ".join(project["build-system"]["requires"])
    assert int(re.search(r"setuptools>=(\d+)", build).group(1)) >= 77  # the first setuptools reading PEP 639


# ---------------------------------------------------------------------------------- 10: user extras
def test_user_extras_install_the_shorthands_libraries():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {k: {re.split(r"[<>=\[ ]", d)[0] for d in v} for k, v in extras.items()}
    assert "timm" in names["timm"]
    assert "segmentation-models-pytorch" in names["smp"]
    assert "ultralytics" in names["yolo"]
    assert {"timm", "segmentation-models-pytorch", "ultralytics", "torchvision"} <= names["all"]
    assert {"timm", "segmentation-models-pytorch", "ultralytics", "pytest"} <= names["test"]  # make test still works


@pytest.mark.parametrize("arch, library, extra", [
    ("timm:resnet18", "timm", "timm"),
    ("smp:Unet", "segmentation_models_pytorch", "smp"),
    ("ultralytics:yolov8n", "ultralytics", "yolo"),
])
def test_a_missing_library_names_the_extra_to_install(tmp_path, arch, library, extra):
    """The library is made missing for the subprocess (sitecustomize sets sys.modules[name] = None: importing it
    then raises ImportError, as when it is not installed); nothing else changes."""
    (tmp_path / "sitecustomize.py").write_text(f"import sys\nsys.modules[{library!r}] = None\n")
    p = run_cli("info", FIXTURE_PT, "--arch", arch, env={"PYTHONPATH": str(tmp_path)})
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0] == (f"error: {library} is not installed: pip install explainfix-cli[{extra}] "
                        "(or explainfix-cli[all]: torchvision, timm, segmentation-models-pytorch and ultralytics)")


# ----------------------------------------------------------------------- 1, 2: say what to do next
CALIB = REPO / "fixtures" / "digits" / "calib"


def _prune_to(tmp_path_factory, factor: str):
    """One real CLI run of ``prune --target-macs FACTOR`` on the fixture: (report, stderr, out)."""
    import json

    out = tmp_path_factory.mktemp("macs") / f"p{factor}"
    p = run_cli("prune", *FIXTURE_ARGS, "--target-macs", factor, "--data", CALIB, "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr, out


@pytest.fixture(scope="module")
def pruned_far(tmp_path_factory):
    """The fixture pruned to 8x fewer MACs: agreement falls far and layers reach the floor (one CLI run)."""
    return _prune_to(tmp_path_factory, "8x")


def test_prune_says_what_next_when_quality_falls_far(pruned_far):
    report, stderr, out = pruned_far
    assert report["agreement"] < 0.9
    assert report["quality_fell"].startswith(f"top-1 agreement with the original is {100 * report['agreement']:.1f}%")
    text = " ".join(stderr.split())
    assert f"quality fell: top-1 agreement with the original is {100 * report['agreement']:.1f}%" in text
    assert "calibration images" in text and "calibration data" not in text
    assert f"explainfix finetune {out} --distill" in text
    assert "explainfix compress" in text and "--target-macs 8x --finetune-epochs 3 --distill" in text
    assert "or ask for less: --target-macs 4.5x" in text
    from explainfix_cli import load

    load(out, trust_code=True)  # what the prune wrote reloads


def test_prune_flags_layers_cut_to_the_floor(pruned_far):
    report, stderr, _ = pruned_far
    floor = report["floor_layers"]
    assert floor, "at 8x some layers keep only --floor of their channels"
    rows = {row["name"]: row for row in report["layers"]}
    for name in floor:  # each keeps at most the floor plus one rounding step
        assert rows[name]["out_after"] < rows[name]["out_before"]
        assert rows[name]["out_after"] <= max(1, -(-rows[name]["out_before"] // 10)) + 7
    assert f"at the floor: {len(floor)} layers cut to --floor (10% of their channels): {floor[0]}" in " ".join(stderr.split())


def test_prune_without_a_far_fall_gives_no_advice(tmp_path):
    import json

    p = run_cli("prune", *FIXTURE_ARGS, "--target-macs", "1.2x", "--data", CALIB, "-o", tmp_path / "p", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["agreement"] >= 0.9 and report["quality_fell"] is None and "quality fell" not in p.stderr


def test_compress_without_a_gate_says_no_quality_gate_was_set(tmp_path):
    out = tmp_path / "c"
    p = run_cli("compress", *FIXTURE_ARGS, "--target-macs", "2x", "--data", CALIB, "--no-bench", "-o", out)
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stderr.split())
    assert "checks run: ONNX verification (--atol/--rtol); no quality gate was set" in text
    summary = (out / "summary.md").read_text()
    assert "✅ PASSED" not in summary and "✅ ONNX check passed · no quality gate set" in summary.splitlines()[0]
    assert "no quality gate was set" in summary


# ------------------------------------------------------------------------------ 6: the fine-tune table
def test_compress_finetune_table_shows_the_rate_used_and_eval_accuracy_per_epoch(tmp_path):
    import json

    p = run_cli("compress", *FIXTURE_ARGS, "--target-macs", "2x", "--data", CALIB, "--eval-data", REPO / "fixtures" / "digits" / "eval",
                "--finetune-epochs", "2", "--no-bench", "-o", tmp_path / "c", "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    epochs = report["finetune"]["epochs"]
    assert [e["lr_used"][0] for e in epochs] == pytest.approx([0.01, 0.005])  # cosine over 2 epochs: what trained them
    assert epochs[-1]["lr_used"][1] > 0 and epochs[-1]["lr"] == pytest.approx(0)  # the end-of-epoch rate is not one used
    assert all(e["eval_accuracy"] is not None for e in epochs)
    assert epochs[-1]["eval_accuracy"] == pytest.approx(report["compressed"]["accuracy"])
    rows = [line for line in p.stderr.splitlines() if re.match(r"^│\s+[12] │", line)]
    assert len(rows) == 2 and "0.01→" in rows[0] and "0.005→" in rows[1], p.stderr
    assert "—" not in "".join(rows)  # eval acc measured every epoch


def test_a_finetune_that_lowers_eval_accuracy_says_so_and_what_next(pruned_2x, tmp_path):
    """Too high a rate for a short recovery (benchmarks/README.md: it happens at the default on depthwise bases)."""
    _, _, pruned = pruned_2x
    out = tmp_path / "t"
    p = run_cli("finetune", pruned, "--trust-code", "--data", CALIB, "--eval-data", REPO / "fixtures" / "digits" / "eval",
                "--epochs", "2", "--lr", "0.3", "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    before, after = report["eval_accuracy_before"], report["eval_accuracy_after"]
    assert report["eval_fell"] is True and after < before - 0.005
    text = " ".join(p.stderr.split())
    assert (f"training lowered the eval accuracy: eval accuracy {100 * before:.1f}% → {100 * after:.1f}% after 2 epochs "
            f"at lr 0.3. Next, one of:") in text
    assert "a lower rate: run this command again with --lr 0.1 and another -o" in text
    assert "learn from the original instead: run it again with --distill in place of --lr (it learns from the original's " \
           "outputs, at lr 0.003)" in text
    assert f"or keep the model you started from: {pruned} is unchanged" in text
    again = run_cli("finetune", pruned, "--trust-code", "--data", CALIB, "--eval-data", REPO / "fixtures" / "digits" / "eval",
                    "--epochs", "2", "--lr", "0.1", "-o", tmp_path / "t2", "--json")  # the first advice, taken
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["eval_accuracy_after"] > after
    from explainfix_cli import load

    load(out, trust_code=True)  # what it wrote (the worse model, as asked) still reloads


def test_compress_says_when_its_fine_tune_lowered_the_accuracy(tmp_path):
    p = run_cli("compress", *FIXTURE_ARGS, "--target-macs", "2x", "--data", CALIB, "--eval-data", REPO / "fixtures" / "digits" / "eval",
                "--finetune-epochs", "2", "--lr", "0.3", "--no-bench", "-o", tmp_path / "c", "--json")
    assert p.returncode == 0, p.stderr  # no gate was asked for: it is advice, not a failure
    c = json.loads(p.stdout)["compressed"]
    assert c["accuracy"] < c["accuracy_after_prune"] - 0.005
    assert (f"training lowered the accuracy: {100 * c['accuracy_after_prune']:.1f}% after pruning only → "
            f"{100 * c['accuracy']:.1f}% after the fine-tune at lr 0.3: run this command again with --lr 0.1, or with "
            "--distill in place of --lr") in " ".join(p.stderr.split())


# ------------------------------------------------------------ 4, 5: the words of the README, budget tables
@pytest.fixture(scope="module")
def pruned_2x(tmp_path_factory):
    """The fixture at 2x fewer MACs (the README's first prune): (report, stderr, out)."""
    return _prune_to(tmp_path_factory, "2x")


def test_budget_run_speaks_of_the_masked_model_and_images(pruned_2x):
    _, stderr, _ = pruned_2x
    text = " ".join(stderr.split())
    assert "pruned ≡ model with the removed channels masked" in text and "zeroed model" not in text
    assert "on 100 calibration images" in text and "calibration data" not in text
    assert "1 unchanged layer not shown" in text
    header = next(line for line in stderr.splitlines() if "layer" in line and "kind" in line)
    assert "weights kept" in header and "filters zeroed" not in header  # the budget mode zeroes no filters


# ------------------------------------------------------------------------- 3: rounding, channel counts
def test_rounding_names_the_layers_and_its_cost_in_macs(pruned_2x, tmp_path):
    # auto rounds by the width a layer keeps: the fixture's layers (≤ 64 wide) that lose channels keep < 64,
    # so at 2x nothing is rounded (by the original width its 64-wide layers would keep multiples of 8)
    report, _, _ = pruned_2x
    assert report["options"]["round_to"] == "auto" and report["rounding"] is None, report["rounding"]
    assert not any(k.startswith("rounded") for k in report["kept"])
    assert any(r["out_before"] == 64 and r["out_after"] % 8 for r in report["layers"] if r["out_after"] < r["out_before"])
    out = tmp_path / "r8"
    p = run_cli("prune", *FIXTURE_ARGS, "--target-macs", "2x", "--round-to", "8", "--data", CALIB, "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    report, stderr = json.loads(p.stdout), p.stderr
    ro = report["rounding"]
    kept = report["kept"]["rounded: the layer keeps a multiple of --round-to"]
    assert ro["round_to"] == 8 and sum(ro["layers"].values()) == kept  # the same channels, layer by layer
    rows = {row["name"]: row for row in report["layers"]}
    for name in ro["layers"]:
        assert rows[name]["out_after"] % 8 == 0
    assert 0 < ro["macs"] < report["macs_after"]
    text = " ".join(stderr.split())
    layer, n = max(ro["layers"].items(), key=lambda kv: kv[1])
    assert f"kept {kept} channels to keep channel counts multiples of 8 (--round-to)" in text and f"{layer} +{n}" in text
    assert f"({100 * ro['macs'] / report['macs_before']:.1f}% of the original)" in text
    from explainfix_cli import load

    load(out, trust_code=True)


def test_info_and_prune_count_channels_alike(pruned_2x):
    import json

    report, _, _ = pruned_2x
    p = run_cli("info", *FIXTURE_ARGS, "--json")
    assert p.returncode == 0, p.stderr
    groups = json.loads(p.stdout)["channel_groups"]
    assert groups["channels"] == report["channels_before"]  # one total in both commands
    frozen = groups["channels"] - groups["prunable_channels"]
    assert f"{groups['channels']} ({groups['prunable_channels']} prunable, {frozen} frozen)" in p.stderr


# ---------------------------------------------------------------------------- 12: bench at 80 columns
def test_bench_table_fits_80_columns_with_short_paths(pruned_2x):
    import json

    _, _, pruned = pruned_2x
    p = run_cli("bench", *FIXTURE_ARGS, pruned, "--trust-code", "--iters", "5", "--warmup", "1", "--rounds", "2", "--json",
                env={"COLUMNS": "80"})
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert rows[0]["label"] == str(FIXTURE_PT) and rows[1]["label"] == str(pruned)  # --json keeps the full paths
    lines = p.stderr.splitlines()
    assert all(len(line) <= 80 for line in lines)
    body = [line for line in lines if line.startswith(("digits_resnet.pt ", f"{pruned.name} "))]
    assert len(body) == 2, p.stderr  # one line per model, named by its last path component
    assert f"×{rows[1]['macs_ratio']:.2f}" in body[1]  # the MACs ratio beside the MACs


def test_short_labels_keep_paths_apart():
    from explainfix_cli.cli.next_steps import short_labels

    assert short_labels(["/a/x/model.pt", "/b/y/model.pt", "/tmp/half/"]) == ["x/model.pt", "y/model.pt", "half"]
    assert short_labels(["fixtures/digits_resnet.pt", "/tmp/h7/half"]) == ["digits_resnet.pt", "half"]


# --------------------------------------------------------------------------- 7, 8: figures people read
def test_spectra_figure_names_layers_labels_the_colour_bar_and_says_what_the_spectra_are():
    import torch
    import torchvision

    from explainfix_cli.explain.figures import SPECTRA_LEGEND, spectra_figure
    from explainfix_cli.explain.spectra import explain_model

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    report = explain_model(model)
    fig = spectra_figure(report)
    heatmaps = [ax for ax in fig.get_axes() if ax.get_xlabel() == "Spatial layer"]
    names = [layer.name for layer in report.without_saliency.layers]
    shown = [t.get_text() for ax in heatmaps for t in ax.get_xticklabels()]
    assert heatmaps and set(shown) <= set(names) and "layer1.0.conv1" in shown  # names, not indices 0–N
    colour_bars = [child for ax in fig.get_axes() for child in ax.child_axes]  # inset in the corner
    bars = [ax.get_xlabel() for ax in colour_bars]
    assert bars and all(label == "share of the layer's e^d" for label in bars)  # the colour bar says what it shows
    texts = [t.get_text() for t in fig.texts]
    assert SPECTRA_LEGEND in texts and all(s in SPECTRA_LEGEND for s in ("e^d:", "e^1:", "e^0:"))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep of the fixture (2 budgets, timed): its sweep.json."""
    import json

    out = tmp_path_factory.mktemp("sweep") / "s"
    p = run_cli("sweep", *FIXTURE_ARGS, "--data", CALIB, "--eval-data", REPO / "fixtures" / "digits" / "eval",
                "--targets", "3x,2x", "--bench-iters", "5", "-o", out)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "sweep.json").read_text())


def test_tradeoff_latency_panel_is_ordered_by_its_axis_with_the_measured_range(swept):
    from matplotlib.container import ErrorbarContainer

    from explainfix_cli.explain.figures import tradeoff_figure

    assert all(p["latency_p10_ms"] <= p["latency_ms"] <= p["latency_p90_ms"] for p in swept["points"])
    fig = tradeoff_figure(swept)
    macs_ax, lat_ax = fig.get_axes()[:2]
    for ax in (macs_ax, lat_ax):
        line = next(ln for ln in ax.get_lines() if ln.get_linestyle() == "-")
        xs = list(line.get_xdata())
        assert xs == sorted(xs)  # joined along the x axis, not in budget order
    assert sorted(line.get_xdata()) == sorted(p["latency_ms"] for p in swept["points"])
    bars = [c for c in lat_ax.containers if isinstance(c, ErrorbarContainer)]
    assert bars and bars[0].has_xerr  # the measured p10–p90 range
    assert "p10–p90" in lat_ax.get_xlabel()
    title = fig._suptitle.get_text()
    assert "digits_resnet.pt" in title and "eval (300 images)" in title and "one-shot" in title


def test_tradeoff_title_says_fine_tuned_or_distilled(swept):
    from explainfix_cli.explain.figures import tradeoff_figure

    tuned = {**swept, "finetune_epochs": 2, "distill": None}
    assert "fine-tuned 2 epochs per point" in tradeoff_figure(tuned)._suptitle.get_text()
    distilled = {**swept, "finetune_epochs": 1, "distill": {"temperature": 4.0, "alpha": 0.9}}
    assert "distilled 1 epoch per point" in tradeoff_figure(distilled)._suptitle.get_text()


# ------------------------------------------------- 11: a library's pretrained weights, from its own cache
def _torchvision_cache(root):
    """A torch hub cache (TORCH_HOME) holding resnet18's DEFAULT weights file under torchvision's name for it:
    seeded random weights, saved by the test (nothing is downloaded)."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    (root / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), root / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1])
    return model


def test_torchvision_pretrained_from_its_cache(tmp_path):
    import json

    import torch

    from explainfix_cli import load

    original = _torchvision_cache(tmp_path / "torch")
    out = tmp_path / "p"
    env = {"TORCH_HOME": str(tmp_path / "torch")}
    p = run_cli("prune", "torchvision:resnet18", "--target-macs", "2x", "--input-size", "64", "-o", out, "--json", env=env)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert report["macs_after"] < report["macs_before"]
    assert any("pretrained weights of torchvision:resnet18" in n for n in report["load_notes"])
    assert report["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the weights' own transforms
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["arch"]["module"] == "torchvision.models" and recipe["arch"]["name"] == "resnet18"
    pruned = load(out)  # an allow-listed architecture: no --trust-code
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the weights came from the cache file: the unpruned layers are the original's
        assert torch.equal(pruned.fc.bias, original.fc.bias)
    assert pruned(x).shape == (1, 1000)


def test_uncached_pretrained_weights_are_one_line_exit_2(tmp_path):
    p = run_cli("info", "torchvision:resnet18", env={"TORCH_HOME": str(tmp_path / "empty")})
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "not in torchvision's cache" in lines[0] and "does not download" in lines[0]
    p = run_cli("info", "timm:resnet18", env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")})
    assert p.returncode == 2
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "timm/resnet18.a1_in1k" in lines[0] and "not in the Hugging Face Hub cache" in lines[0]


def test_timm_pretrained_from_the_hub_cache(tmp_path):
    """A Hugging Face Hub cache laid out as huggingface_hub writes it (refs/main → snapshots/COMMIT/FILE)."""
    import json

    import timm
    import torch
    from safetensors.torch import save_file

    repo = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, repo / "snapshots" / "0123abcd" / "model.safetensors")
    p = run_cli("info", "timm:resnet18", "--input-size", "64", "--json",
                env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")})
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["params"] == sum(t.numel() for t in model.parameters())
    assert info["arch"]["module"] == "timm" and info["arch"]["kwargs"]["model_name"] == "resnet18"


def test_arch_shorthand_without_model_points_to_model(tmp_path):
    p = run_cli("prune", "--arch", "timm:resnet18", "--target-macs", "2x")
    assert p.returncode == 2
    assert "pass it as MODEL:" in p.stderr and "prune timm:resnet18 …" in p.stderr
