"""Every torchvision classification model either prunes with its self-check passing (pruned ≡ masked
equivalent) or is refused with exit 3 and a reason naming the op — never another exception, never wrong.

CI runs the FAST subset (one model per family of couplings, small inputs). ``EXPLAINFIX_ZOO=all`` runs
the whole list (slow: hours on 2 cores); benchmarks/coverage.py prints the full matrix.
"""
import os

import pytest
import torch

tv = pytest.importorskip("torchvision")

from explainfix_cli.core.errors import CannotProcess, UnsupportedOp  # noqa: E402
from explainfix_cli.prune.options import PruneOptions
from explainfix_cli.prune.pruner import prune_model  # noqa: E402

ALL = tv.models.list_models(module=tv.models)
# model → expected outcome in CI (pruned / refused)
FAST = {
    "resnet18": "pruned",  # residual add
    "densenet121": "pruned",  # concatenation
    "googlenet": "pruned",  # inception branches
    "squeezenet1_1": "pruned",  # fire modules
    "mobilenet_v3_small": "pruned",  # depthwise, SE multiply, hardswish
    "efficientnet_b0": "pruned",  # SE, stochastic depth
    "regnet_y_400mf": "pruned",  # grouped conv + SE
    "shufflenet_v2_x0_5": "pruned",  # chunk, channel shuffle
    "mnasnet0_5": "pruned",  # inverted residual
    "convnext_tiny": "unchanged",  # LayerNorm over channels freezes them: checked, nothing removed
    "swin_t": "unchanged",  # window attention after LayerNorm: every channel frozen, attention run as it is
    "maxvit_t": "pruned",  # MBConv channels prune; the attention behind LayerNorm is run as it is
}
FULL = os.environ.get("EXPLAINFIX_ZOO") == "all"


def _size(name):
    if name.startswith(("vit_", "maxvit")):
        return 224
    return 96 if name == "inception_v3" else 64


@pytest.mark.parametrize("name", ALL if FULL else [n for n in ALL if n in FAST])
def test_zoo_model_prunes_or_is_refused(name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = tv.models.get_model(name, weights=None, **kwargs).eval()
    s = _size(name)
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    try:
        r = prune_model(model, PruneOptions(pct=90, criterion="magnitude"), example=x[:1], check_inputs=x)
    except UnsupportedOp as e:
        assert e.op and e.where and "cannot prune through op" in e.message
        outcome = "refused"
    except CannotProcess as e:  # the self-check failing, or a pruned model that does not run: a bug
        pytest.fail(f"{name}: {e.message}")
    else:
        assert r.check.passed and r.check.pruned_vs_masked_rel <= 1e-4
        assert r.params_after <= r.params_before
        outcome = "pruned" if r.channels_removed else "unchanged"
    if name in FAST:
        assert outcome == FAST[name]
        if outcome == "pruned":  # at 90 % these families really lose channels
            assert r.params_after < r.params_before


@pytest.mark.parametrize("name", ["resnet18", "densenet121", "shufflenet_v2_x0_5", "efficientnet_b0", "swin_t"])
def test_concrete_tracer_reproduces_symbolic_tracing(name):
    """The fallback route (concrete values on every proxy) must build the same graph where fx alone works."""
    from explainfix_cli.channels.tracing import ConcreteTracer

    model = tv.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 64, 64)

    def ops(graph):
        return [(n.op, "const" if str(n.target).startswith("_tensor_constant") else str(n.target)) for n in graph.nodes]
    symbolic, concrete = ConcreteTracer((x,), evaluate=False), ConcreteTracer((x,), evaluate=True)
    assert ops(symbolic.trace(model)) == ops(concrete.trace(model))
    assert concrete.guards == []  # torchvision code never branches on a traced value
