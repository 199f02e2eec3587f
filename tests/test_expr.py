"""The expression language: what parses, what is refused (with positions), how a tree is
evaluated against a function table, and the ONNX nodes the builder emits."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxsurgeon import runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.expr import (
    BinOp,
    Builder,
    Call,
    ExprError,
    Function,
    Member,
    Name,
    Num,
    Param,
    Pos,
    Record,
    Source,
    Str,
    TensorType,
    Value,
    broadcast,
    evaluate,
    fit,
    names_in,
    parse,
    tensor_functions,
)

F32 = onnx.TensorProto.FLOAT


def error(text: str) -> ExprError:
    with pytest.raises(ExprError) as info:
        parse(text)
    return info.value


# --- parsing ----------------------------------------------------------------------------------


def test_allowed_constructs_make_a_small_tree():
    tree = parse("adapt(features, name='a').z")
    assert isinstance(tree, Member) and tree.name == "z"
    call = tree.base
    assert isinstance(call, Call) and call.func == "adapt"
    assert call.args == (Name("features", Pos(1, 7)),)
    assert call.keywords == (("name", Str("a", Pos(1, 22))),)
    tree = parse("0.3 * mse(a, b) + ce(z, labels)")
    assert isinstance(tree, BinOp) and tree.op == "+"
    assert isinstance(tree.left, BinOp) and tree.left.op == "*" and tree.left.left == Num(0.3, Pos(1, 1))


def test_numbers_fold_and_unary_minus():
    assert parse("2 * 3 - 1").value == 5  # type: ignore[union-attr]
    assert parse("-(2 ** 3)").value == -8.0  # type: ignore[union-attr]
    assert parse("+x") == Name("x", Pos(1, 2))
    assert isinstance(parse("-x"), type(parse("-x")))


def test_multi_line_and_leading_spaces():
    tree = parse("  relu(\n   x)")
    assert isinstance(tree, Call) and tree.args[0] == Name("x", Pos(2, 4))


@pytest.mark.parametrize(
    "text, col, words",
    [
        ("x.__class__", 3, "'__class__' is not allowed"),
        ("f(x)._secret", 6, "'_secret' is not allowed"),
        ("__import__('os')", 1, "'__import__' is not allowed"),
        ("lambda: 1", 1, "lambda is not allowed"),
        ("x[0]", 1, "subscripts"),
        ("x[1:2]", 1, "subscripts"),
        ("os.system(1)", 1, "only functions and pieces can be called"),
        ("a if b else c", 1, "conditional expressions"),
        ("a < b", 1, "comparisons"),
        ("a and b", 1, "'and' and 'or'"),
        ("[x for x in y]", 1, "comprehensions"),
        ("(a, b)", 1, "tuples"),
        ("f'{x}'", 1, "f-strings"),
        ("(y := 1)", 2, "':='"),
        ("f(*a)", 3, "'*' arguments"),
        ("f(**a)", 5, "'**' arguments"),
        ("a // b", 1, "'//' is not allowed"),
        ("a @ b", 1, "'@' is not allowed"),
        ("~a", 1, "'~' is not allowed"),
        ("a ** b", 6, "exponent"),
        ("a ** 100", 6, "exponent"),
        ("'text'", 1, "only as a keyword value"),
        ("f(True)", 3, "only as a keyword value"),
        ("None", 1, "not allowed"),
        ("1j", 1, "not allowed"),
        ("(x.y).z", 1, "a member can be taken only"),
        ("1 / 0", 1, "division by zero"),
        ("relu(", 1, "syntax error"),
        ("a +", 4, "syntax error"),
        ("", 1, "empty"),
    ],
)
def test_refused_constructs_say_where(text, col, words):
    e = error(text)
    assert words in e.message, e.message
    assert e.pos is not None and e.pos.line == 1 and e.pos.col == col, (e.pos, e.message)
    assert e.message.startswith(f"<expression>:1:{col}: ")
    assert e.exit_code == 2 and isinstance(e, InputError)


def test_too_long_and_too_deep():
    assert "too long" in error("x" * 20_000).message
    assert "nested" in error("relu(" * 300 + "x" + ")" * 300).message  # Python's parser stops this one
    assert "nested too deeply" in error("-" * 200 + "x").message


def test_source_maps_positions_into_a_file():
    # the expression sits on line 7 of a file, starting at column 6
    src = Source("relu(y)", file="r.toml", line=7, col=6)
    assert str(src.pos(1, 5)) == "r.toml:7:11"
    # per-character map, e.g. for a TOML string with escapes
    chars = tuple((3, c) for c in range(10, 17))
    assert src.__class__("relu(y)", "r.toml", chars=chars).pos(1, 5) == Pos(3, 15, "r.toml")


def test_non_ascii_columns_count_characters():
    e = error("ü + x[0]")
    assert e.pos.col == 5
    tree = parse("é(x)")
    assert isinstance(tree, Call) and tree.args[0].pos == Pos(1, 3)  # type: ignore[union-attr]


def test_names_in():
    assert [n.id for n in names_in(parse("f(a, k=b).z + -c * 2"))] == ["a", "b", "c"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_any_text_parses_or_fails_with_an_expr_error(text):
    try:
        parse(text)
    except ExprError as e:
        assert e.pos is not None and e.pos.line >= 1 and e.pos.col >= 1


@settings(max_examples=100, deadline=None)
@given(st.recursive(
    st.integers(-50, 50).map(str),
    lambda inner: st.tuples(inner, st.sampled_from(["+", "-", "*"]), inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
    max_leaves=12,
))
def test_number_arithmetic_folds_like_python(text):
    assert parse(text).value == eval(text)


# --- evaluating ---------------------------------------------------------------------------------


def table(calls):
    def f(x, k=1):
        calls.append((x, k))
        return ("f", x, k)

    return {
        "f": Function("f", (Param("x", "operand"), Param("k", "int", 1)), f),
        "g": Function("g", (Param("xs"),), lambda xs: xs, variadic="xs"),
    }


def test_evaluate_binds_arguments_by_position_and_keyword():
    calls: list = []
    v = Value("v", TensorType(F32, ("N", 3)))
    assert evaluate(parse("f(v, k=2)"), {"v": v}, table(calls)) == ("f", v, 2)
    assert evaluate(parse("f(4)"), {}, table(calls)) == ("f", 4, 1)
    rec = Record("piece 'p'", (("z", v),))
    assert evaluate(parse("f(r)"), {"r": rec}, table(calls)) == ("f", v, 1)  # a one-output record is its value
    assert evaluate(parse("g(v, v)"), {"v": v}, table(calls)) == (v, v)


@pytest.mark.parametrize(
    "text, col, words",
    [
        ("h(v)", 1, "unknown function or piece 'h'"),
        ("ff(v)", 1, "did you mean 'f'"),
        ("v(1)", 1, "cannot be called"),
        ("f", 1, "is a function: call it"),
        ("w", 1, "unknown name 'w'"),
        ("f(v, 1, 2)", 1, "takes at most 2 positional arguments, 3 given"),
        ("f()", 1, "missing its argument 'x'"),
        ("f(v, q=1)", 8, "has no argument 'q'"),
        ("f(v, x=v)", 8, "got argument 'x' twice"),
        ("f(v, k=1.5)", 8, "must be an integer"),
        ("f(v, 'a')", 6, "only as a keyword value"),
        ("g()", 1, "needs at least one value"),
        ("g(2)", 3, "must be a tensor value, not the number 2"),
        ("r.y", 3, "has no output 'y'"),
        ("v.y", 3, "'v' has no members"),
        ("f(r2)", 3, "pick one output"),
    ],
)
def test_evaluation_errors_say_where(text, col, words):
    v = Value("v", TensorType(F32, ("N", 3)))
    scope = {"v": v, "r": Record("piece 'p'", (("z", v),)), "r2": Record("piece 'q'", (("a", v), ("b", v)))}
    with pytest.raises(ExprError) as info:
        evaluate(parse(text), scope, table([]))
    assert words in str(info.value)
    assert info.value.pos.col == col, info.value.message


def test_record_members_follow_the_alias_rule():
    v = Value("p/L4.y", TensorType(F32, ("N", 16)))
    r = Record("piece 'p'", (("L4.y", v),))
    assert r.member("L4_y") is v and r["L4.y"] is v
    with pytest.raises(AttributeError):
        r.__deepcopy__  # noqa: B018


# --- types --------------------------------------------------------------------------------------


def t(text: str) -> TensorType:
    return TensorType.parse(text)


def test_broadcast_lines_up_dims_or_says_which_do_not():
    assert broadcast(t("float32[N,16]"), t("float32[16]")) == ("N", 16)
    assert broadcast(t("float32[N,1]"), t("float32[N,16]")) == ("N", 16)
    with pytest.raises(InputError, match="dimension 0 is 'N' and 'M'"):
        broadcast(t("float32[N,16]"), t("float32[M,16]"))
    with pytest.raises(InputError, match="dimension 1 is 16 and 8"):
        broadcast(t("float32[N,16]"), t("float32[N,8]"))


def test_fit_binds_symbols_and_refuses_mismatches():
    assert fit(t("float32[N,64]"), t("float32[N,64]"), "x") == {}
    assert fit(t("float32[4,64]"), t("float32[N,64]"), "x") == {"N": 4}
    with pytest.raises(InputError, match="dimension 0 is 'B' where 'N' is expected"):
        fit(t("float32[B,64]"), t("float32[N,64]"), "x")
    with pytest.raises(InputError, match="element type int64, not float32"):
        fit(t("int64[N,64]"), t("float32[N,64]"), "x")
    with pytest.raises(InputError, match="rank 1, not 2"):
        fit(t("float32[N]"), t("float32[N,64]"), "x")


# --- the builder and a table of functions, as the training issue uses them ------------------------


def test_a_loss_like_expression_becomes_onnx_nodes():
    b = Builder(taken=["a", "b"])
    a = b.value("a", t("float32[N,3]"))
    c = b.value("b", t("float32[N,3]"))

    def mse(x, y):
        d = b.binary("-", x, y)
        return b.node("ReduceMean", [b.binary("*", d, d).name], TensorType(F32, ()), keepdims=0)

    functions = tensor_functions(b) | {"mse": Function("mse", (Param("x"), Param("y")), mse)}
    loss = evaluate(parse("0.3 * mse(a, b) + mse(softmax(a), b) / 2"), {"a": a, "b": c}, functions)
    g = onnx.helper.make_graph(
        b.nodes, "loss",
        [onnx.helper.make_tensor_value_info(n, F32, ["N", 3]) for n in ("a", "b")],
        [onnx.helper.make_tensor_value_info(loss.name, F32, [])],
    )
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    x, y = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    (got,) = runtime.session(model).run(None, {"a": x, "b": y})
    sm = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    want = 0.3 * ((x - y) ** 2).mean() + ((sm - y) ** 2).mean() / 2
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_builder_names_yield_to_names_people_give():
    b = Builder()
    x = b.value("x", t("float32[N,3]"))
    r = b.unary("Relu", x)
    assert r.name == "Relu"
    b.claim("Relu", "the value 'Relu'")  # a person names a later value 'Relu'
    mapping = b.finish_names()
    assert mapping["Relu"] != "Relu" and b.nodes[0].output[0] == mapping["Relu"]
    with pytest.raises(InputError, match="name collision"):
        b.claim("Relu", "the output 'Relu'")
    b.scope("hidden", "dense", "a dense layer")
    with pytest.raises(InputError, match="lies inside"):
        b.claim("hidden/x", "an output")


def test_cosine_concat_and_constants_run():
    b = Builder()
    p, q = b.value("p", t("float32[N,4]")), b.value("q", t("float32[N,4]"))
    fns = tensor_functions(b)
    out = evaluate(parse("concat(cosine(p, q), 2 - p, axis=-1)"), {"p": p, "q": q}, fns)
    assert out.type == t("float32[N,5]")
    g = onnx.helper.make_graph(
        b.nodes, "g", [onnx.helper.make_tensor_value_info(n, F32, ["N", 4]) for n in ("p", "q")],
        [onnx.helper.make_value_info(out.name, out.type.to_proto())],
    )
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    x, y = np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)
    (got,) = runtime.session(model).run(None, {"p": x, "q": y})
    cos = (x * y).sum(-1, keepdims=True) / np.sqrt((x * x).sum(-1, keepdims=True) * (y * y).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, np.concatenate([cos, 2 - x], -1), rtol=1e-5, atol=1e-6)


# --- constants take the operand's type only if they survive it (issue 12) ---------------------


@pytest.mark.parametrize(
    "dtype, expression, words",
    [
        ("int64", "x * 0.5", "0.5 is not an integer"),
        ("int64", "x / 3", "dividing integers truncates"),
        ("int32", "x + 3000000000", "outside int32's range"),
        ("int8", "x * 300", "outside int8's range"),
        ("float16", "x * 70000", "beyond float16's largest value"),
        ("float16", "x * 1e-10", "would become 0"),
        ("float32", "x * 1e39", "beyond float32's largest value"),
    ],
)
def test_constant_that_does_not_survive_the_operand_type_is_refused(dtype, expression, words):
    import onnxsurgeon as osg

    net = osg.Network()
    net.input("x", f"{dtype}[N,4]")
    with pytest.raises(InputError, match=words):
        net.output("y", net.evaluate(expression))


@pytest.mark.parametrize(
    "dtype, expression, expected",
    [
        ("int64", "x * 2", lambda x: x * 2),
        ("int64", "x * 2.0", lambda x: x * 2),
        ("int32", "x + 100", lambda x: x + 100),
        ("float16", "x * 0.5", lambda x: x * np.float16(0.5)),
        ("float32", "x / 3", lambda x: x / np.float32(3)),
    ],
)
def test_constants_that_survive_compute_exactly(dtype, expression, expected):
    import onnxsurgeon as osg

    net = osg.Network()
    net.input("x", f"{dtype}[N,4]")
    net.output("y", net.evaluate(expression))
    model, _ = net.build()
    x = np.arange(8).reshape(2, 4).astype(dtype)
    (got,) = runtime.session(model).run(None, {"x": x})
    assert got.dtype == np.dtype(dtype) and np.array_equal(got, expected(x))
