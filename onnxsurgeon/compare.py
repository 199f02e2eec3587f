"""Checking that a piece computes exactly what its source computed at the same points."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import datafiles, dtypes, meta, modes, runtime, serde
from onnxsurgeon.arrays import random_inputs
from onnxsurgeon.errors import InputError
from onnxsurgeon.graph import GraphIndex, upstream
from onnxsurgeon.names import alias


@dataclass(frozen=True)
class OutputCheck:
    """The comparison of one output of the piece with the source's value."""

    name: str
    value: str
    shape: tuple[int, ...]
    max_abs_diff: float
    max_rel_diff: float
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "shape": list(self.shape),
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class VerifyReport:
    """The result of ``verify``: one check per output of the piece."""

    outputs: tuple[OutputCheck, ...]
    rtol: float
    atol: float
    data: str  # "random (seed N)" or the data file

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rtol": self.rtol,
            "atol": self.atol,
            "data": self.data,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def verify(
    original: onnx.ModelProto,
    piece: onnx.ModelProto,
    /,
    data: dict[str, np.ndarray] | None = None,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    seed: int = 0,
    data_label: str | None = None,
) -> VerifyReport:
    """Run the original and the piece with onnxruntime and compare the piece's outputs
    with the original's values at the same points.

    The piece is fed the values the original computes at its inputs, so both see the same
    data. ``data`` gives the original's graph inputs; random seeded values are used if None.
    A ``constant`` piece is compared with the original in inference mode (BatchNormalization
    on running statistics, Dropout off), the semantics it was frozen to.
    """
    if seed < 0:
        raise InputError(f"--seed must be a non-negative integer, not {seed}", "use 0 or a positive seed")
    for option, value in (("--rtol", rtol), ("--atol", atol)):
        if not (math.isfinite(value) and value >= 0):  # below 0 or nan every output "differs"; inf accepts anything
            raise InputError(f"{option} must be a finite number >= 0, not {value}", "e.g. --rtol 1e-5 --atol 1e-6 (0 asks for equal values)")
    if meta.mode(piece) == "constant":
        original = modes.inference_view(original)
    cut = meta.cut(piece) or {}
    in_map: dict[str, str] = cut.get("inputs") or {v.name: v.name for v in piece.graph.input}
    out_map: dict[str, str] = cut.get("outputs") or {v.name: v.name for v in piece.graph.output}
    index = GraphIndex(original.graph)
    piece_inits = {t.name for t in piece.graph.initializer}
    piece_inputs = [v.name for v in piece.graph.input if v.name not in piece_inits]
    wanted = [in_map.get(n, n) for n in piece_inputs] + [out_map.get(v.name, v.name) for v in piece.graph.output]
    missing = [w for w in wanted if not index.has_value(w)]
    if missing:
        raise InputError(
            "the piece names values the original model does not have: " + ", ".join(map(repr, missing)),
            "verify a piece against the model it was cut from",
        )

    if data is None:
        feeds = random_inputs(original, seed)
    else:
        by_alias: dict[str, list[str]] = {}
        for key in data:
            by_alias.setdefault(alias(key), []).append(key)
        # an array is named after its input, or after its alias (input_0 for input:0), as in train, eval and run
        found = {n: [n] if n in data else by_alias.get(alias(n), []) for n in index.inputs}
        absent = [n for n, hits in found.items() if len(hits) != 1]
        if absent:
            raise InputError(
                "the data has no array for input " + ", ".join(map(repr, absent)),
                f"name the arrays after the graph inputs (or their aliases): {', '.join(index.inputs)}",
            )
        feeds = {n: data[hits[0]] for n, hits in found.items()}
        _check_data(index, feeds)
    hint = (
        "check the arrays' shapes and types against the inputs listed by: onnxsurgeon info ORIGINAL"
        if data is not None
        else "give real inputs with --data x.npz (arrays named after the graph inputs)"
    )
    values = _values(original, index, feeds, wanted, hint)

    sess = runtime.session(piece, "the piece", optimize=False)
    piece_feeds = {n: values[in_map.get(n, n)] for n in piece_inputs}
    names = [o.name for o in sess.get_outputs()]
    got = dict(zip(names, runtime.run(sess, piece_feeds, names, "the piece")))
    checks = [_compare(v.name, out_map.get(v.name, v.name), got[v.name], values[out_map.get(v.name, v.name)], rtol, atol)
              for v in piece.graph.output]
    label = data_label or (f"random (seed {seed})" if data is None else "given data")
    return VerifyReport(tuple(checks), rtol, atol, label)


def _check_data(index: GraphIndex, feeds: dict[str, np.ndarray]) -> None:
    """Arrays must fit the declared input types; say which does not, before running. Arrays
    of another float (int) type are cast in place, as train, eval and run cast them."""
    problems = []
    for name, array in feeds.items():
        t = index.inputs[name].type
        if t.WhichOneof("value") != "tensor_type":
            continue
        want = dtypes.show(t)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type) if t.tensor_type.elem_type else None
        # some exporters write -1 (or 0) for a dynamic dim
        dims = [d.dim_value if d.WhichOneof("value") == "dim_value" and d.dim_value > 0 else None
                for d in t.tensor_type.shape.dim]
        if dtype is not None and array.dtype != dtype and datafiles.castable(array.dtype, dtype):
            array = feeds[name] = array.astype(dtype)
        fits = (dtype is None or array.dtype == dtype) and (
            not t.tensor_type.HasField("shape")
            or (array.ndim == len(dims) and all(d is None or d == s for d, s in zip(dims, array.shape)))
        )
        if not fits:
            problems.append(f"array {name!r} is {array.dtype}{list(array.shape)}, the input {name!r} is {want}")
    if problems:
        raise InputError("the data does not fit the model: " + "; ".join(problems), "save arrays of the declared types and shapes")


def _values(model: onnx.ModelProto, index: GraphIndex, feeds: dict[str, np.ndarray], names: list[str], hint: str):
    """Values of the named tensors in one run of the model."""
    out: dict[str, np.ndarray] = {}
    for n in names:
        if n in feeds:
            out[n] = feeds[n]
        elif n in index.initializers:
            t = index.initializers[n]
            out[n] = serde.to_array(t)
    wanted = [n for n in dict.fromkeys(names) if n not in out]
    if wanted:
        declared = {o.name: o for o in model.graph.output}
        outputs = []
        for n in wanted:
            t = index.type_of(n)
            outputs.append(declared.get(n) or (onnx.helper.make_value_info(n, t) if t else onnx.ValueInfoProto(name=n)))
        probe = upstream(model, outputs, index)  # runs, and loads the weights of, only what is needed
        sess = runtime.session(probe, "the original model", optimize=False)
        out.update(zip(wanted, runtime.run(sess, feeds, wanted, "the original model", hint)))
    return out


def _compare(name: str, value: str, got: Any, want: Any, rtol: float, atol: float) -> OutputCheck:
    if isinstance(got, list) or isinstance(want, list):  # sequences: element by element
        if not (isinstance(got, list) and isinstance(want, list)) or len(got) != len(want):
            return OutputCheck(name, value, (len(got) if isinstance(got, list) else -1,), float("inf"), float("inf"), False)
        parts = [_compare(name, value, g, w, rtol, atol) for g, w in zip(got, want)]
        return OutputCheck(
            name, value, (len(got),),
            max((p.max_abs_diff for p in parts), default=0.0),
            max((p.max_rel_diff for p in parts), default=0.0),
            all(p.ok for p in parts),
        )
    if got is None or want is None:  # an optional without a value
        return OutputCheck(name, value, (), 0.0, 0.0, got is None and want is None)
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return OutputCheck(name, value, tuple(got.shape), float("inf"), float("inf"), False)
    if got.size == 0:
        return OutputCheck(name, value, got.shape, 0.0, 0.0, True)
    if np.issubdtype(got.dtype, np.floating) or np.issubdtype(got.dtype, np.complexfloating):
        g64, w64 = got.astype(np.float64), want.astype(np.float64)
        same_nan = np.array_equal(np.isnan(g64), np.isnan(w64))
        finite = np.isfinite(g64) & np.isfinite(w64)
        same_inf = np.array_equal(np.where(finite, 0, g64), np.where(finite, 0, w64), equal_nan=True)
        diff = np.abs(g64 - w64)[finite]
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = np.abs(w64[finite])
        rel = diff[scale > 0] / scale[scale > 0]  # relative to nonzero values only
        max_rel = float(rel.max()) if rel.size else 0.0
        ok = same_nan and same_inf and bool(np.all(diff <= atol + rtol * np.abs(w64[finite])))
        return OutputCheck(name, value, got.shape, max_abs, max_rel, ok)
    equal = bool(np.array_equal(got, want))
    return OutputCheck(name, value, got.shape, 0.0 if equal else float("inf"), 0.0 if equal else float("inf"), equal)
