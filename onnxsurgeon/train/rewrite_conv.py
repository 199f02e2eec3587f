"""ConvTranspose written as a Conv for training: onnxruntime-training 1.19 builds a
``ConvTransposeGrad`` node for it, which has no CPU kernel (the training session cannot be
built; seen on paddle2onnx's text detector and PyTorch U-Nets).

ConvTranspose(x, W) with strides s, pads (b, e), dilations d, output_padding o and groups g
is the Conv, stride 1, of x with s - 1 zeros inserted between its elements along each
spatial axis, by W with input and output channels swapped (per group) and its spatial
axes reversed, padded by d (k - 1) - b in front and d (k - 1) - e + o behind (cropped
where that is negative). Every op used (Unsqueeze, Pad, Reshape, Slice with step 1,
Transpose, Gather, Conv) has a gradient with a CPU kernel.
"""

from __future__ import annotations

import onnx

from onnxsurgeon.train.rewrite_core import Builder, Context, Unsupported, attrs_of, text


def _spread(b: Builder, x: str, rank: int, axis: int, s: int) -> str:
    """`x` with s - 1 zeros between consecutive elements along `axis` (none after the last)."""
    perm = list(range(rank))
    if axis != rank - 1:
        perm[axis], perm[-1] = perm[-1], perm[axis]
        x = b.op("Transpose", x, perm=perm)
    grown = b.op("Unsqueeze", x, b.ints([rank]))  # [..., L, 1]
    padded = b.op("Pad", grown, b.ints([0] * (rank + 1) + [0] * rank + [s - 1]))  # [..., L, s]
    merged = b.op("Reshape", padded, b.ints([0] * (rank - 1) + [-1]))  # [..., L * s]
    cut = b.op("Slice", merged, b.ints([0]), b.ints([-(s - 1)]), b.ints([rank - 1]))  # [..., (L - 1) s + 1]
    return b.op("Transpose", cut, perm=perm) if axis != rank - 1 else cut


def _pads_for(node: onnx.NodeProto, cx: Context, a: dict, kernel: list[int]) -> list[int]:
    """The explicit pads of a ConvTranspose that gives `output_shape` or sets `auto_pad`, as
    onnxruntime computes them (ONNX's formulas: total padding = stride (in - 1) +
    output_padding + d (k - 1) + 1 - out, out = in * stride for SAME without output_shape,
    so SAME's total does not depend on `in`; SAME_UPPER puts the odd one at the end). Where
    the total is negative onnxruntime pads nothing: SAME then gives stride (in - 1) +
    output_padding + d (k - 1) + 1, and an `output_shape` past that holds the bias alone in
    its last places, which a negative end pad here stands for."""
    mode = text(a.get("auto_pad", "NOTSET")) or "NOTSET"
    spatial = len(kernel)
    if "output_shape" not in a and mode in ("NOTSET", "VALID"):
        return list(a.get("pads", [0] * 2 * spatial)) if mode == "NOTSET" else [0] * 2 * spatial
    strides = list(a.get("strides", [1] * spatial))
    dil = list(a.get("dilations", [1] * spatial))
    extra = list(a.get("output_padding", [0] * spatial))
    if "output_shape" not in a:
        total = [max(0, extra[i] + dil[i] * (kernel[i] - 1) + 1 - strides[i]) for i in range(spatial)]
    else:
        t = cx.types.get(node.input[0])
        sizes = None if t is None or t.shape is None else t.shape[2:]
        if sizes is None or len(sizes) != spatial or not all(isinstance(d, int) for d in sizes):
            raise Unsupported(
                f"output_shape or auto_pad {mode} and the spatial sizes of {node.input[0]!r} are not known")
        out = list(a["output_shape"])[-spatial:]
        total = [strides[i] * (sizes[i] - 1) + extra[i] + dil[i] * (kernel[i] - 1) + 1 - out[i] for i in range(spatial)]
    head = [p // 2 if mode == "SAME_UPPER" else p - p // 2 for p in total]
    return [max(0, h) for h in head] + [p - max(0, h) for p, h in zip(total, head)]


def conv_transpose(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    a = attrs_of(node)
    x, w = node.input[0], node.input[1]
    bias = node.input[2] if len(node.input) > 2 else ""
    wshape = cx.static(w)
    if wshape is None:
        raise Unsupported(f"the shape of its weight {w!r} is not known")
    spatial = len(wshape) - 2
    cin, cout_g, kernel = wshape[0], wshape[1], list(wshape[2:])
    g = int(a.get("group", 1))
    strides = list(a.get("strides", [1] * spatial))
    dil = list(a.get("dilations", [1] * spatial))
    pads = _pads_for(node, cx, a, kernel)
    extra = list(a.get("output_padding", [0] * spatial))
    front = [dil[i] * (kernel[i] - 1) - pads[i] for i in range(spatial)]
    back = [dil[i] * (kernel[i] - 1) - pads[spatial + i] + extra[i] for i in range(spatial)]
    b = Builder(node, cx)
    rank = spatial + 2
    for i, s in enumerate(strides):
        if s > 1:
            x = _spread(b, x, rank, 2 + i, int(s))
    for i in range(spatial):  # pads past the kernel's reach crop: a negative pad of the Conv
        if front[i] < 0 or back[i] < 0:
            end = back[i] if back[i] < 0 else 2**63 - 1
            x = b.op("Slice", x, b.ints([max(0, -front[i])]), b.ints([end]), b.ints([2 + i]))
            front[i], back[i] = max(0, front[i]), max(0, back[i])
    # W [Cin, Cout/g, *k] -> [Cout, Cin/g, *k] (per group), spatial axes reversed
    grouped = b.op("Reshape", w, b.ints([g, cin // g, cout_g, *kernel]))
    swapped = b.op("Transpose", grouped, perm=[0, 2, 1, *range(3, rank + 1)])
    kernel_w = b.op("Reshape", swapped, b.ints([g * cout_g, cin // g, *kernel]))
    for i, k in enumerate(kernel):
        if k > 1:
            kernel_w = b.op("Gather", kernel_w, b.ints(list(range(k - 1, -1, -1))), axis=2 + i)
    inputs = [x, kernel_w] + ([bias] if bias else [])
    b.op("Conv", *inputs, out=node.output[0], group=g, dilations=dil, strides=[1] * spatial, pads=front + back,
         kernel_shape=kernel)
    return b.nodes


def average_pool(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto]:
    """AveragePool: onnxruntime 1.19's AveragePoolGrad returns an empty gradient (measured for
    2-D windows of every size and stride tried, sizes known or not; the next gradient node
    then fails to broadcast it, as on paddle2onnx's text recognizer), so no model trained
    through one before. Written as the depthwise Conv by a constant kernel of
    1 / (window size), whose gradient works. Padding that is not counted in the average (the
    divisor then varies at the borders) is refused with the reason."""
    t = cx.types.get(node.input[0])
    if t is None or t.shape is None or len(t.shape) < 3:
        raise Unsupported(f"the rank of its input {node.input[0]!r} is not known")
    channels = t.shape[1]
    if not isinstance(channels, int):
        raise Unsupported(f"the number of channels of {node.input[0]!r} is not known")
    a = attrs_of(node)
    kernel = list(a["kernel_shape"])
    spatial = len(kernel)
    pads = list(a.get("pads", [0] * 2 * spatial))
    if text(a.get("auto_pad", "NOTSET")) not in ("NOTSET", "", "VALID") or int(a.get("ceil_mode", 0)):
        raise Unsupported("auto_pad SAME or ceil_mode (explicit pads only)")
    if any(pads) and not int(a.get("count_include_pad", 0)):
        raise Unsupported("padding that is not counted in the average")
    import numpy as np

    b = Builder(node, cx)
    weight = b.const(np.full([channels, 1, *kernel], 1.0 / float(np.prod(kernel))))
    b.op("Conv", node.input[0], weight, out=node.output[0], group=channels, kernel_shape=kernel,
         strides=list(a.get("strides", [1] * spatial)), pads=pads, dilations=list(a.get("dilations", [1] * spatial)))
    return b.nodes
