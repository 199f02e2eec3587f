"""Real models train (issue 10): weights in Constant nodes, computed statistics, failures inside
onnxruntime in words, nothing to train, fixed-batch and old-opset models.

Real models where a PyPI package ships one (rapidocr's paddle2onnx models, magika's tf2onnx
model; fetched by scripts/fetch_corpus.py, skipped when absent), small graphs written here
where one op or one failure is the subject. The whole bar over ~28 models is
bench/train_corpus.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import runtime
from onnxsurgeon.cli import main
from onnxsurgeon.errors import EnvironmentProblem, InputError
from onnxsurgeon.train import prepare
from onnxsurgeon.train.loop import TrainSettings, rehearse, train
from onnxsurgeon.train.optim import OptimizerSettings
from tests.corpus import FETCH_DIR, _onnx_backend_dir

RNG = np.random.default_rng(3)
CLS = FETCH_DIR / "rapidocr-onnxruntime-1.4.4" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
MAGIKA = FETCH_DIR / "magika-0.5.1" / "model.onnx"
needs = lambda p: pytest.mark.skipif(not p.is_file(), reason=f"{p} not fetched (scripts/fetch_corpus.py)")  # noqa: E731


def sgd(lr=0.01):
    return OptimizerSettings("sgd", lr=lr)


def constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].name == "value"}


def model_of(nodes, inputs, outputs, inits=None, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# ------------------------------------------------------------------ weights in Constant nodes


@needs(CLS)
def test_paddle_weights_in_constant_nodes_train_and_go_back_where_they_were():
    model = osg.load(CLS)
    x = RNG.standard_normal((2, 3, 48, 192)).astype(np.float32)
    t = RNG.standard_normal((2, 2)).astype(np.float32)
    settings = TrainSettings(loss="mse(save_infer_model_scale_0_tmp_1, t)", optimizer=sgd(), epochs=2, batch_size=2, freeze=("conv1_bn_*",))
    trained, report = train(model, {"x": x, "t": t}, settings)
    plan = report.plan
    assert len(plan.lifted) > 100 and set(plan.trainable) <= set(plan.lifted)
    # BatchNormalization statistics computed from constants are updated like stored ones,
    # or frozen (the --freeze pattern matched them although they are not initializers)
    assert "conv2_linear_bn_mean" in plan.running_stats and {"conv1_bn_mean", "conv1_bn_variance"} <= set(plan.frozen)
    assert report.history[-1].loss < report.history[0].loss
    before, after = constants(model), constants(trained)
    # every lifted value is a Constant of the trained model: the Constant it was, or one in
    # place of the node that computed it from constants (paddle's Reshape of a bias)
    assert set(plan.lifted) <= set(after) and len(trained.graph.initializer) == len(model.graph.initializer) == 0
    assert {n.op_type for n in model.graph.node if n.output[0] in set(plan.lifted) - set(before)} == {"Reshape"}
    moved = [n for n in plan.trainable + plan.running_stats if n in before and not np.array_equal(before[n], after[n])]
    assert len(moved) > 100
    for name in ("conv1_bn_mean", "conv1_bn_variance"):
        assert np.array_equal(before[name], after[name])
    onnx.checker.check_model(trained, full_check=True)
    runtime.run(runtime.session(trained), {"x": x})


@needs(MAGIKA)
def test_tf2onnx_statistics_computed_from_the_input_become_their_formula():
    """tf2onnx writes layer normalization as a BatchNormalization whose mean and variance the
    model computes from its input: the training graph writes it as the inference formula,
    which computes the same values, instead of refusing."""
    model = osg.load(MAGIKA)
    prepared, prep = prepare.prepare(model, set())
    assert any("statistics the model computes from its input" in c for c in prep.changes)
    x = RNG.standard_normal((3, 1536)).astype(np.float32)
    (want,) = runtime.run(runtime.session(model), {"bytes": x})
    (got,) = runtime.run(runtime.session(prepared), {"bytes": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_values_computed_from_constants_are_lifted_but_not_identities_of_parameters():
    """Caffe2 conversions make weights with ConstantOfShape; the TorchScript exporter writes
    one of two equal parameters as an Identity of the other, which must stay shared."""
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["W"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Identity", ["b"], ["b2"]),
        helper.make_node("Add", ["h", "b"], ["h2"]),
        helper.make_node("Add", ["h2", "b2"], ["y"]),
    ]
    model = model_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                     {"shape": np.array([3, 3], np.int64), "b": np.zeros(3, np.float32)})
    x, t = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal((4, 3)).astype(np.float32)
    trained, report = train(model, {"x": x, "t": t}, TrainSettings(loss="mse(y, t)", optimizer=sgd(0.1), epochs=3, batch_size=4))
    assert report.plan.lifted == ("W",) and set(report.plan.trainable) == {"W", "b"}
    (w,) = [n for n in trained.graph.node if n.output[0] == "W"]
    assert w.op_type == "Constant" and [t.name for t in trained.graph.initializer] == ["b"]  # "shape" was read by nothing else
    assert not np.allclose(numpy_helper.to_array(w.attribute[0].t), 0.5)
    assert [n.op_type for n in trained.graph.node if n.output[0] == "b2"] == ["Identity"]
    # b receives the gradient of both its uses: exactly twice the gradient through b2 alone
    y0 = runtime.run(runtime.session(model), {"x": x})[0]
    grad_b = 2 * (2 * (y0 - t) / y0.size).sum(0)
    b = numpy_helper.to_array(trained.graph.initializer[0])
    assert not np.allclose(b, 0) and np.sign(b).tolist() == np.sign(-grad_b).tolist()


# ------------------------------------------------------------------ failures inside onnxruntime


def _conv_transpose() -> onnx.ModelProto:
    """A ConvTranspose that the training graph cannot write as a Conv (its output_shape is
    given and the input's spatial sizes are not known: see train/rewrite_conv.py), so
    onnxruntime meets it."""
    nodes = [helper.make_node("Mul", ["x", "s"], ["a"]), helper.make_node("ConvTranspose", ["a", "W"], ["y"], name="up", output_shape=[5, 5])]
    return model_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, "height", "width"])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                    {"s": np.ones((2, 1, 1), np.float32), "W": np.ones((2, 2, 2, 2), np.float32)})


def test_a_missing_gradient_kernel_names_the_forward_node(tmp_path, capsys):
    """onnxruntime 1.19 builds ConvTransposeGrad, which has no CPU kernel: exit 3 naming the
    node and op of the model, the same from --dry-run, never a traceback (exit 4)."""
    model = _conv_transpose()
    data = {"x": RNG.standard_normal((2, 2, 4, 4)).astype(np.float32), "t": RNG.standard_normal((2, 2, 5, 5)).astype(np.float32)}
    with pytest.raises(EnvironmentProblem, match=r"no CPU kernel for ConvTransposeGrad.*gradient of node 'up' \(ConvTranspose"):
        train(model, data, TrainSettings(loss="mse(y, t)", optimizer=sgd(), batch_size=2))
    osg.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", **data)
    args = ["train", str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"), "--loss", "mse(y, t)", "--optimizer", "sgd"]
    for extra in (["-o", str(tmp_path / "out.onnx"), "--log", str(tmp_path / "log")], ["--dry-run"]):
        assert main(args + extra) == 3
        err = capsys.readouterr().err
        assert "node 'up' (ConvTranspose" in err and "Traceback" not in err and "hint: freeze" in err
    assert not (tmp_path / "out.onnx").exists()


def test_a_failure_while_running_is_one_error_for_train_eval_and_run(tmp_path, capsys):
    """A Reshape the data's size does not divide (as a legacy export traced at one length):
    exit 2 naming the node, in train, eval and run."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"], name="fixed_reshape")]
    model = model_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                     {"W": np.ones((4, 4), np.float32), "shape": np.array([-1, 8], np.int64)})
    osg.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((3, 4), np.float32), t=np.ones((3, 8), np.float32))
    m, d = str(tmp_path / "m.onnx"), str(tmp_path / "d.npz")
    runs = [
        ["train", m, "--data", d, "--loss", "mse(y, t)", "--batch-size", "3", "-o", str(tmp_path / "o.onnx"), "--log", str(tmp_path / "l")],
        ["train", m, "--data", d, "--loss", "mse(y, t)", "--batch-size", "3", "--dry-run"],
        ["eval", m, "--data", d, "--metric", "mse(y, t)"],
        ["run", m, "--data", d, "-o", str(tmp_path / "out.npz")],
    ]
    for args in runs:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert "node 'fixed_reshape' (Reshape)" in err and "Traceback" not in err, (args, err)
        assert "hint: check the shapes of the data" in err, (args, err)  # the data was given: not "give real inputs"
    # onnxruntime's own logger writes to the process's stderr, which capsys does not see
    for args in runs[:1] + runs[2:]:
        proc = subprocess.run([sys.executable, "-c", "from onnxsurgeon.cli import run; run()", *args], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("onnxsurgeon: error: "), (args, proc.stderr)
        assert "[E:onnxruntime" not in proc.stderr, proc.stderr


def test_max_pool_over_symbolic_sizes_trains_instead_of_crashing(tmp_path):
    """MaxPool's gradient kernel crashes onnxruntime 1.19 (segmentation fault) when the
    session does not know the input's height and width; the training graph takes them from
    the data. In a child process: a regression must not take the test run down."""
    code = textwrap.dedent("""
        import numpy as np
        from onnx import TensorProto, helper, numpy_helper
        from onnxsurgeon.train.loop import TrainSettings, train
        from onnxsurgeon.train.optim import OptimizerSettings
        nodes = [helper.make_node("Mul", ["x", "w"], ["a"]),
                 helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("GlobalAveragePool", ["p"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((8, 1, 1), np.float32), "w")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        x = np.random.default_rng(0).standard_normal((4, 8, 2, 8)).astype(np.float32)
        _, r = train(m, {"x": x, "t": np.ones((4, 8, 1, 1), np.float32)},
                     TrainSettings(loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=0.1), epochs=2, batch_size=4))
        print("trained", r.history[-1].loss < r.history[0].loss)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "trained True"


# ------------------------------------------------------------------ what cannot train, old models


def test_nothing_to_train_says_why():
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["xf", "k"], ["y"])]
    model = model_of(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 3])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                     {"k": np.array(2.0, np.float32)})
    data = {"x": np.ones((2, 3), np.int64), "t": np.ones((2, 3), np.float32)}
    with pytest.raises(InputError, match=r"nothing to train: no float parameter reaches the loss \(the model has no float32 parameter"):
        train(model, data, TrainSettings(loss="mse(y, t)", batch_size=2))
    with pytest.raises(InputError, match=r"nothing to train.*\(the loss depends on none of the 2 parameters"):
        train(_conv_transpose(), {"x": np.ones((2, 2, 4, 4), np.float32), "t": np.ones((2, 2, 4, 4), np.float32)},
              TrainSettings(loss="mse(x, t)", batch_size=2))


def test_statistics_of_a_batch_norm_past_the_loss_are_left_out():
    """A BatchNormalization the loss does not need leaves the training graph with its statistics
    (it used to fail with KeyError 'Parameter ... not found')."""
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Unsqueeze", ["h", "ax"], ["h3"]),
             helper.make_node("BatchNormalization", ["h3", "s", "b", "m", "v"], ["y"])]
    model = model_of(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1])],
                     {"W": np.eye(3, dtype=np.float32), "ax": np.array([2], np.int64), **{k: np.ones(3, np.float32) for k in "sbmv"}})
    x = RNG.standard_normal((4, 3)).astype(np.float32)
    _, report = train(model, {"x": x, "t": x}, TrainSettings(loss="mse(h, t)", optimizer=sgd(), batch_size=4))
    assert report.plan.trainable == ("W",) and report.plan.running_stats == ()


def test_an_old_fixed_batch_model_trains_and_evaluates(tmp_path, capsys):
    """onnx's pytorch-converted Linear: opset 6, IR 3, a batch of exactly 4, values named '0'
    and '3' (aliases '_0', '_3')."""
    path = _onnx_backend_dir() / "pytorch-converted" / "test_Linear_no_bias" / "model.onnx"
    x = RNG.standard_normal((4, 10)).astype(np.float32)
    np.savez(tmp_path / "d.npz", **{"0": x, "target": RNG.standard_normal((4, 8)).astype(np.float32)})
    losses = []
    for model in (str(path), str(tmp_path / "out.onnx")):
        assert main(["eval", model, "--data", str(tmp_path / "d.npz"), "--metric", "mse(_3, target)", "--json"]) == 0
        losses.append(json.loads(capsys.readouterr().out)["metrics"]["mse(_3, target)"])
        if model == str(path):
            assert main(["train", model, "--data", str(tmp_path / "d.npz"), "--loss", "mse(_3, target)", "--optimizer", "sgd",
                         "--lr", "0.01", "--epochs", "5", "--batch-size", "4", "-o", str(tmp_path / "out.onnx"), "-q"]) == 0
    assert losses[1] < losses[0]


def test_dry_run_runs_one_step_on_a_copy():
    model = _conv_transpose()
    model.graph.node[1].op_type = "Conv"  # a model that trains
    del model.graph.node[1].attribute[:]
    x = RNG.standard_normal((2, 2, 4, 4)).astype(np.float32)
    loss = rehearse(model, {"x": x, "t": np.zeros((2, 2, 3, 3), np.float32)}, TrainSettings(loss="mse(y, t)", batch_size=2))
    assert np.isfinite(loss) and loss > 0
