"""ConvTranspose trains as a Conv (onnxruntime 1.19 has no CPU kernel for ConvTransposeGrad):
same values as onnxruntime's ConvTranspose, and one SGD step moves the kernel and the bias by
the learning rate times the gradient measured by central differences of the original model
(the loss is quadratic in them, so central differences are exact up to rounding)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon import runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings
from onnxsurgeon.train.prepare import prepare
from tests.rewrite_check import assert_trains_as_rewritten

RNG = np.random.default_rng(11)
LR = 0.01

CASES = {  # name: (x shape, kernel shape, attributes, bias)
    "2d_stride2_pads_output_padding": ((2, 2, 3, 4), (2, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 1, 1], "output_padding": [1, 0]}, True),
    "2d_groups_dilation": ((2, 4, 3, 3), (4, 1, 2, 2), {"group": 2, "dilations": [2, 1]}, False),
    "1d_stride3": ((2, 3, 4), (3, 2, 2), {"strides": [3]}, True),
    "2d_paddle_upsample": ((2, 2, 3, 3), (2, 2, 2, 2), {"strides": [2, 2]}, False),
    "2d_output_shape": ((2, 2, 3, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [6, 7]}, True),
    "2d_output_shape_same_upper": ((2, 2, 3, 3), (2, 2, 4, 3), {"strides": [2, 1], "output_shape": [5, 4], "auto_pad": "SAME_UPPER"}, False),
    "1d_same_upper": ((2, 3, 5), (3, 2, 4), {"strides": [2], "auto_pad": "SAME_UPPER"}, True),
    "1d_same_lower": ((2, 3, 5), (3, 2, 4), {"strides": [3], "auto_pad": "SAME_LOWER"}, True),
    "2d_valid": ((2, 2, 3, 3), (2, 2, 3, 2), {"strides": [2, 2], "auto_pad": "VALID"}, False),
    # onnxruntime's own forms where ONNX's formulas give negative pads:
    # SAME with a kernel shorter than the stride: no padding, out = stride (in - 1) + kernel
    "1d_same_upper_kernel_below_stride": ((2, 2, 5), (2, 2, 1), {"strides": [2], "auto_pad": "SAME_UPPER"}, True),
    # an output_shape past the kernel's reach: the extra places hold the bias alone, at the end
    "1d_output_shape_past_the_kernel": ((2, 2, 5), (2, 2, 3), {"strides": [2], "output_shape": [13]}, True),
    "2d_output_shape_past_the_kernel_on_one_axis": ((2, 2, 3, 3), (2, 2, 3, 3), {"strides": [2, 2], "output_shape": [6, 8]}, True),
    # pads beyond the kernel's reach crop the output
    "1d_pads_past_the_kernel": ((2, 2, 5), (2, 2, 2), {"strides": [2], "pads": [2, 1]}, True),
    "3d_pads_past_the_kernel_groups": ((2, 4, 2, 3, 2), (4, 1, 2, 1, 2), {"group": 2, "strides": [2, 1, 2], "pads": [0, 2, 1, 2, 0, 0]}, True),
}


def model_of(x_shape, k_shape, attrs, bias):
    cout = k_shape[1] * attrs.get("group", 1)
    inits = {"K": RNG.standard_normal(k_shape).astype(np.float32)}
    inputs = ["x", "K"]
    if bias:
        inits["B"] = RNG.standard_normal(cout).astype(np.float32)
        inputs.append("B")
    node = helper.make_node("ConvTranspose", inputs, ["y"], name="up", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


@pytest.mark.parametrize("case", sorted(CASES))
def test_conv_transpose_trains_as_a_conv(case):
    x_shape, k_shape, attrs, bias = CASES[case]
    model, inits = model_of(x_shape, k_shape, attrs, bias)
    assert_trains_as_rewritten(model, "ConvTranspose", RNG.standard_normal(x_shape).astype(np.float32), inits)


def test_conv_transpose_with_output_shape_on_unknown_sizes_is_refused_with_the_reason():
    model, _ = model_of((2, 2, 3, 3), (2, 2, 2, 2), {"strides": [2, 2], "output_shape": [6, 6]}, False)
    del model.graph.input[0].type.tensor_type.shape.dim[2:]
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim.add().dim_param = "W"
    _, prep = prepare(model, set())
    assert dict(prep.not_rewritten).get("up", "").startswith("output_shape or auto_pad NOTSET and the spatial sizes")


@pytest.mark.parametrize("mode", ["SAME_UPPER", "SAME_LOWER"])
def test_conv_transpose_with_auto_pad_same_trains_on_unknown_sizes(mode):
    """SAME's total padding, stride (in - 1) + output_padding + d (k - 1) + 1 - in * stride,
    does not depend on the input's size: no need to know it."""
    model, inits = model_of((2, 2, 3, 4), (2, 3, 3, 4), {"strides": [2, 1], "auto_pad": mode, "dilations": [1, 2]}, True)
    for k, d in enumerate(model.graph.input[0].type.tensor_type.shape.dim[2:]):
        d.dim_param = f"S{k}"
    assert_trains_as_rewritten(model, "ConvTranspose", RNG.standard_normal((2, 2, 3, 4)).astype(np.float32), inits)


@pytest.mark.parametrize("sizes", ["symbolic", "known"])
def test_average_pool_trains_as_a_depthwise_conv(sizes):
    """onnxruntime 1.19's AveragePoolGrad returns an empty gradient (paddle2onnx's text
    recognizer then failed one node later; pinned below): AveragePool is written as a
    depthwise Conv, with sizes known or not."""
    dims = ["H", "W"] if sizes == "symbolic" else [3, 4]
    nodes = [helper.make_node("Mul", ["x", "S"], ["h"]),
             helper.make_node("AveragePool", ["h"], ["y"], name="pool", kernel_shape=[3, 2], strides=[3, 2])]
    s = RNG.standard_normal((2, 1, 1)).astype(np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, *dims])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(s, "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = RNG.standard_normal((2, 2, 3, 4)).astype(np.float32)
    prepared, _ = prepare(model, set())
    assert "AveragePool" not in {n.op_type for n in prepared.graph.node}
    want = runtime.run(runtime.session(model), {"x": x})[0]
    np.testing.assert_allclose(runtime.run(runtime.session(prepared), {"x": x})[0], want, rtol=1e-6, atol=1e-6)
    t = RNG.standard_normal(want.shape).astype(np.float32)
    trained, _ = train(model, {"x": x, "t": t}, TrainSettings(loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=2))
    s1 = numpy_helper.to_array(trained.graph.initializer[0]).astype(np.float64)
    # y is linear in S: the gradient of the mean squared error, computed in numpy
    win = x.astype(np.float64).reshape(2, 2, 1, 3, 2, 2).mean(axis=(3, 5))  # [N, C, 1, 2] averages of x
    y = win * s.astype(np.float64)
    grad = (2 * (y - t) * win).sum(axis=(0, 2, 3)) / y[0].size / 2
    np.testing.assert_allclose((s.astype(np.float64) - s1).reshape(-1) / LR, grad, rtol=1e-4, atol=1e-6)


def test_fact_average_pool_gradient_fails_without_the_rewrite(monkeypatch):
    """Why AveragePool is rewritten: with onnxruntime's own AveragePoolGrad the first step fails."""
    from onnxsurgeon.train import rewrite

    monkeypatch.delitem(rewrite.REWRITES, "AveragePool")
    nodes = [helper.make_node("Mul", ["x", "S"], ["h"], name="scale"),
             helper.make_node("AveragePool", ["h"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((2, 1, 1), np.float32), "S")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    data = {"x": np.ones((2, 2, 4, 4), np.float32), "t": np.zeros((2, 2, 2, 2), np.float32)}
    with pytest.raises(InputError, match="gradient of node 'scale'.*Can broadcast 0"):
        train(model, data, TrainSettings(loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=2))
