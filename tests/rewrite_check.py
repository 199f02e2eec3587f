"""The check of an op that the training graph rewrites: the prepared graph computes what
onnxruntime's op computes, and one SGD step moves every parameter by the learning rate times
the gradient measured by central differences of the original model (the mse loss is
quadratic in each parameter alone, so central differences are exact up to rounding)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnxsurgeon import runtime
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings
from onnxsurgeon.train.prepare import prepare

LR = 0.01


def with_params(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in values:
            t.CopyFrom(numpy_helper.from_array(values[t.name].astype(np.float32), t.name))
    return out


def assert_trains_as_rewritten(model: onnx.ModelProto, op: str, x: np.ndarray, inits: dict[str, np.ndarray], seed: int = 0) -> None:
    """`model` reads `x` and writes `y`; its parameters are `inits`."""
    prepared, _ = prepare(model, set())
    assert op not in {n.op_type for n in prepared.graph.node}
    want = runtime.run(runtime.session(model), {"x": x})[0]
    got = runtime.run(runtime.session(prepared), {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    t = np.random.default_rng(seed).standard_normal(want.shape).astype(np.float32)
    trained, report = train(model, {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=len(x), shuffle=False))
    assert set(report.plan.trainable) == set(inits)
    assert op in {n.op_type for n in trained.graph.node}  # the written model keeps its op
    after = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}

    def loss(values):
        y = runtime.run(runtime.session(with_params(model, values)), {"x": x})[0].astype(np.float64)
        return float(((y - t) ** 2).reshape(len(x), -1).mean(-1).mean())

    for name, w in inits.items():
        grad = np.zeros(w.shape)
        for i in np.ndindex(w.shape):
            plus, minus = w.astype(np.float64).copy(), w.astype(np.float64).copy()
            plus[i] += 0.5
            minus[i] -= 0.5
            grad[i] = loss({**inits, name: plus}) - loss({**inits, name: minus})
        step = (w.astype(np.float64) - after[name]) / LR
        np.testing.assert_allclose(step, grad, rtol=1e-3, atol=1e-4)
