"""constant mode: BatchNorm folded to its inference form, Dropout removed, parameters frozen."""

from __future__ import annotations

import numpy as np
import onnx

import onnxsurgeon as osg
from onnxsurgeon import meta, modes, runtime


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


# BatchNorm in training mode and Dropout inside If branches, Loop bodies and local functions:
# the constant piece and the inference view both compute the inference semantics there too.
NESTED = """
    <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
    g (float[N,3,2] x) => (float[N,3,2] y, bool[N,3,2] m, float[N,3,2] z, float[N,3,2] w)
      <float[3] sc = {1.5, 2.0, 0.5}, float[3] bi = {0.1, -0.2, 0.3}, float[3] mu = {0.5, -1.0, 2.0},
       float[3] va = {4.0, 0.25, 1.0}, float ratio = {0.5}, bool training = {1}, float zero = {0.0},
       int64 two = {2}, bool yes = {1}> {
        s = ReduceSum <keepdims = 0> (x)
        c = Greater (s, zero)
        y, m = If (c) <
            then_branch = t () => (float[N,3,2] ty, bool[N,3,2] tm) {
                b, rm, rv = BatchNormalization <training_mode = 1> (x, sc, bi, mu, va)
                sh = Add (rm, rv)
                b2 = Add (b, zero)
                ty, tm = Dropout (b2, ratio, training)
            },
            else_branch = e () => (float[N,3,2] ey, bool[N,3,2] em) {
                ey, em = Dropout (x, ratio, training)
            }>
        z = local.BnDrop (x, sc, bi, mu, va)
        w = Loop (two, yes, x) <body = body (int64 i, bool cond, float[N,3,2] acc) => (bool cout, float[N,3,2] next) {
            cout = Identity (cond)
            d = Dropout (acc, ratio, training)
            next, lm, lv = BatchNormalization <training_mode = 1> (d, sc, bi, mu, va)
        }>
    }
    <domain: "local", opset_import: ["" : 17]>
    BnDrop (a, s, b, mean, var) => (o) {
        r = Constant <value = float {0.5}> ()
        t = Constant <value = bool {1}> ()
        n, fm, fv = BatchNormalization <training_mode = 1> (a, s, b, mean, var)
        o = Dropout (n, r, t)
    }
"""


def _inference_bn(x, k=1):
    sc, bi, mu, va = (np.array(v, np.float32).reshape(1, 3, 1) for v in
                      ([1.5, 2.0, 0.5], [0.1, -0.2, 0.3], [0.5, -1.0, 2.0], [4.0, 0.25, 1.0]))
    for _ in range(k):
        x = (x - mu) / np.sqrt(va + 1e-5) * sc + bi
    return x


def test_constant_is_inference_form_inside_branches_loops_and_functions():
    model = onnx.parser.parse_model(NESTED)
    onnx.checker.check_model(model, full_check=True)
    piece, report = osg.extract(model, inputs=["x"], outputs=["y", "m", "z", "w"], params="constant")
    onnx.checker.check_model(piece, full_check=True)

    def nested_ops(nodes):
        for n in nodes:
            yield n.op_type, n
            for a in n.attribute:
                for g in ([a.g] if a.HasField("g") else list(a.graphs)):
                    yield from nested_ops(g.node)

    branch_ops = [op for op, _ in nested_ops(piece.graph.node)]
    assert "Dropout" not in branch_ops and "BatchNormalization" not in branch_ops  # folded: constants in reach
    fn = [n for f in piece.functions for n in f.node]
    assert "Dropout" not in {n.op_type for n in fn}
    (bn,) = [n for n in fn if n.op_type == "BatchNormalization"]  # function inputs: the inference-mode op
    assert not any(a.name == "training_mode" for a in bn.attribute) and len(bn.output) == 1
    assert len(report.removed_dropouts) == 4 and len(report.folded_batchnorms) == 2
    x = np.random.default_rng(0).standard_normal((2, 3, 2)).astype(np.float32) + 1  # sum > 0: then branch
    for feed in (x, -x):
        y, m, z, w = run(piece, {"x": feed})
        want_y = _inference_bn(feed) if feed.sum() > 0 else feed
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
        assert m.dtype == bool and m.all()
        np.testing.assert_allclose(z, _inference_bn(feed), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(w, _inference_bn(feed, 2), rtol=1e-5, atol=1e-6)
    for seed in (0, 1):  # random data of either sign reaches both branches
        result = osg.verify(model, piece, seed=seed)
        assert result.ok, result.to_dict()


def test_inference_view_turns_off_training_inside_branches_and_functions():
    model = onnx.parser.parse_model(NESTED)
    view = modes.inference_view(model)
    onnx.checker.check_model(view, full_check=True)
    x = np.random.default_rng(2).standard_normal((2, 3, 2)).astype(np.float32) + 1
    y, m, z, w = run(view, {"x": x})
    np.testing.assert_allclose(y, _inference_bn(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z, _inference_bn(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w, _inference_bn(x, 2), rtol=1e-5, atol=1e-6)
    assert m.all()
    assert model.SerializeToString() == onnx.parser.parse_model(NESTED).SerializeToString()  # input untouched
