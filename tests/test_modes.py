"""constant mode: BatchNorm folded to its inference form, Dropout removed, parameters frozen."""

from __future__ import annotations

import numpy as np
import onnx

import onnxsurgeon as osg
from onnxsurgeon import meta, runtime


def run(model, feeds):
    sess = runtime.session(model)
    return sess.run(None, feeds)


def test_constant_folds_batchnorm_and_removes_dropout(fixture_path):
    model = osg.load(fixture_path("bn_dropout.onnx"))
    piece, report = osg.extract(model, inputs=["image"], outputs=["logits"], params="constant")
    onnx.checker.check_model(piece, full_check=True)
    ops = {n.op_type for n in piece.graph.node}
    assert "BatchNormalization" not in ops and "Dropout" not in ops
    assert report.folded_batchnorms == ("bn1",) and report.removed_dropouts == ("drop1",)
    assert not {"bn1.running_mean", "bn1.running_var", "drop1.ratio"} & set(report.parameters)
    assert meta.frozen(piece) == set(report.parameters)
    result = osg.verify(model, piece)
    assert result.ok and result.outputs[0].max_rel_diff < 1e-5


def test_constant_on_training_mode_export_gives_inference_values(fixture_path):
    """BatchNorm with training_mode=1 and active Dropout become their inference semantics:
    the same values as the inference-mode graph with the same weights."""
    train = osg.load(fixture_path("bn_dropout_train.onnx"))
    infer = osg.load(fixture_path("bn_dropout.onnx"))
    piece, _ = osg.extract(train, inputs=["image"], outputs=["logits"], params="constant")
    assert not {"BatchNormalization", "Dropout"} & {n.op_type for n in piece.graph.node}
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    (got,) = run(piece, {"image": x})
    want = run(infer, {"image": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # and the training-mode graph itself computes something else (batch statistics)
    (train_out, *_) = run(train, {"image": x})
    assert not np.allclose(train_out, want, rtol=1e-3)
    assert osg.verify(train, piece).ok  # verify compares with the inference semantics


def test_running_stat_outputs_become_the_stored_statistics(fixture_path):
    train = osg.load(fixture_path("bn_dropout_train.onnx"))
    piece, _ = osg.extract(
        train, inputs=["image"], outputs=["logits", "bn1.running_mean_out", "drop1.mask"], params="constant"
    )
    onnx.checker.check_model(piece, full_check=True)
    x = np.zeros((2, 3, 8, 8), np.float32)
    _, mean, mask = run(piece, {"image": x})
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in train.graph.initializer}
    np.testing.assert_array_equal(mean, stored["bn1.running_mean"])
    assert mask.dtype == np.bool_ and mask.all()


def test_learnable_keeps_batchnorm(fixture_path):
    model = osg.load(fixture_path("bn_dropout.onnx"))
    piece, _ = osg.extract(model, inputs=["image"], outputs=["logits"])
    assert "BatchNormalization" in {n.op_type for n in piece.graph.node}
    assert osg.verify(model, piece).to_dict()["outputs"][0]["max_abs_diff"] == 0.0


def test_constant_on_pytorch_training_export():
    """A CNN exported by PyTorch in training mode (BatchNorm training_mode=1 with running-stat
    outputs, Dropout with training_mode=true) becomes its inference form."""
    from tests.corpus import TORCH_DIR

    model = osg.load(TORCH_DIR / "cnn_ts_train.onnx")
    piece, report = osg.extract(model, inputs=["image"], outputs=["logits"], params="constant")
    onnx.checker.check_model(piece, full_check=True)
    assert len(report.folded_batchnorms) == 2 and len(report.removed_dropouts) == 1
    assert not {"BatchNormalization", "Dropout"} & {n.op_type for n in piece.graph.node}
    result = osg.verify(model, piece)
    assert result.ok and result.outputs[0].max_rel_diff < 1e-5


def test_constant_folds_a_mixed_precision_batchnorm_in_the_input_type(tmp_path):
    """opset 15 lets BatchNormalization take float16 data with float32 parameters; the folded
    Mul and Add compute in float16, as the original did (issue 12)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    params = [numpy_helper.from_array(v.astype(np.float32), n) for n, v in (
        ("s", rng.uniform(0.5, 2, 3)), ("b", rng.standard_normal(3)), ("m", rng.standard_normal(3)), ("v", rng.uniform(0.5, 2, 3)))]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"], name="bn")],
        "mixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 3, 4, 4])], params,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    onnx.checker.check_model(model, full_check=True)
    piece, report = osg.extract(model, inputs=["x"], outputs=["y"], params="constant")
    assert report.folded_batchnorms == ("bn",)
    onnx.checker.check_model(piece, full_check=True)
    assert {t.data_type for t in piece.graph.initializer} == {TensorProto.FLOAT16}
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float16)
    (want,) = run(model, {"x": x})
    (got,) = run(piece, {"x": x})
    assert got.dtype == np.float16 and np.allclose(got.astype(np.float32), want.astype(np.float32), rtol=1e-2, atol=1e-2)
