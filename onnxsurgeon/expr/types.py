"""Tensor types, values and records, and the shape rules (broadcasting, fitting a type to a
port with symbolic dims).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from onnx import helper

from onnxsurgeon import dtypes
from onnxsurgeon.errors import InputError
from onnxsurgeon.names import alias

Dim = int | str | None


@dataclass(frozen=True)
class TensorType:
    """The element type and shape of a tensor; a dim is a size, a symbol such as ``"N"``, or
    None when unknown; the shape is None when even the rank is unknown."""

    elem: int
    shape: tuple[Dim, ...] | None = None

    @classmethod
    def parse(cls, text: str) -> TensorType:
        """``float32[N,64]`` as a type."""
        t = dtypes.parse_type(text) if isinstance(text, str) else None
        if t is None:
            why = dtypes.type_problem(text) if isinstance(text, str) else None
            raise InputError(f"{text!r} is not a tensor type" + (f": {why}" if why else ""), "write a type such as float32[N,64] or int64[N]")
        return cls.from_proto(t)  # type: ignore[return-value]

    @classmethod
    def from_proto(cls, t: onnx.TypeProto | None) -> TensorType | None:
        if t is None or t.WhichOneof("value") != "tensor_type" or not t.tensor_type.elem_type:
            return None
        tt = t.tensor_type
        if not tt.HasField("shape"):
            return cls(tt.elem_type, None)
        dims: list[Dim] = []
        for d in tt.shape.dim:
            which = d.WhichOneof("value")
            # a negative size (paddle2onnx writes -1 for "any") is not a size: unknown
            value = d.dim_value if which == "dim_value" and d.dim_value >= 0 else None
            dims.append(value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
        return cls(tt.elem_type, tuple(dims))

    def to_proto(self) -> onnx.TypeProto:
        return helper.make_tensor_type_proto(self.elem, None if self.shape is None else list(self.shape))

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def dtype(self) -> str:
        return dtypes.dtype_name(self.elem)

    def __str__(self) -> str:
        return dtypes.show(self.to_proto())


@dataclass(frozen=True)
class Value:
    """A tensor of the network: its name in the graph, its type, and the name a person gave
    it (``label``) where that differs, for messages."""

    name: str
    type: TensorType
    label: str | None = None

    @property
    def shown(self) -> str:
        return self.label or self.name

    def __str__(self) -> str:
        return f"{self.shown} : {self.type}"


@dataclass(frozen=True)
class Record:
    """The named outputs of one use of a piece: ``record.z`` or ``record["z"]``."""

    owner: str
    fields: tuple[tuple[str, Value], ...]

    def names(self) -> list[str]:
        return [k for k, _ in self.fields]

    def member(self, name: str) -> Value:
        """The output called ``name``, exactly or by its CNTK alias (``L4_y`` for ``L4.y``)."""
        found = dict(self.fields)
        if name in found:
            return found[name]
        matches = [k for k in found if alias(k) == alias(name)]
        if len(matches) == 1:
            return found[matches[0]]
        close = difflib.get_close_matches(name, list(found), n=3, cutoff=0.5)
        did = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"{self.owner} has no output {name!r}{did}",
            f"its outputs are: {', '.join(self.names())}",
        )

    def only(self) -> Value | None:
        return self.fields[0][1] if len(self.fields) == 1 else None

    def __getitem__(self, name: str) -> Value:
        return self.member(name)

    def __getattr__(self, name: str) -> Value:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self.member(name)
        except InputError as e:
            raise AttributeError(str(e)) from None


def broadcast(a: TensorType, b: TensorType) -> tuple[Dim, ...] | None:
    """The shape of an elementwise result (numpy rules), or an InputError naming the dims
    that do not line up."""
    if a.shape is None or b.shape is None:
        return None
    out: list[Dim] = []
    n = max(len(a.shape), len(b.shape))
    pa = (1,) * (n - len(a.shape)) + a.shape
    pb = (1,) * (n - len(b.shape)) + b.shape
    for axis, (x, y) in enumerate(zip(pa, pb)):
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif x is None or y is None:
            out.append(x if y is None else y)
        else:
            raise InputError(
                f"the shapes {a} and {b} do not line up: dimension {axis} is {show_dim(x)} and {show_dim(y)}",
                "symbolic dimensions must carry the same name (e.g. both N), sizes must be equal or 1",
            )
    return tuple(out)


def show_dim(d: Dim) -> str:
    return "unknown" if d is None else repr(d) if isinstance(d, str) else str(d)


def fit(arg: TensorType, expected: TensorType, what: str) -> dict[str, Dim]:
    """Check that a value of type ``arg`` can be fed where ``expected`` is declared.

    Returns how the symbols of ``expected`` are bound (``{"N": 4}`` where a symbolic
    dimension receives a fixed size, ``{"T": "Tq"}`` where it receives another symbol);
    raises an InputError saying which dims do not line up. The first (batch) dimension is
    the exception: a symbol there must meet the same symbol or a size, so that batches of
    different names are not mixed; a symbolic length further in (a DSSM tower's ``T``) may
    be another symbol in each use (the query's ``Tq``, the document's ``Td``)."""
    if arg.elem != expected.elem:
        raise InputError(f"{what} must be {expected}, got {arg} (element type {arg.dtype}, not {expected.dtype})")
    if arg.shape is None or expected.shape is None:
        return {}
    if len(arg.shape) != len(expected.shape):
        raise InputError(f"{what} must be {expected}, got {arg} (rank {len(arg.shape)}, not {len(expected.shape)})")
    bound: dict[str, Dim] = {}
    bad = []
    for axis, (x, y) in enumerate(zip(arg.shape, expected.shape)):
        if y is None or x == y:
            ok = True
        elif isinstance(y, str):
            ok = x is None or isinstance(x, int) or (axis > 0 and isinstance(x, str))
            if ok and bound.setdefault(y, x) != x:
                ok = False
        else:
            ok = x is None
        if not ok:
            bad.append(f"dimension {axis} is {show_dim(x)} where {show_dim(y)} is expected")
    if bad:
        raise InputError(
            f"{what} must be {expected}, got {arg}: " + "; ".join(bad),
            "symbolic dimensions must line up by name (e.g. both N); declare the input with the same dims",
        )
    return bound


def substitute(t: TensorType, bound: Mapping[str, Dim]) -> TensorType:
    """A type with its symbolic dims replaced as ``fit`` bound them."""
    if not bound or t.shape is None:
        return t
    return TensorType(t.elem, tuple(bound.get(d, d) if isinstance(d, str) else d for d in t.shape))
