"""A read-only index of an ONNX graph: who produces each value, who reads it, and what types
are known. Built once in linear time; nothing here copies or decodes weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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
    reads = [n for n in node.input if n]
    for attr in node.attribute:
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
        # the one pass over every node; written for speed, it dominates a cut of a big graph
        producer: dict[str, int] = {}
        for i, outs in enumerate([n.output for n in self.nodes]):
            if len(outs) == 1:
                producer[outs[0]] = i
            else:
                for name in outs:
                    producer[name] = i
        producer.pop("", None)
        self.producer = producer

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
