"""Types of the values of a graph that records none, in one forward pass over its nodes.

onnx's shape inference over a graph costs tens of microseconds per node, so typing the
boundary of a cut deep in a 200k-node export took seconds more than reading the file. Yet
the nodes of such a graph repeat: every layer of an encoder applies the same operators, with
the same attributes, to inputs of the same types. A node's inferred output types depend only
on its operator, its attributes, the types of its inputs and, through onnx's data
propagation, the *values* of inputs that hold shape data (``Shape`` -> ``Gather`` ->
``Concat`` -> ``Reshape``). So this pass gives each value a key that stands for exactly
that, and asks onnx's own inference once per distinct (operator, attributes, input keys): on
a graph of that one node, fed inputs of those types, with each input that may hold data
rebuilt from the nodes, initializers and types it was computed from. The answer is onnx's,
for the same node in the same context, so it is what inference on the whole graph gives;
a repeated layer costs a dictionary lookup per node.

Where the pass cannot stand for whole-graph inference (nodes with subgraphs, values that
are read before they are written, inputs without a type, very long data chains) the value
is marked unknown, and the caller falls back to onnx's inference on the whole graph.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from operator import attrgetter

import onnx

from onnxsurgeon.graph import GraphIndex

# onnx propagates data (not only types) through these operators of the default domain
# (OpSchema.has_data_propagation_function, onnx 1.17); Constant outputs and initializers
# are data too.
_DATA_OPS = frozenset({"Add", "Cast", "Concat", "Gather", "Mul", "Shape", "Size", "Slice", "Squeeze", "Sub", "Unsqueeze"})
_DATA_SOURCES = frozenset({"Shape", "Size"})
_SUBGRAPH = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
# A value whose data was computed by more nodes than this is not rebuilt: unknown instead.
_MAX_RECIPE = 64

_INPUT, _OUTPUT = attrgetter("input"), attrgetter("output")

UNKNOWN = -1  # a value this pass cannot type as whole-graph inference would
_EMPTY = -2  # an omitted optional input ("")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(128)]


def _dims(t: onnx.TypeProto):
    while t.WhichOneof("value") in ("sequence_type", "optional_type"):
        t = t.sequence_type.elem_type if t.HasField("sequence_type") else t.optional_type.elem_type
    if t.HasField("tensor_type"):
        return t.tensor_type.shape.dim
    if t.HasField("sparse_tensor_type"):
        return t.sparse_tensor_type.shape.dim
    return ()


def _fresh_symbols(t: onnx.TypeProto, given: set[str]) -> bool:
    """Whether a type holds a dim name onnx's inference made up (unk__N)."""
    if b"unk__" not in t.SerializeToString():
        return False
    if t.WhichOneof("value") == "map_type":
        return True
    return any(d.dim_param.startswith("unk__") and d.dim_param not in given for d in _dims(t))


def big_initializer(t: onnx.TensorProto, dims: tuple[int, ...]) -> bool:
    """Initializers whose values the pass does not give inference, only their type: weights,
    which no shape depends on. Integer tensors and tensors of a few elements (a scale, a
    range bound) are given whole; what onnx's inference reads as data is among these."""
    if t.data_location == onnx.TensorProto.EXTERNAL:
        return True
    if t.data_type in _INTEGER:
        return False
    return math.prod(dims) > 8


_INTEGER = frozenset({
    onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
    onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16, onnx.TensorProto.UINT8,
})


class TypePass:
    """Value keys and types of one graph's values, found node by node in graph order."""

    def __init__(
        self,
        model: onnx.ModelProto,
        nodes: list[onnx.NodeProto],
        initializers: dict[str, onnx.TensorProto],
        inputs: dict[str, onnx.ValueInfoProto],
        declared: Iterable[str] = (),
        names: tuple[list[tuple[str, ...]] | None, list[tuple[str, ...]] | None] = (None, None),
    ) -> None:
        """The pass over ``nodes`` of a graph with those parameters and graph inputs (by
        name), in a model with ``model``'s opsets and functions. ``declared``: values whose
        recorded type whole-graph inference merges with the inferred one; this pass does
        not, so they and what reads them are UNKNOWN. ``names``: the inputs and the outputs
        of each node, where the caller has them already (reading them from the nodes makes
        a string of every name: 40% of the pass), or None. A graph input in ``inputs`` that
        names a parameter is typed as whole-graph inference types it: as the input declares
        (its data comes from the initializer); UNKNOWN where that is not the parameter's own type."""
        self.model = model
        self.nodes, self.initializers, self.inputs = nodes, initializers, inputs
        self.listed = {n: vi for n, vi in inputs.items() if n in initializers} if initializers else {}
        self.names = names
        self.declared = set(declared)
        self.ids: dict[str, int] = {}  # value name -> key id
        # key id -> ("t", type bytes) | ("init", tensor bytes)
        #           | ("out", node key, output index): a value that may hold data
        self.keys: list[tuple] = []
        self.key_id: dict[tuple, int] = {}
        self.size: list[int] = []  # key id -> nodes needed to rebuild it
        self.types: dict[int, onnx.TypeProto | None] = {}  # key id -> type
        self.memo: dict[tuple, tuple[int, ...]] = {}  # node key -> output key ids
        self.sig_node: dict[tuple, onnx.NodeProto] = {}  # a node with that signature
        self.tensor_types: dict[tuple, int] = {}  # (element type, *dims) -> key id
        self.done = 0  # nodes processed so far

    # --- keys ------------------------------------------------------------------------------
    def _intern(self, key: tuple, size: int = 0, typ: onnx.TypeProto | None = None) -> int:
        k = self.key_id.get(key)
        if k is None:
            k = self.key_id[key] = len(self.keys)
            self.keys.append(key)
            self.size.append(size)
            if typ is None and key[0] == "t":
                typ = onnx.TypeProto.FromString(key[1])
            self.types[k] = typ
        return k

    def _source(self, name: str) -> int:
        """The key of a value no node of the pass has written yet: a parameter, a graph
        input, or UNKNOWN (a value read before it is written: the graph is not in order)."""
        t = self.initializers.get(name)
        if t is not None:
            dims = tuple(t.dims)
            vi = self.listed.get(name)
            if vi is not None:  # also a graph input: whole-graph inference takes the type it declares
                own = onnx.helper.make_tensor_type_proto(t.data_type, dims)
                if vi.type.SerializeToString() != own.SerializeToString():
                    self.ids[name] = UNKNOWN
                    return UNKNOWN
            if big_initializer(t, dims):  # only its type, like any other value's
                tk = (t.data_type, dims)
                k = self.tensor_types.get(tk)
                if k is None:
                    typ = onnx.helper.make_tensor_type_proto(t.data_type, dims)
                    k = self.tensor_types[tk] = self._intern(("t", typ.SerializeToString()))
            else:  # its values too
                stripped = onnx.TensorProto()
                stripped.CopyFrom(t)
                stripped.ClearField("name")
                k = self._intern(("init", stripped.SerializeToString()))
                self.types[k] = onnx.helper.make_tensor_type_proto(t.data_type, dims)
        else:
            vi = self.inputs.get(name)
            if vi is None or vi.type.WhichOneof("value") is None:
                return UNKNOWN
            k = self._intern(("t", vi.type.SerializeToString()))
        self.ids[name] = k
        return k

    def _register_initializers(self) -> None:
        """:meth:`_source` of every initializer (so that a node writing one is seen as a second
        writer), with weights, by far the most, keyed by element type and dims in one loop."""
        ids, tensor_types, source = self.ids, self.tensor_types, self._source
        external, integer, prod = onnx.TensorProto.EXTERNAL, _INTEGER, math.prod
        for name, t in self.initializers.items():
            data_type = t.data_type
            if data_type in integer:
                source(name)
                continue
            dims = tuple(t.dims)
            k = tensor_types.get((data_type, dims))
            if k is None or (prod(dims) <= 8 and t.data_location != external):
                source(name)
            else:
                ids[name] = k
        for name in self.listed:  # also graph inputs: typed as they are declared
            source(name)

    # --- the pass --------------------------------------------------------------------------
    def run(self, upto: int) -> None:
        """Process the nodes before index ``upto`` (graph order) not yet processed."""
        ids, memo, source, declared = self.ids, self.memo, self._source, self.declared
        if not self.done:
            ids[""] = _EMPTY
            self._register_initializers()
        get, sig_node = ids.__getitem__, self.sig_node
        nodes = self.nodes[self.done : upto]
        known_inputs, known_outputs = self.names
        all_inputs = known_inputs[self.done : upto] if known_inputs is not None else map(_INPUT, nodes)
        all_outputs = known_outputs[self.done : upto] if known_outputs is not None else map(_OUTPUT, nodes)
        for n, inputs, outputs in zip(nodes, all_inputs, all_outputs):
            attrs = n.attribute
            # the number of outputs is part of the signature: it decides inference (Split)
            domain = n.domain
            if attrs:
                sig = (domain, n.op_type, len(outputs), b"".join([a.SerializeToString() for a in attrs]))
            else:
                sig = (domain, n.op_type, len(outputs))
            if domain and n.overload:  # an overload of a local function (IR 10) is another function
                sig += (n.overload,)
            try:
                key = (sig, *map(get, inputs))
            except KeyError:
                key = (sig, *[ids[x] if x in ids else source(x) for x in inputs])
            outs = memo.get(key)
            if outs is None:
                if sig not in sig_node:
                    sig_node[sig] = n
                outs = memo[key] = self._infer(key)
            if len(outs) == 1:
                o = outputs[0]
                # a second writer (of a parameter, a graph input or a value): inference
                # merges the types, this pass does not; "" is an omitted optional output
                ids[o] = outs[0] if o not in ids else UNKNOWN if o else _EMPTY
                if o in declared:
                    ids[o] = UNKNOWN
            else:
                for o, k in zip(outputs, outs):
                    if o in ids:
                        if not o:
                            continue
                        k = UNKNOWN
                    ids[o] = k
                if declared and not declared.isdisjoint(outputs):
                    for o in declared.intersection(outputs):
                        ids[o] = UNKNOWN
        self.done = max(self.done, upto)

    def type_of(self, name: str) -> onnx.TypeProto | None | int:
        """The inferred type of a value after :meth:`run` passed its producer: a TypeProto,
        None if inference gives it none, or UNKNOWN."""
        k = self.ids.get(name)
        if k is None:
            k = self._source(name)
        if k == UNKNOWN:
            return UNKNOWN
        return self.types[k]

    def value_info_bytes(self, names: Iterable[str]) -> bytes | None:
        """``GraphProto.value_info`` entries, serialised, of the values among ``names`` that
        have a type (as inference records them), in that order; None if one is UNKNOWN."""
        ids, keys, types = self.ids, self.keys, self.types
        cache: dict[int, bytes] = {}
        parts = []
        for name in names:
            k = ids.get(name)
            if k is None or k < 0:
                if k == _EMPTY:
                    continue
                return None
            entry = cache.get(k)
            if entry is None:
                typ = keys[k][1] if keys[k][0] == "t" else types[k].SerializeToString()
                entry = cache[k] = b"\x12" + _varint(len(typ)) + typ  # ValueInfoProto.type
            encoded = name.encode()
            n = len(encoded)
            body = b"\x0a" + (_SMALL[n] if n < 128 else _varint(n)) + encoded + entry  # ValueInfoProto.name
            n = len(body)
            parts.append(b"\x6a" + (_SMALL[n] if n < 128 else _varint(n)) + body)  # GraphProto.value_info
        return b"".join(parts)

    # --- one node ------------------------------------------------------------------------
    def _infer(self, key: tuple) -> tuple[int, ...]:
        sig, inputs = key[0], key[1:]
        n_out = sig[2]
        if UNKNOWN in inputs or any(a.type in _SUBGRAPH for a in self.sig_node[sig].attribute):
            # a subgraph's inference depends on the types of the scope around it
            return (UNKNOWN,) * n_out
        domain, op = sig[0], sig[1]
        default = domain in ("", "ai.onnx")
        keys = self.keys
        carries = [k >= 0 and keys[k][0] in ("init", "out") for k in inputs]
        data = default and (op == "Constant" or op in _DATA_SOURCES or (op in _DATA_OPS and any(carries)))
        size = 1 + sum(self.size[k] for k, c in zip(inputs, carries) if c and keys[k][0] == "out")
        if data and size > _MAX_RECIPE:
            return (UNKNOWN,) * n_out
        graph, outs = self._graph(key)
        probe = onnx.helper.make_model(
            graph, opset_imports=self.model.opset_import, ir_version=max(self.model.ir_version, 4)
        )
        probe.functions.extend(self.model.functions)
        try:
            inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
        except Exception:  # as whole-graph inference would; let the caller run that
            return (UNKNOWN,) * n_out
        found = {v.name: v.type for v in inferred.graph.output if v.type.WhichOneof("value") is not None}
        given = {d.dim_param for v in graph.input for d in _dims(v.type)}
        result = []
        for j, name in enumerate(outs):
            t = found.get(name)
            if t is None or _fresh_symbols(t, given):
                # onnx names unknown dims unk__0, unk__1, ... by a counter over the whole
                # graph: a name found here is not the one whole-graph inference gives
                result.append(UNKNOWN)
            elif data:
                result.append(self._intern(("out", key, j), size, t))
            else:
                result.append(self._intern(("t", t.SerializeToString())))
        return tuple(result)

    def _graph(self, key: tuple) -> tuple[onnx.GraphProto, list[str]]:
        """A graph of the node with signature and inputs ``key``, its inputs rebuilt."""
        g = onnx.GraphProto(name="node")
        made: dict[int, str] = {}

        def value(k: int) -> str:
            if k == _EMPTY:
                return ""
            if k in made:
                return made[k]
            kind = self.keys[k]
            if kind[0] == "out":
                names = emit(kind[1])
                made[k] = names[kind[2]]
                return made[k]
            name = made[k] = f"v{len(made)}"
            if kind[0] == "init":
                t = onnx.TensorProto.FromString(kind[1])
                t.name = name
                g.initializer.append(t)
            else:
                g.input.append(onnx.helper.make_value_info(name, self.types[k]))
            return name

        def emit(node_key: tuple) -> list[str]:
            ins = [value(k) for k in node_key[1:]]
            node = onnx.NodeProto()
            node.CopyFrom(self.sig_node[node_key[0]])
            node.ClearField("name")
            del node.input[:]
            del node.output[:]
            node.input.extend(ins)
            outs = [f"o{len(g.node)}_{j}" for j in range(node_key[0][2])]
            node.output.extend(outs)
            g.node.append(node)
            return outs

        outs = emit(key)
        g.output.extend(onnx.ValueInfoProto(name=o) for o in outs)
        return g, outs


def infer_types(model: onnx.ModelProto, index: GraphIndex, names: Iterable[str]) -> dict[str, onnx.TypeProto | None | int]:
    """The types onnx's shape inference (``data_prop=True``) gives ``names`` on the part of
    the graph that computes them: a TypeProto, None where it gives none, or UNKNOWN where
    this pass cannot say and whole-graph inference must."""
    names = list(names)
    last = max((index.producer.get(n, -1) for n in names), default=-1)
    p = TypePass(model, index.nodes, index.initializers, index.inputs, names=(None, index.node_outputs))
    p.run(last + 1)
    return {n: p.type_of(n) for n in names}
