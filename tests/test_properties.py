"""Properties of extract and compose over random valid models (tests/graphgen.py).

The models mix elementwise operators, MatMul, Concat/Split, TopK, BatchNormalization (as
exported for inference and in training mode), Dropout (plain, with a ratio, in training
mode, its mask read or not), int64 values, calls of model-local functions and If nodes whose
branches capture outer values (nested If too), in float32 or float16, under opsets 13 to 21.

- every random closed cut, in each of the three parameter modes, passes ``onnx.checker``
  (full check) and computes in onnxruntime what the model computes at those points: the
  learnable and the shared piece bit for bit (the shared one is the learnable graph under
  the original's parameter names), the constant piece what the model computes in inference
  mode (BatchNormalization on its running statistics, Dropout off; as ``verify`` compares),
  bit for bit unless it folded a BatchNormalization (then within rounding), with every
  BatchNormalization folded and every Dropout removed, and every parameter frozen;
- cutting A->B and B->C and composing the two pieces computes what the cut A->C computes;
- the full cut (all graph inputs to all graph outputs) is the identity: the same nodes,
  parameters, functions, opsets and values.

Values computed through a training-mode Dropout inside a piece are random: they are
compared only in constant pieces, where the Dropout is off.

Hypothesis builds the models (``graphgen.DrawChoices``: each choice is a draw, so a failure
shrinks to a small model), derandomized and without a database, so CI runs the same
examples every time.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import onnxsurgeon as osg
from onnxsurgeon import compare, meta, modes, runtime

sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402
import graphgen  # noqa: E402

EXAMPLES = 200
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def graphs(draw) -> graphgen.RandomGraph:
    return graphgen.build(graphgen.DrawChoices(draw))


@st.composite
def cuts(draw) -> tuple[graphgen.RandomGraph, list[str], list[str]]:
    g = draw(graphs())
    return (g, *graphgen.closed_cut(g, graphgen.DrawChoices(draw)))


def values_at(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
    """The values of any named tensors of the model in one onnxruntime run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    sess = runtime.session(probe, optimize=False)
    return dict(zip(names, sess.run(names, feeds)))


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = runtime.session(model, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    assert got.tobytes() == want.tobytes(), f"{what}: values differ (max {np.max(np.abs(got - want))})"


def assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Within rounding: a folded BatchNormalization computes x * a + b, not (x - mean) / sd * scale + bias;
    onnxruntime's CPU computes float16 operators in float32 and drops the casts between
    them, so a piece that starts from a rounded float16 value can differ in the last bits."""
    assert got.dtype == want.dtype and got.shape == want.shape, f"{what}: {got.dtype}{got.shape} != {want.dtype}{want.shape}"
    tol = 2e-2 if got.dtype == np.float16 else 1e-4
    g, w = got.astype(np.float64), want.astype(np.float64)
    assert np.all(np.abs(g - w) <= tol + tol * np.abs(w)), f"{what}: values differ (max {np.max(np.abs(g - w))})"


def compare_values(got: np.ndarray, want: np.ndarray, what: str, exact: bool) -> None:
    (assert_same if exact else assert_close)(got, want, what)


def feeds_for(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return compare.random_inputs(model, seed=0, batch=3)


def ops(graph: onnx.GraphProto) -> list[str]:
    """The graph's operators, those in If branches (at any depth) too."""
    return [op for n in graph.node for op in [n.op_type, *(o for a in n.attribute if a.HasField("g") for o in ops(a.g))]]


def count_features(g: graphgen.RandomGraph) -> None:
    figures.add("properties: random models")
    for feature, label in [("batchnorm", "BatchNormalization"), ("batchnorm-training", "BatchNormalization in training mode"),
                           ("dropout", "Dropout"), ("dropout-training", "Dropout in training mode"), ("int64", "int64 values"),
                           ("function", "local functions"), ("nested-if", "nested If"),
                           ("branch-dropout", "a training-mode Dropout in an If branch"),
                           ("branch-batchnorm", "a training-mode BatchNormalization in an If branch"), ("float16", "float16")]:
        figures.add(f"  models with {label}", feature in g.features)
    figures.note("  opsets", ", ".join(sorted({f for f in figures.FIGURES.get("  opsets", "").split(", ") if f} | {
        f.split()[1] for f in g.features if f.startswith("opset")}, key=int)))


# --- the properties ------------------------------------------------------------------------------


def check_random_cut(g: graphgen.RandomGraph, ins: list[str], outs: list[str], tmp: Path) -> None:
    feeds = feeds_for(g.model)
    want = values_at(g.model, feeds, ins + outs)
    inference = values_at(modes.inference_view(g.model), feeds, ins + outs)
    is_random = g.depends(outs, ins, g.random)  # computed in the piece through a training-mode Dropout
    inexact = g.depends(outs, ins, g.inexact)  # computed in the piece through a BatchNormalization
    float16 = g.depends(outs, ins, {v for v, t in g.types.items() if t == TensorProto.FLOAT16})  # computed in float16
    original = {t.name: t.SerializeToString() for t in g.model.graph.initializer}
    count_features(g)
    graphs = {}
    for mode in modes.MODES:
        what = f"{mode} cut {ins} -> {outs}"
        piece, report = osg.extract(g.model, inputs=ins, outputs=outs, params=mode)
        assert [p.name for p in report.inputs] == ins and [p.name for p in report.outputs] == outs
        path = tmp / f"{mode}.onnx"
        osg.save(piece, path)
        onnx.checker.check_model(str(path), full_check=True)
        figures.add("properties: pieces passed onnx.checker (full)")
        piece = osg.load(path)
        assert meta.mode(piece) == mode
        graphs[mode] = piece.graph
        if mode == "shared":  # the original's parameters, under their names, bytes unchanged
            assert piece.graph.SerializeToString() == graphs["learnable"].SerializeToString(), what
            assert all(original.get(t.name) == t.SerializeToString() for t in piece.graph.initializer), what
        if mode == "constant":  # inference form: every BatchNormalization folded, every Dropout removed, all frozen
            learnable = ops(graphs["learnable"])
            assert len(report.folded_batchnorms) == learnable.count("BatchNormalization"), what
            assert len(report.removed_dropouts) == learnable.count("Dropout"), what
            assert not {"BatchNormalization", "Dropout"} & set(ops(piece.graph)), what
            assert meta.frozen(piece) == {t.name for t in piece.graph.initializer}, what
            figures.add("properties: constant pieces that folded a BatchNormalization", bool(report.folded_batchnorms))
            figures.add("properties: constant pieces that removed a Dropout", bool(report.removed_dropouts))
        reference = inference if mode == "constant" else want
        got = run(piece, {v: reference[v] for v in ins})
        assert list(got) == outs
        for v in outs:
            if mode != "constant" and v in is_random:
                continue  # a training-mode Dropout in the piece: random
            rounded = v in inexact and mode == "constant" and report.folded_batchnorms
            compare_values(got[v], reference[v], f"{what}, value {v!r}", exact=not rounded and v not in float16)
        figures.add(f"properties: {mode} pieces run and compared with the original" + (" in inference mode" if mode == "constant" else ""))


def check_composition(g: graphgen.RandomGraph, b_values: list[str], c_values: list[str], mode: str, tmp: Path) -> None:
    """A->B then B->C, composed with the Network API, equals A->C."""
    feeds = feeds_for(g.model)
    a_values = graphgen.needed_inputs(g, c_values, set())  # the graph inputs C needs
    b_inner = [b for b in b_values if b not in g.inputs]  # B values the first piece computes
    ac, _ = osg.extract(g.model, inputs=a_values, outputs=c_values, params=mode)
    net = osg.Network("composed")
    x = {a: net.input(a, g.type_of(a)) for a in a_values}
    at_b = dict((b, x[b]) for b in b_values if b in g.inputs)
    if b_inner:
        a_of_b = graphgen.needed_inputs(g, b_inner, set())
        ab = net.piece(osg.load_piece(g.model, a_of_b, b_inner, mode, name="ab"))
        record = net.apply(ab, *[x[a] for a in a_of_b])
        at_b.update((b, record[b]) for b in b_inner)
    bc = net.piece(osg.load_piece(g.model, b_values, c_values, mode, name="bc"))
    out = net.apply(bc, *[at_b[b] for b in b_values])
    for k, c in enumerate(c_values):
        net.output(f"out{k}", out[c])
    composed, _ = net.build()
    path = tmp / "composed.onnx"
    osg.save(composed, path)
    onnx.checker.check_model(str(path), full_check=True)
    a_feeds = {a: feeds[a] for a in a_values}
    want = run(ac, a_feeds)
    got = run(osg.load(path), a_feeds)
    is_random = g.depends(c_values, a_values, g.random) if mode != "constant" else set()
    float16 = g.depends(c_values, a_values, {v for v, t in g.types.items() if t == TensorProto.FLOAT16})
    for k, c in enumerate(c_values):
        if c not in is_random:
            compare_values(got[f"out{k}"], want[c], f"{mode}: A->B->C vs A->C, value {c!r} (B = {b_values})", exact=c not in float16)
    figures.add(f"properties: A->B + B->C compositions ({mode})")


def check_full_cut(g: graphgen.RandomGraph, tmp: Path) -> None:
    graph = g.model.graph
    ins, outs = [v.name for v in graph.input], [v.name for v in graph.output]
    piece, _ = osg.extract(g.model, inputs=ins, outputs=outs)
    path = tmp / "full.onnx"
    osg.save(piece, path)
    onnx.checker.check_model(str(path), full_check=True)
    piece = osg.load(path)
    assert list(piece.graph.node) == list(graph.node)
    assert sorted(t.SerializeToString() for t in piece.graph.initializer) == sorted(t.SerializeToString() for t in graph.initializer)
    assert [v.name for v in piece.graph.input] == ins and [v.name for v in piece.graph.output] == outs
    assert list(piece.opset_import) == list(g.model.opset_import) and piece.ir_version == g.model.ir_version
    assert list(piece.functions) == list(g.model.functions)
    feeds = feeds_for(g.model)
    want, got = run(g.model, feeds), run(piece, feeds)
    is_random = g.depends(outs, ins, g.random)
    for v in outs:
        if v not in is_random:
            assert_same(got[v], want[v], f"full cut, value {v!r}")
    figures.add("properties: full cuts")


# --- hypothesis builds the models ------------------------------------------------------------------


@PROPERTY
@given(cut=cuts())
def test_random_closed_cut_equals_the_original(tmp_path_factory, cut):
    check_random_cut(*cut, tmp_path_factory.mktemp("cut"))


@settings(PROPERTY, max_examples=EXAMPLES // 3)
@given(cut=cuts())
def test_cut_then_compose_equals_the_direct_cut(tmp_path_factory, cut):
    for mode in modes.MODES:
        check_composition(*cut, mode, tmp_path_factory.mktemp("compose"))


@settings(PROPERTY, max_examples=EXAMPLES // 4)
@given(g=graphs())
def test_full_cut_is_the_identity(tmp_path_factory, g):
    check_full_cut(g, tmp_path_factory.mktemp("full"))


def test_cut_at_one_output_of_a_split_whose_other_output_is_needed(tmp_path):
    """Found by the first generator: the piece kept the Split, which then wrote ``lo``, now
    an input of the piece, a second time (not SSA; cut.py ``_unbind_cut_outputs``)."""
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N,4] x) => (float[N,4] y) <int64[2] sizes = {4, 4}> {
            cat = Concat <axis = 1> (x, x)
            lo, hi = Split <axis = 1> (cat, sizes)
            r = Relu (lo)
            y = Add (r, hi)
        }
    """)
    piece, _ = osg.extract(model, inputs=["x", "lo"], outputs=["y"])
    onnx.checker.check_model(piece, full_check=True)
    feeds = {"x": np.arange(8, dtype=np.float32).reshape(2, 4) - 3}
    want = values_at(model, feeds, ["lo", "y"])
    assert_same(run(piece, {"x": feeds["x"], "lo": want["lo"]})["y"], want["y"], "y")


def test_generator_covers_every_construct():
    """The generator really makes the models the properties speak of."""
    found: set[str] = set()
    ops_seen: set[str] = set()
    captured = 0
    for seed in range(200):
        g = graphgen.build(graphgen.RandomChoices(random.Random(seed)))
        found |= g.features
        for n in g.model.graph.node:
            ops_seen.add(n.op_type)
            if n.op_type == "If":
                body = next(a.g for a in n.attribute if a.name == "then_branch")
                captured += bool(set(i for m in body.node for i in m.input) - {o for m in body.node for o in m.output})
    assert {"Relu", "Add", "MatMul", "Concat", "Split", "TopK", "If", "BatchNormalization", "Dropout", "Cast", "Gate", "GatedSum"} <= ops_seen
    assert {"batchnorm-training", "dropout-training", "nested-if", "float16", "float32", "function", "int64",
            "branch-dropout", "branch-batchnorm"} <= found
    assert {f"opset {o}" for o in graphgen.OPSETS} <= found
    assert captured > 0


def test_constant_piece_is_in_inference_form_inside_branches_and_functions():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[N,4] x) => (float[N,4] y, float[N,4] z) <float ratio = {0.5}, bool training = {1}, float zero = {0.0}> {
            s = ReduceSum <keepdims = 0> (x)
            c = Greater (s, zero)
            y = If (c) <then_branch = t () => (float[N,4] ty) { ty = Dropout (x, ratio, training) },
                        else_branch = e () => (float[N,4] ey) { ey = Dropout (x, ratio, training) }>
            z = local.Drop (x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Drop (a) => (b) {
            r = Constant <value = float {0.5}> ()
            t = Constant <value = bool {1}> ()
            b = Dropout (a, r, t)
        }
    """)
    piece, _ = osg.extract(model, inputs=["x"], outputs=["y", "z"], params="constant")
    x = np.arange(1, 9, dtype=np.float32).reshape(2, 4)
    got = run(piece, {"x": x})
    assert_same(got["y"], x, "y (Dropout off in an If branch)")
    assert_same(got["z"], x, "z (Dropout off in a local function)")
