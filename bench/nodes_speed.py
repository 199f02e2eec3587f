"""How fast is `onnxsurgeon nodes` compared with loading and saving the model?

On a synthetic transformer (bench/synth.py) without recorded types (TorchScript-style),
interleaved, each in a fresh process, `--repeat` times: the floor (onnx.load + onnx.save),
`onnxsurgeon nodes MODEL` (every node, one line each, to /dev/null) and `onnxsurgeon nodes
MODEL --grep PATTERN` (the query of one layer near the end, a few lines). Whole processes:
wall time and peak resident memory (VmHWM, read by _hwm.py), medians.

Usage:
    python bench/nodes_speed.py [--nodes 200000] [--repeat 3] [--value-info]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synth  # noqa: E402

FLOOR = "import sys, onnx; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])"


def run(args: list[str], tmp: str) -> tuple[float, float]:
    result = os.path.join(tmp, "hwm.json")
    t0 = time.perf_counter()
    with open(os.devnull, "w") as null:
        subprocess.run([sys.executable, str(HERE / "_hwm.py"), result, *args], stdout=null, check=True)
    wall = time.perf_counter() - t0
    with open(result) as f:
        return wall, json.load(f)["hwm"] / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--value-info", action="store_true", help="record every intermediate type (dynamo-style)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nodes_speed_") as tmp:
        model = synth.make_transformer(args.nodes)
        if args.value_info:
            model = synth.record_types(model)
        layers = int({p.key: p.value for p in model.metadata_props}["synth.num_layers"])
        path = os.path.join(tmp, "m.onnx")
        onnx.save(model, path)
        del model
        grep = f"layer.{layers - 70}/attention/self/query"
        cases = {
            "floor": ["-c", FLOOR, path, os.path.join(tmp, "out.onnx")],
            "nodes": ["-e", "onnxsurgeon.cli:run", "nodes", path],
            "nodes --grep": ["-e", "onnxsurgeon.cli:run", "nodes", path, "--grep", grep],
        }
        print(f"{args.nodes} nodes, {'types recorded' if args.value_info else 'no types recorded'}, "
              f"{os.path.getsize(path) / 1e6:.1f} MB; grep {grep!r}; load average {os.getloadavg()[0]:.1f}")
        got: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
        for rep in range(args.repeat):
            for case, cmd in cases.items():
                got[case].append(run(cmd, tmp))
                print(f"  run {rep + 1} {case:13s} {got[case][-1][0]:.2f} s, {got[case][-1][1]:.0f} MB", flush=True)
    floor_t = statistics.median(t for t, _ in got["floor"])
    floor_m = statistics.median(m for _, m in got["floor"])
    print(f"\nmedians of {args.repeat}, whole processes; load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'case':13s} {'s':>6} {'x floor':>7} {'MB':>6} {'x floor':>7}")
    for case in cases:
        t = statistics.median(t for t, _ in got[case])
        m = statistics.median(m for _, m in got[case])
        print(f"{case:13s} {t:>6.2f} {t / floor_t:>7.2f} {m:>6.0f} {m / floor_m:>7.2f}")


if __name__ == "__main__":
    main()
