"""The ONNX builder: :class:`Builder` collects the nodes and initializers an expression
emits and owns the names; :func:`tensor_functions` is the table of operators and
activations over a builder.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon import dtypes
from onnxsurgeon.errors import InputError
from onnxsurgeon.expr.evaluator import Function, Param, is_number
from onnxsurgeon.expr.syntax import ArgumentError, fold
from onnxsurgeon.expr.types import Dim, TensorType, Value, broadcast, show_dim


@dataclass
class Builder:
    """Collects the nodes and initializers an expression emits, and owns the names.

    Names given by people (inputs, parameters, ``taken`` names of an existing model) are
    *fixed*: a second claim is a collision error. Names the builder makes up (``Relu_3``)
    yield: if a fixed name arrives later, the made one is renamed by :meth:`finish_names`.
    A *scope* (``hidden``, a piece's use ``adapt``) owns every name ``scope/...``."""

    taken: Iterable[str] = ()
    segments: list[Any] = field(default_factory=list)  # NodeProtos, and placeholders of callers
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    fixed: dict[str, str] = field(default_factory=dict)
    made: set[str] = field(default_factory=set)
    scopes: dict[str, str] = field(default_factory=dict)
    producers: dict[str, onnx.NodeProto] = field(default_factory=dict)
    _moved: set[str] = field(default_factory=set)
    _counter: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.taken:
            self.fixed.setdefault(name, "a value of the model")

    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return [s for s in self.segments if isinstance(s, onnx.NodeProto)]

    def _in_scope(self, name: str) -> str | None:
        head, sep, _ = name.partition("/")
        return head if sep and head in self.scopes else None

    def claim(self, name: str, what: str) -> None:
        """Reserve a name given by a person; two claims of one name are a collision."""
        if name in self.fixed:
            raise InputError(f"name collision: {name!r} would be {what}, but it is already {self.fixed[name]}", "choose another name")
        scope = self._in_scope(name)
        if scope is not None:
            raise InputError(f"name collision: {name!r} ({what}) lies inside {self.scopes[scope]} ({scope}/...)", "choose another name")
        if name in self.made:
            self._moved.add(name)
        self.fixed[name] = what

    def scope(self, name: str | None, base: str, what: str) -> str:
        """A new scope: ``name`` exactly (a collision if taken), or ``base``, ``base_2``, ..."""
        if name is not None:
            if name in self.scopes:
                raise InputError(f"name collision: {name!r} is already {self.scopes[name]}", "give each layer and each use its own name")
            if not name or "/" in name:
                raise InputError(f"{name!r} cannot name {what}: it must be non-empty and without '/'")
            if any(k.startswith(name + "/") for k in self.fixed):
                raise InputError(f"name collision: values named {name}/... exist already", "choose another name")
            self.scopes[name] = what
            return name
        k = self._counter.get(f"scope:{base}", 0)
        while True:
            k += 1
            candidate = base if k == 1 else f"{base}_{k}"
            if candidate not in self.scopes and not any(n.startswith(candidate + "/") for n in self.fixed):
                break
        self._counter[f"scope:{base}"] = k
        self.scopes[candidate] = what
        return candidate

    def fresh(self, base: str) -> str:
        """A made-up name from ``base``: ``base``, else ``base_2``, ``base_3``..."""
        k = self._counter.get(base, 0)
        while True:
            k += 1
            name = base if k == 1 else f"{base}_{k}"
            if name not in self.fixed and name not in self.made and self._in_scope(name) in (None, self._in_scope(base)):
                break
        self._counter[base] = k
        self.made.add(name)
        return name

    def value(self, name: str, type: TensorType) -> Value:
        """An existing value (an input of the graph or the model being extended)."""
        return Value(name, type)

    def node(self, op: str, inputs: list[str], type: TensorType, hint: str | None = None, domain: str = "", **attrs: Any) -> Value:
        """Append one node with one output of the given type; returns that output."""
        out = self.fresh(hint or op)
        node = helper.make_node(op, inputs, [out], name=out, domain=domain or None, **attrs)
        self.segments.append(node)
        self.producers[out] = node
        return Value(out, type)

    def constant(self, value: float | np.ndarray, elem: int, hint: str = "Constant") -> str:
        """A Constant node (never an initializer: constants must not become parameters)."""
        array = np.asarray(value, dtype=helper.tensor_dtype_to_np_dtype(elem))
        out = self.fresh(hint)
        node = helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(array))
        self.segments.append(node)
        self.producers[out] = node
        return out

    def param(self, name: str, array: np.ndarray, what: str) -> Value:
        """A new initializer with a fixed name."""
        self.claim(name, what)
        self.initializers.append(numpy_helper.from_array(array, name))
        return Value(name, TensorType(helper.np_dtype_to_tensor_dtype(array.dtype), tuple(array.shape)))

    def finish_names(self, preferred: Mapping[str, str] = {}) -> dict[str, str]:
        """Rename made names: to a ``preferred`` name (a let or an output), or away from a
        fixed name that arrived after them. Applies to the builder's nodes; returns the map."""
        mapping = {old: new for old, new in preferred.items() if old in self.producers}
        for old in self._moved:
            if old not in mapping:
                self.made.discard(old)
                mapping[old] = self.fresh(old)
        if not mapping:
            return mapping
        for node in self.segments:
            if not isinstance(node, onnx.NodeProto):
                continue
            for i, n in enumerate(node.input):
                if n in mapping:
                    node.input[i] = mapping[n]
            for i, n in enumerate(node.output):
                if n in mapping:
                    node.output[i] = mapping[n]
                    node.name = mapping[n]
        return mapping

    # --- tensor operations -------------------------------------------------------------------

    def unary(self, op: str, x: Value, **attrs: Any) -> Value:
        return self.node(op, [x.name], x.type, **attrs)

    def binary(self, op: str, a: Value | float, b: Value | float) -> Value | float:
        """``a op b`` for ``+ - * / **``; numbers become Constants of the other side's type."""
        if is_number(a) and is_number(b):
            return fold(op, a, b)  # type: ignore[arg-type]
        onnx_op = {"+": "Add", "-": "Sub", "*": "Mul", "/": "Div", "**": "Pow"}[op]
        if isinstance(a, Value) and isinstance(b, Value):
            if a.type.elem != b.type.elem:
                raise InputError(f"cannot compute {a.shown} {op} {b.shown}: element types {a.type.dtype} and {b.type.dtype} differ")
            _check_division(op, a, f"{a.shown} {op} {b.shown}")
            shape = broadcast(a.type, b.type)
            return self.node(onnx_op, [a.name, b.name], TensorType(a.type.elem, shape))
        tensor = a if isinstance(a, Value) else b
        assert isinstance(tensor, Value)
        number = b if tensor is a else a
        text = f"{tensor.shown} {op} {number!r}" if tensor is a else f"{number!r} {op} {tensor.shown}"
        _check_division(op, tensor, text)
        _check_constant(number, tensor, text)
        const = self.constant(number, tensor.type.elem)
        inputs = [tensor.name, const] if tensor is a else [const, tensor.name]
        return self.node(onnx_op, inputs, tensor.type)

    def reduce_sum(self, x: Value, axis: int = -1) -> Value:
        """The sum along one axis, kept as size 1."""
        _check_axis(x, axis)
        shape = x.type.shape
        if shape is not None:
            k = axis % len(shape)
            shape = shape[:k] + (1,) + shape[k + 1:]
        axes = self.constant(np.array([axis], dtype=np.int64), onnx.TensorProto.INT64, hint="axes")
        return self.node("ReduceSum", [x.name, axes], TensorType(x.type.elem, shape), keepdims=1)

    def mean(self, x: Value, axis: int = -1) -> Value:
        """The mean along one axis, kept as size 1: the sum divided by the axis's size (read
        at run time, so a symbolic length works)."""
        if x.type.elem not in dtypes.FLOATS:
            raise ArgumentError("x", f"mean needs a floating-point input, not {x.type}")
        total = self.reduce_sum(x, axis)
        shape = self.node("Shape", [x.name], TensorType(onnx.TensorProto.INT64, (x.type.rank,) if x.type.rank is not None else None), "shape")
        index = self.constant(np.array(axis, dtype=np.int64), onnx.TensorProto.INT64, hint="axis")
        size = self.node("Gather", [shape.name, index], TensorType(onnx.TensorProto.INT64, ()), "size")
        count = self.node("Cast", [size.name], TensorType(x.type.elem, ()), "count", to=x.type.elem)
        return self.node("Div", [total.name, count.name], total.type, "mean")

    def flatten(self, x: Value) -> Value:
        """``x[N, ...]`` as ``[N, rest]``: every axis after the first joined into one."""
        shape = None
        if x.type.shape is not None:
            if len(x.type.shape) < 1:
                raise ArgumentError("x", f"flatten needs a value with a first (batch) axis, not {x.type}")
            rest = x.type.shape[1:]
            joined = math.prod(rest) if all(isinstance(d, int) for d in rest) else None  # type: ignore[arg-type]
            shape = (x.type.shape[0], joined)
        return self.node("Flatten", [x.name], TensorType(x.type.elem, shape), axis=1)

    def reshape(self, x: Value, shape: str) -> Value:
        """``x`` in a new shape written as a string of sizes, ``"0,-1"`` or ``"-1,8,8"``: 0
        keeps that axis's size, -1 (at most once) takes what is left (ONNX Reshape)."""
        try:
            dims = [int(d) for d in shape.replace("[", "").replace("]", "").split(",")]
        except ValueError:
            raise ArgumentError("shape", f"reshape needs a shape such as '0,-1' or '-1,8,8', not {shape!r}") from None
        if not dims or any(d < -1 for d in dims) or dims.count(-1) > 1:
            raise ArgumentError("shape", f"reshape: sizes are positive, 0 (keep) or one -1 (the rest), not {shape!r}")
        out: list[Dim] = []
        for k, d in enumerate(dims):
            if d == 0:
                if x.type.shape is None or k >= len(x.type.shape):
                    raise ArgumentError("shape", f"reshape: 0 keeps axis {k}, which {x.shown} ({x.type}) does not have")
                out.append(x.type.shape[k])
            else:
                out.append(None if d == -1 else d)
        kept = {k for k, d in enumerate(dims) if d == 0}  # axes carried over, symbolic or not
        rest = None if x.type.shape is None else [d for k, d in enumerate(x.type.shape) if k not in kept]
        if rest is not None and all(isinstance(d, int) for d in rest):
            total = math.prod(rest)  # type: ignore[arg-type]
            known = math.prod(d for k, d in enumerate(out) if k not in kept and isinstance(d, int))
            if -1 in dims:
                if known == 0 or total % known:
                    raise ArgumentError("shape", f"reshape: {x.shown} ({x.type}) has {total} values, which {shape!r} cannot hold")
                out[dims.index(-1)] = total // known
            elif known != total:
                raise ArgumentError("shape", f"reshape: {x.shown} ({x.type}) has {total} values, {shape!r} holds {known}")
        target = self.constant(np.array(dims, dtype=np.int64), onnx.TensorProto.INT64, hint="shape")
        return self.node("Reshape", [x.name, target], TensorType(x.type.elem, tuple(out)))

    def global_pool(self, x: Value, kind: str) -> Value:
        """Global average or max pooling of ``x[N,C,...]``: ``[N,C,1,...]``."""
        if x.type.elem not in dtypes.FLOATS:
            raise ArgumentError("x", f"global_{kind}_pool needs a floating-point input, not {x.type}")
        if x.type.rank is not None and x.type.rank < 3:
            raise ArgumentError("x", f"global_{kind}_pool needs [N,C,H,W] (or more spatial axes), not {x.type}")
        shape = None if x.type.shape is None else x.type.shape[:2] + (1,) * (len(x.type.shape) - 2)
        op = "GlobalAveragePool" if kind == "average" else "GlobalMaxPool"
        return self.node(op, [x.name], TensorType(x.type.elem, shape))

    def softmax(self, x: Value, axis: int = -1, log: bool = False) -> Value:
        _check_axis(x, axis)
        return self.node("LogSoftmax" if log else "Softmax", [x.name], x.type, axis=axis)

    def concat(self, xs: tuple[Value, ...], axis: int = -1) -> Value:
        first = xs[0]
        for k, x in enumerate(xs[1:], 1):
            if x.type.elem != first.type.elem:
                raise ArgumentError(k, f"concat: {x.shown} is {x.type.dtype}, {first.shown} is {first.type.dtype}")
            if x.type.rank is not None and first.type.rank is not None and x.type.rank != first.type.rank:
                raise ArgumentError(k, f"concat: {x.shown} has rank {x.type.rank}, {first.shown} has rank {first.type.rank}")
        shape = _concat_shape([x.type for x in xs], axis)
        return self.node("Concat", [x.name for x in xs], TensorType(first.type.elem, shape), axis=axis)

    def cosine(self, a: Value, b: Value) -> Value:
        """Cosine similarity along the last axis, keeping it as size 1 (CNTK's cosine_distance)."""
        if a.type.elem != b.type.elem:
            raise ArgumentError(1, f"cosine: {b.shown} is {b.type.dtype}, {a.shown} is {a.type.dtype}")
        broadcast(a.type, b.type)
        dot = self.reduce_sum(self.binary("*", a, b))  # type: ignore[arg-type]
        na = self.unary("Sqrt", self.reduce_sum(self.binary("*", a, a)))  # type: ignore[arg-type]
        nb = self.unary("Sqrt", self.reduce_sum(self.binary("*", b, b)))  # type: ignore[arg-type]
        return self.binary("/", dot, self.binary("*", na, nb))  # type: ignore[return-value]


def _check_axis(x: Value, axis: int) -> None:
    if x.type.rank is not None and not -x.type.rank <= axis < x.type.rank:
        raise ArgumentError("axis", f"axis {axis} is out of range for {x.shown} ({x.type})")


def _concat_shape(types: list[TensorType], axis: int) -> tuple[Dim, ...] | None:
    shapes = [t.shape for t in types]
    if any(s is None for s in shapes):
        return None
    rank = len(shapes[0])  # type: ignore[arg-type]
    if not -rank <= axis < rank:
        raise ArgumentError("axis", f"concat: axis {axis} is out of range for rank {rank}")
    axis %= rank
    out: list[Dim] = []
    for k in range(rank):
        dims = [s[k] for s in shapes]  # type: ignore[index]
        if k == axis:
            out.append(sum(dims) if all(isinstance(d, int) for d in dims) else None)  # type: ignore[arg-type]
            continue
        known = {d for d in dims if d is not None}
        if len(known) > 1:
            raise InputError(f"concat: dimension {k} does not line up: {', '.join(show_dim(d) for d in dims)}")
        out.append(known.pop() if known else None)
    return tuple(out)


def _check_division(op: str, tensor: Value, text: str) -> None:
    """``/`` on integers would truncate (ONNX Div on int64 is integer division): refused."""
    if op == "/" and np.dtype(helper.tensor_dtype_to_np_dtype(tensor.type.elem)).kind in "iub":
        raise InputError(
            f"cannot compute {text}: {tensor.shown} is {tensor.type.dtype}, and dividing integers truncates "
            "(7 / 2 would be 3)",
            f"declare {tensor.shown} as a float type (e.g. float32) to divide it",
        )


def _check_constant(number: float, tensor: Value, text: str) -> None:
    """A number in an expression becomes a constant of the other operand's element type. It
    must survive that exactly (integers) or finitely and without vanishing (floats): no
    ``x * 0.5`` on int64 turned into ``x * 0``, no ``x * 70000`` on float16 turned into inf."""
    elem = tensor.type.elem
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem))
    name = tensor.type.dtype
    why = None
    if dtype.kind in "iu":
        if isinstance(number, float) and not (math.isfinite(number) and number.is_integer()):
            why = f"{number!r} is not an integer"
        else:
            info = np.iinfo(dtype)
            if not info.min <= int(number) <= info.max:
                why = f"{number!r} is outside {name}'s range [{info.min}, {info.max}]"
    elif dtype.kind == "b":
        why = "arithmetic on bool values is not defined"
    elif elem in (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE):
        try:
            with np.errstate(over="ignore", under="ignore"):
                value = dtype.type(number)
        except OverflowError:
            value = dtype.type(np.inf)
        if not np.isfinite(value):
            why = f"{number!r} is beyond {name}'s largest value {np.finfo(dtype).max}" if not isinstance(number, float) or math.isfinite(number) else f"{number!r} is not finite"
        elif value == 0 and number != 0:
            why = f"{number!r} is below {name}'s smallest value and would become 0"
    if why is not None:
        raise InputError(
            f"cannot compute {text}: the constant would be stored as {name} like {tensor.shown}, and {why}",
            f"write a constant that {name} holds exactly, or declare {tensor.shown} as a wider or float type",
        )


def tensor_functions(builder: Builder) -> dict[str, Function]:
    """Operators, activations, ``concat`` and ``cosine`` over a builder: the functions every
    expression may use."""
    V, O = Param("x"), "operand"

    def op(symbol: str) -> Function:
        return Function(symbol, (Param("a", O), Param("b", O)), lambda a, b: builder.binary(symbol, a, b))

    def neg(a: Any) -> Any:
        return -a if is_number(a) else builder.unary("Neg", a)

    def activation(op_type: str, doc: str) -> Function:
        return Function(op_type.lower(), (V,), lambda x: builder.unary(op_type, x), doc)

    axis = Param("axis", "int", -1)
    table = {s: op(s) for s in ("+", "-", "*", "/", "**")}
    table["neg"] = Function("neg", (Param("a", O),), neg)
    for op_type, doc in (
        ("Relu", "max(x, 0)"), ("Sigmoid", "1 / (1 + exp(-x))"), ("Tanh", "hyperbolic tangent"),
        ("Exp", "e to the x"), ("Log", "natural logarithm"), ("Sqrt", "square root"),
    ):
        table[op_type.lower()] = activation(op_type, doc)
    table["softmax"] = Function("softmax", (V, axis), lambda x, axis: builder.softmax(x, axis), "softmax along an axis (default the last)")
    table["log_softmax"] = Function(
        "log_softmax", (V, axis), lambda x, axis: builder.softmax(x, axis, log=True), "log of softmax along an axis"
    )
    table["concat"] = Function(
        "concat", (Param("xs"), Param("axis", "int", -1, keyword_only=True)), lambda xs, axis: builder.concat(xs, axis),
        "join values along an axis (default the last)", variadic="xs",
    )
    table["cosine"] = Function("cosine", (Param("a"), Param("b")), builder.cosine, "cosine similarity along the last axis")
    table["mean"] = Function("mean", (V, axis), lambda x, axis: builder.mean(x, axis), "the mean along an axis (default the last), kept as size 1")
    table["flatten"] = Function("flatten", (V,), builder.flatten, "[N, ...] as [N, rest]: every axis after the first joined")
    table["reshape"] = Function(
        "reshape", (V, Param("shape", "string", keyword_only=True)), builder.reshape,
        "a new shape as a string of sizes: reshape(x, shape='0,-1') (0 keeps an axis, -1 takes the rest)",
    )
    table["global_average_pool"] = Function(
        "global_average_pool", (V,), lambda x: builder.global_pool(x, "average"), "the mean over every spatial axis: [N,C,H,W] -> [N,C,1,1]"
    )
    table["global_max_pool"] = Function(
        "global_max_pool", (V,), lambda x: builder.global_pool(x, "max"), "the maximum over every spatial axis: [N,C,H,W] -> [N,C,1,1]"
    )
    return table

