"""Calibration data: a class-folder tree, a flat image folder or an ``.npz`` → batches of (x, y).

Labels follow torchvision's ImageFolder (sorted subfolder index; an empty class folder keeps its index and
is named in :attr:`CalibrationSet.empty_classes`); a flat folder is unlabeled and gets ``y = -1`` (saliency
then uses the model's own top class). Images are resized to the input size, converted to the channel count
of the model's first conv (gray↔RGB) and normalised; an ``.npz`` is used as stored and its per-sample shape
is recorded (``Preprocessing.sample_shape``). The :class:`Preprocessing` used is stored in the recipe so
later commands reuse it. Every value that reaches the model is checked to be finite.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..core import dist
from ..core.errors import BadInput

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_INPUT_SIZE = (224, 224)
MAX_IMAGE_PIXELS = 64_000_000  # a larger image file is refused before it is decoded (docs/CLI.md, "Data")
MAX_SAMPLE_ELEMENTS = 1 << 26  # values in one model input a recorded or requested shape may ask for
MAX_SAMPLE_DIMS = 5  # dimensions of one recorded sample (the recipe schema's bound)
MAX_SIDE = 16384  # an input size side the recipe can record
MAX_STAT = 1e6  # |mean| and std bounds (the recipe schema's number range)


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: resize (bilinear) → channels → [0,1] → (x - mean) / std.

    ``sample_shape``: the shape of one input (without the batch dimension) when the model was fed an
    ``.npz`` rather than images — e.g. (128,) for an MLP; random and example inputs then take that shape
    instead of (channels, *input_size)."""

    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE
    channels: int = 3
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(IMAGENET_STD)
    resize: str = "bilinear"
    sample_shape: tuple[int, ...] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """One model input's shape, without the batch dimension."""
        return tuple(self.sample_shape) if self.sample_shape is not None else (self.channels, *self.input_size)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.sample_shape is None:
            del d["sample_shape"]  # image inputs: the recipe stays what earlier versions wrote
        else:
            d["sample_shape"] = list(self.sample_shape)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        shape = d.get("sample_shape")
        return cls(
            input_size=tuple(int(v) for v in d["input_size"]),
            channels=int(d["channels"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            resize=d.get("resize", "bilinear"),
            sample_shape=tuple(int(v) for v in shape) if shape is not None else None,
        )


def check_sample_shape(shape: tuple[int, ...], where: str) -> None:
    """Refuse an input shape that would allocate more than :data:`MAX_SAMPLE_ELEMENTS` values per sample (or
    that the recipe could not record: more than :data:`MAX_SAMPLE_DIMS` dimensions)."""
    if (not 1 <= len(shape) <= MAX_SAMPLE_DIMS or any(int(v) < 1 for v in shape)
            or math.prod(int(v) for v in shape) > MAX_SAMPLE_ELEMENTS):
        raise BadInput(f"{where}: an input of shape {'×'.join(map(str, shape))} is refused (at most "
                       f"{MAX_SAMPLE_DIMS} dimensions and {MAX_SAMPLE_ELEMENTS:,} values per sample, every side ≥ 1)",
                       hint="pass --data with real inputs, or a smaller --input-size")


def _check_stats(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    for name, vals in (("--mean", mean), ("--std", std)):
        bad = next((v for v in vals if not math.isfinite(v) or abs(v) >= MAX_STAT), None)
        if bad is not None:
            raise BadInput(f"{name} value {bad} is not a finite number below {MAX_STAT:g} in magnitude",
                           hint="e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225")
    if any(v <= 0 for v in std):
        raise BadInput("--std values must be positive", hint="e.g. --std 0.229,0.224,0.225")


def parse_input_size(text: str) -> tuple[int, int]:
    """``"224"`` → (224, 224); ``"32x48"`` → (32, 48)."""
    try:
        parts = [int(p) for p in text.lower().replace("×", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise BadInput(f"--input-size {text!r} is not H or HxW with positive integers", hint="e.g. --input-size 224 or 32x48")
    return parts[0], parts[1]


def first_conv_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels)
    return None


def resolve_preprocessing(
    model: nn.Module,
    input_size: tuple[int, int] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    stored: dict | None = None,
) -> Preprocessing:
    """Flags win, then the recipe's stored preprocessing, then defaults (224², ImageNet stats for 3
    channels, 0.5/0.5 otherwise). Channels always come from the model's first conv when it has one. A stored
    ``sample_shape`` (non-image inputs) is kept unless ``input_size`` is given; the data opened later
    replaces it (:func:`with_data`). Mean/std must be finite (std > 0); the input shape is bounded."""
    base = Preprocessing.from_dict(stored) if stored else None
    channels = first_conv_channels(model) or (base.channels if base else 3)
    size = input_size or (base.input_size if base else DEFAULT_INPUT_SIZE)

    def stats(given, stored_vals, default3, default_other, flag):
        if given is not None:
            vals = list(given)
        elif stored_vals is not None and len(stored_vals) == channels:
            vals = list(stored_vals)
        else:
            vals = default3 if channels == 3 else [default_other] * channels
        if len(vals) == 1:
            vals = vals * channels
        if len(vals) != channels:
            raise BadInput(f"{len(vals)} mean/std values for a model with {channels} input channels ({flag})",
                           hint="give one value per channel, or one for every channel")
        return tuple(float(v) for v in vals)

    m = stats(mean, base.mean if base else None, IMAGENET_MEAN, 0.5, "--mean")
    s = stats(std, base.std if base else None, IMAGENET_STD, 0.5, "--std")
    _check_stats(m, s)
    sample_shape = base.sample_shape if base is not None and input_size is None else None
    pre = Preprocessing(input_size=tuple(size), channels=channels, mean=m, std=s, sample_shape=sample_shape)
    check_sample_shape(pre.shape, "--input-size" if input_size else "the recorded input shape")
    return pre


def with_data(pre: Preprocessing, calib: "CalibrationSet") -> Preprocessing:
    """The preprocessing as the opened data really feeds the model: an ``.npz`` records its per-sample shape
    (and its H×W as the input size when it is (N, C, H, W)); images are (channels, *input_size)."""
    if calib.array is None:
        out = replace(pre, sample_shape=None)
    else:
        shape = tuple(int(v) for v in calib.array.shape[1:])
        check_sample_shape(shape, calib.source)
        out = replace(pre, sample_shape=shape)
        if len(shape) == 3 and shape[0] == pre.channels and max(shape[1:]) <= MAX_SIDE:
            out = replace(out, input_size=(shape[1], shape[2]))
    calib.preprocessing = out
    return out


def _too_big(path: Path, size: tuple[int, int] | None) -> BadInput:
    what = f"{size[0]}×{size[1]} = {size[0] * size[1] / 1e6:.1f} megapixels" if size else "too many pixels"
    return BadInput(f"image {path} has {what}; at most {MAX_IMAGE_PIXELS / 1e6:g} megapixels are read",
                    hint="downscale it (inputs are resized to --input-size anyway) or remove it")


def load_image(path: Path, pre: Preprocessing) -> torch.Tensor:
    """One image file → normalised (C, H, W) float tensor. An image over :data:`MAX_IMAGE_PIXELS` is refused
    from its header, before it is decoded; non-finite values (float TIFFs) are refused."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: our own limit below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError:  # over twice PIL's own limit: refused by PIL from the header
        raise _too_big(path, None) from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise BadInput(f"cannot read image {path}: {e}", hint="remove or replace the file") from None
    try:
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise _too_big(path, img.size)
            if img.mode.startswith("I;16"):  # 16-bit gray: scale to [0, 1] (convert("L") would clip at 255)
                img, scale = img.convert("F"), 65535.0
            else:
                img, scale = img.convert("L" if pre.channels == 1 else "RGB"), 255.0
            h, w = pre.input_size
            if img.size != (w, h):
                img = img.resize((w, h), Image.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / scale
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise BadInput(f"cannot read image {path}: {e}", hint="remove or replace the file") from None
    t = torch.from_numpy(arr.copy())
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    if t.shape[0] != pre.channels:  # gray for a 3-channel model, or 2/4 input channels: repeat gray
        t = t.mean(0, keepdim=True).expand(pre.channels, -1, -1)
    mean = torch.tensor(pre.mean).view(-1, 1, 1)
    std = torch.tensor(pre.std).view(-1, 1, 1)
    out = (t - mean) / std
    if not bool(torch.isfinite(out).all()):
        raise BadInput(f"image {path} gives NaN or infinite values after normalisation",
                       hint="remove or replace the file (and check --mean/--std)")
    return out


@dataclass
class CalibrationSet:
    """Lazily loaded calibration data. ``y[i] = -1`` marks an unlabeled sample."""

    source: str
    kind: str  # "class-folders" | "flat-folder" | "npz"
    labels: list[int]
    classes: list[str] | None = None
    files: list[Path] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)  # class folders without images (their index is kept)
    array: np.ndarray | None = None
    preprocessing: Preprocessing | None = None
    workers: int = 0  # DataLoader worker processes decoding images (0: in this process)
    pin_memory: bool = False  # page-locked batches, for CUDA

    @property
    def labeled(self) -> bool:
        return bool(self.labels) and min(self.labels) >= 0

    def __len__(self) -> int:
        return len(self.labels)

    def num_batches(self, batch_size: int, max_batches: float = math.inf) -> int:
        return int(min(math.ceil(len(self) / batch_size), max_batches))

    def batches(self, batch_size: int, max_batches: float = math.inf, shuffle_seed: int | None = None,
                shard: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x, y) in file order, or in the seeded random order of ``shuffle_seed`` (the same order on
        every call, so batches mix classes: a class folder read in order gives one-class batches, which
        skew per-batch saliency and BatchNorm statistics); at most ``max_batches`` batches. ``shard``: under
        torchrun only this rank's share of those batches (core/dist.py). Decoded by ``workers`` processes."""
        order = None
        if shuffle_seed is not None:
            order = torch.randperm(len(self), generator=torch.Generator().manual_seed(shuffle_seed)).tolist()
        index = []
        for b in range(self.num_batches(batch_size, max_batches)):
            idx = list(range(b * batch_size, min((b + 1) * batch_size, len(self))))
            index.append([order[i] for i in idx] if order is not None else idx)
        yield from self.load(index, shard=shard)

    def item(self, i: int) -> torch.Tensor:
        """Sample ``i``, normalised (C, H, W) (or the array's row as stored)."""
        if self.array is not None:
            return torch.from_numpy(np.ascontiguousarray(self.array[i], dtype=np.float32))
        return load_image(self.files[i], self.preprocessing)

    def load(self, index: list[list[int]], shard: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches named by ``index`` (lists of sample indices), in order; ``shard``: only this rank's
        (batch ``b`` goes to rank ``b % world``). Images are decoded in a ``torch.utils.data.DataLoader`` with
        ``self.workers`` processes (pinned memory for CUDA) when ``workers > 0``: memory holds a few batches,
        never the folder."""
        if shard:
            index = dist.shard(index)
        labels = torch.tensor(self.labels, dtype=torch.long)
        if self.workers <= 0 or self.array is not None:
            for idx in index:
                if self.array is not None:
                    rows = self.array[idx[0]: idx[-1] + 1] if idx == list(range(idx[0], idx[-1] + 1)) else self.array[idx]
                    x = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
                else:
                    x = torch.stack([self.item(i) for i in idx])
                yield x, labels[idx]
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(_Samples(self), batch_sampler=index, num_workers=self.workers, pin_memory=self.pin_memory,
                            collate_fn=_stack)
        for x, idx in loader:
            if isinstance(x, BadInput):  # raised in a worker: the same one line as without workers
                raise x
            yield x, labels[idx]

    def describe(self) -> dict:
        return {
            "source": self.source,
            "kind": self.kind,
            "samples": len(self),
            "labeled": self.labeled,
            "classes": self.classes,
        }


class _Samples:
    """The map-style dataset a DataLoader decodes from: index → (x, index)."""

    def __init__(self, calib: CalibrationSet):
        self.calib = calib

    def __len__(self) -> int:
        return len(self.calib)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | BadInput, int]:
        try:
            return self.calib.item(i), i
        except BadInput as e:  # handed to the main process as a value (a worker's exception loses its message)
            return e, i


def _stack(items: list[tuple[torch.Tensor | BadInput, int]]) -> tuple[torch.Tensor | BadInput, list[int]]:
    bad = next((x for x, _ in items if isinstance(x, BadInput)), None)
    return bad if bad is not None else torch.stack([x for x, _ in items]), [i for _, i in items]


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def held_out(eval_data: str | Path | None, data: str | Path | None) -> bool:
    """Whether ``--eval-data`` is other data than ``--data`` (compared as resolved paths): numbers measured on
    it hold on images the model was not calibrated, ranked or tuned on."""
    return eval_data is not None and (data is None or Path(eval_data).resolve() != Path(data).resolve())


def load_calibration(path: str | Path, pre: Preprocessing) -> CalibrationSet:
    """Open ``--data PATH``: class folders, a flat folder of images, or an ``.npz`` with ``x`` (and ``y``)."""
    path = Path(path)
    if not path.exists():
        raise BadInput(f"data path {path} does not exist", hint="pass a folder of images or an .npz file")
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise BadInput(f"data file {path} is not an .npz", hint="use a folder of images or an .npz with array x")
        return _load_npz(path, pre)
    subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    class_files = [(d.name, _images_in(d)) for d in subdirs]
    if any(files for _, files in class_files):
        classes = [name for name, _ in class_files]
        files, labels = [], []
        for label, (_, fs) in enumerate(class_files):
            files += fs
            labels += [label] * len(fs)
        empty = [name for name, fs in class_files if not fs]  # kept: every later label stays its folder's index
        return CalibrationSet(str(path), "class-folders", labels, classes, files, empty, preprocessing=pre)
    files = _images_in(path)
    if not files:
        raise BadInput(
            f"data folder {path} holds no images",
            hint=f"put images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class subfolders or directly in it",
        )
    return CalibrationSet(str(path), "flat-folder", [-1] * len(files), None, files, preprocessing=pre)


def _load_npz(path: Path, pre: Preprocessing) -> CalibrationSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise BadInput(f"{path} has no array 'x' (found: {', '.join(z.files) or 'none'})")
            x = z["x"]
            y = z["y"] if "y" in z else None
    except BadInput:
        raise
    except Exception as e:  # zipfile/pickle/format errors
        raise BadInput(f"cannot read {path} as .npz: {e}") from None
    if x.ndim < 2 or len(x) == 0:
        raise BadInput(f"{path}: x must be (N, ...) with N > 0, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise BadInput(f"{path}: x must be numeric, got {x.dtype}")
    if np.issubdtype(x.dtype, np.floating):
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            bad = np.flatnonzero(~finite)
            raise BadInput(f"{path}: x[{bad[0]}] holds NaN or infinite values ({len(bad)} sample(s) do)",
                           hint="remove or fix those samples")
    if y is not None:
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise BadInput(f"{path}: y must be integer labels of shape ({len(x)},), got {y.dtype} {y.shape}")
        labels = [int(v) for v in y]
    else:
        labels = [-1] * len(x)
    return CalibrationSet(str(path), "npz", labels, None, array=x, preprocessing=pre)


def random_inputs(pre: Preprocessing, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Seeded N(0, 1) inputs shaped (n, *pre.shape) — (n, C, H, W) for images, the recorded sample shape of an
    ``.npz`` otherwise (inputs are normalised)."""
    g = torch.Generator().manual_seed(seed)
    check_sample_shape(pre.shape, "the input shape")
    return torch.randn(n, *pre.shape, generator=g)
