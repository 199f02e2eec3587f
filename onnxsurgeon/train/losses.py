"""Losses and metrics written as expressions, compiled into the graph being trained.

``ce(z, labels)``, ``w * ce(z, labels)``, ``0.3 * mse(recon, features) + ce(z, labels)`` or
``ce(0.1 * labels + 0.9 * softmax(zRef), z)`` are parsed by :mod:`onnxsurgeon.expr` (the
language ``compose`` uses; nothing is ever passed to ``eval``) and become ONNX nodes
appended to the model. A name in an expression is a value of the model (an output, an input
or any value by the usual name rules, aliases included) or an array of the data (labels,
per-example weights), which becomes a new graph input.

Every loss function gives one value per example: it reduces the class or feature axis (the
last) and keeps the others; the training loss is the mean of the expression over the batch
(and any remaining axes). So ``w * ce(z, labels)`` weights examples, with ``w`` of shape
``[N]``.

- ``ce(z, target, axis=-1)``: softmax cross-entropy. ``target`` holds class indices (an
  integer array, shaped like ``z`` without the class axis) or a distribution over the
  classes (one-hot or soft labels, shaped like ``z``). Written the other way round,
  ``ce(target, z)``, where only ``z`` depends on trained parameters, the arguments are
  taken in that sense (and the report says so).
- ``mse(a, b)``: mean of squared differences over the last axis.
- ``bce(logits, targets)``: binary cross-entropy on logits, computed as
  ``relu(x) - x*t + log(1 + exp(-|x|))`` so that large logits cannot overflow.
- ``error(z, labels, axis=-1)``: 1 where the arg-max of ``z`` is not the label (metric).
- ``hamming(scores, targets, threshold=0)``: the fraction of outputs whose decision
  ``scores > threshold`` differs from ``targets > 0.5`` (metric; CNTK's multi-label metric).
  Give ``threshold=0.5`` for probabilities.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxsurgeon.dtypes import FLOATS
from onnxsurgeon.errors import InputError
from onnxsurgeon.expr import (
    ArgumentError,
    Builder,
    ExprError,
    Function,
    Param,
    TensorType,
    Value,
    broadcast,
    evaluate,
    names_in,
    parse,
    tensor_functions,
)
from onnxsurgeon.graph import GraphIndex, default_opset, downstream
from onnxsurgeon.names import Resolver, alias



@dataclass(frozen=True)
class Objective:
    """What was compiled: the loss and metric outputs and the data they read."""

    loss: str | None  # the expression
    loss_output: str | None  # its graph output (a scalar)
    metrics: tuple[tuple[str, str], ...]  # (expression, graph output)
    data_inputs: tuple[tuple[str, TensorType], ...]  # arrays of the data that became graph inputs
    reads: tuple[str, ...]  # values of the model the expressions read
    notes: tuple[str, ...]
    # (data array, number of classes or None, the call): arrays read as class indices, checked on the data
    class_indices: tuple[tuple[str, int | None, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "loss": self.loss,
            "metrics": [m for m, _ in self.metrics],
            "data_inputs": {n: str(t) for n, t in self.data_inputs},
            "reads": list(self.reads),
            "notes": list(self.notes),
        }


def batch_symbol(model: onnx.ModelProto, axes: Mapping[str, int | None] | None = None) -> str | int:
    """The example axis: the symbolic dim of the first graph input on its batch axis
    (`axes`: 0 unless given; None for an input fed whole); its size where every such input
    has a fixed size there (a model exported for one batch size: its labels must have that
    many examples, not a symbolic number)."""
    inits = {t.name for t in model.graph.initializer}
    axes = axes or {}
    fixed: int | None = None
    for v in model.graph.input:
        axis = axes.get(v.name, 0)
        if v.name in inits or v.type.WhichOneof("value") != "tensor_type" or axis is None:
            continue
        dims = v.type.tensor_type.shape.dim
        if len(dims) > axis and dims[axis].dim_param:
            return dims[axis].dim_param
        if fixed is None and len(dims) > axis and dims[axis].dim_value > 0:
            fixed = dims[axis].dim_value
        elif len(dims) > axis and not dims[axis].dim_value:
            return "N"
    return fixed if fixed is not None else "N"


def value_types(model: onnx.ModelProto) -> dict[str, TensorType]:
    """Known tensor types of the values of the main graph, inferring what the model omits."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in probe.graph.initializer:  # inference needs the dims only
        if t.data_location == onnx.TensorProto.EXTERNAL:
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    try:
        probe = onnx.shape_inference.infer_shapes(probe)
    except Exception:  # fall back to what the model records
        pass
    types: dict[str, TensorType] = {}
    g = probe.graph
    for vi in (*g.value_info, *g.input, *g.output):
        t = TensorType.from_proto(vi.type)
        if t is not None:
            types[vi.name] = t
    for t in g.initializer:
        types[t.name] = TensorType(t.data_type, tuple(t.dims))
    return types


def data_type(array: np.ndarray, float_elem: int, batch: str | int, axis: int | None = 0) -> TensorType:
    """The graph type of a data array a loss reads: floats and booleans in the model's float
    type, integers as int64, the example on `axis` (None: a fixed array, its own shape)."""
    if np.issubdtype(array.dtype, np.integer):
        elem = onnx.TensorProto.INT64
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        elem = float_elem
    else:
        raise InputError(f"a loss cannot read an array of type {array.dtype}", "store numbers: floats, integers or booleans")
    shape: list = list(array.shape)
    if axis is not None and axis < len(shape):
        shape[axis] = batch
    return TensorType(elem, tuple(shape))


def names_read(expressions: Sequence[str]) -> list[str]:
    """The names the expressions read, in order of first use (syntax errors raise)."""
    seen: dict[str, None] = {}
    for text in expressions:
        for n in names_in(parse(text)):
            seen.setdefault(n.id, None)
    return list(seen)


def split_names(model: onnx.ModelProto, names: Sequence[str], arrays: Mapping[str, Any]) -> tuple[dict[str, str], list[str], list[str]]:
    """Sort the names an expression reads: model values (name -> value), data arrays, misses.

    Order: an exact value of the model, an exact array name, an alias among the graph's
    inputs, outputs and the arrays, then any value by the usual rules (node names, aliases).
    """
    index = GraphIndex(model.graph)
    visible: dict[str, list[tuple[str, str]]] = {}
    for n in (*index.outputs, *index.inputs):
        visible.setdefault(alias(n), []).append(("model", n))
    for n in arrays:
        visible.setdefault(alias(n), []).append(("data", n))
    model_values: dict[str, str] = {}
    data: list[str] = []
    missing: list[str] = []
    resolver = Resolver(index)
    for name in names:
        if index.has_value(name):
            model_values[name] = name
            continue
        if name in arrays:
            data.append(name)
            continue
        hits = sorted(set(visible.get(alias(name), [])))
        if len(hits) > 1:
            raise InputError(
                f"{name!r} is ambiguous: it is the alias of " + ", ".join(f"{what} {n!r}" for what, n in hits),
                "write the name so that it matches one value exactly",
            )
        if hits:
            what, n = hits[0]
            if what == "model":
                model_values[name] = n
            else:
                data.append(n)
            continue
        try:
            model_values[name] = resolver.resolve(name).value
        except InputError:
            missing.append(name)
    return model_values, data, missing


def unknown_names_error(missing: list[str], model: onnx.ModelProto, arrays: Mapping[str, Any], label: str) -> InputError:
    index = GraphIndex(model.graph)
    pool = [alias(n) for n in (*index.outputs, *index.inputs)] + list(arrays)
    resolver = Resolver(index)
    parts = []
    for name in missing:
        close = difflib.get_close_matches(name, pool, n=3, cutoff=0.6)
        # any other value, written as its alias: what an expression can name
        close += [a for a in (alias(n) for n in resolver.suggest(name, 3)) if a not in close][: 3 - len(close)]
        parts.append(f"{name!r}" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
    outputs = ", ".join(alias(n) for n in index.outputs)
    return InputError(
        f"unknown name{'s' if len(missing) > 1 else ''} in the loss or metrics: {', '.join(parts)}",
        f"a name is an output of the model ({outputs}), another value of it, or an array of {label} "
        f"({', '.join(arrays) or 'none'})",
    )


class _Functions:
    """The loss and metric functions over one builder."""

    def __init__(self, b: Builder, opset: int, depends: Callable[[str], bool], notes: list[str],
                 data: Sequence[str] = (), indices: list | None = None) -> None:
        self.b, self.opset, self.depends, self.notes = b, opset, depends, notes
        self.data, self.indices = set(data), indices if indices is not None else []

    def _class_indices(self, target: Value, z: Value, axis: int, fn: str) -> None:
        """Remember a data array read as class indices, to check its values against the
        class axis before anything runs (an index out of range fails or, for -1, silently
        picks the last class)."""
        if z.type.rank is not None and target.type.rank is not None and target.type.rank != z.type.rank - 1:
            raise ArgumentError(
                1, f"{fn}: class indices {target.shown} ({target.type}) must have the shape of {z.shown} ({z.type}) without its class axis",
                "one-hot labels are floats shaped like the scores; class indices are integers",
            )
        if target.name in self.data:
            k = axis % z.type.rank if z.type.rank else axis
            classes = z.type.shape[k] if z.type.shape is not None and isinstance(z.type.shape[k], int) else None
            self.indices.append((target.name, classes, f"{fn}({z.shown}, {target.shown})"))

    def _not_float_indices(self, target: Value, z: Value, fn: str) -> None:
        if z.type.rank is not None and target.type.rank is not None and target.type.rank == z.type.rank - 1:
            raise ArgumentError(
                1, f"{fn}: {target.shown} ({target.type}) has the shape of class indices, but holds floats",
                f"store class indices as integers (labels.astype(numpy.int64)); one-hot or soft labels are shaped like {z.shown} ({z.type})",
            )

    def table(self) -> dict[str, Function]:
        V = Param
        axis = Param("axis", "int", -1)
        return {
            "ce": Function("ce", (V("z"), V("target"), axis), self.ce, "softmax cross-entropy per example"),
            "mse": Function("mse", (V("a"), V("b")), self.mse, "mean squared error per example"),
            "bce": Function("bce", (V("logits"), V("targets")), self.bce, "binary cross-entropy on logits per example"),
            "error": Function("error", (V("z"), V("labels"), axis), self.error, "1 where the arg-max is not the label"),
            "hamming": Function(
                "hamming", (V("scores"), V("targets"), Param("threshold", "number", 0.0)), self.hamming,
                "fraction of wrong yes/no decisions per example",
            ),
        }

    # --- helpers --------------------------------------------------------------------------

    def _const(self, value: Any, elem: int) -> str:
        return self.b.constant(value, elem)

    def _axes(self, axes: list[int]) -> str:
        return self.b.constant(np.array(axes, dtype=np.int64), onnx.TensorProto.INT64, hint="axes")

    def _reduce(self, op: str, x: Value, axis: int) -> Value:
        """``op`` over one axis, dropped."""
        shape = _drop(x.type, axis)
        t = TensorType(x.type.elem, shape)
        if op == "ReduceSum" and self.opset >= 13 or self.opset >= 18:
            return self.b.node(op, [x.name, self._axes([axis])], t, keepdims=0)
        return self.b.node(op, [x.name], t, axes=[axis], keepdims=0)

    def _per_example(self, x: Value) -> Value:
        """The mean over the last axis, when there is an axis besides the example's."""
        if x.type.rank is not None and x.type.rank <= 1:
            return x
        return self._reduce("ReduceMean", x, -1)

    @staticmethod
    def _same_shape(a: Value, b: Value, fn: str) -> None:
        """Elementwise losses compare like with like: no silent broadcasting."""
        if a.type.shape is None or b.type.shape is None:
            return
        fits = len(a.type.shape) == len(b.type.shape) and all(
            x == y or x is None or y is None or isinstance(x, str) or isinstance(y, str)
            for x, y in zip(a.type.shape, b.type.shape)
        )
        if not fits:
            raise ArgumentError(1, f"{fn}: the shapes of {a.shown} ({a.type}) and {b.shown} ({b.type}) differ")

    @staticmethod
    def _float(v: Value, fn: str, which: int) -> None:
        if v.type.elem not in FLOATS:
            raise ArgumentError(which, f"{fn}: {v.shown} is {v.type.dtype}; it must be a floating-point value")

    # --- losses ----------------------------------------------------------------------------

    def ce(self, z: Value, target: Value, axis: int) -> Value:
        b = self.b
        if z.type.elem in FLOATS and target.type.elem in FLOATS and not self.depends(z.name) and self.depends(target.name):
            first = "the first argument" if z.name in self.b.producers else z.shown
            self.notes.append(
                f"ce: took {target.shown} as the scores (only it depends on trained parameters) and {first} as the target"
            )
            z, target = target, z
        if z.type.elem not in FLOATS and target.type.elem in FLOATS:
            z, target = target, z
        self._float(z, "ce", 0)
        if z.type.rank is not None and z.type.rank < 1:
            raise ArgumentError(0, f"ce: {z.shown} ({z.type}) has no class axis")
        logp = b.softmax(z, axis, log=True)
        if target.type.elem in FLOATS:
            if target.type.elem != z.type.elem:
                raise ArgumentError(1, f"ce: {target.shown} is {target.type.dtype}, {z.shown} is {z.type.dtype}")
            self._not_float_indices(target, z, "ce")
            self._same_shape(z, target, "ce")
            return b.unary("Neg", self._reduce("ReduceSum", b.binary("*", target, logp), axis))  # type: ignore[arg-type]
        self._class_indices(target, z, axis, "ce")
        labels = target if target.type.elem == onnx.TensorProto.INT64 else b.node(
            "Cast", [target.name], TensorType(onnx.TensorProto.INT64, target.type.shape), to=onnx.TensorProto.INT64
        )
        k = axis if axis >= 0 or z.type.rank is None else axis % z.type.rank
        one = TensorType(z.type.elem, None if z.type.shape is None else tuple(1 if i == k else d for i, d in enumerate(z.type.shape)))
        idx = b.node("Unsqueeze", [labels.name, self._axes([axis])], TensorType(onnx.TensorProto.INT64, one.shape))
        picked = b.node("GatherElements", [logp.name, idx.name], one, axis=axis)
        out = b.node("Squeeze", [picked.name, self._axes([axis])], TensorType(z.type.elem, _drop(z.type, axis)))
        return b.unary("Neg", out)

    def mse(self, a: Value, b: Value) -> Value:
        self._float(a, "mse", 0)
        self._float(b, "mse", 1)
        self._same_shape(a, b, "mse")
        d = self.b.binary("-", a, b)
        return self._per_example(self.b.binary("*", d, d))  # type: ignore[arg-type]

    def bce(self, logits: Value, targets: Value) -> Value:
        b = self.b
        self._float(logits, "bce", 0)
        if targets.type.elem != logits.type.elem:
            raise ArgumentError(1, f"bce: targets {targets.shown} are {targets.type.dtype}, logits {logits.type.dtype}")
        self._same_shape(logits, targets, "bce")
        # relu(x) - x*t + log(1 + exp(-|x|)): exp never sees a positive argument
        soft = b.unary("Log", b.binary("+", b.unary("Exp", b.unary("Neg", b.unary("Abs", logits))), 1.0))  # type: ignore[arg-type]
        value = b.binary("+", b.binary("-", b.unary("Relu", logits), b.binary("*", logits, targets)), soft)  # type: ignore[arg-type]
        return self._per_example(value)  # type: ignore[arg-type]

    # --- metrics ---------------------------------------------------------------------------

    def error(self, z: Value, labels: Value, axis: int) -> Value:
        b = self.b
        self._float(z, "error", 0)
        shape = _drop(z.type, axis)
        int64 = onnx.TensorProto.INT64
        predicted = b.node("ArgMax", [z.name], TensorType(int64, shape), axis=axis, keepdims=0)
        if labels.type.elem in FLOATS:
            self._not_float_indices(labels, z, "error")
            truth = b.node("ArgMax", [labels.name], TensorType(int64, shape), axis=axis, keepdims=0)
        else:
            self._class_indices(labels, z, axis, "error")
            truth = labels if labels.type.elem == int64 else b.node("Cast", [labels.name], TensorType(int64, labels.type.shape), to=int64)
        boolean = TensorType(onnx.TensorProto.BOOL, shape)
        wrong = b.node("Not", [b.node("Equal", [predicted.name, truth.name], boolean).name], boolean)
        return b.node("Cast", [wrong.name], TensorType(z.type.elem, shape), to=z.type.elem)

    def hamming(self, scores: Value, targets: Value, threshold: float) -> Value:
        b = self.b
        self._float(scores, "hamming", 0)
        shape = broadcast(scores.type, targets.type)
        boolean = TensorType(onnx.TensorProto.BOOL, scores.type.shape)
        said = b.node("Greater", [scores.name, self._const(threshold, scores.type.elem)], boolean)
        if targets.type.elem == onnx.TensorProto.BOOL:
            truth = targets
        else:
            truth = b.node("Greater", [targets.name, self._const(0.5, targets.type.elem)], TensorType(onnx.TensorProto.BOOL, targets.type.shape))
        differ = b.node("Xor", [said.name, truth.name], TensorType(onnx.TensorProto.BOOL, shape))
        as_float = b.node("Cast", [differ.name], TensorType(scores.type.elem, shape), to=scores.type.elem)
        return self._per_example(as_float)


def _drop(t: TensorType, axis: int) -> tuple | None:
    if t.shape is None:
        return None
    k = axis % len(t.shape) if t.shape else 0
    return t.shape[:k] + t.shape[k + 1 :]


def compile_objective(
    model: onnx.ModelProto,
    /,
    loss: str | None,
    metrics: Sequence[str] = (),
    data: Mapping[str, TensorType] = {},
    params: set[str] = frozenset(),  # type: ignore[assignment]
    batch: str | int | None = None,  # the example axis's symbol, if not that of the first input's first axis
) -> tuple[onnx.ModelProto, Objective]:
    """A copy of `model` whose outputs are the loss (a scalar, first) and the metrics.

    `data` are the types of the arrays the expressions may read besides the model's values
    (see :func:`data_type`); `params` the parameters being trained, which decide the sense
    of ``ce(target, z)``. Unused nodes are dropped. Raises ExprError at the place of a
    mistake, and InputError for names that are neither values nor arrays.
    """
    texts = ([loss] if loss is not None else []) + list(metrics)
    if not texts:
        raise InputError("nothing to compute: give a loss or a metric")
    trees = [parse(t) for t in texts]
    names = names_read(texts)
    model_values, data_names, missing = split_names(model, names, data)
    if missing:
        raise unknown_names_error(missing, model, data, "the data")
    types = value_types(model)
    index = GraphIndex(model.graph)
    b = Builder(taken=[*index.value_names(), *(n.name for n in model.graph.node if n.name), *data])
    scope: dict[str, Value] = {}
    batch = batch or batch_symbol(model)
    for name, value in model_values.items():
        t = types.get(value)
        if t is None:
            raise InputError(f"the type of {value!r} is unknown", "give the model's values types, or read another value")
        if t.shape is not None:  # symbolic sizes other than the example's are matched by the data at run time
            t = TensorType(t.elem, tuple(None if isinstance(d, str) and d != batch else d for d in t.shape))
        scope[name] = Value(value, t, label=name if name != value else None)
    for name in data_names:
        scope[name] = Value(name, data[name])
        for query in names:
            if query not in scope and query not in model_values and alias(query) == alias(name):
                scope[query] = scope[name]

    live = downstream(model.graph, set(params))

    def depends(value: str, memo: dict[str, bool] = {}) -> bool:
        if value in live:
            return True
        if value not in memo:
            node = b.producers.get(value)
            memo[value] = node is not None and any(depends(i) for i in node.input if i)
        return memo[value]

    notes: list[str] = []
    indices: list[tuple[str, int | None, str]] = []
    table = tensor_functions(b) | _Functions(b, default_opset(model), depends, notes, data_names, indices).table()
    outputs: list[tuple[str, str, int, bool]] = []  # (expression, value, element type, is loss)
    for k, (text, tree) in enumerate(zip(texts, trees)):
        result = evaluate(tree, scope, table)
        is_loss = loss is not None and k == 0
        what = "the loss" if is_loss else f"metric {text!r}"
        if not isinstance(result, Value):
            raise ExprError(f"{what} is not a tensor value of the model", "write an expression over outputs and data", getattr(tree, "pos", None))
        if result.type.elem not in FLOATS:
            raise ExprError(f"{what} is {result.type.dtype}; it must be a floating-point value", None, getattr(tree, "pos", None))
        shape = result.type.shape or ()
        symbolic = [d for d in shape if isinstance(d, str)]
        if len(symbolic) != len(set(symbolic)):
            raise ExprError(
                f"{what} has shape {result.type}: two axes share one symbolic size, most likely a per-example "
                "array of shape [N,1] met a per-example loss of shape [N]",
                "give per-example weights the shape [N]", getattr(tree, "pos", None),
            )
        if result.type.rank != 0:
            result = b.node("ReduceMean", [result.name], TensorType(result.type.elem, ()), keepdims=0)
        outputs.append((text, result.name, result.type.elem, is_loss))
    preferred = {value: b.fresh("loss" if is_loss else "metric") for _, value, _, is_loss in outputs if value in b.producers}
    mapping = b.finish_names(preferred)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    graph.node.extend(b.nodes)
    graph.input.extend(helper.make_value_info(n, data[n].to_proto()) for n in data_names)
    del graph.output[:]
    final: list[tuple[str, str, bool]] = []
    for text, value, elem, is_loss in outputs:
        value = mapping.get(value, value)
        if all(value != v for _, v, _ in final):  # two metrics with one expression: one output
            graph.output.append(helper.make_tensor_value_info(value, elem, []))
        final.append((text, value, is_loss))
    from onnxsurgeon.modes import prune

    prune(graph, {v for _, v, _ in final})
    reads = tuple(dict.fromkeys(model_values.values()))
    objective = Objective(
        loss=loss,
        loss_output=final[0][1] if loss is not None else None,
        metrics=tuple((t, v) for t, v, is_loss in final if not is_loss),
        data_inputs=tuple((n, data[n]) for n in data_names),
        reads=reads,
        notes=tuple(dict.fromkeys(notes)),
        class_indices=tuple(dict.fromkeys(indices)),
    )
    return out, objective
