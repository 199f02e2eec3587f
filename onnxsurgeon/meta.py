"""What onnxsurgeon records in a model's metadata: the parameter mode, which parameters are
frozen, and where a piece was cut from. Stored as ``metadata_props`` entries so that any
ONNX tool carries them along.
"""

from __future__ import annotations

import json
from typing import Any

import onnx

MODE = "onnxsurgeon.params"
FROZEN = "onnxsurgeon.frozen"  # JSON list of the parameters that never change
SHARED = "onnxsurgeon.shared"  # JSON list of the parameters shared by several uses
CUT = "onnxsurgeon.cut"
COMPOSE = "onnxsurgeon.compose"
DATA = "onnxsurgeon.data"  # JSON {"file", "id"}: the data file saved with the model


def get(model: onnx.ModelProto, key: str) -> str | None:
    for entry in model.metadata_props:
        if entry.key == key:
            return entry.value
    return None


def put(model: onnx.ModelProto, key: str, value: str | None) -> None:
    """Set (or with None, remove) one metadata entry, keeping the others in order."""
    kept = [(e.key, e.value) for e in model.metadata_props if e.key != key]
    if value is not None:
        kept.append((key, value))
    del model.metadata_props[:]
    for k, v in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v


def mode(model: onnx.ModelProto) -> str | None:
    """The parameter mode stored by ``extract``, if any."""
    return get(model, MODE)


def _names(model: onnx.ModelProto, key: str) -> set[str]:
    raw = get(model, key)
    if not raw:
        return set()
    try:
        names = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):  # damaged, or nested too deeply to read
        return set()
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def frozen(model: onnx.ModelProto) -> set[str]:
    """Names of the parameters marked frozen."""
    return _names(model, FROZEN)


def frozen_params(model: onnx.ModelProto, mode: str | None = None) -> set[str]:
    """The parameters that never change: all of them in ``constant`` mode (the model's
    stored mode unless ``mode`` is given), else those marked frozen. The one rule that
    ``extract``, ``compose`` and ``train`` follow."""
    names = {t.name for t in model.graph.initializer}
    if (mode if mode is not None else get(model, MODE)) == "constant":
        return names
    return frozen(model) & names


def shared(model: onnx.ModelProto) -> set[str]:
    """Names of the parameters marked shared: the whole set in a ``shared`` piece."""
    if mode(model) == "shared":
        return {t.name for t in model.graph.initializer}
    return _names(model, SHARED)


def set_frozen(model: onnx.ModelProto, names: set[str]) -> None:
    put(model, FROZEN, json.dumps(sorted(names)) if names else None)


def cut(model: onnx.ModelProto) -> dict[str, Any] | None:
    """The provenance of a piece: source, inputs and outputs (piece name -> source value)."""
    raw = get(model, CUT)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):  # damaged, or nested too deeply to read
        return None
    if not isinstance(value, dict):
        return None
    for key in ("inputs", "outputs"):  # name maps; anything else in a crafted file is dropped
        ports = value.get(key)
        if ports is not None and not (isinstance(ports, dict) and all(isinstance(v, str) for v in {**ports}.values())):
            del value[key]
    return value
