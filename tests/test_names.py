from __future__ import annotations

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
