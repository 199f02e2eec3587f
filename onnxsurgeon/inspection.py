"""Looking into a model: its nodes, its parameters and a summary (``nodes``, ``params``, ``info``)."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

import onnx

from onnxsurgeon import dtypes, infer, meta, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.graph import GraphIndex, subgraphs
from onnxsurgeon.names import alias


def _types(model: onnx.ModelProto, index: GraphIndex | None = None) -> dict[str, onnx.TypeProto]:
    """Known types of all values, inferring shapes where the model does not record them."""
    index = index or GraphIndex(model.graph)
    types = {n: vi.type for n, vi in index.value_info.items() if vi.type.WhichOneof("value")}
    types.update((n, index.type_of(n)) for n in index.initializers)
    missing = [o for n in index.nodes for o in n.output if o and o not in types]
    if not missing:
        return types
    # node by node, once per distinct node (infer.py); recorded types are merged with the
    # inferred ones by whole-graph inference, which that pass does not do
    found = infer.TypePass(model, index.nodes, index.initializers, index.inputs, declared=index.value_info)
    found.run(len(index.nodes))
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
    types = _types(model)
    try:
        pattern = re.compile(grep, re.IGNORECASE) if grep else None
    except re.error as e:
        raise InputError(f"--grep {grep!r} is not a valid regular expression: {e}", "escape special characters, e.g. '\\['") from None
    lines = []
    for node in model.graph.node:
        if op and node.op_type.lower() != op.lower():
            continue
        names = [node.name, *node.output, *node.input]
        if pattern and not any(pattern.search(n) or pattern.search(alias(n)) for n in names if n):
            continue
        op_name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        lines.append(
            NodeLine(
                name=node.name,
                op=op_name,
                outputs=tuple(node.output),
                inputs=tuple(node.input),
                input_types=tuple(dtypes.show(types.get(n)) if n else "-" for n in node.input),
                output_types=tuple(dtypes.show(types.get(n)) for n in node.output),
                aliases=tuple(alias(n) if alias(n) != n else "" for n in node.output),
            )
        )
    return NodesReport(tuple(lines), len(model.graph.node))


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
) -> InfoReport:
    """A summary of a model: interface, versions, size, parameters, mode and provenance.

    With ``outputs`` (and ``inputs``), also what that cut would produce, found without
    reading any weight: its nodes, its weight and graph bytes, and the memory writing it needs."""
    piece = None
    if outputs:
        from onnxsurgeon.cut import extract

        cut_model, report = extract(model, inputs=list(inputs or []), outputs=list(outputs), params=mode)
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
