"""Checkpoints as people have them (#13 item 4/5/8/9): real files written the way each tool writes them."""
import argparse
import json

import pytest
import torch
import torchvision as tv

from explainfix_cli.io.arch import arch_spec, build_arch
from explainfix_cli.io.checkpoint import load_model

from conftest import FIXTURE_ARGS, FIXTURE_CALIB, invoke


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
