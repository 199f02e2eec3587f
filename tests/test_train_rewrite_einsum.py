"""Einsum trains as MatMul, Transpose, Unsqueeze, Squeeze and ReduceSum (onnxruntime 1.19 has
no gradient for Einsum): the same values as onnxruntime's Einsum, and the gradients of central
differences (tests/rewrite_check.py)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon.train.prepare import prepare
from tests.rewrite_check import assert_trains_as_rewritten

RNG = np.random.default_rng(12)

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


@pytest.mark.parametrize("case", sorted(CASES))
def test_einsum_trains_as_matmul(case):
    model, w = model_of(*CASES[case])
    assert_trains_as_rewritten(model, "Einsum", RNG.standard_normal(CASES[case][1]).astype(np.float32), {"W": w})


@pytest.mark.parametrize("equation, why", [
    ("bij,jk,kl->bil", "3 operands"),
    ("bii,ij->bj", "a letter repeats within 'bii'"),
    ("bij,ij->b", "'ij' are all contracted"),
    ("bij,jk->bqk", "the output's 'q' is in no operand"),
    ("b1j,jk->bk", "'1' in 'b1j,jk->bk' is not a letter"),
    ("bij,jk->bk->b", "'->' in 'bij,jk->bk->b' is not a letter"),
])
def test_einsum_that_cannot_be_rewritten_is_refused_with_the_reason(equation, why):
    inputs = ["x", "W", "W"] if equation.count(",") == 2 else ["x", "W"]
    node = helper.make_node("Einsum", inputs, ["y"], name="e", equation=equation)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((3, 3), np.float32), "W")])
    _, prep = prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), set())
    assert dict(prep.not_rewritten).get("e", "").startswith(why), prep.not_rewritten
