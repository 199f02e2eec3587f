"""What ``compose`` built: the pieces, their uses and the parameters (``to_dict`` feeds
``--json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper


@dataclass(frozen=True)
class PieceSummary:
    """One piece: where it comes from, its mode and size, and its uses (their scopes)."""

    name: str
    source: str
    mode: str
    nodes: int
    parameters: int
    parameter_bytes: int
    opset: int
    converted_to: int | None
    uses: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "mode": self.mode, "nodes": self.nodes,
            "parameters": self.parameters, "parameter_bytes": self.parameter_bytes, "opset": self.opset,
            "converted_to": self.converted_to, "uses": list(self.uses),
        }


@dataclass(frozen=True)
class ParamSummary:
    """One parameter of the network: ``new`` (a new layer), ``copied`` (a learnable use's
    copy), ``frozen`` (a constant use's copy, or frozen in its source) or ``shared``."""

    name: str
    state: str
    owner: str
    type: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "owner": self.owner, "type": self.type, "bytes": self.bytes}


STATES = ("new", "copied", "frozen", "shared")


@dataclass(frozen=True)
class ComposeReport:
    """What ``compose`` built: the pieces and their uses, the parameters and the interface."""

    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]
    pieces: tuple[PieceSummary, ...]
    parameters: tuple[ParamSummary, ...]
    nodes: int
    opsets: dict[str, int]
    ir_version: int
    warnings: tuple[str, ...] = ()

    def counts(self) -> dict[str, dict[str, int]]:
        out = {s: {"count": 0, "bytes": 0} for s in STATES}
        for p in self.parameters:
            out[p.state]["count"] += 1
            out[p.state]["bytes"] += p.bytes
        return out

    @property
    def parameter_bytes(self) -> int:
        return sum(p.bytes for p in self.parameters)

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": n, "type": t} for n, t in self.inputs],
            "outputs": [{"name": n, "type": t} for n, t in self.outputs],
            "pieces": [p.to_dict() for p in self.pieces],
            "parameters": [p.to_dict() for p in self.parameters],
            "counts": self.counts(),
            "parameter_bytes": self.parameter_bytes,
            "nodes": self.nodes,
            "opsets": dict(self.opsets),
            "ir_version": self.ir_version,
            "warnings": list(self.warnings),
        }
def nbytes(t: onnx.TensorProto) -> int:
    try:
        itemsize = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 0
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize
