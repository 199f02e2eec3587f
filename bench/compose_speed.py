"""How fast is composing many uses of a shared piece, compared with saving the result?

A synthetic transformer of about 1,000 nodes (bench/synth.py) is cut whole as a ``shared``
piece, then a network applying it N times in a chain is composed (``Network`` + ``build``)
for each N in ``--uses``; the result is then written with ``onnx.save`` in the same process.
Printed: the median compose time, the median ``onnx.save`` time of that result, their
ratio (target: at most 2), the compose time per use relative to the smallest N (1.0 =
linear; below 1 where a fixed cost is spread over more uses) and the marginal time per use
between consecutive N (constant if linear). Each result is checked: one copy of every parameter, and for the smallest N
it runs in onnxruntime and equals the piece applied N times.

Usage:
    python bench/compose_speed.py [--nodes 1000] [--uses 25,50,100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import synth

from onnxsurgeon import runtime
from onnxsurgeon.composition import Network, load_piece


def compose_chain(piece, uses: int) -> tuple[onnx.ModelProto, float]:
    """The network x -> piece -> piece -> ... (``uses`` times) and the time it took."""
    t0 = time.perf_counter()
    net = Network("chain")
    x = net.input("hidden_states", "float32[batch,seq,16]")
    for _ in range(uses):
        x = net.apply(piece, x).only()
    net.output("y", x)
    model, _ = net.build()
    return model, time.perf_counter() - t0


def time_save(model: onnx.ModelProto, folder: str) -> float:
    path = os.path.join(folder, "net.onnx")
    t0 = time.perf_counter()
    onnx.save(model, path)
    return time.perf_counter() - t0


def check(model: onnx.ModelProto, piece, uses: int, run: bool) -> None:
    params = [t.name for t in model.graph.initializer]
    assert len(params) == len(set(params)) == len(piece.parameters), "a shared parameter is held more than once"
    if not run:
        return
    x = np.random.default_rng(0).standard_normal((2, 3, 16)).astype(np.float32)
    (got,) = runtime.session(model).run(None, {"hidden_states": x})
    one = runtime.session(piece.model)
    want = x
    for _ in range(uses):
        (want,) = one.run(None, {"hidden_states": want})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--uses", default="25,50,100")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.uses.split(",")]

    source = synth.make_transformer(args.nodes)
    piece = load_piece(source, inputs=[synth.GRAPH_INPUT], outputs=[synth.GRAPH_OUTPUT], params="shared", name="tower")
    print(f"piece: {len(piece.model.graph.node)} nodes, {len(piece.parameters)} parameters, shared")
    print(f"{'uses':>5} {'nodes':>8} {'compose s':>10} {'save s':>8} {'ratio':>6} {'per use vs first':>17} {'marginal ms/use':>16}")
    first = None
    last: tuple[int, float] | None = None
    with tempfile.TemporaryDirectory() as folder:
        for k, uses in enumerate(sizes):
            compose_times, save_times = [], []
            for _ in range(args.repeat):
                model, t = compose_chain(piece, uses)
                compose_times.append(t)
                save_times.append(time_save(model, folder))
            check(model, piece, uses, run=k == 0)
            c, s = statistics.median(compose_times), statistics.median(save_times)
            per_use = c / uses
            first = first or per_use
            marginal = f"{1000 * (c - last[1]) / (uses - last[0]):.2f}" if last else "-"
            last = (uses, c)
            print(f"{uses:>5} {len(model.graph.node):>8} {c:>10.3f} {s:>8.3f} {c / s:>6.2f} {per_use / first:>17.2f} {marginal:>16}")


if __name__ == "__main__":
    main()
