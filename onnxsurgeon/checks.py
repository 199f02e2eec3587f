"""The checker run on every model onnxsurgeon writes (pieces, composed networks, trained
models, transfers) before it is written.

onnx.checker is the backstop behind onnxsurgeon's own checks (STYLE: habit 4): a model
onnxsurgeon builds that it refuses is a bug in onnxsurgeon, reported as one (exit 4, with
the checker's words) instead of written as an invalid file with exit 0. The check is cheap:
weights are never copied or read (large ones are replaced by stand-ins of the same type
and shape), and graphs of more than :data:`FULL_CHECK_NODES` nodes skip the full shape check.
"""

from __future__ import annotations

import onnx

from onnxsurgeon import serde

FULL_CHECK_NODES = 10_000
_INLINE_KEPT = 1 << 16  # tensors smaller than this are checked as they are


class InvalidResult(RuntimeError):
    """onnxsurgeon built a model that onnx.checker refuses: a bug, not a user error."""


def _stub(t: onnx.TensorProto) -> onnx.TensorProto:
    """A tensor of the same name, type and shape with one byte of data: the checker looks at
    a tensor's type, shape and that it holds data, not at how much (shape inference reads
    the values of small tensors only, which are kept)."""
    return onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims, doc_string=t.doc_string, raw_data=b"\0")


def _copy_fields(dst, src, skip: str = "") -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        field = getattr(dst, fd.name)
        if fd.message_type is None:
            setattr(dst, fd.name, value)
        elif hasattr(field, "extend"):
            field.extend(value)
        else:
            field.CopyFrom(value)


def checkable(model: onnx.ModelProto) -> onnx.ModelProto | bytes:
    """A copy of the model for the checker in which the graph's large or external
    initializers are stand-ins of the same type and shape: no weight is copied or read.
    A model with neither is given as it is, serialised (which the checker does anyway),
    without a copy of its graph in Python."""
    if not any(serde.is_external(t) or t.ByteSize() >= _INLINE_KEPT for t in model.graph.initializer):
        data = model.SerializeToString()
        # no tensor refers to external data without naming its location
        if b"location" not in data:
            return data
        del data
    out = onnx.ModelProto()
    _copy_fields(out, model, skip="graph")
    _copy_fields(out.graph, model.graph, skip="initializer")
    for t in model.graph.initializer:
        big = serde.is_external(t) or t.ByteSize() >= _INLINE_KEPT
        out.graph.initializer.append(_stub(t) if big else t)
    for t in serde.iter_model_tensors(out):  # external tensors elsewhere (subgraphs): stand-ins too
        if serde.is_external(t):
            t.CopyFrom(_stub(t))
    return out


def _nodes(graph: onnx.GraphProto) -> int:
    n = len(graph.node)
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                n += _nodes(a.g)
            for sub in a.graphs:
                n += _nodes(sub)
    return n


def full_check(model: onnx.ModelProto) -> bool:
    """Whether the checker runs its full check (shape inference) on the model: graphs of
    up to FULL_CHECK_NODES nodes, subgraphs included. Only the full check reads the graph's
    value_info (onnx's checker.cc looks at graph inputs, outputs, initializers and nodes)."""
    return len(model.graph.node) <= FULL_CHECK_NODES and _nodes(model.graph) <= FULL_CHECK_NODES


def checker_error(model: onnx.ModelProto) -> str | None:
    """What onnx.checker says against the model (full check for graphs up to
    FULL_CHECK_NODES nodes), or None if it passes."""
    full = full_check(model)
    try:
        onnx.checker.check_model(checkable(model), full_check=full)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        return str(e).strip().splitlines()[0][:2000] if str(e).strip() else type(e).__name__
    except Exception as e:  # the checker raises a few other kinds on odd models
        return f"{type(e).__name__}: {e}"[:2000]
    return None


def check_result(model: onnx.ModelProto, what: str, sources: list[onnx.ModelProto] = ()) -> list[str]:
    """Run the checker on a model onnxsurgeon built. A failure is a bug (InvalidResult) —
    unless a model it was made from fails the checker too: then the piece inherits that
    model's problem, and a warning says so (the result is written as before)."""
    err = checker_error(model)
    if err is None:
        return []
    for src in sources:
        if checker_error(src) is not None:
            return [f"{what} does not pass onnx.checker ({err}); nor does the model it comes from"]
    raise InvalidResult(f"onnxsurgeon built {what} that onnx.checker refuses: {err}")
