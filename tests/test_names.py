from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon.names import alias


def _ambiguous() -> onnx.ModelProto:
    """Values `a.b` and `a[b` share the alias `a_b`; `a_c` is an exact name."""
    h = onnx.helper
    nodes = [
        h.make_node("Relu", ["x"], ["a.b"]),
        h.make_node("Sigmoid", ["x"], ["a[b"]),
        h.make_node("Tanh", ["x"], ["a_c"]),
        h.make_node("Sum", ["a.b", "a[b", "a_c"], ["y"]),
    ]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    return h.make_model(h.make_graph(nodes, "g", [x], [y]), opset_imports=[h.make_opsetid("", 17)])


def test_alias_rule():
    assert alias("L4.y") == "L4_y"
    assert alias("layers[0].W") == "layers_0__W"


def test_exact_node_alias_and_index(fixture_path):
    m = osg.load(fixture_path("two_io.onnx"))
    got = osg.resolve(m, ["s", "split:1", "p"])
    assert [(r.value, r.how) for r in got] == [("s", "value"), ("s_hi", "node-output"), ("p", "value")]
    ae = osg.load(fixture_path("autoencoder.onnx"))
    (r,) = osg.resolve(ae, ["layers_0__b"])
    assert (r.value, r.how) == ("layers[0].b", "alias")


def test_exact_match_wins_over_alias():
    m = _ambiguous()
    (r,) = osg.resolve(m, ["a_c"])
    assert (r.value, r.how) == ("a_c", "value")


def test_ambiguous_alias_lists_every_candidate():
    m = _ambiguous()
    with pytest.raises(osg.InputError) as e:
        osg.resolve(m, ["a_b"])
    assert "'a.b'" in e.value.message and "'a[b'" in e.value.message


def test_every_miss_is_reported_with_suggestions(fixture_path):
    m = osg.load(fixture_path("autoencoder.onnx"))
    with pytest.raises(osg.InputError) as e:
        osg.resolve(m, ["L4.y", "L9_y", "L3_q"])
    msg = e.value.message
    assert "2 names" in msg and "'L9_y'" in msg and "'L3_q'" in msg and "did you mean" in msg
    assert "onnxsurgeon nodes" in e.value.hint


def test_multi_output_node_needs_an_index(fixture_path):
    m = osg.load(fixture_path("two_io.onnx"))
    with pytest.raises(osg.InputError, match="split:0 = s_lo"):
        osg.resolve(m, ["split"])


# --- the extended alias rule: any non-identifier character as `_`, a leading `_` before a digit


def _exported() -> onnx.ModelProto:
    """Names as exporters write them: PyTorch's `/layer1/...`, Caffe2's `gpu_0/...`, a
    parameter starting with a digit, and `a/b`, `a:b` sharing the alias `a_b`."""
    h = onnx.helper
    w = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "layer1/W")
    b = onnx.numpy_helper.from_array(np.ones(4, np.float32), "0.bias")
    nodes = [
        h.make_node("MatMul", ["x", "layer1/W"], ["/layer1/MatMul_output_0"], name="/layer1/MatMul"),
        h.make_node("Add", ["/layer1/MatMul_output_0", "0.bias"], ["gpu_0/softmax_1"], name="/layer1/Add"),
        h.make_node("Relu", ["gpu_0/softmax_1"], ["a/b"]),
        h.make_node("Neg", ["a/b"], ["a:b"]),
        h.make_node("Add", ["a/b", "a:b"], ["y"]),
    ]
    x = h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])
    y = h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])
    graph = h.make_graph(nodes, "g", [x], [y], initializer=[w, b])
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_extended_alias_rule():
    assert alias("gpu_0/softmax_1") == "gpu_0_softmax_1"
    assert alias("/layer1/Add_output_0") == "_layer1_Add_output_0"
    assert alias("save_infer_model/scale_0.tmp_1") == "save_infer_model_scale_0_tmp_1"
    assert alias("0.bias") == "_0_bias" and alias("_0_bias") == "_0_bias" and alias("0_bias") == "_0_bias"
    assert alias("conv@1:x-y") == "conv_1_x_y"
    assert alias("élan.x") == "élan_x"  # letters beyond ASCII stand in identifiers
    for name in ("gpu_0/softmax_1", "/layer1/Add_output_0", "0.bias", "a[0].b"):
        assert alias(name).isidentifier() and alias(alias(name)) == alias(name)


def test_extended_aliases_resolve_everywhere_a_name_is_taken():
    m = _exported()
    got = osg.resolve(m, ["gpu_0_softmax_1", "_layer1_MatMul_output_0", "_0_bias", "0_bias", "_layer1_Add"])
    assert [(r.value, r.how) for r in got] == [
        ("gpu_0/softmax_1", "alias"), ("/layer1/MatMul_output_0", "alias"), ("0.bias", "alias"),
        ("0.bias", "alias"), ("gpu_0/softmax_1", "alias"),  # the last one: a node's name by alias
    ]
    piece, report = osg.extract(m, inputs=["x"], outputs=["_layer1_MatMul_output_0"])
    assert [o.name for o in piece.graph.output] == ["/layer1/MatMul_output_0"]


def test_extended_alias_ambiguity_and_exact_names():
    m = _exported()
    with pytest.raises(osg.InputError) as e:
        osg.resolve(m, ["a_b"])
    assert "'a/b'" in e.value.message and "'a:b'" in e.value.message
    m.graph.node.append(onnx.helper.make_node("Identity", ["y"], ["a_b"]))
    (r,) = osg.resolve(m, ["a_b"])
    assert (r.value, r.how) == ("a_b", "value")


def test_did_you_mean_uses_the_extended_alias():
    with pytest.raises(osg.InputError) as e:
        osg.resolve(_exported(), ["_layer1_MatMul_output_1"])
    assert "did you mean '/layer1/MatMul_output_0'" in e.value.message


def test_losses_freeze_and_transfer_take_extended_aliases():
    from onnxsurgeon.train import prepare, transfer
    from onnxsurgeon.train.loop import compile_training

    m = _exported()
    x = np.ones((3, 4), np.float32)
    compiled = compile_training(m, {"x": x, "target": x}, "mse(gpu_0_softmax_1, target)")
    assert set(compiled.plan.trainable) == {"layer1/W", "0.bias"}
    with pytest.raises(osg.InputError) as e:
        compile_training(m, {"x": x, "target": x}, "mse(gpu_0_softmax_2, target)")
    assert "did you mean" in e.value.message and "gpu_0_softmax_1" in e.value.message
    assert prepare.frozen_names(m, ["layer1_*", "_0_*"]) == {"layer1/W", "0.bias"}
    dst = _exported()
    for t in dst.graph.initializer:
        t.name = {"layer1/W": "/enc/layer1/W", "0.bias": "0:bias"}[t.name]
    for n in dst.graph.node:
        n.input[:] = [{"layer1/W": "/enc/layer1/W", "0.bias": "0:bias"}.get(i, i) for i in n.input]
    _, report = transfer.transfer(m, dst, maps=["layer1_*=_enc_layer1_*"])
    assert sorted((x.target, x.source, x.how) for x in report.matched) == [
        ("/enc/layer1/W", "layer1/W", "map"), ("0:bias", "0.bias", "alias"),
    ]


def test_alias_lines_is_alias_of_each_line():
    """The fast alias of many names at once (nodes, --grep) agrees with alias, ASCII or not."""
    import random

    from onnxsurgeon.names import alias_lines

    rng = random.Random(0)
    alphabet = "ab.Z_0[]9 -/:@`é中١²"
    for _ in range(3000):
        names = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 5))]
        if rng.random() < 0.5:
            names = [n.encode("ascii", "ignore").decode() for n in names]
        assert alias_lines("\n".join(names)).split("\n") == [alias(n) for n in names], names
