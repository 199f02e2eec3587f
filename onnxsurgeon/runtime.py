"""Running models with onnxruntime: the one place that creates inference sessions."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import serde
from onnxsurgeon.errors import EnvironmentProblem, InputError

# onnxruntime 1.19 reads models up to these versions.
MAX_IR = 10
MAX_OPSET = 21


_ORTMODULE = "onnxruntime.training.ortmodule"


def import_onnxruntime() -> Any:
    """``import onnxruntime``, without importing torch.

    On its first import, onnxruntime-training probes ``onnxruntime.training.ortmodule``,
    which imports torch when torch is installed (seconds, and memory). A ``None`` entry in
    ``sys.modules`` makes that probe fail the way onnxruntime expects ("no ORTModule")."""
    if sys.modules.get("onnxruntime") is not None:
        return sys.modules["onnxruntime"]
    blocked = _ORTMODULE not in sys.modules
    if blocked:
        sys.modules[_ORTMODULE] = None  # type: ignore[assignment]
    try:
        import onnxruntime
    except ImportError:
        raise EnvironmentProblem(
            "onnxruntime is not installed",
            "pip install onnxruntime-training-cpu==1.19.2 (it provides onnxruntime)",
        ) from None
    finally:
        if blocked and sys.modules.get(_ORTMODULE, 0) is None:
            del sys.modules[_ORTMODULE]
    return onnxruntime


def _ort() -> Any:
    onnxruntime = import_onnxruntime()
    onnxruntime.set_default_logger_severity(4)  # errors reach the user as exceptions
    return onnxruntime


def session(model: onnx.ModelProto, what: str = "the model", optimize: bool = True) -> Any:
    """An onnxruntime CPU session for a model, quiet, with external weights read in.

    ``optimize=False`` turns off graph optimizations: fusions then cannot differ between a
    model and a piece of it, so the two compute bit for bit the same values."""
    ort = _ort()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > MAX_OPSET:
        raise EnvironmentProblem(
            f"{what} uses opset {opset}; onnxruntime {ort.__version__} runs opsets up to {MAX_OPSET}",
            "convert the model to an older opset with onnx.version_converter",
        )
    if model.ir_version > MAX_IR:
        clamped = onnx.ModelProto()
        clamped.CopyFrom(model)
        clamped.ir_version = MAX_IR
        model = clamped
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(serde.to_bytes(model), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise InputError(f"onnxruntime cannot load {what}: {_first_line(e)}") from None


def run(sess: Any, feeds: dict[str, np.ndarray], outputs: list[str] | None = None, what: str = "the model",
        hint: str = "give real inputs with --data x.npz (arrays named after the graph inputs)"):
    try:
        return sess.run(outputs, feeds)
    except Exception as e:  # onnxruntime raises its own exception types
        text = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"onnxruntime failed to run {what}: {text}", hint) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
