"""What "kept in float" means in a QDQ model: the node computes on float inputs, not on dequantized copies.

onnxruntime's ``quantize_static(..., nodes_to_exclude=[...])`` leaves an excluded node's *weights* in float, but
an activation it shares with a quantized node (a Softmax output, the ``V`` of an attention, a residual
stream) gets one QuantizeLinear → DequantizeLinear pair that *every* consumer reads, the excluded node
included — so keeping an attention MatMul "in float" changed nothing (MobileViT-XXS gave the same top-1
agreement with 0 or 12 such nodes excluded). :func:`feed_float` rewires each excluded node to the float tensor
the pair quantizes, and drops a pair nobody reads any more.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable

_DQ, _Q_IN = "_DequantizeLinear_Output", "_QuantizeLinear_Input"
_FOLDED = ("Relu", "Clip")  # what onnxruntime folds into the following pair's range (asymmetric activations)


def feed_float(model, names: Iterable[str], source) -> int:
    """Rewire every input of the nodes ``names`` that is ``DequantizeLinear(QuantizeLinear(x))`` of an
    activation to the float ``x``, in place; remove Q/DQ nodes (and their scales and zero points) left without
    a reader. ``source``: the float graph that was quantized. Where onnxruntime folded a Relu or Clip into the
    pair (it renames the producer's output to the activation's and lets the pair's range clamp), ``x`` is the
    unclamped value: the float reader gets the activation back, a copy of ``source``'s node (without it
    MobileNetV2's ReLU6 vanished and top-1 agreement fell from 0.97 to 0.48). An excluded node's own weights are
    float already; a constant it shares with a quantized node (stored once in int8) comes back from ``source``.
    Returns the number of inputs rewired."""
    graph = model.graph
    made_by = {o: n for n in graph.node for o in n.output}
    inits = {t.name for t in graph.initializer}
    graph_inputs = {t.name for t in graph.input}
    src_made_by = {o: n for n in source.node for o in n.output}
    src_inits = {t.name: t for t in source.initializer}
    wanted = set(names)
    rewired = 0
    pos = -1
    while pos + 1 < len(graph.node):
        pos += 1
        node = graph.node[pos]
        if node.name not in wanted:
            continue
        for i, t in enumerate(node.input):
            dq = made_by.get(t)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            tensor = dq.output[0][: -len(_DQ)] if dq.output[0].endswith(_DQ) else dq.output[0]
            if dq.input[0] in inits:  # a constant shared with a quantized node, stored once in int8
                if tensor not in src_inits:
                    continue
                if tensor not in inits:
                    graph.initializer.append(copy.deepcopy(src_inits[tensor]))
                    inits.add(tensor)
                node.input[i] = tensor
                rewired += 1
                continue
            q = made_by.get(dq.input[0])
            if q is None or q.op_type != "QuantizeLinear" or q.input[0] in inits:
                continue  # not a pair this module knows: the node keeps the copy
            x = q.input[0]
            want, have = src_made_by.get(tensor), made_by.get(x)
            if want is None and have is None and x in graph_inputs:
                node.input[i] = x  # the model's input
            elif want is not None and have is not None and want.op_type == have.op_type:
                node.input[i] = x  # the same value: the same op made it
            elif want is not None and have is not None and want.op_type in _FOLDED and x == tensor \
                    and have.op_type not in _FOLDED:
                clamped = tensor + "_float"
                if clamped not in made_by:  # once per tensor, right before its first float reader
                    act = copy.deepcopy(want)
                    act.name, act.input[0], act.output[0] = act.name + "_float", x, clamped
                    graph.node.insert(pos, act)
                    pos += 1
                    made_by[clamped] = act
                    for name in act.input[1:]:  # Clip's bounds
                        if name and name not in inits and name in src_inits:
                            graph.initializer.append(copy.deepcopy(src_inits[name]))
                            inits.add(name)
                node.input[i] = clamped
            else:
                continue  # not a pattern known to be exact: the node keeps the quantized copy
            rewired += 1
    if rewired:
        _drop_unread(graph)
    return rewired


def _drop_unread(graph) -> None:
    """Remove QuantizeLinear / DequantizeLinear nodes whose outputs nobody reads, then the initializers only
    they read (scales, zero points)."""
    outputs = {o.name for o in graph.output}
    freed: set[str] = set()
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            freed.update(n.input)
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input} | outputs
    keep = [t for t in graph.initializer if t.name not in freed or t.name in read]
    if len(keep) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep)
