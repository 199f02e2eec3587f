"""Inlining one use of a piece: the piece's nodes (and, unless shared, its parameters)
renamed under the use's scope, as serialized bytes made from one template.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from onnxsurgeon.graph import rename_values, subgraphs


class Template:
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
class Use:
    """A placeholder in the node list: one use of a piece, expanded when the network is built."""

    piece: str
    scope: str
