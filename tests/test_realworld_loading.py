"""Checkpoints as people have them (#13 item 4/5/8/9): real files written the way each tool writes them."""
import argparse
import json

import pytest
import torch
import torchvision as tv

from explainfix_cli.io.arch import arch_spec, build_arch
from explainfix_cli.io.checkpoint import load_model

from conftest import FIXTURE_ARGS, FIXTURE_CALIB, cli_json, invoke


def test_state_dict_metadata_is_kept_mnasnet(tmp_path):
    """MNASNet reads its version from the state dict's _metadata; a plain dict() copy crashed on load."""
    m = tv.models.mnasnet0_5(num_classes=10).eval()
    torch.save(m.state_dict(), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", "torchvision:mnasnet0_5", {"num_classes": 10})
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(loaded.model(x), m(x))


@pytest.mark.parametrize("prefix", ["model.", "module.", "_orig_mod.", "net."])
def test_wrapper_prefix_stripped_when_the_keys_fit(tmp_path, prefix):
    m = tv.models.resnet18(num_classes=10).eval()
    torch.save({"state_dict": {prefix + k: v for k, v in m.state_dict().items()}, "epoch": 3}, tmp_path / "l.ckpt")
    loaded = load_model(tmp_path / "l.ckpt", "torchvision:resnet18", {"num_classes": 10})
    assert torch.equal(loaded.model.fc.weight, m.fc.weight)


def test_timm_train_checkpoint_prefers_ema_and_says_so(tmp_path):
    """timm's train.py saves args (an argparse.Namespace) and state_dict_ema beside state_dict."""
    plain, ema = tv.models.resnet18(num_classes=10), tv.models.resnet18(num_classes=10)
    torch.save({"epoch": 9, "arch": "resnet18", "args": argparse.Namespace(lr=0.1, model="resnet18"),
                "state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, tmp_path / "last.pth.tar")
    loaded = load_model(tmp_path / "last.pth.tar", "torchvision:resnet18", {"num_classes": 10})
    assert torch.equal(loaded.model.fc.weight, ema.fc.weight)
    assert loaded.notes == ["using the EMA weights (state_dict_ema) of the checkpoint"]


def test_trust_pickle_honours_arch_kwargs(tmp_path):
    """A pickled dict holding a state_dict (refused without --trust-pickle) still uses --arch-kwargs."""
    from models_for_tests import StateHolder

    m = tv.models.resnet18(num_classes=7)
    torch.save(StateHolder(model=m.state_dict()), tmp_path / "h.pt")
    loaded = load_model(tmp_path / "h.pt", "torchvision:resnet18", {"num_classes": 7}, trust_pickle=True)
    assert loaded.model.fc.out_features == 7


def test_arch_shorthands(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = arch_spec("timm:resnet26d", {"num_classes": 10})
    assert spec == {"kind": "import", "module": "timm", "name": "create_model",
                    "kwargs": {"model_name": "resnet26d", "pretrained": False, "num_classes": 10}}
    assert type(build_arch(spec, trusted=False)).__name__ == "ResNet"  # allow-listed: loads from a shared dir
    assert arch_spec("torchvision:resnet18", {})["module"] == "torchvision.models"
    assert arch_spec("smp:Unet", {"encoder_name": "resnet18"})["kwargs"] == {"encoder_weights": None, "encoder_name": "resnet18"}


def test_unknown_timm_name_is_bad_input(tmp_path):
    torch.save(tv.models.resnet18().state_dict(), tmp_path / "m.pt")
    res = invoke("info", tmp_path / "m.pt", "--arch", "timm:no_such_net", "--input-size", "32")
    assert res.exit_code == 2 and "Unknown model (no_such_net)" in res.output, res.output


@pytest.mark.parametrize("mean, ok", [(["0.5"], True), (["0.4,0.5,0.6"], False), (["0.1", "x"], False)])
def test_mean_as_a_comma_list(tmp_path, mean, ok):
    """The fixture has 1 input channel: one value fits, three are a clear error, a non-number is a usage error."""
    args = [a for m in mean for a in ("--mean", m)]
    res = invoke("prune", *FIXTURE_ARGS, "--pct", "50", "--data", FIXTURE_CALIB, *args, "-o", tmp_path / "o", "--json")
    if ok:
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / "o" / "explainfix.json").read_text())["preprocessing"]["mean"] == [0.5]
    else:
        assert res.exit_code == 2 and ("3 mean/std values" in res.output or "is not a number" in res.output), res.output
        assert not (tmp_path / "o").exists()


def test_folder_classes_the_head_lacks_give_no_accuracy_row(tmp_path):
    """A 3-class head with the fixture's 10 class folders: saliency pseudo-labels the unknown classes and
    the report shows no accuracy (it would mean nothing), only agreement."""
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    torch.save(net.state_dict(), tmp_path / "m.pt")
    (tmp_path / "arch.py").write_text(
        "from torch import nn\n\ndef Net():\n    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),"
        " nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))\n")
    res = invoke("prune", tmp_path / "m.pt", "--arch", f"{tmp_path / 'arch.py'}:Net", "--input-size", "16", "--pct", "50",
                 "--data", FIXTURE_CALIB, "-o", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["accuracy_before"] is None and report["agreement"] is not None


# -------------------------------------------------------------------------------- weight dtypes (#13 item 4)
def _stored(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k).dtype for k in f.keys()}


def _half_resnet(tmp_path, dtype, bn_fp32=False):
    m = tv.models.resnet18(num_classes=10).eval()
    sd = {k: (v.to(dtype) if v.is_floating_point() and not (bn_fp32 and ("bn" in k or "downsample.1" in k)) else v)
          for k, v in m.state_dict().items()}
    torch.save(sd, tmp_path / "half.pt")
    return tmp_path / "half.pt", sd


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_checkpoint_is_written_in_its_dtype(tmp_path, dtype):
    src, sd = _half_resnet(tmp_path, dtype)
    out = tmp_path / "p"
    doc = cli_json("prune", src, "--arch", "torchvision:resnet18", "--arch-kwargs", '{"num_classes": 10}', "--input-size", "32",
                   "--pct", "70", "--criterion", "magnitude", "-o", out)
    name = str(dtype).removeprefix("torch.")
    assert doc["weights_dtype"] == name and doc["check"]["status"] == "passed"
    assert any(f"stored as {name}" in n and f"writes them as {name}" in n for n in doc["load_notes"])
    stored = _stored(out / "model.safetensors")
    assert {d for d in stored.values() if d.is_floating_point} == {dtype}
    assert stored["bn1.num_batches_tracked"] == torch.int64
    # a pruned fp16 directory stays fp16 through the next command
    again = tmp_path / "again"
    r = invoke("prune", out, "--pct", "20", "--criterion", "magnitude", "-o", again)
    assert r.exit_code == 0, r.output
    assert {d for d in _stored(again / "model.safetensors").values() if d.is_floating_point} == {dtype}


def test_mixed_dtypes_keep_each_tensor_and_dtype_flag_overrides(tmp_path):
    src, sd = _half_resnet(tmp_path, torch.float16, bn_fp32=True)
    args = [src, "--arch", "torchvision:resnet18", "--arch-kwargs", '{"num_classes": 10}', "--input-size", "32",
            "--pct", "50", "--criterion", "magnitude"]
    r = invoke("prune", *args, "-o", tmp_path / "keep")
    assert r.exit_code == 0, r.output
    stored = _stored(tmp_path / "keep" / "model.safetensors")
    assert stored["conv1.weight"] == torch.float16 and stored["bn1.running_var"] == torch.float32
    assert stored["layer1.0.bn1.weight"] == torch.float32 and stored["fc.weight"] == torch.float16
    r = invoke("prune", *args, "--dtype", "float32", "-o", tmp_path / "f32")
    assert r.exit_code == 0, r.output
    assert {d for d in _stored(tmp_path / "f32" / "model.safetensors").values() if d.is_floating_point} == {torch.float32}
    r = invoke("prune", *args, "--dtype", "float8", "-o", tmp_path / "bad")
    assert r.exit_code == 2 and "--dtype must be keep, float32, float16, bfloat16" in r.output
    assert not (tmp_path / "bad").exists()


def test_training_checkpoint_holding_a_half_module(tmp_path):
    """ultralytics (and others) save {"model": <the module, half precision>, "ema": …, "epoch": …}."""
    m = tv.models.resnet18(num_classes=10).eval()
    torch.save({"epoch": 5, "model": m.half(), "ema": None, "train_args": {"imgsz": 32}}, tmp_path / "best.pt")
    out = tmp_path / "p"
    r = invoke("prune", tmp_path / "best.pt", "--input-size", "32", "--pct", "60", "--criterion", "magnitude", "-o", out, "--json")
    assert r.exit_code == 2 and "--trust-pickle" in r.output  # a pickle: refused unless trusted
    doc = cli_json("prune", tmp_path / "best.pt", "--trust-pickle", "--input-size", "32", "--target-macs", "2x", "--criterion",
                   "magnitude", "-o", out)
    assert "using the module under 'model' of the checkpoint" in doc["load_notes"] and doc["weights_dtype"] == "float16"
    assert doc["check"]["status"] == "passed" and doc["params_after"] < doc["params_before"]
    again = load_model(out, trust_pickle=True)  # the directory rebuilds from the same checkpoint file
    x = torch.randn(2, 3, 32, 32)
    assert again.model.conv1.weight.dtype == torch.float32 and again.dtypes["conv1.weight"] == "float16"
    assert again.model(x).shape == (2, 10)


# ---------------------------------------------------------------------- save_pretrained directories (#13 item 4)
def _timm_pretrained(tmp_path, **kwargs):
    timm = pytest.importorskip("timm")
    from timm.models._hub import save_for_hf

    m = timm.create_model("resnet18d", pretrained=False, num_classes=7, in_chans=1, **kwargs).eval()
    d = tmp_path / "hf"
    save_for_hf(m, str(d), safe_serialization=True)
    return m, d


def test_timm_save_pretrained_directory(tmp_path):
    m, d = _timm_pretrained(tmp_path)
    loaded = load_model(d)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), m(x))
    assert loaded.source_format == "pretrained" and "timm: resnet18d" in loaded.notes[0]
    assert loaded.preprocessing["input_size"] == [224, 224] and loaded.preprocessing["channels"] == 1
    out = tmp_path / "p"
    doc = cli_json("prune", d, "--input-size", "64", "--target-macs", "2x", "--criterion", "magnitude", "-o", out)
    assert doc["check"]["status"] == "passed" and doc["budget"]["achieved"] <= 0.51
    recipe = json.loads((out / "explainfix.json").read_text())
    assert recipe["arch"]["kwargs"]["model_name"] == "resnet18d" and recipe["arch"]["kwargs"]["in_chans"] == 1
    assert recipe["source"]["format"] == "pretrained"
    assert load_model(out).model(x).shape == (2, 7)  # the output directory reloads without flags


def test_save_pretrained_config_is_checked_like_a_recipe(tmp_path):
    _, d = _timm_pretrained(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["model_args"]["checkpoint_path"] = "/etc/passwd"  # a shipped config asking to read a file
    (d / "config.json").write_text(json.dumps(config))
    r = invoke("info", d)
    assert r.exit_code == 2 and "checkpoint_path" in r.output and "Traceback" not in r.output
    (d / "config.json").write_text(json.dumps({"hidden_size": 8}))
    r = invoke("info", d)
    assert r.exit_code == 2 and "names no architecture" in r.output
    r = invoke("info", d, "--arch", "timm:resnet18d", "--arch-kwargs", '{"num_classes": 7, "in_chans": 1}', "--input-size", "64")
    assert r.exit_code == 0, r.output  # --arch wins over the config


def test_smp_style_config_needs_the_library(tmp_path):
    """segmentation-models-pytorch writes {"_model_class": "Unet", ...}; without smp installed the error says so."""
    pytest.importorskip("timm")
    _, d = _timm_pretrained(tmp_path)
    (d / "config.json").write_text(json.dumps({"_model_class": "Unet", "encoder_name": "resnet18", "classes": 2}))
    r = invoke("info", d)
    try:
        import segmentation_models_pytorch  # noqa: F401
    except ImportError:
        assert r.exit_code == 2 and "cannot import segmentation_models_pytorch" in r.output
    else:
        assert r.exit_code == 2 and "do not fit the architecture" in r.output  # smp's Unet, the timm weights
