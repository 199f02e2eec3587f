"""What the rewrites of :mod:`onnxsurgeon.train.rewrite` and :mod:`onnxsurgeon.train.control`
share: the context a rewrite reads (value types, values known before training), a builder
of the nodes that replace one node, and the evaluation of values known before training."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon.dtypes import FLOATS
from onnxsurgeon.expr import TensorType
from onnxsurgeon.graph import node_reads



class Unsupported(Exception):
    """A node of a rewritten op that cannot be rewritten here; the message says why."""


@dataclass
class Context:
    """What a rewrite may read: value types, values known before training, the opset."""

    types: dict[str, TensorType]
    known: Mapping[str, np.ndarray]  # constants and inputs fed whole (--fixed): known before training
    opset: int
    fresh: Callable[[str], str]
    model: onnx.ModelProto  # for evaluating values from known ones
    trains: set[str] = field(default_factory=set)  # parameters that may train: not known for deciding a branch
    unrolled: list[int] = field(default_factory=lambda: [0])  # nodes added by unrolling so far
    hoisted: dict[int, dict[str, str]] = field(default_factory=dict)  # subgraph -> its constants' names outside
    evaluated: dict[str, np.ndarray] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)  # outputs of nodes a rewrite wrote in the node's own op

    def static(self, name: str) -> tuple[int, ...] | None:
        t = self.types.get(name)
        if t is None or t.shape is None or not all(isinstance(d, int) for d in t.shape):
            return None
        return tuple(t.shape)  # type: ignore[arg-type]

    def rank(self, name: str) -> int | None:
        t = self.types.get(name)
        return None if t is None else t.rank

    def elem(self, name: str) -> int | None:
        t = self.types.get(name)
        return None if t is None else t.elem


class Builder:
    """Nodes written for one rewritten node, named after it."""

    def __init__(self, node: onnx.NodeProto, cx: Context) -> None:
        self.node, self.cx = node, cx
        self.label = node.name or node.output[0]
        self.nodes: list[onnx.NodeProto] = []
        t = cx.types.get(node.input[0]) if node.input and node.input[0] else None
        self.dtype = helper.tensor_dtype_to_np_dtype(t.elem if t is not None and t.elem in FLOATS else onnx.TensorProto.FLOAT)

    def op(self, kind: str, *inputs: str, out: str | None = None, n: int = 1, **attrs) -> str:
        outs = [out] if out is not None else [self.cx.fresh(f"{self.label}/{kind.lower()}") for _ in range(n)]
        self.nodes.append(helper.make_node(kind, list(inputs), outs, name=self.cx.fresh(f"{self.label}/{kind}"), **attrs))
        return outs[0]

    def ops(self, kind: str, *inputs: str, outs: list[str], **attrs) -> list[str]:
        self.nodes.append(helper.make_node(kind, list(inputs), outs, name=self.cx.fresh(f"{self.label}/{kind}"), **attrs))
        return outs

    def const(self, value, dtype=None) -> str:
        array = np.array(value, dtype if dtype is not None else self.dtype)
        name = self.cx.fresh(f"{self.label}/c")
        self.nodes.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(array)))
        self.cx.evaluated[name] = array
        return name

    def ints(self, values) -> str:
        return self.const(list(values), np.int64)

    def reduce(self, kind: str, x: str, axes: list[int], keepdims: int = 1, out: str | None = None) -> str:
        """ReduceSum/Mean/L2 over `axes`, in the form of the opset (axes as an input from 18, 13 for ReduceSum)."""
        if kind == "ReduceSum" or self.cx.opset >= 18:
            return self.op(kind, x, self.ints(axes), out=out, keepdims=keepdims)
        return self.op(kind, x, out=out, axes=list(axes), keepdims=keepdims)


def attrs_of(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def known_value(name: str, cx: Context) -> np.ndarray | None:
    return cx.known[name] if name and name in cx.known else None



class Known(Mapping[str, np.ndarray]):
    """Values known before training, decoded only when a rewrite reads one: Constant nodes,
    initializers, and the inputs fed whole at every step. A parameter that trains is known
    at its initial value only: it may be read where no gradient flows (Resize's scales), not
    to decide a branch (see ``Context.trains``)."""

    def __init__(self, model: onnx.ModelProto, fixed: Mapping[str, np.ndarray]) -> None:
        self._tensors: dict[str, onnx.TensorProto | onnx.AttributeProto] = {t.name: t for t in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
                self._tensors[node.output[0]] = node.attribute[0]
        self._values: dict[str, np.ndarray] = {name: np.asarray(v) for name, v in fixed.items()}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._values:
            self._values[name] = _decode(self._tensors[name])
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values or name in self._tensors

    def __iter__(self):
        return iter({**self._tensors, **self._values})

    def __len__(self) -> int:
        return len({**self._tensors, **self._values})


def _decode(t: onnx.TensorProto | onnx.AttributeProto) -> np.ndarray:
    if isinstance(t, onnx.TensorProto):
        return numpy_helper.to_array(t)
    if t.name == "value":
        return numpy_helper.to_array(t.t)
    value = helper.get_attribute_value(t)
    return np.array(value, np.float32 if t.name.startswith("value_float") else np.int64 if t.name.startswith("value_int") else None)


def known_values(model: onnx.ModelProto, fixed: Mapping[str, np.ndarray]) -> Known:
    """The values known before training (:class:`Known`), decoded when read."""
    return Known(model, fixed)


def evaluate(name: str, cx: Context, local: Mapping[str, onnx.NodeProto] | None = None) -> np.ndarray | None:
    """The value of `name` if it follows from values known before training alone (constants,
    initializers that do not train, inputs fed whole), computed by onnxruntime; else None."""
    if name in cx.evaluated:
        return cx.evaluated[name]
    if name in cx.known and name not in cx.trains:
        return cx.known[name]
    producers = {**cx.producers, **(local or {})}
    needed: list[onnx.NodeProto] = []
    seen: set[int] = set()
    leaves: dict[str, np.ndarray] = {}
    stack = [name]
    while stack:
        v = stack.pop()
        if v in leaves or not v:
            continue
        if v in cx.evaluated or (v in cx.known and v not in cx.trains):
            leaves[v] = cx.evaluated[v] if v in cx.evaluated else cx.known[v]
            continue
        node = producers.get(v)
        if node is None or node.op_type.startswith("Random") or len(needed) > 1000:
            return None
        if node.op_type == "Shape":  # known where the sizes are (exporters branch on them)
            shape = _shape_value(node, cx)
            if shape is None:
                return None
            leaves[v] = shape
            continue
        picked = _picked_size(node, cx, producers)
        if picked is not None:  # Gather(Shape(x), k) where x's size k is known
            leaves[v] = picked
            continue
        if id(node) not in seen:
            seen.add(id(node))
            needed.append(node)
            stack.extend(node_reads(node))
    from onnxsurgeon import runtime

    order = [n for n in _topological(needed)]
    graph = helper.make_graph(
        order, "known", [], [helper.make_tensor_value_info(name, cx.elem(name) or onnx.TensorProto.UNDEFINED, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in leaves.items()],
    )
    probe = helper.make_model(graph, opset_imports=list(cx.model.opset_import))
    probe.ir_version = min(cx.model.ir_version, 10)
    try:
        value = runtime.session(probe, what=f"the value of {name!r}").run(None, {})[0]
    except Exception:  # not computable on its own: treated as not known
        return None
    cx.evaluated[name] = np.asarray(value)
    return cx.evaluated[name]


def _shape_value(node: onnx.NodeProto, cx: Context) -> np.ndarray | None:
    t = cx.types.get(node.input[0])
    if t is None or t.shape is None:
        return None
    a = attrs_of(node)
    rank = len(t.shape)
    start, end = int(a.get("start", 0)), int(a.get("end", rank))
    dims = t.shape[slice(start, end)]
    if not all(isinstance(d, int) for d in dims):
        return None
    return np.array(dims, np.int64)


def _picked_size(node: onnx.NodeProto, cx: Context, producers: Mapping[str, onnx.NodeProto]) -> np.ndarray | None:
    shape_node = producers.get(node.input[0]) if node.op_type == "Gather" and node.input else None
    if shape_node is None or shape_node.op_type != "Shape" or len(node.input) < 2:
        return None
    t = cx.types.get(shape_node.input[0])
    index = evaluate(node.input[1], cx, producers)
    if t is None or t.shape is None or index is None:
        return None
    a = attrs_of(shape_node)
    dims = list(t.shape)[slice(int(a.get("start", 0)), int(a.get("end", len(t.shape))))]
    try:
        picked = np.asarray(dims, dtype=object)[np.asarray(index)]
    except IndexError:
        return None
    if not all(isinstance(d, int) for d in np.asarray(picked, dtype=object).reshape(-1).tolist()):
        return None
    return np.asarray(picked, np.int64)


def _topological(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    made = {o for n in nodes for o in n.output}
    order, placed, pending = [], set(), list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(r not in made or r in placed for r in node_reads(n)):
                order.append(n)
                placed.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            return order + rest
        pending = rest
    return order
