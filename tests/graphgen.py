"""Random valid ONNX graphs for the property tests (tests/test_properties.py).

A graph is grown from one to three inputs ``x0..x2`` (float32[N,4]) by appending nodes
that read earlier values: elementwise unary and binary operators, MatMul with a fresh
weight, Concat followed by a two-output Split, TopK (two outputs of different types),
and If nodes whose branches read values of the outer graph (captured values). Every
value is float32[N,4] except TopK's indices. Values no node reads become the graph's
outputs, so every node is needed by some output. All choices come from one
``random.Random``, so a seed names a graph.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WIDTH = 4
OPSET = 17
UNARY = ("Relu", "Tanh", "Sigmoid", "Neg", "Abs", "Softsign")
BINARY = ("Add", "Sub", "Mul", "Max", "Min")


@dataclass
class RandomGraph:
    model: onnx.ModelProto
    inputs: list[str]  # graph inputs
    values: list[str]  # every float value of the top-level graph, inputs first, in order
    outputs: list[str]  # graph outputs (values nothing reads)
    reads: dict[str, list[str]] = field(default_factory=dict)  # value -> values its producer reads (captures too)


def _vi(name: str, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, ["N", WIDTH])


def build(rng: random.Random, max_nodes: int = 12) -> RandomGraph:
    """A random valid model; ``max_nodes`` bounds the number of top-level nodes."""
    n_inputs = rng.randint(1, 3)
    inputs = [f"x{i}" for i in range(n_inputs)]
    values = list(inputs)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    reads: dict[str, list[str]] = {}
    extra_outputs: list[onnx.ValueInfoProto] = []
    wrng = np.random.default_rng(rng.randrange(2**32))
    counter = iter(range(10_000))

    def fresh(prefix: str = "v") -> str:
        return f"{prefix}{next(counter)}"

    def pick() -> str:
        # favour recent values, so graphs grow deep as well as wide
        k = len(values)
        return values[max(0, k - 1 - int(rng.expovariate(0.5)))] if rng.random() < 0.7 else rng.choice(values)

    n_nodes = rng.randint(1, max_nodes)
    while len(nodes) < n_nodes:
        kind = rng.choice(["unary", "binary", "binary", "matmul", "split", "if", "topk", "const"])
        if kind == "unary":
            a, out = pick(), fresh()
            nodes.append(helper.make_node(rng.choice(UNARY), [a], [out], name=f"n_{out}"))
            reads[out] = [a]
            values.append(out)
        elif kind == "binary":
            a, b, out = pick(), pick(), fresh()
            nodes.append(helper.make_node(rng.choice(BINARY), [a, b], [out], name=f"n_{out}"))
            reads[out] = [a, b]
            values.append(out)
        elif kind == "const":  # a value and a parameter: Add with a bias vector
            a, out, p = pick(), fresh(), fresh("b")
            inits.append(numpy_helper.from_array(wrng.standard_normal(WIDTH).astype(np.float32), p))
            nodes.append(helper.make_node("Add", [a, p], [out], name=f"n_{out}"))
            reads[out] = [a]
            values.append(out)
        elif kind == "matmul":
            a, out, w = pick(), fresh(), fresh("W")
            inits.append(numpy_helper.from_array((wrng.standard_normal((WIDTH, WIDTH)) / 2).astype(np.float32), w))
            nodes.append(helper.make_node("MatMul", [a, w], [out], name=f"n_{out}"))
            reads[out] = [a]
            values.append(out)
        elif kind == "split":  # Concat then a node with two outputs
            a, b = pick(), pick()
            cat, lo, hi, sizes = fresh(), fresh(), fresh(), fresh("s")
            inits.append(numpy_helper.from_array(np.array([WIDTH, WIDTH], np.int64), sizes))
            nodes.append(helper.make_node("Concat", [a, b], [cat], name=f"n_{cat}", axis=1))
            split = fresh("split")
            nodes.append(helper.make_node("Split", [cat, sizes], [lo, hi], name=split, axis=1))
            reads[cat] = [a, b]
            reads[lo] = reads[hi] = [cat]
            values.extend([lo, hi])  # cat is [N,8]: read through, never a cut point
        elif kind == "topk":  # two outputs of different types; the indices stay internal or an output
            a, val, idx, k = pick(), fresh(), fresh("i"), fresh("k")
            inits.append(numpy_helper.from_array(np.array([WIDTH], np.int64), k))
            nodes.append(helper.make_node("TopK", [a, k], [val, idx], name=f"n_{val}", axis=1))
            reads[val] = reads[idx] = [a]
            values.append(val)
            extra_outputs.append(_vi(idx, TensorProto.INT64))
        else:  # If: the condition is computed, both branches read outer values
            c, a, b = pick(), pick(), pick()
            s, cond, out, zero = fresh("sum"), fresh("cond"), fresh(), fresh("zero")
            inits.append(numpy_helper.from_array(np.array(0.0, np.float32), zero))
            nodes.append(helper.make_node("ReduceSum", [c], [s], name=f"n_{s}", keepdims=0))
            nodes.append(helper.make_node("Greater", [s, zero], [cond], name=f"n_{cond}"))
            t_out, e_out = fresh("then"), fresh("else")
            then_nodes = [helper.make_node(rng.choice(BINARY), [a, b], [t_out], name=f"n_{t_out}")]
            if rng.random() < 0.5:  # a nested If inside the then-branch, capturing from two levels up
                inner_o, inner_t, inner_e = fresh("inner"), fresh("ithen"), fresh("ielse")
                inner = helper.make_node(
                    "If", [cond], [inner_o], name=f"n_{inner_o}",
                    then_branch=helper.make_graph([helper.make_node("Relu", [b], [inner_t])], "ithen", [], [_vi(inner_t)]),
                    else_branch=helper.make_graph([helper.make_node("Neg", [a], [inner_e])], "ielse", [], [_vi(inner_e)]),
                )
                t2 = fresh("then")
                then_nodes += [inner, helper.make_node("Add", [t_out, inner_o], [t2], name=f"n_{t2}")]
                t_out = t2
            else_nodes = [helper.make_node(rng.choice(UNARY), [a], [e_out], name=f"n_{e_out}")]
            nodes.append(helper.make_node(
                "If", [cond], [out], name=f"n_{out}",
                then_branch=helper.make_graph(then_nodes, "then", [], [_vi(t_out)]),
                else_branch=helper.make_graph(else_nodes, "else", [], [_vi(e_out)]),
            ))
            reads[out] = [c, a, b]
            values.append(out)
    read_somewhere = {r for rs in reads.values() for r in rs}
    outputs = [v for v in values if v not in read_somewhere and v not in inputs]
    graph = helper.make_graph(
        nodes, "random", [_vi(x) for x in inputs], [_vi(o) for o in outputs] + extra_outputs, initializer=inits
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return RandomGraph(model, inputs, values, outputs + [o.name for o in extra_outputs], reads)


def closed_cut(g: RandomGraph, rng: random.Random) -> tuple[list[str], list[str]]:
    """A random closed cut (inputs, outputs) of the float values: outputs picked at random,
    a random frontier of values, then every graph input that still leaks in added; now and
    then one of the inputs is an output too."""
    candidates = [v for v in g.values if v not in g.inputs]
    outputs = rng.sample(candidates, rng.randint(1, min(3, len(candidates))))
    frontier = {v for v in g.values if rng.random() < 0.3} - set(outputs)
    inputs = needed_inputs(g, outputs, frontier)
    if rng.random() < 0.15:  # a value may be both an input and an output of the piece
        outputs.append(rng.choice(inputs))
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
