"""bench: onnxruntime latency on a real exported file, and ratios side by side."""
import pytest
import torch
from torch import nn

from explainfix_cli.deploy.bench import BenchTarget, bench_interleaved, bench_onnx, compare_bench, model_cost
from explainfix_cli.core.errors import BadInput
from explainfix_cli.deploy.onnx import export_onnx
from explainfix_cli.core.model import count_macs, count_params

SHAPE = (3, 16, 16)


def cnn(width):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4)).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    models = {"wide": cnn(16), "narrow": cnn(8)}
    for name, model in models.items():
        export_onnx(model, torch.randn(2, *SHAPE), out / f"{name}.onnx")
    return models, out


def test_bench_latency_is_positive_and_ordered(files):
    models, out = files
    res = bench_onnx(out / "wide.onnx", SHAPE, batch_size=3, threads=1, warmup=2, iters=15,
                     cost=model_cost(models["wide"], SHAPE), label="wide")
    assert 0 < res.min_ms <= res.p50_ms <= res.p90_ms and res.mean_ms > 0
    assert res.input_shapes == [[3, 3, 16, 16]] and res.iters == 15 and res.threads == 1
    assert res.params == count_params(models["wide"])
    assert res.macs == count_macs(models["wide"], torch.zeros(1, *SHAPE)) > 0


def test_compare_bench_ratios(files):
    models, out = files
    wide_cost, narrow_cost = model_cost(models["wide"], SHAPE), model_cost(models["narrow"], SHAPE)
    runs = [bench_onnx(out / "wide.onnx", SHAPE, warmup=1, iters=10, cost=wide_cost, label="a"),
            bench_onnx(out / "wide.onnx", SHAPE, warmup=1, iters=10, cost=wide_cost, label="a again"),
            bench_onnx(out / "narrow.onnx", SHAPE, warmup=1, iters=10, cost=narrow_cost, label="narrow"),
            bench_onnx(out / "narrow.onnx", SHAPE, warmup=1, iters=10)]
    rows = compare_bench(runs)
    assert [r["label"] for r in rows[:3]] == ["a", "a again", "narrow"]
    assert rows[0]["latency_ratio"] == rows[0]["macs_ratio"] == rows[0]["params_ratio"] == 1.0
    assert rows[1]["macs_ratio"] == 1.0 and rows[1]["params_ratio"] == 1.0  # same model
    assert 0 < rows[1]["latency_ratio"] < 20
    assert rows[2]["macs_ratio"] == pytest.approx(narrow_cost.macs / wide_cost.macs) and rows[2]["macs_ratio"] < 1
    assert rows[2]["params_ratio"] == pytest.approx(narrow_cost.params / wide_cost.params)
    assert rows[3]["macs_ratio"] is None and rows[3]["latency_ratio"] > 0  # no cost given
    assert compare_bench([]) == []


def test_interleaved_rounds_pair_up_into_ratios(files):
    models, out = files
    wide_cost = model_cost(models["wide"], SHAPE)
    runs = bench_interleaved([BenchTarget(out / "wide.onnx", SHAPE, wide_cost, "wide"),
                              BenchTarget(out / "narrow.onnx", SHAPE, None, "narrow")],
                             threads=1, warmup=1, iters=12, rounds=4)
    assert [len(r.round_p50_ms) for r in runs] == [4, 4] and [r.iters for r in runs] == [12, 12]
    rows = compare_bench(runs)
    paired = sorted(n / w for n, w in zip(runs[1].round_p50_ms, runs[0].round_p50_ms))
    assert rows[1]["latency_ratio"] == pytest.approx((paired[1] + paired[2]) / 2)  # median of same-round ratios
    assert rows[1]["latency_ratio_min"] == pytest.approx(paired[0]) and rows[1]["latency_ratio_max"] == pytest.approx(paired[-1])
    assert rows[0]["latency_ratio"] == 1.0 and rows[0]["params"] == wide_cost.params
    with pytest.raises(BadInput, match="rounds"):
        bench_interleaved([BenchTarget(out / "wide.onnx", SHAPE)], rounds=0)


def test_bench_bad_arguments(files):
    _, out = files
    with pytest.raises(BadInput, match="iters"):
        bench_onnx(out / "wide.onnx", SHAPE, iters=0)
    with pytest.raises(BadInput, match="takes 1 inputs"):
        bench_onnx(out / "wide.onnx", [SHAPE, SHAPE])
    with pytest.raises(BadInput, match="cannot run"):
        bench_onnx(out / "wide.onnx", (3, 16))
