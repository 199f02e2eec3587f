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
from tests.corpus import corpus_models, cut_points, example_inputs

MODELS = corpus_models()
# A training-mode Dropout is random: only its constant (inference) form can be compared.
RANDOM = {"torch/cnn_ts_train"}


def test_corpus_covers_what_the_issue_asks():
    ids = {i for i, _ in MODELS}
    assert {"torch/mlp_ts", "torch/cnn_ts_train", "torch/transformer_ts", "torch/transformer_dynamo",
            "torch/lstm_ts", "torch/control_flow_ts", "torch/mlp_dynamo_extdata", "torch/mlp_ts_init_as_inputs"} <= ids
    assert any(i.startswith("onnx/") for i in ids)


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
