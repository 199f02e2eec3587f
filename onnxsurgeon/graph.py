"""The graph core: a read-only index of an ONNX graph (who produces each value, who reads
it, what types are known), built once in linear time, and the walks over it (the nodes and
parameters some values need: :func:`walk_back`, :func:`upstream`). Nothing here copies or decodes
weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

import onnx

GRAPH_INPUT = -1
INITIALIZER = -2


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs held in a node's attributes (If branches, Loop and Scan bodies)."""
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def captured(graph: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads from the scopes around it, in order of first use."""
    defined = {v.name for v in graph.input}
    defined.update(t.name for t in graph.initializer)
    defined.update(s.values.name for s in graph.sparse_initializer)
    seen: dict[str, None] = {}
    for node in graph.node:
        for name in node_reads(node):
            if name not in defined:
                seen.setdefault(name, None)
        defined.update(node.output)
    for v in graph.output:
        if v.name not in defined:
            seen.setdefault(v.name, None)
    return list(seen)


_GRAPH, _GRAPHS = onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Every value a node reads: its inputs and what its subgraphs capture from outside."""
    reads = list(node.input)
    if "" in reads:  # omitted optional inputs
        reads = [n for n in reads if n]
    attrs = node.attribute
    if attrs:
        for attr in attrs:
            kind = attr.type
            if kind == _GRAPH:
                reads.extend(captured(attr.g))
            elif kind == _GRAPHS:
                for g in attr.graphs:
                    reads.extend(captured(g))
    return reads


def rename_values(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename values in place wherever they appear, including reads inside subgraphs."""
    if not mapping:
        return
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            if v.name in mapping:
                v.name = mapping[v.name]
    for t in graph.initializer:
        if t.name in mapping:
            t.name = mapping[t.name]
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]
        if node.attribute:
            for g in subgraphs(node):
                rename_values(g, mapping)


class GraphIndex:
    """Producers, consumers, parameters and known types of the values of one graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.nodes = list(graph.node)
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        # Old exporters (IR 3) list every initializer as a graph input too: those are parameters.
        self.inputs: dict[str, onnx.ValueInfoProto] = {
            v.name: v for v in graph.input if v.name not in self.initializers
        }
        self.outputs: dict[str, onnx.ValueInfoProto] = {v.name: v for v in graph.output}

    @cached_property
    def node_outputs(self) -> list[tuple[str, ...]]:
        """The outputs of each node. Each read of a name from a node makes a new string: the
        producer index and the type pass share these."""
        return [tuple(n.output) for n in self.nodes]

    @cached_property
    def producer(self) -> dict[str, int]:
        """The node (index) that writes each value. Built on first use: the one pass over
        every node, written for speed (a cut of a big graph needs it; a listing does not)."""
        producer: dict[str, int] = {}
        for i, outs in enumerate(self.node_outputs):
            if len(outs) == 1:
                producer[outs[0]] = i
            else:
                for name in outs:
                    producer[name] = i
        producer.pop("", None)
        return producer

    def kind(self, name: str) -> int | None:
        """Node index of the producer, GRAPH_INPUT, INITIALIZER, or None if unknown."""
        if name in self.initializers:
            return INITIALIZER
        if name in self.inputs:
            return GRAPH_INPUT
        return self.producer.get(name)

    def has_value(self, name: str) -> bool:
        return name in self.producer or name in self.initializers or name in self.inputs

    def value_names(self) -> Iterable[str]:
        yield from self.inputs
        yield from self.initializers
        yield from self.producer

    @cached_property
    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, node in enumerate(self.nodes):
            for name in node_reads(node):
                out.setdefault(name, []).append(i)
        return out

    @cached_property
    def node_by_name(self) -> dict[str, int]:
        return {node.name: i for i, node in enumerate(self.nodes) if node.name}

    @cached_property
    def value_info(self) -> dict[str, onnx.ValueInfoProto]:
        """Declared types: value_info, then graph inputs and outputs."""
        out = {v.name: v for v in self.graph.value_info}
        out.update(self.inputs)
        out.update(self.outputs)
        return out

    def type_of(self, name: str, value_info: bool = True) -> onnx.TypeProto | None:
        """The declared type of a value, or None where the model does not say.

        ``value_info=False`` looks only at parameters and graph inputs and outputs, without
        indexing every declared type of the graph."""
        tensor = self.initializers.get(name)
        if tensor is not None:
            return onnx.helper.make_tensor_type_proto(tensor.data_type, list(tensor.dims))
        vi = self.inputs.get(name) or self.outputs.get(name)
        if vi is None and value_info:
            vi = self.value_info.get(name)
        if vi is not None and vi.type.WhichOneof("value") is not None:
            return vi.type
        return None


def is_op(node: onnx.NodeProto, op: str) -> bool:
    """Whether ``node`` is the ONNX operator ``op`` (default domain)."""
    return node.op_type == op and node.domain in ("", "ai.onnx")


def default_opset(model: onnx.ModelProto) -> int:
    """The model's version of the default ONNX operator set (0 if it imports none)."""
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def empty_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """An empty model with the source's header: versions, opsets, metadata, functions."""
    piece = onnx.ModelProto(
        ir_version=model.ir_version,
        producer_name=model.producer_name,
        producer_version=model.producer_version,
        domain=model.domain,
        model_version=model.model_version,
        doc_string=model.doc_string,
    )
    piece.opset_import.extend(model.opset_import)
    piece.metadata_props.extend(model.metadata_props)
    piece.functions.extend(model.functions)
    return piece


# --- walks ---------------------------------------------------------------------------------------


@dataclass
class Walk:
    """What a walk back from some values found: the nodes kept (indices), the parameters
    read, the graph inputs reached (``leaks``), names nothing defines, and every value seen."""

    keep: set[int] = field(default_factory=set)
    params: set[str] = field(default_factory=set)
    leaks: dict[str, None] = field(default_factory=dict)
    undefined: list[str] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    reads: dict[int, list[str]] = field(default_factory=dict)


def walk_back(index: GraphIndex, outputs: list[str], stop: set[str]) -> Walk:
    """Walk back from the outputs to the inputs (not past ``stop``), collecting nodes and parameters."""
    w = Walk()
    inits, graph_inputs, nodes = index.initializers, index.inputs, index.nodes
    sparse = {s.values.name for s in index.graph.sparse_initializer}
    seen, keep, reads = w.seen, w.keep, w.reads
    # the loop runs once per value of the piece: its lookups are bound to locals
    producer_of, mark, keep_node = index.producer.get, seen.add, keep.add
    stack = list(reversed(outputs))
    pop, push = stack.pop, stack.extend
    while stack:
        v = pop()
        if v in seen:
            continue
        mark(v)
        if v in stop:
            continue
        i = producer_of(v)
        if i is not None:
            if i not in keep:
                keep_node(i)
                node = nodes[i]
                # node_reads, spelled out for the common node: no attribute, no omitted input
                r = node_reads(node) if node.attribute else list(node.input)
                if "" in r:
                    r = [n for n in r if n]
                reads[i] = r
                push(reversed(r))
        elif v in inits or v in sparse:
            w.params.add(v)
        elif v in graph_inputs:
            w.leaks[v] = None
        else:
            w.undefined.append(v)
    return w


def downstream(graph: onnx.GraphProto, sources: set[str]) -> set[str]:
    """Every value of the graph computed from one of ``sources`` (the sources included)."""
    live = set(sources)
    for node in graph.node:
        if any(n in live for n in node_reads(node)):
            live.update(o for o in node.output if o)
    return live


def upstream(model: onnx.ModelProto, outputs: list[onnx.ValueInfoProto], index: GraphIndex | None = None) -> onnx.ModelProto:
    """The model computing ``outputs`` with only the nodes and parameters they need; its
    inputs stay all the graph's, so the same feeds run it. Weights it does not need are
    not copied (nor, for external data, read)."""
    index = index or GraphIndex(model.graph)
    w = walk_back(index, [o.name for o in outputs], set())
    graph = model.graph
    out = empty_model(model)
    g = out.graph
    g.name = graph.name
    g.input.extend(graph.input)
    g.node.extend(index.nodes[i] for i in sorted(w.keep))
    listed = {i.name for i in graph.input}  # IR-3 models list initializers as inputs
    g.initializer.extend(t for t in graph.initializer if t.name in w.params or t.name in listed)
    g.sparse_initializer.extend(graph.sparse_initializer)
    g.value_info.extend(graph.value_info)
    g.output.extend(outputs)
    return out
