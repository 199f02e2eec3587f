"""Weights that are not initializers: values computed from constants only, lifted to parameters.

paddle2onnx and some tf2onnx models keep their weights in ``Constant`` nodes; Caffe2
conversions make them at load time (``ConstantOfShape``); BatchNormalization statistics
often arrive through ``Identity``/``Cast`` chains from such constants. Values computed from a
float initializer (a parameter already) are left alone: the gradient reaches that parameter. onnxruntime-training
trains initializers only, so in the *training copy* every float32 value of rank >= 1 with
more than one element that is computed from constants alone and read by the rest of the
graph (the boundary of the constant part) is computed once and becomes an initializer of
the same name. :func:`onnxsurgeon.train.prepare.plan` then trains those the loss reaches,
BatchNormalization updates the statistics among them, and the rest stay constants.

One-element and 0-d values (exporters' scale factors, epsilons) are not lifted: they are
numbers, not weights, and models that trained before keep the same training graph.

The trained values are written back where they were (:func:`write_back`): into the
``Constant`` node that held the value, or, for a value computed from constants, in place of
the node that computed it (a ``Constant`` of the same name), constant nodes nothing reads
any more dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon.graph import node_reads, subgraphs

# Ops whose value is not a function of their inputs.
_RANDOM = frozenset("RandomNormal RandomUniform RandomNormalLike RandomUniformLike Multinomial Bernoulli Dropout".split())


def _constant_nodes(graph: onnx.GraphProto) -> tuple[set[str], list[int]]:
    """The values computed from constants only, and the indices of the nodes computing them."""
    known = {t.name for t in graph.initializer} - {v.name for v in graph.input}
    nodes: list[int] = []
    for i, node in enumerate(graph.node):
        if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM:
            continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            continue
        if all(n in known for n in node.input if n):
            known.update(o for o in node.output if o)
            nodes.append(i)
    return known, nodes


def boundary(graph: onnx.GraphProto) -> list[str]:
    """Values computed from constants (not initializers) that the rest of the graph reads:
    the candidates for lifting, by name (what ``--freeze`` patterns may match)."""
    known, nodes = _constant_nodes(graph)
    inits = {t.name for t in graph.initializer}
    constant_node = set(nodes)
    # A value computed from a parameter (an Identity of it, as the TorchScript exporter writes
    # for two parameters it found equal) stays computed: the gradient reaches the parameter.
    from_param = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1}
    for i in nodes:
        node = graph.node[i]
        if any(n in from_param for n in node.input if n):
            from_param.update(o for o in node.output if o)
    single = {graph.node[i].output[0] for i in nodes if len([o for o in graph.node[i].output if o]) == 1}
    outputs = {v.name for v in graph.output}
    read: dict[str, None] = {}
    for i, node in enumerate(graph.node):
        if i in constant_node:
            continue
        for n in node_reads(node):
            if n in known and n not in inits and n not in from_param and n in single and n not in outputs:
                read.setdefault(n, None)
    return list(read)


def lift(model: onnx.ModelProto, /) -> list[str]:
    """Lift, in place, the boundary values of float32 type, rank >= 1 and more than one
    element to initializers (module docstring). Returns their names."""
    graph = model.graph
    names = boundary(graph)
    if not names:
        return []
    values = _compute(model, names)
    lifted = {n: a for n, a in values.items() if a.dtype == np.float32 and a.ndim >= 1 and a.size > 1}
    if not lifted:
        return []
    read_before = _reads(graph)
    keep = [node for node in graph.node if not (len(node.output) >= 1 and node.output[0] in lifted)]
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in lifted.items())
    _drop_unread_constants(graph, read_before)
    return list(lifted)


def _compute(model: onnx.ModelProto, names: list[str]) -> dict[str, np.ndarray]:
    """The values of `names` (computed from constants only), by onnxruntime."""
    from onnxsurgeon import runtime

    graph = model.graph
    _, nodes = _constant_nodes(graph)
    needed = set(names)
    chosen: list[onnx.NodeProto] = []
    for i in reversed(nodes):
        node = graph.node[i]
        if any(o in needed for o in node.output):
            chosen.append(node)
            needed.update(n for n in node.input if n)
    chosen.reverse()
    probe = helper.make_model(
        helper.make_graph(
            chosen, "constants", [], [onnx.ValueInfoProto(name=n) for n in names],
            initializer=[t for t in graph.initializer if t.name in needed],
        ),
        opset_imports=list(model.opset_import), ir_version=model.ir_version,
    )
    session = runtime.session(probe, "the constant part of the model")
    arrays = runtime.run(session, {}, names, what="the constant part of the model")
    return {n: np.asarray(a) for n, a in zip(names, arrays)}


def _reads(graph: onnx.GraphProto) -> set[str]:
    return {n for node in graph.node for n in node_reads(node)} | {v.name for v in graph.output}


def _drop_unread_constants(graph: onnx.GraphProto, read_before: set[str]) -> None:
    """Drop the constant nodes and initializers that were read before a change and are not
    any more (what only fed a lifted or replaced value); nothing else is touched."""
    _, nodes = _constant_nodes(graph)
    constant = set(nodes)
    read = {v.name for v in graph.output}  # grows backwards: the reads of the nodes kept
    kept: list[onnx.NodeProto] = []
    for i in reversed(range(len(graph.node))):
        node = graph.node[i]
        outs = [o for o in node.output if o]
        if i in constant and outs and all(o in read_before and o not in read for o in outs):
            continue
        kept.append(node)
        read.update(node_reads(node))
    kept.reverse()
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    inputs = {v.name for v in graph.input}
    inits = [t for t in graph.initializer if t.name in read or t.name not in read_before or t.name in inputs]
    if len(inits) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(inits)


def write_back(model: onnx.ModelProto, /, values: Mapping[str, np.ndarray]) -> None:
    """Write trained values of lifted parameters, in place, where the model computes them:
    into the ``Constant`` node that holds the value, else a ``Constant`` of the same name
    replaces the node that computed it; constant nodes nothing reads any more are dropped."""
    if not values:
        return
    graph = model.graph
    read_before = _reads(graph)
    for node in graph.node:
        if not node.output or node.output[0] not in values:
            continue
        name = node.output[0]
        array = np.asarray(values[name], np.float32)
        tensor = numpy_helper.from_array(array)
        replacement = helper.make_node("Constant", [], [name], name=node.name, value=tensor)
        if node.doc_string:
            replacement.doc_string = node.doc_string
        node.CopyFrom(replacement)
    _drop_unread_constants(graph, read_before)
    # Weights of an If branch folded for training (onnxsurgeon.train.control) go back into
    # the branch: the Constant node of that name.
    for node in graph.node:
        for g in subgraphs(node):
            _write_constants(g, values)


def _write_constants(graph: onnx.GraphProto, values: Mapping[str, np.ndarray]) -> None:
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in values:
            value = next(a for a in node.attribute if a.name == "value")
            value.t.CopyFrom(numpy_helper.from_array(np.asarray(values[node.output[0]], np.float32)))
        for g in subgraphs(node):
            _write_constants(g, values)


def constant_outputs(graph: onnx.GraphProto) -> set[str]:
    """Names of the Constant nodes of the subgraphs of `graph` (at any depth)."""
    found: set[str] = set()
    for node in graph.node:
        for g in subgraphs(node):
            found.update(n.output[0] for n in g.node if n.op_type == "Constant" and n.output)
            found |= constant_outputs(g)
    return found
