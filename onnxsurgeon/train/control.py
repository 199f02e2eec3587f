"""If, Loop and Scan in the training graph: an If whose condition is known before training
(constants, inputs fed whole) folded to its branch, a Loop or Scan whose length is known
unrolled, up to :data:`MAX_UNROLLED_NODES` nodes added in all. onnxruntime-training 1.19 has
no gradient for Loop and Scan, and generate_artifacts kills the process on an If decided by
an input (tests/test_train_rewrite.py)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon.expr import TensorType
from onnxsurgeon.graph import captured, rename_values
from onnxsurgeon.train.rewrite_core import Builder, Context, Unsupported, attrs_of, evaluate

# Unrolling a Loop or Scan stops (and the node is refused) beyond this many nodes in all.
MAX_UNROLLED_NODES = 20_000


def _inline(b: Builder, graph: onnx.GraphProto, bound: Mapping[str, str], tag: str) -> tuple[list[str], dict[str, onnx.NodeProto]]:
    """The nodes of a subgraph added to `b` with fresh names (its inputs bound to outer
    values); returns the outer names of its outputs and the added nodes by output.

    Its constants (initializers and Constant nodes without inputs) are added once per
    subgraph, shared by every iteration of an unrolled loop (a weight in a loop body is one
    weight), under their own names where those are free: a weight lifted to a parameter is
    then written back by its name (:mod:`onnxsurgeon.train.lift`)."""
    mapping = dict(bound)
    hoisted = b.cx.hoisted.setdefault(id(graph), {})
    for t in graph.initializer:
        if t.name not in hoisted:
            hoisted[t.name] = name = b.cx.fresh(t.name)
            b.nodes.append(helper.make_node("Constant", [], [name], name=name, value=t))
            _remember(b.cx, name, t)
        mapping[t.name] = hoisted[t.name]
    body = []
    for node in graph.node:
        if node.op_type == "Constant" and not node.input and node.domain in ("", "ai.onnx") and len(node.output) == 1:
            if node.output[0] not in hoisted:
                hoisted[node.output[0]] = name = b.cx.fresh(node.output[0])
                copy = onnx.NodeProto()
                copy.CopyFrom(node)
                copy.output[0] = name
                copy.name = b.cx.fresh(f"{b.label}/{node.name or name}")
                b.nodes.append(copy)
                if copy.attribute and copy.attribute[0].name == "value":
                    _remember(b.cx, name, copy.attribute[0].t)
            mapping[node.output[0]] = hoisted[node.output[0]]
            continue
        body.append(node)
        for o in node.output:
            if o:
                mapping[o] = b.cx.fresh(f"{b.label}/{tag}{o}")
    local: dict[str, onnx.NodeProto] = {}
    for node in body:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = b.cx.fresh(f"{b.label}/{tag}{node.name or node.op_type}")
        for i, v in enumerate(copy.input):
            copy.input[i] = mapping.get(v, v)
        for i, v in enumerate(copy.output):
            copy.output[i] = mapping.get(v, v)
        for attr in copy.attribute:  # values of this scope read inside nested subgraphs
            for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                rename_values(g, {k: v for k, v in mapping.items() if k in set(captured(g))})
        b.nodes.append(copy)
        for o in copy.output:
            local[o] = copy
    for vi in (*graph.value_info, *graph.output):  # the types the body records
        t = TensorType.from_proto(vi.type)
        if t is not None and vi.name in mapping:
            b.cx.types.setdefault(mapping[vi.name], t)
    return [mapping.get(o.name, o.name) for o in graph.output], local


def _remember(cx: Context, name: str, tensor: onnx.TensorProto) -> None:
    """A constant that may decide a condition (not a weight, which may train once lifted)."""
    value = numpy_helper.to_array(tensor)
    if value.dtype.kind not in "fc" or value.size <= 1:
        cx.evaluated[name] = value


def _graph_attr(node: onnx.NodeProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == name)


def fold_if(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """If whose condition is known before training -> the nodes of the branch it takes."""
    cond = evaluate(node.input[0], cx)
    if cond is None:
        raise Unsupported(
            f"its condition {node.input[0]!r} is computed from values not known before training "
            "(data or trained parameters); an input that decides it can be fed whole with --fixed"
        )
    branch = _graph_attr(node, "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch")
    b = Builder(node, cx)
    outs, _ = _inline(b, branch, {}, "")
    for want, have in zip(node.output, outs):
        if want:
            b.op("Identity", have, out=want)
    return b.nodes


def _size(graph: onnx.GraphProto) -> int:
    return sum(1 + sum(_size(g) for a in n.attribute for g in ([a.g] if a.HasField("g") else []) + list(a.graphs)) for n in graph.node)


def _budget(node: onnx.NodeProto, cx: Context, trips: int, body: onnx.GraphProto) -> None:
    adds = trips * (_size(body) + 4)
    if cx.unrolled[0] + adds > MAX_UNROLLED_NODES:
        raise Unsupported(
            f"unrolling it ({trips} iterations of {_size(body)} nodes) would bring the nodes added by unrolling to "
            f"{cx.unrolled[0] + adds}, more than the limit of {MAX_UNROLLED_NODES}"
        )
    cx.unrolled[0] += adds


def _stack(b: Builder, parts: list[str], axis: int, out: str) -> None:
    b.op("Concat", *[b.op("Unsqueeze", p, b.ints([axis])) for p in parts], out=out, axis=axis)


def unroll_loop(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """Loop whose trip count (and condition) is known before training -> its body repeated."""
    body = _graph_attr(node, "body")
    m_name = node.input[0] if node.input else ""
    c_name = node.input[1] if len(node.input) > 1 else ""
    trips = evaluate(m_name, cx) if m_name else None
    if trips is None:
        raise Unsupported(
            f"its trip count {m_name or '(none)'!r} is not known before training; an input that sets it can be fed whole with --fixed"
        )
    trips = int(np.asarray(trips).reshape(-1)[0])
    cond = True
    if c_name:
        value = evaluate(c_name, cx)
        if value is None:
            raise Unsupported(f"its condition {c_name!r} is computed from values not known before training")
        cond = bool(np.asarray(value).reshape(-1)[0])
    _budget(node, cx, trips, body)
    carried = list(node.input[2:])
    n_carried = len(carried)
    b = Builder(node, cx)
    scans: list[list[str]] = [[] for _ in range(len(body.output) - 1 - n_carried)]
    body_cond_in = body.input[1].name
    passes_cond = body.output[0].name == body_cond_in
    for i in range(trips):
        if not cond:
            break
        bound = {body.input[0].name: b.const(i, np.int64), body_cond_in: b.const(True, np.bool_)}
        bound.update({v.name: c for v, c in zip(body.input[2:], carried)})
        outs, local = _inline(b, body, bound, f"iter{i}/")
        if not passes_cond:
            value = evaluate(outs[0], cx, local)
            if value is None:
                raise Unsupported("its condition is computed in the body from values not known before training")
            cond = bool(np.asarray(value).reshape(-1)[0])
        carried = outs[1:1 + n_carried]
        for k, v in enumerate(outs[1 + n_carried:]):
            scans[k].append(v)
    for want, have in zip(node.output[:n_carried], carried):
        if want:
            b.op("Identity", have, out=want)
    for want, parts in zip(node.output[n_carried:], scans):
        if want:
            if not parts:
                raise Unsupported("it runs no iteration and has scan outputs")
            _stack(b, parts, 0, want)
    return b.nodes


def unroll_scan(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """Scan over sequences whose length is known before training -> its body repeated on
    each element (taken with Gather), the outputs stacked with Unsqueeze and Concat."""
    a = attrs_of(node)
    body = a["body"]
    m = int(a["num_scan_inputs"])
    inputs = list(node.input)
    n_states = len(inputs) - m
    in_axes = list(a.get("scan_input_axes", [0] * m))
    in_dirs = list(a.get("scan_input_directions", [0] * m))
    n_out = len(body.output) - n_states
    out_axes = list(a.get("scan_output_axes", [0] * n_out))
    out_dirs = list(a.get("scan_output_directions", [0] * n_out))
    lengths = set()
    for name, axis in zip(inputs[n_states:], in_axes):
        t = cx.types.get(name)
        size = t.shape[axis] if t is not None and t.shape is not None else None
        if not isinstance(size, int):
            raise Unsupported(f"the length of its scan input {name!r} is not known before training")
        lengths.add(size)
    if len(lengths) != 1:
        raise Unsupported("its scan inputs differ in length")
    trips = lengths.pop()
    _budget(node, cx, trips, body)
    b = Builder(node, cx)
    states = inputs[:n_states]
    scans: list[list[str]] = [[] for _ in range(n_out)]
    for i in range(trips):
        bound = {v.name: s for v, s in zip(body.input[:n_states], states)}
        for v, name, axis, rev in zip(body.input[n_states:], inputs[n_states:], in_axes, in_dirs):
            bound[v.name] = b.op("Gather", name, b.const(trips - 1 - i if rev else i, np.int64), axis=axis)
        outs, _ = _inline(b, body, bound, f"iter{i}/")
        states = outs[:n_states]
        for k, v in enumerate(outs[n_states:]):
            scans[k].append(v)
    for want, have in zip(node.output[:n_states], states):
        if want:
            b.op("Identity", have, out=want)
    for want, parts, axis, rev in zip(node.output[n_states:], scans, out_axes, out_dirs):
        if want:
            _stack(b, parts[::-1] if rev else parts, axis, want)
    return b.nodes


CONTROL: dict[str, Callable[[onnx.NodeProto, Context], list[onnx.NodeProto] | None]] = {
    "If": fold_if,
    "Loop": unroll_loop,
    "Scan": unroll_scan,
}
