"""compose: the four CNTK examples against their pieces run separately, parameter modes,
opsets, functions and subgraphs, the CLI, and bad recipes (exit 2 with line:column)."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import meta, runtime, serde
from onnxsurgeon.arrays import random_inputs
from onnxsurgeon.composition import Network, PieceError, compose, load_piece
from onnxsurgeon.composition.inline import Template

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FIXTURES = ROOT / "fixtures"
CLASSIFIER = EXAMPLES / "models" / "classifier.onnx"
TOWER = EXAMPLES / "models" / "tower.onnx"
RNG = np.random.default_rng(0)


def build(recipe) -> tuple[onnx.ModelProto, osg.ComposeReport]:
    model, report = compose(recipe)
    onnx.checker.check_model(serde.materialize(model), full_check=True)
    return model, report


def run(model: onnx.ModelProto, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    sess = runtime.session(model)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def floats(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# --- the four examples ----------------------------------------------------------------------


def test_feature_extractor_equals_the_encoder_and_new_layers_by_hand():
    model, report = build(EXAMPLES / "feature_extractor" / "recipe.toml")
    x = floats(5, 64)
    encoder, _ = osg.extract(osg.load(FIXTURES / "autoencoder.onnx"), inputs=["input"], outputs=["L4.y"], params="constant")
    feat = run(encoder, input=x)["L4.y"]
    h = 1 / (1 + np.exp(-(feat @ init(model, "hidden.W") + init(model, "hidden.b"))))
    want = h @ init(model, "classifier.W") + init(model, "classifier.b")
    np.testing.assert_allclose(run(model, features=x)["z"], want, rtol=1e-5, atol=1e-6)
    counts = report.counts()
    assert (counts["new"]["count"], counts["frozen"]["count"], counts["copied"]["count"]) == (4, 8, 0)
    assert meta.frozen(model) == {f"encoder/{n}" for n in ("L1.W", "layers[0].b", "L2.W", "L2.b", "L3.W", "L3.b", "L4.W", "L4.b")}
    assert report.outputs == (("z", "float32[N,10]"),)


def test_new_layers_are_seeded_and_documented_glorot_uniform():
    a, _ = build(EXAMPLES / "feature_extractor" / "recipe.toml")
    b, _ = build(EXAMPLES / "feature_extractor" / "recipe.toml")
    c, _ = compose(EXAMPLES / "feature_extractor" / "recipe.toml", seed=1)
    w = init(a, "hidden.W")
    assert np.array_equal(w, init(b, "hidden.W")) and not np.array_equal(w, init(c, "hidden.W"))
    limit = np.sqrt(6 / (16 + 32))
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.8 * limit
    assert not init(a, "hidden.b").any()


def test_kl_adaptation_clones_equal_the_classifier():
    model, report = build(EXAMPLES / "kl_adaptation" / "recipe.toml")
    x = floats(6, 40)
    want = run(osg.load(CLASSIFIER), features=x)["logits"]
    out = run(model, features=x)
    np.testing.assert_array_equal(out["z"], want)  # a learnable copy computes exactly the same
    np.testing.assert_allclose(out["zRef"], want, rtol=1e-5, atol=1e-5)  # BatchNorm folded
    names = {t.name for t in model.graph.initializer}
    assert {"adapt/L1.W", "ref/L1.W"} <= names and "L1.W" not in names  # both uses hold copies
    frozen = meta.frozen(model)
    assert frozen and all(n.startswith("ref/") for n in frozen)
    assert {p.state for p in report.parameters if p.name.startswith("adapt/")} == {"copied"}
    assert [p.name for p in report.pieces] == ["adapt", "ref"] and report.pieces[1].mode == "constant"


def test_dssm_shares_one_tower():
    model, report = build(EXAMPLES / "dssm" / "recipe.toml")
    q, d = floats(4, 100), floats(4, 100)
    tower = osg.load(TOWER)
    vq, vd = run(tower, text=q)["semantic"], run(tower, text=d)["semantic"]
    cos = (vq * vd).sum(-1, keepdims=True) / (np.linalg.norm(vq, axis=-1, keepdims=True) * np.linalg.norm(vd, axis=-1, keepdims=True))
    np.testing.assert_allclose(run(model, query=q, doc=d)["score"], cos, rtol=1e-5, atol=1e-6)
    # each tower parameter once, under its own name; the second use adds no bytes
    assert sorted(t.name for t in model.graph.initializer) == sorted(t.name for t in tower.graph.initializer)
    assert serde.weight_bytes(model) == serde.weight_bytes(tower)
    assert meta.shared(model) == {t.name for t in tower.graph.initializer}
    assert {p.state for p in osg.params(model).params} == {"shared"}
    assert report.pieces[0].uses == ("tower", "tower_2")

    net = Network()
    piece = net.piece(TOWER, inputs=["text"], outputs=["semantic"], params="shared")
    net.output("v", net.apply(piece, net.input("query", "float32[N,100]")))
    one_use, _ = net.build()
    assert serde.weight_bytes(one_use) == serde.weight_bytes(model)


def test_fdlr_starts_as_the_identity_and_is_a_linear_transform():
    model, report = build(EXAMPLES / "fdlr" / "recipe.toml")
    x = floats(3, 40)
    classifier = osg.load(CLASSIFIER)
    want = run(classifier, features=x)["logits"]
    np.testing.assert_allclose(run(model, features=x)["z"], want, rtol=1e-5, atol=1e-5)
    # with another transform, the network computes the classifier of the transformed input
    a, b = floats(40, 40), floats(40)
    for t in model.graph.initializer:
        if t.name in ("fdlr.W", "fdlr.b"):
            t.CopyFrom(numpy_helper.from_array(a if t.name == "fdlr.W" else b, t.name))
    want = run(classifier, features=x @ a + b)["logits"]
    np.testing.assert_allclose(run(model, features=x)["z"], want, rtol=1e-4, atol=1e-4)
    new = [p.name for p in report.parameters if p.state == "new"]
    assert new == ["fdlr.W", "fdlr.b"] and meta.frozen(model) == {p.name for p in report.parameters if p.state == "frozen"}


def test_python_api_example_builds_the_feature_extractor(capsys):
    import runpy

    api = runpy.run_path(str(EXAMPLES / "python_api.py"))
    model, _ = api["build"]()
    recipe, _ = compose(EXAMPLES / "feature_extractor" / "recipe.toml")
    assert model.graph.SerializeToString() == recipe.graph.SerializeToString()


def test_example_models_are_up_to_date():
    import runpy

    models = runpy.run_path(str(EXAMPLES / "build_models.py"))["MODELS"]
    for name, make in models.items():
        assert make().SerializeToString() == (EXAMPLES / "models" / name).read_bytes(), f"rebuild examples/models/{name}"


# --- parameter modes --------------------------------------------------------------------------


def test_learnable_uses_get_their_own_copies():
    net = Network()
    x = net.input("x", "float32[N,40]")
    p = net.piece(CLASSIFIER, inputs=["features"], outputs=["logits"])
    net.output("a", net.apply(p, x))
    net.output("b", net.apply(p, x))
    model, report = net.build()
    n = len(osg.load(CLASSIFIER).graph.initializer)
    assert len(model.graph.initializer) == 2 * n
    assert {p.state for p in report.parameters} == {"copied"}
    v = floats(2, 40)
    out = run(model, x=v)
    np.testing.assert_array_equal(out["a"], out["b"])


def test_already_extracted_piece_keeps_its_mode(tmp_path):
    piece, _ = osg.extract(osg.load(FIXTURES / "autoencoder.onnx"), inputs=["input"], outputs=["feat=L4.y"], params="constant")
    osg.save(piece, tmp_path / "feat.onnx")
    (tmp_path / "r.toml").write_text(textwrap.dedent("""
        [inputs]
        x = "float32[N,64]"
        [pieces.feat]
        piece = "feat.onnx"
        [outputs]
        y = "relu(feat(x))"
    """))
    model, report = build(tmp_path / "r.toml")
    assert report.pieces[0].mode == "constant" and len(meta.frozen(model)) == 8


def test_whole_piece_can_be_frozen_but_not_unfrozen(tmp_path):
    learnable, _ = osg.extract(osg.load(CLASSIFIER), inputs=["features"], outputs=["logits"])
    p = load_piece(learnable, params="constant")
    assert p.mode == "constant" and "BatchNormalization" not in {n.op_type for n in p.model.graph.node}
    frozen, _ = osg.extract(osg.load(CLASSIFIER), inputs=["features"], outputs=["logits"], params="constant")
    with pytest.raises(osg.InputError, match="cannot become learnable"):
        load_piece(frozen, params="learnable")


def test_shared_pieces_with_one_parameter_name_and_different_values_are_refused():
    tower = osg.load(TOWER)
    other = onnx.ModelProto()
    other.CopyFrom(tower)
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(tower.graph.initializer[0])), tower.graph.initializer[0].name))
    net = Network()
    net.piece(tower, inputs=["text"], outputs=["semantic"], params="shared", name="a")
    with pytest.raises(osg.InputError, match="'L1.W' \\(also in piece 'a'\\)"):
        net.piece(other, inputs=["text"], outputs=["semantic"], params="shared", name="b")
    # the same values under the same names are one parameter
    net.piece(tower, inputs=["text"], outputs=["L1.y"], params="shared", name="c")
    x = net.input("x", "float32[N,100]")
    net.output("v", net.apply("a", x))
    net.output("h", net.apply("c", x))
    model, _ = net.build()
    assert len(model.graph.initializer) == 4


def test_symbolic_dims_bind_to_sizes():
    net = Network()
    x = net.input("x", "float32[4,40]")
    r = net.apply(net.piece(CLASSIFIER, inputs=["features"], outputs=["logits"]), x)
    assert str(r.logits.type) == "float32[4,10]"


def test_params_command_lists_frozen_pieces(cli, tmp_path):
    out = tmp_path / "fe.onnx"
    code, _, err = cli("compose", EXAMPLES / "feature_extractor" / "recipe.toml", "-o", out, "--quiet")
    assert code == 0, err
    code, stdout, _ = cli("params", out, "--json")
    data = json.loads(stdout)
    states = {p["name"]: p["state"] for p in data["params"]}
    assert states["encoder/L1.W"] == "frozen" and states["hidden.W"] == "learnable"
    assert data["total"]["frozen"] == 8


# --- opsets, IR versions, functions, subgraphs ------------------------------------------------------


def test_older_opset_is_converted_to_the_newest():
    net = Network()
    img = net.input("image", "float32[N,3,8,8]")
    old = net.piece(FIXTURES / "bn_dropout_train.onnx", inputs=["image"], outputs=["logits"], params="constant")  # opset 15
    enc = net.piece(FIXTURES / "autoencoder.onnx", inputs=["input"], outputs=["L1.y"])  # opset 17
    logits = net.apply(old, img).logits
    net.output("y", net.apply(enc, net.dense(logits, 64, name="up")))
    model, report = net.build()
    onnx.checker.check_model(model, full_check=True)
    assert report.opsets["ai.onnx"] == 17 and model.ir_version == 8
    assert report.pieces[0].converted_to == 17 and report.pieces[1].converted_to is None
    x = floats(2, 3, 8, 8)
    assert run(model, image=x)["y"].shape == (2, 48)


def _image_scaler_model() -> onnx.ModelProto:
    g = helper.make_graph(
        [helper.make_node("ImageScaler", ["x"], ["y"], scale=2.0)], "old",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3, 4, 4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 8)])
    m.ir_version = 4
    return m


def test_unconvertible_piece_is_refused_with_the_reason(tmp_path):
    onnx.save(_image_scaler_model(), tmp_path / "old.onnx")
    shutil.copy(CLASSIFIER, tmp_path / "c.onnx")
    (tmp_path / "r.toml").write_text(textwrap.dedent("""\
        [inputs]
        x = "float32[N,3,4,4]"
        f = "float32[N,40]"

        [pieces.old]
        model = "old.onnx"
        inputs = ["x"]
        outputs = ["y"]

        [pieces.c]
        model = "c.onnx"
        inputs = ["features"]
        outputs = ["logits"]

        [outputs]
        a = "old(x)"
        b = "c(f)"
    """))
    with pytest.raises(osg.InputError) as info:
        compose(tmp_path / "r.toml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'r.toml'}:5:2: piece 'old' uses opset 8 and cannot be converted to opset 17")
    assert "ImageScaler is not defined in opset 17" in message


def test_local_functions_are_carried_once_and_conflicts_refused():
    src = osg.load(FIXTURES / "local_function.onnx")
    net = Network()
    x = net.input("x", next(f"float32[{','.join(str(d.dim_value or d.dim_param) for d in v.type.tensor_type.shape.dim)}]" for v in src.graph.input))
    p = net.piece(src, inputs=[src.graph.input[0].name], outputs=["h1"], name="p")
    q = net.piece(src, inputs=[src.graph.input[0].name], outputs=["h1"], params="shared", name="q")
    net.output("a", net.apply(p, x))
    net.output("b", net.apply(q, x))
    net.output("c", net.apply(p, x))
    model, _ = net.build()
    onnx.checker.check_model(model, full_check=True)
    assert len(model.functions) == 1
    v = np.ones([d.dim_value or 2 for d in src.graph.input[0].type.tensor_type.shape.dim], np.float32)
    out = run(model, x=v)
    np.testing.assert_allclose(out["a"], out["b"])

    changed = onnx.ModelProto()
    changed.CopyFrom(src)
    changed.functions[0].node[-1].op_type = "Sigmoid"
    net2 = Network()
    x = net2.input("x", net._inputs["x"].type)
    net2.output("a", net2.apply(net2.piece(src, inputs=[src.graph.input[0].name], outputs=["h1"], name="p"), x))
    net2.output("b", net2.apply(net2.piece(changed, inputs=[src.graph.input[0].name], outputs=["h1"], name="r"), x))
    with pytest.raises(PieceError, match="both define the local function custom.fn.LinearRelu, differently"):
        net2.build()


@pytest.mark.parametrize("fixture", ["if_outer.onnx", "loop_scan.onnx"])
def test_values_captured_by_subgraphs_are_renamed_in_every_use(fixture):
    src = osg.load(FIXTURES / fixture)
    inits = {t.name for t in src.graph.initializer}
    inputs = [v for v in src.graph.input if v.name not in inits]
    outputs = [v.name for v in src.graph.output]
    net = Network()
    xs = {v.name: net.input(v.name, _type_text(v)) for v in inputs}
    p = net.piece(src, inputs=list(xs), outputs=outputs, name="p")
    first, second = net.apply(p, **xs), net.apply(p, **xs)
    for o in outputs:
        net.output(f"a_{o}", first[o])
        net.output(f"b_{o}", second[o])
    model, _ = net.build()
    onnx.checker.check_model(model, full_check=True)
    feeds = random_inputs(src)
    want = run(src, **feeds)
    got = run(model, **feeds)
    for o in outputs:
        np.testing.assert_allclose(got[f"a_{o}"], want[o], rtol=1e-6)
        np.testing.assert_allclose(got[f"b_{o}"], want[o], rtol=1e-6)


def _type_text(v: onnx.ValueInfoProto) -> str:
    from onnxsurgeon import dtypes

    return dtypes.show(v.type)


def test_external_data_pieces_compose_and_save_inline(tmp_path):
    net = Network()
    x = net.input("x", "float32[N,64]")
    p = net.piece(FIXTURES / "autoencoder_external" / "autoencoder.onnx", inputs=["input"], outputs=["L2.y"], params="constant")
    net.output("y", net.apply(p, x))
    model, _ = net.build()
    osg.save(model, tmp_path / "net.onnx")
    v = floats(2, 64)
    ref, _ = osg.extract(osg.load(FIXTURES / "autoencoder.onnx"), inputs=["input"], outputs=["L2.y"])
    np.testing.assert_allclose(run(osg.load(tmp_path / "net.onnx"), x=v)["y"], run(ref, input=v)["L2.y"], rtol=1e-6)


# --- inlining: the fast path is the reference path ----------------------------------------------------


@pytest.mark.parametrize("mode", ["learnable", "shared"])
def test_template_fast_path_equals_renaming_a_copy(mode):
    piece = load_piece(FIXTURES / "if_outer.onnx", inputs=["x", "cond"], outputs=["out"], params=mode)
    template = Template(piece.model, mode)
    for prefix in ("a/", "tower_12/", "ünïcödé/", "x" * 200 + "/"):
        assert template.expand(prefix) == template._slow(prefix)
    assert all(parts is not None for parts in template._parts.values())


def test_template_falls_back_when_the_marker_occurs_in_the_data():
    model = osg.load(FIXTURES / "autoencoder.onnx")
    piece, _ = osg.extract(model, inputs=["input"], outputs=["L1.y"])
    marker = "\u07ff\uf8ff".encode()  # the marker of a 5-byte prefix
    t = piece.graph.initializer[0]
    data = bytearray(numpy_helper.to_array(t).tobytes())
    data[8:8 + len(marker)] = marker
    t.raw_data = bytes(data)
    template = Template(piece, "learnable")
    assert template.expand("abcd/") == template._slow("abcd/")
    assert template._parts[5] is None


# --- the command line ----------------------------------------------------------------------------------


def test_compose_cli_writes_and_reports(cli, tmp_path):
    out = tmp_path / "kl.onnx"
    code, stdout, err = cli("compose", EXAMPLES / "kl_adaptation" / "recipe.toml", "-o", out)
    assert code == 0, err
    assert "piece adapt (learnable)" in stdout and "piece ref (constant)" in stdout
    assert "11 copied" in stdout and "8 frozen" in stdout and f"wrote {out}" in stdout
    assert osg.load(out).graph.output[1].name == "zRef"


def test_dry_run_prints_the_plan_and_writes_nothing(cli, tmp_path):
    out = tmp_path / "dssm.onnx"
    code, stdout, _ = cli("compose", EXAMPLES / "dssm" / "recipe.toml", "-o", out, "--dry-run")
    assert code == 0 and not out.exists()
    assert "piece tower (shared) from ../models/tower.onnx: 6 nodes, 4 parameters" in stdout
    assert "2 uses: tower, tower_2" in stdout and "4 shared" in stdout and "dry run, nothing written" in stdout
    code, stdout, _ = cli("compose", EXAMPLES / "dssm" / "recipe.toml", "--dry-run", "--json")
    data = json.loads(stdout)
    assert data["counts"]["shared"]["count"] == 4 and data["pieces"][0]["uses"] == ["tower", "tower_2"]
    assert data["dry_run"] and data["written"] == []


def test_output_must_not_replace_a_model_the_recipe_reads(cli, tmp_path):
    shutil.copy(TOWER, tmp_path / "tower.onnx")
    (tmp_path / "r.toml").write_text('[inputs]\nq = "float32[N,100]"\n[pieces.t]\nmodel = "tower.onnx"\ninputs = ["text"]\noutputs = ["semantic"]\n[outputs]\nv = "t(q)"\n')
    before = (tmp_path / "tower.onnx").read_bytes()
    code, _, err = cli("compose", tmp_path / "r.toml", "-o", tmp_path / "tower.onnx")
    assert code == 2 and "is a model the recipe reads" in err
    assert (tmp_path / "tower.onnx").read_bytes() == before


# --- bad recipes: exit 2, the recipe's line and column, no traceback, no output --------------------------

HEAD = f"""\
[inputs]
features = "float32[N,40]"
labels = "int64[N]"

[pieces.adapt]
model = "{CLASSIFIER.as_posix()}"
inputs = ["features"]
outputs = ["z=logits"]

[pieces.tower]
model = "{TOWER.as_posix()}"
inputs = ["text"]
outputs = ["semantic"]
params = "shared"
"""
# line 16 is the first line after HEAD


BAD = {
    "unknown piece": ("[outputs]\nz = \"adpt(features).z\"\n", "17:6", "unknown function or piece 'adpt'; did you mean 'adapt'?"),
    "unknown member": ("[outputs]\nz = \"adapt(features).zz\"\n", "17:22", "has no output 'zz'"),
    "wrong arity of a piece": ("[outputs]\nz = \"adapt(features, features).z\"\n", "17:6", "adapt takes at most 1 positional argument, 2 given"),
    "wrong arity of a function": ("[outputs]\nz = \"dense(features)\"\n", "17:6", "dense is missing its argument 'units'"),
    "type mismatch": ("[outputs]\nz = \"adapt(labels).z\"\n", "17:12", "must be float32[N,40], got int64[N]"),
    "shape mismatch": ("[outputs]\nz = \"adapt(dense(features, 64)).z\"\n", "17:12", "dimension 1 is 64 where 40 is expected"),
    "shapes of an operator": ("[outputs]\nz = \"adapt(features).z + features\"\n", "17:6", "dimension 1 is 10 and 40"),
    "value named like an input": ("[values]\nfeatures = \"relu(features)\"\n[outputs]\nz = \"features\"\n", "17:1", "name collision: 'features'"),
    "layer named twice": ("[values]\na = \"dense(features, 4, name='L')\"\n[outputs]\nz = \"dense(a, 4, name='L')\"\n", "19:6", "name collision: 'L'"),
    "layer parameter named like a shared one": ("[outputs]\nz = \"dense(features, 64, name='L1')\"\n", "17:6", "'L1.W' would be a parameter of layer 'L1', but it is already a parameter of shared piece 'tower'"),
    "output named like an input": ("[outputs]\nfeatures = \"relu(features)\"\n", "17:1", "name collision: 'features'"),
    "expression syntax error": ("[outputs]\nz = \"relu(features\"\n", "17:6", "syntax error"),
    "TOML syntax error": ("[outputs]\nz = relu(features)\n", "17:5", "TOML syntax error"),
    "attribute on __class__": ("[outputs]\nz = \"features.__class__\"\n", "17:15", "'__class__' is not allowed"),
    "call not in the allowed set": ("[outputs]\nz = \"open(features)\"\n", "17:6", "unknown function or piece 'open'"),
    "eval": ("[outputs]\nz = \"eval(features)\"\n", "17:6", "unknown function or piece 'eval'"),
    "import": ("[outputs]\nz = \"__import__('os')\"\n", "17:6", "'__import__' is not allowed"),
    "lambda": ("[outputs]\nz = \"lambda: features\"\n", "17:6", "lambda is not allowed"),
    "subscript": ("[outputs]\nz = \"features[0]\"\n", "17:6", "subscripts"),
    "value used before it is defined": ("[values]\na = \"relu(b)\"\nb = \"relu(features)\"\n[outputs]\nz = \"a\"\n", "17:11", "'a' uses 'b', which is defined later (line 18)"),
    "unknown name inside a multi-line expression": ("[outputs]\nz = '''\nrelu(features) +\n  sigmoid(featurs)'''\n", "19:11", "unknown name 'featurs'; did you mean 'features'?"),
    "unknown name in a piece's cut": ('[pieces.bad]\nmodel = "' + CLASSIFIER.as_posix() + '"\ninputs = ["features"]\noutputs = ["logitz"]\n[outputs]\nz = "bad(features)"\n', "16:2", "no value or node named 'logitz'; did you mean 'logits'?"),
    "missing model file": ('[pieces.bad]\nmodel = "nope.onnx"\ninputs = ["x"]\noutputs = ["y"]\n[outputs]\nz = "bad(features)"\n', "17:9", "no such model file: nope.onnx"),
    "unknown parameter mode": ('[pieces.bad]\nmodel = "nope.onnx"\noutputs = ["y"]\nparams = "frozen"\n[outputs]\nz = "bad(features)"\n', "19:10", "unknown parameter mode 'frozen'"),
    "unknown recipe key": ("[valus]\na = \"relu(features)\"\n", "16:2", "unknown recipe key 'valus'"),
    "no outputs": ("", "1:1", "the recipe has no outputs"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_recipe_exits_2_with_line_and_column(cli, tmp_path, case):
    tail, where, words = BAD[case]
    recipe = tmp_path / "bad.toml"
    recipe.write_text(HEAD + "\n" + tail)
    out = tmp_path / "net.onnx"
    code, _, err = cli("compose", recipe, "-o", out)
    assert code == 2, err
    assert err.startswith(f"onnxsurgeon: error: {recipe}:{where}: "), err
    assert words in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [recipe]


def test_a_folder_as_the_recipe_or_a_piece_model_is_named_a_folder(cli, tmp_path):
    code, _, err = cli("compose", tmp_path, "-o", tmp_path / "net.onnx")
    assert code == 2 and f"{tmp_path} is a directory, not a recipe file" in err, err
    assert "hint: name the .toml file inside it" in err
    (tmp_path / "models").mkdir()
    recipe = tmp_path / "r.toml"
    recipe.write_text('[inputs]\nf = "float32[N,40]"\n[pieces.p]\nmodel = "models"\ninputs = ["features"]\noutputs = ["logits"]\n'
                      '[outputs]\nz = "p(f)"\n')
    code, _, err = cli("compose", recipe, "-o", tmp_path / "net.onnx")
    assert code == 2 and f"{recipe}:4:9: piece 'p': models is a directory, not an ONNX model file" in err, err
    assert "hint: name the .onnx file inside it" in err


@pytest.mark.parametrize("type_text", ["float32", "int64"])
def test_input_type_without_a_shape_is_refused(cli, tmp_path, type_text):
    """ONNX needs a graph input's shape (its rank at least): a type without one is the
    recipe's mistake (exit 2, line and column), not a network the checker refuses (exit 4)."""
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'[inputs]\nfeatures = "{type_text}"\n[outputs]\nz = "relu(features)"\n')
    out = tmp_path / "net.onnx"
    code, _, err = cli("compose", recipe, "-o", out)
    assert code == 2, err
    assert err.startswith(f"onnxsurgeon: error: {recipe}:2:12: the input 'features' has no shape"), err
    assert f"hint: write its shape too, e.g. {type_text}[N,64]" in err
    assert not out.exists()


def test_symbolic_dims_that_do_not_line_up(cli, tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text(f'[inputs]\nq = "float32[B,100]"\n[pieces.t]\nmodel = "{TOWER.as_posix()}"\ninputs = ["text"]\noutputs = ["semantic"]\n[outputs]\nv = "t(q)"\n')
    code, _, err = cli("compose", recipe, "-o", tmp_path / "x.onnx")
    assert code == 2 and f"{recipe}:8:8: " in err
    assert "dimension 0 is 'B' where 'N' is expected" in err


def test_recipe_as_a_dict_names_the_table():
    with pytest.raises(osg.InputError, match=r"^recipe \[outputs.z\]:1:1: unknown name 'y'"):
        compose({"inputs": {"x": "float32[N,3]"}, "outputs": {"z": "y"}})


def test_embedding_conv_and_operators_in_a_recipe_run(tmp_path):
    (tmp_path / "r.toml").write_text(textwrap.dedent("""\
        seed = 3
        [inputs]
        ids = "int64[N,5]"
        image = "float32[N,3,8,8]"
        [values]
        e = "embedding(ids, 100, 8, name='emb')"
        c = "relu(conv(image, 4, 3, name='c1'))"
        s = "conv(image, 2, 3, stride=2, pad=False)"
        [outputs]
        pooled = "log_softmax(tanh(e) * 0.5 - 1, axis=-1)"
        maps = "c ** 2 + -c / 4"
        small = "exp(s)"
    """))
    model, report = build(tmp_path / "r.toml")
    assert dict(report.outputs) == {"pooled": "float32[N,5,8]", "maps": "float32[N,4,8,8]", "small": "float32[N,2,3,3]"}
    ids = np.arange(10, dtype=np.int64).reshape(2, 5)
    img = floats(2, 3, 8, 8)
    out = run(model, ids=ids, image=img)
    e = init(model, "emb.E")[ids]
    x = np.tanh(e) * 0.5 - 1
    np.testing.assert_allclose(out["pooled"], x - np.log(np.exp(x).sum(-1, keepdims=True)), rtol=1e-5, atol=1e-6)
    assert out["maps"].shape == (2, 4, 8, 8) and out["small"].shape == (2, 2, 3, 3)
    assert {p.name for p in report.parameters} == {"emb.E", "c1.W", "c1.b", "conv.W", "conv.b"}


def test_old_ir3_piece_is_converted_and_its_initializer_inputs_stay_parameters():
    src = osg.load(FIXTURES / "ir3_constants.onnx")  # IR 3, opset 8, initializers listed as inputs
    net = Network()
    x = net.input("x", _type_text(src.graph.input[0]))
    net.output("a", net.apply(net.piece(src, name="old"), x))
    net.output("b", net.apply(net.piece(src, params="shared", name="olds"), x))
    model, report = net.build()
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 7 and report.opsets == {"ai.onnx": 13}
    assert sorted(t.name for t in model.graph.initializer) == ["old/w_init", "w_init"]
    v = floats(*[d.dim_value or 2 for d in src.graph.input[0].type.tensor_type.shape.dim])
    want = run(src, x=v)["y"]
    out = run(model, x=v)
    np.testing.assert_allclose(out["a"], want)
    np.testing.assert_allclose(out["b"], want)


# --- a dense head for a CNN backbone, images, lengths, copies (issue 12) ----------------------


def test_cnn_backbone_gets_a_dense_head():
    """flatten, reshape, global average/max pool and mean turn 4-D features into what dense
    takes; each computes what numpy computes."""
    net = Network()
    net.input("image", "float32[N,3,4,5]")
    net.output("flat", net.evaluate("flatten(image)"))
    net.output("pooled", net.evaluate("flatten(global_average_pool(image))"))
    net.output("peak", net.evaluate("global_max_pool(image)"))
    net.output("rows", net.evaluate("reshape(image, shape='0,-1,5')"))
    net.output("m", net.evaluate("mean(image, axis=2)"))
    net.output("z", net.evaluate("dense(flatten(global_average_pool(image)), 7)"))
    model, _ = net.build()
    onnx.checker.check_model(model, full_check=True)
    x = floats(2, 3, 4, 5)
    out = run(model, image=x)
    np.testing.assert_array_equal(out["flat"], x.reshape(2, 60))
    np.testing.assert_allclose(out["pooled"], x.mean(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(out["peak"], x.max(axis=(2, 3), keepdims=True))
    np.testing.assert_array_equal(out["rows"], x.reshape(2, 12, 5))
    np.testing.assert_allclose(out["m"], x.mean(axis=2, keepdims=True), rtol=1e-6)
    assert out["z"].shape == (2, 7)
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes["flat"] == ["N", 60] and shapes["pooled"] == ["N", 3] and shapes["rows"] == ["N", 12, 5]


def test_dense_on_4d_is_refused_with_a_hint():
    net = Network()
    net.input("image", "float32[N,3,8,8]")
    with pytest.raises(osg.InputError, match=r"dense works on the last axis.*float32\[N,4,8,8\]") as e:
        net.evaluate("dense(relu(conv(image, 4)), 10)")
    assert "flatten(global_average_pool(x))" in e.value.hint


def test_identity_init_for_a_1x1_conv_passes_images_through():
    net = Network()
    net.input("image", "float32[N,3,8,8]")
    net.output("y", net.evaluate("conv(image, 3, 1, init='identity')"))
    model, _ = net.build()
    x = floats(2, 3, 8, 8)
    np.testing.assert_array_equal(run(model, image=x)["y"], x)
    with pytest.raises(osg.InputError, match=r"needs a 1x1 kernel and as many filters as input channels"):
        net.evaluate("conv(image, 4, 1, init='identity')")


def test_one_tower_on_query_and_document_of_different_lengths(tmp_path):
    """DSSM with sequences: the tower's symbolic length T is the query's Tq in one use and
    the document's Td in the other."""
    from onnx import TensorProto

    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "tower",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T", 4])],
        [numpy_helper.from_array(floats(8, 4), "W")],
    )
    osg.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "tower.onnx")
    net = Network()
    p = net.piece(tmp_path / "tower.onnx", inputs=["x"], outputs=["y"], params="shared", name="tower")
    net.output("q", net.apply(p, net.input("query", "float32[N,Tq,8]")))
    net.output("d", net.apply(p, net.input("doc", "float32[N,Td,8]")))
    model, _ = net.build()
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in model.graph.output}
    assert shapes == {"q": ["N", "Tq", 4], "d": ["N", "Td", 4]}
    out = run(model, query=floats(2, 3, 8), doc=floats(2, 5, 8))
    assert out["q"].shape == (2, 3, 4) and out["d"].shape == (2, 5, 4)
    with pytest.raises(osg.InputError, match="dimension 0 is 'B' where 'N' is expected"):  # batches still line up
        net.apply(p, net.input("other", "float32[B,T,8]"))


def test_a_learnable_piece_used_twice_says_it_makes_two_copies():
    net = Network()
    x = net.input("x", "float32[N,40]")
    p = net.piece(CLASSIFIER, inputs=["features"], outputs=["logits"])
    net.output("a", net.apply(p, x))
    net.output("b", net.apply(p, x))
    _, report = net.build()
    assert any("used 2 times" in w and "its own copy" in w and "--params shared" in w for w in report.warnings), report.warnings
