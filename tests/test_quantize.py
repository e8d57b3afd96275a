"""`explainfix quantize` (#26): real onnxruntime quantization, real sessions, real files, the CLI as a subprocess.

The fixture (a torchvision-BasicBlock ResNet on digits) is the main model; a random-init MobileNetV2 (depthwise) and a
torchvision LR-ASPP segmentation model cover the other kinds. Bounds: on the fixture's 300 held-out digits INT8 agrees
with FP32 on ≥ 98 % of the top-1 classes (it measures 100 % on an AVX-512 VNNI CPU).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURE_ARGS, FIXTURE_CALIB, FIXTURES, REPO, run_cli, snapshot

EVAL = FIXTURES / "digits" / "eval"
FAST = ["--no-bench", "--calib-images", "32"]
AGREEMENT_BOUND = 0.98


def _onnx(path: Path):
    import onnx

    return onnx.load(str(path))


@pytest.fixture(scope="module")
def fixture_int8(tmp_path_factory) -> Path:
    """The fixture checkpoint quantized once by the CLI (exported to FP32 first), timed with few iterations."""
    out = tmp_path_factory.mktemp("q") / "int8"
    r = run_cli("quantize", *FIXTURE_ARGS, "--data", FIXTURE_CALIB, "--eval-data", EVAL, "--calib-images", "64",
                "--bench-iters", "10", "--min-agreement", str(AGREEMENT_BOUND), "--max-accuracy-drop", "2", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc == json.loads((out / "report.json").read_text())
    return out


@pytest.fixture(scope="module")
def noise_eval(tmp_path_factory) -> Path:
    """Unlabeled Gaussian noise the fixture was never calibrated for: INT8 and FP32 disagree there."""
    path = tmp_path_factory.mktemp("noise") / "noise.npz"
    np.savez(path, x=(2 * np.random.default_rng(0).standard_normal((200, 1, 32, 32))).astype("float32"))
    return path


def test_int8_file_holds_qdq_nodes_with_int8_per_channel_weights(fixture_int8):
    assert sorted(p.name for p in fixture_int8.iterdir()) == ["model.int8.onnx", "model.onnx", "report.json"]
    m = _onnx(fixture_int8 / "model.int8.onnx")
    ops = [n.op_type for n in m.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    int8 = {t.name: t for t in m.graph.initializer if t.data_type == 3}  # INT8
    assert len(int8) >= 11  # every conv and the linear layer
    inits = {t.name: t for t in m.graph.initializer}
    conv1 = next(n for n in m.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "conv1.weight_quantized")
    assert conv1.input[0] in int8
    assert list(inits[conv1.input[1]].dims) == [16]  # one scale per output channel
    meta = {p.key: p.value for p in m.metadata_props}
    q = json.loads(meta["explainfix.quantization"])
    assert q["format"] == "QDQ" and q["per_channel"] and q["activation_type"] in ("uint8", "int8")
    assert json.loads(meta["explainfix.isa"])["name"] and meta["explainfix.command"] == "quantize"
    assert "explainfix.preprocessing" in meta  # the FP32 model's provenance travels along
    import onnxruntime as ort

    out = ort.InferenceSession(str(fixture_int8 / "model.int8.onnx")).run(None, {"input": np.zeros((2, 1, 32, 32), "float32")})
    assert out[0].shape == (2, 10)


def test_int8_agrees_with_fp32_and_the_report_says_how_it_was_measured(fixture_int8):
    r = json.loads((fixture_int8 / "report.json").read_text())
    c = r["comparison"]
    assert c["samples"] == 300 and c["classifier"] and c["agreement"] >= AGREEMENT_BOUND
    assert c["accuracy_int8_ci"][0] <= c["accuracy_int8"] <= c["accuracy_int8_ci"][1]
    assert c["outputs"][0]["snr_db"] > 15 and c["outputs"][0]["cosine"] > 0.99
    assert [g["passed"] for g in r["gates"]] == [True, True]
    s = r["settings"]
    assert s["recommended"]["reduce_range"] == s["reduce_range"]  # onnxruntime's prescription for this CPU
    bench = r["bench"]
    assert bench["cpu"] and bench["isa"] == s["isa"]["name"] and bench["onnxruntime"]
    assert [b["batch_size"] for b in bench["batches"]] == [1, 8]
    for b in bench["batches"]:
        lo, hi = b["speedup_range"]
        assert lo <= b["speedup"] <= hi and b["faster"] == (lo > 1)
    says_fp32 = "deploy the FP32 model.onnx" in bench["verdict"]
    assert says_fp32 == (not any(b["faster"] for b in bench["batches"]))
    assert r["calib_samples"] == 64 and r["float_layers"] == [{"name": "node_mean", "op_type": "ReduceMean", "module": None,
                                                              "why": "onnxruntime does not quantize ReduceMean"}]


def test_a_failing_gate_exits_1_with_the_numbers_and_writes_nothing(fixture_int8, noise_eval, tmp_path):
    out = tmp_path / "o"
    r = run_cli("quantize", fixture_int8 / "model.onnx", "--data", FIXTURE_CALIB, "--eval-data", noise_eval, *FAST,
                "--min-agreement", "1.0", "--max-float", "0", "-o", out)
    assert r.returncode == 1, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if ln.startswith("error:"))
    assert line.startswith("error: gate failed: top-1 agreement 0.") and "(needs ≥ 1, --min-agreement)" in line
    assert "200 samples" in line and not out.exists()


def test_accuracy_control_keeps_the_most_sensitive_layers_in_float(fixture_int8, noise_eval, tmp_path):
    """In-process API; the gate plain INT8 misses on data it was not calibrated for."""
    import explainfix_cli as ef

    job = ef.quantize(fixture_int8 / "model.onnx", FIXTURE_CALIB, eval_data=noise_eval, out=tmp_path / "o", bench=False,
                      min_agreement=0.98, calib_images=32, max_float=10)
    ac = job.report["accuracy_control"]
    assert ac is not None and ac["sensitivity"] and ac["tried"]
    counts = [t["float_layers"] for t in ac["tried"]]
    assert counts[:8] == list(range(1, min(8, len(counts)) + 1))  # fewest first
    if ac["passed"]:  # the fewest that passed, and every count tried below it failed
        k = len(ac["kept_float"])
        assert k == min(t["float_layers"] for t in ac["tried"] if t["passed"])
        assert not any(t["passed"] for t in ac["tried"] if t["float_layers"] < k)
    ranked = [s["name"] for s in ac["sensitivity"]]
    assert ac["kept_float"] == ranked[:len(ac["kept_float"])]  # the most sensitive ones
    floats = {n["name"]: n for n in job.report["float_layers"]}
    assert set(ac["kept_float"]) <= set(floats) and all(floats[n]["why"].startswith("accuracy control") for n in ac["kept_float"])
    assert job.passed == ac["passed"] == job.written
    if job.passed:  # on this CPU it passes: the written file keeps those layers' weights in float
        m = _onnx(tmp_path / "o" / "model.int8.onnx")
        kept = {n.name: n for n in m.graph.node if n.name in ac["kept_float"]}
        types = {t.name: t.data_type for t in m.graph.initializer}
        assert all(types.get(n.input[1]) == 1 for n in kept.values())  # FLOAT weights
        assert job.report["comparison"]["agreement"] >= 0.98


@pytest.mark.parametrize("n", [1, 5, 8, 9, 40, 64, 263])
def test_float_counts_finds_the_fewest_passing_count_in_few_tries(n):
    from explainfix_cli.deploy.sensitivity import LINEAR_TRIES, float_counts

    for need in [1, 3, 8, 9, 17, 33, 48, 64, 200, 263]:
        tried: list[int] = []

        def passed(k: int) -> bool:
            tried.append(k)
            return k >= need

        got = float_counts(n, passed)
        assert got == (need if need <= n else None), (n, need, tried)
        assert tried[:LINEAR_TRIES] == list(range(1, min(n, need, LINEAR_TRIES) + 1))  # 1, 2, 3, … first
        assert len(tried) <= LINEAR_TRIES + 2 * max(1, n).bit_length()  # then doubling and bisection, not n tries
        assert max(tried) <= n
    # not monotone: still a count that passed, never one that failed
    tried = []
    assert float_counts(64, lambda k: tried.append(k) or k in (16, 40, 64)) in (16, 40, 64)


def test_keep_float_pins_a_layer_by_its_module_name(fixture_int8, tmp_path):
    out = tmp_path / "o"
    r = run_cli("quantize", fixture_int8 / "model.onnx", "--data", FIXTURE_CALIB, *FAST, "--keep-float", "layers.0.conv1",
                "--activations", "int8", "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    pinned = [n for n in doc["float_layers"] if n["why"] == "--keep-float"]
    assert [n["module"] for n in pinned] == ["layers.0.conv1"]
    assert "model.onnx" not in {p.name for p in out.iterdir()}  # MODEL was the .onnx: nothing re-exported
    assert doc["settings"]["activation_type"] == "int8" and doc["settings"]["chosen_by"]["activations"] == "--activations"
    assert any("calibration data" in n for n in doc["notes"])  # no --eval-data: it says so
    m = _onnx(out / "model.int8.onnx")
    types = {t.name: t.data_type for t in m.graph.initializer}
    assert types["layers.0.conv1.weight"] == 1 and types["layers.0.conv2.weight_quantized"] == 3
    # float means float inputs too: the residual stream the skip-add reads quantized reaches the pinned conv unquantized
    made_by = {o: n.op_type for n in m.graph.node for o in n.output}
    conv = next(n for n in m.graph.node if n.name == pinned[0]["name"])
    assert made_by.get(conv.input[0]) not in (None, "DequantizeLinear"), made_by.get(conv.input[0])
    shared = [n for n in m.graph.node if conv.input[0] in n.input]
    assert len(shared) > 1 and any(n.op_type == "QuantizeLinear" for n in shared)  # the others still read it quantized
    import onnx

    onnx.checker.check_model(m)


@pytest.mark.parametrize("case", ["no-data", "int4", "already-quantized", "unreadable", "too-few-images", "unlabeled-accuracy"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, fixture_int8, noise_eval, tmp_path):
    fp32 = fixture_int8 / "model.onnx"
    small = tmp_path / "small" / "c"
    small.mkdir(parents=True)
    for p in sorted((FIXTURE_CALIB / "0").iterdir())[:3]:
        (small / p.name).write_bytes(p.read_bytes())
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    data = ["--data", FIXTURE_CALIB]
    args, says = {
        "no-data": ([fp32], "--data"),
        "int4": ([fp32, *data, "--type", "int4"], "int8 only"),
        "already-quantized": ([fixture_int8 / "model.int8.onnx", *data], "already quantized"),
        "unreadable": ([bad, *data], "cannot read"),
        "too-few-images": ([fp32, "--data", small.parent], "at least 8"),
        "unlabeled-accuracy": ([fp32, *data, "--eval-data", noise_eval, "--max-accuracy-drop", "1"], "unlabeled"),
    }[case]
    before = snapshot(tmp_path)
    r = run_cli("quantize", *args, "-o", tmp_path / "o")
    assert r.returncode == 2, r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and says in errors[0], r.stderr
    assert snapshot(tmp_path) == before


def test_settings_follow_the_isa_onnxruntime_prescribes():
    from explainfix_cli.deploy.isa import detect_isa, recommended_settings
    from explainfix_cli.deploy.quantize import QuantizeOptions, resolve_settings

    vnni = detect_isa("model name : Xeon\nflags : sse avx2 avx512f avx512_vnni amx_int8\n\n", "x86_64")
    avx2 = detect_isa("model name : Core i7-4770\nflags : sse avx2 fma\n\n", "x86_64")
    arm = detect_isa("processor : 0\nFeatures : fp asimd asimddp\nCPU part : 0xd0c\n\n", "aarch64")
    assert (vnni.name, vnni.vnni, vnni.amx) == ("avx512-vnni+amx", True, True)
    assert (avx2.name, avx2.vnni) == ("avx2", False)
    assert arm.name == "arm64" and arm.arm
    assert recommended_settings(vnni)["reduce_range"] is False and recommended_settings(avx2)["reduce_range"] is True
    assert recommended_settings(arm)["activation_type"] == "int8"
    s = resolve_settings(QuantizeOptions(), avx2)
    assert s["reduce_range"] is True and s["activation_type"] == "uint8" and s["isa"]["cpu_model"] == "Core i7-4770"
    assert resolve_settings(QuantizeOptions(reduce_range=False), avx2)["reduce_range"] is False
    assert detect_isa().name  # this machine's, whatever it is


def test_wilson_interval():
    from explainfix_cli.deploy.int8_check import wilson

    lo, hi = wilson(298, 300)
    assert lo == pytest.approx(0.9760, abs=1e-3) and hi == pytest.approx(0.9982, abs=1e-3)
    assert wilson(0, 0) is None and wilson(10, 10)[1] == pytest.approx(1.0)


def test_api_imports_without_typer_or_rich(fixture_int8, tmp_path):
    code = ("import sys, explainfix_cli as ef; "
            f"j = ef.quantize({str(fixture_int8 / 'model.onnx')!r}, {str(FIXTURE_CALIB)!r}, out={str(tmp_path / 'o')!r}, "
            "bench=False, calib_images=16, calibrate='entropy'); "
            "assert j.passed and j.written and j.report['settings']['calibrate'] == 'entropy'; "
            "assert 'typer' not in sys.modules and 'rich' not in sys.modules; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_depthwise_classifier_and_segmentation_model(tmp_path):
    """A random-init MobileNetV2 (depthwise) and torchvision LR-ASPP (dense output; onnxruntime leaves hardswish float)."""
    import torch
    import torchvision

    import explainfix_cli as ef

    torch.manual_seed(0)
    mnv2 = tmp_path / "mnv2.pt"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).state_dict(), mnv2)
    job = ef.quantize(mnv2, FIXTURE_CALIB, arch="torchvision.models:mobilenet_v2",
                      arch_kwargs='{"num_classes": 10, "width_mult": 0.5}', input_size="32", out=tmp_path / "m",
                      bench=False, calib_images=16)
    c = job.report["comparison"]
    assert job.written and c["classifier"] and c["agreement"] > 0.8 and job.report["weights_int8"] >= 50
    seg = tmp_path / "lraspp.pt"
    kwargs = {"num_classes": 3, "weights_backbone": None}
    torch.save(torchvision.models.segmentation.lraspp_mobilenet_v3_large(**kwargs).state_dict(), seg)
    job = ef.quantize(seg, FIXTURE_CALIB, eval_data=FIXTURE_CALIB, arch="torchvision.models.segmentation:lraspp_mobilenet_v3_large",
                      arch_kwargs=json.dumps(kwargs), input_size="32", out=tmp_path / "s", bench=False, calib_images=16,
                      min_agreement=0.9)
    c = job.report["comparison"]
    assert job.written and c["dense"] and not c["classifier"]
    assert c["outputs"][0]["pixel_agreement"] == c["agreement"] >= 0.9 and c["outputs"][0]["shape"] == [3, 32, 32]
    left = {n["op_type"] for n in job.report["float_layers"]}
    assert "HardSigmoid" in left and "ReduceMean" in left  # hardswish (HardSigmoid·x) and the SE pooling stay float
    names = [n["name"] for n in job.report["float_layers"]]  # every node named (the optimiser's own came unnamed)
    assert all(names) and len(set(names)) == len(names), names


def test_float_nodes_read_float_values_even_where_onnxruntime_folded_an_activation(tmp_path):
    """Every node in float but the first convolution: the model must be the FP32 model up to that one layer's
    quantization. onnxruntime folds MobileNetV2's ReLU6 into the first conv's output pair (the tensor keeps the
    Clip's name, unclamped); a float reader of that tensor must get the Clip back, not the raw conv output."""
    import onnx
    import torch
    import torchvision

    import explainfix_cli as ef
    from explainfix_cli.deploy.quantize import MOVE_OPS

    torch.manual_seed(0)
    mnv2 = tmp_path / "mnv2.pt"
    torch.save(torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.5).state_dict(), mnv2)
    kw = dict(arch="torchvision.models:mobilenet_v2", arch_kwargs='{"num_classes": 10, "width_mult": 0.5}',
              input_size="32", bench=False, calib_images=16)
    plain = ef.quantize(mnv2, FIXTURE_CALIB, out=tmp_path / "plain", **kw)
    m = _onnx(tmp_path / "plain" / "model.int8.onnx")
    ops = {n.name: n.op_type for n in m.graph.node}
    first = next(n.name for n in m.graph.node if n.op_type == "Conv")
    floats = [n for n in plain.report["quantized_nodes"] if ops[n] not in MOVE_OPS and n != first]
    job = ef.quantize(tmp_path / "plain" / "model.onnx", FIXTURE_CALIB, out=tmp_path / "f", keep_float=floats,
                      bench=False, calib_images=16)
    m = _onnx(tmp_path / "f" / "model.int8.onnx")
    onnx.checker.check_model(m)
    made_by = {o: n for n in m.graph.node for o in n.output}
    readers = [n for n in m.graph.node if n.name in floats and made_by.get(n.input[0]) is not None
               and made_by[n.input[0]].name.endswith("_float")]
    assert readers and all(made_by[n.input[0]].op_type == "Clip" for n in readers)  # the ReLU6, put back in float
    out = job.report["comparison"]["outputs"][0]
    assert out["cosine"] > 0.999 and out["snr_db"] > plain.report["comparison"]["outputs"][0]["snr_db"], out
    # the ranking compares a folded tensor clamped, as its float reader will see it (unclamped: about -3 dB, so
    # every conv after a ReLU6 ranked last)
    ranked = ef.quantize(tmp_path / "plain" / "model.onnx", FIXTURE_CALIB, out=tmp_path / "r", min_agreement=1.0,
                         max_float=1, bench=False, calib_images=16).report["accuracy_control"]["sensitivity"]
    readers = {n.name for n in readers}
    assert readers & {r["name"] for r in ranked} and min(r["snr_in_db"] for r in ranked) > 10, ranked


def test_a_float_node_gets_back_the_float_constant_it_shares_with_a_quantized_one(tmp_path):
    """Two Muls by one constant, the second kept in float: onnxruntime stores the constant once, in int8, and both
    read its dequantized copy; feed_float gives the float node the float constant back."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from explainfix_cli.deploy.qdq import feed_float

    rng = np.random.default_rng(0)
    c = rng.uniform(0.3, 3.0, (1, 8, 1, 1)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "c"], ["a"], name="first"), helper.make_node("Mul", ["a", "c"], ["y"], name="second")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 4, 4])], [numpy_helper.from_array(c, "c")])
    src = tmp_path / "f.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), src)
    xs = [rng.standard_normal((1, 8, 4, 4)).astype("float32") for _ in range(8)]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(xs)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"x": x}

    dst = tmp_path / "q.onnx"
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, nodes_to_exclude=["second"])
    m = onnx.load(str(dst))
    second = next(n for n in m.graph.node if n.name == "second")
    made_by = {o: n.op_type for n in m.graph.node for o in n.output}
    assert made_by.get(second.input[1]) == "DequantizeLinear"  # onnxruntime: the shared int8 copy
    assert feed_float(m, ["second"], onnx.load(str(src)).graph) >= 1
    inits = {t.name: t for t in m.graph.initializer}
    assert second.input[1] == "c" and inits["c"].data_type == TensorProto.FLOAT
    assert made_by.get(second.input[0]) not in ("DequantizeLinear",)  # and the float activation
    onnx.checker.check_model(m)
    y = ort.InferenceSession(m.SerializeToString()).run(None, {"x": xs[0]})[0]
    assert y.shape == (1, 8, 4, 4) and np.isfinite(y).all()


def test_same_seed_same_int8_file(fixture_int8, tmp_path):
    """Deterministic for a seed: the calibration subset and order, hence every scale, repeat (in-process API)."""
    import explainfix_cli as ef
    from tests.conftest import sha256

    from explainfix_cli.core.errors import BadInput
    from explainfix_cli.deploy.quantize import QuantizeOptions
    from explainfix_cli.jobs import BenchOptions

    # the timing as loose keywords or as the jobs' BenchOptions: the same run
    timing = [{"bench": False}, {"timing": BenchOptions(bench=False)}, {"bench": False}]
    runs = [ef.quantize(fixture_int8 / "model.onnx", FIXTURE_CALIB, out=tmp_path / f"o{k}", calib_images=16, seed=seed,
                        **timing[k]) for k, seed in enumerate((3, 3, 4))]
    for both in ({"timing": BenchOptions(threads=4), "threads": 2}, {"options": QuantizeOptions(), "seed": 3}):
        with pytest.raises(BadInput, match="not both"):
            ef.quantize(fixture_int8 / "model.onnx", FIXTURE_CALIB, out=tmp_path / "o9", **both)
    assert not (tmp_path / "o9").exists()
    digests = [sha256(tmp_path / f"o{k}" / "model.int8.onnx") for k in range(3)]
    assert digests[0] == digests[1] != digests[2]
    assert runs[0].report["settings"]["seed"] == 3
