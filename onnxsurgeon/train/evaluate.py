"""Metrics of a model on data (``eval``) and its outputs on data (``run``), with onnxruntime's
inference sessions: BatchNormalization on its running statistics, Dropout off."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import modes, runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.names import Resolver
from onnxsurgeon.graph import GraphIndex
from onnxsurgeon.train import data as data_mod, losses, prepare


@dataclass(frozen=True)
class EvalReport:
    """The mean of each metric over the data."""

    metrics: tuple[tuple[str, float], ...]
    examples: int
    data: str

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": dict(self.metrics), "examples": self.examples, "data": self.data}


def evaluate(
    model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], metrics: Sequence[str], batch_size: int = 256, label: str = "the data"
) -> EvalReport:
    """The mean of each metric expression (``error(z, labels)``, any loss) over `data`."""
    if not metrics:
        raise InputError("no metric given", "add --metric 'error(z, labels)' (or any loss expression)")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    # The metrics are written in opset-13 forms (onnxruntime has no kernels for some ops
    # below opset 7): older models are converted up, as for training.
    view = prepare.versions(modes.inference_view(model), [])
    read = losses.names_read(list(metrics))
    _, data_names, missing = losses.split_names(view, read, data)
    if missing:
        raise losses.unknown_names_error(missing, view, data, label)
    batch = losses.batch_symbol(view)
    float_elem = next((t.data_type for t in view.graph.initializer if t.data_type in losses.FLOATS), onnx.TensorProto.FLOAT)
    types = {n: losses.data_type(np.asarray(data[n]), float_elem, batch) for n in data_names}
    params = prepare.candidates(view, prepare.frozen_names(view), ())
    compiled, objective = losses.compile_objective(view, None, list(metrics), types, params)
    wanted = data_mod.graph_inputs(compiled)
    dataset = data_mod.check(data, wanted, label)
    session = runtime.session(compiled)
    names = [o.name for o in compiled.graph.output]
    sums = np.zeros(len(objective.metrics))
    for _, idx in data_mod.batches(dataset.examples, batch_size, 0, 0, shuffle=False):
        feeds = dataset.batch(idx)
        out = runtime.run(session, {k: feeds[k] for k in wanted}, names, what="the model")
        values = dict(zip(names, out))
        sums += [float(values[v]) * len(idx) for _, v in objective.metrics]
    means = sums / max(dataset.examples, 1)
    return EvalReport(tuple((t, float(m)) for (t, _), m in zip(objective.metrics, means)), dataset.examples, label)


def run(
    model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], outputs: Sequence[str] = (), batch_size: int | None = None,
    label: str = "the data",
) -> dict[str, np.ndarray]:
    """The model's outputs (or the named values) on `data`, in inference mode.

    With `batch_size` the examples are run in batches and the results joined along the
    first axis; without, in one go."""
    view = modes.inference_view(model)
    index = GraphIndex(view.graph)
    wanted_values = [Resolver(index).resolve(n).value for n in outputs] if outputs else [o.name for o in view.graph.output]
    declared = {o.name for o in view.graph.output}
    for v in wanted_values:
        if v not in declared:
            view.graph.output.append(onnx.helper.make_empty_tensor_value_info(v))
    dataset = data_mod.check(data, data_mod.graph_inputs(view), label, batch_size)
    session = runtime.session(view)
    if batch_size is None:
        out = runtime.run(session, dict(dataset.arrays), wanted_values)
        return dict(zip(wanted_values, out))
    parts: dict[str, list[np.ndarray]] = {v: [] for v in wanted_values}
    for _, idx in data_mod.batches(dataset.examples, batch_size, 0, 0, shuffle=False):
        for v, value in zip(wanted_values, runtime.run(session, dataset.batch(idx), wanted_values)):
            parts[v].append(value)
    return {v: np.concatenate(p) for v, p in parts.items()}
