"""Parameter modes (SPEC section 3). ``constant`` freezes a piece into inference form:
BatchNormalization becomes a fixed per-channel Mul and Add, and Dropout disappears.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon import serde
from onnxsurgeon.graph import is_op, node_reads, rename_values

MODES = ("learnable", "constant", "shared")


def freeze(
    graph: onnx.GraphProto,
    rank_of: Callable[[str], int | None],
    outputs: set[str],
    elem_of: Callable[[str], int | None] | None = None,
) -> tuple[list[str], list[str], list[str]]:
    """Rewrite a graph in place into inference form.

    ``rank_of`` gives the rank of a value where known, ``elem_of`` its element type (a folded
    BatchNormalization computes in its input's type, which may differ from its parameters'
    from opset 15 on); ``outputs`` are the names that must survive. Returns the BatchNormalization nodes folded, the Dropout nodes removed and
    warnings for nodes that could not be rewritten.
    """
    inits = {t.name: t for t in graph.initializer}
    taken = set(inits) | {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    folded: list[str] = []
    removed: list[str] = []
    warnings: list[str] = []
    substitute: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        return name

    def alias_to(value: str, source: str) -> None:
        # The value becomes another name for `source`: renamed away, unless a graph output
        # must keep its name, in which case an Identity carries it.
        if value in outputs:
            new_nodes.append(helper.make_node("Identity", [source], [value], name=fresh(f"{value}/identity")))
        else:
            substitute[value] = source

    for node in graph.node:
        label = node.name or node.output[0]
        if is_op(node, "Dropout"):
            data = node.input[0]
            alias_to(node.output[0], data)
            if len(node.output) > 1 and node.output[1]:
                shape = fresh(f"{node.output[1]}/shape")
                new_nodes.append(helper.make_node("Shape", [data], [shape], name=fresh(f"{label}/mask_shape")))
                new_nodes.append(
                    helper.make_node(
                        "ConstantOfShape",
                        [shape],
                        [node.output[1]],
                        name=fresh(f"{label}/mask"),
                        value=helper.make_tensor("value", onnx.TensorProto.BOOL, [1], [True]),
                    )
                )
            removed.append(label)
            continue
        if is_op(node, "BatchNormalization"):
            result = _fold_batchnorm(node, inits, rank_of, fresh, elem_of)
            if isinstance(result, str):
                warnings.append(f"BatchNormalization {label!r} kept: {result}")
                new_nodes.append(node)
                continue
            nodes, tensors = result
            new_nodes.extend(nodes)
            graph.initializer.extend(tensors)
            # Running statistics do not move in inference: later readers see the stored ones.
            for k, stat in ((1, node.input[3]), (2, node.input[4])):
                if len(node.output) > k and node.output[k]:
                    alias_to(node.output[k], stat)
            for extra in node.output[3:]:
                if extra:
                    warnings.append(f"BatchNormalization {label!r}: batch statistic {extra!r} has no inference value")
            folded.append(label)
            continue
        new_nodes.append(node)

    del graph.node[:]
    graph.node.extend(new_nodes)
    if substitute:
        # follow chains (a Dropout fed by another Dropout)
        resolved = {}
        for k in substitute:
            v = k
            while v in substitute:
                v = substitute[v]
            resolved[k] = v
        keep_vi = [vi for vi in graph.value_info if vi.name not in resolved]
        del graph.value_info[:]
        graph.value_info.extend(keep_vi)
        rename_values(graph, resolved)
    prune(graph, outputs)
    return folded, removed, warnings


def _fold_batchnorm(node, inits, rank_of, fresh, elem_of=None):
    x, y = node.input[0], node.output[0]
    params = list(node.input[1:5])
    missing = [p for p in params if p not in inits]
    if missing:
        return f"its parameters {missing} are not stored in the model"
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("spatial", 1) != 1:
        return "spatial=0 is not supported"
    rank = rank_of(x) or rank_of(y)
    if rank is None:
        return f"the rank of {x!r} is unknown"
    eps = float(attrs.get("epsilon", 1e-5))
    scale, bias, mean, var = (serde.to_array(inits[p]).astype(np.float64) for p in params)
    a = scale / np.sqrt(var + eps)
    b = bias - mean * a
    elem = (elem_of(x) or elem_of(y) if elem_of is not None else None) or inits[params[0]].data_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    shape = [-1] + [1] * max(rank - 2, 0)
    label = node.name or y
    a_t = numpy_helper.from_array(a.reshape(shape).astype(dtype), fresh(f"{label}.folded_scale"))
    b_t = numpy_helper.from_array(b.reshape(shape).astype(dtype), fresh(f"{label}.folded_bias"))
    scaled = fresh(f"{y}/scaled")
    nodes = [
        helper.make_node("Mul", [x, a_t.name], [scaled], name=fresh(f"{label}/folded_mul")),
        helper.make_node("Add", [scaled, b_t.name], [y], name=fresh(f"{label}/folded_add")),
    ]
    return nodes, [a_t, b_t]


def prune(graph: onnx.GraphProto, outputs: set[str]) -> None:
    """Drop nodes and initializers that no output needs."""
    live = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in live for o in node.output):
            keep.append(node)
            live.update(node_reads(node))
    if len(keep) != len(graph.node):
        keep.reverse()
        del graph.node[:]
        graph.node.extend(keep)
    if any(t.name not in live for t in graph.initializer):
        dropped = {t.name for t in graph.initializer if t.name not in live}
        tensors = [t for t in graph.initializer if t.name in live]
        del graph.initializer[:]
        graph.initializer.extend(tensors)
        if any(v.name in dropped for v in graph.input):  # IR 3 lists initializers as inputs too
            inputs = [v for v in graph.input if v.name not in dropped]
            del graph.input[:]
            graph.input.extend(inputs)


def inference_view(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model with BatchNormalization on its running statistics and Dropout off:
    the semantics a ``constant`` piece is frozen to, and what ``verify`` compares it with."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    extra: list[onnx.NodeProto] = []
    for node in out.graph.node:
        if is_op(node, "Dropout") and len(node.input) > 2:
            node.input[2] = ""  # no training_mode: inference
        elif is_op(node, "BatchNormalization") and any(
            a.name == "training_mode" and a.i for a in node.attribute
        ):
            attrs = [a for a in node.attribute if a.name != "training_mode"]
            del node.attribute[:]
            node.attribute.extend(attrs)
            for k, stat in ((1, node.input[3]), (2, node.input[4])):
                if len(node.output) > k and node.output[k]:
                    extra.append(helper.make_node("Identity", [stat], [node.output[k]]))
            del node.output[1:]
    out.graph.node.extend(extra)
    return out
