"""Looking into a model: its nodes, its parameters and a summary (``nodes``, ``params``, ``info``)."""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from collections.abc import Iterable
from typing import Any

import onnx

from onnxsurgeon import dtypes, infer, meta, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.graph import GraphIndex, subgraphs
from onnxsurgeon.names import alias, alias_lines


def _types(model: onnx.ModelProto, index: GraphIndex | None = None, wanted: Iterable[str] | None = None) -> dict[str, onnx.TypeProto]:
    """Known types of values (all, or at least those ``wanted``), inferring shapes where the
    model does not record them."""
    index = index or GraphIndex(model.graph)
    types = {n: vi.type for n, vi in index.value_info.items() if vi.type.WhichOneof("value")}
    types.update((n, index.type_of(n)) for n in index.initializers)
    if wanted is None:
        missing = [o for n in index.nodes for o in n.output if o and o not in types]
    else:
        missing = [o for o in wanted if o and o not in types]
    if not missing:
        return types
    # node by node, once per distinct node (infer.py), up to the last node that writes a
    # value asked for; recorded types are merged with the inferred ones by whole-graph
    # inference, which that pass does not do
    # every graph input: those that name a parameter are typed as declared (see TypePass)
    inputs = {v.name: v for v in index.graph.input}
    found = infer.TypePass(model, index.nodes, index.initializers, inputs, declared=index.value_info)
    found.run(1 + max(index.producer.get(o, len(index.nodes) - 1) for o in missing))
    inferred = {o: found.type_of(o) for o in missing}
    if not any(t is infer.UNKNOWN for t in inferred.values()):
        types.update((o, t) for o, t in inferred.items() if t is not None)
        return types
    return _infer_whole(model, types)


def _infer_whole(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> dict[str, onnx.TypeProto]:
    """``types`` completed by onnx's shape inference over the whole model."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for t in serde.iter_model_tensors(probe):
        if serde.is_external(t):  # inference needs dims only
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # display only: fall back to what the model records
        return types
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.type.WhichOneof("value") and vi.name not in types:
            types[vi.name] = vi.type
    return types


@dataclass(frozen=True)
class NodeLine:
    """One node: what it computes, from what, with which types."""

    name: str
    op: str
    outputs: tuple[str, ...]
    inputs: tuple[str, ...]
    input_types: tuple[str, ...]
    output_types: tuple[str, ...]
    aliases: tuple[str, ...]  # the `_` alias of each output, "" where it is the same

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "outputs": list(self.outputs),
            "inputs": list(self.inputs),
            "input_types": list(self.input_types),
            "output_types": list(self.output_types),
            "aliases": list(self.aliases),
        }

    def text(self) -> str:
        """``L4.y = Relu (L4.z) : float32[N,16] -> float32[N,16]``, like CNTK's validation log."""
        outs = ", ".join(self.outputs)
        line = f"{outs} = {self.op} ({', '.join(self.inputs)}) : {', '.join(self.input_types)} -> {', '.join(self.output_types)}"
        if self.name and self.name not in self.outputs:
            line += f"  [node {self.name}]"
        shown = [a for a in self.aliases if a]
        if shown:
            line += f"  [alias {', '.join(shown)}]"
        return line


@dataclass(frozen=True)
class NodesReport:
    nodes: tuple[NodeLine, ...]
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "shown": len(self.nodes), "nodes": [n.to_dict() for n in self.nodes]}


def nodes(model: onnx.ModelProto, /, grep: str | None = None, op: str | None = None) -> NodesReport:
    """Every node of the main graph as a line a person can read; ``grep`` filters names
    (a regular expression, matched against names and their aliases), ``op`` the op type."""
    try:
        pattern = re.compile(grep, re.IGNORECASE) if grep else None
    except re.error as e:
        raise InputError(f"--grep {grep!r} is not a valid regular expression: {e}", "escape special characters, e.g. '\\['") from None
    index = GraphIndex(model.graph)
    every_node = index.nodes
    # the names of every node, read once (each read of a name makes a new string): for
    # --grep, the type pass and the lines
    io = ([tuple(n.input) for n in every_node], [tuple(n.output) for n in every_node])
    op_lower = op.lower() if op else None
    positions = [i for i, n in enumerate(every_node) if n.op_type.lower() == op_lower] if op_lower else range(len(every_node))
    if pattern:
        found = _grep_positions(pattern, [every_node[i].name for i in positions], [io[1][i] for i in positions], [io[0][i] for i in positions])
        positions = [positions[j] for j in found]
    every = len(positions) == len(every_node)
    selected = every_node if every else [every_node[i] for i in positions]
    # types only of the values shown: inference stops at the last node listed
    texts = _type_texts(model, index, io, None if every else positions)
    outputs_of = io[1] if every else [io[1][i] for i in positions]
    inputs_of = io[0] if every else [io[0][i] for i in positions]
    aliases = _aliases([o for outs in outputs_of for o in outs])
    lines = []
    k = 0
    for node, inputs, outputs in zip(selected, inputs_of, outputs_of):
        domain = node.domain
        n = len(outputs)
        lines.append(
            NodeLine(
                name=node.name,
                op=node.op_type if domain in ("", "ai.onnx") else f"{domain}.{node.op_type}",
                outputs=outputs,
                inputs=inputs,
                input_types=tuple([texts.get(x, "?") if x else "-" for x in inputs]),
                output_types=tuple([texts.get(x, "?") for x in outputs]),
                aliases=aliases[k : k + n],
            )
        )
        k += n
    return NodesReport(tuple(lines), len(index.nodes))


def _aliases(names: list[str]) -> tuple[str, ...]:
    """The alias of each name, "" where it is the name itself."""
    text = "\n".join(names)
    if text.count("\n") != len(names) - 1:  # a name holds a line break
        return tuple(a if (a := alias(n)) != n else "" for n in names)
    out = alias_lines(text).split("\n") if names else []
    return tuple(a if a != n else "" for a, n in zip(out, names))


def _type_texts(
    model: onnx.ModelProto, index: GraphIndex, io: tuple[list[tuple[str, ...]], list[tuple[str, ...]]], positions: list[int] | None
) -> dict[str, str]:
    """The type, as ``nodes`` shows it, of the values of every node (``positions`` None) or
    at least of the nodes at ``positions`` (in order): what :func:`_types` finds, each type
    written once. ``io``: the inputs and the outputs of every node."""
    declared = {n: vi.type for n, vi in index.value_info.items() if vi.type.WhichOneof("value")}
    by_bytes: dict[bytes, str] = {}
    texts: dict[str, str] = {}
    for n, t in declared.items():
        b = t.SerializeToString()
        text = by_bytes.get(b)
        if text is None:
            text = by_bytes[b] = dtypes.show(t)
        texts[n] = text
    by_shape: dict[tuple, str] = {}
    for n, t in index.initializers.items():
        key = (t.data_type, *t.dims)
        text = by_shape.get(key)
        if text is None:
            text = by_shape[key] = dtypes.show(onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
        texts[n] = text
    inputs_of, outputs_of = io
    if positions is None:
        if all(o in texts or not o for outs in outputs_of for o in outs):
            return texts
        upto = len(index.nodes)
        wanted = None
    else:
        wanted = [x for i in positions for x in (*inputs_of[i], *outputs_of[i]) if x and x not in texts]
        if not wanted:
            return texts
        # the pass must pass every writer of a value shown: a second writer makes it
        # unknown, a value read before it is written is typed by its writer
        upto = _writers_after(outputs_of, positions[-1] + 1, set(wanted)) + 1
    # node by node, once per distinct node (infer.py), up to the last node that writes a
    # value asked for; recorded types are merged with the inferred ones by whole-graph
    # inference, which that pass does not do
    inputs = {v.name: v for v in index.graph.input}  # with those that name a parameter (see TypePass)
    found = infer.TypePass(model, index.nodes, index.initializers, inputs, declared=index.value_info, names=io)
    found.run(upto)
    ids = found.ids
    if wanted is None:
        unknown = infer.UNKNOWN in ids.values() and any(k == infer.UNKNOWN and n not in texts for n, k in ids.items())
    else:
        unknown = any(found.type_of(n) is infer.UNKNOWN for n in wanted)
    if unknown:  # as before: whole-graph inference
        types = _types(model, index, None if positions is None else {x for i in positions for x in (*inputs_of[i], *outputs_of[i])})
        shown: dict[int, str] = {}
        out = {}
        for n, t in types.items():
            text = shown.get(id(t))
            if text is None:
                text = shown[id(t)] = dtypes.show(t)
            out[n] = text
        return out
    key_text = {k: dtypes.show(t) for k, t in found.types.items() if t is not None}
    # the names shown: of every node, or those asked for (the pass has seen many more)
    shown = ids.items() if wanted is None else ((n, ids.get(n)) for n in wanted)
    inferred = {n: key_text[k] for n, k in shown if k in key_text}
    inferred.update(texts)
    return inferred


def _writers_after(outputs_of: list[tuple[str, ...]], start: int, names: set[str]) -> int:
    """The index of the last node from ``start`` on that writes one of ``names`` (node ``i``
    writes ``outputs_of[i]``), or ``start - 1`` if none does."""
    last = start - 1
    for i in range(start, len(outputs_of)):
        if not names.isdisjoint(outputs_of[i]):
            last = i
    return last


# Patterns that, in lower case, find in a lower-case ASCII text what they find, ignoring
# case, in the text: ASCII without [classes] (``[@-_]`` ignoring case holds a-z) and without
# escapes of letters or digits (\S, \W: classes; \1: a reference); so every letter in
# them is a literal. \. and other escaped punctuation are literals too.
_CASE_FREE = re.compile(r"^(?:[^\[\\\x80-\U0010ffff]|\\[^A-Za-z0-9\x80-\U0010ffff])*$")
# Characters a pattern may use to look past one name when all are searched as one text;
# and possessive quantifiers: one that ran over a line break (``[a\x0a]*+``) does not give
# it back, so it can miss a name the pattern finds alone.
_ACROSS_NAMES = ("\\A", "\\Z", "\\z", "(?<", "(?", "\\n", "\\s", "\\S", "\\W", "\\D", "[^", "\\B", "\\b",
                 "*+", "++", "?+", "}+")


def _grep(pattern: re.Pattern[str], nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes with a name, output or input that ``pattern`` finds in: see :func:`_grep_positions`."""
    found = _grep_positions(pattern, [n.name for n in nodes], [tuple(n.output) for n in nodes], [tuple(n.input) for n in nodes])
    return [nodes[i] for i in found]


def _grep_positions(
    pattern: re.Pattern[str], names: list[str], outputs_of: list[tuple[str, ...]], inputs_of: list[tuple[str, ...]]
) -> list[int]:
    """The positions of the nodes (their names, outputs and inputs given) with a name,
    output or input that ``pattern`` finds in (a ``search``), or in whose alias it finds.

    Searching each name and alias costs three calls per name, seconds on a 200k-node graph.
    So the names are searched as one text, a line each, and so are their aliases; only the
    names a match touches are searched alone. A name the pattern finds alone is touched by
    some match in the text (the one found where its own starts, or an earlier one running
    over it); no match runs over a line break: patterns that could are searched name by name."""
    decided: dict[str, bool] = {}

    def exact(n: str) -> bool:
        m = decided.get(n)
        if m is None:
            m = decided[n] = bool(n) and bool(pattern.search(n) or pattern.search(alias(n)))
        return m

    flat: list[str] = []  # every node's name, outputs and inputs, node after node
    ends = []  # where each node's names end in flat
    for name, outputs, inputs in zip(names, outputs_of, inputs_of):
        flat.append(name)
        flat.extend(outputs)
        flat.extend(inputs)
        ends.append(len(flat))
    text = "\n".join(flat)
    if any(a in pattern.pattern for a in _ACROSS_NAMES) or text.count("\n") != len(flat) - 1:
        hits = {k for k, n in enumerate(flat) if exact(n)}
    else:
        # the alias of every name at once: each character \W becomes _ (one for one), and a
        # line that starts with a character no identifier starts with gets a _ in front
        texts = [text, alias_lines(text)]
        if text.isascii() and _CASE_FREE.match(pattern.pattern):
            # the same matches, at the same places, as the case-insensitive search, in a
            # tenth of its time
            texts = [t.lower() for t in texts]
            whole = re.compile(pattern.pattern.lower(), (pattern.flags & ~re.IGNORECASE) | re.MULTILINE)
        else:
            whole = re.compile(pattern.pattern, pattern.flags | re.MULTILINE)
        hits = set()
        for searched in texts:
            line, pos = 0, 0  # the line (name) where the text at pos is
            for m in whole.finditer(searched):
                start = m.start()
                line += searched.count("\n", pos, start)
                pos = start
                last = line + searched.count("\n", start, max(m.end() - 1, start))
                hits.update(k for k in range(line, last + 1) if exact(flat[k]))
    return sorted({bisect.bisect_right(ends, k) for k in hits})


@dataclass(frozen=True)
class Param:
    name: str
    dtype: str
    shape: tuple[int, ...]
    size: int
    bytes: int
    state: str  # learnable, frozen or shared
    alias: str
    training: str = "trained"  # what `train` does with it: trained, updated statistics, constant (why)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "size": self.size,
            "bytes": self.bytes,
            "state": self.state,
            "training": self.training,
            "alias": self.alias,
        }


@dataclass(frozen=True)
class ParamsReport:
    params: tuple[Param, ...]

    @property
    def total_size(self) -> int:
        return sum(p.size for p in self.params)

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.params)

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.state for p in self.params))

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": [p.to_dict() for p in self.params],
            "total": {"count": len(self.params), "size": self.total_size, "bytes": self.total_bytes, **self.counts()},
        }


def _itemsize(elem_type: int) -> int:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        return 0


def params(model: onnx.ModelProto, /) -> ParamsReport:
    """Every parameter (initializer) with its shape, type, size and state."""
    frozen = meta.frozen(model)
    if meta.mode(model) == "constant":
        frozen = frozen | {t.name for t in model.graph.initializer}
    shared = meta.shared(model)
    statistics = {
        s for n in model.graph.node if n.op_type == "BatchNormalization" and n.domain in ("", "ai.onnx") for s in n.input[3:5]
    }
    out = []
    for t in model.graph.initializer:
        size = math.prod(t.dims)
        state = "frozen" if t.name in frozen else "shared" if t.name in shared else "learnable"
        a = alias(t.name)
        out.append(
            Param(t.name, dtypes.dtype_name(t.data_type), tuple(t.dims), size, size * _itemsize(t.data_type), state,
                  a if a != t.name else "", _training(t, state, statistics))
        )
    return ParamsReport(tuple(out))


def _training(t: onnx.TensorProto, state: str, statistics: set[str]) -> str:
    """What ``train`` does with a parameter (as its training preparation decides)."""
    if state == "frozen":
        return "constant (frozen)"
    if t.name in statistics:
        return "updated statistics"
    if t.data_type != onnx.TensorProto.FLOAT:
        return f"constant ({dtypes.dtype_name(t.data_type)})"
    if not t.dims:
        return "constant (scalar)"
    return "trained"


@dataclass(frozen=True)
class InfoReport:
    file: str | None
    file_bytes: int | None
    external_files: tuple[str, ...]
    ir_version: int
    opsets: dict[str, int]
    producer: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    nodes: int
    nodes_in_subgraphs: int
    ops: dict[str, int]
    functions: tuple[str, ...]
    parameters: int
    parameter_size: int
    parameter_bytes: int
    mode: str | None
    frozen: int
    cut: dict[str, Any] | None
    piece: dict[str, Any] | None = None  # what a cut would produce, when one is asked for

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["inputs"] = [{"name": n, "type": t} for n, t in self.inputs]
        d["outputs"] = [{"name": n, "type": t} for n, t in self.outputs]
        d["external_files"] = list(self.external_files)
        d["functions"] = list(self.functions)
        return d


def _count_subgraph_nodes(graph: onnx.GraphProto) -> int:
    total = 0
    for node in graph.node:
        if node.attribute:
            for g in subgraphs(node):
                total += len(g.node) + _count_subgraph_nodes(g)
    return total


def info(
    model: onnx.ModelProto,
    /,
    path: str | os.PathLike[str] | None = None,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    mode: str = "learnable",
    auto_inputs: bool = False,
) -> InfoReport:
    """A summary of a model: interface, versions, size, parameters, mode and provenance.

    With ``outputs`` (and ``inputs``, ``auto_inputs`` as for extract), also what that cut
    would produce, found without reading any weight: its nodes, its weight and graph bytes,
    and the memory writing it needs."""
    piece = None
    if inputs and not outputs:
        raise InputError("--in without --out: a cut is sized from both", "add --out NAME (the values the piece computes), or drop --in")
    if outputs:
        from onnxsurgeon.cut import extract

        cut_model, report = extract(model, inputs=list(inputs or []), outputs=list(outputs), params=mode, auto_inputs=auto_inputs)
        piece = {"nodes": len(report.nodes), "parameters": len(report.parameters), **serde.footprint(cut_model)}
    index = GraphIndex(model.graph)
    types = {n: vi.type for n, vi in index.value_info.items()}
    externals = sorted(
        {os.path.basename(e.value) for t in serde.iter_model_tensors(model) if serde.is_external(t) for e in t.external_data if e.key == "location"}
    )
    p = params(model)
    return InfoReport(
        file=str(path) if path is not None else None,
        file_bytes=os.path.getsize(path) if path is not None else None,
        external_files=tuple(externals),
        ir_version=model.ir_version,
        opsets={(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        producer=" ".join(x for x in (model.producer_name, model.producer_version) if x),
        inputs=tuple((n, dtypes.show(types.get(n))) for n in index.inputs),
        outputs=tuple((n, dtypes.show(types.get(n))) for n in index.outputs),
        nodes=len(model.graph.node),
        nodes_in_subgraphs=_count_subgraph_nodes(model.graph),
        ops=dict(Counter(n.op_type for n in model.graph.node).most_common()),
        functions=tuple(f"{f.domain}.{f.name}" for f in model.functions),
        parameters=len(p.params),
        parameter_size=p.total_size,
        parameter_bytes=p.total_bytes,
        mode=meta.mode(model),
        frozen=sum(1 for x in p.params if x.state == "frozen"),
        cut=meta.cut(model),
        piece=piece,
    )
