"""Einsum trains as MatMul, Transpose, Unsqueeze, Squeeze and ReduceSum (onnxruntime 1.19 has
no gradient for Einsum): the same values as onnxruntime's Einsum, and one SGD step moves the
parameter by the learning rate times the gradient measured by central differences of the
original model (the loss is quadratic in it, so central differences are exact up to
rounding)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon import runtime
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings
from onnxsurgeon.train.prepare import prepare

RNG = np.random.default_rng(12)
LR = 0.01

CASES = {  # name: (equation, x shape, W shape, W first)
    "linear_over_a_sequence": ("bsd,ed->bse", (2, 3, 4), (5, 4), False),
    "attention_scores": ("bhqd,hkd->bhqk", (2, 2, 3, 4), (2, 5, 4), False),
    "attention_values_transposed_out": ("bhqk,hkd->bqhd", (2, 2, 3, 5), (2, 5, 4), False),
    "parameter_first": ("oi,bi->bo", (3, 4), (5, 4), True),
    "summed_letter_and_outer": ("bij,k->bjk", (2, 3, 4), (5,), False),
    "implicit_output_with_ellipsis": ("...i,ij", (2, 3, 4), (4, 5), False),
    "capitals_and_ellipsis": ("...A,BA->...B", (2, 3, 4), (5, 4), False),
    "one_operand": ("bij->bji", (2, 3, 4), (3, 4), None),
}


def model_of(equation, x_shape, w_shape, w_first):
    w = RNG.standard_normal(w_shape).astype(np.float32)
    if w_first is None:  # one operand: the parameter scales the input first
        nodes = [helper.make_node("Mul", ["x", "W"], ["h"]), helper.make_node("Einsum", ["h"], ["y"], name="e", equation=equation)]
    else:
        nodes = [helper.make_node("Einsum", ["W", "x"] if w_first else ["x", "W"], ["y"], name="e", equation=equation)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def with_w(model: onnx.ModelProto, w: np.ndarray) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer[0].CopyFrom(numpy_helper.from_array(w.astype(np.float32), "W"))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_einsum_trains_as_matmul(case):
    model, w = model_of(*CASES[case])
    x = RNG.standard_normal(CASES[case][1]).astype(np.float32)
    prepared, _ = prepare(model, set())
    assert "Einsum" not in {n.op_type for n in prepared.graph.node}
    want = runtime.run(runtime.session(model), {"x": x})[0]
    got = runtime.run(runtime.session(prepared), {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    t = RNG.standard_normal(want.shape).astype(np.float32)
    trained, report = train(model, {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=len(x), shuffle=False))
    assert report.plan.trainable == ("W",) or list(report.plan.trainable) == ["W"]
    assert "Einsum" in {n.op_type for n in trained.graph.node}  # the written model keeps its op
    after = numpy_helper.to_array(trained.graph.initializer[0])

    def loss(values):
        y = runtime.run(runtime.session(with_w(model, values)), {"x": x})[0].astype(np.float64)
        return float(((y - t) ** 2).reshape(len(x), -1).mean(-1).mean())

    grad = np.zeros(w.shape)
    for i in np.ndindex(w.shape):
        plus, minus = w.astype(np.float64).copy(), w.astype(np.float64).copy()
        plus[i] += 0.5
        minus[i] -= 0.5
        grad[i] = loss(plus) - loss(minus)
    step = (w.astype(np.float64) - after) / LR
    np.testing.assert_allclose(step, grad, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("equation, why", [
    ("bij,jk,kl->bil", "3 operands"),
    ("bii,ij->bj", "a letter repeats within 'bii'"),
    ("bij,ij->b", "'ij' are all contracted"),
])
def test_einsum_that_cannot_be_rewritten_is_refused_with_the_reason(equation, why):
    inputs = ["x", "W", "W"] if equation.count(",") == 2 else ["x", "W"]
    node = helper.make_node("Einsum", inputs, ["y"], name="e", equation=equation)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((3, 3), np.float32), "W")])
    _, prep = prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), set())
    assert dict(prep.not_rewritten).get("e", "").startswith(why), prep.not_rewritten
