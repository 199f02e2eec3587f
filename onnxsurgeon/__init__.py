"""onnxsurgeon: cut pieces out of trained ONNX models, choose what happens to their
parameters, compose them into new networks and train on (CNTK's CloneFunction for ONNX).

    import onnxsurgeon as osg
    model = osg.load("autoencoder.onnx")
    piece, report = osg.extract(model, inputs=["input"], outputs=["L4_y"], params="constant")
    osg.save(piece, "feat.onnx")
    assert osg.verify(model, piece).ok

Every function takes models and returns new ones plus a report; none prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public names, imported on first use so that `import onnxsurgeon` (and the CLI's --help)
# stays fast.
_EXPORTS = {
    "load": "onnxsurgeon.serde",
    "save": "onnxsurgeon.serde",
    "extract": "onnxsurgeon.cut",
    "ExtractReport": "onnxsurgeon.cut",
    "verify": "onnxsurgeon.compare",
    "VerifyReport": "onnxsurgeon.compare",
    "nodes": "onnxsurgeon.inspection",
    "params": "onnxsurgeon.inspection",
    "info": "onnxsurgeon.inspection",
    "resolve": "onnxsurgeon.names",
    "compose": "onnxsurgeon.composition",
    "Network": "onnxsurgeon.composition",
    "Piece": "onnxsurgeon.composition",
    "load_piece": "onnxsurgeon.composition",
    "ComposeReport": "onnxsurgeon.composition",
    "TrainSettings": "onnxsurgeon.train.loop",
    "TrainReport": "onnxsurgeon.train.loop",
    "OptimizerSettings": "onnxsurgeon.train.optim",
    "Schedule": "onnxsurgeon.train.optim",
    "evaluate": "onnxsurgeon.train.evaluate",
    "transfer": "onnxsurgeon.train.transfer",
    "SurgeonError": "onnxsurgeon.errors",
    "InputError": "onnxsurgeon.errors",
    "CheckFailed": "onnxsurgeon.errors",
    "EnvironmentProblem": "onnxsurgeon.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from onnxsurgeon.composition import ComposeReport, Network, Piece, compose, load_piece
    from onnxsurgeon.cut import ExtractReport, extract
    from onnxsurgeon.errors import CheckFailed, EnvironmentProblem, InputError, SurgeonError
    from onnxsurgeon.inspection import info, nodes, params
    from onnxsurgeon.names import resolve
    from onnxsurgeon.serde import load, save
    from onnxsurgeon.compare import VerifyReport, verify


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxsurgeon' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
