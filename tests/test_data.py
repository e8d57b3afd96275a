"""explainfix_cli.data: calibration folders / .npz, channel conversion, resize, normalisation, errors.

Real image files written with PIL into tmp_path; labels compared with torchvision's ImageFolder."""
from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from torch import nn

from explainfix_cli.io.data import random_inputs
from explainfix_cli.io.data import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, load_calibration, load_image, parse_input_size, resolve_preprocessing
from explainfix_cli.core.errors import BadInput

GRAY32 = Preprocessing(input_size=(32, 32), channels=1, mean=(0.5,), std=(0.5,))
RGB32 = Preprocessing(input_size=(32, 32), channels=3, mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD))


def conv_model(in_channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def gray(value: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.full((h, w), value, dtype=np.uint8)


def rgb(r: int, g: int, b: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.broadcast_to(np.array([r, g, b], dtype=np.uint8), (h, w, 3)).copy()


# --------------------------------------------------------------------------------------- layouts
def test_class_folders_match_imagefolder(tmp_path):
    tv_datasets = pytest.importorskip("torchvision.datasets")
    root = tmp_path / "calib"
    # names chosen so that sorted order differs from creation order and from numeric order
    for cls, n in [("zebra", 2), ("10", 1), ("2", 3), ("Apple", 2), ("apple", 1)]:
        for i in range(n):
            write_png(root / cls / f"img{i}.png", gray(10 * i))
    (root / "2" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("top-level junk is ignored")
    calib = load_calibration(root, GRAY32)
    ref = tv_datasets.ImageFolder(str(root))
    assert calib.kind == "class-folders" and calib.labeled
    assert calib.classes == ref.classes
    assert {c: i for i, c in enumerate(calib.classes)} == ref.class_to_idx
    assert [(str(f), y) for f, y in zip(calib.files, calib.labels)] == ref.samples
    x, y = next(calib.batches(64))
    assert x.shape == (9, 1, 32, 32) and x.dtype == torch.float32
    assert y.tolist() == [s[1] for s in ref.samples] and y.dtype == torch.long


def test_fixture_calib_is_class_folders(fixture_calib, input_size):
    calib = load_calibration(fixture_calib, GRAY32)
    assert calib.kind == "class-folders" and len(calib) == 100
    assert calib.classes == [str(i) for i in range(10)]
    assert sorted(set(calib.labels)) == list(range(10))
    assert calib.num_batches(32) == 4 and calib.num_batches(32, 2) == 2
    batches = list(calib.batches(32, 2))
    assert [b[0].shape for b in batches] == [(32, 1, input_size, input_size)] * 2
    d = calib.describe()
    assert d["samples"] == 100 and d["labeled"] is True and d["kind"] == "class-folders"


def test_flat_folder_is_unlabeled(tmp_path):
    for i, name in enumerate(["b.png", "a.jpg", "c.BMP"]):
        Image.fromarray(gray(50 * i)).save(tmp_path / name)
    (tmp_path / "skip.txt").write_text("x")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "emptyclass").mkdir()
    calib = load_calibration(tmp_path, GRAY32)
    assert calib.kind == "flat-folder" and not calib.labeled and calib.classes is None
    assert [f.name for f in calib.files] == ["a.jpg", "b.png", "c.BMP"]
    x, y = next(calib.batches(10))
    assert x.shape == (3, 1, 32, 32) and y.tolist() == [-1, -1, -1]


def test_npz_with_x_and_y(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 6, 7)).astype(np.float64)
    y = np.array([0, 2, 1, 1, 0], dtype=np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    calib = load_calibration(tmp_path / "d.npz", RGB32)
    assert calib.kind == "npz" and calib.labeled and len(calib) == 5
    got = list(calib.batches(2))
    assert [b[0].shape[0] for b in got] == [2, 2, 1]
    xs = torch.cat([b[0] for b in got])
    assert xs.dtype == torch.float32
    # exact tensors: no resize, no normalisation
    np.testing.assert_array_equal(xs.numpy(), x.astype(np.float32))
    assert torch.cat([b[1] for b in got]).tolist() == y.tolist()


def test_npz_with_x_only(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((4, 1, 8, 8), dtype=np.float32))
    calib = load_calibration(tmp_path / "d.npz", GRAY32)
    assert calib.labels == [-1] * 4 and not calib.labeled
    x, y = next(calib.batches(8))
    assert x.shape == (4, 1, 8, 8) and torch.all(x == 1) and y.tolist() == [-1] * 4


# ------------------------------------------------------------------------ channels, size, stats
def test_rgb_images_for_a_gray_model(tmp_path):
    write_png(tmp_path / "c" / "px.png", rgb(200, 100, 50))
    pre = resolve_preprocessing(conv_model(1), (8, 8))
    assert pre.channels == 1 and pre.mean == (0.5,) and pre.std == (0.5,)
    x, _ = next(load_calibration(tmp_path, pre).batches(1))
    assert x.shape == (1, 1, 8, 8)
    luma = (200 * 299 + 100 * 587 + 50 * 114) / 1000  # PIL's ITU-R 601-2 "L" conversion
    expected = (round(luma) / 255 - 0.5) / 0.5
    assert torch.allclose(x, torch.full_like(x, expected), atol=2 / 255)


def test_gray_images_for_an_rgb_model(tmp_path):
    write_png(tmp_path / "g.png", gray(128))
    pre = resolve_preprocessing(conv_model(3), (8, 8))
    assert pre.channels == 3 and pre.mean == tuple(IMAGENET_MEAN) and pre.std == tuple(IMAGENET_STD)
    x, _ = next(load_calibration(tmp_path, pre).batches(1))
    assert x.shape == (1, 3, 8, 8)
    for c in range(3):
        want = (128 / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[0, c], torch.full((8, 8), want), atol=1e-5)


def test_known_rgb_pixel_normalised(tmp_path):
    path = write_png(tmp_path / "p.png", rgb(255, 0, 128, 4, 4))
    t = load_image(path, Preprocessing(input_size=(4, 4), channels=3, mean=tuple(IMAGENET_MEAN), std=tuple(IMAGENET_STD)))
    want = [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    assert t.shape == (3, 4, 4)
    assert torch.allclose(t[:, 2, 3], torch.tensor(want), atol=1e-6)


def test_known_gray_pixel_normalised(tmp_path):
    arr = np.zeros((4, 4), dtype=np.uint8)
    arr[1, 2] = 255
    t = load_image(write_png(tmp_path / "p.png", arr), Preprocessing(input_size=(4, 4), channels=1, mean=(0.5,), std=(0.5,)))
    assert t[0, 1, 2].item() == pytest.approx(1.0) and t[0, 0, 0].item() == pytest.approx(-1.0)
    assert (t == 1.0).sum().item() == 1


def test_resize_to_non_square_input_size(tmp_path):
    # 10 wide × 20 tall, left half black, right half white
    arr = np.zeros((20, 10), dtype=np.uint8)
    arr[:, 5:] = 255
    path = write_png(tmp_path / "p.png", arr)
    same = load_image(path, Preprocessing(input_size=(20, 10), channels=1, mean=(0.0,), std=(1.0,)))
    assert same.shape == (1, 20, 10)
    np.testing.assert_allclose(same[0].numpy(), arr / 255.0, atol=1e-7)
    big = load_image(path, Preprocessing(input_size=(40, 30), channels=1, mean=(0.0,), std=(1.0,)))
    assert big.shape == (1, 40, 30)  # (H, W): height first, as --input-size HxW
    assert big[0, :, 0].max() < 0.05 and big[0, :, -1].min() > 0.95


def test_sixteen_bit_gray_png_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I;16")
    t = load_image(path, Preprocessing(input_size=(1, 4), channels=1, mean=(0.0,), std=(1.0,)))
    np.testing.assert_allclose(t[0, 0].numpy(), arr[0] / 65535.0, atol=1e-6)
    t3 = load_image(path, Preprocessing(input_size=(1, 4), channels=3, mean=(0.0,) * 3, std=(1.0,) * 3))
    assert t3.shape == (3, 1, 4) and torch.equal(t3[0], t3[2])
    np.testing.assert_allclose(t3[1, 0].numpy(), arr[0] / 65535.0, atol=1e-6)


def test_resolve_preprocessing_precedence():
    gray_model, rgb_model = conv_model(1), conv_model(3)
    # defaults
    p = resolve_preprocessing(rgb_model)
    assert (p.input_size, p.channels, p.mean, p.std) == ((224, 224), 3, tuple(IMAGENET_MEAN), tuple(IMAGENET_STD))
    p = resolve_preprocessing(gray_model)
    assert (p.input_size, p.channels, p.mean, p.std) == ((224, 224), 1, (0.5,), (0.5,))
    assert resolve_preprocessing(conv_model(2)).mean == (0.5, 0.5)
    # the stored recipe beats defaults
    stored = {"input_size": [32, 48], "channels": 1, "mean": [0.1], "std": [0.2], "resize": "bilinear"}
    p = resolve_preprocessing(gray_model, stored=stored)
    assert (p.input_size, p.mean, p.std) == ((32, 48), (0.1,), (0.2,))
    # flags beat the stored recipe, one by one
    assert resolve_preprocessing(gray_model, (16, 16), stored=stored).input_size == (16, 16)
    p = resolve_preprocessing(gray_model, mean=[0.3], stored=stored)
    assert (p.mean, p.std, p.input_size) == ((0.3,), (0.2,), (32, 48))
    assert resolve_preprocessing(gray_model, std=[0.7], stored=stored).std == (0.7,)
    # channels always come from the model's first conv; stored stats of the wrong length fall back
    p = resolve_preprocessing(rgb_model, stored=stored)
    assert p.channels == 3 and p.mean == tuple(IMAGENET_MEAN) and p.input_size == (32, 48)
    # one value is repeated per channel
    assert resolve_preprocessing(rgb_model, mean=[0.5], std=[0.25]).std == (0.25, 0.25, 0.25)
    # no conv: channels from the recipe
    assert resolve_preprocessing(nn.Linear(4, 2), stored=stored).channels == 1
    # round trip through the recipe
    assert Preprocessing.from_dict(p.to_dict()) == p


def test_resolve_preprocessing_bad_stats():
    with pytest.raises(BadInput, match="2 mean/std values for a model with 3"):
        resolve_preprocessing(conv_model(3), mean=[0.1, 0.2])
    with pytest.raises(BadInput, match="positive"):
        resolve_preprocessing(conv_model(1), std=[0.0])
    with pytest.raises(BadInput, match="positive"):
        resolve_preprocessing(conv_model(3), std=[0.2, -0.1, 0.3])


def test_parse_input_size():
    assert parse_input_size("224") == (224, 224)
    assert parse_input_size("32x48") == (32, 48)
    assert parse_input_size("32X48") == (32, 48)
    assert parse_input_size("32×48") == (32, 48)
    for bad in ["", "abc", "0", "-5", "32x", "x32", "1x2x3", "32.5", "0x10", "10x-1"]:
        with pytest.raises(BadInput, match="--input-size"):
            parse_input_size(bad)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 10_000), st.integers(1, 10_000))
def test_parse_input_size_round_trip(h, w):
    assert parse_input_size(f"{h}x{w}") == (h, w)
    assert parse_input_size(str(h)) == (h, h)


def test_random_inputs_seeded():
    a = random_inputs(GRAY32, 3, seed=5)
    assert a.shape == (3, 1, 32, 32) and torch.equal(a, random_inputs(GRAY32, 3, seed=5))
    assert not torch.equal(a, random_inputs(GRAY32, 3, seed=6))


# ------------------------------------------------------------------------------------------ errors
def test_missing_path(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        load_calibration(tmp_path / "nope", GRAY32)


def test_empty_folder(tmp_path):
    with pytest.raises(BadInput, match="holds no images") as e:
        load_calibration(tmp_path, GRAY32)
    assert ".png" in e.value.hint


def test_empty_class_folders_only(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(BadInput, match="holds no images"):
        load_calibration(tmp_path, GRAY32)


def test_junk_only(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data.csv").write_text("1,2,3\n")
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "labels.json").write_text("{}")
    with pytest.raises(BadInput, match="holds no images"):
        load_calibration(tmp_path, GRAY32)


def test_non_npz_file(tmp_path):
    path = write_png(tmp_path / "one.png", gray(3))
    with pytest.raises(BadInput, match="not an .npz"):
        load_calibration(path, GRAY32)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


@pytest.mark.parametrize("name,content", [
    ("junk.png", b"\x00\x01 this is not an image" * 5),
    ("empty.jpg", b""),
    ("truncated.png", None),  # header + a few bytes of a real PNG
    ("no_pixels.png", "no_pixels"),  # valid header, IDAT too short for 8×8
    ("bomb.png", "bomb"),  # header claims 20000×20000: Pillow refuses it (DecompressionBombError)
])
def test_corrupt_image_names_the_file(tmp_path, name, content):
    good = tmp_path / "cls" / "good.png"
    write_png(good, gray(9))
    sig = b"\x89PNG\r\n\x1a\n"
    if content is None:
        content = good.read_bytes()[:40]
    elif content == "no_pixels":
        content = sig + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 8, 0, 0, 0, 0)) + \
            _png_chunk(b"IDAT", zlib.compress(b"\x00" * 3)) + _png_chunk(b"IEND", b"")
    elif content == "bomb":
        content = sig + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)) + \
            _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _png_chunk(b"IEND", b"")
    bad = tmp_path / "cls" / name
    bad.write_bytes(content)
    calib = load_calibration(tmp_path, GRAY32)
    assert bad in calib.files
    with pytest.raises(BadInput) as e:
        list(calib.batches(4))
    assert str(bad) in e.value.message and e.value.hint


@pytest.mark.parametrize("arrays,match", [
    ({"y": np.zeros(3, dtype=np.int64)}, "no array 'x'"),
    ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros(3, dtype=np.float32)}, "y must be integer"),
    ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros(4, dtype=np.int64)}, r"shape \(3,\)"),
    ({"x": np.zeros((3, 1, 4, 4), np.float32), "y": np.zeros((3, 1), dtype=np.int64)}, r"shape \(3,\)"),
    ({"x": np.zeros((0, 1, 4, 4), np.float32)}, "N > 0"),
    ({"x": np.zeros(5, np.float32)}, r"\(N, \.\.\.\)"),
    ({"x": np.array([["a", "b"]])}, "numeric"),
    ({"x": np.array([[{"a": 1}]], dtype=object)}, "cannot read"),  # pickled objects are never loaded
])
def test_bad_npz(tmp_path, arrays, match):
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(BadInput, match=match):
        load_calibration(tmp_path / "d.npz", GRAY32)


def test_corrupt_npz(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(BadInput, match="cannot read"):
        load_calibration(tmp_path / "d.npz", GRAY32)


def test_inputs_not_modified(tmp_path):
    from conftest import snapshot

    for i in range(3):
        write_png(tmp_path / "c" / f"{i}.png", rgb(10 * i, 20, 30, 5, 7))
    before = snapshot(tmp_path)
    calib = load_calibration(tmp_path, RGB32)
    list(calib.batches(2))
    assert snapshot(tmp_path) == before
    assert not math.isnan(float(next(calib.batches(1))[0].sum()))
