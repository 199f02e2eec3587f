"""Loading checks every string of a model for UTF-8 with protobuf's parser, not a walk in
Python; both must agree."""

from __future__ import annotations

import onnx
import pytest
from onnx import helper

from onnxsurgeon import serde
from onnxsurgeon.errors import InputError


def _model() -> onnx.ModelProto:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu", doc_string="doc")
    attr_node = helper.make_node("Cast", ["y"], ["z"], name="cast", to=onnx.TensorProto.FLOAT)
    graph = helper.make_graph([node, attr_node], "g", [helper.make_tensor_value_info("x", 1, ["N"])],
                              [helper.make_tensor_value_info("z", 1, ["N"])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("marker", [b"relu", b"doc", b"cast"])
def test_bad_utf8_anywhere_is_found_and_refused(marker):
    data = _model().SerializeToString()
    assert serde._text_is_utf8(data)
    bad = data.replace(marker, b"\xff" + marker[1:], 1)
    assert not serde._text_is_utf8(bad)
    assert serde.invalid_text(onnx.ModelProto.FromString(bad)) is not None
    with pytest.raises(InputError, match="not valid UTF-8"):
        serde.parse(bad)


def test_valid_models_skip_the_walk(monkeypatch):
    data = _model().SerializeToString()
    monkeypatch.setattr(serde, "invalid_text", lambda model: pytest.fail("walked a model whose text protobuf checked"))
    assert serde.parse(data).graph.node[0].name == "relu"
