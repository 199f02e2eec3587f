"""Parameter values in and out: writing trained values back into a model, reading them
from a model or a checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from onnxsurgeon import meta, serde
from onnxsurgeon.errors import InputError

TRAINED = "onnxsurgeon.trained"  # metadata: how the parameters were last trained


def parameters(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The parameters of a model: floating-point initializers with at least one dimension."""
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    return {t.name: t for t in model.graph.initializer if t.data_type in floats and len(t.dims) >= 1}


def write_back(
    model: onnx.ModelProto, /, values: Mapping[str, np.ndarray | onnx.TensorProto], record: Mapping[str, Any] | None = None
) -> onnx.ModelProto:
    """A copy of `model` with the initializers named in `values` replaced (type and shape
    kept), the rest untouched, and `record` stored in the metadata. A value given as a
    tensor of the same type and shape is taken as it is (external data stays external)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    produced = {o for node in out.graph.node for o in node.output[:1]}
    if any(n not in inits and n not in produced for n in values):  # weights of a folded If branch
        from onnxsurgeon.train import lift

        produced |= lift.constant_outputs(out.graph)
    unknown = [n for n in values if n not in inits and n not in produced]
    if unknown:
        raise InputError(f"no initializer named {', '.join(repr(n) for n in unknown)} in the model")
    computed = {n: v for n, v in values.items() if n not in inits}
    for name, value in values.items():
        if name not in inits:
            continue
        t = inits[name]
        if isinstance(value, onnx.TensorProto) and value.data_type == t.data_type and list(value.dims) == list(t.dims):
            t.CopyFrom(value)
            t.name = name
            continue
        if isinstance(value, onnx.TensorProto):
            value = serde.to_array(value)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
        array = np.asarray(value)
        if tuple(array.shape) != tuple(t.dims):
            raise InputError(f"{name!r}: value of shape {list(array.shape)} for a parameter of shape {list(t.dims)}")
        t.CopyFrom(numpy_helper.from_array(array.astype(dtype, copy=False), name))
    if computed:  # parameters lifted from Constant nodes (onnxsurgeon.train.lift) go back where they were
        from onnxsurgeon.train import lift

        lift.write_back(out, {n: serde.to_array(v) if isinstance(v, onnx.TensorProto) else v for n, v in computed.items()})
    if record is not None:
        meta.put(out, TRAINED, json.dumps(record, sort_keys=True))
    return out


def from_ort_state(blob: bytes) -> dict[str, np.ndarray]:
    """The parameters (trained and updated) held in onnxruntime-training checkpoint bytes."""
    from onnxsurgeon.train import ort

    api = ort.api()
    with tempfile.TemporaryDirectory(prefix="onnxsurgeon-") as folder:
        path = Path(folder) / "state"
        path.write_bytes(blob)
        state = api.CheckpointState.load_checkpoint(path)
        return {name: p.data.copy() for name, p in state.parameters}


def from_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The parameters stored in an onnxsurgeon checkpoint file."""
    from onnxsurgeon.train import checkpoint

    return from_ort_state(checkpoint.read(path).ort_state)
