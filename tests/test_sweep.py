"""sweep: several budgets from one saliency pass; a table, JSON and tradeoff.png; every point exact."""
import json

import pytest
from PIL import Image

from explainfix_cli.core import gradients as grad
from explainfix_cli.jobs import BenchOptions, DataSpec, ModelSpec, Run, sweep_job
from explainfix_cli.jobs.sweep import parse_targets
from explainfix_cli import load

from conftest import FIXTURE_ARCH, FIXTURE_ARGS, FIXTURE_CALIB, FIXTURE_PT, FIXTURES, invoke

EVAL = FIXTURES / "digits" / "eval"


def test_sweep_scores_once_and_meets_every_budget(tmp_path, monkeypatch):
    passes = []
    real = grad.weight_saliency

    def counting(*args, **kwargs):  # count the calibration passes (the real function still runs)
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("explainfix_cli.prune.scoring.grad.weight_saliency", counting)
    job = sweep_job(ModelSpec(FIXTURE_PT, FIXTURE_ARCH), DataSpec(FIXTURE_CALIB, "32"), "2x,3x,4x",
                    eval_data=EVAL, timing=BenchOptions(bench_iters=5), save_models=True, out=tmp_path / "sw",
                    run=Run(device="cpu"))
    assert len(passes) == 1
    r = job.report
    assert [p["target"] for p in r["points"]] == ["2x", "3x", "4x"]
    for p in r["points"]:
        assert p["within_tolerance"] and abs(p["macs_kept"] - p["requested"]) <= 0.02 * p["requested"], p
        assert p["self_check"] == "passed" and p["latency_ms"] > 0 and 0 <= p["accuracy"] <= 1
    kept = [p["macs_kept"] for p in r["points"]]
    assert kept == sorted(kept, reverse=True)
    files = {f.name for f in job.out.iterdir()}
    assert {"sweep.json", "sweep.md", "tradeoff.png", "points"} <= files
    with Image.open(job.out / "tradeoff.png") as im:
        assert im.size[0] > 800  # two panels: MACs and latency
    md = (job.out / "sweep.md").read_text()
    assert "| 3x |" in md and "| original |" in md
    # each saved point reloads and has the MACs the table says
    from explainfix_cli.core.model import count_macs
    import torch

    model = load(job.out / "points" / "3x", trust_code=True)
    assert count_macs(model, torch.randn(1, 1, 32, 32)) == r["points"][1]["macs"]


def test_sweep_cli_json_and_one_shot_table(tmp_path):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--targets", "2x,0.4", "--no-bench", "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert [p["target"] for p in report["points"]] == ["2x", "0.4"] and report["saliency_passes"] == 1
    assert report["original"]["latency_ms"] is None and (tmp_path / "s" / "tradeoff.png").is_file()
    assert "accuracy (pruned)" not in (tmp_path / "s" / "sweep.md").read_text()  # one-shot: one accuracy column


def test_sweep_with_distillation_per_point(tmp_path):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--eval-data", EVAL, "--targets", "2x",
                 "--finetune-epochs", "1", "--distill", "--no-bench", "-o", tmp_path / "s", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    (point,) = report["points"]
    assert point["finetune"]["options"]["objective"] == "distillation" and report["distill"]["alpha"] == 0.9
    assert "accuracy (pruned)" in (tmp_path / "s" / "sweep.md").read_text()


@pytest.mark.parametrize("targets, message", [
    ("", "--targets needs at least one budget"),
    ("2x,2x", "a budget is given twice"),
    ("2x,abc", "--targets must be a fraction in (0, 1) or a factor"),
    ("2x,1.5", "a fraction kept must be in (0, 1)"),
])
def test_bad_targets(tmp_path, targets, message):
    res = invoke("sweep", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--targets", targets, "-o", tmp_path / "x")
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "x").exists()


def test_parse_targets_orders_by_size():
    assert [label for label, _ in parse_targets("10x,2x,0.3")] == ["2x", "0.3", "10x"]
