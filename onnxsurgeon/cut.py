"""Cutting a piece out of a model (SPEC sections 2 and 3).

The piece is every node needed to compute the requested outputs from the requested inputs.
It is found by one walk backwards from the outputs that stops at the inputs, so the work
grows with the piece, after one linear pass that indexes the producers of all values.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from onnxsurgeon import checks, dtypes, infer, meta, modes, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.graph import GraphIndex, Walk, empty_model, rename_values, subgraphs, walk_back
from onnxsurgeon.names import Resolved, Resolver

_RECORD = re.compile(r"^([^=]+)=(.+)$")
_TYPE_LIKE = re.compile(r"^[A-Za-z]+[0-9]*\[[^\[\]]*\]$")


@dataclass(frozen=True)
class Port:
    """One input or output of a piece: its name there and the value it is in the source."""

    name: str
    value: str
    type: str
    resolved: Resolved | None = None  # None for inputs added by auto_inputs

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "value": self.value, "type": self.type}
        d["resolved"] = self.resolved.to_dict() if self.resolved else {"how": "auto-input"}
        return d


@dataclass(frozen=True)
class ExtractReport:
    """What ``extract`` kept and changed."""

    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    params: str
    nodes: tuple[str, ...]
    parameters: tuple[str, ...]
    parameter_bytes: int
    folded_batchnorms: tuple[str, ...] = ()
    removed_dropouts: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [p.to_dict() for p in self.inputs],
            "outputs": [p.to_dict() for p in self.outputs],
            "params": self.params,
            "nodes": list(self.nodes),
            "parameters": list(self.parameters),
            "parameter_bytes": self.parameter_bytes,
            "folded_batchnorms": list(self.folded_batchnorms),
            "removed_dropouts": list(self.removed_dropouts),
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class _Spec:
    text: str
    new_name: str | None
    ref: str
    type: onnx.TypeProto | None


def _parse_spec(text: str, index: GraphIndex, allow_type: bool) -> _Spec:
    new_name, ref = None, text
    m = _RECORD.match(text)
    if m and not index.has_value(text):
        new_name, ref = m.group(1), m.group(2)
    override = None
    if allow_type and not index.has_value(ref):
        ref, override = dtypes.split_type(ref)
        head, _, tail = ref.rpartition(":")
        if override is None and head and _TYPE_LIKE.match(tail):
            raise InputError(
                f"{dtypes.type_problem(tail)} in {text!r}",
                "write a type as float32[N,64]; types: " + ", ".join(dtypes.DTYPE_NAMES),
            )
    return _Spec(text, new_name, ref, override)


def extract(
    model: onnx.ModelProto,
    /,
    inputs: list[str],
    outputs: list[str],
    params: str = "learnable",
    *,
    auto_inputs: bool = False,
    sample: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
    model_hint: str = "MODEL",
) -> tuple[onnx.ModelProto, ExtractReport]:
    """Cut the piece that computes ``outputs`` from ``inputs`` out of a model.

    ``inputs`` and ``outputs`` take names as in SPEC section 1, optionally as records
    (``feat=input``) and, for inputs, with a new type (``input:float32[N,64]``). ``params``
    is ``learnable``, ``constant`` or ``shared``. ``source`` (for example ``{"file": ...,
    "sha256": ...}``, see :func:`serde.fingerprint`) is recorded in the piece's metadata. ``sample`` (arrays named after
    the model's graph inputs) is used only where shape inference cannot find the rank of a
    boundary value and one run of the model must show it; random inputs are used if None. Returns the piece, a new model,
    and a report; the input model is not changed.
    """
    if params not in modes.MODES:
        raise InputError(f"unknown parameter mode {params!r}", f"use one of: {', '.join(modes.MODES)}")
    if not outputs:
        raise InputError("no outputs given", "name at least one value with --out")
    index = GraphIndex(model.graph)
    in_specs = [_parse_spec(t, index, allow_type=True) for t in inputs]
    out_specs = [_parse_spec(t, index, allow_type=False) for t in outputs]
    resolved = Resolver(index, model_hint).resolve_all([s.ref for s in in_specs + out_specs])
    in_res, out_res = resolved[: len(in_specs)], resolved[len(in_specs) :]
    _check_unique(in_specs, in_res, out_specs, out_res)

    stop = {r.value for r in in_res}
    out_values = [r.value for r in out_res]
    walk = walk_back(index, out_values, stop)
    if walk.undefined:
        raise InputError(
            "the model is invalid: " + ", ".join(repr(v) for v in walk.undefined) + " are read but never produced",
            "check the model with onnx.checker",
        )
    auto: list[str] = []
    if walk.leaks:
        if not auto_inputs:
            raise _open_cut(index, walk)
        auto = list(walk.leaks)
        stop.update(auto)

    _check_depends(index, walk, out_res, stop)
    warnings = [
        f"input {r.query!r} is not needed by any output" for r in in_res if r.value not in walk.seen
    ]

    # --- build the piece -----------------------------------------------------------------
    graph = model.graph
    piece = empty_model(model)
    g = piece.graph
    g.name, g.doc_string = graph.name, graph.doc_string
    kept = sorted(walk.keep)
    g.node.extend(index.nodes[i] for i in kept)
    _unbind_cut_outputs(g, index, kept, stop)
    g.initializer.extend(t for t in graph.initializer if t.name in walk.params)
    g.sparse_initializer.extend(s for s in graph.sparse_initializer if s.values.name in walk.params)
    in_ports = [(s.new_name or r.value, r.value, s.type, r) for s, r in zip(in_specs, in_res)]
    in_ports += [(v, v, None, None) for v in auto]
    types, inner_types = _type_ports(model, index, walk, g, in_ports, out_values, in_specs, params, sample)

    folded: list[str] = []
    removed: list[str] = []
    if params == "constant":
        _add_value_info(g, inner_types)  # freezing renames and drops value_info entries
        inner_types = []

        def rank_of(name: str) -> int | None:
            return dtypes.rank(types.get(name) or index.type_of(name))

        def elem_of(name: str) -> int | None:
            t = types.get(name) or index.type_of(name)
            return t.tensor_type.elem_type or None if t is not None and t.HasField("tensor_type") else None

        folded, removed, more = modes.freeze(g, rank_of, set(out_values), elem_of, piece.functions)
        warnings += more

    if isinstance(inner_types, bytes) and any(s.new_name for s in out_specs):
        _add_value_info(g, inner_types)  # inferred entries include the outputs, which get new names
        inner_types = []
    out_names = _name_ports(g, in_ports, out_specs, out_res, stop | walk.params)
    # the index and the walk hold a name object per value of the model: not needed from here
    # on, they would only add to the peak of the check and of writing the piece
    del index, walk, kept

    in_port_objs = [Port(name, value, dtypes.show(types[value]), res) for name, value, _, res in in_ports]
    out_port_objs = [Port(name, r.value, dtypes.show(types[r.value]), r) for name, r in zip(out_names, out_res)]

    if model.ir_version < 4:
        # before IR 4, every initializer had to be listed as a graph input too
        g.input.extend(
            onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in g.initializer
        )
    meta.put(piece, meta.MODE, params)
    meta.set_frozen(piece, meta.frozen_params(piece))  # the piece carries the model's frozen list
    provenance = dict(source or {})
    provenance.update(
        inputs={p.name: p.value for p in in_port_objs},
        outputs={p.name: p.value for p in out_port_objs},
        params=params,
    )
    meta.put(piece, meta.CUT, json.dumps(provenance))
    if checks.full_check(piece):
        _add_value_info(g, inner_types)
        inner_types = []
    # The checker without its full check does not read value_info: a big piece is checked
    # before its copy of the inner values' types is added (a third of its bytes, which the
    # checker would parse for nothing). Renaming never touches those entries: they are not
    # ports (those inferred by the type pass can be: see above).
    overridden = [s.text for s in in_specs if s.type is not None]
    if overridden:
        # a new input type the operators cannot take (float16 into a MatMul with float32
        # weights) passes shape inference on the piece and is found here: the user's to fix,
        # unless the model fails the checker too (the model is checked only then: it is big)
        err = checks.checker_error(piece)
        if err is not None and checks.checker_error(model) is None:
            raise InputError(
                f"the new input type {', '.join(map(repr, overridden))} does not fit the piece: {err}",
                "check the type you gave, or cut so that the new type fits",
            )
    warnings += checks.check_result(piece, "a piece", [model])
    _add_value_info(g, inner_types)

    report = ExtractReport(
        inputs=tuple(in_port_objs),
        outputs=tuple(out_port_objs),
        params=params,
        nodes=tuple(n.name or n.output[0] for n in g.node),
        parameters=tuple(t.name for t in g.initializer),
        parameter_bytes=serde.weight_bytes(piece),
        folded_batchnorms=tuple(folded),
        removed_dropouts=tuple(removed),
        warnings=tuple(warnings),
    )
    return piece, report


def _type_ports(model, index, walk, g, in_ports, out_values, in_specs, params, sample):
    """Give the piece's inputs and outputs their types, and return the types found
    (by value name), including those of BatchNormalization inputs in constant mode, and
    the model's value_info entries of the piece's inner values where they are not yet in
    the piece (the caller adds them).

    Types the model does not record come from shape inference: for inputs on what computes
    them, for outputs on the piece; failing that, from one run of the model. A type
    without a shape counts as unknown: ONNX wants a shape on every graph input and output.
    """
    types, inner = _copy_value_info(index, walk.keep, [p[1] for p in in_ports] + out_values)
    for _, value, override, _ in in_ports:
        if override is not None:
            types[value] = override
    untyped = [v for _, v, _, _ in in_ports if dtypes.rank(types[v]) is None]
    if untyped:
        _update_types(types, _infer_types(model, index, untyped))
        _update_types(types, _observe_types(model, [v for v in untyped if dtypes.rank(types[v]) is None], sample))
    for _, value, _, _ in in_ports:
        if types[value] is None:
            raise InputError(
                f"the type of input {value!r} is not recorded in the model and cannot be inferred",
                f"give it with --in '{value}:float32[N,...]'",
            )
    g.input.extend(onnx.helper.make_value_info(v, types[v]) for _, v, _, _ in in_ports)
    g.output.extend(
        onnx.helper.make_value_info(v, types[v]) if types[v] is not None else onnx.ValueInfoProto(name=v)
        for v in out_values
    )
    overridden = [s.text for s in in_specs if s.type is not None]
    batchnorms = [n.input[0] for n in g.node if n.op_type == "BatchNormalization"] if params == "constant" else []
    if overridden or batchnorms or any(dtypes.rank(types[v]) is None for v in out_values):
        g.value_info.extend(inner)  # inference on the piece starts from its recorded types
        deferred: list[bytes] = []
        inferred = _infer_piece(model, g, overridden, set(out_values + batchnorms), deferred)
        inner = deferred[0] if deferred else []
        if overridden:  # shapes downstream of a new input type change: take the new ones
            types.update((v, inferred[v]) for v in out_values if v in inferred)
        _update_types(types, {v: inferred[v] for v in out_values + batchnorms if v in inferred})
    _update_types(types, _observe_types(model, [v for v in out_values if dtypes.rank(types[v]) is None], sample))
    unknown = [v for v in out_values if _tensor_without_rank(types[v])]
    if unknown:  # onnx.checker wants a shape (at least a rank) on every tensor graph output
        raise InputError(
            f"the rank of output {', '.join(map(repr, unknown))} is neither recorded in the model nor inferable, "
            "and the model did not run on random inputs to show it",
            "give real inputs with --data x.npz (one run shows the rank), or cut at another value",
        )
    for k, v in enumerate(out_values):
        if types[v] is not None:
            g.output[k].type.CopyFrom(types[v])
    return types, inner


def _tensor_without_rank(t: onnx.TypeProto | None) -> bool:
    return t is not None and t.WhichOneof("value") == "tensor_type" and not t.tensor_type.HasField("shape")


def _name_ports(g, in_ports, out_specs, out_res, fixed: set[str]) -> list[str]:
    """Apply record names: rename values in the piece, and give an output that must carry
    a second name (it is an input, a parameter or already named) an Identity node.
    Returns the outputs' final names."""
    rename: dict[str, str] = {value: name for name, value, _, _ in in_ports if name != value}
    extra_identity: list[tuple[str, str]] = []
    claimed = set(rename)
    out_names = []
    for s, r in zip(out_specs, out_res):
        current = rename.get(r.value, r.value)
        name = s.new_name or current
        out_names.append(name)
        if name == current:
            claimed.add(r.value)
        elif r.value in claimed or r.value in fixed:
            extra_identity.append((current, name))
        else:
            rename[r.value] = name
            claimed.add(r.value)
    _check_new_names(g, rename, extra_identity, fixed)
    rename_values(g, rename)
    for src, dst in extra_identity:
        g.node.append(onnx.helper.make_node("Identity", [src], [dst], name=f"{dst}/identity"))
    for vi, name in zip(g.output, out_names):
        vi.name = name
    return out_names


def _unbind_cut_outputs(g: onnx.GraphProto, index: GraphIndex, kept: list[int], stop: set[str]) -> None:
    """A kept node with several outputs may also produce a value the cut takes as an input
    (``--in s_lo`` while ``s_hi`` is needed): that output now enters as a graph input, so
    the node's copy writes it under an unused name instead (ONNX values have one producer).
    ``kept`` (sorted) lists the source index of each node of ``g``."""
    taken: set[str] = set()
    found = []
    for name in stop:
        i = index.producer.get(name)
        k = bisect.bisect_left(kept, i) if i is not None else len(kept)
        if k < len(kept) and kept[k] == i:
            found.append((k, name))
    for k, name in sorted(found):
        node = g.node[k]
        new, n = f"{name}.unused", 1
        while index.has_value(new) or new in taken or new in stop:
            n += 1
            new = f"{name}.unused{n}"
        taken.add(new)
        node.output[list(node.output).index(name)] = new


def _path(index: GraphIndex, walk: Walk, start: str) -> str:
    """One path from a value up to an output that reads it, through kept nodes."""
    consumers: dict[str, int] = {}
    for i in walk.keep:
        for r in walk.reads[i]:
            consumers.setdefault(r, i)
    chain = [start]
    while (i := consumers.get(chain[-1])) is not None and len(chain) < len(walk.keep) + 2:
        chain.append(next(o for o in index.nodes[i].output if o))
    if len(chain) > 8:
        chain = chain[:3] + [f"... {len(chain) - 6} more ..."] + chain[-3:]
    return " -> ".join(chain)


def _open_cut(index: GraphIndex, walk: Walk) -> InputError:
    lines = [f"  - {leak!r} leaks in: {_path(index, walk, leak)}" for leak in walk.leaks]
    names = " ".join(f"--in {leak}" for leak in walk.leaks)
    return InputError(
        "the cut is open: the outputs need graph inputs that are not listed with --in:\n" + "\n".join(lines),
        f"add {names}, cut further down, or pass --auto-inputs",
    )


def _copy_value_info(index: GraphIndex, keep: set[int], boundary: list[str]):
    """In one pass over the declared types: the types of the piece's boundary values (None
    where unknown), and the value_info entries of its inner values, in the model's order."""
    types: dict[str, onnx.TypeProto | None] = {v: index.type_of(v, value_info=False) for v in boundary}
    wanted = {v for v, t in types.items() if t is None}
    producer = index.producer
    inner = []
    for vi in index.graph.value_info:
        name = vi.name
        if name in wanted:
            types[name] = vi.type if vi.type.WhichOneof("value") else None
        elif producer.get(name) in keep and name not in types:
            inner.append(vi)
    return types, inner


def _check_depends(index: GraphIndex, walk: Walk, out_res: list[Resolved], stop: set[str]) -> None:
    if len(out_res) == 1:  # one output: it depends on an input if its walk reached one
        depends = stop & walk.seen
        if out_res[0].value not in stop and depends:
            return
    depends = set(stop)
    for i in sorted(walk.keep):
        if any(r in depends for r in walk.reads[i]):
            depends.update(index.nodes[i].output)
    dead = [r for r in out_res if r.value not in depends]
    if dead:
        names = ", ".join(repr(r.query) for r in dead)
        raise InputError(
            f"output {names} does not depend on any listed input (it is computed from parameters alone)",
            "list an input it is computed from with --in, or drop the output",
        )


def _check_unique(in_specs, in_res, out_specs, out_res) -> None:
    problems = []
    by_value: dict[str, str] = {}
    for s, r in zip(in_specs, in_res):
        if r.value in by_value:
            problems.append(f"{s.text!r} and {by_value[r.value]!r} name the same value {r.value!r}")
        by_value[r.value] = s.text
    in_names: dict[str, str] = {}
    for s, r in zip(in_specs, in_res):
        name = s.new_name or r.value
        if in_names.get(name, r.value) != r.value:
            problems.append(f"the name {name!r} is given to more than one input or output")
        in_names[name] = r.value
    out_names: set[str] = set()
    for s, r in zip(out_specs, out_res):
        name = s.new_name or r.value
        if name in out_names or in_names.get(name, r.value) != r.value:
            problems.append(f"the name {name!r} is given to more than one input or output")
        out_names.add(name)
    if problems:
        raise InputError("; ".join(problems), "give each input and output its own name (name=value)")


def _check_new_names(g: onnx.GraphProto, rename: dict[str, str], extra: list[tuple[str, str]], fixed: set[str]) -> None:
    if not rename and not extra:
        return
    existing = {o for n in g.node for o in n.output} | {t.name for t in g.initializer} | fixed
    clashes = [new for old, new in rename.items() if new in existing and new != old]
    clashes += [new for _, new in extra if new in existing]
    if clashes:
        raise InputError(
            "the new name " + ", ".join(repr(c) for c in clashes) + " is already a value of the piece",
            "choose another record name",
        )
    # Names are unique across nested scopes too (ONNX's SSA rule): a record name that an
    # If/Loop/Scan body defines would be shadowed there, and the body's reads of the renamed
    # value would find its own value instead.
    inner = _nested_names(g)
    nested = [new for old, new in [*rename.items(), *extra] if new in inner and new != old]
    if nested:
        first = nested[0]
        raise InputError(
            f"the new name {first!r} is already a value inside the piece, in a subgraph of node {inner[first]!r}",
            "choose another record name",
        )


def _nested_names(g: onnx.GraphProto) -> dict[str, str]:
    """Every value defined inside the subgraphs of a graph's nodes, with the outer node."""
    found: dict[str, str] = {}
    for node in g.node:
        if not node.attribute:
            continue
        label = node.name or node.output[0]
        for sub in subgraphs(node):
            stack = [sub]
            while stack:
                s = stack.pop()
                found.update((v.name, label) for v in s.input)
                found.update((t.name, label) for t in s.initializer)
                for n in s.node:
                    found.update((o, label) for o in n.output if o)
                    if n.attribute:
                        stack.extend(subgraphs(n))
    return found


def _infer_types(model: onnx.ModelProto, index: GraphIndex, names: list[str]) -> dict[str, onnx.TypeProto]:
    """Types of values the model does not annotate, by shape inference on what computes them:
    onnx's, node by node and once per distinct node (see infer.py), and where that cannot
    stand for it, on the whole of what computes them."""
    found = infer.infer_types(model, index, names)
    rest = [n for n, t in found.items() if t is infer.UNKNOWN]
    out = {n: t for n, t in found.items() if isinstance(t, onnx.TypeProto)}
    if rest:
        out.update(_infer_cone(model, index, rest))
    return out


def _infer_cone(model: onnx.ModelProto, index: GraphIndex, names: list[str]) -> dict[str, onnx.TypeProto]:
    """Types of values by shape inference on the part of the graph that computes them."""
    w = walk_back(index, names, set())
    g = onnx.GraphProto(name="infer")
    g.node.extend(index.nodes[i] for i in sorted(w.keep))
    g.input.extend(index.inputs[v] for v in w.leaks)
    for t in model.graph.initializer:
        if t.name not in w.params:
            continue
        if serde.is_external(t) or (len(t.raw_data) > 1024 and t.data_type != onnx.TensorProto.INT64):
            # only dims matter for these: declare them as typed inputs instead of copying weights
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            g.initializer.append(t)
    g.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    try:
        inferred = onnx.shape_inference.infer_shapes(_probe(model, g), data_prop=True)
    except Exception:  # inference is a best effort here; missing types are reported later
        return {}
    known = {v.name: v.type for v in inferred.graph.output}
    return {n: known[n] for n in names if n in known and known[n].WhichOneof("value") is not None}


def _observe_types(model: onnx.ModelProto, names: list[str], sample: dict[str, Any] | None) -> dict[str, onnx.TypeProto]:
    """Element type and rank of values that shape inference cannot type, seen in one run of
    the model on random inputs (dims left unknown). ONNX requires a shape on every graph
    input and output, so a rank is needed; nothing is returned if the model cannot run."""
    if not names:
        return {}
    from onnxsurgeon import runtime
    from onnxsurgeon.arrays import random_inputs

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    try:
        sess = runtime.session(probe, optimize=False)
        values = sess.run(names, sample if sample is not None else random_inputs(model))
    except Exception:  # best effort: a model may need real data or fail on random values
        return {}
    out = {}
    for name, value in zip(names, values):
        if hasattr(value, "dtype") and hasattr(value, "ndim"):
            elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
            out[name] = onnx.helper.make_tensor_type_proto(elem, [None] * value.ndim)
    return out


def _first_inference_error(text: str) -> str:
    """The first error in onnx's list: later ones usually follow from it."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if "op_type" in ln or "Error" in ln:
            return ln
    return lines[0] if lines else ""


def _probe(model: onnx.ModelProto, g: onnx.GraphProto) -> onnx.ModelProto:
    """A model around a graph for shape inference only."""
    # IR 4 at least: before it, initializers not listed as inputs are not seen by inference
    probe = onnx.helper.make_model(g, opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
    probe.functions.extend(model.functions)
    return probe


_SHAPE_WORDS = re.compile(r"shape|dimension|broadcast|mismatch|incompatible|rank", re.IGNORECASE)


def _try_overrides(model: onnx.ModelProto, g: onnx.GraphProto, overridden: list[str]) -> None:
    """Run the piece once on random inputs of the new types: onnx's shape inference does not
    check every operator's dimensions (Gemm's inner dimension, its bias), onnxruntime does.
    A piece that onnxruntime cannot even load is left to the other checks."""
    from onnxsurgeon import runtime
    from onnxsurgeon.arrays import random_inputs

    probe = _probe(model, g)
    try:
        feeds = random_inputs(probe, batch=1)
        sess = runtime.session(probe, optimize=False)
    except Exception:  # onnxruntime missing, an op it lacks, random data impossible: not this check's business
        return
    try:
        sess.run(None, feeds)
    except Exception as e:  # onnxruntime raises its own exception types
        reason = " ".join(str(e).split()) or type(e).__name__
        if not _SHAPE_WORDS.search(reason):
            return  # e.g. random indices out of range: says nothing about the new shape
        reason = reason.split("Status Message: ")[-1] if "Status Message: " in reason else reason
        where = re.search(r"Name:'([^']*)'", str(e))
        raise InputError(
            f"the new input type {', '.join(map(repr, overridden))} does not fit the piece: "
            + (f"node {where.group(1)!r}: " if where else "") + reason[:500],
            "check the shape you gave, or cut so that the new shape fits",
        ) from None


def _update_types(types: dict[str, onnx.TypeProto | None], found: dict[str, onnx.TypeProto]) -> None:
    """Take a found type where none is known, or where it adds a shape."""
    for v, t in found.items():
        if types.get(v) is None or (dtypes.rank(types[v]) is None and dtypes.rank(t) is not None):
            types[v] = t


def _infer_piece(
    model: onnx.ModelProto, g: onnx.GraphProto, overridden: list[str], wanted: set[str], defer: list[bytes] | None = None
) -> dict[str, onnx.TypeProto]:
    """Shape inference on the piece. After a type override it is strict and starts from
    scratch, so a shape that can no longer fit is refused before anything is written.
    ``defer``: see :func:`_infer_piece_by_node`."""
    if overridden:
        del g.value_info[:]
        for o in g.output:
            o.type.Clear()
    else:
        fast = _infer_piece_by_node(model, g, wanted, defer)
        if fast is not None:
            return fast
    try:
        inferred = onnx.shape_inference.infer_shapes(_probe(model, g), strict_mode=bool(overridden), data_prop=True)
    except Exception as e:  # onnx reports shape errors as several exception types
        if not overridden:
            return {}
        reason = _first_inference_error(str(e)) or type(e).__name__
        raise InputError(
            f"the new input type {', '.join(map(repr, overridden))} does not fit the piece: {reason}",
            "check the shape you gave, or cut so that the new shape fits",
        ) from None
    if overridden:
        _try_overrides(model, g, overridden)
    if overridden or not g.value_info:  # keep what inference learnt about the inner values
        g.value_info.extend(inferred.graph.value_info)
    found = {v.name: v.type for v in inferred.graph.output}
    if wanted - found.keys():
        found.update((v.name, v.type) for v in inferred.graph.value_info if v.name in wanted)
    return {k: t for k, t in found.items() if k in wanted and t.WhichOneof("value") is not None}


def _infer_piece_by_node(
    model: onnx.ModelProto, g: onnx.GraphProto, wanted: set[str], defer: list[bytes] | None = None
) -> dict[str, onnx.TypeProto] | None:
    """What :func:`_infer_piece` finds without a type override, from the node-by-node pass
    (infer.py): the same types, and the same value_info added, in the same order (that of
    the nodes' outputs). None where the pass cannot stand for inference on the piece.
    With ``defer``, the value_info entries (serialised) are appended to it instead, for the
    caller to add to the piece."""
    nodes = list(g.node)
    recorded = {v.name for v in g.value_info}
    # inference merges recorded types with what it infers; the pass does not
    typed_outputs = {o.name for o in g.output if o.type.WhichOneof("value") is not None}
    declared = recorded | typed_outputs
    inits = {t.name: t for t in g.initializer}
    outputs = [tuple(n.output) for n in nodes]  # read once: for the pass and the value_info
    p = infer.TypePass(model, nodes, inits, {v.name: v for v in g.input if v.name not in inits}, declared, names=(None, outputs))
    p.run(len(nodes))
    found = {}
    for name in wanted:
        t = p.type_of(name)
        if t is infer.UNKNOWN:
            return None
        if t is not None and t.WhichOneof("value") is not None:
            found[name] = t
    if not recorded:  # as _infer_piece: the piece keeps what inference learnt of inner values
        # every typed value but the typed graph outputs, untyped graph outputs too
        entries = p.value_info_bytes(o for outs in outputs for o in outs if o and o not in typed_outputs)
        if entries is None:
            return None
        if defer is not None:
            defer.append(entries)
        else:
            g.MergeFromString(entries)
    return found


def _add_value_info(g: onnx.GraphProto, entries: list[onnx.ValueInfoProto] | bytes) -> None:
    """Add value_info entries to a piece: copies of the model's, or serialised by the type pass."""
    if isinstance(entries, bytes):
        g.MergeFromString(entries)
    else:
        g.value_info.extend(entries)


_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_DEFAULT_STEM_MAX = 96


def default_output_path(model_path: str | Path, report: ExtractReport) -> Path:
    """Where ``extract`` writes a piece when no output is given: beside the model, named
    after it, the piece's outputs and its parameter mode.

    ``model.onnx`` cut at ``--out L4.y --params constant`` gives ``model.L4_y.constant.onnx``;
    several outputs are joined with ``+``. Characters that are awkward in file names become
    ``_`` (the alias rule); a very long name is shortened and ends in a hash of the full one.
    The path never equals the model's own path (it always has two more suffixes).
    """
    model_path = Path(model_path)
    stem = model_path.name[: -len(".onnx")] if model_path.name.endswith(".onnx") else model_path.name
    outs = "+".join(_UNSAFE.sub("_", p.name) for p in report.outputs)
    if len(outs) > _DEFAULT_STEM_MAX:
        digest = hashlib.sha256(outs.encode()).hexdigest()[:8]
        outs = f"{outs[:_DEFAULT_STEM_MAX - 9]}-{digest}"
    return model_path.with_name(f"{stem}.{outs}.{report.params}.onnx")
