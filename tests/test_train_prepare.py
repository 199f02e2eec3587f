"""Making graphs trainable: BatchNorm, Dropout, LSTM, Gelu, IR 3, local functions, ops
without gradients; and the models real exporters wrote (tests/corpus/torch)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import meta, runtime, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "corpus" / "torch"
sys.path.insert(0, str(Path(__file__).parent))
from test_train_stack import raw_generate  # noqa: E402

RNG = np.random.default_rng(11)


def arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The stored tensors: initializers, and the values of Constant nodes (weights some exporters keep there)."""
    out = {t.name: serde.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def sgd(lr: float = 0.1, **kw) -> OptimizerSettings:
    return OptimizerSettings("sgd", lr=lr, **kw)


def numeric_grad(loss, params: dict[str, np.ndarray], name: str, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(params[name])
    for i in np.ndindex(g.shape):
        plus = {k: v.copy() for k, v in params.items()}
        minus = {k: v.copy() for k, v in params.items()}
        plus[name][i] += h
        minus[name][i] -= h
        g[i] = (loss(plus) - loss(minus)) / (2 * h)
    return g


def model_of(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ---------------------------------------------------------------- BatchNormalization


def bn_model() -> onnx.ModelProto:
    inits = {
        "W": RNG.standard_normal((4, 4)).astype(np.float32),
        "scale": RNG.uniform(0.5, 1.5, 4).astype(np.float32),
        "bias": RNG.standard_normal(4).astype(np.float32),
        "mean": np.full(4, 0.5, np.float32),
        "var": np.full(4, 2.0, np.float32),
    }
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]),
         helper.make_node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-5, momentum=0.9)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
    )


X4 = RNG.standard_normal((8, 4)).astype(np.float32)
T4 = RNG.standard_normal((8, 4)).astype(np.float32)


def test_learnable_batchnorm_step_matches_numpy():
    model = bn_model()
    p0 = {k: v.astype(np.float64) for k, v in arrays(model).items()}
    trained, report = train(model, {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=8, shuffle=False))
    assert report.plan.trainable == ("W", "bias", "scale") and report.plan.running_stats == ("mean", "var")

    def loss(p):  # training mode: the batch's statistics
        h = X4.astype(np.float64) @ p["W"]
        y = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * p["scale"] + p["bias"]
        return ((y - T4) ** 2).mean()

    got = arrays(trained)
    for name in ("W", "scale", "bias"):
        np.testing.assert_allclose(got[name], p0[name] - 0.1 * numeric_grad(loss, p0, name), rtol=0, atol=1e-5)
    h = X4.astype(np.float64) @ p0["W"]
    np.testing.assert_allclose(got["mean"], 0.9 * 0.5 + 0.1 * h.mean(0), atol=1e-6)
    # the ONNX definition: the biased batch variance (torch would use the unbiased one)
    np.testing.assert_allclose(got["var"], 0.9 * 2.0 + 0.1 * h.var(0), atol=1e-5)


def test_batchnorm_with_frozen_statistics_stays_in_inference_form():
    model = bn_model()
    meta.set_frozen(model, {"mean", "var", "scale", "bias"})
    before = arrays(model)
    trained, report = train(model, {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=8, shuffle=False))
    assert report.plan.trainable == ("W",) and report.plan.running_stats == ()
    assert "written as the fixed inference formula" in " ".join(report.plan.changes)
    got = arrays(trained)
    for name in ("mean", "var", "scale", "bias"):
        assert got[name].tobytes() == before[name].tobytes()
    p0 = {k: v.astype(np.float64) for k, v in before.items()}

    def loss(p):  # inference mode: the stored statistics
        h = X4.astype(np.float64) @ p["W"]
        y = (h - p["mean"]) / np.sqrt(p["var"] + 1e-5) * p["scale"] + p["bias"]
        return ((y - T4) ** 2).mean()

    np.testing.assert_allclose(got["W"], p0["W"] - 0.1 * numeric_grad(loss, p0, "W"), rtol=0, atol=1e-5)


def test_pytorch_cnn_with_batchnorm_and_dropout_trains():
    model = osg.load(CORPUS / "cnn_ts_train.onnx")
    data = {"image": RNG.standard_normal((16, 3, 8, 8)).astype(np.float32), "labels": RNG.integers(0, 5, 16)}
    trained, report = train(model, data, TrainSettings(
        loss="ce(logits, labels)", metrics=("error(logits, labels)",), optimizer=OptimizerSettings("adamw", lr=0.01),
        epochs=4, batch_size=8,
    ), val=data)
    assert len(report.plan.running_stats) == 4
    assert "1 Dropout set to drop while training" in report.plan.changes
    before, after = arrays(model), arrays(trained)
    assert not np.array_equal(before["features.1.running_mean"], after["features.1.running_mean"])
    assert report.history[-1].loss < report.history[0].loss
    # the written model is the exporter's graph, with the new values
    assert trained.graph.node == model.graph.node
    runtime.session(trained)


# ---------------------------------------------------------------- Dropout


def dropout_model() -> onnx.ModelProto:
    return model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Dropout", ["h", "ratio"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        {"W": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32), "ratio": np.array(0.5, np.float32)},
    )


def test_dropout_drops_while_training_with_seeded_masks():
    data = {"x": X4, "t": np.zeros((8, 16), np.float32)}
    s = dict(loss="mse(y, t)", optimizer=sgd(0.01), epochs=2, batch_size=4)
    runs = [train(dropout_model(), data, TrainSettings(seed=seed, **s)) for seed in (1, 1, 2)]
    (a, ra), (b, _), (c, _) = runs
    assert arrays(a)["W"].tobytes() == arrays(b)["W"].tobytes()
    assert arrays(a)["W"].tobytes() != arrays(c)["W"].tobytes()
    assert ra.plan.constants == ("ratio",)
    # validation runs the eval model: no dropout, so its loss is that of the plain product
    _, report = train(dropout_model(), data, TrainSettings(seed=1, **s), val=data)
    w = arrays(runs[0][0])["W"]  # the same run's final weights
    assert report.history[-1].val["loss"] == pytest.approx(((X4 @ w) ** 2).mean(), rel=1e-5)


# ---------------------------------------------------------------- LSTM, Gelu, ops without gradients


def lstm_numpy(x, W, R, B, reverse=False):
    """ONNX LSTM, one direction, default activations; x [T, N, I] -> Y [T, N, H] (float64)."""
    H = R.shape[-1]
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    out = [None] * len(x)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    steps = range(len(x) - 1, -1, -1) if reverse else range(len(x))
    for t in steps:
        g = x[t] @ W.T + h @ R.T + B[: 4 * H] + B[4 * H :]
        i, o, f, cc = (g[:, k * H : (k + 1) * H] for k in range(4))
        c = sig(f) * c + sig(i) * np.tanh(cc)
        h = sig(o) * np.tanh(c)
        out[t] = h
    return np.stack(out)


def lstm_model(direction: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N, T, I] -> LSTM -> y [N, T, directions, H]."""
    nd, H, I, T_ = (2 if direction == "bidirectional" else 1), 3, 2, 4
    inits = {
        "W": (RNG.standard_normal((nd, 4 * H, I)) * 0.5).astype(np.float32),
        "R": (RNG.standard_normal((nd, 4 * H, H)) * 0.5).astype(np.float32),
        "B": (RNG.standard_normal((nd, 8 * H)) * 0.1).astype(np.float32),
    }
    model = model_of(
        [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
         helper.make_node("LSTM", ["xt", "W", "R", "B"], ["Y"], hidden_size=H, direction=direction, name="lstm"),
         helper.make_node("Transpose", ["Y"], ["y"], perm=[2, 0, 1, 3])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T_, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T_, nd, H])], inits,
    )
    return model, inits


def test_lstm_step_matches_numpy():
    model, inits = lstm_model("forward")
    N, T_ = 5, 4
    x = RNG.standard_normal((T_, N, 2)).astype(np.float32)
    t = RNG.standard_normal((N, T_, 1, 3)).astype(np.float32)
    data = {"x": np.ascontiguousarray(x.transpose(1, 0, 2)), "t": t}
    trained, report = train(model, data, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=N, shuffle=False))
    assert "1 LSTM/GRU given their full input list" in report.plan.changes
    p0 = {k: v.astype(np.float64) for k, v in inits.items()}

    def loss(p):
        y = lstm_numpy(x.astype(np.float64), p["W"][0], p["R"][0], p["B"][0])[:, None].transpose(2, 0, 1, 3)
        return ((y - t) ** 2).mean()

    got = arrays(trained)
    for name in inits:
        np.testing.assert_allclose(got[name], p0[name] - 0.1 * numeric_grad(loss, p0, name), rtol=0, atol=1e-5)


def test_bidirectional_lstm_trains_as_two_forward_ones():
    """onnxruntime's LSTM gradient runs forward recurrences only: the training graph holds two
    (gradients checked in test_train_rewrite.py); the written model keeps its one LSTM."""
    model, _ = lstm_model("bidirectional")
    data = {"x": RNG.standard_normal((5, 4, 2)).astype(np.float32), "t": RNG.standard_normal((5, 4, 2, 3)).astype(np.float32)}
    trained, report = train(model, data, TrainSettings(loss="mse(y, t)", epochs=3, batch_size=5))
    assert "rewritten in ops with gradients and CPU kernels: 1 LSTM" in report.plan.changes
    assert report.history[-1].loss < report.history[0].loss and trained.graph.node == model.graph.node


def test_tanh_gelu_gets_the_right_gradient():
    model = model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Gelu", ["h"], ["y"], approximate="tanh")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        {"W": RNG.standard_normal((4, 4)).astype(np.float32)}, opset=20,
    )
    trained, report = train(model, {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=8, shuffle=False))
    assert "1 tanh-approximated Gelu written in elementary ops" in report.plan.changes
    p0 = {"W": arrays(model)["W"].astype(np.float64)}

    def loss(p):
        h = X4.astype(np.float64) @ p["W"]
        y = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
        return ((y - T4) ** 2).mean()

    np.testing.assert_allclose(arrays(trained)["W"], p0["W"] - 0.1 * numeric_grad(loss, p0, "W"), rtol=0, atol=1e-5)


def chain(op: str, **attrs) -> onnx.ModelProto:
    """x @ W1 -> op -> @ W2."""
    return model_of(
        [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node(op, ["h"], ["e"], name="act", **attrs),
         helper.make_node("MatMul", ["e", "W2"], ["y"], name="fc2")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        {"W1": RNG.standard_normal((4, 4)).astype(np.float32), "W2": RNG.standard_normal((4, 4)).astype(np.float32)},
    )


def test_op_without_gradient_is_named_with_a_fix(tmp_path):
    with pytest.raises(Exception, match="gradient builder has not been registered"):  # the stack's behaviour
        raw_generate(chain("Shrink"), ["W1"], tmp_path)
    with pytest.raises(InputError) as e:
        train(chain("Shrink"), {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)"))
    assert "no gradient for 1 node between trained parameters and the loss:\n  - node 'act' (Shrink), after 'W1'" in str(e.value)
    assert "--freeze" in str(e.value) and "'W1'" in e.value.hint
    trained, report = train(chain("Shrink"), {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", freeze=("W1",)))
    assert report.plan.trainable == ("W2",)


def _sp(v):
    return np.maximum(v, 0) + np.log1p(np.exp(-np.abs(v)))


ACTIVATIONS = {
    "Softplus": ({}, _sp),
    "Softsign": ({}, lambda v: v / (1 + np.abs(v))),
    "Elu": ({"alpha": 0.7}, lambda v: np.where(v > 0, v, 0.7 * (np.exp(np.minimum(v, 0)) - 1))),
    "Selu": ({}, lambda v: 1.0507009873554805 * np.where(v > 0, v, 1.6732632423543772 * (np.exp(np.minimum(v, 0)) - 1))),
    "Celu": ({"alpha": 2.0}, lambda v: np.maximum(v, 0) + np.minimum(0, 2.0 * (np.exp(v / 2.0) - 1))),
    "HardSigmoid": ({"alpha": 0.3, "beta": 0.4}, lambda v: np.clip(0.3 * v + 0.4, 0, 1)),
}


@pytest.mark.parametrize("op", sorted(ACTIVATIONS))
def test_ops_without_gradient_are_written_in_ops_with_one(op):
    attrs, f = ACTIVATIONS[op]
    model = chain(op, **attrs)
    trained, report = train(model, {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=8, shuffle=False))
    assert f"written in elementary ops, which have gradients: 1 {op}" in report.plan.changes
    p0 = {k: v.astype(np.float64) for k, v in arrays(model).items()}

    def loss(p):
        return ((f(X4.astype(np.float64) @ p["W1"]) @ p["W2"] - T4) ** 2).mean()

    got = arrays(trained)
    for name in ("W1", "W2"):
        np.testing.assert_allclose(got[name], p0[name] - 0.1 * numeric_grad(loss, p0, name), rtol=0, atol=1e-5)
    assert trained.graph.node == model.graph.node  # the model keeps its op


def test_prelu_sum_and_mean_train():
    inits = {"W": RNG.standard_normal((4, 4)).astype(np.float32), "slope": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}
    model = model_of(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("PRelu", ["h", "slope"], ["p"]),
         helper.make_node("Sum", ["p", "h", "x"], ["s"]), helper.make_node("Mean", ["s", "p"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits,
    )
    trained, report = train(model, {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=8, shuffle=False))
    assert report.plan.trainable == ("W", "slope")
    p0 = {k: v.astype(np.float64) for k, v in inits.items()}

    def loss(p):
        h = X4.astype(np.float64) @ p["W"]
        pr = np.where(h > 0, h, p["slope"] * h)
        return (((pr + h + X4 + pr) / 2 - T4) ** 2).mean()

    got = arrays(trained)
    for name in inits:
        np.testing.assert_allclose(got[name], p0[name] - 0.1 * numeric_grad(loss, p0, name), rtol=0, atol=1e-5)


@pytest.mark.parametrize("op", ["Softplus", "ReduceMax", "InstanceNormalization", "Selu"])
def test_fact_ops_without_gradient(tmp_path, op):
    """onnxruntime-training 1.19 has no gradient for these (prepare.NO_GRADIENT lists them)."""
    from onnxsurgeon.train.prepare import NO_GRADIENT

    assert op in NO_GRADIENT
    extra = {}
    node_inputs = ["h"]
    shape = ["N", 4]
    if op == "InstanceNormalization":
        extra = {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
        node_inputs += ["s", "b"]
        shape = ["N", 4, 1]
    attrs = {"axes": [1], "keepdims": 1} if op == "ReduceMax" else {}
    model = model_of(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Unsqueeze", ["m", "ax"], ["h"]) if op == "InstanceNormalization" else helper.make_node("Identity", ["m"], ["h"]),
         helper.make_node(op, node_inputs, ["y"], **attrs)],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, {"ReduceMax": ["N", 1], "InstanceNormalization": ["N", 4, 1]}.get(op, ["N", 4]))],
        {"W": np.ones((4, 4), np.float32), "ax": np.array([2], np.int64), **extra},
    )
    with pytest.raises(Exception, match=f"not been registered: ?{op}"):
        raw_generate(model, ["W"], tmp_path)


def test_old_models_train(fixture_path):
    ir3 = osg.load(fixture_path("ir3_constants.onnx"))
    trained, report = train(ir3, {"x": X4, "t": T4}, TrainSettings(loss="mse(y, t)", optimizer=sgd(0.01)))
    # the weight held in a Constant node trains too, and goes back into that node
    assert report.plan.trainable == ("const_w", "w_init") and report.plan.lifted == ("const_w",)
    assert any("IR 3" in c for c in report.plan.changes) and any("opset 8 converted to 13" in c for c in report.plan.changes)
    assert trained.ir_version == 3 and trained.opset_import == ir3.opset_import
    (before,) = [n for n in ir3.graph.node if n.op_type == "Constant"]
    (after,) = [n for n in trained.graph.node if n.op_type == "Constant"]
    assert after.output == before.output and after.name == before.name
    assert not np.array_equal(numpy_helper.to_array(after.attribute[0].t), numpy_helper.to_array(before.attribute[0].t))
    assert [t.name for t in trained.graph.initializer] == ["w_init"]


@pytest.mark.parametrize(
    "name, data, loss",
    [
        ("lstm_ts", {"seq": (8, 7, 6), "t": (8, 7, 3)}, "mse(y, t)"),
        ("transformer_ts", {"tokens": (8, 5, 16), "t": (8, 5, 16)}, "mse(encoded, t)"),
        ("transformer_dynamo", {"x": (8, 5, 16), "t": (8, 5, 16)}, "mse(layer_norm_1, t)"),
        ("mlp_ts_functions", {"x": (8, 8), "t": (8, 16)}, "mse(hidden, t)"),
        ("mlp_dynamo_extdata", {"x": (8, 8), "t": (8, 16)}, "mse(add_28, t)"),
    ],
)
def test_corpus_models_train(name, data, loss):
    model = osg.load(CORPUS / f"{name}.onnx")
    arrays_ = {k: RNG.standard_normal(v).astype(np.float32) for k, v in data.items()}
    trained, report = train(model, arrays_, TrainSettings(loss=loss, optimizer=OptimizerSettings("adamw", lr=0.01), epochs=3, batch_size=4))
    assert report.history[-1].loss < report.history[0].loss
    moved = [n for n in report.plan.trainable if not np.array_equal(arrays(model)[n], arrays(trained)[n])]
    assert moved == list(report.plan.trainable)
    runtime.session(trained)


def test_corpus_loop_stops_with_the_node_named():
    model = osg.load(CORPUS / "control_flow_ts.onnx")
    data = {"x": RNG.standard_normal((8, 4)).astype(np.float32), "n": np.full(8, 2), "t": RNG.standard_normal((8, 4)).astype(np.float32)}
    with pytest.raises(InputError, match=r"node '/Loop' \(Loop\)"):
        train(model, data, TrainSettings(loss="mse(y, t)"))
