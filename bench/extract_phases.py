"""Where the time of a big cut goes, and the least any cut built like onnxsurgeon's must take.

For one synthetic model (bench/synth.py) and one slice, interleaved `--repeat` times, each
in a fresh subprocess:

  floor    onnx.load + onnx.save of the whole model (as in extract_speed.py)
  phases   one cut, `onnxsurgeon.load` + `extract` + `save`, timed step by step:
             read       the file's bytes
             parse      protobuf's parse of them into a ModelProto
             utf8       the check that every string is UTF-8 (a second parse, as proto3)
             extract    onnxsurgeon.extract, whole (its own checker run included)
             save       onnxsurgeon.save of the piece
           and, on the same model and piece, the steps no cut can leave out while it reads
           the graph through protobuf's Python objects and keeps onnxsurgeon's guarantees:
             names      the inputs and outputs of every node from the first kept one to the
                        last (no recorded types: from the first node, as the new input is
                        typed from what computes it)
             walk       the walk back over those names, as one scan from the last node to
                        the first with a set of the values needed (plain Python on tuples
                        of strings; a dict of who writes what and a depth-first walk take
                        twice as long)
             vi names   recorded types only: the name of every value_info entry (to pick
                        the piece's)
             sigs       no recorded types only: the least a pass that types every value up
                        to the last kept node does besides inference, which runs once per
                        distinct node: each node's operator, domain and attributes read,
                        its key (those and its inputs' keys) looked up, its outputs keyed
             copies     the kept nodes copied into a graph, and their value_info entries:
                        the model's (recorded types), or from their bytes (no recorded
                        types: the least it takes to add what a pass found)
             check      onnx.checker on the piece without its value_info (as extract
                        runs it on a big piece), its serialisation included

  surgeon = read + parse + utf8 + extract + save
  bound   = read + parse + utf8 + names + walk + vi names or sigs + copies + check + save

Ratios are against the floor's median of the same run. A bound above a target says that
the target cannot be met by making onnxsurgeon's Python faster: it needs the graph read
without protobuf's Python objects (native code), or a guarantee given up.

Usage:
    python bench/extract_phases.py [--nodes 200000] [--types recorded] [--slice half] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import extract_speed  # noqa: E402
import synth  # noqa: E402

PHASES = extract_speed.PEAK + """
import sys, time, json
from pathlib import Path
import onnx
import onnxsurgeon
from onnxsurgeon import checks, serde
load, extract, save = onnxsurgeon.load, onnxsurgeon.extract, onnxsurgeon.save
path, out, a, b = sys.argv[1:5]
t = {}
def lap(name, t0):
    t[name] = time.perf_counter() - t0

t0 = time.perf_counter(); data = Path(path).read_bytes(); lap("read", t0)
t0 = time.perf_counter(); m = onnx.ModelProto(); m.ParseFromString(data); lap("parse", t0)
t0 = time.perf_counter(); assert serde._text_is_utf8(data); lap("utf8", t0)
del data
t0 = time.perf_counter(); piece, _ = extract(m, inputs=[a], outputs=[b]); lap("extract", t0)
t0 = time.perf_counter(); save(piece, out); lap("save", t0)
hwm = peak()

nodes = list(m.graph.node)
last = next(i for i in range(len(nodes) - 1, -1, -1) if b in nodes[i].output)
first = next(i for i in range(last, -1, -1) if a in nodes[i].output)
kept = list(piece.graph.node)
typed = len(m.graph.value_info) > 0
start = first if typed else 0  # without recorded types, the new input is typed from its cone
t0 = time.perf_counter()
span = nodes[start : last + 1]
outs = [tuple(n.output) for n in span]
ins = [tuple(n.input) for n in span]
lap("names", t0)
t0 = time.perf_counter()
needed, keep = {b}, []
for i in range(len(outs) - 1, first - start - 1, -1):
    o = outs[i]
    if (o[0] in needed) if len(o) == 1 else not needed.isdisjoint(o):
        if a in o:
            continue
        keep.append(i)
        needed.update(ins[i])
lap("walk", t0)
assert len(keep) == len(kept), (len(keep), len(kept))
del needed, keep
if typed:
    t0 = time.perf_counter(); vi = [v.name for v in m.graph.value_info]; lap("vi names", t0)
else:
    t0 = time.perf_counter()
    ids, memo = {}, {}
    for n, i, o in zip(span, ins, outs):
        attrs = n.attribute
        sig = (n.domain, n.op_type, len(o), b"".join([x.SerializeToString() for x in attrs])) if attrs else (n.domain, n.op_type, len(o))
        k = memo.setdefault((sig, *[ids.get(x, -1) for x in i]), len(memo))
        for name in o:
            ids[name] = k
    lap("sigs", t0)
    del ids, memo
entries = list(piece.graph.value_info) if typed else onnx.GraphProto(value_info=piece.graph.value_info).SerializeToString()
t0 = time.perf_counter()
g = onnx.GraphProto()
g.node.extend(kept)
g.value_info.extend(entries) if typed else g.MergeFromString(entries)
lap("copies", t0)
del g, entries
del piece.graph.value_info[:]
t0 = time.perf_counter(); assert checks.checker_error(piece) is None; lap("check", t0)
t["hwm"] = hwm
print(json.dumps(t))
"""

LOAD = ("read", "parse", "utf8")
MINIMUM = ("names", "walk", "vi names", "sigs", "copies", "check")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=200_000)
    ap.add_argument("--types", choices=extract_speed.VARIANTS, default="recorded")
    ap.add_argument("--slice", choices=extract_speed.SLICES, default="half")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="extract_phases_") as tmp:
        model = synth.make_transformer(args.nodes, value_info=args.types == "recorded")
        a, b = extract_speed.slices(model)[args.slice]
        path, out = os.path.join(tmp, "model.onnx"), os.path.join(tmp, "piece.onnx")
        onnx.save(model, path)
        del model
        print(f"{extract_speed.library_version()}; {args.nodes} nodes, types {args.types}, slice {args.slice}: "
              f"{a} -> {b}; load average {os.getloadavg()[0]:.1f}")
        floors, runs = [], []
        for rep in range(args.repeat):
            for code, into in ((extract_speed.FLOOR, floors), (PHASES, runs)):
                r = extract_speed.run_snippet(code, [path, out, a, b])
                if "error" in r:
                    sys.exit(f"run {rep + 1} failed: {r['error']}")
                into.append(r)
            print(f"  run {rep + 1}: floor {floors[-1]['timed']:.2f} s, cut "
                  + ", ".join(f"{k} {v:.3f}" for k, v in runs[-1].items() if k not in ("hwm", "wall")), flush=True)

    def med(key: str, rows: list[dict]) -> float:
        return statistics.median(r.get(key, 0.0) for r in rows)

    floor = med("timed", floors)
    surgeon = sum(med(k, runs) for k in (*LOAD, "extract", "save"))
    bound = sum(med(k, runs) for k in (*LOAD, *MINIMUM, "save"))
    print(f"\nmedians of {args.repeat} runs, seconds; x = / floor (onnx.load + onnx.save, {floor:.2f} s); "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    for k in (*LOAD, "extract", "save", *MINIMUM):
        if any(k in r for r in runs):
            print(f"  {k:9s} {med(k, runs):6.3f}  x{med(k, runs) / floor:.2f}")
    print(f"surgeon {surgeon:.2f} s x{surgeon / floor:.2f} (peak {med('hwm', runs) / 1e6:.0f} MB, "
          f"floor {med('hwm', floors) / 1e6:.0f} MB); bound {bound:.2f} s x{bound / floor:.2f}")


if __name__ == "__main__":
    main()
