"""Round, Floor, Ceil and Sign for training: onnxruntime-training 1.19 has no gradient builder
for them (generate_artifacts fails: "The gradient builder has not been registered"), while
their gradient is zero wherever it exists: they are constant between their steps.

The node is kept, and the rest of the graph reads an exact copy of its output that
onnxruntime's gradient builder does not follow. The output is an integer (or +-inf, NaN):
scaled into int64's range by a power of two 2^-s (s from the value's exponent, itself
carried as an int64), it goes through Cast to int64 and back exactly, and the builder stops
at a Cast to an integer type (as at Equal, IsNaN, Where's condition and Gather's indices);
inf, NaN and -0 are put back by Where from their masks. So the op needs no gradient node, and
every value downstream is the op's (a NaN's sign bit aside). A Where on a false condition then
adds the op's input with a gradient of exactly zero: a parameter whose only way to the loss
goes through the op still gets its gradient, zero, and momentum and weight decay act on it
as they would in torch, where these ops' gradient is zero.

Inputs of another float type than float and double (float16, bfloat16) are refused with the
reason; integer inputs carry no gradient and are left as they are.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import TensorProto

from onnxsurgeon.train.rewrite_core import Builder, Context, Unsupported

ROUNDING = ("Round", "Floor", "Ceil", "Sign")


def rounding(node: onnx.NodeProto, cx: Context) -> list[onnx.NodeProto] | None:
    x = node.input[0]
    if node.output[0] in cx.kept:  # the op itself, which this rewrite wrote
        return None
    elem = cx.elem(x)
    if elem is None:
        raise Unsupported(f"the type of its input {x!r} is not known")
    if elem not in (TensorProto.FLOAT, TensorProto.DOUBLE):
        if elem in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
            kind = TensorProto.DataType.Name(elem).lower()
            raise Unsupported(f"its input {x!r} is {kind} (float and double are rewritten)")
        return None  # integers carry no gradient
    dtype = np.dtype(np.float32 if elem == TensorProto.FLOAT else np.float64)
    b = Builder(node, cx)
    r = b.op(node.op_type, x)
    cx.kept.add(r)
    zero, one = b.const(0.0), b.const(1.0)
    # onnxruntime's Where turns a -0 taken from its second input into +0: every value that may be
    # -0 comes through its third
    nan = b.op("IsNaN", r)
    odd = b.op("Or", nan, b.op("IsInf", r))
    r0 = b.op("Where", odd, zero, r)  # an integer
    if node.op_type == "Sign":
        copy = b.op("Cast", b.op("Cast", r0, to=TensorProto.INT64), to=elem)
    else:
        # |r0| < 2^(E+1) with E = floor(log2 |r0|) (log2 computed within 1 of it) has p significant
        # bits: r0 2^-s is an integer below 2^62 for any s in [E - 61, E - p + 1]; s = floor(log2 |r0|
        # - p - 2), at least 0 (below 2^(p+4), r0 fits int64 as it is)
        p = np.finfo(dtype).nmant + 1
        top = np.finfo(dtype).maxexp - p
        log2 = b.op("Mul", b.op("Log", b.op("Abs", r0)), b.const(1 / math.log(2)))
        bounded = b.op("Min", b.op("Max", b.op("Sub", log2, b.const(p + 2)), zero), b.const(top))
        s = b.op("Cast", bounded, to=TensorProto.INT64)
        powers = np.arange(top + 1, dtype=np.float64)
        scaled = b.op("Mul", r0, b.op("Gather", b.const(np.exp2(-powers)), s, axis=0))
        back = b.op("Cast", b.op("Cast", scaled, to=TensorProto.INT64), to=elem)
        copy = b.op("Mul", back, b.op("Gather", b.const(np.exp2(powers)), s, axis=0))
    # r is an integer, inf or NaN: 1 / r is below -1 only for -0 (-inf), which the Casts made +0
    signed = b.op("Where", b.op("GreaterOrEqual", b.op("Div", one, r), b.const(-1.5)), copy, b.const(-0.0))
    infinite = b.op("Where", b.op("Greater", r, zero), b.const(np.inf), b.const(-np.inf))
    special = b.op("Where", nan, b.const(np.nan), infinite)
    value = b.op("Where", odd, special, signed)
    b.op("Where", b.const(False, np.bool_), x, value, out=node.output[0])
    return b.nodes
