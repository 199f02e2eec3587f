"""Corpus of real exporter-written ONNX models for exactness tests of cuts.

Not a test file. ``corpus_models()`` lists the models that are available here:

* ``torch/*``  files in tests/corpus/torch/ (scripts/make_torch_models.py, committed);
* ``pypi/*``   models fetched from PyPI wheels by scripts/fetch_corpus.py into
               ``.corpus/`` at the repo root (or $ONNXSURGEON_CORPUS), if present;
* ``onnx/*``   a curated list of onnx's own backend-test models from the installed
               onnx package.

Every listed model loads in the installed onnxruntime (IR <= 10, opset <= 21).

``cut_points(model, rng, k)`` picks cut specifications ``(inputs, outputs)``,
``example_inputs(id, path)`` gives feeds that run, ``features(path)`` says what
a model contains (If/Loop/Scan, functions, IR-3 inputs, external data, ...).

Exactness notes, checked on this corpus with a naive extractor: every cut from
cut_points reproduces the original bit for bit when both sides run with
GraphOptimizationLevel.ORT_DISABLE_ALL; with ORT's default optimizations some
(rapidocr, light_resnet50, ...) differ in the last bits, because fusions differ
between the whole model and the piece. torch/cnn_ts_train has a training-mode
Dropout, random in ORT: cuts through it cannot match.
"""

from __future__ import annotations

import functools
import os
import random
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
TORCH_DIR = Path(__file__).resolve().parent / "corpus" / "torch"
FETCH_DIR = Path(os.environ.get("ONNXSURGEON_CORPUS", ROOT / ".corpus"))
MAX_IR, MAX_OPSET = 10, 21  # what onnxruntime 1.19 loads

# Paths under onnx/backend/test/data of the installed onnx package.
ONNX_BACKEND = [
    # If / Loop / Scan, nested subgraphs, outer-scope references
    "node/test_if", "node/test_if_opt", "node/test_if_seq",
    "node/test_loop11", "node/test_loop13_seq", "node/test_loop16_seq_none",
    "node/test_scan_sum", "node/test_scan9_sum",
    "node/test_range_float_type_positive_delta_expanded",
    "node/test_range_int32_type_negative_delta_expanded",
    "node/test_affine_grid_2d_expanded", "node/test_affine_grid_2d_align_corners_expanded",
    "node/test_affine_grid_3d_expanded", "node/test_affine_grid_3d_align_corners_expanded",
    "node/test_sequence_map_add_2_sequences_expanded",
    "node/test_sequence_map_identity_1_sequence_1_tensor_expanded",
    # multi-node function expansions
    "node/test_layer_normalization_2d_axis0_expanded",
    "node/test_group_normalization_example_expanded",
    "node/test_gelu_tanh_1_expanded",
    # IR 3, initializers listed as graph inputs (old PyTorch / Caffe2 exporters)
    "pytorch-converted/test_Conv2d", "pytorch-converted/test_Linear_no_bias",
    # (weights made at load time by ConstantOfShape; alexnet, zfnet512, vgg19
    # are left out: their big dense layers make each session take seconds)
    "light/light_squeezenet.onnx", "light/light_resnet50.onnx",
    "light/light_inception_v1.onnx", "light/light_inception_v2.onnx",
    "light/light_shufflenet.onnx", "light/light_densenet121.onnx",
]

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
               onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


@functools.lru_cache(maxsize=None)
def _loads_in_ort(path: str) -> bool:
    m = onnx.load(path, load_external_data=False)
    if m.ir_version > MAX_IR:
        return False
    if any(o.domain in ("", "ai.onnx") and o.version > MAX_OPSET for o in m.opset_import):
        return False
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def _onnx_backend_dir() -> Path:
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"


def corpus_models() -> list[tuple[str, Path]]:
    """``(id, path)`` for every corpus model available on this machine."""
    found: list[tuple[str, Path]] = []
    for p in sorted(TORCH_DIR.glob("*.onnx")):
        found.append((f"torch/{p.stem}", p))
    if FETCH_DIR.is_dir():
        for p in sorted(FETCH_DIR.glob("*/*.onnx")):
            found.append((f"pypi/{p.parent.name}/{p.stem}", p))
    base = _onnx_backend_dir()
    for rel in ONNX_BACKEND:
        p = base / rel if rel.endswith(".onnx") else base / rel / "model.onnx"
        if p.is_file():
            found.append((f"onnx/{Path(rel).name.removesuffix('.onnx')}", p))
    return [(i, p) for i, p in found if _loads_in_ort(str(p))]


def _walk(graph: onnx.GraphProto, depth: int = 0):
    for n in graph.node:
        yield n, depth
        for sub in _subgraphs(n):
            yield from _walk(sub, depth + 1)


def features(path: Path) -> dict:
    """What a corpus model contains, to pick models for a test or to report."""
    m = onnx.load(str(path), load_external_data=False)
    g = m.graph
    nodes = list(_walk(g))
    fnodes = [n for f in m.functions for n in f.node]
    ops = [n.op_type for n, _ in nodes] + [n.op_type for n in fnodes]
    inits = {i.name for i in g.initializer}
    names = inits | {i.name for i in g.input} | {o.name for o in g.output}
    for n, _ in nodes:
        names.update(n.input, n.output)
    read = {i for n in g.node for i in _deps(n)}
    return {
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "ir": m.ir_version,
        "opsets": {o.domain or "ai.onnx": o.version for o in m.opset_import},
        **{op: ops.count(op) for op in ("If", "Loop", "Scan", "Constant")},
        "subgraph_depth": max((d for _, d in nodes), default=0),
        "functions": len(m.functions),
        "init_as_inputs": sum(i.name in inits for i in g.input),
        "external_data": any(t.data_location == onnx.TensorProto.EXTERNAL for t in g.initializer),
        "output_read_inside": [o.name for o in g.output if o.name in read],
        "name_chars": "".join(c for c in "./:@" if any(c in s for s in names)),
        "random_ops": sorted({o for o in ops if o.startswith(("Random", "Dropout", "Bernoulli", "Multinomial"))}),
    }


# ------------------------------------------------------------- example inputs

# Inputs that random data with symbolic dims = 2 would not run (or run badly):
# shapes for tensors, a value for scalars. First matching id pattern wins.
INPUT_HINTS = [
    ("pypi/silero-vad-*/silero_vad_16k_sequence", {"input": (1, 576), "h": (1, 1, 128), "c": (1, 1, 128)}),
    ("pypi/silero-vad-*/silero_vad_openvino_16k", {"input": (1, 576), "state": (2, 1, 128)}),
    ("pypi/silero-vad-*", {"input": (1, 512), "state": (2, 1, 128), "sr": 16000}),
    ("pypi/rapidocr-*/*det*", {"x": (1, 3, 64, 64)}),
    ("pypi/rapidocr-*/*rec*", {"x": (1, 3, 48, 64)}),
    ("pypi/rapidocr-*/*cls*", {"x": (1, 3, 48, 192)}),
    ("torch/control_flow_ts", {"n": 3}),
    ("torch/lstm_ts", {"seq": (2, 7, 6)}),
]

_NP = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
       onnx.TensorProto.DOUBLE: "float64", onnx.TensorProto.INT64: "int64",
       onnx.TensorProto.INT32: "int32", onnx.TensorProto.BOOL: "bool"}


def example_inputs(model_id: str, path: Path, seed: int = 0) -> dict | None:
    """Feeds for the model's graph inputs (initializers listed as inputs excluded).

    onnx backend tests: their own test_data_set_0/input_*.pb (a sequence input
    becomes a list of arrays, an optional one its content). Otherwise random data, shapes from the model with
    symbolic dims = 2, overridden by INPUT_HINTS. None if an input's type is not
    handled.
    """
    import fnmatch

    import numpy as np
    from onnx import numpy_helper

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    data_dir = Path(path).parent / "test_data_set_0"
    if model_id.startswith("onnx/") and data_dir.is_dir():
        feeds = {}
        for k, vi in enumerate(inputs):
            raw = (data_dir / f"input_{k}.pb").read_bytes()
            if vi.type.HasField("tensor_type"):
                feeds[vi.name] = numpy_helper.to_array(onnx.TensorProto.FromString(raw))
            elif vi.type.HasField("sequence_type"):
                feeds[vi.name] = numpy_helper.to_list(onnx.SequenceProto.FromString(raw))
            elif vi.type.HasField("optional_type"):
                feeds[vi.name] = numpy_helper.to_optional(onnx.OptionalProto.FromString(raw))
            else:
                return None
        return feeds
    hints = next((h for pat, h in INPUT_HINTS if fnmatch.fnmatchcase(model_id, pat)), {})
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in inputs:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or t.elem_type not in _NP:
            return None
        dtype = np.dtype(_NP[t.elem_type])
        hint = hints.get(vi.name)
        if hint is not None and not isinstance(hint, tuple):
            feeds[vi.name] = np.array(hint, dtype=dtype)
            continue
        shape = hint or tuple(d.dim_value if d.dim_value > 0 else 2 for d in t.shape.dim)
        if dtype.kind == "f":
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[vi.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


# ---------------------------------------------------------------- cut points

def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    defined |= {i.values.name for i in graph.sparse_initializer}
    used: set[str] = {o.name for o in graph.output}
    for n in graph.node:
        defined.update(n.output)
        used.update(n.input)
        for sub in _subgraphs(n):
            used |= _free_names(sub)
    used.discard("")
    return used - defined


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _deps(node: onnx.NodeProto) -> list[str]:
    deps = [i for i in node.input if i]
    for sub in _subgraphs(node):
        deps += sorted(_free_names(sub))  # implicit inputs of If/Loop/Scan
    return deps


def _as_random(rng) -> random.Random:
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, int):
        return random.Random(rng)
    return random.Random(int(rng.integers(2**32)))  # numpy Generator


def _float_values(model: onnx.ModelProto) -> set[str]:
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:
        pass
    g = model.graph
    return {v.name for v in [*g.input, *g.value_info, *g.output]
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type in FLOAT_TYPES}


def cut_points(model: onnx.ModelProto, rng, k: int) -> list[tuple[list[str], list[str]]]:
    """Up to ``k`` deterministic cut specifications ``(inputs, outputs)``.

    ``rng`` is an int seed, a ``random.Random`` or a numpy ``Generator``.
    Kinds, all in the main graph:

    (iii) the full model: graph inputs -> graph outputs (always first);
    (i)   all graph inputs -> 1..3 intermediate float node outputs;
    (ii)  1..2 intermediate float values -> a later float value, closed: the
          inputs are exactly the listed values the output still needs (through
          any path that does not cross another listed value) plus the graph
          inputs it needs.

    Graph inputs here exclude initializers listed as inputs (IR-3 style);
    those count as parameters. Subgraph reads from outer scope count as inputs
    of their If/Loop/Scan node.
    """
    rng = _as_random(rng)
    g = model.graph
    inits = {i.name for i in g.initializer}
    real_inputs = [i.name for i in g.input if i.name not in inits]
    graph_outputs = [o.name for o in g.output]
    producer = {o: n for n in g.node for o in n.output if o}
    order = {o: i for i, n in enumerate(g.node) for o in n.output if o}

    live = set(real_inputs)  # values that depend on some graph input
    for n in g.node:
        if any(d in live for d in _deps(n)):
            live.update(o for o in n.output if o)
    floats = _float_values(model)
    cands = [o for n in g.node if n.op_type != "Constant"
             for o in n.output if o and o in live and o in floats]
    inner = [o for o in cands if o not in graph_outputs]

    def walk(start: str, stop: set[str]) -> tuple[list[str], set[str]]:
        """Values reached backwards from start (not crossing stop), and stops hit."""
        seen, hit, stack = set(), set(), [start]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in stop:
                hit.add(name)
            elif name in producer:
                stack.extend(_deps(producer[name]))
        return sorted(seen, key=lambda v: order.get(v, -1)), hit

    specs = [(list(real_inputs), list(graph_outputs))]
    for attempt in range(20 * k):
        if len(specs) >= k:
            break
        if attempt % 2 == 0 and inner:  # (i)
            outs = rng.sample(inner, rng.randint(1, min(3, len(inner))))
            spec = (list(real_inputs), sorted(outs, key=order.__getitem__))
        elif len(cands) > 1:  # (ii)
            w = rng.choice(cands[1:])
            before = [v for v in walk(w, set())[0] if v in order and v != w and v in cands]
            if not before:
                continue
            vs = set(rng.sample(before, rng.randint(1, min(2, len(before)))))
            seen, hit = walk(w, vs)
            ins = sorted(hit, key=order.__getitem__) + [i for i in real_inputs if i in seen]
            spec = (ins, [w])
        else:
            continue
        if spec not in specs:
            specs.append(spec)
    return specs[:k]
