"""Segmentation and detection models as people have them (segmentation-models-pytorch, ultralytics YOLO,
torchvision segmentation; random init from packaged configs, no downloads): each prunes to what an
independently zeroed copy computes, on every output tensor, and its ONNX export computes what the pruned
torch model does. CI runs one smp and one YOLO model; ``EXPLAINFIX_ZOO=all`` runs every name below.
"""
import copy
import json
import os

import pytest
import torch
from conftest import cli_json, invoke, write_image_folder, zero_smallest_kernels

from explainfix_cli.core.model import output_tensors
from explainfix_cli.deploy.onnx import export_onnx
from explainfix_cli.io.arch import arch_spec, build_arch
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model

MODELS = {  # --arch as a user types it, --arch-kwargs
    "smp:Unet": {"encoder_name": "resnet18", "classes": 3},
    "smp:FPN": {"encoder_name": "resnet18", "classes": 3},
    "smp:DeepLabV3Plus": {"encoder_name": "resnet18", "classes": 3},
    "ultralytics:yolov8n": {},
    "ultralytics:yolo11n": {},
    "ultralytics:yolov8n-seg": {},
    "torchvision:segmentation.fcn_resnet50": {"num_classes": 4, "weights_backbone": None},
    "torchvision:segmentation.deeplabv3_mobilenet_v3_large": {"num_classes": 4, "weights_backbone": None},
}
FAST = ["smp:Unet", "ultralytics:yolov8n"]
FULL = os.environ.get("EXPLAINFIX_ZOO") == "all"
LIBRARY = {"smp": "segmentation_models_pytorch", "ultralytics": "ultralytics", "torchvision": "torchvision"}


def _build(arch: str) -> torch.nn.Module:
    pytest.importorskip(LIBRARY[arch.partition(":")[0]])
    lib, _, name = arch.partition(":")
    if lib == "torchvision":  # a submodule factory: torchvision.models.segmentation.NAME
        sub, _, fn = name.rpartition(".")
        spec = {"kind": "import", "module": f"torchvision.models.{sub}", "name": fn, "kwargs": MODELS[arch]}
    else:
        spec = arch_spec(arch, MODELS[arch])
    torch.manual_seed(0)
    return build_arch(spec, trusted=False).eval()  # allow-listed: what a shared directory may rebuild


def _close(got, want, rel=1e-4) -> bool:
    return float((got - want).abs().max()) <= rel * max(1.0, float(want.abs().max()))


@pytest.mark.parametrize("arch", list(MODELS) if FULL else FAST)
def test_dense_model_prunes_exactly(arch, tmp_path):
    model = _build(arch)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    original = copy.deepcopy(model)
    r = prune_model(model, PruneOptions(pct=90, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert r.check.passed and r.channels_removed > 0, (arch, r.nothing_removed)
    zeroed = copy.deepcopy(original)
    zero_smallest_kernels(zeroed, r.filters_zeroed)
    with torch.no_grad():
        want, got = output_tensors(zeroed(x)), output_tensors(model(x))
    assert len(got) == len(want) and all(g.shape == w.shape for g, w in zip(got, want))
    assert all(_close(g, w) for g, w in zip(got, want)), arch
    res = export_onnx(model, x, tmp_path / "m.onnx")
    assert res.dynamic_batch
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, 64, 64)  # another batch size than the export's example
    with torch.no_grad():
        want = output_tensors(model(x3))
    outs = sess.run(None, {sess.get_inputs()[0].name: x3.numpy()})
    assert len(outs) == len(want)
    assert all(torch.allclose(torch.from_numpy(o), w, rtol=1e-3, atol=1e-3) for o, w in zip(outs, want)), arch


@pytest.mark.parametrize("arch", ["smp:Unet", "smp:FPN", "smp:DeepLabV3Plus"])
def test_smp_budget_with_saliency_from_an_unlabelled_folder(arch):
    """Dense (N, C, H, W) logits: saliency uses the model's own top class per pixel; a 2x budget holds."""
    model = _build(arch)
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    unlabelled = torch.full((2,), -1)
    r = prune_model(model, example=x[:1], batches=lambda: [(x[:2], unlabelled), (x[2:], unlabelled)], check_inputs=x,
                    options=PruneOptions(target_macs="2x"))
    assert r.check.passed and r.channels_removed > 0 and r.budget["within_tolerance"], arch


def test_smp_through_the_cli_from_an_unlabelled_folder(tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    from safetensors.torch import save_file

    model = _build("smp:Unet")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "unet.safetensors")
    data = write_image_folder(tmp_path / "imgs", 8, size=64, labelled=False)
    out = tmp_path / "p"
    doc = cli_json("prune", tmp_path / "unet.safetensors", "--arch", "smp:Unet", "--arch-kwargs", json.dumps(MODELS["smp:Unet"]),
                   "--data", data, "--input-size", "64", "--target-macs", "2x", "-o", out)
    assert doc["check"]["status"] == "passed" and doc["criterion"] == "channel" and doc["budget"]["within_tolerance"]
    r = invoke("export", out, "-o", tmp_path / "x")  # the directory rebuilds (smp is allow-listed), ONNX checked
    assert r.exit_code == 0, r.output


# ---------------------------------------------------------------------------------------------- YOLO
def _yolo_checkpoint(path):
    """What ultralytics' trainer saves: the module itself in half precision, EMA weights beside it."""
    model = _build("ultralytics:yolov8n")
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5)
    torch.save({"epoch": 3, "model": copy.deepcopy(model).half(), "ema": ema.half(), "updates": 10,
                "train_args": {"imgsz": 64}}, path)
    return model, ema


def test_yolo_training_checkpoint_prunes_and_exports(tmp_path):
    pytest.importorskip("ultralytics")
    _yolo_checkpoint(tmp_path / "best.pt")
    data = write_image_folder(tmp_path / "imgs", 8, size=64, labelled=False)
    out = tmp_path / "p"
    doc = cli_json("prune", tmp_path / "best.pt", "--trust-pickle", "--data", data, "--input-size", "64",
                   "--target-macs", "2x", "-o", out)  # stdout is the one document although ultralytics logs to stdout
    assert "using the module under 'ema' of the checkpoint" in doc["load_notes"] and doc["weights_dtype"] == "float16"
    assert doc["check"]["status"] == "passed" and doc["budget"]["within_tolerance"] and doc["channels_removed"] > 0
    assert not doc["opaque"]  # the Detect head is analysed too (its anchor cache is not left in the model)
    doc = cli_json("export", out, "--trust-pickle", "-o", tmp_path / "x")
    assert doc["export"]["dynamic_batch"] and doc["export"]["path"] == str(tmp_path / "x" / "model.onnx")


def test_yolo_state_dict_with_the_arch_shorthand(tmp_path):
    pytest.importorskip("ultralytics")
    from safetensors.torch import save_file

    model = _build("ultralytics:yolov8n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    out = tmp_path / "p"
    r = invoke("prune", tmp_path / "w.safetensors", "--arch", "ultralytics:yolov8n", "--input-size", "64",
               "--target-macs", "2x", "--criterion", "magnitude", "-o", out, "--json")
    assert r.exit_code == 0, r.output
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["arch"]["name"] == "DetectionModel" and recipe["arch"]["kwargs"]["cfg"] == "yolov8n.yaml"
    r = invoke("info", out)  # rebuilt without any flag: an allow-listed library and a packaged config
    assert r.exit_code == 0, r.output
    recipe["arch"]["kwargs"]["cfg"] = str(tmp_path / "evil.yaml")  # a shared recipe pointing at a file
    (out / "explainfix.json").write_text(json.dumps(recipe))
    r = invoke("info", out)
    assert r.exit_code == 2 and "packaged model names" in r.output and "Traceback" not in r.output


def test_arch_shorthand_picks_the_task_model():
    assert arch_spec("ultralytics:yolo11n-seg", {})["name"] == "SegmentationModel"
    assert arch_spec("ultralytics:yolov8s-pose.yaml", {"nc": 1})["kwargs"] == {"cfg": "yolov8s-pose.yaml", "verbose": False, "nc": 1}
    with pytest.raises(Exception, match="packaged model name"):
        arch_spec("ultralytics:../x", {})


def test_yolo_compress_with_distillation(tmp_path):
    """The CI step on a detector: prune to 2x, distil (the Detect head's training-mode maps), export,
    verify; no top-1 rows or gates for a model without (N, classes) logits."""
    pytest.importorskip("ultralytics")
    from safetensors.torch import save_file

    model = _build("ultralytics:yolov8n")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    data = write_image_folder(tmp_path / "imgs", 8, size=64, labelled=False)
    args = ["compress", tmp_path / "w.safetensors", "--arch", "ultralytics:yolov8n", "--data", data, "--input-size", "64",
            "--target-macs", "2x", "--no-bench"]
    r = invoke(*args, "--min-agreement", "0.9", "-o", tmp_path / "bad")
    assert r.exit_code == 2 and "not (N, classes) logits" in r.output and not (tmp_path / "bad").exists()
    doc = cli_json(*args, "--distill", "--finetune-epochs", "1", "-o", tmp_path / "c")
    assert doc["passed"] and [g["name"] for g in doc["gates"]] == ["ONNX verification"]
    assert doc["finetune"]["options"]["objective"] == "distillation" and doc["finetune"]["epochs"][0]["loss"] > 0
    assert doc["compressed"]["agreement"] is None and (tmp_path / "c" / "model.onnx").is_file()
    assert "top-1 agreement" not in (tmp_path / "c" / "summary.md").read_text()


@pytest.mark.parametrize("name, where, why", [
    # SSD passes an ImageList to its anchor generator (before the NMS of its post-processing is reached)
    ("ssdlite320_mobilenet_v3_large", "anchor_generator", "ImageList"),
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "rpn", "ImageList"),
])
def test_torchvision_detectors_are_refused_naming_the_place(name, where, why):
    """Their own forward post-processes with data-dependent ops (NMS) or passes non-tensors between modules:
    refused with the op, the place and the reason, the model untouched — never a crash, never wrong."""
    import re

    import torchvision as tv

    from explainfix_cli.core.errors import UnsupportedOp

    model = tv.models.get_model(name, weights=None, weights_backbone=None, num_classes=5).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 128, 128)
    with pytest.raises(UnsupportedOp) as e:
        prune_model(model, PruneOptions(pct=70, criterion="magnitude"), example=x[:1], check_inputs=x)
    assert e.value.where == where and re.search(why, e.value.message), e.value.message
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
