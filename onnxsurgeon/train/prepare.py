"""Making a model trainable by onnxruntime-training 1.19, and deciding what is trained.

:func:`prepare` rewrites a copy of the model (the model itself is never changed, and the
trained values are later written back into the original, not into this copy):

- versions: opsets below 13 are converted up (the loss functions use the opset-13 forms),
  above 21 down; IR versions above 10 are clamped;
- IR 3: initializers that are also listed as graph inputs are listed as initializers only;
- control flow: an If whose condition is known before training is folded to its branch, a
  Loop or Scan of known length unrolled (:mod:`onnxsurgeon.train.control`), before weights
  held in Constant nodes are lifted to parameters (:mod:`onnxsurgeon.train.lift`);
- ops without a gradient or a CPU gradient kernel where a parameter reaches them (CastLike,
  ReduceMax, Resize, InstanceNormalization, reverse LSTM, ...) are written in ops that have
  both (:mod:`onnxsurgeon.train.rewrite`); one that cannot be keeps the reason, which the
  refusal in :func:`plan` quotes;
- Dropout: every Dropout drops while training (an explicit ``training_mode`` True input)
  and declares its mask, which its gradient reads; the eval model runs it in inference mode;
- BatchNormalization whose running statistics are frozen is written out as the fixed
  inference formula ``(x - mean) * scale / sqrt(var + eps) + bias``: onnxruntime would
  otherwise switch it to training mode and move the statistics. Other BatchNormalization
  trains (batch statistics), and its running statistics are *updated* by onnxruntime
  (listed as non-trainable state), never trained;
- LSTM and GRU get their full list of inputs (onnxruntime's gradient builder indexes them
  by position); tanh-approximated Gelu is written out in elementary ops (onnxruntime's
  Gelu gradient is that of the exact Gelu), and so are the ops in ``DECOMPOSED``, which
  have no gradient in onnxruntime (Softplus, Elu, PRelu, Sum, ...); LayerNormalization
  declares its optional outputs (see :mod:`onnxsurgeon.train.artifacts`).

:func:`plan` then decides, once the loss is part of the graph, which parameters are trained:
float32 initializers with at least one dimension, not frozen, that the loss reaches through
differentiable inputs. Scalars are constants (exporters write numbers such as a scale as
0-d initializers). A node on the way from a trained parameter to the loss whose op has no
gradient in onnxruntime-training stops the run with a message naming the node.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import onnx.inliner

from onnxsurgeon import meta, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.graph import default_opset, is_op, node_reads
from onnxsurgeon.names import alias
from onnxsurgeon.runtime import MAX_IR, MAX_OPSET
from onnxsurgeon.train import lift, rewrite
from onnxsurgeon.train.artifacts import prepare_for_gradients
from onnxsurgeon.train.losses import value_types

MIN_OPSET = 13

# Ops onnxruntime-training 1.19 has no gradient for (measured: tests/test_train_prepare.py).
NO_GRADIENT = frozenset(
    """Elu Softplus Selu HardSigmoid Softsign ThresholdedRelu Celu HardSwish Mish Sign Floor Round Ceil
    Tan Atan Asin Acos Sinh Cosh Asinh Acosh Atanh Hardmax Shrink ReduceMax ReduceMin ReduceProd ReduceL1
    ReduceSumSquare ReduceLogSum Sum Mean PRelu InstanceNormalization GlobalMaxPool GlobalLpPool LpPool
    LpNormalization LRN SpaceToDepth DepthToSpace GroupNormalization Einsum CumSum RNN Loop If Scan
    Mod CastLike Resize ReverseSequence Sign""".split()
)
# Of those, the ones rewrite.py writes in ops that have gradients (where it can; else the node is refused).
REWRITTEN = frozenset(rewrite.REWRITES)

# Inputs that take no gradient: indices, shapes, sizes, flags, running statistics.
NOT_DIFFERENTIABLE = {
    "Dropout": {1, 2},
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Pad": {1, 2, 3},
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Clip": {1, 2},
    "BatchNormalization": {3, 4},
    "Gather": {1},
    "GatherElements": {1},
    "GatherND": {1},
    "ScatterElements": {1},
    "ScatterND": {1},
    "OneHot": {0, 1, 2},
    "ConstantOfShape": {0},
    "TopK": {1},
    "Where": {0},
    "LSTM": {4},
    "GRU": {4},
    "Squeeze": {1},
    "Unsqueeze": {1},
    "ReduceSum": {1},
    "ReduceMean": {1},
    "Split": {1},
    "Range": {0, 1, 2},
}
# Ops whose outputs carry no gradient at all.
NO_OUTPUT_GRADIENT = frozenset("Shape Size ArgMax ArgMin NonZero Equal Greater Less GreaterOrEqual LessOrEqual Not And Or Xor IsNaN IsInf RandomNormalLike RandomUniformLike EyeLike".split())


@dataclass(frozen=True)
class Prepared:
    """What :func:`prepare` changed and found."""

    changes: tuple[str, ...]
    running_stats: tuple[str, ...]  # of BatchNormalization that trains: updated, not trained
    frozen: tuple[str, ...]
    not_rewritten: tuple[tuple[str, str], ...] = ()  # (node, why) of nodes rewrite.py could not rewrite
    lifted: tuple[str, ...] = ()  # constant tensors made parameters (onnxsurgeon.train.lift)

    def to_dict(self) -> dict[str, Any]:
        return {
            "changes": list(self.changes), "running_stats": list(self.running_stats), "frozen": list(self.frozen),
            "not_rewritten": [list(p) for p in self.not_rewritten], "lifted": list(self.lifted),
        }


@dataclass(frozen=True)
class TrainPlan:
    """Which parameters are trained, updated, frozen or left constant."""

    trainable: tuple[str, ...]
    running_stats: tuple[str, ...]
    frozen: tuple[str, ...]
    constants: tuple[str, ...]  # initializers left as they are: scalars, integers, not reached by the loss
    changes: tuple[str, ...] = field(default=())
    lifted: tuple[str, ...] = ()  # of the above, values the model computes from constants (Constant nodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "trainable": list(self.trainable),
            "running_stats": list(self.running_stats),
            "frozen": list(self.frozen),
            "constants": list(self.constants),
            "lifted": list(self.lifted),
            "changes": list(self.changes),
        }


def frozen_names(model: onnx.ModelProto, patterns: Iterable[str] = ()) -> set[str]:
    """Parameters that must not change: marked frozen in the metadata, all of a ``constant``
    piece, and those matching a pattern (``fnmatch``, on the name or its alias)."""
    # Values computed from constants may become parameters (onnxsurgeon.train.lift): freezable too.
    boundary = lift.boundary(model.graph)
    names = [t.name for t in model.graph.initializer] + boundary
    frozen = meta.frozen_params(model) | (set(boundary) if meta.mode(model) == "constant" else meta.frozen(model) & set(boundary))
    patterns = list(patterns)
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(alias(n), p) for n in names)]
    if unmatched:
        raise InputError(
            f"--freeze pattern{'s' if len(unmatched) > 1 else ''} matched no parameter: {', '.join(unmatched)}",
            "list the parameters with: onnxsurgeon params MODEL",
        )
    for p in patterns:
        frozen.update(n for n in names if fnmatch.fnmatchcase(n, p) or fnmatch.fnmatchcase(alias(n), p))
    return frozen


def versions(model: onnx.ModelProto, changes: list[str]) -> onnx.ModelProto:
    """`model` within opsets 13 to 21 (converted, with a note in `changes`), or as it is."""
    opset = default_opset(model)
    if MIN_OPSET <= opset <= MAX_OPSET:
        return model
    from onnx import version_converter

    target = MIN_OPSET if opset < MIN_OPSET else MAX_OPSET
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises assorted errors for ops it cannot move
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(
            f"the model uses opset {opset}; training needs opset {MIN_OPSET} to {MAX_OPSET}, and converting it failed: {first}",
            f"export the model at an opset between {MIN_OPSET} and {MAX_OPSET}",
        ) from None
    changes.append(f"opset {opset} converted to {target}")
    converted.ir_version = max(converted.ir_version, 7)  # opset 13 needs IR 7; IR 3 also lists initializers as inputs
    return converted


def prepare(
    model: onnx.ModelProto, /, frozen: set[str], fixed: Mapping[str, np.ndarray] | None = None
) -> tuple[onnx.ModelProto, Prepared]:
    """A copy of `model` that onnxruntime-training differentiates correctly (module docstring).

    `fixed` holds the values of graph inputs fed whole at every step (``--fixed``): known
    before training like constants, so an ``If`` they decide is folded to its branch and a
    ``Loop`` they count is unrolled (:mod:`onnxsurgeon.train.rewrite`)."""
    changes: list[str] = []
    out = serde.materialize(model)  # a copy, with external weights read in (generate_artifacts needs them)
    if out.functions:
        out = onnx.inliner.inline_local_functions(out)
        changes.append("model-local functions inlined")
    out = versions(out, changes)
    if out.ir_version > MAX_IR:
        out.ir_version = MAX_IR
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    listed = [v for v in graph.input if v.name in inits]
    if listed:
        keep = [v for v in graph.input if v.name not in inits]
        del graph.input[:]
        graph.input.extend(keep)
        changes.append(f"{len(listed)} initializers no longer listed as graph inputs (IR 3)")
        out.ir_version = max(out.ir_version, 4)
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | set(inits) | {v.name for v in graph.input}

    def fresh(base: str) -> str:
        name, k = base, 1
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    # If/Loop/Scan first: weights in a folded branch are then lifted like any other.
    folded, not_folded = rewrite.fold_control(out, candidates(out, frozen, ()), default_opset(out), fresh, fixed)
    lifted = lift.lift(out)
    if lifted:
        changes.append(
            f"{len(lifted)} weights held in Constant nodes or computed from constants only made parameters "
            f"(written back into the model where they were): {_few(lifted, 5)}"
        )
        inits = {t.name: t for t in graph.initializer}
    types = value_types(out)
    rewritten, not_rewritten = rewrite.rewrite_graph(out, candidates(out, frozen, ()), types, default_opset(out), fresh, fixed)
    rewritten = {**folded, **rewritten}
    not_rewritten = {**not_folded, **not_rewritten}
    if rewritten:
        types = value_types(out)
    consumed = {n for node in graph.node for n in node_reads(node)}
    running: list[str] = []
    nodes: list[onnx.NodeProto] = []
    true_name: str | None = None
    counts = {"dropout": 0, "bn_fixed": 0, "bn_computed": 0, "rnn": 0, "gelu": 0}
    decomposed: dict[str, int] = {}
    for node in graph.node:
        label = node.name or node.output[0]
        if is_op(node, "Dropout"):
            if true_name is None:
                true_name = fresh("onnxsurgeon.training_mode")
                nodes.append(helper.make_node("Constant", [], [true_name], name=true_name, value=numpy_helper.from_array(np.array(True))))
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = true_name
            counts["dropout"] += 1
        elif is_op(node, "BatchNormalization"):
            stats = list(node.input[3:5])
            if all(s in frozen for s in stats):
                nodes.extend(_fixed_batchnorm(node, types, fresh, label))
                counts["bn_fixed"] += 1
                continue
            not_stored = [s for s in stats if s not in inits]
            training = any(a.name == "training_mode" and a.i for a in node.attribute)
            if not_stored and not training:
                # Statistics the model computes while it runs from its input (tf2onnx writes
                # layer normalization so): in inference mode the node is a formula of its
                # inputs, gradients flow through the computed statistics too.
                nodes.extend(_fixed_batchnorm(node, types, fresh, label))
                counts["bn_computed"] += 1
                continue
            if not_stored:
                raise InputError(
                    f"BatchNormalization {label!r} (training mode): its running statistics {', '.join(not_stored)} "
                    "are computed while the model runs, so there is nothing to update",
                    "freeze them (--freeze), or cut the piece so that they are parameters",
                )
            running.extend(s for s in stats if s not in running)
            # Exporters in training mode declare the updated statistics as outputs; the eval
            # model (inference mode) may not have them, and onnxruntime keeps them itself.
            while len(node.output) > 1 and node.output[-1] not in consumed:
                node.output.pop()
            if len(node.output) == 1:  # onnxruntime switches it to training mode itself
                kept = [a for a in node.attribute if a.name != "training_mode"]
                del node.attribute[:]
                node.attribute.extend(kept)
        elif (is_op(node, "LSTM") and len(node.input) < 8) or (is_op(node, "GRU") and len(node.input) < 6):
            node.input.extend([""] * ((8 if node.op_type == "LSTM" else 6) - len(node.input)))
            counts["rnn"] += 1
        elif is_op(node, "Gelu") and any(a.name == "approximate" and a.s == b"tanh" for a in node.attribute):
            nodes.extend(_tanh_gelu(node, types, fresh))
            counts["gelu"] += 1
            continue
        elif node.domain in ("", "ai.onnx") and node.op_type in DECOMPOSED:
            nodes.extend(_decompose(node, types, fresh))
            decomposed[node.op_type] = decomposed.get(node.op_type, 0) + 1
            continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    if counts["dropout"]:
        changes.append(f"{counts['dropout']} Dropout set to drop while training")
    if counts["bn_fixed"]:
        changes.append(f"{counts['bn_fixed']} BatchNormalization with frozen statistics written as the fixed inference formula")
    if counts["bn_computed"]:
        changes.append(
            f"{counts['bn_computed']} BatchNormalization whose statistics the model computes from its input "
            "written as their inference formula"
        )
    if running:
        changes.append(f"{len(running) // 2} BatchNormalization train on batch statistics and update their running statistics")
    if counts["rnn"]:
        changes.append(f"{counts['rnn']} LSTM/GRU given their full input list")
    if counts["gelu"]:
        changes.append(f"{counts['gelu']} tanh-approximated Gelu written in elementary ops")
    if decomposed:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(decomposed.items()))
        changes.append(f"written in elementary ops, which have gradients: {listed}")
    if rewritten:
        listed = ", ".join(f"{n} {op}" for op, n in sorted(rewritten.items()))
        changes.append(f"rewritten in ops with gradients and CPU kernels: {listed}")
    out = prepare_for_gradients(out)
    return out, Prepared(tuple(changes), tuple(running), tuple(sorted(frozen)), tuple(sorted(not_rewritten.items())), tuple(lifted))


# Ops whose gradient kernel crashes onnxruntime-training 1.19 when the sizes of their input
# are not known when the session is built (measured: MaxPool over an input of symbolic height
# and width ends the process with a segmentation fault at the first step).
_NEEDS_SIZES = frozenset({"MaxPool"})


def pin_shapes(model: onnx.ModelProto, /, arrays: Mapping[str, Any], axes: Mapping[str, int | None] | None = None) -> bool:
    """Give the graph inputs the sizes of the data beyond the example axis (0, or the one
    `axes` gives; None: an input fed whole, every size), in place, where
    an op in `_NEEDS_SIZES` would otherwise see symbolic sizes. Every example of a data set
    has the same shape, so this loses nothing; it is done only where needed, so that the
    training graph of every other model stays as it was. Returns whether it pinned."""
    pools = [n for n in model.graph.node if n.op_type in _NEEDS_SIZES and n.domain in ("", "ai.onnx")]
    if not pools:
        return False
    types = value_types(model)

    def known(name: str) -> bool:
        t = types.get(name)
        return t is not None and t.shape is not None and all(isinstance(d, int) for d in t.shape[1:])

    if all(known(n.input[0]) for n in pools):
        return False
    pinned = False
    for v in model.graph.input:
        if v.name not in arrays or not v.type.HasField("tensor_type"):
            continue
        shape = np.shape(arrays[v.name])
        dims = v.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            continue
        example = (axes or {}).get(v.name, 0)
        for k in range(len(dims)):
            if k != example and not (dims[k].HasField("dim_value") and dims[k].dim_value > 0):
                dims[k].dim_value = int(shape[k])
                pinned = True
    return pinned


def _fixed_batchnorm(node: onnx.NodeProto, types, fresh, label: str) -> list[onnx.NodeProto]:
    x, scale, bias, mean, var = node.input[:5]
    t = types.get(x)
    if t is None or t.rank is None:
        raise InputError(
            f"BatchNormalization {label!r}: the rank of its input {x!r} is unknown, so it cannot be fixed in inference form",
            "cut the piece with extract --params constant, which folds it",
        )
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    elem = t.elem
    n = lambda base: fresh(f"{label}/{base}")  # noqa: E731
    eps_c, shape_c = n("eps"), n("shape")
    std, inv, a, am, shift, a_r, shift_r, scaled = (n(s) for s in ("std", "inv_std", "a", "mean_a", "shift", "a_r", "shift_r", "scaled"))
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    nodes = [
        helper.make_node("Constant", [], [eps_c], name=eps_c, value=numpy_helper.from_array(np.array(eps, dtype))),
        helper.make_node("Constant", [], [shape_c], name=shape_c, value=numpy_helper.from_array(np.array([-1] + [1] * max(t.rank - 2, 0), np.int64))),
        helper.make_node("Add", [var, eps_c], [n("var_eps")], name=n("add_eps")),
    ]
    var_eps = nodes[-1].output[0]
    nodes += [
        helper.make_node("Sqrt", [var_eps], [std], name=std),
        helper.make_node("Reciprocal", [std], [inv], name=inv),
        helper.make_node("Mul", [scale, inv], [a], name=a),
        helper.make_node("Mul", [mean, a], [am], name=am),
        helper.make_node("Sub", [bias, am], [shift], name=shift),
        helper.make_node("Reshape", [a, shape_c], [a_r], name=a_r),
        helper.make_node("Reshape", [shift, shape_c], [shift_r], name=shift_r),
        helper.make_node("Mul", [x, a_r], [scaled], name=scaled),
        helper.make_node("Add", [scaled, shift_r], [node.output[0]], name=n("y")),
    ]
    for k, stat in ((1, mean), (2, var)):  # the statistics do not move
        if len(node.output) > k and node.output[k]:
            nodes.append(helper.make_node("Identity", [stat], [node.output[k]], name=n(f"stat{k}")))
    return nodes


def _tanh_gelu(node: onnx.NodeProto, types, fresh) -> list[onnx.NodeProto]:
    x, y = node.input[0], node.output[0]
    t = types.get(x)
    dtype = helper.tensor_dtype_to_np_dtype(t.elem if t is not None else onnx.TensorProto.FLOAT)
    label = node.name or y
    n = lambda base: fresh(f"{label}/{base}")  # noqa: E731
    consts = {"c": 0.044715, "k": math.sqrt(2 / math.pi), "one": 1.0, "half": 0.5}
    names = {k: n(k) for k in consts}
    nodes = [helper.make_node("Constant", [], [names[k]], name=names[k], value=numpy_helper.from_array(np.array(v, dtype))) for k, v in consts.items()]
    x3, cx3, inner, scaled, th, one_th, hx = (n(s) for s in ("x3", "cx3", "inner", "scaled", "tanh", "one_tanh", "half_x"))
    x2 = n("x2")
    nodes += [
        helper.make_node("Mul", [x, x], [x2], name=x2),
        helper.make_node("Mul", [x2, x], [x3], name=x3),
        helper.make_node("Mul", [x3, names["c"]], [cx3], name=cx3),
        helper.make_node("Add", [x, cx3], [inner], name=inner),
        helper.make_node("Mul", [inner, names["k"]], [scaled], name=scaled),
        helper.make_node("Tanh", [scaled], [th], name=th),
        helper.make_node("Add", [th, names["one"]], [one_th], name=one_th),
        helper.make_node("Mul", [x, names["half"]], [hx], name=hx),
        helper.make_node("Mul", [hx, one_th], [y], name=n("y")),
    ]
    return nodes


# Ops without a gradient in onnxruntime-training that are written out in ops that have one.
DECOMPOSED = frozenset("Softplus Softsign Elu Selu Celu HardSigmoid PRelu Sum Mean".split())


def _decompose(node: onnx.NodeProto, types, fresh) -> list[onnx.NodeProto]:
    """`node` as elementary ops with the same values (up to rounding) and gradients."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    label = node.name or node.output[0]
    t = types.get(node.input[0])
    dtype = helper.tensor_dtype_to_np_dtype(t.elem if t is not None else onnx.TensorProto.FLOAT)
    out: list[onnx.NodeProto] = []

    def op(kind: str, *inputs: str, name: str | None = None, **kw) -> str:
        result = name or fresh(f"{label}/{kind.lower()}")
        out.append(helper.make_node(kind, list(inputs), [result], name=fresh(f"{label}/{kind}"), **kw))
        return result

    def const(value: float) -> str:
        name = fresh(f"{label}/c")
        out.append(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(np.array(value, dtype))))
        return name

    y = node.output[0]
    kind = node.op_type
    if kind in ("Sum", "Mean"):
        inputs = [i for i in node.input if i]
        acc = inputs[0]
        for k, x in enumerate(inputs[1:], 1):
            last = k == len(inputs) - 1 and kind == "Sum"
            acc = op("Add", acc, x, name=y if last else None)
        if kind == "Mean":
            op("Div", acc, const(float(len(inputs))), name=y)
        elif len(inputs) == 1:
            op("Identity", acc, name=y)
        return out
    x = node.input[0]
    if kind == "Softplus":  # relu(x) + log(1 + exp(-|x|)): no overflow
        op("Add", op("Relu", x), op("Log", op("Add", op("Exp", op("Neg", op("Abs", x))), const(1.0))), name=y)
    elif kind == "Softsign":
        op("Div", x, op("Add", op("Abs", x), const(1.0)), name=y)
    elif kind == "HardSigmoid":
        affine = op("Add", op("Mul", x, const(attrs.get("alpha", 0.2))), const(attrs.get("beta", 0.5)))
        op("Clip", affine, const(0.0), const(1.0), name=y)
    elif kind == "PRelu":  # relu(x) - slope * relu(-x)
        op("Sub", op("Relu", x), op("Mul", node.input[1], op("Relu", op("Neg", x))), name=y)
    else:  # Elu, Selu, Celu: relu(x) + alpha * (exp(min(x, 0) / k) - 1), times gamma for Selu
        alpha = attrs.get("alpha", 1.67326319217681884765625 if kind == "Selu" else 1.0)
        negative = op("Neg", op("Relu", op("Neg", x)))
        if kind == "Celu":
            negative = op("Div", negative, const(alpha))
        tail = op("Mul", op("Sub", op("Exp", negative), const(1.0)), const(alpha))
        if kind == "Selu":
            op("Mul", op("Add", op("Relu", x), tail), const(attrs.get("gamma", 1.05070102214813232421875)), name=y)
        else:
            op("Add", op("Relu", x), tail, name=y)
    return out


def candidates(model: onnx.ModelProto, frozen: set[str], running: Iterable[str]) -> set[str]:
    """Parameters that may be trained: float32 initializers of rank >= 1, not frozen or running statistics."""
    skip = set(frozen) | set(running)
    return {
        t.name for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 1 and t.name not in skip
    }


def _differentiable_inputs(node: onnx.NodeProto) -> list[str]:
    if node.domain not in ("", "ai.onnx"):
        return [n for n in node_reads(node)]
    if node.op_type in NO_OUTPUT_GRADIENT:
        return []
    skip = NOT_DIFFERENTIABLE.get(node.op_type, set())
    reads = [n for i, n in enumerate(node.input) if n and i not in skip]
    return reads + [n for n in node_reads(node)[len([i for i in node.input if i]):]]


def plan(model: onnx.ModelProto, /, loss: str, params: set[str], prepared: Prepared) -> TrainPlan:
    """Which of `params` the `loss` output reaches, and a check that every op on the way has
    a gradient. `model` is the prepared model with the loss compiled in."""
    types = value_types(model)

    def floating(name: str) -> bool:
        t = types.get(name)
        return t is None or t.elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)

    graph = model.graph
    needs = {loss}
    for node in reversed(graph.node):
        if any(o in needs for o in node.output if o):
            needs.update(n for n in _differentiable_inputs(node) if floating(n))
    trainable = sorted(p for p in params if p in needs)
    if not trainable:
        if params:
            why = f"the loss depends on none of the {len(params)} parameters that may train"
        elif prepared.frozen:
            why = "every parameter is frozen"
        else:
            why = "the model has no float32 parameter of rank >= 1 (no initializer or constant weight that could train)"
        raise InputError(
            f"nothing to train: no float parameter reaches the loss ({why})",
            "check the loss (it must read an output computed from parameters), --freeze and the metadata's frozen list",
        )
    reached = set(trainable)
    blocked: list[tuple[onnx.NodeProto, list[str]]] = []
    upstream: dict[str, set[str]] = {p: {p} for p in trainable}
    for node in graph.node:
        ins = [n for n in _differentiable_inputs(node) if n in reached]
        if not ins:
            continue
        outs = [o for o in node.output if o and floating(o)]
        before = set().union(*(upstream[n] for n in ins))
        for o in outs:
            reached.add(o)
            upstream[o] = before
        if any(o in needs for o in outs) and _no_gradient(node):
            blocked.append((node, sorted(before)))
    if blocked:
        why = dict(prepared.not_rewritten)
        lines = [
            f"  - node {(n.name or n.output[0])!r} ({n.op_type}{_how(n)}), after {_few(before)}"
            + (f"; not rewritten: {why[n.name or n.output[0]]}" if (n.name or n.output[0]) in why else "")
            for n, before in blocked
        ]
        params_before = sorted(set().union(*(set(b) for _, b in blocked)))
        raise InputError(
            f"onnxruntime-training has no gradient for {len(blocked)} node{'s' if len(blocked) > 1 else ''} "
            "between trained parameters and the loss:\n" + "\n".join(lines),
            "freeze the part in front of it: --freeze with patterns matching " + _few(params_before, 8)
            + ", or cut that part out with extract --params constant",
        )
    names = [t.name for t in graph.initializer]
    # Statistics of a BatchNormalization the loss does not need left the graph with it.
    running = tuple(s for s in prepared.running_stats if s in set(names))
    constants = tuple(n for n in names if n not in set(trainable) | set(running) | set(prepared.frozen))
    return TrainPlan(tuple(trainable), running, prepared.frozen, constants, prepared.changes, prepared.lifted)


def _no_gradient(node: onnx.NodeProto) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    return node.op_type in NO_GRADIENT or _direction(node) not in (None, "forward")


def _direction(node: onnx.NodeProto) -> str | None:
    """The direction of an LSTM or GRU: onnxruntime's gradient kernels run forward ones only."""
    if node.op_type not in ("LSTM", "GRU"):
        return None
    return next((a.s.decode() for a in node.attribute if a.name == "direction"), "forward")


def _how(node: onnx.NodeProto) -> str:
    direction = _direction(node)
    return f", direction {direction}" if direction not in (None, "forward") else ""


def _few(names: Iterable[str], n: int = 3) -> str:
    names = list(names)
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")
