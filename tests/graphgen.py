"""Random valid ONNX models for the property tests (tests/test_properties.py).

A model is grown from one to three inputs ``x0..x2`` (``T[N,4]``, T float32 or float16)
under one of several default-domain opsets (13 to 21, each with an IR version onnxruntime
loads), by appending nodes that read earlier values:

- elementwise unary and binary operators, a bias Add and a MatMul with fresh parameters;
- Concat followed by a two-output Split; TopK (values, and int64 indices as an output);
- BatchNormalization as exporters write it for inference, and in training mode
  (``training_mode=1``, running-statistics outputs, opset 14 on);
- Dropout: plain, with a ratio, and in training mode (random); its mask is sometimes read;
- int64 values: Cast to int64, arithmetic with an int64 parameter, Cast back;
- calls of model-local functions (``local.Gate``, and ``local.GatedSum`` which calls it);
- If nodes whose branches read values of the outer graph, sometimes with an If nested in a
  branch that reads values from two levels up, sometimes with a training-mode Dropout or
  BatchNormalization (its parameters outer initializers) at the end of a branch.

Values no node reads become the graph's outputs, so every node is needed by some output.
Every choice goes through a :class:`Choices`: :class:`DrawChoices` takes them from
hypothesis (the property tests: a failing model shrinks to a small one), and
:class:`RandomChoices` from a seeded ``random.Random`` (the coverage check).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 4
OPSETS = {17: 8, 13: 7, 14: 8, 15: 8, 18: 8, 19: 9, 20: 9, 21: 10}  # opset -> an IR version for it (17 first: shrinks there)
FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)
UNARY = ("Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Softsign")
BINARY = ("Add", "Sub", "Mul", "Max", "Min")
# Simplest first: hypothesis shrinks a choice towards the first option.
KINDS = ("unary", "binary", "const", "matmul", "split", "topk", "int64", "batchnorm", "dropout", "function", "if")
LOCAL = "local"
TYPE_NAMES = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64"}


class Choices:
    """Where a generator's choices come from."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def choice(self, options: Sequence[Any]) -> Any:
        raise NotImplementedError

    def chance(self, percent: int) -> bool:
        raise NotImplementedError


class RandomChoices(Choices):
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def choice(self, options: Sequence[Any]) -> Any:
        return self.rng.choice(list(options))

    def chance(self, percent: int) -> bool:
        return self.rng.randrange(100) < percent


class DrawChoices(Choices):
    """Choices drawn from hypothesis, every one as yes/no draws (``st.booleans()``); each
    shrinks towards the simplest (the lowest integer, the first option, no).

    Not ``st.integers`` or ``st.sampled_from``: hypothesis mixes into those, now and then,
    integer constants it finds in the source of local modules it sees imported (skipping
    any path with a ``tests`` folder in it), so the examples would change with the
    library's source and with where the repository is checked out; a boolean draw has no
    such input, so derandomized runs make the same models everywhere."""

    def __init__(self, draw: Callable[[Any], Any]) -> None:
        from hypothesis import strategies as st

        self.draw, self.bit = draw, st.booleans()

    def int(self, lo: int, hi: int) -> int:
        span = hi - lo
        for _ in range(4):  # redraw a value out of range (rarely more than once), so choices are near uniform
            value = 0
            for k in range(span.bit_length()):
                value |= self.draw(self.bit) << k
            if value <= span:
                break
        return lo + value % (span + 1)

    def choice(self, options: Sequence[Any]) -> Any:
        options = list(options)
        return options[self.int(0, len(options) - 1)]

    def chance(self, percent: int) -> bool:
        return self.int(0, 99) >= 100 - percent


@dataclass
class RandomGraph:
    model: onnx.ModelProto
    inputs: list[str]  # graph inputs
    values: list[str]  # every [N,4] value of the top-level graph (cut points), inputs first, in order
    outputs: list[str]  # graph outputs
    reads: dict[str, list[str]] = field(default_factory=dict)  # value -> values its producer reads (captures too)
    types: dict[str, int] = field(default_factory=dict)  # value -> element type
    random: set[str] = field(default_factory=set)  # outputs of a training-mode Dropout (random)
    inexact: set[str] = field(default_factory=set)  # outputs of a BatchNormalization (folding rounds differently)
    features: set[str] = field(default_factory=set)  # what the model contains, for the figures

    @property
    def elem(self) -> int:
        return self.types[self.inputs[0]]

    def type_of(self, value: str) -> str:
        """The value's type as the Network API writes it (``float32[N,4]``)."""
        return f"{TYPE_NAMES[self.types[value]]}[N,{WIDTH}]"

    def depends(self, outputs: Sequence[str], inputs: Sequence[str], sources: set[str]) -> set[str]:
        """The outputs that, in the piece cut at ``inputs``, are computed from a value of ``sources``."""
        found = set()
        for out in outputs:
            seen, stack = set(), [out]
            while stack:
                v = stack.pop()
                if v in seen or v in inputs:
                    continue
                seen.add(v)
                if v in sources:
                    found.add(out)
                    break
                stack.extend(self.reads.get(v, []))
        return found


def _vi(name: str, elem: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["N", WIDTH])


def _functions(opset: int) -> list[onnx.FunctionProto]:
    """``Gate(x) = x * Sigmoid(x)`` and ``GatedSum(a, b) = Gate(a + b)`` (a function calling a function)."""
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(LOCAL, 1)]
    gate = helper.make_function(
        LOCAL, "Gate", ["x"], ["y"],
        [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"])], imports,
    )
    gated_sum = helper.make_function(
        LOCAL, "GatedSum", ["a", "b"], ["y"],
        [helper.make_node("Add", ["a", "b"], ["t"]), helper.make_node("Gate", ["t"], ["y"], domain=LOCAL)], imports,
    )
    return [gate, gated_sum]


def build(c: Choices, max_nodes: int = 12) -> RandomGraph:
    """A random valid model; ``max_nodes`` bounds the number of top-level node groups."""
    opset = c.choice(list(OPSETS))
    elem = c.choice(FLOATS)
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    inputs = [f"x{i}" for i in range(c.int(1, 3))]
    g = RandomGraph(onnx.ModelProto(), inputs, list(inputs), [], types={x: elem for x in inputs})
    floats = list(inputs)  # float values, in order
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    extra_outputs: list[onnx.ValueInfoProto] = []
    wrng = np.random.default_rng(c.int(0, 2**32 - 1))
    counter = iter(range(10_000))

    def fresh(prefix: str = "v") -> str:
        return f"{prefix}{next(counter)}"

    def pick(exact: bool = False) -> str:
        # Favour recent values, so graphs grow deep as well as wide. ``exact``: for a reader
        # that is not continuous (a cast to int, a condition, TopK's indices), a value a piece
        # computes bit for bit as the model does: none a BatchNormalization feeds (folding
        # rounds differently), and in float16 only graph inputs (onnxruntime's CPU computes
        # float16 operators in float32 and drops the casts between them, so a value computed
        # in a piece from a rounded float16 input can differ in the last bit).
        pool = [v for v in floats if not exact or (v in inputs if elem == TensorProto.FLOAT16 else not g.depends([v], [], g.inexact))]
        if c.chance(30):
            return c.choice(pool)
        return pool[-1 - c.int(0, min(len(pool) - 1, 2))]

    def param(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    def add(out: str, reads: list[str], t: int = elem) -> None:
        g.reads[out] = reads
        g.types[out] = t
        g.values.append(out)
        if t == elem:
            floats.append(out)

    n_groups = c.int(1, max_nodes)
    for _ in range(n_groups):
        kind = c.choice(KINDS)
        g.features.add(kind)
        if kind == "unary":
            a, out = pick(), fresh()
            nodes.append(helper.make_node(c.choice(UNARY), [a], [out], name=f"n_{out}"))
            add(out, [a])
        elif kind == "binary":
            a, b, out = pick(), pick(), fresh()
            nodes.append(helper.make_node(c.choice(BINARY), [a, b], [out], name=f"n_{out}"))
            add(out, [a, b])
        elif kind == "const":  # a value and a parameter: Add with a bias vector
            a, out = pick(), fresh()
            p = param(fresh("b"), wrng.standard_normal(WIDTH).astype(dtype))
            nodes.append(helper.make_node("Add", [a, p], [out], name=f"n_{out}"))
            add(out, [a])
        elif kind == "matmul":
            a, out = pick(), fresh()
            w = param(fresh("W"), (wrng.standard_normal((WIDTH, WIDTH)) / 2).astype(dtype))
            nodes.append(helper.make_node("MatMul", [a, w], [out], name=f"n_{out}"))
            add(out, [a])
        elif kind == "split":  # Concat then a node with two outputs
            a, b = pick(), pick()
            cat, lo, hi = fresh(), fresh(), fresh()
            sizes = param(fresh("s"), np.array([WIDTH, WIDTH], np.int64))
            nodes.append(helper.make_node("Concat", [a, b], [cat], name=f"n_{cat}", axis=1))
            nodes.append(helper.make_node("Split", [cat, sizes], [lo, hi], name=fresh("split"), axis=1))
            g.reads[cat] = [a, b]  # cat is [N,8]: read through, never a cut point
            add(lo, [cat])
            add(hi, [cat])
        elif kind == "topk":  # two outputs of different types; the indices are a graph output
            a, val, idx = pick(exact=True), fresh(), fresh("i")
            k = param(fresh("k"), np.array([WIDTH], np.int64))
            nodes.append(helper.make_node("TopK", [a, k], [val, idx], name=f"n_{val}", axis=1))
            add(val, [a])
            g.reads[idx] = [a]
            extra_outputs.append(_vi(idx, TensorProto.INT64))
        elif kind == "int64":  # Cast to int64, arithmetic with an int64 parameter, Cast back
            a, i, j, out = pick(exact=True), fresh("int"), fresh("int"), fresh()
            p = param(fresh("ib"), wrng.integers(-3, 4, WIDTH).astype(np.int64))
            nodes += [
                helper.make_node("Cast", [a], [i], name=f"n_{i}", to=TensorProto.INT64),
                helper.make_node(c.choice(("Add", "Mul", "Sub")), [i, p], [j], name=f"n_{j}"),
                helper.make_node("Cast", [j], [out], name=f"n_{out}", to=elem),
            ]
            add(i, [a], TensorProto.INT64)
            add(j, [i], TensorProto.INT64)
            add(out, [j])
        elif kind == "batchnorm":
            a, out = pick(), fresh("bn")
            stats = [
                param(fresh("bn_scale"), wrng.uniform(0.5, 1.5, WIDTH).astype(dtype)),
                param(fresh("bn_bias"), wrng.standard_normal(WIDTH).astype(dtype)),
                param(fresh("bn_mean"), wrng.standard_normal(WIDTH).astype(dtype)),
                param(fresh("bn_var"), wrng.uniform(0.5, 2.0, WIDTH).astype(dtype)),
            ]
            attrs: dict[str, Any] = {"epsilon": c.choice((1e-5, 1e-3)), "momentum": 0.9}
            outs = [out]
            if opset >= 14 and c.chance(40):  # a training-mode export: batch statistics, running-stat outputs
                attrs["training_mode"] = 1
                outs += [fresh("running_mean"), fresh("running_var")]
                g.features.add("batchnorm-training")
            nodes.append(helper.make_node("BatchNormalization", [a, *stats], outs, name=f"n_{out}", **attrs))
            add(out, [a])
            g.inexact.add(out)
        elif kind == "dropout":
            a, out = pick(), fresh("drop")
            variant = c.choice(("plain", "ratio", "training"))
            ins = [a]
            if variant != "plain":
                ins.append(param(fresh("ratio"), np.array(c.choice((0.1, 0.5)), dtype)))
            if variant == "training":
                ins.append(param(fresh("training"), np.array(True)))
                g.random.add(out)
                g.features.add("dropout-training")
            outs = [out]
            masked = c.chance(30)
            if masked:  # the mask is read too: out * Cast(mask)
                outs.append(fresh("mask"))
            nodes.append(helper.make_node("Dropout", ins, outs, name=f"n_{out}"))
            add(out, [a])
            if masked:
                m, out2 = fresh("maskf"), fresh()
                nodes += [
                    helper.make_node("Cast", [outs[1]], [m], name=f"n_{m}", to=elem),
                    helper.make_node("Mul", [out, m], [out2], name=f"n_{out2}"),
                ]
                add(out2, [out, a])
                if variant == "training":
                    g.random.add(out2)
        elif kind == "function":
            out = fresh("fn")
            if c.chance(50):
                a = pick()
                nodes.append(helper.make_node("Gate", [a], [out], name=f"n_{out}", domain=LOCAL))
                add(out, [a])
            else:
                a, b = pick(), pick()
                nodes.append(helper.make_node("GatedSum", [a, b], [out], name=f"n_{out}", domain=LOCAL))
                add(out, [a, b])
        else:  # If: the condition is computed, both branches read outer values
            cv, a, b = pick(exact=True), pick(), pick()
            s, cond, out, zero = fresh("sum"), fresh("cond"), fresh(), fresh("zero")
            param(zero, np.array(0.0, dtype))
            nodes.append(helper.make_node("ReduceSum", [cv], [s], name=f"n_{s}", keepdims=0))
            nodes.append(helper.make_node("Greater", [s, zero], [cond], name=f"n_{cond}"))
            t_out, e_out = fresh("then"), fresh("else")
            then_nodes = [helper.make_node(c.choice(BINARY), [a, b], [t_out], name=f"n_{t_out}")]
            if c.chance(50):  # a nested If inside the then-branch, capturing from two levels up
                g.features.add("nested-if")
                inner_o, inner_t, inner_e = fresh("inner"), fresh("ithen"), fresh("ielse")
                inner = helper.make_node(
                    "If", [cond], [inner_o], name=f"n_{inner_o}",
                    then_branch=helper.make_graph([helper.make_node("Relu", [b], [inner_t])], "ithen", [], [_vi(inner_t, elem)]),
                    else_branch=helper.make_graph([helper.make_node("Neg", [a], [inner_e])], "ielse", [], [_vi(inner_e, elem)]),
                )
                t2 = fresh("then")
                then_nodes += [inner, helper.make_node("Add", [t_out, inner_o], [t2], name=f"n_{t2}")]
                t_out = t2
            else_nodes = [helper.make_node(c.choice(UNARY), [a], [e_out], name=f"n_{e_out}")]
            branch_layer = None
            if c.chance(30):  # a training-mode layer inside the branch: constant mode turns it off there too
                e2 = fresh("else")
                if opset >= 14 and c.chance(50):  # its parameters are outer initializers, captured
                    branch_layer = "branch-batchnorm"
                    stats = [
                        param(fresh("bn_scale"), wrng.uniform(0.5, 1.5, WIDTH).astype(dtype)),
                        param(fresh("bn_bias"), wrng.standard_normal(WIDTH).astype(dtype)),
                        param(fresh("bn_mean"), wrng.standard_normal(WIDTH).astype(dtype)),
                        param(fresh("bn_var"), wrng.uniform(0.5, 2.0, WIDTH).astype(dtype)),
                    ]
                    else_nodes.append(helper.make_node(
                        "BatchNormalization", [e_out, *stats], [e2, fresh("running_mean"), fresh("running_var")],
                        name=f"n_{e2}", training_mode=1,
                    ))
                else:
                    branch_layer = "branch-dropout"
                    ratio = param(fresh("ratio"), np.array(0.5, dtype))
                    training = param(fresh("training"), np.array(True))
                    else_nodes.append(helper.make_node("Dropout", [e_out, ratio, training], [e2], name=f"n_{e2}"))
                g.features.add(branch_layer)
                e_out = e2
            nodes.append(helper.make_node(
                "If", [cond], [out], name=f"n_{out}",
                then_branch=helper.make_graph(then_nodes, "then", [], [_vi(t_out, elem)]),
                else_branch=helper.make_graph(else_nodes, "else", [], [_vi(e_out, elem)]),
            ))
            add(out, [cv, a, b])
            if branch_layer == "branch-dropout":
                g.random.add(out)
            elif branch_layer == "branch-batchnorm":
                g.inexact.add(out)
    read_somewhere = {r for rs in g.reads.values() for r in rs}
    g.outputs = [v for v in g.values if v not in read_somewhere and v not in inputs]
    graph = helper.make_graph(
        nodes, "random", [_vi(x, elem) for x in inputs],
        [_vi(o, g.types[o]) for o in g.outputs] + extra_outputs, initializer=inits,
    )
    g.outputs += [o.name for o in extra_outputs]
    imports = [helper.make_opsetid("", opset)]
    functions = []
    if any(n.domain == LOCAL for n in nodes):
        imports.append(helper.make_opsetid(LOCAL, 1))
        functions = _functions(opset)
    g.model = helper.make_model(graph, opset_imports=imports, functions=functions)
    g.model.ir_version = OPSETS[opset]
    g.features |= {f"opset {opset}", TYPE_NAMES[elem]}
    onnx.checker.check_model(g.model, full_check=True)
    return g


def closed_cut(g: RandomGraph, c: Choices) -> tuple[list[str], list[str]]:
    """A random closed cut (inputs, outputs) of the [N,4] values: outputs picked at random,
    a random frontier of values, then every graph input that still leaks in added; now and
    then one of the inputs is an output too."""
    candidates = [v for v in g.values if v not in g.inputs]
    outputs: list[str] = []
    for _ in range(c.int(1, min(3, len(candidates)))):
        v = c.choice([v for v in candidates if v not in outputs])
        outputs.append(v)
    frontier = {v for v in g.values if c.chance(30)} - set(outputs)
    inputs = needed_inputs(g, outputs, frontier)
    if c.chance(15):  # a value may be both an input and an output of the piece
        outputs.append(c.choice(inputs))
    return inputs, outputs


def needed_inputs(g: RandomGraph, outputs: list[str], stop: set[str]) -> list[str]:
    """The values of ``stop`` and graph inputs a walk back from ``outputs`` reaches."""
    found, seen, stack = [], set(), list(outputs)
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if v in stop or v in g.inputs:
            found.append(v)
            continue
        stack.extend(g.reads[v])
    order = {v: i for i, v in enumerate(g.values)}
    return sorted(found, key=order.__getitem__)
