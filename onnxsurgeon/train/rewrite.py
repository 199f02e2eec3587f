"""Ops without a gradient (or without a CPU gradient kernel) in onnxruntime-training 1.19,
written, in the training graph only, in ops that have both.

:func:`fold_control` (If, Loop, Scan) and then :func:`rewrite_graph` (the other ops) are called
by :func:`onnxsurgeon.train.prepare.prepare` on the copy it trains. It rewrites only the nodes that a parameter which may train reaches (through float
values): a node in a frozen or constant part keeps its op, so what trained before trains
bit for bit as before. Each op has one small function, registered in :data:`REWRITES`; a
function returns the nodes that replace the node, or raises :class:`Unsupported` with the
reason, which the refusal then quotes (``plan`` refuses a node without gradient only if
it lies between a trained parameter and the loss).

What onnxruntime-training 1.19.2 (CPU) does, measured on one-node models through
generate_artifacts and a training step (tests/test_train_rewrite.py pins what the rewrites
rely on):

- no gradient builder: CastLike, ReduceMax, ReduceMin, ReduceSumSquare, ReduceL1,
  ReduceLogSum, GlobalMaxPool, InstanceNormalization, GroupNormalization, LpNormalization,
  LRN, HardSwish, Mish, ThresholdedRelu, DepthToSpace, SpaceToDepth, CumSum, Einsum, Loop,
  Round, Floor, Ceil, Sign; also ReverseSequence (not rewritten);
- If: generate_artifacts folds one whose condition is a constant itself, and one decided by
  a graph input kills the process (a C++ assertion) — :mod:`onnxsurgeon.train.control`;
- a gradient builder but no CPU kernel: Resize (``ResizeGrad``: the Module cannot be built);
- a kernel that fails at run time: Slice with a negative step (``SliceGrad``: narrowing_error),
  so sequences are reversed with Gather;
- gradients that work and match finite differences: Cast, TopK and ArgMax+GatherElements
  (GatherElementsGrad), MaxPool, Gather, Expand, Reshape, Transpose, MatMul (a constant left
  operand broadcast over batch dimensions too), ReduceSum, ReduceMean, ReduceL2, Pow, Sqrt,
  Abs, Where, Concat, Unsqueeze, Squeeze, Pad, Tile, Max, Min, LSTM and GRU (forward).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxsurgeon.expr import TensorType
from onnxsurgeon.graph import node_reads
from onnxsurgeon.train.control import CONTROL
from onnxsurgeon.train.rewrite_conv import average_pool, conv_transpose
from onnxsurgeon.train.rewrite_einsum import einsum
from onnxsurgeon.train.rewrite_round import ROUNDING, rounding
from onnxsurgeon.train.rewrite_core import (
    FLOATS, Builder, Context, Unsupported, attrs_of, known_value, known_values, text,
)


# ---------------------------------------------------------------- CastLike


def cast_like(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """CastLike(x, like) -> Cast(x, to=type of like)."""
    to = cx.elem(node.input[1])
    if to is None:
        raise Unsupported(f"the type of {node.input[1]!r} is not known")
    b = Builder(node, cx)
    extra = {k: v for k, v in attrs_of(node).items() if k == "saturate"}
    b.op("Cast", node.input[0], out=node.output[0], to=to, **extra)
    return b.nodes


# ---------------------------------------------------------------- ReduceMax, ReduceMin, GlobalMaxPool


def _extreme(b: Builder, x: str, y: str, axes: list[int] | None, keepdims: int, rank: int, largest: int) -> None:
    """max (largest=1) or min of `x` over `axes` (None: all) as TopK(k=1) over the reduced
    axes moved last and flattened; TopK's gradient (GatherElementsGrad) has a CPU kernel."""
    axes = sorted({a % rank for a in axes}) if axes is not None else list(range(rank))
    kept = [i for i in range(rank) if i not in axes]
    perm = kept + axes
    moved = b.op("Transpose", x, perm=perm) if perm != list(range(rank)) else x
    flat = b.op("Reshape", moved, b.ints([0] * len(kept) + [-1]))
    top = b.ops("TopK", flat, b.ints([1]), outs=[b.cx.fresh(f"{b.label}/topk"), b.cx.fresh(f"{b.label}/topk_index")], axis=-1, largest=largest)[0]
    if not keepdims:
        b.op("Reshape", top, b.ints([0] * len(kept)), out=y)
        return
    if perm == list(range(rank)):
        b.op("Reshape", top, b.ints([0] * len(kept) + [1] * len(axes)), out=y)
        return
    ones = b.op("Reshape", top, b.ints([0] * len(kept) + [1] * len(axes)))
    b.op("Transpose", ones, out=y, perm=[int(i) for i in np.argsort(perm)])


def _reduce_axes(node: onnx.NodeProto, cx: Context) -> list[int]:
    """The axes of a Reduce node: its attribute (opset < 18) or its input, known before training."""
    if len(node.input) > 1 and node.input[1]:
        value = known_value(node.input[1], cx)
        if value is None:
            raise Unsupported(f"its axes {node.input[1]!r} are computed while the model runs")
        return [int(v) for v in np.asarray(value).reshape(-1)]
    return [int(v) for v in attrs_of(node).get("axes", [])]


def reduce_extreme(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """ReduceMax/ReduceMin (axes as attribute or, from opset 18, input) -> over given axes,
    ArgMax/ArgMin and GatherElements axis by axis (no rank needed); over every axis, TopK(k=1)
    of the flattened input. Both gradients (GatherElementsGrad) have CPU kernels."""
    a = attrs_of(node)
    x = node.input[0]
    axes = _reduce_axes(node, cx)
    keepdims = int(a.get("keepdims", 1))
    b = Builder(node, cx)
    if not axes and a.get("noop_with_empty_axes", 0):
        b.op("Identity", x, out=node.output[0])
        return b.nodes
    if axes:
        current = x
        for k, axis in enumerate(axes):
            last = k == len(axes) - 1 and keepdims
            index = b.op("ArgMax" if node.op_type == "ReduceMax" else "ArgMin", current, axis=axis, keepdims=1)
            current = b.op("GatherElements", current, index, out=node.output[0] if last else None, axis=axis)
        if not keepdims:
            b.op("Squeeze", current, b.ints(axes), out=node.output[0])
        return b.nodes
    rank = cx.rank(x)
    if rank is None:
        raise Unsupported(f"it reduces every axis and the rank of its input {x!r} is not known")
    _extreme(b, x, node.output[0], None, keepdims, rank, 1 if node.op_type == "ReduceMax" else 0)
    return b.nodes


def reduce_sum_of(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """ReduceSumSquare -> ReduceSum(x*x), ReduceL1 -> ReduceSum(|x|), ReduceLogSum -> Log(ReduceSum(x))."""
    a = attrs_of(node)
    x = node.input[0]
    axes = _reduce_axes(node, cx)
    b = Builder(node, cx)
    term = {"ReduceSumSquare": lambda: b.op("Mul", x, x), "ReduceL1": lambda: b.op("Abs", x), "ReduceLogSum": lambda: x}[node.op_type]()
    extra = {"noop_with_empty_axes": int(a.get("noop_with_empty_axes", 0))}
    keep = int(a.get("keepdims", 1))
    out = None if node.op_type == "ReduceLogSum" else node.output[0]
    total = b.op("ReduceSum", term, *([b.ints(axes)] if axes else []), out=out, keepdims=keep, **extra)
    if node.op_type == "ReduceLogSum":
        b.op("Log", total, out=node.output[0])
    return b.nodes


def global_max_pool(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """GlobalMaxPool -> the max over the spatial axes, kept as ones (TopK(k=1))."""
    x = node.input[0]
    rank = cx.rank(x)
    if rank is None:
        raise Unsupported(f"the rank of its input {x!r} is not known")
    b = Builder(node, cx)
    _extreme(b, x, node.output[0], list(range(2, rank)), 1, rank, 1)
    return b.nodes


# ---------------------------------------------------------------- activations


def activation(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """HardSwish -> x * HardSigmoid(x; 1/6, 1/2), Mish -> x * tanh(Softplus(x)) (prepare then
    writes HardSigmoid and Softplus in elementary ops), ThresholdedRelu -> Where(x > alpha, x, 0)."""
    x, y = node.input[0], node.output[0]
    b = Builder(node, cx)
    if node.op_type == "HardSwish":
        b.op("Mul", x, b.op("HardSigmoid", x, alpha=1 / 6, beta=0.5), out=y)
    elif node.op_type == "Mish":
        b.op("Mul", x, b.op("Tanh", b.op("Softplus", x)), out=y)
    else:
        alpha = float(attrs_of(node).get("alpha", 1.0))
        b.op("Where", b.op("Greater", x, b.const(alpha)), x, b.const(0.0), out=y)
    return b.nodes


# ---------------------------------------------------------------- DepthToSpace, SpaceToDepth, CumSum


def _static_dims(x: str, cx: Context, rank: int, what: str) -> list[int]:
    t = cx.types.get(x)
    if t is None or t.shape is None or len(t.shape) != rank or not all(isinstance(d, int) for d in t.shape[1:]):
        raise Unsupported(f"the sizes of its input {x!r} beyond the first axis are not known before the run ({what})")
    return list(t.shape)


def depth_space(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """DepthToSpace (DCR or CRD) and SpaceToDepth -> Reshape, Transpose, Reshape."""
    a = attrs_of(node)
    bs = int(a["blocksize"])
    x, y = node.input[0], node.output[0]
    _, c, h, w = _static_dims(x, cx, 4, node.op_type)
    b = Builder(node, cx)
    if node.op_type == "SpaceToDepth":
        six = b.op("Reshape", x, b.ints([0, c, h // bs, bs, w // bs, bs]))
        moved = b.op("Transpose", six, perm=[0, 3, 5, 1, 2, 4])
        b.op("Reshape", moved, b.ints([0, c * bs * bs, h // bs, w // bs]), out=y)
    elif text(a.get("mode", "DCR")) == "CRD":
        six = b.op("Reshape", x, b.ints([0, c // (bs * bs), bs, bs, h, w]))
        moved = b.op("Transpose", six, perm=[0, 1, 4, 2, 5, 3])
        b.op("Reshape", moved, b.ints([0, c // (bs * bs), h * bs, w * bs]), out=y)
    else:
        six = b.op("Reshape", x, b.ints([0, bs, bs, c // (bs * bs), h, w]))
        moved = b.op("Transpose", six, perm=[0, 3, 4, 1, 5, 2])
        b.op("Reshape", moved, b.ints([0, c // (bs * bs), h * bs, w * bs]), out=y)
    return b.nodes


def cumsum(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """CumSum along an axis of known length -> MatMul by a fixed triangular matrix
    (exclusive and reverse as the attributes say)."""
    a = attrs_of(node)
    x = node.input[0]
    axis_value = known_value(node.input[1], cx)
    if axis_value is None:
        raise Unsupported(f"its axis {node.input[1]!r} is computed while the model runs")
    t = cx.types.get(x)
    if t is None or t.shape is None:
        raise Unsupported(f"the rank of its input {x!r} is not known")
    rank = len(t.shape)
    axis = int(np.asarray(axis_value).reshape(-1)[0]) % rank
    n = t.shape[axis]
    if not isinstance(n, int):
        raise Unsupported(f"the length of its input {x!r} along axis {axis} is not known before the run")
    i, j = np.indices((n, n))
    keep = (j >= i) if a.get("reverse", 0) else (j <= i)  # out[i] sums in[j]
    if a.get("exclusive", 0):
        keep &= i != j
    m = keep.astype(np.float64)  # [out, in]
    b = Builder(node, cx)
    if axis == rank - 1:
        b.op("MatMul", x, b.const(m.T), out=node.output[0])
    else:
        perm = [d for d in range(rank) if d != axis] + [axis]
        moved = b.op("MatMul", b.op("Transpose", x, perm=perm), b.const(m.T))
        b.op("Transpose", moved, out=node.output[0], perm=[int(p) for p in np.argsort(perm)])
    return b.nodes


# ---------------------------------------------------------------- Resize


def _axis_matrix(node: onnx.NodeProto, cx: Context, size: int, scale: float | None, out_size: int | None) -> np.ndarray:
    """The [out, in] matrix by which Resize maps one axis of length `size`: onnxruntime's own
    Resize applied to the identity (Resize is linear and acts on each axis separately)."""
    from onnxsurgeon import runtime

    keep = {"mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside", "nearest_mode", "antialias"}
    attrs = {k: v for k, v in attrs_of(node).items() if k in keep}
    opset = max(cx.opset, 13)
    inits = [numpy_helper.from_array(np.eye(size, dtype=np.float32), "x")]
    if scale is not None:
        inits.append(numpy_helper.from_array(np.array([scale, 1.0], np.float32), "scales"))
        inputs = ["x", "", "scales"]
    else:
        inits.append(numpy_helper.from_array(np.array([out_size, size], np.int64), "sizes"))
        inputs = ["x", "", "", "sizes"]
    graph = helper.make_graph(
        [helper.make_node("Resize", inputs, ["y"], **attrs)], "axis", [],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    sess = runtime.session(model, what=f"Resize {node.name or node.output[0]!r} on one axis")
    return np.asarray(sess.run(None, {})[0], np.float64)


def resize(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """Resize with scales or sizes known before training: nearest as Gather with fixed indices
    on each resized axis, the other modes (linear, cubic) as fixed interpolation matrices
    (MatMul). onnxruntime builds ResizeGrad, which has no CPU kernel."""
    a = attrs_of(node)
    x = node.input[0]
    mode = text(a.get("mode", "nearest"))
    if text(a.get("coordinate_transformation_mode", "half_pixel")) == "tf_crop_and_resize":
        raise Unsupported("coordinate_transformation_mode tf_crop_and_resize is not rewritten")
    if text(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise Unsupported("keep_aspect_ratio_policy other than stretch is not rewritten")
    shape = cx.types.get(x).shape if cx.types.get(x) is not None else None
    if shape is None:
        raise Unsupported(f"the rank of its input {x!r} is not known")
    rank = len(shape)
    axes = [int(v) % rank for v in a.get("axes", range(rank))]
    scales = known_value(node.input[2], cx) if len(node.input) > 2 and node.input[2] else None
    sizes = known_value(node.input[3], cx) if len(node.input) > 3 and node.input[3] else None
    if scales is not None and np.asarray(scales).size == 0:
        scales = None
    if scales is None and sizes is None:
        raise Unsupported("its scales and sizes are computed while the model runs")
    b = Builder(node, cx)
    current = x
    plan: list[tuple[int, float | None, int | None]] = []
    for k, axis in enumerate(axes):
        if scales is not None:
            s = float(np.asarray(scales, np.float32).reshape(-1)[k])
            if s == 1.0:
                continue
            plan.append((axis, s, None))
        else:
            m = int(np.asarray(sizes).reshape(-1)[k])
            if isinstance(shape[axis], int) and m == shape[axis]:
                continue
            plan.append((axis, None, m))
    if not plan:
        b.op("Identity", x, out=node.output[0])
        return b.nodes
    for i, (axis, s, m) in enumerate(plan):
        last = i == len(plan) - 1
        out = node.output[0] if last else None
        n = shape[axis]
        if not isinstance(n, int):
            if mode == "nearest" and s is not None and s == int(s) and s > 1 and _floor_nearest(node, cx, int(s)):
                current = _repeat(b, current, axis, int(s), rank, out)
                continue
            raise Unsupported(f"the size of its input {x!r} along axis {axis} is not known before the run")
        matrix = _axis_matrix(node, cx, n, s, m)
        if mode == "nearest":
            index = matrix.argmax(axis=1).astype(np.int64)
            current = b.op("Gather", current, b.ints(index), out=out, axis=axis)
        elif axis == rank - 1:
            current = b.op("MatMul", current, b.const(matrix.T), out=out)
        elif axis == rank - 2:
            current = b.op("MatMul", b.const(matrix), current, out=out)
        else:  # move the axis last, multiply, move it back
            perm = [d for d in range(rank) if d != axis] + [axis]
            moved = b.op("MatMul", b.op("Transpose", current, perm=perm), b.const(matrix.T))
            current = b.op("Transpose", moved, out=out, perm=[int(p) for p in np.argsort(perm)])
    return b.nodes


def _floor_nearest(node: onnx.NodeProto, cx: Context, s: int) -> bool:
    """Whether this nearest Resize maps output i to input i // s (so it repeats each element s times)."""
    n = 7
    index = _axis_matrix(node, cx, n, float(s), None).argmax(axis=1)
    return bool(np.array_equal(index, np.arange(n * s) // s))


def _repeat(b: Builder, x: str, axis: int, s: int, rank: int, out: str | None) -> str:
    """Each element of `x` repeated `s` times along `axis`, for sizes not known before the run."""
    wide = b.op("Unsqueeze", x, b.ints([axis + 1]))
    tiled = b.op("Expand", wide, b.ints([1] * (axis + 1) + [s] + [1] * (rank - axis - 1)))
    shape = b.op("Shape", x)
    factor = b.ints([1] * axis + [s] + [1] * (rank - axis - 1))
    return b.op("Reshape", tiled, b.op("Mul", shape, factor), out=out)


# ---------------------------------------------------------------- normalizations


def _channels(name: str, cx: Context, what: str) -> int:
    t = cx.types.get(name)
    if t is None or not t.shape or not isinstance(t.shape[0], int):
        raise Unsupported(f"the length of its {what} {name!r} is not known")
    return int(t.shape[0])


def _normalize(b: Builder, x3: str, eps: float) -> str:
    """(x - mean) / sqrt(var + eps) over the last axis of a rank-3 value (the biased variance)."""
    mean = b.reduce("ReduceMean", x3, [2])
    d = b.op("Sub", x3, mean)
    var = b.reduce("ReduceMean", b.op("Mul", d, d), [2])
    return b.op("Div", d, b.op("Sqrt", b.op("Add", var, b.const(eps))))


def _affine(b: Builder, v3: str, scale: str, bias: str, n: int) -> str:
    """v3 [N, n, S] * scale[n] + bias[n]."""
    shape = b.ints([n, 1])
    return b.op("Add", b.op("Mul", v3, b.op("Reshape", scale, shape)), b.op("Reshape", bias, shape))


def instance_norm(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """InstanceNormalization -> mean and variance over the spatial axes of each (n, c), in
    elementary ops, on x viewed as [N, C, -1]."""
    x, scale, bias = node.input[:3]
    c = _channels(scale, cx, "scale")
    b = Builder(node, cx)
    eps = float(attrs_of(node).get("epsilon", 1e-5))
    y3 = _affine(b, _normalize(b, b.op("Reshape", x, b.ints([0, c, -1])), eps), scale, bias, c)
    b.op("Reshape", y3, b.op("Shape", x), out=node.output[0])
    return b.nodes


def group_norm(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """GroupNormalization -> x viewed as [N, G, -1], normalized, then scaled per group
    (opset 18: scale and bias have G entries) or per channel (opset 21: C entries)."""
    x, scale, bias = node.input[:3]
    a = attrs_of(node)
    g = int(a["num_groups"])
    n = _channels(scale, cx, "scale")
    b = Builder(node, cx)
    norm = _normalize(b, b.op("Reshape", x, b.ints([0, g, -1])), float(a.get("epsilon", 1e-5)))
    if n == g and cx.opset < 21:
        y3 = _affine(b, norm, scale, bias, g)
    else:
        y3 = _affine(b, b.op("Reshape", norm, b.ints([0, n, -1])), scale, bias, n)
    b.op("Reshape", y3, b.op("Shape", x), out=node.output[0])
    return b.nodes


def lp_norm(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """LpNormalization -> x / ReduceL2(x) (p=2) or x / ReduceSum(|x|) (p=1) along the axis
    (a norm of 0 divides by 1, as onnxruntime leaves such a vector 0)."""
    a = attrs_of(node)
    p, axis = int(a.get("p", 2)), int(a.get("axis", -1))
    if p not in (1, 2):
        raise Unsupported(f"p={p}")
    x = node.input[0]
    b = Builder(node, cx)
    norm = b.reduce("ReduceL2", x, [axis]) if p == 2 else b.reduce("ReduceSum", b.op("Abs", x), [axis])
    safe = b.op("Where", b.op("Equal", norm, b.const(0.0)), b.const(1.0), norm)  # onnxruntime: 0 stays 0
    b.op("Div", x, safe, out=node.output[0])
    return b.nodes


def lrn(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """LRN -> x / (bias + alpha/size * window sum of x^2 over channels)^beta, the window sum
    as a fixed band matrix times x^2 viewed as [N, C, -1]."""
    a = attrs_of(node)
    size = int(a["size"])
    x = node.input[0]
    t = cx.types.get(x)
    if t is None or t.rank is None or t.rank < 2 or not isinstance(t.shape[1], int):
        raise Unsupported(f"the number of channels of its input {x!r} is not known")
    c = int(t.shape[1])
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    band = np.array([[1.0 if i - lo <= j <= i + hi else 0.0 for j in range(c)] for i in range(c)])
    b = Builder(node, cx)
    sq3 = b.op("Reshape", b.op("Mul", x, x), b.ints([0, c, -1]))
    window = b.op("Reshape", b.op("MatMul", b.const(band), sq3), b.op("Shape", x))
    base = b.op("Add", b.op("Mul", window, b.const(float(a.get("alpha", 1e-4)) / size)), b.const(float(a.get("bias", 1.0))))
    b.op("Div", x, b.op("Pow", base, b.const(float(a.get("beta", 0.75)))), out=node.output[0])
    return b.nodes


# ---------------------------------------------------------------- reverse and bidirectional LSTM, GRU


def recurrence(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto] | None:
    """A reverse or bidirectional LSTM/GRU -> forward ones (onnxruntime's gradient kernels run
    forward ones only), the reverse direction on the sequence reversed with Gather (the
    gradient of Slice with a negative step fails in onnxruntime) and its outputs reversed back;
    per-direction weights and initial states taken with Gather, outputs concatenated."""
    a = attrs_of(node)
    direction = text(a.get("direction", "forward"))
    if direction == "forward":
        return None
    lstm = node.op_type == "LSTM"
    if "activation_alpha" in a or "activation_beta" in a:
        raise Unsupported("activation_alpha/activation_beta are not split per direction")
    full = list(node.input) + [""] * ((8 if lstm else 6) - len(node.input))
    x, seq = full[0], full[4]
    if int(a.get("layout", 0)):
        raise Unsupported("layout 1 (onnxruntime runs layout 0 only)")
    b = Builder(node, cx)
    shape = cx.types.get(x).shape if cx.types.get(x) is not None else None
    steps = shape[0] if shape is not None and len(shape) == 3 else None
    if seq:
        lens = known_value(seq, cx)
        if lens is None:
            raise Unsupported(f"its sequence_lens {seq!r} are not known before training")
        lens = np.asarray(lens).reshape(-1)
        if lens.size and (not np.all(lens == lens[0]) or not isinstance(steps, int) or lens[0] != steps):
            raise Unsupported(f"its sequence_lens {seq!r} differ between sequences or from the sequence length")
    if isinstance(steps, int):
        reverse_index = b.ints(list(range(steps - 1, -1, -1)))
    else:
        t = b.op("Gather", b.op("Shape", x), b.const(0, np.int64), axis=0)
        reverse_index = b.op("Range", b.op("Sub", t, b.const(1, np.int64)), b.const(-1, np.int64), b.const(-1, np.int64))
    nd = 2 if direction == "bidirectional" else 1
    per_act = 3 if lstm else 2
    acts = [text(v) for v in a.get("activations", [])]
    outs: list[tuple[str, str, str | None]] = []
    for d in range(nd):
        rev = direction == "reverse" or d == 1

        def part(name: str) -> str:
            return name if not name or nd == 1 else b.op("Gather", name, b.ints([d]), axis=0)

        inputs = [b.op("Gather", x, reverse_index, axis=0) if rev else x] + [part(full[k]) for k in (1, 2, 3)] + [""]
        inputs += [part(full[k]) for k in range(5, len(full))]
        while inputs and not inputs[-1]:
            inputs.pop()
        attrs = {k: v for k, v in a.items() if k in ("hidden_size", "clip", "input_forget", "linear_before_reset")}
        if acts:
            attrs["activations"] = acts[d * per_act:(d + 1) * per_act] if len(acts) > per_act else acts
        names = [cx.fresh(f"{b.label}/{'bw' if rev else 'fw'}_{o}") for o in (("Y", "Y_h", "Y_c") if lstm else ("Y", "Y_h"))]
        b.ops(node.op_type, *inputs, outs=names, direction="forward", **attrs)
        y = b.op("Gather", names[0], reverse_index, axis=0) if rev else names[0]
        outs.append((y, names[1], names[2] if lstm else None))
    wanted = list(node.output) + [""] * (3 - len(node.output))
    for k, which in enumerate(("Y", "Y_h", "Y_c")):
        if not wanted[k]:
            continue
        parts = [o[k] for o in outs]
        axis = 1 if which == "Y" else 0
        if nd == 1:
            b.op("Identity", parts[0], out=wanted[k])
        else:
            b.op("Concat", *parts, out=wanted[k], axis=axis)
    return b.nodes

# op -> function returning the nodes that replace a node (None: the node needs no rewrite).
REWRITES: dict[str, Callable[[onnx.NodeProto, Context], list[onnx.NodeProto] | None]] = {
    "CastLike": cast_like,
    "ReduceMax": reduce_extreme,
    "ReduceMin": reduce_extreme,
    "ReduceSumSquare": reduce_sum_of,
    "ReduceL1": reduce_sum_of,
    "ReduceLogSum": reduce_sum_of,
    "GlobalMaxPool": global_max_pool,
    "HardSwish": activation,
    "DepthToSpace": depth_space,
    "SpaceToDepth": depth_space,
    "CumSum": cumsum,
    "Mish": activation,
    "ThresholdedRelu": activation,
    "Resize": resize,
    "InstanceNormalization": instance_norm,
    "GroupNormalization": group_norm,
    "LpNormalization": lp_norm,
    "LRN": lrn,
    "LSTM": recurrence,
    "GRU": recurrence,
    "ConvTranspose": conv_transpose,
    "AveragePool": average_pool,
    "Einsum": einsum,
    **{op: rounding for op in ROUNDING},
}


# ---------------------------------------------------------------- the pass


def fold_control(
    model: onnx.ModelProto, /, candidates: set[str], opset: int, fresh: Callable[[str], str],
    fixed: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """Fold, in place, the If nodes of `model`'s main graph whose condition is known before
    training (wherever they are: folding is exact, and weights held in a branch become
    values of the main graph that :mod:`onnxsurgeon.train.lift` can make parameters), and
    unroll the Loop and Scan nodes that parameters in `candidates` reach and whose length is
    known (:mod:`onnxsurgeon.train.control`). Returns the count per op and, for nodes that
    could not be, the reason by node label. Runs before the other rewrites, which then see
    the nodes brought in from bodies."""
    done: dict[str, int] = {}
    why: dict[str, str] = {}
    if not any(n.op_type in CONTROL and n.domain in ("", "ai.onnx") for n in model.graph.node):
        return done, why
    from onnxsurgeon.train.losses import value_types

    cx = Context(value_types(model), known_values(model, fixed or {}), opset, fresh, model, trains=set(candidates))
    _pass(model, cx, CONTROL, done, why, always=frozenset({"If"}))
    return done, why


def rewrite_graph(
    model: onnx.ModelProto, /, candidates: set[str], types: dict[str, TensorType], opset: int,
    fresh: Callable[[str], str], fixed: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, int], dict[str, str]]:
    """Rewrite, in place, the nodes of `model`'s main graph that parameters in `candidates`
    reach and whose op is in :data:`REWRITES`. Returns the count per op rewritten and, for
    nodes that could not be, the reason by node label."""
    cx = Context(types, known_values(model, fixed or {}), opset, fresh, model, trains=set(candidates))
    done: dict[str, int] = {}
    why: dict[str, str] = {}
    _pass(model, cx, REWRITES, done, why)
    return done, why


def _pass(
    model: onnx.ModelProto, cx: Context, table: dict, done: dict[str, int], why: dict[str, str], always: frozenset = frozenset()
) -> bool:
    graph = model.graph
    reached = set(cx.trains)
    out: list[onnx.NodeProto] = []
    cx.producers = {}
    work = list(reversed(graph.node))
    changed = False
    while work:
        node = work.pop()
        hit = any(n in reached for n in node_reads(node))
        if (hit or node.op_type in always) and node.domain in ("", "ai.onnx") and node.op_type in table:
            try:
                new = table[node.op_type](node, cx)
            except Unsupported as e:
                if hit:
                    why[node.name or node.output[0]] = str(e)
            else:
                if new is not None:
                    why.pop(node.name or node.output[0], None)
                    done[node.op_type] = done.get(node.op_type, 0) + 1
                    work.extend(reversed(new))  # folded branches may hold more to rewrite
                    changed = True
                    continue
        if hit:
            reached.update(o for o in node.output if o and (cx.elem(o) is None or cx.elem(o) in FLOATS))
        out.append(node)
        for o in node.output:
            if o:
                cx.producers[o] = node
    if changed:
        del graph.node[:]
        graph.node.extend(out)
    return changed
