"""Arrays in and out of the library: reading the arrays of an ``.npz`` file without
unpickling anything (``extract --data``, ``verify --data``, ``train``, ``eval``, ``run``),
and seeded random values for a model's inputs (``verify`` without data, type probes).
"""

from __future__ import annotations

import struct
import zipfile
import zlib

import numpy as np
import onnx

from onnxsurgeon.errors import InputError

# The most random data made for one input (bytes); a larger declared shape is refused.
RANDOM_LIMIT = 1 << 30


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Seeded random values for the graph inputs that have no default (initializer)."""
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    bounds = index_bounds(model.graph)
    feeds = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        feeds[v.name] = _random_tensor(v, rng, batch, bounds.get(v.name))
    return feeds


# Ops that pass integer values through unchanged on their first input, so that an input
# read through them still indexes what they feed.
_PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Transpose"}


def index_bounds(graph: onnx.GraphProto) -> dict[str, int]:
    """For graph inputs used as indices of a Gather (an embedding lookup: ``input_ids``,
    ``token_type_ids``) whose table size is known: the size, the bound random indices must
    stay below. A BERT model's ``token_type_ids`` index a table of 2 rows."""
    inits = {t.name: t for t in graph.initializer}
    types = {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append(node)

    def table_rows(node: onnx.NodeProto) -> int | None:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        data = node.input[0]
        if data in inits:
            dims = list(inits[data].dims)
        elif data in types and types[data].tensor_type.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in types[data].tensor_type.shape.dim]
        else:
            return None
        if not -len(dims) <= axis < len(dims):
            return None
        rows = dims[axis]
        return rows if rows > 0 else None

    out: dict[str, int] = {}
    for v in graph.input:
        if v.name in inits:
            continue
        seen, todo, bound = {v.name}, [v.name], None
        while todo:
            name = todo.pop()
            for node in readers.get(name, []):
                if node.op_type in ("Gather", "GatherElements") and node.domain in ("", "ai.onnx") and len(node.input) > 1 and node.input[1] == name:
                    rows = table_rows(node)
                    if rows is not None:
                        bound = rows if bound is None else min(bound, rows)
                elif node.op_type in _PASS_THROUGH and node.input[0] == name:
                    for o in node.output:
                        if o and o not in seen:
                            seen.add(o)
                            todo.append(o)
        if bound is not None:
            out[v.name] = bound
    return out


def _random_tensor(v: onnx.ValueInfoProto, rng: np.random.Generator, batch: int, bound: int | None = None) -> np.ndarray:
    if v.type.WhichOneof("value") != "tensor_type":
        raise InputError(
            f"cannot make random data for input {v.name!r} (not a tensor)", "give real inputs with --data x.npz"
        )
    tt = v.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    shape = [d.dim_value if d.WhichOneof("value") == "dim_value" and d.dim_value > 0 else batch for d in tt.shape.dim]
    size = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
    if size > RANDOM_LIMIT:  # a declared shape such as [2**40] must not exhaust memory
        raise InputError(
            f"cannot make random data for input {v.name!r}: its shape {shape} needs {size:,} bytes",
            "give real inputs with --data x.npz",
        )
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        if bound is not None:  # indices of a table: below its size
            return rng.integers(0, bound, shape).astype(dtype)
        return rng.integers(1, 4, shape).astype(dtype)
    raise InputError(
        f"cannot make random data for input {v.name!r} of type {dtype}", "give real inputs with --data x.npz"
    )


def load_data(path: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz file, never unpickling anything.

    Each member's header is checked against the member's size before it is read, so a
    damaged or crafted file cannot make numpy allocate what its header claims."""
    hint = "save the arrays with numpy.savez(path, name=array, ...)"
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}", "check the path of the data file") from None
    except _DAMAGED:
        raise InputError(f"{path} is not a readable .npz file (not a zip of plain numpy arrays)", hint) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array, not an .npz file of named arrays", hint)
    try:
        with loaded as f:
            for name in f.zip.namelist():
                problem = _member_problem(f.zip, name)
                if problem:
                    raise InputError(f"{path} is not a readable .npz file: {problem}", hint)
            return {k: f[k] for k in f.files}
    except _DAMAGED as e:
        reason = "it holds objects, which are never unpickled" if "pickle" in str(e) else "it is damaged"
        raise InputError(f"{path} is not a readable .npz file: {reason}", hint) from None


_DAMAGED = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, struct.error, NotImplementedError)


def _member_problem(z: zipfile.ZipFile, name: str) -> str | None:
    """Why one member of an .npz cannot be read as a plain array, or None."""
    info = z.getinfo(name)
    with z.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(fp)
        if dtype.hasobject:
            return "it holds objects, which are never unpickled"
        count = 1
        for d in shape:
            count *= d
        if fp.tell() + count * dtype.itemsize != info.file_size:
            return f"it is damaged (member {name!r} is {info.file_size:,} bytes, its header says {shape})"
    return None
