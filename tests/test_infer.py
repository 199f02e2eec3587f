"""The node-by-node type pass (infer.py) gives exactly what onnx's shape inference on the
whole graph gives, wherever it gives a type, on real exports, the property graphs and a
deep synthetic encoder; and it does type most values of ordinary exports."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon import cut, dtypes, infer, inspection
from onnxsurgeon.graph import GraphIndex
from tests import graphgen
from tests.corpus import corpus_models

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import synth  # noqa: E402

MODELS = corpus_models()


def _untyped(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    return out


def _same(a: onnx.TypeProto | None, b: onnx.TypeProto | None) -> bool:
    return (a.SerializeToString() if a is not None else None) == (b.SerializeToString() if b is not None else None)


def _compare_cut_typing(model: onnx.ModelProto) -> tuple[int, int]:
    """Compare the pass with inference on the cone (what extract ran before) for every
    node output; return (values the pass typed, values)."""
    index = GraphIndex(model.graph)
    names = [o for n in index.nodes for o in n.output if o]
    whole = cut._infer_cone(model, index, names)
    found = infer.infer_types(model, index, names)
    typed = 0
    for name in names:
        t = found[name]
        if t is infer.UNKNOWN:
            continue
        typed += 1
        assert _same(t, whole.get(name)), (name, t, whole.get(name))
    return typed, len(names)


def _compare_nodes_typing(model: onnx.ModelProto) -> None:
    index = GraphIndex(model.graph)
    declared = {n: vi.type for n, vi in index.value_info.items() if vi.type.WhichOneof("value")}
    declared.update((n, index.type_of(n)) for n in index.initializers)
    whole = inspection._infer_whole(model, dict(declared))
    fast = inspection._types(model, index)
    assert fast.keys() == whole.keys()
    for name in whole:
        assert _same(fast[name], whole[name]), name


@pytest.mark.parametrize("model_id,path", MODELS, ids=[i for i, _ in MODELS])
def test_pass_types_like_whole_graph_inference_on_the_corpus(model_id, path):
    model = osg.load(path)
    for m in (_untyped(model), model):
        _compare_cut_typing(m)
        _compare_nodes_typing(m)


def test_pass_types_like_whole_graph_inference_on_property_graphs():
    for seed in range(40):
        model = graphgen.build(graphgen.RandomChoices(random.Random(seed))).model
        for m in (_untyped(model), model):
            _compare_cut_typing(m)
            _compare_nodes_typing(m)


@pytest.mark.parametrize("layernorm", ["primitive", "fused"])
def test_pass_types_every_value_of_an_untyped_encoder(layernorm):
    model = synth.make_transformer(1500, layernorm=layernorm)
    typed, total = _compare_cut_typing(model)
    assert typed == total  # no generated dims here: nothing is left to whole-graph inference
    _compare_nodes_typing(model)


def test_pass_types_most_values_of_real_exports():
    """The pass is not a no-op that always defers: on plain exports it types most values."""
    ids = dict(MODELS)
    for model_id in ("torch/mlp_ts", "torch/cnn_ts_eval", "torch/lstm_ts", "onnx/light_resnet50"):
        if model_id in ids:
            typed, total = _compare_cut_typing(_untyped(osg.load(ids[model_id])))
            assert typed == total, model_id


@pytest.mark.parametrize("ir_version", [3, 8])
@pytest.mark.parametrize("declared", [["M"], [None], None, [4]])
def test_a_parameter_listed_as_a_graph_input_is_typed_as_declared(ir_version, declared):
    """A parameter that is also a graph input (IR 3 exporters; an overridable default from
    IR 4 on): whole-graph inference types it as the input declares it (its data still comes
    from the initializer), so `nodes` shows y = x + b as float32[2,M], not float32[2,4]."""
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["x", "b"], ["y"]), onnx.helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 1]),
         onnx.helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, declared)],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(np.ones(4, np.float32), "b")],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)], ir_version=ir_version)
    _compare_nodes_typing(model)
    whole = {v.name: v.type for v in onnx.shape_inference.infer_shapes(model, data_prop=True).graph.value_info}
    shown = {line.outputs[0]: line.output_types[0] for line in osg.nodes(model).nodes}
    assert shown["y"] == dtypes.show(whole["y"])
    # a cut still types a new input at y from what computes it, the parameter's own shape
    _, report = osg.extract(model, inputs=["y"], outputs=["z"])
    assert report.inputs[0].type == "float32[2,4]"


def test_overloads_of_a_local_function_are_other_functions():
    """IR 10 overloads: loc.F:a passes x on, loc.F:b casts it to int64. Calls that differ only
    by overload are not one node for the pass (q was typed float32 like p, and a cut at q
    built a piece the checker refuses)."""
    helper, TP = onnx.helper, onnx.TensorProto
    imports = [helper.make_opsetid("", 18), helper.make_opsetid("loc", 1)]
    f_a = helper.make_function("loc", "F", ["x"], ["y"], [helper.make_node("Identity", ["x"], ["y"])], imports)
    f_b = helper.make_function("loc", "F", ["x"], ["y"], [helper.make_node("Cast", ["x"], ["y"], to=TP.INT64)], imports)
    f_a.overload, f_b.overload = "a", "b"
    p = helper.make_node("F", ["x"], ["p"], domain="loc", overload="a")
    q = helper.make_node("F", ["x"], ["q"], domain="loc", overload="b")
    graph = helper.make_graph(
        [p, q, helper.make_node("Add", ["q", "q"], ["r"])], "g",
        [helper.make_tensor_value_info("x", TP.FLOAT, ["N"])],
        [helper.make_tensor_value_info("p", TP.FLOAT, ["N"]), helper.make_tensor_value_info("r", TP.INT64, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=imports, ir_version=10)
    model.functions.extend([f_a, f_b])
    onnx.checker.check_model(model, full_check=True)
    typed, _ = _compare_cut_typing(model)
    assert typed == 3
    _compare_nodes_typing(model)
    assert [line.output_types for line in osg.nodes(_untyped(model)).nodes][:2] == [("float32[N]",), ("int64[N]",)]
    _, report = osg.extract(model, inputs=["q"], outputs=["r"])
    assert report.inputs[0].type == "int64[N]"


def test_made_up_dim_names_are_left_to_whole_graph_inference():
    """onnx numbers the dims it makes up (unk__0, unk__1, ...) over the whole graph, so a
    node inferred alone would get other names: such values are left UNKNOWN."""
    model = onnx.parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4] x, int64[2] s) => (float[M] z) {
            a = Reshape(x, s)
            b = Reshape(x, s)
            c = Concat<axis = 0>(a, b)
            z = ReduceSum<keepdims = 0>(c)
        }
        """
    )
    index = GraphIndex(model.graph)
    whole = cut._infer_cone(model, index, ["a", "b", "c"])
    dims = {n: [d.dim_param for d in whole[n].tensor_type.shape.dim] for n in ("a", "b")}
    assert dims["a"] != dims["b"]  # the same node, other names: position in the graph decides
    found = infer.infer_types(model, index, ["a", "b", "c"])
    assert all(found[n] is infer.UNKNOWN for n in ("a", "b", "c"))
    assert {n: t.SerializeToString() for n, t in cut._infer_types(model, index, ["a", "b"]).items()} == {
        n: whole[n].SerializeToString() for n in ("a", "b")
    }


def _pieces(model, cuts, **kw):
    out = []
    for inputs, outputs in cuts:
        try:
            piece, report = osg.extract(model, inputs=inputs, outputs=outputs, auto_inputs=True, **kw)
        except Exception as e:  # the same refusal (or the same bug) either way
            out.append(f"{type(e).__name__}: {e}")
            continue
        out.append((piece.SerializeToString(), report.to_dict()))
    return out


def _cases():
    from tests.corpus import cut_points

    for model_id, path in MODELS:
        model = osg.load(path)
        yield model_id, _untyped(model), cut_points(model, 3, 4)
        yield model_id + " (as written)", model, cut_points(model, 3, 4)
    for seed in range(30):
        g = graphgen.build(graphgen.RandomChoices(random.Random(seed)))
        yield f"graphgen {seed}", g.model, [graphgen.closed_cut(g, graphgen.RandomChoices(random.Random(seed + 1)))]
    model = synth.make_transformer(2000)
    layers = int({p.key: p.value for p in model.metadata_props}["synth.num_layers"])
    yield "synth", model, [([synth.layer_boundary(a)], [synth.layer_boundary(b)])
                           for a, b in [(layers // 4, 3 * layers // 4), (layers - 5, layers - 3), (0, 1)]]


def test_pieces_are_byte_for_byte_those_of_whole_graph_inference(monkeypatch):
    """extract with the pass gives the very bytes (value_info order included) it gave when
    onnx inferred the cone of each new input and the whole piece."""
    for name, model, cuts in _cases():
        for params in ("learnable", "constant"):
            fast = _pieces(model, cuts, params=params)
            with monkeypatch.context() as m:
                m.setattr(infer, "infer_types", lambda model, index, names: {n: infer.UNKNOWN for n in names})
                m.setattr(cut, "_infer_piece_by_node", lambda *a: None)
                slow = _pieces(model, cuts, params=params)
            assert fast == slow, (name, params)


def test_a_big_untyped_piece_is_checked_before_its_inferred_value_info_is_added(monkeypatch):
    """Over the full-check size, the value_info the type pass infers for the piece is added
    after the checker (which then does not read it) has seen the piece; the piece returned is
    byte for byte the one of onnx's inference on the piece, with records on its ports too (a
    record renames an output, whose inferred entry must be renamed with it)."""
    from onnxsurgeon import checks

    model = synth.make_transformer(2000)
    layers = int({p.key: p.value for p in model.metadata_props}["synth.num_layers"])
    a, b = synth.layer_boundary(layers // 4), synth.layer_boundary(3 * layers // 4)
    specs = [([a], [b]), ([f"x={a}"], [f"y={b}"]), ([a], [f"y={b}"]), ([f"x={a}"], [b])]
    with monkeypatch.context() as m:
        m.setattr(cut, "_infer_piece_by_node", lambda *a: None)
        slow = [osg.extract(model, inputs=i, outputs=o) for i, o in specs]
    assert all(len(p.graph.value_info) > 500 for p, _ in slow)
    seen = []
    real = checks.checker_error
    monkeypatch.setattr(checks, "FULL_CHECK_NODES", 0)
    monkeypatch.setattr(checks, "checker_error", lambda m: seen.append(len(m.graph.value_info)) or real(m))
    for (i, o), (piece, report) in zip(specs, slow):
        big, big_report = osg.extract(model, inputs=i, outputs=o)
        assert big.SerializeToString() == piece.SerializeToString(), (i, o)
        assert big_report == report
    assert seen[0] == 0 and seen[3] == 0  # no record on the output: the checker saw no value_info
