"""Running models with onnxruntime: the one place that creates inference sessions."""

from __future__ import annotations

import re
import sys
import weakref
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import serde
from onnxsurgeon.errors import EnvironmentProblem, InputError, SurgeonError
from onnxsurgeon.graph import default_opset, subgraphs

# onnxruntime 1.19 reads models up to these versions.
MAX_IR = 10
MAX_OPSET = 21
# onnxruntime's session set-up time doubles with each level of If/Loop/Scan nesting (about
# half a second at 16 levels, minutes at 25): deeper models are refused rather than hang.
MAX_NESTING = 16

# onnxruntime reads external initializers in place from the OrtValues handed to it and holds
# no reference to them: they must live exactly as long as their session. Sessions take no
# attributes of ours through public API, so the values are held here, dropped with the session.
_WEIGHTS_OF: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()
_GRAPH_OF: weakref.WeakKeyDictionary[Any, onnx.GraphProto] = weakref.WeakKeyDictionary()


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
    """An onnxruntime CPU session for a model, quiet; external weights are mapped from
    their files, not copied.

    ``optimize=False`` turns off graph optimizations: fusions then cannot differ between a
    model and a piece of it, so the two compute bit for bit the same values."""
    ort = _ort()
    opset = default_opset(model)
    if opset > MAX_OPSET:
        raise EnvironmentProblem(
            f"{what} uses opset {opset}; onnxruntime {ort.__version__} runs opsets up to {MAX_OPSET}",
            "convert the model to an older opset with onnx.version_converter",
        )
    depth = nesting(model.graph)
    if depth > MAX_NESTING:
        raise InputError(
            f"{what} nests subgraphs {depth} levels deep; onnxsurgeon runs models up to {MAX_NESTING} levels",
            "flatten the model's nested If/Loop/Scan nodes",
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
        # Pre-packing copies weights into a faster layout: worth it for many runs, but a
        # check runs once and would hold every weight twice.
        options.add_session_config_entry("session.disable_prepacking", "1")
    # External weights are handed over mapped from their files, not copied into the model's
    # bytes: that keeps memory down, and a model over protobuf's 2 GB limit loads.
    mapped = {t.name: serde.mapped_array(t) for t in model.graph.initializer if serde.is_external(t)}
    mapped = {name: array for name, array in mapped.items() if array is not None}
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in mapped.values()]
    if mapped:
        options.add_external_initializers(list(mapped), values)
    try:
        sess = ort.InferenceSession(serde.to_bytes(model, keep=mapped), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types for bad models
        raise failure(e, f"onnxruntime cannot load {what}", model.graph) from None
    if values:
        _WEIGHTS_OF[sess] = values
    _GRAPH_OF[sess] = model.graph  # to name the node of a failure
    return sess


def nesting(graph: onnx.GraphProto) -> int:
    """How deep If/Loop/Scan bodies nest in a graph (0 for none), without recursion."""
    deepest, stack = 0, [(graph, 0)]
    while stack:
        g, depth = stack.pop()
        deepest = max(deepest, depth)
        for node in g.node:
            stack.extend((sub, depth + 1) for sub in subgraphs(node))
    return deepest


def run(sess: Any, feeds: dict[str, np.ndarray], outputs: list[str] | None = None, what: str = "the model",
        hint: str | None = "give real inputs with --data x.npz (arrays named after the graph inputs)"):
    """`sess` run on `feeds`; onnxruntime's failure as a :func:`failure`, with `hint` (None: the
    hint for the user's own data)."""
    try:
        return sess.run(outputs, feeds)
    except Exception as e:  # onnxruntime raises its own exception types
        raise failure(e, f"onnxruntime failed to run {what}", _GRAPH_OF.get(sess), hint) from None


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


_NO_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\) node with name '([^']*)'")
_RUNNING = re.compile(r"while running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.S)
_STATUS = re.compile(r"\[ONNXRuntimeError\] : \d+ : (\w+) : (.*)", re.S)


def failure(e: Exception, what: str, graph: onnx.GraphProto | None = None, hint: str | None = None) -> SurgeonError:
    """An error of onnxruntime (building a session, training or running one) in words, naming
    the node and op where it can be traced back to the model: exit 3 for a kernel onnxruntime
    does not have (a missing component), exit 2 otherwise (the model or data do not fit).
    One mapping for ``run``, ``eval`` and ``train``; `graph` is the forward graph, whose node a
    gradient node (``NODE_Grad/...``) is traced back to."""
    text = " ".join(str(e).split()) or type(e).__name__
    ops = {n.name: n.op_type for n in graph.node if n.name} if graph is not None else {}

    def where(node: str, op: str) -> str:
        forward = node.split("_Grad/")[0] if "_Grad/" in node else None
        if forward is not None and forward in ops:
            return f"in the gradient of node {forward!r} ({ops[forward]}; onnxruntime's {op} node)"
        if node in ops:
            return f"in node {node!r} ({ops[node]})"
        return f"in onnxruntime's {op} node {node!r}" if node else f"in a {op} node"

    m = _NO_KERNEL.search(text)
    if m:
        op, version, node = m.groups()
        forward = node.split("_Grad/")[0] if "_Grad/" in node else None
        fix = (
            f"freeze the parameters in front of node {forward!r} (--freeze PATTERN) so that no gradient flows through it, "
            "or cut that part out with extract --params constant"
            if forward is not None
            else "rewrite the node in ops onnxruntime runs on the CPU"
        )
        return EnvironmentProblem(f"{what}: onnxruntime {_version()} has no CPU kernel for {op} (version {version}), needed {where(node, op)}", hint or fix)
    m = _RUNNING.search(text)
    if m:
        op, node, message = m.groups()
        return InputError(
            f"{what}: {where(node, op)}: {message.strip()}",
            hint or "check the shapes of the data against the model's inputs: some exports only run at the sizes "
            "they were traced with (e.g. one sequence length)",
        )
    m = _STATUS.search(text)
    detail = f"{m.group(1)}: {m.group(2).strip()}" if m else text
    return InputError(f"{what}: {detail}", hint)


def from_onnxruntime(e: BaseException) -> bool:
    """Whether an exception was raised by onnxruntime (its own types, or the RuntimeError its
    training API raises), as opposed to a bug of ours."""
    return isinstance(e, RuntimeError) or type(e).__module__.startswith("onnxruntime")


def _version() -> str:
    module = sys.modules.get("onnxruntime")
    return getattr(module, "__version__", "") if module is not None else ""
