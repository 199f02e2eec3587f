"""The :class:`Network` builder: inputs, pieces and their uses, new layers (seeded
parameters), operators, expressions and outputs; :meth:`Network.build` makes the model.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxsurgeon import __version__, checks, meta, serde
from onnxsurgeon.composition.inline import Template, Use
from onnxsurgeon.composition.merge import at_opset, merged_functions, merged_ir_version, merged_opsets
from onnxsurgeon.composition.piece import Piece, load_piece
from onnxsurgeon.composition.report import ComposeReport, ParamSummary, PieceSummary, nbytes
from onnxsurgeon.dtypes import FLOATS
from onnxsurgeon.errors import InputError
from onnxsurgeon.expr import (
    IDENTIFIER,
    ArgumentError,
    Builder,
    Function,
    Param,
    Record,
    Source,
    TensorType,
    Value,
    evaluate,
    fit,
    parse,
    substitute,
    tensor_functions,
)
from onnxsurgeon.graph import default_opset

MIN_OPSET = 13  # the operators new layers emit have this form from opset 13 on
DEFAULT_OPSET = 17  # a network without pieces
INITS = ("glorot_uniform", "identity", "zeros")
class Network:
    """A network under construction: inputs, pieces and their uses, new layers and outputs.

    Every method checks its arguments (types, shapes, names) at once and raises an
    :class:`~onnxsurgeon.errors.InputError`; :meth:`build` returns the model and a report."""

    def __init__(self, name: str = "network", *, seed: int = 0, base_dir: str | os.PathLike[str] | None = None) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise InputError(f"the seed must be a non-negative integer, not {seed!r}", "use 0 or a positive seed")
        self.name = name
        self.seed = seed
        self.base_dir = base_dir
        self._b = Builder()
        self._inputs: dict[str, Value] = {}
        self._pieces: dict[str, Piece] = {}
        self._uses: dict[str, list[str]] = {}
        self._shared: dict[str, tuple[str, onnx.TensorProto]] = {}
        self._owners: dict[str, str] = {}  # new parameter -> its layer
        self._names: dict[str, Any] = {}
        self._preferred: dict[str, str] = {}
        self._outputs: list[tuple[str, Value]] = []
        self._output_sources: set[str] = set()
        self._functions: dict[str, Function] | None = None

    # --- declarations ---------------------------------------------------------------------------

    def input(self, name: str, type: str | TensorType) -> Value:
        """A new graph input, e.g. ``net.input("features", "float32[N,64]")``."""
        check_identifier(name, "an input")
        if name in self._pieces:
            raise InputError(f"name collision: {name!r} is already a piece", "choose another name for the input")
        t = type if isinstance(type, TensorType) else TensorType.parse(type)
        if t.shape is None:  # ONNX requires a shape (its rank at least) on a graph input
            raise InputError(
                f"the input {name!r} has no shape: {str(t)!r} gives its element type only",
                f"write its shape too, e.g. {t.dtype}[N,64] (a name such as N for a size that varies)",
            )
        self._b.claim(name, f"the input {name!r}")
        value = Value(name, t)
        self._inputs[name] = self._names[name] = value
        return value

    def piece(self, model: Piece | onnx.ModelProto | str | os.PathLike[str], /, inputs: Sequence[str] | None = None,
              outputs: Sequence[str] | None = None, params: str | None = None, *, name: str | None = None,
              auto_inputs: bool = False) -> Piece:
        """Declare a piece (see :func:`load_piece`; paths are relative to ``base_dir``)."""
        if not isinstance(model, Piece):
            model = load_piece(model, inputs, outputs, params, name=name, auto_inputs=auto_inputs, base_dir=self.base_dir)
        return self._register(model)

    def _register(self, piece: Piece) -> Piece:
        known = self._pieces.get(piece.name)
        if known is piece:
            return piece
        check_identifier(piece.name, "a piece")
        if known is not None or piece.name in self._names:
            raise InputError(f"name collision: there is already a piece or value named {piece.name!r}", "give the piece another name")
        if piece.name in _reserved():
            raise InputError(f"a piece cannot be named {piece.name!r}: that is a function", "give the piece another name")
        if piece.mode == "shared":
            self._claim_shared(piece)
        self._pieces[piece.name] = piece
        self._uses[piece.name] = []
        self._functions = None
        return piece

    def _claim_shared(self, piece: Piece) -> None:
        conflicts = []
        for t in piece.parameters:
            seen = self._shared.get(t.name)
            if seen is None:
                continue
            if not _same_tensor(seen[1], t):
                conflicts.append(f"{t.name!r} (also in piece {seen[0]!r})")
        if conflicts:
            raise InputError(
                f"shared piece {piece.name!r} has parameters with the names but not the values of another shared piece: "
                + ", ".join(conflicts),
                "two different parameters cannot share a name: extract one of the pieces as learnable or constant",
            )
        for t in piece.parameters:
            if t.name not in self._shared:
                self._b.claim(t.name, f"a parameter of shared piece {piece.name!r}")
                self._shared[t.name] = (piece.name, t)

    # --- uses and layers ------------------------------------------------------------------------

    def apply(self, piece: Piece | str, /, *args: Any, name: str | None = None, **kwargs: Any) -> Record:
        """Use a piece on values (positional in port order, or by port name); returns the
        record of its outputs. ``name`` names the use (its scope); by default the piece's
        name, then ``NAME_2``, ``NAME_3``..."""
        piece = self._pieces[piece] if isinstance(piece, str) and piece in self._pieces else piece
        if not isinstance(piece, Piece):
            raise InputError(f"unknown piece {piece!r}", f"declared pieces: {', '.join(self._pieces) or '(none)'}")
        piece = self._register(piece)
        values = self._bind_ports(piece, args, kwargs)
        bound: dict[str, Any] = {}
        for (port, port_type), value in zip(piece.inputs, values):
            try:
                dims = fit(value.type, port_type, f"input {port!r} of piece {piece.name!r}")
            except InputError as e:
                raise ArgumentError(port, e.message, e.hint) from None
            for sym, dim in dims.items():
                if bound.setdefault(sym, dim) != dim:
                    raise ArgumentError(port, f"the dims of piece {piece.name!r} do not line up: {sym!r} is {bound[sym]} in one input and {dim} in {port!r}")
        uses = self._uses[piece.name]
        scope = self._b.scope(name, piece.name, f"use {len(uses) + 1} of piece {piece.name!r}")
        for (port, _), value in zip(piece.inputs, values):
            self._b.segments.append(helper.make_node("Identity", [value.name], [f"{scope}/{port}"], name=f"{scope}/{port}"))
        self._b.segments.append(Use(piece.name, scope))
        uses.append(scope)
        params = {t.name for t in piece.parameters}
        fields = []
        for port, t in piece.outputs:
            kept = piece.mode == "shared" and port in params
            fields.append((port, Value(port if kept else f"{scope}/{port}", substitute(t, bound))))
        return Record(f"piece {piece.name!r} (use {scope!r})", tuple(fields))

    def _bind_ports(self, piece: Piece, args: tuple, kwargs: dict) -> list[Value]:
        ports = [p for p, _ in piece.inputs]
        if len(args) > len(ports):
            raise InputError(f"piece {piece.name!r} takes {len(ports)} input{'s' if len(ports) != 1 else ''} ({', '.join(ports)}), {len(args)} given")
        given: dict[str, Any] = dict(zip(ports, args))
        for key, v in kwargs.items():
            if key not in ports:
                raise ArgumentError(key, f"piece {piece.name!r} has no input {key!r}; its inputs are: {', '.join(ports)}")
            if key in given:
                raise ArgumentError(key, f"input {key!r} of piece {piece.name!r} is given twice")
            given[key] = v
        missing = [p for p in ports if p not in given]
        if missing:
            raise InputError(
                f"piece {piece.name!r} takes {len(ports)} input{'s' if len(ports) != 1 else ''} ({', '.join(ports)}); "
                f"missing: {', '.join(missing)}"
            )
        return [_tensor(given[p], p, f"input {p!r} of piece {piece.name!r}") for p in ports]

    def dense(self, x: Value | Record, units: int, *, name: str | None = None, init: str = "glorot_uniform", bias: bool = True) -> Value:
        """A new fully connected layer ``x @ W + b`` on the last axis: W Glorot-uniform (or
        ``init="identity"`` / ``"zeros"``), b zeros."""
        x = _tensor(x, "x", "the input of dense")
        if x.type.rank is not None and x.type.rank >= 4:
            raise ArgumentError(
                "x", f"dense works on the last axis, and {x.shown} is {x.type}: it would make a dense layer per position",
                f"flatten it first, dense(flatten(x), {units}), or pool it: dense(flatten(global_average_pool(x)), {units})",
            )
        k = _last_dim(x, "dense")
        if not isinstance(units, int) or units < 1:
            raise ArgumentError("units", f"dense needs a positive number of units, not {units!r}")
        scope = self._b.scope(name, "dense", "a dense layer")
        w = self._param(scope, "W", _init(init, (k, units), k, units, self._rng(scope), x.type.elem, square=True), scope)
        shape = None if x.type.shape is None else x.type.shape[:-1] + (units,)
        y = self._b.node("MatMul", [x.name, w.name], TensorType(x.type.elem, shape), f"{scope}/matmul")
        if bias:
            b = self._param(scope, "b", np.zeros(units, _np(x.type.elem)), scope)
            y = self._b.node("Add", [y.name, b.name], y.type, f"{scope}/add")
        return y

    def embedding(self, ids: Value | Record, vocab: int, dim: int, *, name: str | None = None, init: str = "glorot_uniform") -> Value:
        """A new embedding table ``E[vocab, dim]`` (Glorot uniform) looked up with integer ids."""
        ids = _tensor(ids, "ids", "the ids of embedding")
        if ids.type.elem not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            raise ArgumentError("ids", f"embedding needs int64 or int32 ids, not {ids.type}")
        for k, n in (("vocab", vocab), ("dim", dim)):
            if not isinstance(n, int) or n < 1:
                raise ArgumentError(k, f"embedding needs positive sizes, not {n!r}")
        scope = self._b.scope(name, "embedding", "an embedding layer")
        e = self._param(scope, "E", _init(init, (vocab, dim), vocab, dim, self._rng(scope), onnx.TensorProto.FLOAT), scope)
        shape = None if ids.type.shape is None else ids.type.shape + (dim,)
        return self._b.node("Gather", [e.name, ids.name], TensorType(onnx.TensorProto.FLOAT, shape), f"{scope}/gather")

    def conv(self, x: Value | Record, filters: int, kernel: int = 3, *, stride: int = 1, pad: bool = True,
             name: str | None = None, init: str = "glorot_uniform") -> Value:
        """A new 2-D convolution on ``x[N,C,H,W]``: ``filters`` kernels of ``kernel x kernel``,
        same padding unless ``pad=False``; W Glorot-uniform, b zeros."""
        x = _tensor(x, "x", "the input of conv")
        if x.type.rank != 4 or not isinstance(x.type.shape[1], int):  # type: ignore[index]
            raise ArgumentError("x", f"conv needs an input of shape [N,C,H,W] with a known C, not {x.type}")
        for k, n in (("filters", filters), ("kernel", kernel), ("stride", stride)):
            if not isinstance(n, int) or n < 1:
                raise ArgumentError(k, f"conv needs positive sizes, not {n!r}")
        c = x.type.shape[1]  # type: ignore[index]
        scope = self._b.scope(name, "conv", "a convolution layer")
        array = _init(init, (filters, c, kernel, kernel), c * kernel * kernel, filters * kernel * kernel, self._rng(scope), x.type.elem, square=True)
        w = self._param(scope, "W", array, scope)
        b = self._param(scope, "b", np.zeros(filters, _np(x.type.elem)), scope)
        n, _, h, wd = x.type.shape  # type: ignore[misc]
        size = (lambda d: -(-d // stride)) if pad else (lambda d: (d - kernel) // stride + 1)
        shape = (n, filters, size(h) if isinstance(h, int) else None, size(wd) if isinstance(wd, int) else None)
        return self._b.node(
            "Conv", [x.name, w.name, b.name], TensorType(x.type.elem, shape), f"{scope}/conv",
            kernel_shape=[kernel, kernel], strides=[stride, stride], auto_pad="SAME_UPPER" if pad else "VALID",
        )

    def _param(self, scope: str, suffix: str, array: np.ndarray, owner: str) -> Value:
        name = f"{scope}.{suffix}"
        self._owners[name] = owner
        return self._b.param(name, array, f"a parameter of layer {owner!r}")

    def _rng(self, scope: str) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(scope.encode())])

    # --- operators (also available in expressions) ------------------------------------------------

    def relu(self, x: Value | Record) -> Value:
        """max(x, 0)."""
        return self._b.unary("Relu", _tensor(x, "x", "relu"))

    def sigmoid(self, x: Value | Record) -> Value:
        """1 / (1 + exp(-x))."""
        return self._b.unary("Sigmoid", _tensor(x, "x", "sigmoid"))

    def tanh(self, x: Value | Record) -> Value:
        """Hyperbolic tangent."""
        return self._b.unary("Tanh", _tensor(x, "x", "tanh"))

    def softmax(self, x: Value | Record, axis: int = -1) -> Value:
        """Softmax along an axis (default the last)."""
        return self._b.softmax(_tensor(x, "x", "softmax"), axis)

    def log_softmax(self, x: Value | Record, axis: int = -1) -> Value:
        """Log-softmax along an axis (default the last)."""
        return self._b.softmax(_tensor(x, "x", "log_softmax"), axis, log=True)

    def concat(self, *xs: Value | Record, axis: int = -1) -> Value:
        """Values joined along an axis (default the last)."""
        return self._b.concat(tuple(_tensor(x, k, "concat") for k, x in enumerate(xs)), axis)

    def flatten(self, x: Value | Record) -> Value:
        """``x[N, ...]`` as ``[N, rest]``."""
        return self._b.flatten(_tensor(x, "x", "flatten"))

    def reshape(self, x: Value | Record, shape: str) -> Value:
        """``x`` in a new shape: ``"0,-1"`` (0 keeps an axis, -1 takes the rest)."""
        return self._b.reshape(_tensor(x, "x", "reshape"), shape)

    def mean(self, x: Value | Record, axis: int = -1) -> Value:
        """The mean along an axis (default the last), kept as size 1."""
        return self._b.mean(_tensor(x, "x", "mean"), axis)

    def global_average_pool(self, x: Value | Record) -> Value:
        """The mean over every spatial axis: ``[N,C,H,W]`` -> ``[N,C,1,1]``."""
        return self._b.global_pool(_tensor(x, "x", "global_average_pool"), "average")

    def global_max_pool(self, x: Value | Record) -> Value:
        """The maximum over every spatial axis: ``[N,C,H,W]`` -> ``[N,C,1,1]``."""
        return self._b.global_pool(_tensor(x, "x", "global_max_pool"), "max")

    def cosine(self, a: Value | Record, b: Value | Record) -> Value:
        """Cosine similarity of a and b along the last axis (kept, size 1)."""
        return self._b.cosine(_tensor(a, "a", "cosine"), _tensor(b, "b", "cosine"))

    def add(self, a: Any, b: Any) -> Any:
        """a + b (numpy broadcasting; numbers allowed)."""
        return self._b.binary("+", _operand(a), _operand(b))

    def sub(self, a: Any, b: Any) -> Any:
        """a - b."""
        return self._b.binary("-", _operand(a), _operand(b))

    def mul(self, a: Any, b: Any) -> Any:
        """a * b."""
        return self._b.binary("*", _operand(a), _operand(b))

    def div(self, a: Any, b: Any) -> Any:
        """a / b."""
        return self._b.binary("/", _operand(a), _operand(b))

    # --- expressions ------------------------------------------------------------------------------

    def functions(self) -> dict[str, Function]:
        """What an expression may call: operators, activations, layers and the pieces."""
        if self._functions is None:
            table = tensor_functions(self._b)
            s, i = Param("name", "string", None, keyword_only=True), Param("init", "string", "glorot_uniform", keyword_only=True)
            table["dense"] = Function(
                "dense", (Param("x"), Param("units", "int"), s, i, Param("bias", "bool", True, keyword_only=True)), self.dense,
                "a new fully connected layer",
            )
            table["embedding"] = Function(
                "embedding", (Param("ids"), Param("vocab", "int"), Param("dim", "int"), s, i), self.embedding, "a new embedding table"
            )
            table["conv"] = Function(
                "conv",
                (Param("x"), Param("filters", "int"), Param("kernel", "int", 3), Param("stride", "int", 1, keyword_only=True),
                 Param("pad", "bool", True, keyword_only=True), s, i),
                self.conv, "a new 2-D convolution",
            )
            for piece in self._pieces.values():
                table[piece.name] = self._piece_function(piece)
            self._functions = table
        return self._functions

    def _piece_function(self, piece: Piece) -> Function:
        ports = [p for p, _ in piece.inputs]
        params = tuple(Param(p) for p in ports)
        if "name" not in ports:
            params += (Param("name", "string", None, keyword_only=True),)

        def call(**kw: Any) -> Record:
            use = kw.pop("name", None) if "name" not in ports else None
            return self.apply(piece, **kw, name=use)

        return Function(piece.name, params, call, f"piece {piece.name!r} ({piece.source})")

    def evaluate(self, expression: str, source: Source | None = None) -> Any:
        """The value of an expression over the inputs, named values and pieces."""
        return evaluate(parse(expression, source), self._names, self.functions())

    def claim_value(self, name: str) -> None:
        """Reserve the name of a value about to be defined (see :meth:`let`)."""
        check_identifier(name, "a value")
        if name in self._pieces:
            raise InputError(f"name collision: {name!r} is already a piece", "choose another name for the value")
        self._b.claim(name, f"the value {name!r}")

    def let(self, name: str, expression: str | Value | Record, source: Source | None = None, *, claimed: bool = False) -> Any:
        """Name a value, given as an expression (``"sigmoid(dense(h, 32))"``) or a value."""
        if not claimed:
            self.claim_value(name)
        value = self.evaluate(expression, source) if isinstance(expression, str) else expression
        if isinstance(value, Value):
            if value.name in self._b.producers and value.name not in self._preferred:
                self._preferred[value.name] = name  # the node computing it writes `name` directly
            value = Value(value.name, value.type, label=value.label or name)
        self._names[name] = value
        return value

    def output(self, name: str, value: Value | Record) -> None:
        """Make a value an output of the network, under ``name``."""
        value = _tensor(value, "value", f"output {name!r}")
        if any(n == name for n, _ in self._outputs):
            raise InputError(f"name collision: the network already has an output {name!r}", "give each output its own name")
        if self._names.get(name) is not value or name in self._inputs:
            self._b.claim(name, f"the output {name!r}")
        if value.name in self._b.producers and value.name not in self._output_sources:
            self._preferred[value.name] = name  # the node computing it writes the output directly
            self._output_sources.add(value.name)
        else:  # an input, a parameter, a value inside a use, or an output already
            self._b.segments.append(helper.make_node("Identity", [value.name], [name], name=name))
        self._outputs.append((name, Value(name, value.type)))

    # --- building ---------------------------------------------------------------------------------

    def build(self) -> tuple[onnx.ModelProto, ComposeReport]:
        """The composed model and a report; checks opsets, functions and names on the way."""
        if not self._outputs:
            raise InputError("the network has no outputs", "add one with net.output(NAME, value) or an [outputs] table")
        used = [p for name, p in self._pieces.items() if self._uses[name]]
        warnings = [f"piece {name!r} is declared but never used" for name, uses in self._uses.items() if not uses]
        warnings += [
            f"learnable piece {name!r} is used {len(uses)} times ({', '.join(uses)}): each use gets its own copy of its "
            "parameters, trained apart; to share one set extract it with --params shared, or compute the use once as a "
            "value and read that value in several outputs"
            for name, uses in self._uses.items() if len(uses) > 1 and self._pieces[name].mode == "learnable"
        ]
        target = max([MIN_OPSET] + [p.opset for p in used]) if used else DEFAULT_OPSET
        models = {p.name: at_opset(p, target) for p in used}
        self._b.finish_names(self._preferred)

        model = onnx.ModelProto(ir_version=merged_ir_version(models.values(), target), producer_name="onnxsurgeon", producer_version=__version__)
        graph = model.graph
        graph.ParseFromString(self._node_bytes(models))
        graph.name = self.name
        graph.input.extend(helper.make_value_info(v.name, v.type.to_proto()) for v in self._inputs.values())
        graph.output.extend(helper.make_value_info(n, v.type.to_proto()) for n, v in self._outputs)
        graph.initializer.extend(self._b.initializers)
        shared = sorted({t.name for p in used if p.mode == "shared" for t in p.parameters})
        graph.initializer.extend(self._shared[n][1] for n in shared)
        self._add_sparse(graph, models)
        model.opset_import.extend(merged_opsets(models, target))
        model.functions.extend(merged_functions(models))
        params = self._param_summaries(graph)
        meta.set_frozen(model, {p.name for p in params if p.state == "frozen"})
        shared_names = sorted(p.name for p in params if p.state == "shared")
        meta.put(model, meta.SHARED, json.dumps(shared_names) if shared_names else None)
        meta.put(model, meta.COMPOSE, json.dumps({"pieces": {p.name: {"source": p.source, "sha256": p.sha256, "mode": p.mode, "uses": self._uses[p.name]} for p in used}}))
        warnings += checks.check_result(model, "a network", [p.model for p in used])
        report = ComposeReport(
            inputs=tuple((v.name, str(v.type)) for v in self._inputs.values()),
            outputs=tuple((n, str(v.type)) for n, v in self._outputs),
            pieces=tuple(self._piece_summary(p, models.get(p.name)) for p in self._pieces.values()),
            parameters=tuple(params),
            nodes=len(graph.node),
            opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
            ir_version=model.ir_version,
            warnings=tuple(warnings),
        )
        return model, report

    def _node_bytes(self, models: Mapping[str, onnx.ModelProto]) -> bytes:
        """The serialized nodes (and per-use parameters) in order: builder nodes as they are,
        each use expanded from its piece's template."""
        templates = {name: Template(m, self._pieces[name].mode) for name, m in models.items()}
        chunks: list[bytes] = []
        pending = onnx.GraphProto()
        for segment in self._b.segments:
            if isinstance(segment, onnx.NodeProto):
                pending.node.append(segment)
                continue
            if len(pending.node):
                chunks.append(pending.SerializeToString())
                pending = onnx.GraphProto()
            chunks.append(templates[segment.piece].expand(segment.scope + "/"))
        chunks.append(pending.SerializeToString())
        return b"".join(chunks)

    def _add_sparse(self, graph: onnx.GraphProto, models: Mapping[str, onnx.ModelProto]) -> None:
        for name, m in models.items():
            sparse = list(m.graph.sparse_initializer)
            if not sparse:
                continue
            if self._pieces[name].mode == "shared":
                graph.sparse_initializer.extend(sparse)
                continue
            for scope in self._uses[name]:
                for s in sparse:
                    copy = graph.sparse_initializer.add()
                    copy.CopyFrom(s)
                    copy.values.name = f"{scope}/{s.values.name}"

    def _param_summaries(self, graph: onnx.GraphProto) -> list[ParamSummary]:
        origin: dict[str, tuple[str, str]] = {}
        for name, piece in self._pieces.items():
            frozen = piece.frozen
            for t in piece.parameters:
                if piece.mode == "shared":
                    origin.setdefault(t.name, ("frozen" if t.name in frozen else "shared", f"piece {name!r}"))
                    continue
                for scope in self._uses[name]:
                    state = "frozen" if t.name in frozen else "copied"
                    origin[f"{scope}/{t.name}"] = (state, f"piece {name!r} (use {scope!r})")
        out = []
        for t in graph.initializer:
            state, owner = origin.get(t.name) or ("new", f"layer {self._owners.get(t.name, '?')!r}")
            out.append(ParamSummary(t.name, state, owner, str(TensorType(t.data_type, tuple(t.dims))), nbytes(t)))
        return out

    def _piece_summary(self, piece: Piece, converted: onnx.ModelProto | None) -> PieceSummary:
        return PieceSummary(
            name=piece.name, source=piece.source, mode=piece.mode, nodes=len(piece.model.graph.node),
            parameters=len(piece.parameters), parameter_bytes=sum(nbytes(t) for t in piece.parameters),
            opset=piece.opset, converted_to=default_opset(converted) if converted is not None and converted is not piece.model else None,
            uses=tuple(self._uses[piece.name]),
        )


def _reserved() -> set[str]:
    """Names of the functions an expression can call, which pieces cannot take."""
    return set(tensor_functions(Builder())) | {"dense", "embedding", "conv"}


def check_identifier(name: str, what: str) -> None:
    if not isinstance(name, str) or not IDENTIFIER.match(name):
        raise InputError(f"{name!r} cannot name {what}: use letters, digits and '_' (not starting with a digit)")


def _tensor(x: Any, which: int | str, what: str) -> Value:
    if isinstance(x, Record) and x.only() is not None:
        x = x.only()
    if isinstance(x, Value):
        return x
    if isinstance(x, Record):
        raise ArgumentError(which, f"{what} must be one value, not all outputs of {x.owner} ({', '.join(x.names())})", "pick one with .NAME")
    raise ArgumentError(which, f"{what} must be a tensor value, not {x!r}")


def _operand(x: Any) -> Any:
    if isinstance(x, Record) and x.only() is not None:
        return x.only()
    return x


def _last_dim(x: Value, what: str) -> int:
    if x.type.elem not in FLOATS:
        raise ArgumentError("x", f"{what} needs a floating-point input, not {x.type}")
    if not x.type.shape or not isinstance(x.type.shape[-1], int):
        raise ArgumentError("x", f"{what} needs the size of the last dimension of its input, and {x.shown} is {x.type}")
    return x.type.shape[-1]


def _np(elem: int) -> np.dtype:
    return helper.tensor_dtype_to_np_dtype(elem)


def _init(kind: str, shape: tuple[int, ...], fan_in: int, fan_out: int, rng: np.random.Generator, elem: int, square: bool = False) -> np.ndarray:
    """Glorot uniform: U(-l, l) with l = sqrt(6 / (fan_in + fan_out)); identity; zeros."""
    if kind not in INITS:
        raise ArgumentError("init", f"unknown init {kind!r}", f"use one of: {', '.join(INITS)}")
    if kind == "zeros":
        return np.zeros(shape, _np(elem))
    if kind == "identity":
        # a dense [k,k] weight, or a conv weight [C,C,1,1] (a 1x1 convolution that passes
        # every channel through: FDLR's input transform for images)
        if not square or shape[0] != shape[1] or any(d != 1 for d in shape[2:]):
            need = "a 1x1 kernel and as many filters as input channels" if len(shape) == 4 else "a square weight"
            raise ArgumentError("init", f"init='identity' needs {need}, and this weight is {list(shape)}")
        return np.eye(shape[0], dtype=_np(elem)).reshape(shape)
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(_np(elem))
def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    return serde.to_array(a).tobytes() == serde.to_array(b).tobytes()
