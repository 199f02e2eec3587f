"""Peak memory of train, eval and run over a data set larger than the memory it may use.

Writes a float32 data set of ``--gib`` GiB as a folder of ``.npy`` files (``x.npy``
``[N, 1024]`` and ``labels.npy`` ``[N]``, in chunks: the generator never holds it), then
runs, each in a fresh process whose peak resident set (VmHWM, read by bench/_hwm.py at
exit) is the figure:

  train  ``onnxsurgeon train`` of a 1024-64-10 MLP, shuffled batches of 256 drawn from the
         whole set, SGD, ``--max-steps`` steps of the first epoch;
  eval   ``onnxsurgeon eval`` of ``error(z, labels)`` over every example, batches of 4096;
  run    ``onnxsurgeon run`` over every example, batches of 4096, outputs streamed to an .npz;
  small  the same ``train`` on a 1 MiB data set: the fixed cost (Python, onnxruntime).

The bar (issue 11): training one epoch (cut by --max-steps) over a 4 GB float32 data set
of .npy files keeps the peak under 1 GB. The data set is deleted at the end unless --keep.

Usage:
    python bench/data_memory.py [--gib 4] [--steps 2000] [--folder /tmp/onnxsurgeon-bench-data] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
FEATURES = 1024


def mlp(hidden: int = 64, classes: int = 10) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((FEATURES, hidden)) / 32).astype(np.float32), "W1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((hidden, classes)) / 8).astype(np.float32), "W2"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "b1"], ["b"]),
        helper.make_node("Relu", ["b"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["c"]),
        helper.make_node("Add", ["c", "b2"], ["z"]),
    ]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write_npy(path: Path, shape: tuple[int, ...], dtype, chunk_rows: int, make) -> None:
    """An .npy written a chunk of rows at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, shape[0], chunk_rows):
            f.write(np.ascontiguousarray(make(start, min(chunk_rows, shape[0] - start)), dtype=dtype).tobytes())


def make_data(folder: Path, rows: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proj = np.random.default_rng(1).standard_normal((FEATURES, 10)).astype(np.float32)

    def x(start, n):
        return np.random.default_rng([2, start]).standard_normal((n, FEATURES), dtype=np.float32)

    write_npy(folder / "x.npy", (rows, FEATURES), np.float32, 16384, x)
    write_npy(folder / "labels.npy", (rows,), np.int64, 16384, lambda s, n: (x(s, n) @ proj).argmax(1))


def measure(name: str, argv: list[str], work: Path) -> dict:
    result = work / f"{name}.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(HERE / "_hwm.py"), str(result), "-e", "onnxsurgeon.cli:run", *argv],
                          capture_output=True, text=True, cwd=work)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(result.read_text())
    return {"what": name, "peak_mib": round(got["hwm"] / 2**20, 1), "seconds": round(seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "onnxsurgeon-bench-data")
    ap.add_argument("--keep", action="store_true", help="keep the data set")
    args = ap.parse_args()
    rows = int(args.gib * 2**30 / (FEATURES * 4))
    data = args.folder / "set"
    work = args.folder / "work"
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(mlp(), work / "mlp.onnx")
    try:
        t0 = time.perf_counter()
        if not (data / "x.npy").exists():
            make_data(data, rows)
        made = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in data.iterdir())
        small = args.folder / "small"
        small.mkdir(exist_ok=True)
        np.save(small / "x.npy", np.load(data / "x.npy", mmap_mode="r")[:256])
        np.save(small / "labels.npy", np.load(data / "labels.npy", mmap_mode="r")[:256])
        common = ["--loss", "ce(z, labels)", "--optimizer", "sgd", "--lr", "0.05", "--batch-size", "256", "-q", "--force", "--log", "log.jsonl"]
        figures = [
            measure("small", ["train", "mlp.onnx", "--data", str(small), *common, "--max-steps", "1", "-o", "t0.onnx"], work),
            measure("train", ["train", "mlp.onnx", "--data", str(data), *common, "--max-steps", str(args.steps), "-o", "t.onnx"], work),
            measure("eval", ["eval", "mlp.onnx", "--data", str(data), "--metric", "error(z, labels)", "--batch-size", "4096", "-q"], work),
            measure("run", ["run", "mlp.onnx", "--data", str(data), "--batch-size", "4096", "-o", "out.npz", "-q"], work),
        ]
        with np.load(work / "out.npz") as f:
            assert f["z"].shape == (rows, 10)
        load = os.getloadavg()
        print(json.dumps({
            "data_gib": round(size / 2**30, 2), "rows": rows, "steps": args.steps, "generate_seconds": round(made, 1),
            "load_average": [round(v, 1) for v in load], "figures": figures,
        }, indent=1))
        for f in figures:
            print(f"{f['what']:6s} peak {f['peak_mib']:8.1f} MiB  {f['seconds']:7.1f} s", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(args.folder, ignore_errors=True)


if __name__ == "__main__":
    main()
