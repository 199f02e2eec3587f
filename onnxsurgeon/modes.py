"""Parameter modes (SPEC section 3). ``constant`` freezes a piece into inference form:
BatchNormalization becomes a fixed per-channel Mul and Add, and Dropout disappears.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon import serde
from onnxsurgeon import dtypes
from onnxsurgeon.graph import is_op, node_reads, rename_values, subgraphs

MODES = ("learnable", "constant", "shared")


def freeze(
    graph: onnx.GraphProto,
    rank_of: Callable[[str], int | None],
    outputs: set[str],
    elem_of: Callable[[str], int | None] | None = None,
    functions: Iterable[onnx.FunctionProto] = (),
) -> tuple[list[str], list[str], list[str]]:
    """Rewrite a graph in place into inference form, with the If/Loop/Scan bodies inside it
    and the model-local ``functions`` its nodes may call.

    ``rank_of`` gives the rank of a value where known, ``elem_of`` its element type (a folded
    BatchNormalization computes in its input's type, which may differ from its parameters'
    from opset 15 on); ``outputs`` are the names that must survive. Returns the BatchNormalization nodes folded, the Dropout nodes removed and
    warnings for nodes that could not be rewritten.
    """
    inits = {t.name: t for t in graph.initializer}
    functions = list(functions)
    taken = set(inits) | {o for n in graph.node for o in n.output} | {v.name for v in graph.input}
    taken |= _nested_names(graph, functions)
    folded: list[str] = []
    removed: list[str] = []
    warnings: list[str] = []
    substitute: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    top = _Scope({**_constant_nodes(graph.node), **inits}, rank_of, elem_of)

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
                if _trains(node):  # not foldable, but never random: the inference-mode op
                    warnings.append(f"BatchNormalization {label!r} kept in inference mode: {result}")
                    new_nodes.extend(_inference_batchnorm(node, fresh))
                else:
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
        if node.attribute:
            for sub in subgraphs(node):
                _freeze_body(sub.node, _Scope.of_graph(sub, top), fresh, folded, removed, warnings)
        new_nodes.append(node)
    for f in functions:
        _freeze_body(f.node, _Scope.of_function(f), fresh, folded, removed, warnings)

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


# --- inside If/Loop/Scan bodies and local functions -----------------------------------------
# A body's outputs and the values deeper bodies capture keep their names, so a body is never
# renamed or pruned: a removed Dropout or a folded BatchNormalization leaves an Identity or
# Constant nodes behind, and the folded factors are Constant nodes of the body itself.


def _nested_names(graph: onnx.GraphProto, functions: list[onnx.FunctionProto]) -> set[str]:
    """Every name defined inside the graph's bodies and in the functions: a fresh name at any
    level must not shadow or be shadowed by one of them."""
    names: set[str] = set()

    def body(nodes) -> None:
        for node in nodes:
            names.update(node.output)
            for sub in subgraphs(node):
                names.update(v.name for v in sub.input)
                names.update(t.name for t in sub.initializer)
                body(sub.node)

    for node in graph.node:
        for sub in subgraphs(node):
            names.update(v.name for v in sub.input)
            names.update(t.name for t in sub.initializer)
            body(sub.node)
    for f in functions:
        names.update(f.input)
        body(f.node)
    return names


@dataclass(frozen=True)
class _Scope:
    """What a body knows of its values: the constant tensors it can read (its initializers and
    Constant nodes, and those of the scopes around it that it does not shadow), ranks and
    element types."""

    consts: dict
    rank_of: Callable[[str], int | None]
    elem_of: Callable[[str], int | None] | None

    @staticmethod
    def of_graph(g: onnx.GraphProto, outer: _Scope) -> _Scope:
        local = {v.name for v in g.input} | {o for n in g.node for o in n.output}
        consts = {k: t for k, t in outer.consts.items() if k not in local}
        consts.update((t.name, t) for t in g.initializer)
        consts.update(_constant_nodes(g.node))
        types = {v.name: v.type for v in (*g.input, *g.output, *g.value_info)}

        def rank_of(name: str) -> int | None:
            return dtypes.rank(types.get(name)) if name in types or name in local else outer.rank_of(name)

        def elem_of(name: str) -> int | None:
            if name in types:
                t = types[name]
                return t.tensor_type.elem_type or None if t.HasField("tensor_type") else None
            return None if name in local or outer.elem_of is None else outer.elem_of(name)

        return _Scope(consts, rank_of, elem_of)

    @staticmethod
    def of_function(f: onnx.FunctionProto) -> _Scope:
        # a function's parameters are its inputs: only its own Constant nodes fold
        types = {v.name: v.type for v in getattr(f, "value_info", ())}
        return _Scope(
            _constant_nodes(f.node),
            lambda name: dtypes.rank(types.get(name)),
            lambda name: types[name].tensor_type.elem_type or None if name in types and types[name].HasField("tensor_type") else None,
        )


def _constant_nodes(nodes) -> dict:
    out = {}
    for n in nodes:
        if is_op(n, "Constant") and len(n.attribute) == 1 and n.attribute[0].name == "value" and not n.attribute[0].ref_attr_name:
            t = onnx.TensorProto()
            t.CopyFrom(n.attribute[0].t)
            t.name = n.output[0]
            out[n.output[0]] = t
    return out


def _trains(node: onnx.NodeProto) -> bool:
    """Whether a BatchNormalization computes batch statistics: training_mode=1 (opset 14 on),
    or the running-statistics outputs asked for (opsets 9 to 13)."""
    return any(a.name == "training_mode" and (a.i or a.ref_attr_name) for a in node.attribute) or len(node.output) > 1


def _inference_batchnorm(node: onnx.NodeProto, fresh) -> list[onnx.NodeProto]:
    """The node in inference mode; the running statistics it returned are the stored ones."""
    label = node.name or node.output[0]
    bn = onnx.NodeProto()
    bn.CopyFrom(node)
    attrs = [a for a in bn.attribute if a.name != "training_mode"]
    del bn.attribute[:]
    bn.attribute.extend(attrs)
    del bn.output[1:]
    nodes = [bn]
    for k, stat in ((1, node.input[3]), (2, node.input[4])):
        if len(node.output) > k and node.output[k]:
            nodes.append(helper.make_node("Identity", [stat], [node.output[k]], name=fresh(f"{label}/running_{k}")))
    return nodes


def _freeze_body(nodes, scope: _Scope, fresh, folded: list[str], removed: list[str], warnings: list[str]) -> None:
    """Rewrite a body's nodes in place into inference form (see :func:`freeze`)."""
    if not any(is_op(n, "Dropout") or is_op(n, "BatchNormalization") or n.attribute for n in nodes):
        return
    out: list[onnx.NodeProto] = []
    changed = False
    for node in nodes:
        label = node.name or node.output[0]
        if is_op(node, "Dropout"):
            data = node.input[0]
            out.append(helper.make_node("Identity", [data], [node.output[0]], name=fresh(f"{label}/identity")))
            if len(node.output) > 1 and node.output[1]:
                shape = fresh(f"{node.output[1]}/shape")
                out.append(helper.make_node("Shape", [data], [shape], name=fresh(f"{label}/mask_shape")))
                out.append(helper.make_node(
                    "ConstantOfShape", [shape], [node.output[1]], name=fresh(f"{label}/mask"),
                    value=helper.make_tensor("value", onnx.TensorProto.BOOL, [1], [True]),
                ))
            removed.append(label)
            changed = True
            continue
        if is_op(node, "BatchNormalization"):
            result = _fold_batchnorm(node, scope.consts, scope.rank_of, fresh, scope.elem_of)
            if isinstance(result, str):
                if _trains(node):
                    warnings.append(f"BatchNormalization {label!r} kept in inference mode: {result}")
                    out.extend(_inference_batchnorm(node, fresh))
                    changed = True
                else:
                    out.append(node)
                continue
            new, tensors = result
            out.extend(helper.make_node("Constant", [], [t.name], name=fresh(f"{t.name}/constant"), value=t) for t in tensors)
            out.extend(new)
            for k, stat in ((1, node.input[3]), (2, node.input[4])):
                if len(node.output) > k and node.output[k]:
                    out.append(helper.make_node("Identity", [stat], [node.output[k]], name=fresh(f"{label}/running_{k}")))
            for extra in node.output[3:]:
                if extra:
                    warnings.append(f"BatchNormalization {label!r}: batch statistic {extra!r} has no inference value")
            folded.append(label)
            changed = True
            continue
        if node.attribute:
            for sub in subgraphs(node):
                _freeze_body(sub.node, _Scope.of_graph(sub, scope), fresh, folded, removed, warnings)
        out.append(node)
    if changed:
        del nodes[:]
        nodes.extend(out)


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
    """A copy of a model with BatchNormalization on its running statistics and Dropout off,
    in the graph, the bodies inside it and the local functions: the semantics a ``constant``
    piece is frozen to, and what ``verify`` compares it with."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _inference_nodes(out.graph.node)
    for f in out.functions:
        _inference_nodes(f.node)
    return out


def _inference_nodes(nodes) -> None:
    rewritten: list[onnx.NodeProto] = []
    changed = False
    for node in nodes:
        rewritten.append(node)
        if is_op(node, "Dropout") and len(node.input) > 2:
            node.input[2] = ""  # no training_mode: inference
        elif is_op(node, "BatchNormalization") and _trains(node):
            # the running statistics come out as they went in, right after the node
            rewritten[-1:] = _inference_batchnorm(node, lambda base: "")
            changed = True
        elif node.attribute:
            for sub in subgraphs(node):
                _inference_nodes(sub.node)
    if changed:
        del nodes[:]
        nodes.extend(rewritten)
