"""Round, Floor, Ceil and Sign train with their gradient, zero (onnxruntime 1.19 has no gradient
builder for them, pinned in tests/test_train_rewrite.py): the training graph computes exactly
the op's values, inf, NaN and -0 included, and one SGD step equals the gradient of a float64
numpy reference in which the op's derivative is 0."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon import runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings
from onnxsurgeon.train.prepare import prepare

RNG = np.random.default_rng(31)
LR = 0.1
OPS = {"Round": np.round, "Floor": np.floor, "Ceil": np.ceil, "Sign": np.sign}
W0 = np.array([1.0, 0.7, -1.3, 2.1], np.float32)


def model_of(op: str, elem: int = TensorProto.FLOAT, offset: bool = False):
    """h = x * W; r = op(h) (in `elem`); y = r + h, so W has a gradient besides the op's. With
    `offset`, the op reads d - h for an input d of type `elem` (d itself where x is 0)."""
    nodes = [helper.make_node("Mul", ["x", "W"], ["h"], name="scale"), helper.make_node("Cast", ["h"], ["hc"], to=elem),
             helper.make_node(op, ["hc"], ["r"], name="q"),
             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT), helper.make_node("Add", ["rf", "h"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    if offset:
        nodes[1].output[0] = "hd"
        nodes.insert(2, helper.make_node("Sub", ["d", "hd"], ["hc"]))
        inputs.append(helper.make_tensor_value_info("d", elem, ["N", 4]))
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4]),
                               helper.make_tensor_value_info("r", elem, ["N", 4])],
                              [numpy_helper.from_array(W0, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((a == b) & (np.signbit(a) == np.signbit(b))) | (np.isnan(a) & np.isnan(b))


@pytest.mark.parametrize("elem", [TensorProto.FLOAT, TensorProto.DOUBLE], ids=["float", "double"])
@pytest.mark.parametrize("op", sorted(OPS))
def test_rounding_op_in_the_training_graph_computes_exactly_its_values(op, elem):
    dtype = np.float32 if elem == TensorProto.FLOAT else np.float64
    info = np.finfo(dtype)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, -0.3, 0.5, -0.5, 1.5, 2.5, -2.5, 2.0**62, 2.0**63, -2.0**63,
               1.5 * 2.0**64, 2.0**103 + 2.0**90, float(info.max), -float(info.max), float(info.tiny) / 4]
    spread = RNG.choice([-1, 1], 4000) * RNG.uniform(1, 2, 4000) * np.exp2(RNG.integers(info.minexp, info.maxexp, 4000))
    h = np.concatenate([np.array(special, dtype), spread.astype(dtype)])
    d = h[: len(h) // 4 * 4].reshape(-1, 4)
    model = model_of(op, elem, offset=True)
    prepared, prep = prepare(model, set())
    assert not prep.not_rewritten
    assert [n.op_type for n in prepared.graph.node].count(op) == 1  # the op itself stays, a copy follows
    assert next(n for n in prepared.graph.node if "r" in n.output).op_type == "Where"
    feeds = {"x": np.zeros(d.shape, np.float32), "d": d}
    want = runtime.run(runtime.session(model), feeds, outputs=["r"])[0]
    got = runtime.run(runtime.session(prepared), feeds, outputs=["r"])[0]
    assert want.dtype == got.dtype == dtype
    bad = ~same_bits(want, got)
    assert not bad.any(), (want[bad][:5], got[bad][:5])


@pytest.mark.parametrize("op", sorted(OPS))
def test_rounding_op_trains_with_a_zero_gradient(op):
    x = (RNG.standard_normal((8, 4)) * 3).astype(np.float32)
    t = RNG.standard_normal((8, 4)).astype(np.float32)
    trained, report = train(model_of(op), {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=8, shuffle=False))
    assert report.plan.trainable == ("W",)
    assert op in {n.op_type for n in trained.graph.node}  # the written model keeps its op
    w1 = numpy_helper.to_array(trained.graph.initializer[0]).astype(np.float64)
    h = x.astype(np.float64) * W0
    y = OPS[op](h.astype(np.float32)).astype(np.float64) + h
    grad = 2 * ((y - t) * x).sum(axis=0) / y.size  # d(op(h))/dh = 0: the skip path alone
    np.testing.assert_allclose((W0 - w1) / LR, grad, rtol=1e-5, atol=1e-6)


def test_parameter_reaching_the_loss_only_through_round_gets_a_zero_gradient():
    """x @ W1 -> Round -> @ W2: W1 trains with a gradient of exactly zero, so SGD leaves it as it
    is and AdamW's decoupled weight decay shrinks it, as in torch; W2 trains as usual."""
    w1, w2 = RNG.standard_normal((4, 4)).astype(np.float32), RNG.standard_normal((4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Round", ["h"], ["e"], name="act"),
             helper.make_node("MatMul", ["e", "W2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = (RNG.standard_normal((8, 4)) * 2).astype(np.float32)
    t = RNG.standard_normal((8, 4)).astype(np.float32)

    trained, report = train(model, {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=8, shuffle=False))
    after = {i.name: numpy_helper.to_array(i) for i in trained.graph.initializer}
    assert report.plan.trainable == ("W1", "W2")
    assert np.array_equal(after["W1"], w1)
    e = np.round(x @ w1).astype(np.float64)
    grad2 = 2 * e.T @ (e @ w2 - t) / t.size
    np.testing.assert_allclose((w2 - after["W2"]) / LR, grad2, rtol=1e-4, atol=1e-5)

    trained, _ = train(model, {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("adamw", lr=LR, weight_decay=0.5), batch_size=8, shuffle=False))
    decayed = numpy_helper.to_array(next(i for i in trained.graph.initializer if i.name == "W1"))
    np.testing.assert_allclose(decayed, w1 * (1 - LR * 0.5), rtol=1e-6)


def test_rounding_op_on_float16_is_refused_with_the_reason():
    with pytest.raises(InputError) as e:
        data = {"x": np.ones((4, 4), np.float32), "t": np.ones((4, 4), np.float32)}
        train(model_of("Floor", TensorProto.FLOAT16), data, TrainSettings(loss="mse(y, t)", batch_size=4))
    assert ("node 'q' (Floor), after 'W'; not rewritten: its input 'hc' is float16 (float and double are rewritten)"
            in str(e.value))
