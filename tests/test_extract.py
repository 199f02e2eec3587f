"""extract on the fixtures: exact values, closed cuts, records, overrides, metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon import meta, serde


def cut(path, inputs, outputs, params="learnable", **kw):
    model = osg.load(path)
    before = model.SerializeToString()
    piece, report = osg.extract(model, inputs=inputs, outputs=outputs, params=params, **kw)
    # in memory, a piece refers to its source's external data by absolute path
    onnx.checker.check_model(serde.materialize(piece), full_check=True)
    assert model.SerializeToString() == before  # the source is never changed
    result = osg.verify(model, piece)
    assert result.ok, result.to_dict()
    return model, piece, report


def test_feature_extractor_cut(fixture_path):
    model, piece, report = cut(fixture_path("autoencoder.onnx"), ["input"], ["L4_y"], "constant")
    assert [v.name for v in piece.graph.input] == ["input"]
    assert [v.name for v in piece.graph.output] == ["L4.y"]
    assert report.outputs[0].type == "float32[N,16]"  # symbolic batch kept
    assert {n.op_type for n in piece.graph.node} == {"MatMul", "Add", "Relu"}
    assert len(piece.graph.node) == 12
    assert set(report.parameters) == {"L1.W", "layers[0].b", "L2.W", "L2.b", "L3.W", "L3.b", "L4.W", "L4.b"}
    assert meta.frozen(piece) == set(report.parameters)
    assert meta.mode(piece) == "constant"


def test_values_are_bit_identical(fixture_path):
    model, piece, _ = cut(fixture_path("autoencoder.onnx"), ["L2.y"], ["L6.y"])
    result = osg.verify(model, piece)
    assert result.outputs[0].max_abs_diff == 0.0


def test_records_rename_inputs_and_outputs(fixture_path):
    _, piece, report = cut(fixture_path("autoencoder.onnx"), ["feat=input"], ["z=L4.y", "h=L2.y"])
    assert [v.name for v in piece.graph.input] == ["feat"]
    assert [v.name for v in piece.graph.output] == ["z", "h"]
    provenance = meta.cut(piece)
    assert provenance["inputs"] == {"feat": "input"}
    assert provenance["outputs"] == {"z": "L4.y", "h": "L2.y"}


def test_identity_cut_and_output_that_is_an_input(fixture_path):
    _, piece, _ = cut(fixture_path("autoencoder.onnx"), ["L3.y"], ["L3.y", "L4.y"])
    assert [v.name for v in piece.graph.output] == ["L3.y", "L4.y"]
    _, piece, _ = cut(fixture_path("autoencoder.onnx"), ["x=L3.y"], ["y=L3.y"])
    assert [n.op_type for n in piece.graph.node] == ["Identity"]


def test_parameter_as_input(fixture_path):
    _, piece, report = cut(fixture_path("autoencoder.onnx"), ["input", "L1.W"], ["L1.y"])
    assert "L1.W" not in report.parameters
    assert [v.name for v in piece.graph.input] == ["input", "L1.W"]
    assert report.inputs[1].type == "float32[64,48]"


def test_type_override_reinfers_downstream(fixture_path):
    model = osg.load(fixture_path("autoencoder.onnx"))
    piece, report = osg.extract(model, inputs=["input", "L1.W:float32[64,10]", "layers[0].b:float32[10]"], outputs=["L1.y"])
    onnx.checker.check_model(piece, full_check=True)
    assert report.outputs[0].type == "float32[N,10]"


def test_type_override_that_cannot_fit(fixture_path):
    model = osg.load(fixture_path("autoencoder.onnx"))
    with pytest.raises(osg.InputError, match="does not fit"):
        osg.extract(model, inputs=["input:float32[N,7]"], outputs=["L1.y"])


def test_open_cut_names_the_leak_and_its_path(fixture_path):
    model = osg.load(fixture_path("two_io.onnx"))
    with pytest.raises(osg.InputError) as e:
        osg.extract(model, inputs=["a"], outputs=["p"])
    assert "'b' leaks in: b -> b1 -> s -> p" in e.value.message
    assert "--auto-inputs" in e.value.hint
    piece, report = osg.extract(model, inputs=["a"], outputs=["p"], auto_inputs=True)
    assert [p.name for p in report.inputs] == ["a", "b"] and report.inputs[1].resolved is None
    assert osg.verify(model, piece).ok


def test_output_independent_of_inputs_is_refused(fixture_path):
    model = osg.load(fixture_path("two_io.onnx"))
    with pytest.raises(osg.InputError, match="does not depend on any listed input"):
        osg.extract(model, inputs=["a"], outputs=["split_sizes"])


def test_multi_output_node_and_index(fixture_path):
    _, piece, report = cut(fixture_path("two_io.onnx"), ["s"], ["split:1", "r"])
    assert [p.value for p in report.outputs] == ["s_hi", "r"]


def test_if_branch_captures_outer_values(fixture_path):
    model, piece, report = cut(fixture_path("if_outer.onnx"), ["h", "cond"], ["out"])
    # bias_then, scale and inner_scale are read only inside the branches
    assert {"bias_then", "scale", "inner_scale"} <= set(report.parameters)
    assert "W1" not in report.parameters
    for flag in (True, False):
        data = {"x": np.ones((3, 4), np.float32), "cond": np.array(flag)}
        assert osg.verify(model, piece, data).ok


def test_loop_and_scan_bodies_capture_outer_weights(fixture_path):
    _, _, report = cut(fixture_path("loop_scan.onnx"), ["x", "trip"], ["loop_out"])
    assert {"Wl", "outer_b"} <= set(report.parameters) and "Ws" not in report.parameters
    _, _, report = cut(fixture_path("loop_scan.onnx"), ["seq"], ["scan_out", "scan_steps"])
    assert "Ws" in report.parameters


def test_local_functions_are_kept(fixture_path):
    _, piece, _ = cut(fixture_path("local_function.onnx"), ["h1"], ["out"])
    assert [f.name for f in piece.functions] == ["LinearRelu"]
    assert any(o.domain == "custom.fn" for o in piece.opset_import)


def test_shared_weight_and_graph_output_used_inside(fixture_path):
    _, piece, report = cut(fixture_path("shared_weight.onnx"), ["h"], ["y"])
    assert report.parameters == ("W",)
    _, piece, report = cut(fixture_path("shared_weight.onnx"), ["x"], ["h", "y"])
    assert len(piece.graph.initializer) == 1


def test_ir3_model_lists_initializers_as_inputs(fixture_path):
    model, piece, report = cut(fixture_path("ir3_constants.onnx"), ["x"], ["y"])
    assert piece.ir_version == 3
    names = {v.name for v in piece.graph.input}
    assert {t.name for t in piece.graph.initializer} <= names
    assert report.inputs[0].name == "x"
    _, piece, _ = cut(fixture_path("ir3_constants.onnx"), ["/block/MatMul:0@main"], ["y"])
    assert any(n.op_type == "Constant" for n in piece.graph.node)


def test_metadata_and_versions_are_kept(fixture_path):
    model = osg.load(fixture_path("autoencoder.onnx"))
    piece, _ = osg.extract(model, inputs=["input"], outputs=["L4.y"], source={"file": "autoencoder.onnx", "sha256": "x"})
    assert piece.ir_version == model.ir_version
    assert list(piece.opset_import) == list(model.opset_import)
    assert piece.graph.doc_string == model.graph.doc_string
    assert meta.get(piece, "author") == "fixtures"
    assert json.loads(meta.get(piece, meta.CUT))["file"] == "autoencoder.onnx"


def test_shared_and_learnable_keep_names(fixture_path):
    for mode in ("shared", "learnable"):
        _, piece, report = cut(fixture_path("autoencoder.onnx"), ["input"], ["L4.y"], mode)
        assert meta.mode(piece) == mode and not meta.frozen(piece)
        assert "L1.W" in report.parameters


def test_unused_input_is_a_warning(fixture_path):
    _, _, report = cut(fixture_path("two_io.onnx"), ["a", "b"], ["a1"])
    assert any("'b'" in w for w in report.warnings)


def test_external_data_in_and_out(fixture_path, tmp_path):
    model, piece, report = cut(fixture_path("autoencoder_external/autoencoder.onnx"), ["input"], ["L4.y"], "constant")
    assert report.parameter_bytes > 20_000
    inline = tmp_path / "inline.onnx"
    osg.save(piece, inline)
    assert not (tmp_path / "inline.onnx.data").exists()
    ext = tmp_path / "ext.onnx"
    written = osg.save(piece, ext, external_data=True)
    assert [p.name for p in written] == ["ext.onnx.data", "ext.onnx"]
    assert ext.stat().st_size < 5_000
    for path in (inline, ext):
        assert osg.verify(model, osg.load(path)).ok
    # onnx itself reads what we wrote
    onnx.checker.check_model(onnx.load(str(ext)), full_check=True)


def _if_with_local_t() -> onnx.ModelProto:
    """a = Relu(x); o = If(c): then t = Neg(a) (a name of its own), else e = Abs(a)."""
    from onnx import TensorProto, helper

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 2])  # noqa: E731
    then = helper.make_graph([helper.make_node("Neg", ["a"], ["t"], name="neg")], "then", [], [vi("t")])
    other = helper.make_graph([helper.make_node("Abs", ["a"], ["e"], name="abs")], "else", [], [vi("e")])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"], name="relu"),
         helper.make_node("If", ["c"], ["o"], name="if1", then_branch=then, else_branch=other)],
        "scopes", [vi("x"), helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [vi("o")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_record_name_defined_inside_a_branch_is_refused():
    """--out t=a while a branch defines its own t: renaming would reach into the branch,
    which would then read its own t for a (issue 12). Refused, naming the node."""
    model = _if_with_local_t()
    with pytest.raises(osg.InputError, match=r"the new name 't' is already a value inside the piece, in a subgraph of node 'if1'"):
        osg.extract(model, inputs=["x", "c"], outputs=["t=a", "o"])
    piece, _ = osg.extract(model, inputs=["x", "c"], outputs=["u=a", "o"])  # another name works
    onnx.checker.check_model(piece, full_check=True)
    assert osg.verify(model, piece).ok


@pytest.mark.parametrize("new", ["fc.weight:float32[5,255]", "fc.weight:float32[5,256]"])
def test_new_weight_that_cannot_fit_is_refused_before_writing(fixture_path, new):
    """A [5,255] weight against 256 features, or a [5,256] one beside the old [10] bias: onnx's
    shape inference passes both, onnxruntime would fail at run time (issue 12)."""
    model = osg.load(fixture_path("bn_dropout.onnx"))
    with pytest.raises(osg.InputError, match=r"does not fit the piece: node 'fc': Gemm"):
        osg.extract(model, inputs=["flat.y", new], outputs=["logits"])
    piece, _ = osg.extract(model, inputs=["flat.y", "fc.weight:float32[10,256]"], outputs=["logits"])  # same shape: fine
    onnx.checker.check_model(piece, full_check=True)


def test_a_piece_the_checker_refuses_is_a_bug_not_a_file(fixture_path, monkeypatch, tmp_path):
    """Every piece passes onnx.checker before it is returned: a bug that builds an invalid
    one is exit 4 with the checker's words, and no file is written (issue 12)."""
    from onnxsurgeon import checks, modes
    from onnxsurgeon.cli import main

    real = modes.freeze

    def broken(graph, *args, **kw):  # a bug: the folded Mul reads a value nothing produces
        out = real(graph, *args, **kw)
        graph.node[0].input[0] = "nowhere"
        return out

    monkeypatch.setattr(modes, "freeze", broken)
    model = osg.load(fixture_path("bn_dropout.onnx"))
    with pytest.raises(checks.InvalidResult, match="onnxsurgeon built a piece that onnx.checker refuses"):
        osg.extract(model, inputs=["image"], outputs=["logits"], params="constant")
    out = tmp_path / "p.onnx"
    assert main(["extract", str(fixture_path("bn_dropout.onnx")), "--in", "image", "--out", "logits", "--params", "constant", "-o", str(out)]) == 4
    assert not out.exists()


def test_verify_draws_indices_below_the_table_they_index(tmp_path):
    """BERT-style inputs: token_type_ids index a table of 2 rows, input_ids one of 50 (through
    a Cast). verify's random data stays inside both, so it checks instead of failing (issue 12)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
         helper.make_node("Gather", ["word", "ids32"], ["w"]),
         helper.make_node("Gather", ["type", "token_type_ids"], ["t"]),
         helper.make_node("Add", ["w", "t"], ["e"]), helper.make_node("Relu", ["e"], ["y"])],
        "bertish",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", "T"]),
         helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["N", "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 8])],
        [numpy_helper.from_array(rng.standard_normal((50, 8)).astype(np.float32), "word"),
         numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "type")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    piece, _ = osg.extract(model, inputs=["input_ids", "token_type_ids"], outputs=["e"])
    for seed in range(5):
        assert osg.verify(model, piece, seed=seed).ok


REC = Path(__file__).resolve().parents[1] / ".corpus" / "rapidocr-onnxruntime-1.4.4" / "ch_PP-OCRv4_rec_infer.onnx"


@pytest.mark.skipif(not REC.is_file(), reason="rapidocr not fetched (scripts/fetch_corpus.py)")
def test_output_of_unknown_rank_needs_data_not_a_bug(cli, tmp_path):
    """paddle2onnx's OCR recognizer: shape inference cannot rank this value, and random inputs
    (unknown dims set to 2) are too narrow to run the model. That is bad input (exit 2 with
    the way out), not a piece onnx.checker refuses (exit 4); real-sized data types it."""
    out = tmp_path / "piece.onnx"
    code, _, err = cli("extract", REC, "--in", "p2o.Add.31", "--out", "p2o.MatMul.13", "--auto-inputs", "-o", out)
    assert code == 2 and "'p2o.MatMul.13'" in err and "--data" in err, err
    assert not out.exists()
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((1, 3, 48, 320)).astype(np.float32))
    code, _, err = cli("extract", REC, "--in", "p2o.Add.31", "--out", "p2o.MatMul.13", "--auto-inputs", "--data", data, "-o", out)
    assert code == 0, err
    onnx.checker.check_model(onnx.load(out), full_check=True)


TRANSFORMER_DYNAMO = Path(__file__).resolve().parent / "corpus" / "torch" / "transformer_dynamo.onnx"


def test_a_big_piece_is_checked_before_its_value_info_is_added(monkeypatch):
    """Over the full-check size, the checker (which then does not read value_info) gets the
    piece before its copy of the inner values' types; the piece returned has them all, byte
    for byte as a piece checked in full (issue 15)."""
    from onnxsurgeon import checks

    model = osg.load(TRANSFORMER_DYNAMO)
    inner = [n.output[0] for n in model.graph.node if n.op_type != "Constant"]
    spec = dict(inputs=["x"], outputs=[inner[-3]])
    small, small_report = osg.extract(model, **spec)
    assert len(small.graph.value_info) > 20  # the model records the types of inner values
    seen = []
    real = checks.checker_error
    monkeypatch.setattr(checks, "FULL_CHECK_NODES", 0)
    monkeypatch.setattr(checks, "checker_error", lambda m: seen.append(len(m.graph.value_info)) or real(m))
    big, big_report = osg.extract(model, **spec)
    assert seen == [0]
    assert big.SerializeToString() == small.SerializeToString()
    assert big_report == small_report


def test_a_big_piece_the_checker_refuses_is_still_refused(fixture_path, monkeypatch):
    """The check without value_info still refuses a piece onnxsurgeon built wrongly (issue 15)."""
    from onnxsurgeon import checks, modes

    real = modes.freeze

    def broken(graph, *args, **kw):  # a bug: a node reads a value nothing produces
        out = real(graph, *args, **kw)
        graph.node[0].input[0] = "nowhere"
        return out

    monkeypatch.setattr(modes, "freeze", broken)
    monkeypatch.setattr(checks, "FULL_CHECK_NODES", 0)
    model = osg.load(fixture_path("bn_dropout.onnx"))
    with pytest.raises(checks.InvalidResult, match="onnx.checker refuses: Nodes in a graph must be topologically sorted"):
        osg.extract(model, inputs=["image"], outputs=["logits"], params="constant")
