"""Metrics of a model on data (``eval``) and its outputs on data (``run``), with onnxruntime's
inference sessions: BatchNormalization on its running statistics, Dropout off."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import modes, runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.names import Resolver, alias
from onnxsurgeon.graph import GraphIndex
from onnxsurgeon.train import data as data_mod, losses, prepare


@dataclass(frozen=True)
class EvalReport:
    """The mean of each metric over the data."""

    metrics: tuple[tuple[str, float], ...]
    examples: int
    data: str
    layout: data_mod.Layout = field(default_factory=data_mod.Layout)

    def to_dict(self) -> dict[str, Any]:
        report = {"metrics": dict(self.metrics), "examples": self.examples, "data": self.data}
        return dict(report, layout=self.layout.to_dict()) if self.layout else report


def evaluate(
    model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], metrics: Sequence[str], batch_size: int = 256, label: str = "the data",
    *, fixed: Sequence[str] = (), batch_axes: Sequence[tuple[str, int]] | Mapping[str, int] = (),
) -> EvalReport:
    """The mean of each metric expression (``error(z, labels)``, any loss) over `data`.

    `fixed` arrays are fed whole to every batch; `batch_axes` says on which axis an array
    holds its examples (see :class:`~onnxsurgeon.train.data.Layout`)."""
    layout = data_mod.Layout(tuple(fixed), batch_axes)
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
    axes, _ = layout.bind(list(data))
    batch = losses.batch_symbol(view, axes)
    float_elem = next((t.data_type for t in view.graph.initializer if t.data_type in losses.FLOATS), onnx.TensorProto.FLOAT)
    types = {n: losses.data_type(data[n] if hasattr(data[n], "dtype") else np.asarray(data[n]), float_elem, batch, axes.get(n, 0)) for n in data_names}
    params = prepare.candidates(view, prepare.frozen_names(view), ())
    compiled, objective = losses.compile_objective(view, None, list(metrics), types, params, batch)
    wanted = data_mod.graph_inputs(compiled)
    dataset = data_mod.check(data, wanted, label, layout=layout)
    data_mod.check_class_indices(dataset, objective.class_indices)
    session = runtime.session(compiled)
    names = [o.name for o in compiled.graph.output]
    sums = np.zeros(len(objective.metrics))
    for _, idx in data_mod.batches(dataset.examples, batch_size, 0, 0, shuffle=False):
        feeds = dataset.batch(idx)
        out = runtime.run(session, {k: feeds[k] for k in wanted}, names, what="the model", hint=None)
        values = dict(zip(names, out))
        sums += [float(values[v]) * len(idx) for _, v in objective.metrics]
    means = sums / max(dataset.examples, 1)
    return EvalReport(tuple((t, float(m)) for (t, _), m in zip(objective.metrics, means)), dataset.examples, label, layout)


def run(
    model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], outputs: Sequence[str] = (), batch_size: int | None = None,
    label: str = "the data", *, fixed: Sequence[str] = (), batch_axes: Sequence[tuple[str, int]] | Mapping[str, int] = (),
) -> dict[str, np.ndarray]:
    """The model's outputs (or the named values) on `data`, in inference mode.

    With `batch_size` the examples are run in batches and the results of the batches joined
    on axis 0, or on the axis `batch_axes` gives for that output (a state ``[2, N, 128]``:
    axis 1); an output named in `fixed` does not depend on the examples and is kept from
    the first batch. Without `batch_size`, in one go. `fixed` and `batch_axes` name the
    data's arrays as for :func:`evaluate`."""
    axes, batches = run_batches(model, data, outputs, batch_size, label, fixed=fixed, batch_axes=batch_axes)
    parts: dict[str, list[np.ndarray]] = {v: [] for v in axes}
    for values in batches:
        for v, value in values.items():
            if axes[v] is not None or not parts[v]:
                parts[v].append(value)
    return {v: join(v, p, axes[v]) for v, p in parts.items()}


def run_to_file(
    model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], path: str | Path, outputs: Sequence[str] = (),
    batch_size: int | None = None, label: str = "the data", *, fixed: Sequence[str] = (),
    batch_axes: Sequence[tuple[str, int]] | Mapping[str, int] = (), write: bool = True,
) -> dict[str, str]:
    """:func:`run`, writing the outputs to the ``.npz`` at `path` as the batches come (memory
    holds one batch), atomically; returns the type and shape of each output written.
    With ``write=False`` the outputs are computed and measured, and nothing is written."""
    from onnxsurgeon.datafiles import NpzStream

    path = Path(path)
    axes, batches = run_batches(model, data, outputs, batch_size, label, fixed=fixed, batch_axes=batch_axes)
    stream = NpzStream(path.parent)
    try:
        for values in batches:
            for v, value in values.items():
                stream.add(v, value, axes[v])
        if write:
            stream.write(path)
        return stream.shapes()
    finally:
        stream.close()


def run_batches(
    model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], outputs: Sequence[str] = (), batch_size: int | None = None,
    label: str = "the data", *, fixed: Sequence[str] = (), batch_axes: Sequence[tuple[str, int]] | Mapping[str, int] = (),
) -> tuple[dict[str, int | None], Iterator[dict[str, np.ndarray]]]:
    """The axis on which each output's batches join, and the outputs batch by batch (one
    batch of all examples without `batch_size`). Everything is checked before it returns."""
    view = modes.inference_view(model)
    index = GraphIndex(view.graph)
    wanted_values = [r.value for r in Resolver(index).resolve_all(list(outputs))] if outputs else [o.name for o in view.graph.output]
    declared = {o.name for o in view.graph.output}
    for v in wanted_values:
        if v not in declared:
            view.graph.output.append(onnx.helper.make_empty_tensor_value_info(v))
    layout = data_mod.Layout(tuple(fixed), batch_axes)
    out_axes = output_axes(layout, wanted_values, outputs)
    dataset = data_mod.check(data, data_mod.graph_inputs(view), label, batch_size, layout, others=[*wanted_values, *outputs])
    session = runtime.session(view)

    def batches() -> Iterator[dict[str, np.ndarray]]:
        if batch_size is None:
            yield dict(zip(wanted_values, runtime.run(session, dataset.whole(), wanted_values, hint=None)))
            return
        for _, idx in data_mod.batches(dataset.examples, batch_size, 0, 0, shuffle=False):
            yield dict(zip(wanted_values, runtime.run(session, dataset.batch(idx), wanted_values, hint=None)))

    return out_axes, batches()


def output_axes(layout: data_mod.Layout, values: Sequence[str], asked: Sequence[str] = ()) -> dict[str, int | None]:
    """The axis on which each output's batches are joined (None: kept from the first batch):
    0 unless the layout names the output (by value name, the name asked for, or alias)."""
    named = dict(zip(asked, values)) if asked else {}
    given = {**{n: None for n in layout.fixed}, **dict(layout.batch_axes)}
    axes: dict[str, int | None] = {v: 0 for v in values}
    for name, axis in given.items():
        value = named.get(name, name)
        if value not in axes:
            value = next((v for v in values if alias(v) == alias(name)), None)
        if value is not None:
            axes[value] = axis
    return axes


def join(name: str, parts: list[np.ndarray], axis: int | None) -> np.ndarray:
    """The batches' values of one output, joined on `axis`."""
    if axis is None:
        return parts[0]
    if any(np.ndim(p) <= axis for p in parts):
        raise InputError(
            f"cannot join the batches of output {name!r} on axis {axis}: it has rank {np.ndim(parts[0])}",
            f"give --batch-axis {name}=AXIS for the axis that holds its examples, or --fixed {name} if it does not depend on them",
        )
    try:
        return np.concatenate(parts, axis=axis)
    except ValueError:
        shapes = ", ".join(dict.fromkeys(str(list(np.shape(p))) for p in parts))
        raise InputError(
            f"cannot join the batches of output {name!r} on axis {axis}: their shapes differ elsewhere ({shapes})",
            f"give --batch-axis {name}=AXIS for the axis that holds its examples, or --fixed {name} if it does not depend on them",
        ) from None
