"""Composing networks from pieces, new inputs, new layers and a few operators (SPEC section 4).

A :class:`Network` is built step by step (Python) or from a recipe file (:func:`compose`)::

    net = Network("fe")
    x = net.input("features", "float32[N,64]")
    enc = net.piece("autoencoder.onnx", inputs=["input"], outputs=["feat=L4.y"], params="constant")
    h = net.sigmoid(net.dense(net.apply(enc, x).feat, 32, name="hidden"))
    net.output("z", net.dense(h, 10, name="classifier"))
    model, report = net.build()

Each use of a piece inlines the piece's nodes, every value renamed under the use's scope
(``encoder/L1.y``; its inputs are bound by ``Identity`` nodes ``encoder/input``). Parameters
follow the piece's mode: ``learnable`` and ``constant`` uses get their own copies
(``encoder/L1.W``, those of ``constant`` pieces listed frozen), ``shared`` uses all read the
original initializers, held once. New layers get seeded parameters: Glorot-uniform weights
(``init="identity"`` or ``"zeros"`` on request) and zero biases, drawn from
``numpy.random.default_rng([seed, crc32(layer name)])``, so one layer's values do not depend
on the others.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxsurgeon import __version__, meta, modes, serde
from onnxsurgeon.errors import EnvironmentProblem, InputError
from onnxsurgeon.expr import (
    IDENTIFIER,
    ArgumentError,
    Builder,
    ExprError,
    Function,
    Param,
    Pos,
    Record,
    Source,
    TensorType,
    Value,
    evaluate,
    fit,
    names_in,
    parse,
    substitute,
    tensor_functions,
)
from onnxsurgeon.graph import rename_values, subgraphs

MIN_OPSET = 13  # the operators new layers emit have this form from opset 13 on
DEFAULT_OPSET = 17  # a network without pieces
INITS = ("glorot_uniform", "identity", "zeros")
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


class PieceError(InputError):
    """A problem with one piece (raised while building, reported at the piece's declaration)."""

    def __init__(self, piece: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.piece = piece


# --- pieces ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Piece:
    """A model used as a function: its input and output ports, parameter mode and origin."""

    name: str
    model: onnx.ModelProto
    mode: str
    inputs: tuple[tuple[str, TensorType], ...]
    outputs: tuple[tuple[str, TensorType], ...]
    source: str = "<memory>"
    sha256: str | None = None

    @property
    def opset(self) -> int:
        return _default_opset(self.model)

    @property
    def parameters(self) -> list[onnx.TensorProto]:
        return list(self.model.graph.initializer)

    @property
    def frozen(self) -> set[str]:
        names = {t.name for t in self.model.graph.initializer}
        return names if self.mode == "constant" else meta.frozen(self.model) & names


def _default_opset(model: onnx.ModelProto) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def load_piece(
    model: onnx.ModelProto | str | os.PathLike[str],
    /,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    params: str | None = None,
    *,
    name: str | None = None,
    auto_inputs: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
) -> Piece:
    """A piece from a model file or a model: cut with ``inputs``/``outputs``/``params`` as in
    ``extract``, or, without ``inputs`` and ``outputs``, an already-extracted piece used whole
    (its stored mode, unless ``params`` says otherwise)."""
    if params is not None and params not in modes.MODES:
        raise InputError(f"unknown parameter mode {params!r}", f"use one of: {', '.join(modes.MODES)}")
    source, sha, path = "<memory>", None, None
    if not isinstance(model, onnx.ModelProto):
        path = Path(base_dir or ".") / Path(model)
        source = str(model)
        loaded = serde.load(path)
        sha = serde.fingerprint(path).get("sha256")
        model = loaded
    if name is None:
        stem = re.sub(r"\W", "_", path.stem) if path else "piece"
        name = stem if IDENTIFIER.match(stem) else f"piece_{stem}"
    if inputs is None and outputs is None:
        model, mode = _whole_piece(model, params, source)
    else:
        model, _ = _extract(model, list(inputs or []), list(outputs or []), params or "learnable", auto_inputs, source, sha)
        mode = params or "learnable"
    return Piece(name, model, mode, _ports(model, name, "input"), _ports(model, name, "output"), source, sha)


def _extract(model, inputs, outputs, params, auto_inputs, source, sha):
    from onnxsurgeon.cut import extract

    provenance = {"file": Path(source).name, "sha256": sha} if sha else None
    return extract(model, inputs=inputs, outputs=outputs, params=params, auto_inputs=auto_inputs, source=provenance, model_hint=source)


def _whole_piece(model: onnx.ModelProto, params: str | None, source: str) -> tuple[onnx.ModelProto, str]:
    stored = meta.mode(model) or "learnable"
    if params is None or params == stored:
        return model, stored
    if stored == "constant":
        raise InputError(
            f"{source} was extracted in constant mode (BatchNorm folded, Dropout removed); it cannot become {params}",
            "extract the piece again from its source model with the mode you want",
        )
    if params == "constant":  # freeze it now: a cut of the whole piece in constant mode
        inits = {t.name for t in model.graph.initializer}
        ins = [v.name for v in model.graph.input if v.name not in inits]
        outs = [v.name for v in model.graph.output]
        model, _ = _extract(model, ins, outs, "constant", False, source, None)
    return model, params


def _ports(model: onnx.ModelProto, piece: str, kind: str) -> tuple[tuple[str, TensorType], ...]:
    g = model.graph
    inits = {t.name for t in g.initializer}
    values = [v for v in g.input if v.name not in inits] if kind == "input" else list(g.output)
    types = {v.name: TensorType.from_proto(v.type) for v in values}
    if any(t is None for t in types.values()):
        types.update(_inferred_types(model, [n for n, t in types.items() if t is None]))
    missing = [n for n, t in types.items() if t is None]
    if missing:
        raise InputError(
            f"piece {piece!r}: the type of {kind} {', '.join(repr(m) for m in missing)} is not known",
            "only tensor inputs and outputs with a recorded type can be composed; re-extract the piece",
        )
    return tuple((v.name, types[v.name]) for v in values)  # type: ignore[misc]


def _inferred_types(model: onnx.ModelProto, names: list[str]) -> dict[str, TensorType | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (best effort; a type still missing is reported by the caller)
        return {}
    found = {v.name: TensorType.from_proto(v.type) for v in list(inferred.graph.output) + list(inferred.graph.value_info)}
    return {n: found.get(n) for n in names}


# --- inlining one use ---------------------------------------------------------------------------


class _Template:
    """The nodes (and, unless shared, the parameters) of a piece, ready to be inlined many times.

    ``expand(prefix)`` returns the serialized graph fragment of one use: every value defined
    in the piece renamed to ``prefix + name``, node names likewise, shared parameters kept.
    The reference way is to rename a copy (:meth:`_slow`). Since every renamed string grows
    by the same number of bytes, the serialized fragment for all prefixes of one byte length
    is the same sequence of byte strings with the prefix between them: we serialize once with
    a marker of that length in place of the prefix, split at the markers, and join with the
    prefix. The marker is made of non-ASCII characters, which no length byte before it can
    be part of; the split is used only if the marker occurs nowhere else and the joined
    result equals the reference for the first prefix."""

    def __init__(self, model: onnx.ModelProto, mode: str) -> None:
        g = model.graph
        params = {t.name for t in g.initializer}
        kept = params if mode == "shared" else set()
        body = onnx.GraphProto()
        body.node.extend(g.node)
        if mode != "shared":
            body.initializer.extend(g.initializer)
        known = {vi.name for vi in g.value_info}
        body.value_info.extend(vi for vi in g.value_info if vi.name not in kept)
        ins = {v.name for v in g.input}
        body.value_info.extend(
            v for v in g.output if v.type.WhichOneof("value") and v.name not in known | ins | params
        )
        self.body = body
        self.renamed = sorted(_defined_names(g) - kept)
        self._parts: dict[int, list[bytes] | None] = {}
        self._plain: bytes | None = None

    def expand(self, prefix: str) -> bytes:
        raw = prefix.encode()
        if len(raw) not in self._parts:
            self._parts[len(raw)] = self._split(prefix)
        parts = self._parts[len(raw)]
        return raw.join(parts) if parts is not None else self._slow(prefix)

    def _renamed(self, prefix: str) -> onnx.GraphProto:
        g = onnx.GraphProto()
        g.CopyFrom(self.body)
        rename_values(g, {n: prefix + n for n in self.renamed})
        for node in g.node:
            if node.name:
                node.name = prefix + node.name
        return g

    def _slow(self, prefix: str) -> bytes:
        return self._renamed(prefix).SerializeToString()

    def _split(self, prefix: str) -> list[bytes] | None:
        marker = _marker(len(prefix.encode()))
        if marker is None:
            return None
        if self._plain is None:
            self._plain = self.body.SerializeToString()
        if marker.encode() in self._plain:
            return None
        parts = self._renamed(marker).SerializeToString().split(marker.encode())
        return parts if prefix.encode().join(parts) == self._slow(prefix) else None


def _marker(size: int) -> str | None:
    """A string of exactly ``size`` UTF-8 bytes, all of them non-ASCII."""
    if size < 2:
        return None
    two = {0: 0, 1: 2, 2: 1}[size % 3]
    three = (size - 2 * two) // 3
    return "\u07ff" * two + "\uf8ff" * three


def _defined_names(graph: onnx.GraphProto) -> set[str]:
    """Every name a graph defines: inputs, initializers, node outputs, also inside subgraphs."""
    names = {v.name for v in graph.input}
    names.update(t.name for t in graph.initializer)
    names.update(s.values.name for s in graph.sparse_initializer)
    for node in graph.node:
        names.update(o for o in node.output if o)
        if node.attribute:
            for g in subgraphs(node):
                names |= _defined_names(g)
    names.discard("")
    return names


@dataclass(frozen=True)
class _Use:
    """A placeholder in the node list: one use of a piece, expanded when the network is built."""

    piece: str
    scope: str


# --- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PieceSummary:
    """One piece: where it comes from, its mode and size, and its uses (their scopes)."""

    name: str
    source: str
    mode: str
    nodes: int
    parameters: int
    parameter_bytes: int
    opset: int
    converted_to: int | None
    uses: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "mode": self.mode, "nodes": self.nodes,
            "parameters": self.parameters, "parameter_bytes": self.parameter_bytes, "opset": self.opset,
            "converted_to": self.converted_to, "uses": list(self.uses),
        }


@dataclass(frozen=True)
class ParamSummary:
    """One parameter of the network: ``new`` (a new layer), ``copied`` (a learnable use's
    copy), ``frozen`` (a constant use's copy, or frozen in its source) or ``shared``."""

    name: str
    state: str
    owner: str
    type: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "owner": self.owner, "type": self.type, "bytes": self.bytes}


STATES = ("new", "copied", "frozen", "shared")


@dataclass(frozen=True)
class ComposeReport:
    """What ``compose`` built: the pieces and their uses, the parameters and the interface."""

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    pieces: tuple[PieceSummary, ...]
    parameters: tuple[ParamSummary, ...]
    nodes: int
    opsets: dict[str, int]
    ir_version: int
    warnings: tuple[str, ...] = ()

    def counts(self) -> dict[str, dict[str, int]]:
        out = {s: {"count": 0, "bytes": 0} for s in STATES}
        for p in self.parameters:
            out[p.state]["count"] += 1
            out[p.state]["bytes"] += p.bytes
        return out

    @property
    def parameter_bytes(self) -> int:
        return sum(p.bytes for p in self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": n, "type": t} for n, t in self.inputs],
            "outputs": [{"name": n, "type": t} for n, t in self.outputs],
            "pieces": [p.to_dict() for p in self.pieces],
            "parameters": [p.to_dict() for p in self.parameters],
            "counts": self.counts(),
            "parameter_bytes": self.parameter_bytes,
            "nodes": self.nodes,
            "opsets": dict(self.opsets),
            "ir_version": self.ir_version,
            "warnings": list(self.warnings),
        }


# --- the network -------------------------------------------------------------------------------


class Network:
    """A network under construction: inputs, pieces and their uses, new layers and outputs.

    Every method checks its arguments (types, shapes, names) at once and raises an
    :class:`~onnxsurgeon.errors.InputError`; :meth:`build` returns the model and a report."""

    def __init__(self, name: str = "network", *, seed: int = 0, base_dir: str | os.PathLike[str] | None = None) -> None:
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
        _check_identifier(name, "an input")
        if name in self._pieces:
            raise InputError(f"name collision: {name!r} is already a piece", "choose another name for the input")
        t = type if isinstance(type, TensorType) else TensorType.parse(type)
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
        _check_identifier(piece.name, "a piece")
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
        self._b.segments.append(_Use(piece.name, scope))
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
        array = _init(init, (filters, c, kernel, kernel), c * kernel * kernel, filters * kernel * kernel, self._rng(scope), x.type.elem)
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
        _check_identifier(name, "a value")
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
        target = max([MIN_OPSET] + [p.opset for p in used]) if used else DEFAULT_OPSET
        models = {p.name: _at_opset(p, target) for p in used}
        self._b.finish_names(self._preferred)

        model = onnx.ModelProto(ir_version=_ir_version(models.values(), target), producer_name="onnxsurgeon", producer_version=__version__)
        graph = model.graph
        graph.ParseFromString(self._node_bytes(models))
        graph.name = self.name
        graph.input.extend(helper.make_value_info(v.name, v.type.to_proto()) for v in self._inputs.values())
        graph.output.extend(helper.make_value_info(n, v.type.to_proto()) for n, v in self._outputs)
        graph.initializer.extend(self._b.initializers)
        shared = sorted({t.name for p in used if p.mode == "shared" for t in p.parameters})
        graph.initializer.extend(self._shared[n][1] for n in shared)
        self._add_sparse(graph, models)
        model.opset_import.extend(_opsets(models, target))
        model.functions.extend(_functions(models))
        params = self._param_summaries(graph)
        meta.set_frozen(model, {p.name for p in params if p.state == "frozen"})
        shared_names = sorted(p.name for p in params if p.state == "shared")
        meta.put(model, meta.SHARED, json.dumps(shared_names) if shared_names else None)
        meta.put(model, meta.COMPOSE, json.dumps({"pieces": {p.name: {"source": p.source, "sha256": p.sha256, "mode": p.mode, "uses": self._uses[p.name]} for p in used}}))
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
        templates = {name: _Template(m, self._pieces[name].mode) for name, m in models.items()}
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
            out.append(ParamSummary(t.name, state, owner, str(TensorType(t.data_type, tuple(t.dims))), _nbytes(t)))
        return out

    def _piece_summary(self, piece: Piece, converted: onnx.ModelProto | None) -> PieceSummary:
        return PieceSummary(
            name=piece.name, source=piece.source, mode=piece.mode, nodes=len(piece.model.graph.node),
            parameters=len(piece.parameters), parameter_bytes=sum(_nbytes(t) for t in piece.parameters),
            opset=piece.opset, converted_to=_default_opset(converted) if converted is not None and converted is not piece.model else None,
            uses=tuple(self._uses[piece.name]),
        )


def _reserved() -> set[str]:
    """Names of the functions an expression can call, which pieces cannot take."""
    return set(tensor_functions(Builder())) | {"dense", "embedding", "conv"}


def _check_identifier(name: str, what: str) -> None:
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
    if x.type.elem not in _FLOATS:
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
        if not square or shape[0] != shape[1]:
            raise ArgumentError("init", f"init='identity' needs a square weight, and this one is {list(shape)}")
        return np.eye(shape[0], dtype=_np(elem))
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(_np(elem))


def _nbytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def _same_tensor(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if a.data_type != b.data_type or list(a.dims) != list(b.dims):
        return False
    return serde.to_array(a).tobytes() == serde.to_array(b).tobytes()


def _at_opset(piece: Piece, target: int) -> onnx.ModelProto:
    """The piece's model at the default-domain opset ``target`` (converted if older)."""
    if piece.opset >= target or piece.opset == 0:
        return piece.model
    try:
        converted = onnx.version_converter.convert_version(piece.model, target)
    except Exception as e:  # noqa: BLE001  (the converter raises several types; the reason is in the text)
        reason = _unconvertible(piece.model, target) or (str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        raise PieceError(
            piece.name,
            f"piece {piece.name!r} uses opset {piece.opset} and cannot be converted to opset {target} "
            f"(the newest among the pieces): {reason}",
            f"extract the pieces from models exported with the same opset, or re-export {piece.source} with opset {target}",
        ) from None
    if len(converted.functions) != len(piece.model.functions):  # the converter drops local functions
        del converted.functions[:]
        converted.functions.extend(piece.model.functions)
    return converted


def _unconvertible(model: onnx.ModelProto, target: int) -> str | None:
    """Which operators of a model have no definition at ``target`` (the usual reason the
    version converter gives up, with an unhelpful message)."""
    missing = set()
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, target, "")
            except onnx.defs.SchemaError:
                missing.add(node.op_type)
    if not missing:
        return None
    return f"{', '.join(sorted(missing))} {'is' if len(missing) == 1 else 'are'} not defined in opset {target}"


def _opsets(models: Mapping[str, onnx.ModelProto], target: int) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, tuple[int, str]] = {"": (target, "")}
    for name, m in models.items():
        for o in m.opset_import:
            domain = "" if o.domain == "ai.onnx" else o.domain
            if domain == "":
                continue
            seen = versions.setdefault(domain, (o.version, name))
            if seen[0] != o.version:
                raise PieceError(
                    name,
                    f"pieces {seen[1]!r} and {name!r} use different versions of the operator set {domain!r} ({seen[0]} and {o.version})",
                    "only the default ONNX domain can be converted; extract both pieces from models with the same versions",
                )
    return [helper.make_opsetid(d, v) for d, (v, _) in versions.items()]


def _functions(models: Mapping[str, onnx.ModelProto]) -> list[onnx.FunctionProto]:
    found: dict[tuple[str, str, str], tuple[str, onnx.FunctionProto]] = {}
    for name, m in models.items():
        for f in m.functions:
            key = (f.domain, f.name, getattr(f, "overload", ""))
            seen = found.setdefault(key, (name, f))
            if seen[1] is not f and seen[1].SerializeToString() != f.SerializeToString():
                raise PieceError(
                    name,
                    f"pieces {seen[0]!r} and {name!r} both define the local function {f.domain}.{f.name}, differently",
                    "a network can hold one function of each name: extract the pieces from one model, or rename the function",
                )
    return [f for _, f in found.values()]


def _ir_version(models: Any, target: int) -> int:
    """The newest IR version of the pieces, and at least what the opset needs."""
    need = next((ir for _, ir, opset, *_ in helper.VERSION_TABLE if opset >= target), onnx.IR_VERSION)
    return max([need] + [m.ir_version for m in models])


# --- recipes -----------------------------------------------------------------------------------

RECIPE_KEYS = ("name", "seed", "inputs", "pieces", "values", "outputs")
PIECE_KEYS = ("model", "piece", "inputs", "outputs", "params", "auto_inputs")


def compose(recipe: str | os.PathLike[str] | Mapping[str, Any], /, *, seed: int | None = None) -> tuple[onnx.ModelProto, ComposeReport]:
    """Build the network a recipe describes: a TOML file (model paths relative to it) or the
    dict it holds. Errors name the recipe's line and column."""
    r = _Recipe.read(recipe)
    return r.build(seed)


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise EnvironmentProblem(
                "reading recipes needs Python 3.11 or the tomli package", "pip install tomli"
            ) from None
    return tomllib


_TOML_ERROR_AT = re.compile(r"^(.*?)\s*\(at line (\d+), column (\d+)\)\s*$", re.DOTALL)


@dataclass
class _Recipe:
    data: Mapping[str, Any]
    file: str = "<recipe>"
    base_dir: Path = Path(".")
    locator: _Locator | None = None

    @classmethod
    def read(cls, recipe: str | os.PathLike[str] | Mapping[str, Any]) -> _Recipe:
        if isinstance(recipe, Mapping):
            return cls(recipe)
        path = Path(recipe)
        if not path.is_file():
            raise InputError(f"no such recipe file: {path}", "check the path of the recipe")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path} is not a text file (not UTF-8)", "a recipe is a TOML file") from None
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}") from None
        toml = _toml()
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as e:
            m = _TOML_ERROR_AT.match(str(e))
            pos = Pos(int(m.group(2)), int(m.group(3)), str(path)) if m else Pos(1, 1, str(path))
            raise ExprError(f"TOML syntax error: {m.group(1) if m else e}", "see https://toml.io for the syntax", pos) from None
        except (RecursionError, ValueError) as e:  # arrays nested thousands deep, integers of thousands of digits
            what = "is nested too deeply" if isinstance(e, RecursionError) else f"cannot be read ({e})"
            raise InputError(f"{path} {what}", "a recipe is a short TOML file; see docs/compose.md") from None
        return cls(data, str(path), path.parent, _Locator(text, str(path)))

    # --- positions ----------------------------------------------------------------------------

    def key_pos(self, *path: str) -> Pos:
        return self.locator.key(path) if self.locator else Pos(0, 0, f"recipe [{'.'.join(path)}]")

    def value_pos(self, *path: str) -> Pos:
        return self.locator.value(path) if self.locator else Pos(0, 0, f"recipe [{'.'.join(path)}]")

    def source(self, text: str, *path: str) -> Source:
        if self.locator is None:
            return Source(text, f"recipe [{'.'.join(path)}]")
        return self.locator.source(path, text)

    @contextmanager
    def at(self, pos: Pos) -> Iterator[None]:
        try:
            yield
        except InputError as e:
            raise _placed(pos, e) from None

    # --- building -----------------------------------------------------------------------------

    def build(self, seed: int | None) -> tuple[onnx.ModelProto, ComposeReport]:
        data = self.data
        for key in data:
            if key not in RECIPE_KEYS:
                raise ExprError(f"unknown recipe key {key!r}", f"a recipe has: {', '.join(RECIPE_KEYS)}", self.key_pos(key))
        name = self.scalar("name", str, "network")
        if seed is None:
            seed = self.scalar("seed", int, 0)
        net = Network(name, seed=seed, base_dir=self.base_dir)
        declared: dict[str, Pos] = {}
        for key, text in self.table("inputs").items():
            with self.at(self.key_pos("inputs", key)):
                _check_identifier(key, "an input")
            if not isinstance(text, str):
                raise ExprError(f"input {key!r} must be a type written as a string, e.g. \"float32[N,64]\"", None, self.value_pos("inputs", key))
            with self.at(self.value_pos("inputs", key)):
                net.input(key, text)
        for key, spec in self.table("pieces").items():
            declared[key] = self.key_pos("pieces", key)
            self.piece(net, key, spec)
        values = self.table("values")
        for k, (key, text) in enumerate(values.items()):
            later = {n: self.key_pos("values", n) for n in list(values)[k:]}
            self.expression(net, "values", key, text, later)
        outputs = self.table("outputs")
        if not outputs:
            raise ExprError("the recipe has no outputs", "add an [outputs] table, e.g. z = \"dense(h, 10)\"", self.key_pos("outputs") if "outputs" in data else Pos(1, 1, self.file))
        for key, text in outputs.items():
            self.expression(net, "outputs", key, text)
        try:
            return net.build()
        except PieceError as e:
            raise _placed(declared.get(e.piece, Pos(1, 1, self.file)), e) from None

    def scalar(self, key: str, kind: type, default: Any) -> Any:
        value = self.data.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise ExprError(f"{key!r} must be {'an integer' if kind is int else 'a string'}", None, self.value_pos(key))
        return value

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, Mapping):
            raise ExprError(f"{key!r} must be a table ([{key}])", None, self.value_pos(key))
        return value

    def piece(self, net: Network, key: str, spec: Any) -> None:
        where = self.key_pos("pieces", key)
        if not isinstance(spec, Mapping):
            raise ExprError(f"piece {key!r} must be a table ([pieces.{key}]) with a model or piece file", None, where)
        for k in spec:
            if k not in PIECE_KEYS:
                raise ExprError(f"piece {key!r}: unknown key {k!r}", f"a piece has: {', '.join(PIECE_KEYS)}", self.key_pos("pieces", key, k))
        files = [k for k in ("model", "piece") if k in spec]
        if len(files) != 1:
            raise ExprError(f"piece {key!r} needs exactly one of 'model' (cut with inputs/outputs) or 'piece' (an extracted piece)", None, where)
        file_key = files[0]
        lists = {}
        for k in ("inputs", "outputs"):
            v = spec.get(k)
            if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
                raise ExprError(f"piece {key!r}: {k!r} must be a list of names, e.g. [\"input\"]", None, self.value_pos("pieces", key, k))
            lists[k] = v
        if file_key == "model" and not lists["outputs"]:
            raise ExprError(f"piece {key!r}: a model needs 'outputs' (and usually 'inputs') to cut the piece", None, where)
        if file_key == "piece" and (lists["inputs"] is not None or lists["outputs"] is not None):
            raise ExprError(f"piece {key!r}: an extracted piece is used whole; 'inputs' and 'outputs' belong with 'model'", None, where)
        params = spec.get("params")
        if params is not None and params not in modes.MODES:
            raise ExprError(f"piece {key!r}: unknown parameter mode {params!r}", f"use one of: {', '.join(modes.MODES)}", self.value_pos("pieces", key, "params"))
        if not isinstance(spec[file_key], str):
            raise ExprError(f"piece {key!r}: {file_key!r} must be a file path", None, self.value_pos("pieces", key, file_key))
        with self.at(self.key_pos("pieces", key)):
            _check_identifier(key, "a piece")
        with self.at(self.value_pos("pieces", key, file_key)):
            path = self.base_dir / spec[file_key]
            if not path.is_file():
                raise InputError(f"piece {key!r}: no such model file: {spec[file_key]} ({path.resolve()})", "paths in a recipe are relative to the recipe file")
        with self.at(where):
            piece = load_piece(path, lists["inputs"], lists["outputs"], params, name=key, auto_inputs=bool(spec.get("auto_inputs", False)))
            net.piece(dataclasses.replace(piece, source=spec[file_key]))

    def expression(self, net: Network, table: str, key: str, text: Any, later: Mapping[str, Pos] = {}) -> None:
        if not isinstance(text, str):
            raise ExprError(f"[{table}] {key!r} must be an expression written as a string, e.g. \"relu(x)\"", None, self.value_pos(table, key))
        source = self.source(text, table, key)
        if table == "values":
            with self.at(self.key_pos(table, key)):
                net.claim_value(key)
        for name in names_in(parse(text, source)):
            if name.id in later:
                what = "itself" if name.id == key else f"{name.id!r}, which is defined later (line {later[name.id].line})"
                raise ExprError(f"{key!r} uses {what}", "values are computed in the order they are written", name.pos)
        if table == "values":
            with self.at(self.value_pos(table, key)):
                net.let(key, text, source, claimed=True)
            return
        with self.at(self.value_pos(table, key)):
            value = net.evaluate(text, source)
        with self.at(self.key_pos(table, key)):
            net.output(key, value)


def _placed(pos: Pos, e: InputError) -> ExprError:
    return ExprError.at(pos, e)


# --- where things are in a TOML file ----------------------------------------------------------

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY_PART = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"\s*({_DOTTED})\s*=\s*")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


class _Locator:
    """Positions of keys and values in a TOML text (tomllib does not report them)."""

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.keys: dict[tuple[str, ...], int] = {}
        self.values: dict[tuple[str, ...], int] = {}
        self._scan()

    def _scan(self) -> None:
        table: tuple[str, ...] = ()
        for start, line in zip(self.line_starts, self.text.split("\n")):
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("[["):
                table = _key_parts(m.group(1))
                self.keys.setdefault(table, start + m.start(1))
                continue
            m = _ASSIGN.match(line)
            if m:
                path = table + _key_parts(m.group(1))
                self.keys.setdefault(path, start + m.start(1))
                self.values.setdefault(path, start + m.end())
                if line[m.end():].lstrip().startswith("{"):
                    self._inline(path, start + m.end(), line[m.end():])

    def _inline(self, path: tuple[str, ...], offset: int, rest: str) -> None:
        for m in re.finditer(rf"(?:\{{|,)\s*({_DOTTED})\s*=\s*", rest):
            sub = path + _key_parts(m.group(1))
            self.keys.setdefault(sub, offset + m.start(1))
            self.values.setdefault(sub, offset + m.end())

    def pos(self, offset: int) -> Pos:
        import bisect

        line = bisect.bisect_right(self.line_starts, offset) - 1
        return Pos(line + 1, offset - self.line_starts[line] + 1, self.file)

    def _find(self, table: dict[tuple[str, ...], int], path: tuple[str, ...]) -> Pos:
        while path:
            if path in table:
                return self.pos(table[path])
            if path in self.keys:
                return self.pos(self.keys[path])
            path = path[:-1]
        return Pos(1, 1, self.file)

    def key(self, path: tuple[str, ...]) -> Pos:
        return self._find(self.keys, path)

    def value(self, path: tuple[str, ...]) -> Pos:
        return self._find(self.values, path)

    def source(self, path: tuple[str, ...], value: str) -> Source:
        """The expression ``value`` with the file position of each of its characters."""
        offset = self.values.get(path)
        chars = _string_chars(self.text, offset, value) if offset is not None else None
        if chars is None:
            where = self.value(path)
            return Source(value, self.file, where.line, where.col)
        return Source(value, self.file, chars=tuple((p.line, p.col) for p in map(self.pos, chars)))


def _string_chars(text: str, offset: int, expected: str) -> list[int] | None:
    """The text offset of each character of the TOML string starting at ``offset``, or None
    if it cannot be followed (then positions are counted from the opening quote)."""
    quote = text[offset:offset + 1]
    if quote not in ("'", '"'):
        return None
    triple = text.startswith(quote * 3, offset)
    i = offset + (3 if triple else 1)
    if triple and text.startswith("\n", i):
        i += 1
    elif triple and text.startswith("\r\n", i):
        i += 2
    out: list[str] = []
    where: list[int] = []
    end = quote * 3 if triple else quote
    while i < len(text) and not text.startswith(end, i):
        c = text[i]
        if c == "\n" and not triple:
            return None
        if c == "\\" and quote == '"':
            nxt = text[i + 1:i + 2]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                where.append(i)
                i += 2
            elif nxt in ("u", "U"):
                n = 4 if nxt == "u" else 8
                try:
                    out.append(chr(int(text[i + 2:i + 2 + n], 16)))
                except ValueError:
                    return None
                where.append(i)
                i += 2 + n
            elif triple and nxt in " \t\r\n":  # a line-ending backslash swallows the whitespace after it
                i += 1
                while i < len(text) and text[i] in " \t\r\n":
                    i += 1
            else:
                return None
            continue
        out.append(c)
        where.append(i)
        i += 1
    return where if "".join(out) == expected else None
