"""What every stage asks of a model: its spatial convs, how to call it, its size and cost (params, MACs)."""
from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn


@contextmanager
def full_float32() -> Iterator[None]:
    """Float32 convolutions and matmuls in IEEE precision for the block. cuDNN runs float32 convolutions in
    TF32 by default (a 10-bit mantissa): two models that compute the same function then differ by about 3e-4
    of the output's scale on an H100, which a comparison at 1e-4 (the self-check) must not see. The settings
    are only read by CUDA kernels (on the CPU nothing computes differently); the previous ones are restored on
    exit, an error included. Each setting is switched through the API it reads cleanly by: torch >= 2.9 raises
    when the legacy ``allow_tf32`` / matmul-precision getters meet per-backend ``fp32_precision`` values that
    disagree with them, and a model's own forward may read them (``torch.backends.cudnn.flags``)."""
    with _setting(lambda: torch.backends.cudnn.allow_tf32, _set_cudnn_tf32, False,
                  getattr(torch.backends.cudnn, "conv", None), "ieee"), \
            _setting(torch.get_float32_matmul_precision, torch.set_float32_matmul_precision, "highest",
                     getattr(torch.backends.cuda, "matmul", None), "ieee"):
        yield


def _set_cudnn_tf32(value: bool) -> None:
    torch.backends.cudnn.allow_tf32 = value


@contextmanager
def _setting(get: Callable[[], Any], put: Callable[[Any], None], value: Any, backend: Any, precision: str) -> Iterator[None]:
    """``put(value)`` for the block (unless ``get()`` is ``value`` already), ``put(get())`` after; where the legacy getter raises (the user mixed the two
    APIs already), ``backend.fp32_precision = precision`` instead, likewise restored."""
    try:
        before = get()
    except RuntimeError:
        if backend is None or not hasattr(backend, "fp32_precision"):
            raise
        saved = backend.fp32_precision
        try:
            backend.fp32_precision = precision
            yield
        finally:
            backend.fp32_precision = saved
        return
    if before == value:
        yield
        return
    try:
        put(value)
        yield
    finally:
        put(before)


def count_params(model: nn.Module) -> int:
    """Parameters, counting a tensor shared by several modules once."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def count_macs(model: nn.Module, example: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example`` for ONE sample (batch of 1 is used).

    Uses torch's FlopCounterMode (conv, matmul, addmm, bmm, … count 2 FLOPs per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    def one(x):
        return x[:1] if isinstance(x, torch.Tensor) else type(x)(one(v) for v in x)

    x = one(example)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*x) if isinstance(x, (tuple, list)) else model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops() // 2)


def iter_spatial_convs(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """(name, module) of every Conv2d with a kernel larger than 1×1 whose raw kernel is its effective one,
    in ``named_modules`` order. A weight-standardised conv (timm StdConv2d, ScaledStdConv2d) is left out:
    zeroing its raw kernel does not zero what it computes (:func:`effective_kernel_convs` lists them)."""
    return [(name, m) for name, m in _spatial(model) if _raw_is_effective(m)]


def effective_kernel_convs(model: nn.Module) -> list[str]:
    """Names of the spatial convs :func:`iter_spatial_convs` leaves out (their forward transforms the kernel)."""
    return [name for name, m in _spatial(model) if not _raw_is_effective(m)]


def _spatial(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) != (1, 1)]


def _raw_is_effective(m: nn.Module) -> bool:
    return type(m).__module__.startswith("torch.") or behaves_like_base(m)


def first_output(out: Any) -> torch.Tensor:
    """The tensor saliency is computed on: the model's output, or the first tensor of a tuple/dict."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"model output of type {type(out).__name__} has no tensor to compute saliency on")


def to_device(x: Any, device: torch.device | str) -> Any:
    """A tensor, or a tuple/list of tensors (several model inputs), moved to ``device``."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(v, device) for v in x)
    return x.to(device, non_blocking=True)


def call_model(model: nn.Module, x: Any) -> Any:
    """``model(x)``, or ``model(*x)`` for several inputs."""
    return model(*x) if isinstance(x, (tuple, list)) else model(x)


def output_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor of a forward's output (tensor, tuple/list, dict; nested), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in output_tensors(o)]
    return []


def is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def has_depthwise(model: nn.Module) -> bool:
    """Whether ``model`` has a depthwise convolution in the wide sense (groups equal to its input channels, more
    than one, any dimension, channel multipliers included): MobileNet-like, for ``--rank auto``."""
    return any(isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels
               for m in model.modules())


_SAME: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def same_padded(m: nn.Module) -> bool:
    """A library's ``nn.Conv2d`` subclass that zero-pads its input TensorFlow-"SAME" style (the pad depends on
    the input size, possibly asymmetric) and then convolves without padding — timm's ``Conv2dSame``. Checked
    on two probes (odd and uneven sizes), cached per module. Such a conv is sliced as a Conv2d and counted as
    zero-padded (a constant folded into it is not exact at the borders)."""
    if m in _SAME:
        return _SAME[m]
    import math

    import torch.nn.functional as F

    ok = False
    if isinstance(m, nn.Conv2d) and type(m) is not nn.Conv2d and not any(True for _ in m.children()) \
            and not type(m).__module__.startswith("torch.") and m.padding in ((0, 0), "valid") and m.padding_mode == "zeros":
        g = torch.Generator().manual_seed(0)
        ok = True
        for h, w in ((11, 11), (12, 13)):
            x = torch.randn(1, m.in_channels, h, w, generator=g).to(m.weight)
            pads = []
            for size, k, st, d in zip((w, h), m.kernel_size[::-1], m.stride[::-1], m.dilation[::-1]):
                total = max((math.ceil(size / st) - 1) * st + (k - 1) * d + 1 - size, 0)
                pads += [total // 2, total - total // 2]
            with torch.no_grad():
                want = F.conv2d(F.pad(x, pads), m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
            if not _computes(m, x, want):
                ok = False
                break
    _SAME[m] = ok
    return ok


def behaves_like_base(m: nn.Module) -> bool:
    """A library's subclass of ``nn.Linear`` / ``nn.Conv2d`` without children whose forward computes exactly
    what the torch layer computes from the same attributes (e.g. timm's ``Linear``), checked on a probe:
    then it is analysed and sliced as that layer. Weight-standardised or "same"-padded convs compute
    something else, fail the probe and are traced into (and refused by name where the engine cannot follow)."""
    import torch.nn.functional as F

    if type(m) in (nn.Linear, nn.Conv2d) or not isinstance(m, (nn.Linear, nn.Conv2d)) or any(True for _ in m.children()):
        return False
    if type(m).__module__.startswith("torch."):
        return False
    w = m.weight
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            x = torch.randn(2, m.in_features, generator=g).to(w)
            want = F.linear(x, w, m.bias)
        else:
            x = torch.randn(1, m.in_channels, 11, 11, generator=g).to(w)
            want = nn.Conv2d._conv_forward(m, x, w, m.bias)
    return _computes(m, x, want)


def _computes(m: nn.Module, x: torch.Tensor, want: torch.Tensor) -> bool:
    """Whether ``m``'s own forward on the probe ``x`` gives ``want`` (the layer it claims to be)."""
    with torch.no_grad():
        try:
            got = type(m).forward(m, x)
        except Exception:  # noqa: BLE001 - whatever it does, it is not that layer
            return False
    return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.allclose(got, want, rtol=1e-5, atol=1e-6)


@contextmanager
def attributes_kept(model: nn.Module, drop_new: Callable[[str, Any], bool] = lambda k, v: True) -> Iterator[None]:
    """Undo the plain attribute writes a forward makes (a detection head caching ``self.anchors`` and
    ``self.shape`` on its first call): a later trace or export would otherwise specialise on that cache.
    New attributes are removed where ``drop_new(name, value)``; parameters, buffers and submodules are untouched."""
    saved = [(m, dict(m.__dict__)) for m in model.modules()]
    try:
        yield
    finally:
        for m, before in saved:
            now = m.__dict__
            for k in [k for k in now if k not in before and drop_new(k, now[k])]:
                del now[k]
            for k, v in before.items():
                if now.get(k) is not v:
                    now[k] = v


@contextmanager
def in_training_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in training mode for a look (a trace, a probe, a check): afterwards every module's own mode
    flag and every buffer (BatchNorm running statistics, batch counters) is as it was, so the user's model
    comes out unchanged."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(m, k, b, b.detach().clone()) for m in model.modules() for k, b in m._buffers.items() if b is not None]
    model.train()
    try:
        yield
    finally:
        with torch.no_grad():
            for m, k, b, saved in buffers:
                m._buffers[k] = b
                b.copy_(saved)
        for m, f in flags:
            m.training = f


_DROPOUT_FNS = _RRELU_FNS = None


class _NoDropout(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _DROPOUT_FNS:  # type: ignore[operator]
            return args[0] if args else kwargs["input"]
        if func in _RRELU_FNS:  # random slopes per element: its eval form, the mean slope
            import torch.nn.functional as F

            x = args[0] if args else kwargs["input"]
            lower = args[1] if len(args) > 1 else kwargs.get("lower", 1.0 / 8)
            upper = args[2] if len(args) > 2 else kwargs.get("upper", 1.0 / 3)
            return F.leaky_relu(x, (lower + upper) / 2)
        return func(*args, **kwargs)


@contextmanager
def without_dropout() -> Iterator[None]:
    """Dropout (module or functional, any kind) is the identity inside, and RReLU its eval form: two models
    whose channels differ draw different per-element masks from the same seed, so a training-mode
    comparison must not draw any. Per-sample random ops (stochastic depth) still run and draw the same
    numbers from the same seed."""
    global _DROPOUT_FNS, _RRELU_FNS
    if _DROPOUT_FNS is None:
        import torch.nn.functional as F

        _RRELU_FNS = {F.rrelu, F.rrelu_, torch.rrelu, torch.rrelu_}
        _DROPOUT_FNS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout,
                        torch.dropout, torch.dropout_, torch.feature_dropout, torch.feature_dropout_,
                        torch.alpha_dropout, torch.alpha_dropout_, torch.feature_alpha_dropout,
                        torch.feature_alpha_dropout_}
    with _NoDropout():
        yield
