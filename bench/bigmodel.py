"""Big synthetic transformer models whose weights dominate, written by streaming.

The graph is bench/synth.py's BERT-like encoder (PyTorch-exporter names), made
wide (``hidden`` 1024, FFN 4x: ~50 MB of float32 weights per layer) so that the
file is almost all weights.  The weights are never all in memory: each
initializer is a stub (name, type, dims) while the graph is built, and its
values are made when the file is written, one tensor at a time, from a seed of
its own (``np.random.default_rng([seed, index])``).  So a piece of the model can
be rebuilt later, weights included, without reading the big file:
:func:`reference_piece` is what an exact cut must compute.

Two layouts:

- inline: one .onnx file, written field by field in protobuf's order (the
  graph's nodes, then each initializer with its raw_data, then inputs and
  outputs), as onnx.save would write it; it must stay under protobuf's 2 GiB.
- external: the .onnx file holds the graph, and every tensor of 1024 bytes or
  more is in one data file beside it (``<name>.data``, tensors one after the
  other, no padding), as ``onnx.save_model(..., save_as_external_data=True,
  all_tensors_to_one_file=True)`` writes it.

Beside the model, ``<name>.json`` (the manifest) records how it was made and,
for every initializer, its layer and where its bytes lie (file, offset,
length); the benchmark uses it to time copying a piece's bytes.

Usage:
    python bench/bigmodel.py -o /tmp/osg-bench/big-inline.onnx --hidden 1024 --layers 30
    python bench/bigmodel.py -o /tmp/osg-bench/big-ext.onnx --hidden 1024 --layers 48 --external
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import synth

EXTERNAL_THRESHOLD = 1024  # as onnx.save's size_threshold
_LEN = 2  # protobuf wire type of length-delimited fields


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """Key and length prefix of a length-delimited field."""
    return _varint((number << 3) | _LEN) + _varint(payload_len)


class StubBuilder(synth._Builder):
    """synth's builder, recording each initializer's recipe instead of making its values."""

    def __init__(self, hidden: int, ffn: int, seed: int):
        super().__init__(hidden, ffn, seed)
        self.seed = seed
        self.fills: list[tuple[float | None, float]] = []  # per initializer: (std, value)

    def param(self, name, shape, std=None, value=0.0):
        name = self.name_param(name)
        self.inits.append(TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape)))
        self.fills.append((std, value))
        return name

    def data(self, index: int) -> bytes:
        """The raw bytes (float32, little-endian) of initializer ``index``."""
        std, value = self.fills[index]
        shape = tuple(self.inits[index].dims)
        if std is None:
            return np.full(shape, value, np.float32).tobytes()
        rng = np.random.default_rng([self.seed, index])
        arr = rng.standard_normal(shape, dtype=np.float32)
        arr *= np.float32(std)
        return arr.tobytes()


def build(hidden: int, layers: int, ffn_mult: int = 4, seed: int = 0) -> tuple[onnx.ModelProto, StubBuilder]:
    """The model with stub initializers (no values), and the builder that knows them."""
    b = StubBuilder(hidden, ffn_mult * hidden, seed)
    model = synth.build_transformer(b, 0, "primitive", layers)
    return model, b


def _nbytes(t: TensorProto) -> int:
    return 4 * int(np.prod(t.dims, dtype=np.int64))


def write(path: str | os.PathLike, hidden: int, layers: int, ffn_mult: int = 4, seed: int = 0,
          external: bool = False) -> dict:
    """Write the model (and its data file if ``external``) and its manifest; return the manifest."""
    path = Path(path)
    model, b = build(hidden, layers, ffn_mult, seed)
    layer_of = []
    for i, (_, n_inits) in enumerate(b.bounds):
        layer_of += [i] * (n_inits - len(layer_of))
    tensors = []
    if external:
        data_path = path.with_name(path.name + ".data")
        offset = 0
        with open(data_path, "wb") as f:
            for i, t in enumerate(model.graph.initializer):
                if _nbytes(t) < EXTERNAL_THRESHOLD:
                    t.raw_data = b.data(i)
                    continue
                data = b.data(i)
                f.write(data)
                for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(len(data)))):
                    e = t.external_data.add()
                    e.key, e.value = key, value
                t.data_location = TensorProto.EXTERNAL
                tensors.append([t.name, layer_of[i], data_path.name, offset, len(data)])
                offset += len(data)
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        total = os.path.getsize(path) + os.path.getsize(data_path)
    else:
        total = _write_inline(path, model, b, layer_of, tensors)
    manifest = {
        "hidden": hidden, "layers": layers, "ffn_mult": ffn_mult, "seed": seed, "external": external,
        "model": path.name, "bytes": total, "tensors": tensors,
    }
    path.with_name(path.name + ".json").write_text(json.dumps(manifest))
    return manifest


def _write_inline(path: Path, model: onnx.ModelProto, b: StubBuilder, layer_of: list[int], tensors: list) -> int:
    """Write the model with every initializer's raw_data streamed into place, fields in the
    order protobuf serialises them (so the file is what onnx.save would write)."""
    g = model.graph
    # ModelProto: fields before graph (7), graph, fields after it.
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    tail = onnx.ModelProto()
    tail.opset_import.extend(head.opset_import)
    tail.metadata_props.extend(head.metadata_props)
    head.ClearField("opset_import")
    head.ClearField("metadata_props")
    # GraphProto: node (1), name (2), initializer (5), input (11), output (12), ...
    g_head = onnx.GraphProto(name=g.name)
    g_head.node.extend(g.node)
    g_tail = onnx.GraphProto()
    g_tail.input.extend(g.input)
    g_tail.output.extend(g.output)
    g_tail.value_info.extend(g.value_info)
    stubs = [t.SerializeToString() for t in g.initializer]
    lens = [_nbytes(t) for t in g.initializer]
    inits = [len(s) + len(_field(9, n)) + n for s, n in zip(stubs, lens)]
    g_head_b, g_tail_b = g_head.SerializeToString(), g_tail.SerializeToString()
    graph_len = len(g_head_b) + sum(len(_field(5, n)) + n for n in inits) + len(g_tail_b)
    if graph_len >= 2**31:
        raise ValueError(f"an inline model must stay under 2 GiB (protobuf's limit): {graph_len} bytes")
    with open(path, "wb") as f:
        f.write(head.SerializeToString())
        f.write(_field(7, graph_len))
        f.write(g_head_b)
        for i, (t, stub, n, size) in enumerate(zip(g.initializer, stubs, lens, inits)):
            f.write(_field(5, size) + stub + _field(9, n))
            data = b.data(i)
            assert len(data) == n
            tensors.append([t.name, layer_of[i], path.name, f.tell(), n])
            f.write(data)
        f.write(g_tail_b)
        f.write(tail.SerializeToString())
        return f.tell()


def boundary(layer: int, layers: int) -> str:
    """The value at the output of ``layer`` (-1: the graph input; the last: the graph output)."""
    if layer == layers - 1:
        return synth.GRAPH_OUTPUT
    return synth.layer_boundary(layer)


def piece_tensors(manifest: dict, first: int, last: int) -> list[list]:
    """Manifest entries [name, layer, file, offset, length] of layers first..last."""
    return [t for t in manifest["tensors"] if first <= t[1] <= last]


def reference_piece(manifest: dict, first: int, last: int) -> onnx.ModelProto:
    """Layers ``first``..``last`` of the model, weights included, rebuilt from the recipe:
    input = output of layer first-1, output = output of layer last."""
    hidden, layers = manifest["hidden"], manifest["layers"]
    model, b = build(hidden, layers, manifest["ffn_mult"], manifest["seed"])
    lo = b.bounds[first - 1] if first > 0 else (0, 0)
    hi = b.bounds[last]
    inits = []
    for i in range(lo[1], hi[1]):
        t = TensorProto()
        t.CopyFrom(b.inits[i])
        t.raw_data = b.data(i)
        inits.append(t)
    a, z = boundary(first - 1, layers), boundary(last, layers)
    dims = ["batch", "seq", hidden]
    graph = helper.make_graph(
        b.nodes[lo[0]:hi[0]], "reference",
        [helper.make_tensor_value_info(a, TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(z, TensorProto.FLOAT, dims)],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--ffn-mult", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--external", action="store_true", help="weights in one data file beside the model")
    ap.add_argument("--check", action="store_true",
                    help="load the written model with onnx and compare every weight with its recipe (small models)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    m = write(args.output, args.hidden, args.layers, args.ffn_mult, args.seed, args.external)
    print(f"{args.output}: {m['layers']} layers, hidden {m['hidden']}, {m['bytes'] / 1e6:.1f} MB "
          f"({'external data' if m['external'] else 'inline'}), written in {time.perf_counter() - t0:.1f} s")
    if args.check:
        model = onnx.load(args.output)
        onnx.checker.check_model(model)
        _, b = build(args.hidden, args.layers, args.ffn_mult, args.seed)
        for i, t in enumerate(model.graph.initializer):
            assert t.name == b.inits[i].name and t.raw_data == b.data(i), t.name
        print(f"check: onnx.checker passes, all {len(model.graph.initializer)} weights match their recipe")


if __name__ == "__main__":
    main()
