"""Ops without a gradient (or a CPU gradient kernel) in onnxruntime-training 1.19, rewritten
in the training graph (onnxsurgeon/train/rewrite.py). For each: the rewritten forward equals
the op as onnxruntime runs it, and one SGD step through onnxsurgeon's training path moves the
parameter by the gradient of a float64 numpy reference (finite differences)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon import runtime, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.train.artifacts import FILES, ArtifactPaths
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.losses import value_types
from onnxsurgeon.train.optim import OptimizerSettings
from onnxsurgeon.train.prepare import NO_GRADIENT, REWRITTEN, prepare

sys.path.insert(0, str(Path(__file__).parent))
from test_train_stack import raw_generate, run_python, session  # noqa: E402

RNG = np.random.default_rng(23)
LR = 0.1


def numeric_grad(loss, w: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        plus, minus = w.copy(), w.copy()
        plus[i] += h
        minus[i] -= h
        g[i] = (loss(plus) - loss(minus)) / (2 * h)
    return g


def one_op(nodes, x_shape, y_shape, inits=None, opset=17, w_shape=None, outputs=None, batch="N") -> onnx.ModelProto:
    """h = x * W (W trains), then `nodes` read h and write y."""
    w = RNG.standard_normal(w_shape or x_shape[1:]).astype(np.float32)
    all_inits = {"W": w, **(inits or {})}
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "W"], ["h"], name="scale"), *nodes], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *x_shape[1:]])],
        outputs or [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in all_inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def check(model: onnx.ModelProto, f, x: np.ndarray, op: str, exact: bool = False) -> float:
    """(a) the training graph computes what the op computes in onnxruntime, (b) one SGD step
    moves W by LR times the gradient of the numpy reference `f(h)`. Returns the largest
    gradient error."""
    prepared, prep = prepare(model, set())
    assert op not in {n.op_type for n in prepared.graph.node}, f"{op} is still in the training graph"
    assert any(c.startswith("rewritten in ops with gradients") and op in c for c in prep.changes)
    want = runtime.session(model).run(None, {"x": x})[0]
    got = runtime.session(prepared).run(None, {"x": x})[0]
    assert got.shape == want.shape
    if exact:
        assert got.tobytes() == want.tobytes()
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    w0 = serde.to_array(next(t for t in model.graph.initializer if t.name == "W")).astype(np.float64)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(f(x64 * w0), want, rtol=1e-5, atol=1e-5)  # the reference is the op
    t = RNG.standard_normal(want.shape).astype(np.float32)
    trained, report = train(model, {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=len(x), shuffle=False,
    ))
    assert "W" in report.plan.trainable
    w1 = serde.to_array(next(t for t in trained.graph.initializer if t.name == "W")).astype(np.float64)
    assert trained.graph.node == model.graph.node  # the written model keeps its op

    def loss(w):
        y = f(x64 * w)
        return ((y - t) ** 2).reshape(len(x), -1).mean(-1).mean()

    grad = numeric_grad(loss, w0)
    err = float(np.abs((w0 - w1) / LR - grad).max())
    assert err < 2e-4, err
    return err


X4 = RNG.standard_normal((3, 2, 4, 4)).astype(np.float32)
X2 = RNG.standard_normal((3, 5)).astype(np.float32)


# ---------------------------------------------------------------- facts


def raw_paths(directory: Path) -> ArtifactPaths:
    return ArtifactPaths(*(directory / f for f in FILES))


NORM = {"s": np.ones(4, np.float32), "b": np.zeros(4, np.float32)}
FACTS = {  # op: (node, x shape, y shape, initializers, opset)
    "CastLike": (helper.make_node("CastLike", ["h", "h"], ["y"]), [3, 5], ["N", 5], {}, 15),
    "ReduceMax": (helper.make_node("ReduceMax", ["h"], ["y"], axes=[1], keepdims=1), [3, 5], ["N", 1], {}, 15),
    "ReduceMin": (helper.make_node("ReduceMin", ["h"], ["y"], axes=[1], keepdims=1), [3, 5], ["N", 1], {}, 15),
    "GlobalMaxPool": (helper.make_node("GlobalMaxPool", ["h"], ["y"]), [3, 2, 4], ["N", 2, 1], {}, 15),
    "InstanceNormalization": (helper.make_node("InstanceNormalization", ["h", "s", "b"], ["y"]), [3, 4, 5], ["N", 4, 5], NORM, 17),
    "GroupNormalization": (helper.make_node("GroupNormalization", ["h", "s", "b"], ["y"], num_groups=2), [3, 4, 5], ["N", 4, 5], NORM, 21),
    "LpNormalization": (helper.make_node("LpNormalization", ["h"], ["y"]), [3, 5], ["N", 5], {}, 17),
    "LRN": (helper.make_node("LRN", ["h"], ["y"], size=3), [3, 4, 5], ["N", 4, 5], {}, 17),
    "ReduceSumSquare": (helper.make_node("ReduceSumSquare", ["h"], ["y"], axes=[1]), [3, 5], ["N", 1], {}, 15),
    "ReduceL1": (helper.make_node("ReduceL1", ["h"], ["y"], axes=[1]), [3, 5], ["N", 1], {}, 15),
    "ReduceLogSum": (helper.make_node("ReduceLogSum", ["h"], ["y"], axes=[1]), [3, 5], ["N", 1], {}, 15),
    "HardSwish": (helper.make_node("HardSwish", ["h"], ["y"]), [3, 5], ["N", 5], {}, 15),
    "Mish": (helper.make_node("Mish", ["h"], ["y"]), [3, 5], ["N", 5], {}, 18),
    "ThresholdedRelu": (helper.make_node("ThresholdedRelu", ["h"], ["y"]), [3, 5], ["N", 5], {}, 15),
    "DepthToSpace": (helper.make_node("DepthToSpace", ["h"], ["y"], blocksize=2), [3, 8, 2, 2], ["N", 2, 4, 4], {}, 15),
    "SpaceToDepth": (helper.make_node("SpaceToDepth", ["h"], ["y"], blocksize=2), [3, 2, 4, 4], ["N", 8, 2, 2], {}, 15),
    "CumSum": (helper.make_node("CumSum", ["h", "ax"], ["y"]), [3, 5], ["N", 5], {"ax": np.array(1, np.int64)}, 15),
    **{op: (helper.make_node(op, ["h"], ["y"]), [3, 5], ["N", 5], {}, 17) for op in ("Round", "Floor", "Ceil", "Sign")},
}


@pytest.mark.parametrize("op", sorted(FACTS))
def test_fact_no_gradient_builder(tmp_path, op):
    """onnxruntime-training 1.19 has no gradient builder for these ops."""
    assert op in NO_GRADIENT and op in REWRITTEN
    node, shape, y_shape, inits, opset = FACTS[op]
    model = one_op([node], shape, y_shape, inits, opset=opset)
    with pytest.raises(Exception, match=f"not been registered: ?{op}"):
        raw_generate(model, ["W"], tmp_path)


def test_fact_resize_gradient_has_no_cpu_kernel(tmp_path):
    model = one_op([helper.make_node("Resize", ["h", "", "sc"], ["y"], mode="nearest")], [3, 2, 4, 4], ["N", 2, 8, 8],
                   {"sc": np.array([1, 1, 2, 2], np.float32)})
    raw_generate(model, ["W"], tmp_path)
    with pytest.raises(Exception, match="Could not find an implementation for ResizeGrad"):
        session(raw_paths(tmp_path))


def test_fact_slice_with_negative_step_fails_in_its_gradient(tmp_path):
    """Why sequences are reversed with Gather: SliceGrad of a negative step fails at run time."""
    model = one_op([helper.make_node("Slice", ["h", "st", "en", "ax", "stp"], ["y"])], [3, 5], ["N", 5], {
        "st": np.array([-1], np.int64), "en": np.array([-6], np.int64), "ax": np.array([1], np.int64), "stp": np.array([-1], np.int64)})
    raw_generate(model, ["W"], tmp_path)
    _, module, _ = session(raw_paths(tmp_path))
    module.train()
    with pytest.raises(Exception, match="SliceGrad"):
        module(X2, np.zeros((3, 5), np.float32))


# ---------------------------------------------------------------- CastLike, ReduceMax/Min, GlobalMaxPool


def test_castlike_becomes_cast():
    model = one_op([helper.make_node("CastLike", ["h", "like"], ["y"], name="cl")], [3, 5], ["N", 5],
                   {"like": np.array(0.0, np.float32)}, opset=15)
    check(model, lambda h: h, X2, "CastLike", exact=True)


def _ref_reduce(fn, axes, keepdims):
    return lambda h: fn(h, axis=tuple(axes) if axes is not None else None, keepdims=bool(keepdims))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes, keepdims, opset", [
    ([2, 3], 1, 13), ([1], 0, 13), ([-1, 1], 0, 18), ([2], 1, 18), ([1, 2, 3], 0, 13), ([3, 1], 1, 18),
])
def test_reduce_max_min(op, axes, keepdims, opset):
    fn = np.max if op == "ReduceMax" else np.min
    if opset >= 18:
        inputs, inits, attrs = (["h", "axes"], {"axes": np.array(axes, np.int64)}, {}) if axes is not None else (["h"], {}, {})
    else:
        inputs, inits, attrs = ["h"], {}, ({"axes": axes} if axes is not None else {})
    model = one_op([helper.make_node(op, inputs, ["y"], keepdims=keepdims, name="r", **attrs)], [3, 2, 4, 4], None, inits, opset=opset)
    ref = _ref_reduce(fn, axes, keepdims)
    check(model, ref, X4, op, exact=True)


@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_max_over_every_axis(opset):
    """No axes: over everything, the batch too (here to shift h by its largest value)."""
    nodes = [helper.make_node("ReduceMax", ["h"], ["m"], keepdims=0, name="r"), helper.make_node("Sub", ["h", "m"], ["y"])]
    model = one_op(nodes, [3, 2, 4, 4], ["N", 2, 4, 4], opset=opset)
    check(model, lambda h: h - h.max(), X4, "ReduceMax", exact=True)


def test_reduce_max_with_empty_axes_as_noop():
    nodes = [helper.make_node("ReduceMax", ["h", "none"], ["y"], noop_with_empty_axes=1, name="r")]
    model = one_op(nodes, [3, 5], ["N", 5], {"none": np.array([], np.int64)}, opset=18)
    check(model, lambda h: h, X2, "ReduceMax", exact=True)


def test_reduce_max_of_unknown_rank():
    """tf2onnx's global_max_pooling1d reads a value whose rank shape inference loses."""
    nodes = [helper.make_node("Unsqueeze", ["h", "one"], ["h4"]), helper.make_node("Add", ["one", "zero"], ["computed"]),
             helper.make_node("Squeeze", ["h4", "computed"], ["h3"]),  # axes computed: onnx infers no rank
             helper.make_node("ReduceMax", ["h3"], ["y"], axes=[1], keepdims=0, name="r")]
    model = one_op(nodes, [3, 5, 2], ["N", 2], {"one": np.array([1], np.int64), "zero": np.array([0], np.int64)}, opset=13)
    prepared, _ = prepare(model, set())
    assert value_types(prepared).get("h3") is None or value_types(prepared)["h3"].rank is None
    check(model, lambda h: h.max(1), RNG.standard_normal((3, 5, 2)).astype(np.float32), "ReduceMax", exact=True)


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL1", "ReduceLogSum"])
@pytest.mark.parametrize("opset", [13, 18])
def test_reduce_sums(op, opset):
    axes = [1, 3]
    inputs, inits, attrs = (["h", "axes"], {"axes": np.array(axes, np.int64)}, {}) if opset >= 18 else (["h"], {}, {"axes": axes})
    model = one_op([helper.make_node(op, inputs, ["y"], keepdims=1, name="r", **attrs)], [3, 2, 4, 4], None, inits, opset=opset)
    fn = {"ReduceSumSquare": lambda h: (h * h).sum((1, 3), keepdims=True), "ReduceL1": lambda h: np.abs(h).sum((1, 3), keepdims=True),
          "ReduceLogSum": lambda h: np.log((h * h).sum((1, 3), keepdims=True))}[op]
    if op == "ReduceLogSum":  # a positive sum: the log of squares
        model.graph.node.insert(1, helper.make_node("Mul", ["h", "h"], ["h2"]))
        model.graph.node[2].input[0] = "h2"
    check(model, fn, X4, op)


def test_global_max_pool():
    model = one_op([helper.make_node("GlobalMaxPool", ["h"], ["y"], name="gmp")], [3, 2, 4, 4], ["N", 2, 1, 1])
    check(model, lambda h: h.max(axis=(2, 3), keepdims=True), X4, "GlobalMaxPool", exact=True)


@pytest.mark.parametrize("op, attrs, f", [
    ("HardSwish", {}, lambda h: h * np.clip(h / 6 + 0.5, 0, 1)),
    ("Mish", {}, lambda h: h * np.tanh(np.maximum(h, 0) + np.log1p(np.exp(-np.abs(h))))),
    ("ThresholdedRelu", {"alpha": 0.3}, lambda h: np.where(h > 0.3, h, 0)),
])
def test_activations(op, attrs, f):
    model = one_op([helper.make_node(op, ["h"], ["y"], name="act", **attrs)], [3, 5], ["N", 5], opset=18)
    check(model, f, X2, op)


def _depth_to_space(h, bs, mode):
    n, c, hh, ww = h.shape
    if mode == "DCR":
        return h.reshape(n, bs, bs, c // bs**2, hh, ww).transpose(0, 3, 4, 1, 5, 2).reshape(n, c // bs**2, hh * bs, ww * bs)
    return h.reshape(n, c // bs**2, bs, bs, hh, ww).transpose(0, 1, 4, 2, 5, 3).reshape(n, c // bs**2, hh * bs, ww * bs)


@pytest.mark.parametrize("op, mode", [("DepthToSpace", "DCR"), ("DepthToSpace", "CRD"), ("SpaceToDepth", None)])
def test_depth_and_space(op, mode):
    x = RNG.standard_normal((3, 8, 2, 4) if op == "DepthToSpace" else (3, 2, 4, 4)).astype(np.float32)
    attrs = {"mode": mode} if mode else {}
    y_shape = ["N", 2, 4, 8] if op == "DepthToSpace" else ["N", 8, 2, 2]
    model = one_op([helper.make_node(op, ["h"], ["y"], blocksize=2, name="ds", **attrs)], list(x.shape), y_shape)
    if op == "DepthToSpace":
        f = lambda h: _depth_to_space(h, 2, mode)  # noqa: E731
    else:
        f = lambda h: h.reshape(3, 2, 2, 2, 2, 2).transpose(0, 3, 5, 1, 2, 4).reshape(3, 8, 2, 2)  # noqa: E731
    check(model, f, x, op, exact=True)


@pytest.mark.parametrize("axis, exclusive, reverse", [(1, 0, 0), (-1, 1, 0), (1, 0, 1), (2, 1, 1)])
def test_cumsum(axis, exclusive, reverse):
    model = one_op([helper.make_node("CumSum", ["h", "axis"], ["y"], exclusive=exclusive, reverse=reverse, name="cs")],
                   [3, 2, 4, 4], ["N", 2, 4, 4], {"axis": np.array(axis, np.int64)})

    def ref(h):
        v = np.flip(h, axis) if reverse else h
        c = np.cumsum(v, axis)
        if exclusive:
            c = c - v
        return np.flip(c, axis) if reverse else c

    check(model, ref, X4, "CumSum")


# ---------------------------------------------------------------- Resize


def _nearest_2x(h):
    return h.repeat(2, axis=2).repeat(2, axis=3)


def _interp_matrix(n_in, n_out, align_corners=False):
    """Bilinear weights of one axis (half_pixel or align_corners), as torch computes them."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        if align_corners:
            src = o * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        else:
            src = max((o + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        w = src - lo
        m[o, lo] += 1 - w
        m[o, hi] += w
    return m


@pytest.mark.parametrize("how, opset", [("scales", 13), ("sizes", 18), ("scales", 18), ("axes", 18), ("legacy", 11)])
def test_resize_nearest(how, opset):
    if how == "scales":
        inputs, inits, attrs = ["h", "", "sc"], {"sc": np.array([1, 1, 2, 2], np.float32)}, {}
    elif how == "sizes":
        inputs, inits, attrs = ["h", "", "", "sz"], {"sz": np.array([8, 8], np.int64)}, {"axes": [2, 3]}
    elif how == "axes":
        inputs, inits, attrs = ["h", "", "sc"], {"sc": np.array([2, 2], np.float32)}, {"axes": [2, 3]}
    else:  # torch's legacy export: asymmetric, floor, with an empty roi
        inputs, inits = ["h", "roi", "sc"], {"roi": np.array([], np.float32), "sc": np.array([1, 1, 2, 2], np.float32)}
        attrs = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}
    node = helper.make_node("Resize", inputs, ["y"], mode="nearest", name="up", **attrs)
    model = one_op([node], [3, 2, 4, 4], ["N", 2, 8, 8], inits, opset=opset)
    check(model, _nearest_2x, X4, "Resize", exact=True)


def test_resize_nearest_of_unknown_size_repeats():
    """Integer scales on spatial sizes not known before the run: Unsqueeze, Expand, Reshape."""
    node = helper.make_node("Resize", ["h", "", "sc"], ["y"], mode="nearest", name="up")
    model = one_op([node], [3, 2, 4, 4], ["N", 2, "H2", "W2"], {"sc": np.array([1, 1, 2, 3], np.float32)}, w_shape=[2, 1, 1])
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    model.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    check(model, lambda h: h.repeat(2, axis=2).repeat(3, axis=3), X4, "Resize", exact=True)


@pytest.mark.parametrize("ctm", ["half_pixel", "align_corners", "pytorch_half_pixel"])
def test_resize_linear(ctm):
    node = helper.make_node("Resize", ["h", "", "sc"], ["y"], mode="linear", coordinate_transformation_mode=ctm, name="up")
    model = one_op([node], [3, 2, 4, 4], ["N", 2, 8, 6], {"sc": np.array([1, 1, 2, 1.5], np.float32)})
    mh, mw = _interp_matrix(4, 8, ctm == "align_corners"), _interp_matrix(4, 6, ctm == "align_corners")
    check(model, lambda h: np.einsum("oh,nchw,pw->ncop", mh, h, mw), X4, "Resize")


def test_resize_linear_on_the_channel_axis():
    """An axis that is not one of the last two: moved last, multiplied, moved back."""
    node = helper.make_node("Resize", ["h", "", "", "sz"], ["y"], mode="linear", axes=[1], name="up")
    model = one_op([node], [3, 2, 4, 4], ["N", 3, 4, 4], {"sz": np.array([3], np.int64)}, opset=18)
    mc = _interp_matrix(2, 3)
    check(model, lambda h: np.einsum("oc,nchw->nohw", mc, h), X4, "Resize")


def _cubic_matrix(n_in, n_out, a=-0.75):
    """Cubic convolution weights of one axis, half_pixel, edge indices clamped."""
    def k(d):
        d = abs(d)
        return (a + 2) * d**3 - (a + 3) * d**2 + 1 if d <= 1 else a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        src = (o + 0.5) * n_in / n_out - 0.5
        base = int(np.floor(src))
        for j in range(base - 1, base + 3):
            m[o, min(max(j, 0), n_in - 1)] += k(src - j)
    return m


def test_resize_cubic():
    node = helper.make_node("Resize", ["h", "", "sc"], ["y"], mode="cubic", name="up")
    model = one_op([node], [3, 2, 4, 4], ["N", 2, 4, 8], {"sc": np.array([1, 1, 1, 2], np.float32)})
    mw = _cubic_matrix(4, 8)
    check(model, lambda h: np.einsum("nchw,pw->nchp", h, mw), X4, "Resize")


def test_resize_with_computed_scales_is_refused_with_the_reason():
    nodes = [helper.make_node("Shape", ["h"], ["s"]), helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["sf", "sf"], ["sc"]), helper.make_node("Resize", ["h", "", "sc"], ["y"], mode="nearest", name="up")]
    model = one_op(nodes, [3, 2, 4, 4], ["N", 2, 4, 4])
    with pytest.raises(InputError, match=r"node 'up' \(Resize\), after 'W'; not rewritten: its scales and sizes are computed"):
        train(model, {"x": X4, "t": X4}, TrainSettings(loss="mse(y, t)"))


# ---------------------------------------------------------------- normalizations

X5 = RNG.standard_normal((3, 4, 3, 5)).astype(np.float32)
SCALE4 = np.array([0.5, 1.5, -1.0, 2.0], np.float32)
BIAS4 = np.array([0.1, -0.2, 0.3, 0.0], np.float32)


def _standardize(v, axes, eps):
    return (v - v.mean(axes, keepdims=True)) / np.sqrt(v.var(axes, keepdims=True) + eps)


@pytest.mark.parametrize("opset", [13, 18])
def test_instance_normalization(opset):
    node = helper.make_node("InstanceNormalization", ["h", "s", "b"], ["y"], epsilon=1e-3, name="in")
    model = one_op([node], [3, 4, 3, 5], ["N", 4, 3, 5], {"s": SCALE4, "b": BIAS4}, opset=opset)

    def ref(h):
        return _standardize(h, (2, 3), 1e-3) * SCALE4[:, None, None] + BIAS4[:, None, None]

    check(model, ref, X5, "InstanceNormalization")


@pytest.mark.parametrize("opset", [18, 21])
def test_group_normalization(opset):
    """Opset 18: scale and bias per group; opset 21: per channel."""
    n = 2 if opset == 18 else 4
    s, bias = SCALE4[:n], BIAS4[:n]
    node = helper.make_node("GroupNormalization", ["h", "s", "b"], ["y"], epsilon=1e-4, num_groups=2, name="gn")
    model = one_op([node], [3, 4, 3, 5], ["N", 4, 3, 5], {"s": s, "b": bias}, opset=opset)

    def ref(h):
        g = _standardize(h.reshape(3, 2, -1), (2,), 1e-4)
        if opset == 18:
            return (g * s[:, None] + bias[:, None]).reshape(h.shape)
        return g.reshape(h.shape) * s[:, None, None] + bias[:, None, None]

    check(model, ref, X5, "GroupNormalization")


@pytest.mark.parametrize("p, axis", [(2, -1), (2, 1), (1, 1)])
def test_lp_normalization(p, axis):
    node = helper.make_node("LpNormalization", ["h"], ["y"], p=p, axis=axis, name="lp")
    model = one_op([node], [3, 4, 3, 5], ["N", 4, 3, 5])

    def ref(h):
        return h / (np.sqrt((h * h).sum(axis, keepdims=True)) if p == 2 else np.abs(h).sum(axis, keepdims=True))

    check(model, ref, X5, "LpNormalization")
    zeros = np.zeros((1, 4, 3, 5), np.float32)  # onnxruntime leaves a vector of norm 0 as it is
    assert not runtime.session(prepare(model, set())[0]).run(None, {"x": zeros})[0].any()


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime runs odd sizes only
def test_lrn(size):
    node = helper.make_node("LRN", ["h"], ["y"], size=size, alpha=0.3, beta=0.6, bias=1.5, name="lrn")
    model = one_op([node], [3, 4, 3, 5], ["N", 4, 3, 5])

    def ref(h):
        lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
        sq = h * h
        window = np.stack([sq[:, max(0, c - lo): c + hi + 1].sum(1) for c in range(h.shape[1])], 1)
        return h / (1.5 + 0.3 / size * window) ** 0.6

    check(model, ref, X5, "LRN")


# ---------------------------------------------------------------- end to end


def test_cli_trains_a_net_with_resize_instance_norm_and_reduce_max(cli, tmp_path):
    """Conv -> InstanceNormalization -> Relu -> nearest 2x Resize -> ReduceMax -> MatMul,
    trained from the command line: the loss goes down, the written model keeps its ops."""
    rng = np.random.default_rng(7)
    inits = {
        "conv.W": (rng.standard_normal((3, 2, 3, 3)) * 0.5).astype(np.float32),
        "in.scale": np.ones(3, np.float32), "in.bias": np.zeros(3, np.float32),
        "scales": np.array([1, 1, 2, 2], np.float32), "fc.W": rng.standard_normal((3, 2)).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "conv.W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("InstanceNormalization", ["c", "in.scale", "in.bias"], ["n"], name="in"),
        helper.make_node("Relu", ["n"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["u"], mode="nearest", name="up"),
        helper.make_node("ReduceMax", ["u"], ["m"], axes=[2, 3], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["m", "fc.W"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "net.onnx")
    x = rng.standard_normal((16, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, t=rng.standard_normal((16, 2)).astype(np.float32))
    code, stdout, err = cli(
        "train", tmp_path / "net.onnx", "--data", tmp_path / "d.npz", "--loss", "mse(y, t)", "--optimizer", "sgd",
        "--lr", "0.05", "--epochs", "5", "--batch-size", "16", "-o", tmp_path / "out.onnx", "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    losses = [e["loss"] for e in report["history"]]
    assert losses[-1] < losses[0]
    assert report["plan"]["trainable"] == ["conv.W", "fc.W", "in.bias", "in.scale"]
    assert "rewritten in ops with gradients and CPU kernels: 1 InstanceNormalization, 1 ReduceMax, 1 Resize" in report["plan"]["changes"]
    trained = onnx.load(tmp_path / "out.onnx")
    assert trained.graph.node == model.graph.node
    before = runtime.session(model).run(None, {"x": x})[0]
    after = runtime.session(trained).run(None, {"x": x})[0]
    assert not np.allclose(before, after)


# ---------------------------------------------------------------- reverse and bidirectional LSTM, GRU


def _sig(v):
    return 1 / (1 + np.exp(-v))


def lstm_numpy(x, W, R, B, reverse=False):
    """ONNX LSTM, one direction, default activations; x [T, N, I] -> Y [T, N, H]."""
    H = R.shape[-1]
    h = np.zeros((x.shape[1], H))
    c = np.zeros_like(h)
    out = [None] * len(x)
    for t in (range(len(x) - 1, -1, -1) if reverse else range(len(x))):
        g = x[t] @ W.T + h @ R.T + B[: 4 * H] + B[4 * H:]
        i, o, f, cc = (g[:, k * H: (k + 1) * H] for k in range(4))
        c = _sig(f) * c + _sig(i) * np.tanh(cc)
        h = _sig(o) * np.tanh(c)
        out[t] = h
    return np.stack(out)


def gru_numpy(x, W, R, B, reverse=False, linear_before_reset=0):
    """ONNX GRU, one direction, default activations; x [T, N, I] -> Y [T, N, H]."""
    H = R.shape[-1]
    h = np.zeros((x.shape[1], H))
    out = [None] * len(x)
    wb, rb = B[: 3 * H], B[3 * H:]
    for t in (range(len(x) - 1, -1, -1) if reverse else range(len(x))):
        xw = x[t] @ W.T + wb
        z = _sig(xw[:, :H] + h @ R[:H].T + rb[:H])
        r = _sig(xw[:, H: 2 * H] + h @ R[H: 2 * H].T + rb[H: 2 * H])
        if linear_before_reset:
            hh = np.tanh(xw[:, 2 * H:] + r * (h @ R[2 * H:].T + rb[2 * H:]))
        else:
            hh = np.tanh(xw[:, 2 * H:] + (r * h) @ R[2 * H:].T + rb[2 * H:])
        h = (1 - z) * hh + z * h
        out[t] = h
    return np.stack(out)


def rnn_model(op, direction, steps=4, seq_lens=None, **attrs):
    """x [N, T, I] -> op -> y [N, T, D*H] (and the final states summed into y for a check of Y_h)."""
    nd, H, I = (2 if direction == "bidirectional" else 1), 3, 2
    gates = 4 if op == "LSTM" else 3
    inits = {
        "W": (RNG.standard_normal((nd, gates * H, I)) * 0.5).astype(np.float32),
        "R": (RNG.standard_normal((nd, gates * H, H)) * 0.5).astype(np.float32),
        "B": (RNG.standard_normal((nd, 2 * gates * H)) * 0.1).astype(np.float32),
    }
    extra = {}
    inputs = ["xt", "W", "R", "B"]
    if seq_lens is not None:
        extra["lens"] = np.asarray(seq_lens, np.int32)
        inputs.append("lens")
    # Y [T, D, N, H] -> [N, T, D*H]; Y_h [D, N, H] -> [N, 1, D*H]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node(op, inputs, ["Y", "Y_h"], hidden_size=H, direction=direction, name="rnn", **attrs),
             helper.make_node("Transpose", ["Y"], ["Yt"], perm=[2, 0, 1, 3]),
             helper.make_node("Reshape", ["Yt", "shape"], ["yseq"]),
             helper.make_node("Transpose", ["Y_h"], ["Yht"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["Yht", "shape_h"], ["yh"])]
    nodes.append(helper.make_node("Add", ["yseq", "yh"], ["y"]))
    extra.update({"shape": np.array([0, 0, nd * H], np.int64), "shape_h": np.array([0, 1, nd * H], np.int64)})
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", steps, nd * H])],
        [numpy_helper.from_array(v, k) for k, v in {**inits, **extra}.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), inits


def rnn_reference(op, direction, x, p, **attrs):
    """y [N, T, D*H] of rnn_model in float64 numpy; x [N, T, I]."""
    xt = x.transpose(1, 0, 2)
    run = lstm_numpy if op == "LSTM" else (lambda *a, **k: gru_numpy(*a, linear_before_reset=attrs.get("linear_before_reset", 0), **k))
    dirs = [False, True] if direction == "bidirectional" else [direction == "reverse"]
    ys = [run(xt, p["W"][d], p["R"][d], p["B"][d], reverse=rev) for d, rev in enumerate(dirs)]
    seq = np.concatenate([y.transpose(1, 0, 2) for y in ys], -1)  # [N, T, D*H]
    final = np.concatenate([(y[0] if rev else y[-1])[:, None] for y, rev in zip(ys, dirs)], -1)  # [N, 1, D*H]
    return seq + final


@pytest.mark.parametrize("op, direction, attrs", [
    ("LSTM", "reverse", {}),
    ("LSTM", "bidirectional", {}),
    ("GRU", "reverse", {"linear_before_reset": 1}),
    ("GRU", "bidirectional", {"linear_before_reset": 1}),
    ("GRU", "bidirectional", {}),
])
def test_reverse_and_bidirectional_recurrences(op, direction, attrs):
    model, inits = rnn_model(op, direction, **attrs)
    x = RNG.standard_normal((5, 4, 2)).astype(np.float32)
    prepared, prep = prepare(model, set())
    kinds = [n for n in prepared.graph.node if n.op_type == op]
    assert len(kinds) == (2 if direction == "bidirectional" else 1)
    assert all(helper.get_attribute_value(a) == b"forward" for n in kinds for a in n.attribute if a.name == "direction")
    want = runtime.session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(runtime.session(prepared).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)
    p0 = {k: v.astype(np.float64) for k, v in inits.items()}
    np.testing.assert_allclose(rnn_reference(op, direction, x.astype(np.float64), p0, **attrs), want, atol=1e-5)
    t = RNG.standard_normal(want.shape).astype(np.float32)
    trained, report = train(model, {"x": x, "t": t}, TrainSettings(
        loss="mse(y, t)", optimizer=OptimizerSettings("sgd", lr=LR), batch_size=5, shuffle=False))
    assert report.plan.trainable == ("B", "R", "W")
    assert trained.graph.node == model.graph.node
    got = {t_.name: serde.to_array(t_).astype(np.float64) for t_ in trained.graph.initializer}
    for name in ("W", "R", "B"):
        def loss(w, name=name):
            return ((rnn_reference(op, direction, x.astype(np.float64), {**p0, name: w}, **attrs) - t) ** 2).reshape(5, -1).mean(-1).mean()
        err = float(np.abs((p0[name] - got[name]) / LR - numeric_grad(loss, p0[name])).max())
        assert err < 2e-4, (name, err)


def test_recurrence_of_unknown_length_and_equal_sequence_lens():
    """A sequence length not known before the run reverses with Range; sequence_lens that all
    equal the length change nothing."""
    model, _ = rnn_model("GRU", "reverse", steps=4, seq_lens=[4, 4, 4, 4, 4])
    x = RNG.standard_normal((5, 4, 2)).astype(np.float32)
    prepared, _ = prepare(model, set())
    np.testing.assert_allclose(runtime.session(prepared).run(None, {"x": x})[0], runtime.session(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    model, _ = rnn_model("LSTM", "bidirectional", steps="T")
    prepared, _ = prepare(model, set())
    assert "Range" in {n.op_type for n in prepared.graph.node}
    for steps in (3, 6):
        x = RNG.standard_normal((2, steps, 2)).astype(np.float32)
        np.testing.assert_allclose(runtime.session(prepared).run(None, {"x": x})[0], runtime.session(model).run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_recurrence_with_differing_sequence_lens_is_refused():
    model, _ = rnn_model("LSTM", "bidirectional", seq_lens=[4, 2, 4, 4, 4])
    data = {"x": RNG.standard_normal((5, 4, 2)).astype(np.float32), "t": RNG.standard_normal((5, 4, 6)).astype(np.float32)}
    with pytest.raises(InputError, match=r"node 'rnn' \(LSTM, direction bidirectional\), after 'B', 'R', 'W'; not rewritten: "
                                         r"its sequence_lens 'lens' differ between sequences"):
        train(model, data, TrainSettings(loss="mse(y, t)"))


# ---------------------------------------------------------------- If, Loop, Scan


def _branch(name, nodes, out):
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def if_model(cond_input: bool = False):
    """y = relu(h) if cond else -h*h; cond a constant, or the graph input `mode`."""
    then = _branch("then", [helper.make_node("Relu", ["h"], ["r"])], "r")
    other = _branch("else", [helper.make_node("Mul", ["h", "h"], ["sq"]), helper.make_node("Neg", ["sq"], ["n"])], "n")
    nodes = [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branch")]
    model = one_op(nodes, [3, 5], ["N", 5], None if cond_input else {"cond": np.array(False)})
    if cond_input:
        model.graph.input.append(helper.make_tensor_value_info("cond", TensorProto.BOOL, []))
    return model


def test_fact_if_on_an_input_aborts_generate_artifacts(tmp_path):
    """Why an If on the way is refused unless folded: generate_artifacts folds one with a
    constant condition itself, but one decided by an input kills the process (a C++ assertion)."""
    raw_generate(if_model(), ["W"], tmp_path / "constant")
    assert "If" not in {n.op_type for n in onnx.load(tmp_path / "constant" / "training_model.onnx").graph.node}
    onnx.save(if_model(cond_input=True), tmp_path / "m.onnx")
    proc, _ = run_python(f"""
        import sys, onnx
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_stack import raw_generate
        from pathlib import Path
        raw_generate(onnx.load({str(tmp_path / "m.onnx")!r}), ["W"], Path({str(tmp_path / "input")!r}))
    """, tmp_path, fake_torch=False)
    assert proc.returncode < 0 and "Assertion" in proc.stderr


def test_if_with_a_constant_condition_is_folded():
    check(if_model(), lambda h: -h * h, X2, "If")


def test_if_decided_by_an_input_fed_whole_is_folded():
    model = if_model(cond_input=True)
    for mode in (True, False):
        prepared, prep = prepare(model, set(), {"cond": np.array(mode)})
        assert "If" not in {n.op_type for n in prepared.graph.node} and any("1 If" in c for c in prep.changes)
        feeds = {"x": X2, "cond": np.array(mode)}
        np.testing.assert_array_equal(runtime.session(prepared).run(None, feeds)[0], runtime.session(model).run(None, feeds)[0])
    prepared, prep = prepare(model, set())  # not fed whole: stays, refused when it is on the way
    assert "If" in {n.op_type for n in prepared.graph.node}
    assert "--fixed" in dict(prep.not_rewritten)["branch"]


def test_if_on_a_size_known_before_training_is_folded():
    """torch's squeeze(dim) exports as an If on Shape(x)[dim] == 1: known where the size is."""
    then = _branch("then", [helper.make_node("Relu", ["h"], ["r"])], "r")
    other = _branch("else", [helper.make_node("Neg", ["h"], ["n"])], "n")
    nodes = [helper.make_node("Shape", ["h"], ["s"]), helper.make_node("Gather", ["s", "one"], ["d"]),
             helper.make_node("Equal", ["d", "five"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other, name="branch")]
    model = one_op(nodes, [3, 5], ["N", 5], {"one": np.array(1, np.int64), "five": np.array(5, np.int64)})
    check(model, lambda h: np.maximum(h, 0), X2, "If")


def loop_model(trips, scan_output=True):
    """v <- tanh(v * W2 + i) `trips` times, each v also stacked: y = final v + sum of stacked."""
    body_nodes = [
        helper.make_node("Mul", ["v_in", "W2"], ["vw"]),
        helper.make_node("Cast", ["i"], ["fi"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["vw", "fi"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["v_out"]),
        helper.make_node("Identity", ["c_in"], ["c_out"]),
    ]
    outputs = [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)]
    if scan_output:
        body_nodes.append(helper.make_node("Identity", ["v_out"], ["stacked"]))
        outputs.append(helper.make_tensor_value_info("stacked", TensorProto.FLOAT, None))
    body = helper.make_graph(body_nodes, "body", [
        helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
        helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)], outputs)
    loop_outs = ["v", "all"] if scan_output else ["v"]
    nodes = [helper.make_node("Loop", ["trips", "", "h"], loop_outs, body=body, name="loop")]
    if scan_output:
        nodes += [helper.make_node("ReduceSum", ["all", "zero"], ["s"], keepdims=0), helper.make_node("Add", ["v", "s"], ["y"])]
    else:
        nodes.append(helper.make_node("Identity", ["v"], ["y"]))
    inits = {"zero": np.array([0], np.int64), "W2": RNG.standard_normal(5).astype(np.float32)}
    if trips is not None:
        inits["trips"] = np.array(trips, np.int64)
    model = one_op(nodes, [3, 5], ["N", 5], inits)
    if trips is None:
        model.graph.input.append(helper.make_tensor_value_info("trips", TensorProto.INT64, []))
    return model, inits["W2"].astype(np.float64)


def _loop_ref(h, w2, trips):
    v, stacked = h, []
    for i in range(trips):
        v = np.tanh(v * w2 + i)
        stacked.append(v)
    return v + np.sum(stacked, axis=0)


def test_loop_with_a_constant_trip_count_is_unrolled():
    model, w2 = loop_model(3)
    check(model, lambda h: _loop_ref(h, w2, 3), X2, "Loop")


def test_loop_counted_by_an_input_fed_whole_is_unrolled():
    model, w2 = loop_model(None, scan_output=False)
    prepared, prep = prepare(model, set(), {"trips": np.array(4)})
    assert "Loop" not in {n.op_type for n in prepared.graph.node}
    feeds = {"x": X2, "trips": np.array(4)}
    np.testing.assert_allclose(runtime.session(prepared).run(None, feeds)[0], runtime.session(model).run(None, feeds)[0], rtol=1e-6)


def test_unrolling_beyond_the_limit_is_refused_with_the_size():
    model, _ = loop_model(100_000)
    with pytest.raises(InputError, match=r"node 'loop' \(Loop\), after 'W', 'W2'; not rewritten: unrolling it \(100000 iterations "
                                         r"of 6 nodes\) would bring the nodes added by unrolling to 1000000, more than the limit of 20000"):
        train(model, {"x": X2, "t": X2}, TrainSettings(loss="mse(y, t)"))


def test_scan_of_known_length_is_unrolled():
    """A scan reading axis 1 of h [N, 5] backwards: s <- s / 2 + h[:, t], tanh(s) stacked on axis 1."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["s_in", "half"], ["sh"]), helper.make_node("Add", ["sh", "e"], ["s_out"]),
         helper.make_node("Tanh", ["s_out"], ["o"])], "body",
        [helper.make_tensor_value_info("s_in", TensorProto.FLOAT, ["N"]), helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("s_out", TensorProto.FLOAT, ["N"]), helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N"])],
    )
    nodes = [helper.make_node("ReduceSum", ["h", "one"], ["s0"], keepdims=0),
             helper.make_node("Scan", ["s0", "h"], ["s", "outs"], body=body, num_scan_inputs=1, scan_input_axes=[1],
                              scan_input_directions=[1], scan_output_axes=[1], name="scan"),
             helper.make_node("Unsqueeze", ["s", "one"], ["s1"]), helper.make_node("Add", ["outs", "s1"], ["y"])]
    model = one_op(nodes, [3, 5], ["N", 5], {"one": np.array([1], np.int64), "half": np.array(0.5, np.float32)})

    def ref(h):  # the input read backwards, the outputs stacked in the order of the iterations
        s, outs = h.sum(1), []
        for t in range(4, -1, -1):
            s = s * 0.5 + h[:, t]
            outs.append(np.tanh(s))
        return np.stack(outs, 1) + s[:, None]

    check(model, ref, X2, "Scan")


def test_corpus_loop_counted_by_a_fixed_input_unrolls_to_its_data_dependent_ifs():
    """torch.jit's loop (tests/corpus/torch): with n fed whole the Loop unrolls; the Ifs
    inside decide on computed values, so training stops naming them and why."""
    model = onnx.load(Path(__file__).parent / "corpus" / "torch" / "control_flow_ts.onnx")
    prepared, prep = prepare(model, set(), {"n": np.array(2)})
    ops = [n.op_type for n in prepared.graph.node]
    assert "Loop" not in ops and ops.count("If") == 2
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    feeds = {"x": x, "n": np.array(2)}
    np.testing.assert_allclose(runtime.session(prepared).run(None, feeds)[0], runtime.session(model).run(None, feeds)[0], rtol=1e-6)
    assert all("computed from values not known before training" in why for _, why in prep.not_rewritten)


def test_weights_of_a_branch_an_input_decides_are_trained_and_written_back_into_the_branch():
    """silero-vad keeps one network per sample rate in the branches of an If on `sr`, its
    weights in Constant nodes: with `sr` fed whole the If folds, the weights of the branch
    taken are lifted to parameters, and trained values go back into that branch."""
    def branch(name, scale):
        w = (RNG.standard_normal(5) * scale).astype(np.float32)
        nodes = [helper.make_node("Constant", [], [f"{name}.w"], value=numpy_helper.from_array(w)),
                 helper.make_node("Mul", ["x", f"{name}.w"], [f"{name}.y"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}.y", TensorProto.FLOAT, None)]), w

    (then, w16), (other, _) = branch("sr16k", 1.0), branch("sr8k", 2.0)
    graph = helper.make_graph(
        [helper.make_node("Equal", ["sr", "k16"], ["is16"]),
         helper.make_node("If", ["is16"], ["y"], then_branch=then, else_branch=other, name="per_rate")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]), helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [numpy_helper.from_array(np.array(16000, np.int64), "k16")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    prepared, prep = prepare(model, set(), {"sr": np.array(16000)})
    assert "If" not in {n.op_type for n in prepared.graph.node}
    assert prep.lifted == ("sr16k.w",)
    np.testing.assert_array_equal(serde.to_array(next(t for t in prepared.graph.initializer if t.name == "sr16k.w")), w16)
    from onnxsurgeon.train import weights

    written = weights.write_back(model, {"sr16k.w": np.full(5, 3.0, np.float32)})
    y = runtime.session(written).run(None, {"x": X2, "sr": np.array(16000)})[0]
    np.testing.assert_array_equal(y, X2 * 3)
    assert runtime.session(written).run(None, {"x": X2, "sr": np.array(8000)})[0].tobytes() == \
        runtime.session(model).run(None, {"x": X2, "sr": np.array(8000)})[0].tobytes()
