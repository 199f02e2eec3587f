"""Tensor types written by people: ``float32[N,1640]``, and the reverse for display."""

from __future__ import annotations

import re

import onnx

_DTYPES = {
    "float32": onnx.TensorProto.FLOAT,
    "float": onnx.TensorProto.FLOAT,
    "float16": onnx.TensorProto.FLOAT16,
    "half": onnx.TensorProto.FLOAT16,
    "bfloat16": onnx.TensorProto.BFLOAT16,
    "float64": onnx.TensorProto.DOUBLE,
    "double": onnx.TensorProto.DOUBLE,
    "int8": onnx.TensorProto.INT8,
    "int16": onnx.TensorProto.INT16,
    "int32": onnx.TensorProto.INT32,
    "int64": onnx.TensorProto.INT64,
    "uint8": onnx.TensorProto.UINT8,
    "uint16": onnx.TensorProto.UINT16,
    "uint32": onnx.TensorProto.UINT32,
    "uint64": onnx.TensorProto.UINT64,
    "bool": onnx.TensorProto.BOOL,
    "string": onnx.TensorProto.STRING,
}
DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64", "int8", "int16", "int32", "int64",
               "uint8", "uint16", "uint32", "uint64", "bool", "string")
_NAMES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}
# The floating-point element types (what losses, layers and gradients work in).
FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_TYPE = re.compile(r"^(?P<dtype>[a-z]+[0-9]*)(?:\[(?P<dims>[^\[\]]*)\])?$")


def dtype_name(elem_type: int) -> str:
    if elem_type in _NAMES:
        return _NAMES[elem_type]
    if not elem_type:
        return "?"
    try:
        return onnx.TensorProto.DataType.Name(elem_type).lower()
    except ValueError:  # a type number onnx does not define (a damaged or hostile file)
        return f"unknown-type-{elem_type}"


def parse_type(text: str) -> onnx.TypeProto | None:
    """``float32[N,3]`` as a tensor type, or None if the text is not a type."""
    m = _TYPE.match(text.strip())
    if not m or m.group("dtype") not in _DTYPES:
        return None
    elem = _DTYPES[m.group("dtype")]
    if m.group("dims") is None:
        return onnx.helper.make_tensor_type_proto(elem, None)
    dims: list[int | str | None] = []
    for d in _dims(m.group("dims")):
        if re.fullmatch(r"\d+", d):
            dims.append(int(d))
        elif d in ("?", ""):
            dims.append(None)
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d):
            dims.append(d)
        else:
            return None
    return onnx.helper.make_tensor_type_proto(elem, dims)


def _dims(text: str) -> list[str]:
    return [d.strip() for d in text.split(",")] if text.strip() else []


def type_problem(text: str) -> str | None:
    """Why ``text`` is not a type such as ``float32[N,3]``, in words for a message; None if it is one."""
    m = _TYPE.match(text.strip())
    if m is None:
        return f"{text!r} is not written as TYPE[DIMS]"
    if m.group("dtype") not in _DTYPES:
        return f"unknown type {m.group('dtype')!r}"
    if parse_type(text) is None:
        bad = [d for d in _dims(m.group("dims")) if parse_type(f"float32[{d}]") is None]
        return f"{', '.join(map(repr, bad))} is not a dimension (a size such as 64, a name such as N, or ?)"
    return None


def split_type(text: str) -> tuple[str, onnx.TypeProto | None]:
    """Split ``NAME:float32[N,3]`` into the name and the type; names may contain ``:``."""
    head, sep, tail = text.rpartition(":")
    if sep and head:
        t = parse_type(tail)
        if t is not None:
            return head, t
    return text, None


def rank(t: onnx.TypeProto | None) -> int | None:
    if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.HasField("shape"):
        return None
    return len(t.tensor_type.shape.dim)


def show(t: onnx.TypeProto | None) -> str:
    """A type the way a person writes it: ``float32[N,16]``, ``seq(float32[3])``, ``?``."""
    if t is None:
        return "?"
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        tt = t.tensor_type
        name = dtype_name(tt.elem_type)
        if not tt.HasField("shape"):
            return name
        dims = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            dims.append(str(d.dim_value) if which == "dim_value" else d.dim_param if which == "dim_param" else "?")
        return f"{name}[{','.join(dims)}]"
    if kind == "sequence_type":
        return f"seq({show(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({show(t.optional_type.elem_type)})"
    if kind == "map_type":
        return f"map({dtype_name(t.map_type.key_type)},{show(t.map_type.value_type)})"
    return "?"
