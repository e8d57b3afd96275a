"""explainfix_cli.checkpoint: every MODEL input of the contract, on real files (real torch, no mocks)."""
from __future__ import annotations

import os
import pickle
import stat
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from explainfix_cli.io.arch import arch_spec, build_arch, parse_arch_kwargs
from explainfix_cli.io.checkpoint import sniff_format
from explainfix_cli.io.model_dir import load
from explainfix_cli.io.recipe import RECIPE_FORMAT
from explainfix_cli.io.checkpoint import load_model
from explainfix_cli.io.model_dir import save_model_dir
from explainfix_cli.io.outdir import write_output_dir
from explainfix_cli.core.errors import BadInput

from conftest import Payload, sha256


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def fixture_sd(fixture_pt) -> dict[str, torch.Tensor]:
    return torch.load(fixture_pt, map_location="cpu", weights_only=True)


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].shape == b[k].shape, k
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def small_net() -> nn.Module:
    """Only torch.nn classes, so a pickled copy unpickles anywhere."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))



def no_temp_siblings(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# ---------------------------------------------------------------------------- weights + --arch
def test_plain_state_dict(tmp_path, fixture_pt, fixture_arch, fixture_sd):
    lm = load_model(fixture_pt, fixture_arch, {"num_classes": 10})
    assert lm.source_format == "state_dict"
    assert lm.source_sha256 == sha256(fixture_pt)
    assert not lm.model.training
    assert lm.recipe.arch["kind"] == "file" and lm.recipe.arch["name"] == "DigitsResNet"
    assert lm.recipe.arch["sha256"] == sha256(Path(fixture_arch.rpartition(":")[0]))
    assert_same_state(lm.model.state_dict(), fixture_sd)
    with torch.no_grad():
        assert lm.model(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_wrapped_state_dict(tmp_path, key, fixture_arch, fixture_sd):
    path = tmp_path / "wrapped.pth"
    torch.save({key: fixture_sd, "epoch": 7, "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}, path)
    lm = load_model(path, fixture_arch)
    assert lm.source_format == "state_dict"
    assert_same_state(lm.model.state_dict(), fixture_sd)


@pytest.mark.parametrize("wrap", [None, "state_dict"])
def test_dataparallel_prefix(tmp_path, wrap, fixture_arch, fixture_sd):
    base = build_arch(arch_spec(fixture_arch, {}))
    base.load_state_dict(fixture_sd)
    dp_sd = nn.DataParallel(base).state_dict()
    assert all(k.startswith("module.") for k in dp_sd)
    path = tmp_path / "dp.bin"
    torch.save(dp_sd if wrap is None else {wrap: dp_sd}, path)
    lm = load_model(path, fixture_arch)
    assert_same_state(lm.model.state_dict(), fixture_sd)


def test_safetensors_weights_with_arch(tmp_path, fixture_arch, fixture_sd):
    path = tmp_path / "weights.safetensors"
    save_file(fixture_sd, str(path))
    lm = load_model(path, fixture_arch)
    assert lm.source_format == "safetensors"
    assert_same_state(lm.model.state_dict(), fixture_sd)


def test_safetensors_weights_without_arch_refused(tmp_path, fixture_sd):
    path = tmp_path / "weights.safetensors"
    save_file(fixture_sd, str(path))
    with pytest.raises(BadInput, match="weights only") as e:
        load_model(path)
    assert "--arch" in e.value.hint


def test_torchvision_arch_with_kwargs(tmp_path):
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(1)
    ref = tv.models.resnet18(num_classes=10)
    path = tmp_path / "r18.pt"
    torch.save(ref.state_dict(), path)
    lm = load_model(path, "torchvision.models:resnet18", {"num_classes": 10})
    assert lm.recipe.arch == {"kind": "import", "module": "torchvision.models", "name": "resnet18", "kwargs": {"num_classes": 10}}
    assert lm.model.fc.weight.shape == (10, 512)
    assert_same_state(lm.model.state_dict(), ref.state_dict())
    # without the kwargs, the 1000-class head does not fit and the error names it
    with pytest.raises(BadInput, match=r"shape mismatch \(2\): fc\.weight \(10, 512\)≠\(1000, 512\)"):
        load_model(path, "torchvision.models:resnet18")


def test_arch_from_a_python_file(tmp_path):
    src = tmp_path / "my_arch.py"
    src.write_text(
        "from torch import nn\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, width=4):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, width, 3)\n"
        "    def forward(self, x):\n"
        "        return self.conv(x)\n"
    )
    torch.manual_seed(0)
    weights = {"conv.weight": torch.randn(5, 3, 3, 3), "conv.bias": torch.randn(5)}
    torch.save(weights, tmp_path / "tiny.pt")
    lm = load_model(tmp_path / "tiny.pt", f"{src}:Tiny", {"width": 5})
    assert lm.recipe.arch["kind"] == "file" and lm.recipe.arch["path"] == str(src.resolve())
    assert_same_state(lm.model.state_dict(), weights)
    with pytest.raises(BadInput, match="does not exist"):
        load_model(tmp_path / "tiny.pt", f"{tmp_path / 'nope.py'}:Tiny")
    with pytest.raises(BadInput, match="not a callable"):
        load_model(tmp_path / "tiny.pt", f"{src}:Missing")
    with pytest.raises(BadInput, match="MODULE:CALLABLE"):
        load_model(tmp_path / "tiny.pt", "no_colon_here")
    with pytest.raises(BadInput, match="cannot import"):
        load_model(tmp_path / "tiny.pt", "surely_not_a_module_xyz:f")


def test_arch_kwargs_parsing():
    assert parse_arch_kwargs('{"num_classes": 10}') == {"num_classes": 10}
    assert parse_arch_kwargs(None) == {}
    with pytest.raises(BadInput, match="not valid JSON"):
        parse_arch_kwargs("{num_classes: 10}")
    with pytest.raises(BadInput, match="JSON object"):
        parse_arch_kwargs("[10]")


# ----------------------------------------------------------------- weights that do not fit
def test_missing_keys_listed(tmp_path, fixture_arch, fixture_sd):
    sd = {k: v for k, v in fixture_sd.items() if not k.startswith("layers.2.")}
    dropped = [k for k in fixture_sd if k.startswith("layers.2.")]
    torch.save(sd, tmp_path / "m.pt")
    with pytest.raises(BadInput) as e:
        load_model(tmp_path / "m.pt", fixture_arch)
    msg = e.value.message
    assert f"missing ({len(dropped)}): " in msg
    assert all(k in msg for k in dropped[:3]) and dropped[3] not in msg and "…" in msg
    assert "unexpected" not in msg and "arch" in e.value.hint


def test_unexpected_keys_listed(tmp_path, fixture_arch, fixture_sd):
    sd = dict(fixture_sd)
    sd["extra.weight"] = torch.zeros(2)
    torch.save(sd, tmp_path / "u.pt")
    with pytest.raises(BadInput, match=r"unexpected \(1\): extra\.weight") as e:
        load_model(tmp_path / "u.pt", fixture_arch)
    assert "missing" not in e.value.message


def test_shape_mismatch_listed(tmp_path, fixture_pt, fixture_arch):
    with pytest.raises(BadInput, match=r"shape mismatch \(2\): fc\.weight \(10, 64\)≠\(5, 64\), fc\.bias \(10,\)≠\(5,\)"):
        load_model(fixture_pt, fixture_arch, {"num_classes": 5})


def test_wrong_architecture(fixture_pt):
    pytest.importorskip("torchvision")
    with pytest.raises(BadInput, match="do not fit the architecture") as e:
        load_model(fixture_pt, "torchvision.models:resnet18", {"num_classes": 10})
    assert "missing (" in e.value.message and "unexpected (" in e.value.message


def test_no_state_dict_inside(tmp_path, fixture_arch):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(BadInput, match="no state_dict"):
        load_model(tmp_path / "meta.pt", fixture_arch)


# ------------------------------------------------------------------------------ pickled modules
def test_pickled_module_refused_then_trusted(tmp_path):
    net = small_net()
    path = tmp_path / "whole.pt"
    torch.save(net, path)
    before = sha256(path)
    with pytest.raises(BadInput) as e:
        load_model(path)
    assert "run code" in e.value.message and "refused" in e.value.message
    assert "--trust-pickle" in e.value.hint and "state_dict()" in e.value.hint and "--arch" in e.value.hint
    lm = load_model(path, trust_pickle=True)
    assert lm.source_format == "pickle" and lm.recipe.arch["kind"] == "pickle"
    assert isinstance(lm.model, nn.Sequential) and not lm.model.training
    assert_same_state(lm.model.state_dict(), net.state_dict())
    assert sha256(path) == before


def _malicious_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {}
    files["torch-zip"] = tmp_path / "evil_zip.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": Payload(marker)}, files["torch-zip"])
    files["torch-legacy"] = tmp_path / "evil_legacy.pth"
    torch.save(Payload(marker), files["torch-legacy"], _use_new_zipfile_serialization=False)
    files["pickle-p2"] = tmp_path / "evil_p2.bin"
    files["pickle-p2"].write_bytes(pickle.dumps(Payload(marker), protocol=2))
    files["pickle-p5"] = tmp_path / "evil_p5.pt"
    files["pickle-p5"].write_bytes(pickle.dumps(Payload(marker), protocol=5))
    files["pickle-p0"] = tmp_path / "evil_p0.pt"
    files["pickle-p0"].write_bytes(pickle.dumps(Payload(marker), protocol=0))
    return files


def test_malicious_pickle_never_runs(tmp_path, fixture_arch):
    marker = tmp_path / "pwned"
    files = _malicious_files(tmp_path, marker)
    # control: the payload really does run code when unpickled
    control = tmp_path / "control_marker"
    pickle.loads(pickle.dumps(Payload(control)))
    assert control.exists()
    for kind, path in files.items():
        before = sha256(path)
        for arch in (None, fixture_arch):
            with pytest.raises(BadInput) as e:
                load_model(path, arch)
            assert str(path) in e.value.message, kind
        assert not marker.exists(), f"{kind}: unpickling ran code"
        assert sha256(path) == before


def test_malicious_pickle_refusal_mentions_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious_files(tmp_path, marker)["torch-zip"]
    with pytest.raises(BadInput, match="run code"):
        load_model(path)
    assert not marker.exists()


# ------------------------------------------------------------------- compiled archives refused
def test_torchscript_refused_by_name(tmp_path):
    net = small_net().eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 8, 8)), path)
    assert sniff_format(path) == "torchscript"
    with pytest.raises(BadInput, match="TorchScript") as e:
        load_model(path)
    assert "state_dict" in e.value.hint
    with pytest.raises(BadInput, match="TorchScript archive: .* cannot analyse"):
        load_model(path, trust_pickle=True, purpose="analyse")


def test_torch_export_refused_by_name(tmp_path):
    net = small_net().eval()
    path = tmp_path / "exported.pt2"
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 8, 8),)), path)
    assert sniff_format(path) == "torch-export"
    with pytest.raises(BadInput, match="torch.export archive"):
        load_model(path)
    renamed = tmp_path / "exported.pt"
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(BadInput, match="torch.export archive"):
        load_model(renamed, "torchvision.models:resnet18")


# --------------------------------------------------------------------------------- corrupt files
def _corrupt_files(tmp_path: Path, fixture_pt: Path, fixture_sd) -> dict[str, Path]:
    from safetensors.torch import save

    raw = fixture_pt.read_bytes()
    st = save(fixture_sd)
    rng = torch.Generator().manual_seed(0)
    noise = bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())
    flipped = bytearray(raw)
    with zipfile.ZipFile(fixture_pt) as z:  # damage the bytes of one tensor record, keep the zip structure
        info = max(z.infolist(), key=lambda i: i.file_size)
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    flipped[start + 100 : start + 164] = bytes(64)
    contents = {
        "random.pt": b"\x7f" + noise,
        "random_x80.pt": b"\x80" + noise,
        "empty.pth": b"",
        "text.bin": b"not a checkpoint\n" * 20,
        "truncated_half.pt": raw[: len(raw) // 2],
        "truncated_tail.pt": raw[:-16],
        "damaged_record.pt": bytes(flipped),
        "random.safetensors": noise,
        "empty.safetensors": b"",
        "truncated.safetensors": st[: len(st) // 2],
    }
    out = {}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
        out[name] = tmp_path / name
    return out


def test_corrupt_files_are_bad_input(tmp_path, fixture_pt, fixture_arch, fixture_sd):
    for name, path in _corrupt_files(tmp_path, fixture_pt, fixture_sd).items():
        before = sha256(path)
        with pytest.raises(BadInput) as e:
            load_model(path, fixture_arch)
        assert str(path) in e.value.message, name
        assert sha256(path) == before, name


def test_damaged_tensor_record_detected(tmp_path, fixture_pt, fixture_arch, fixture_sd):
    """A bit-rotted download keeps the zip structure; torch.load alone would hand back garbage weights."""
    path = _corrupt_files(tmp_path, fixture_pt, fixture_sd)["damaged_record.pt"]
    with pytest.raises(BadInput, match="corrupt"):
        load_model(path, fixture_arch)


def test_missing_model_and_directory_without_recipe(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    (tmp_path / "d").mkdir()
    with pytest.raises(BadInput, match="not an explainfix directory"):
        load_model(tmp_path / "d")


# -------------------------------------------------------------------------- explainfix directories
def test_explainfix_dir_round_trip(tmp_path, fixture_pt, fixture_arch, fixture_sd):
    lm = load_model(fixture_pt, fixture_arch)
    pre = {"input_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5], "resize": "bilinear"}
    recipe = lm.recipe.record({"command": "test"}, frozen=["conv1.weight"], preprocessing=pre)
    out = tmp_path / "saved"
    assert save_model_dir(lm.model, recipe, out, extra={"report.json": {"ok": True}}) == out
    assert sorted(p.name for p in out.iterdir()) == ["arch", "explainfix.json", "model.safetensors", "report.json"]
    assert no_temp_siblings(out) == []

    again = load_model(out, trust_code=True)
    assert again.source_format == "explainfix"
    assert again.preprocessing == pre and again.recipe.frozen == ("conv1.weight",)
    assert_same_state(again.model.state_dict(), fixture_sd)
    assert not again.model.conv1.weight.requires_grad and again.model.fc.weight.requires_grad
    assert_same_state(load(out, trust_code=True).state_dict(), fixture_sd)
    assert_same_state(load(out / "model.safetensors", trust_code=True).state_dict(), fixture_sd)
    assert_same_state(load_model(out / "model.safetensors", trust_code=True).model.state_dict(), fixture_sd)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(lm.model(x), again.model(x))

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == RECIPE_FORMAT and meta["arch"].endswith(":DigitsResNet")


def test_explainfix_dir_with_damaged_recipe(tmp_path, fixture_pt, fixture_arch):
    lm = load_model(fixture_pt, fixture_arch)
    out = save_model_dir(lm.model, lm.recipe, tmp_path / "saved")
    (out / "explainfix.json").write_text("{not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        load_model(out)
    (out / "explainfix.json").write_text('{"format": "something/else"}')
    with pytest.raises(BadInput, match="not an explainfix recipe"):
        load_model(out)


def test_explainfix_dir_from_pickle_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(small_net(), path)
    lm = load_model(path, trust_pickle=True)
    out = save_model_dir(lm.model, lm.recipe, tmp_path / "saved")
    with pytest.raises(BadInput, match="pickled"):
        load_model(out)
    assert_same_state(load_model(out, trust_pickle=True).model.state_dict(), lm.model.state_dict())


# ------------------------------------------------------------------------------ atomic writing
def test_write_output_dir_success_leaves_no_temp(tmp_path):
    out = tmp_path / "out"
    write_output_dir(out, {"a.json": {"x": 1}, "b.txt": "hi", "sub/c.bin": b"\x00\x01"})
    assert (out / "a.json").read_text().strip() == '{\n  "x": 1\n}'
    assert (out / "b.txt").read_text() == "hi"
    assert (out / "sub" / "c.bin").read_bytes() == b"\x00\x01"
    assert no_temp_siblings(out) == []
    # the folder gets the usual permissions (umask), not mkdtemp's 0700
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask


def test_write_output_dir_failure_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TypeError):
        write_output_dir(out, {"a.txt": "first", "b.json": {"bad": object()}})
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_write_output_dir_refuses_existing_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(BadInput, match="exists") as e:
        write_output_dir(out, {"a.txt": "new"})
    assert "--force" in e.value.hint
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"
    assert no_temp_siblings(out) == []

    # --force does not replace a directory holding a user's own files
    with pytest.raises(BadInput, match="did not write"):
        write_output_dir(out, {"a.txt": "new"}, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    # a failed forced write over an explainfix output keeps the old content
    old = tmp_path / "old"
    write_output_dir(old, {"report.json": {"v": 1}})
    with pytest.raises(TypeError):
        write_output_dir(old, {"report.json": "new", "summary.md": {"bad": object()}}, force=True)
    assert sorted(p.name for p in old.iterdir()) == ["report.json"] and '"v": 1' in (old / "report.json").read_text()
    assert no_temp_siblings(old) == []

    write_output_dir(old, {"report.json": "new"}, force=True)
    assert sorted(p.name for p in old.iterdir()) == ["report.json"] and (old / "report.json").read_text() == "new"
    assert no_temp_siblings(old) == []


def test_write_output_dir_existing_file_and_empty_dir(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(BadInput, match="not a directory"):
        write_output_dir(f, {"a.txt": "new"})
    assert f.read_text() == "x"
    empty = tmp_path / "empty"
    empty.mkdir()
    write_output_dir(empty, {"a.txt": "new"})
    assert (empty / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_output_dir_ships_its_architecture_file_and_reloads_after_a_move(tmp_path):
    """A file.py architecture travels inside the directory (arch/…), so the directory still loads when
    copied elsewhere and the original file is gone; an edited copy is refused by its sha256."""
    import shutil

    from explainfix_cli.io.model_dir import load, save_model_dir

    from explainfix_cli.io.checkpoint import load_model

    arch_src = tmp_path / "net.py"
    shutil.copy("fixtures/digits_resnet.py", arch_src)
    loaded = load_model("fixtures/digits_resnet.pt", f"{arch_src}:DigitsResNet")
    out = save_model_dir(loaded.model, loaded.recipe, tmp_path / "dir")
    assert (out / "arch" / "net.py").is_file()
    moved = tmp_path / "elsewhere" / "dir"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    arch_src.unlink()
    model = load(moved, trust_code=True)
    ref = loaded.model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    with open(moved / "arch" / "net.py", "a") as f:
        f.write("\n# edited\n")
    with pytest.raises(BadInput, match="sha256"):
        load(moved, trust_code=True)
