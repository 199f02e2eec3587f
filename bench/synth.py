"""Synthetic transformer-like ONNX models for benchmarks.

The graph looks like what torch.onnx.export makes of a BERT-style encoder:
node names such as ``/encoder/layer.3/attention/self/query/MatMul``, values
such as ``/encoder/layer.3/attention/self/query/MatMul_output_0``, and
initializers such as ``encoder.layer.3.attention.self.query.weight`` or
``onnx::MatMul_1234``.  Weights are tiny by default (hidden=16), so the file
size is dominated by the graph structure; ``--hidden`` and ``--layers`` make
one where weights dominate (bench/bigmodel.py writes such big ones by
streaming, without holding their weights in memory).  Opset 17, IR version 8: it passes
onnx.checker and runs in onnxruntime 1.19.

By default no intermediate value has a recorded type (graph.value_info is
empty), as with the TorchScript exporter (torch.onnx.export, dynamo=False).
``value_info=True`` (``--value-info``) records the type and shape of every
intermediate value, as the dynamo exporter (torch.onnx.export(dynamo=True))
does.

Usage:
    python bench/synth.py --nodes 200000 -o /tmp/synth200k.onnx [--value-info]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
HEADS = 2
GRAPH_INPUT = "hidden_states"
GRAPH_OUTPUT = "last_hidden_state"


def layer_boundary(i: int, layernorm: str = "primitive") -> str:
    """Name of the value at the output of layer ``i`` (0-based).

    ``i == -1`` is the graph input.  The output of the last layer is named
    ``last_hidden_state`` instead (it is the graph output).
    """
    if i < 0:
        return GRAPH_INPUT
    last = "LayerNormalization" if layernorm == "fused" else "Add_1"
    return f"/encoder/layer.{i}/output/LayerNorm/{last}_output_0"


def middle_slice(model: onnx.ModelProto) -> tuple[str, str]:
    """(input, output) of the middle third: outputs of layers L/3 and 2L/3."""
    meta = {p.key: p.value for p in model.metadata_props}
    layers = int(meta["synth.num_layers"])
    layernorm = meta["synth.layernorm"]
    a, b = layers // 3, 2 * layers // 3
    if not 0 <= a < b < layers - 1:
        raise ValueError(f"model has only {layers} layers, too few for a middle slice")
    return layer_boundary(a, layernorm), layer_boundary(b, layernorm)


class _Builder:
    """Accumulates nodes and initializers with exporter-style names."""

    def __init__(self, hidden: int, ffn: int, seed: int):
        self.hidden = hidden
        self.ffn = ffn
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.anon = 0  # counter for onnx::MatMul_<n> names
        self.used: dict[str, int] = {}  # "/scope/Op" -> times used

    def op(self, scope: str, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        """Add a node named /scope/Op (Op_1, Op_2, ... on reuse), return its output."""
        base = f"{scope}/{op_type}"
        n = self.used.get(base, 0)
        self.used[base] = n + 1
        name = base if n == 0 else f"{base}_{n}"
        out = out or f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def const(self, scope: str, value) -> str:
        """A Constant node, as the exporter emits for scalars and shapes."""
        arr = np.asarray(value)
        return self.op(scope, "Constant", [], value=numpy_helper.from_array(arr))

    def name_param(self, name: str | None) -> str:
        """The initializer's name: the torch parameter's, or onnx::MatMul_<n> if None."""
        if name is None:
            self.anon += 1
            name = f"onnx::MatMul_{self.anon}"
        return name

    def param(self, name: str | None, shape: tuple[int, ...], std: float | None = None, value: float = 0.0) -> str:
        """A float32 initializer: normal values of standard deviation ``std``, or all
        ``value`` if ``std`` is None.  Subclasses may record it instead of making it
        (bench/bigmodel.py writes big weights by streaming)."""
        arr = np.full(shape, value) if std is None else self.rng.standard_normal(shape) * std
        return self.init(name, arr)

    def init(self, name: str | None, arr: np.ndarray) -> str:
        name = self.name_param(name)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def linear(self, scope: str, x: str, n_in: int, n_out: int, named_weight: bool) -> str:
        """MatMul + Add. Weight named like the torch parameter, or onnx::MatMul_N."""
        param = scope.strip("/").replace("/", ".")
        w_name = self.param(f"{param}.weight" if named_weight else None, (n_in, n_out), std=1 / math.sqrt(n_in))
        b_name = self.param(f"{param}.bias", (n_out,), std=0.02)
        y = self.op(scope, "MatMul", [x, w_name])
        return self.op(scope, "Add", [b_name, y])

    def layernorm(self, scope: str, x: str, fused: bool, out: str | None = None) -> str:
        param = scope.strip("/").replace("/", ".")
        gamma = self.param(f"{param}.weight", (self.hidden,), value=1.0)
        beta = self.param(f"{param}.bias", (self.hidden,), value=0.0)
        if fused:
            return self.op(scope, "LayerNormalization", [x, gamma, beta], out, axis=-1, epsilon=1e-12)
        mean = self.op(scope, "ReduceMean", [x], axes=[-1])
        d = self.op(scope, "Sub", [x, mean])
        sq = self.op(scope, "Pow", [d, self.const(scope, np.float32(2.0))])
        var = self.op(scope, "ReduceMean", [sq], axes=[-1])
        var = self.op(scope, "Add", [var, self.const(scope, np.float32(1e-12))])
        std = self.op(scope, "Sqrt", [var])
        y = self.op(scope, "Div", [d, std])
        y = self.op(scope, "Mul", [y, gamma])
        return self.op(scope, "Add", [y, beta], out)  # named Add_1 in the scope

    def layer(self, i: int, x: str, fused_ln: bool, out: str | None = None) -> str:
        h, hd = self.hidden, self.hidden // HEADS
        s = f"/encoder/layer.{i}/attention/self"
        # Q, K, V projections, split into heads: [B, S, H] -> [B, heads, S, hd]
        heads = {}
        for which in ("query", "key", "value"):
            y = self.linear(f"{s}/{which}", x, h, h, named_weight=True)
            y = self.op(s, "Reshape", [y, self.const(s, np.array([0, 0, HEADS, hd], np.int64))])
            perm = [0, 2, 3, 1] if which == "key" else [0, 2, 1, 3]
            heads[which] = self.op(s, "Transpose", [y], perm=perm)
        scores = self.op(s, "MatMul", [heads["query"], heads["key"]])
        scores = self.op(s, "Div", [scores, self.const(s, np.float32(math.sqrt(hd)))])
        probs = self.op(s, "Softmax", [scores], axis=-1)
        ctx = self.op(s, "MatMul", [probs, heads["value"]])
        ctx = self.op(s, "Transpose", [ctx], perm=[0, 2, 1, 3])
        ctx = self.op(s, "Reshape", [ctx, self.const(s, np.array([0, 0, h], np.int64))])
        # attention output: dense, residual, LayerNorm
        o = f"/encoder/layer.{i}/attention/output"
        y = self.linear(f"{o}/dense", ctx, h, h, named_weight=False)
        y = self.op(o, "Add", [y, x])
        attn = self.layernorm(f"{o}/LayerNorm", y, fused_ln)
        # FFN with erf-Gelu as primitive ops
        it = f"/encoder/layer.{i}/intermediate"
        y = self.linear(f"{it}/dense", attn, h, self.ffn, named_weight=False)
        g = f"{it}/intermediate_act_fn"
        e = self.op(g, "Div", [y, self.const(g, np.float32(math.sqrt(2.0)))])
        e = self.op(g, "Erf", [e])
        e = self.op(g, "Add", [e, self.const(g, np.float32(1.0))])
        y = self.op(g, "Mul", [y, e])
        y = self.op(g, "Mul", [y, self.const(g, np.float32(0.5))])
        ot = f"/encoder/layer.{i}/output"
        y = self.linear(f"{ot}/dense", y, self.ffn, h, named_weight=False)
        y = self.op(ot, "Add", [y, attn])
        return self.layernorm(f"{ot}/LayerNorm", y, fused_ln, out)


def record_types(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose graph.value_info holds the type and shape of every
    intermediate value (every node output that is not a graph output), as the dynamo
    exporter records them.  Shapes come from onnx shape inference (strict, so a
    model it cannot type is refused); symbolic dims stay symbolic (batch, seq)."""
    typed = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    outputs = {v.name for v in typed.graph.output}
    known = {v.name for v in typed.graph.value_info if v.type.tensor_type.HasField("shape")}
    missing = [o for n in typed.graph.node for o in n.output if o and o not in outputs and o not in known]
    if missing:
        raise RuntimeError(f"shape inference left {len(missing)} values untyped, e.g. {missing[:3]}")
    return typed


def make_transformer(num_nodes: int, hidden: int = 16, seed: int = 0,
                     layernorm: str = "primitive", ffn_mult: int = 2,
                     value_info: bool = False, layers: int | None = None) -> onnx.ModelProto:
    """Stack encoder layers until the graph has about ``num_nodes`` nodes.

    ``layernorm`` is "primitive" (ReduceMean/Sub/Pow/... as exported by older
    torch) or "fused" (the LayerNormalization op).  The number of layers and the
    layernorm style are stored in metadata_props (see ``middle_slice``).
    The FFN is ``ffn_mult * hidden`` wide (BERT uses 4; 2 keeps weights small).
    ``layers``, if given, is the exact number of layers (``num_nodes`` is then
    ignored); with a large ``hidden`` the weights dominate the file (each layer
    holds (4 + 2 * ffn_mult) * hidden**2 floats).
    ``value_info=False`` records no intermediate types (TorchScript exporter);
    ``True`` records all of them in graph.value_info (dynamo exporter), see
    ``record_types``.
    """
    if hidden % HEADS:
        raise ValueError(f"hidden must be a multiple of {HEADS}")
    model = build_transformer(_Builder(hidden, ffn_mult * hidden, seed), num_nodes, layernorm, layers)
    return record_types(model) if value_info else model


def build_transformer(b: _Builder, num_nodes: int, layernorm: str = "primitive",
                      layers: int | None = None) -> onnx.ModelProto:
    """The model of ``make_transformer``, made with builder ``b``.  Afterwards
    ``b.bounds[i]`` is (number of nodes, number of initializers) once layer ``i``
    is built, so layer ``i``'s nodes are ``b.nodes[b.bounds[i - 1][0]:b.bounds[i][0]]``."""
    if layernorm not in ("primitive", "fused"):
        raise ValueError("layernorm must be 'primitive' or 'fused'")
    hidden = b.hidden
    fused = layernorm == "fused"

    # Build one layer to learn its size, then the rest (the last one is
    # renamed so that its output is the graph output).
    x = b.layer(0, GRAPH_INPUT, fused)
    b.bounds = [(len(b.nodes), len(b.inits))]
    per_layer = len(b.nodes)
    if layers is None:
        layers = max(2, round(num_nodes / per_layer))
    if layers < 2:
        raise ValueError("a model needs at least 2 layers")
    for i in range(1, layers):
        x = b.layer(i, x, fused, out=GRAPH_OUTPUT if i == layers - 1 else None)
        b.bounds.append((len(b.nodes), len(b.inits)))

    graph = helper.make_graph(
        b.nodes,
        "main_graph",
        [helper.make_tensor_value_info(GRAPH_INPUT, TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info(GRAPH_OUTPUT, TensorProto.FLOAT, ["batch", "seq", hidden])],
        initializer=b.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="pytorch",  # mimicry only; see bench/synth.py
        producer_version="2.1.0",
    )
    helper.set_model_props(model, {"synth.num_layers": str(layers), "synth.layernorm": layernorm})
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10000, help="approximate node count")
    ap.add_argument("--hidden", type=int, default=16, help="width; weights grow with its square")
    ap.add_argument("--layers", type=int, help="exact number of layers (overrides --nodes)")
    ap.add_argument("--ffn-mult", type=int, default=2, help="FFN width / hidden (BERT: 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layernorm", choices=["primitive", "fused"], default="primitive")
    ap.add_argument("--value-info", action="store_true",
                    help="record the type and shape of every intermediate value (dynamo-exporter style)")
    ap.add_argument("--check", action="store_true", help="run onnx.checker on the result")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()

    t0 = time.perf_counter()
    model = make_transformer(args.nodes, args.hidden, args.seed, args.layernorm, args.ffn_mult,
                             value_info=args.value_info, layers=args.layers)
    t1 = time.perf_counter()
    onnx.save(model, args.output)
    t2 = time.perf_counter()
    if args.check:
        onnx.checker.check_model(args.output)
    a, b = middle_slice(model)
    print(f"{len(model.graph.node)} nodes, {len(model.graph.initializer)} initializers, "
          f"{len(model.graph.value_info)} value_info, "
          f"{model.ByteSize() / 1e6:.1f} MB; built in {t1 - t0:.1f} s, saved in {t2 - t1:.1f} s")
    print(f"middle slice: {a} -> {b}")


if __name__ == "__main__":
    main()
