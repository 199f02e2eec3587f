"""How does `onnxsurgeon train` scale over MPI ranks, and how fast is it against PyTorch?

scale (default)
    A compute-bound MLP 784-1024-1024-10 (ReLU), loss ``ce(z, labels)``, SGD with momentum,
    global batch 256, synthetic data: 1 rank of 1 thread against ``mpiexec -n 2`` ranks of
    1 thread each (each rank computes the gradients of 128 examples; gradients summed with
    MPI Allreduce). Each run is a fresh process (or job); the variants are interleaved,
    ``--repeat`` times each, and the best is kept (the machine may be shared: check the
    load printed with the figures). The ceiling is measured in the same run: two
    processes of 1 thread train at the same time, each alone on half the global batch
    (forward, backward and optimizer step, no communication): what 2 ranks would reach
    if the allreduce cost nothing, on cores that share caches and memory. Timed: rank 0's steps, from the first step event to the
    last. Also printed: the time rank 0 waits in the gradient allreduce per step and the
    bytes each rank contributes, and what a ring allreduce moves (2(N-1)/N of them).

phases
    Where the time of a step goes (onnxruntime's forward and backward pass, the SGD step,
    scaling each rank's share, waiting for the other rank, the gradient sum, the rest), each
    timed inside the training loop: 1 rank on the global batch, 1 rank on half of it, and
    rank 0 of 2 ranks.

torch
    Steps/s of `onnxsurgeon train` (the library call the command makes, log attached)
    against a PyTorch eager loop (same model, same batches, SGD with momentum) on the same
    MLP at batch 256 and on a small transformer encoder (2 layers, d_model 128, 4 heads,
    feed-forward 512, sequences of 32 tokens, mean-pooled into 10 classes, batch 32,
    exported from the same torch module to ONNX), at 1 and 2 threads. Needs torch in the
    benchmark's environment (never a dependency of onnxsurgeon).

Usage:
    python bench/train_scale.py [scale] [--steps 40] [--repeat 3]
    python bench/train_scale.py phases [--steps 300] [--repeat 3]
    python bench/train_scale.py torch [--steps 40] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIZES = (784, 1024, 1024, 10)

CHILD = r"""
import json, sys, time, tempfile
from pathlib import Path
import numpy as np
sys.path.insert(0, {root!r})
from bench.train_scale import mlp_model, mlp_data
from onnxsurgeon.train import distributed
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings
world = distributed.from_environment()
steps, batch = {steps}, {batch}
model = mlp_model()
arrays = mlp_data(steps * batch)
PHASES = {{}}
{instrument}
times = []
def progress(event):
    if event["event"] == "step":
        times.append(time.perf_counter())
settings = TrainSettings(loss="ce(z, labels)", optimizer=OptimizerSettings("sgd", lr=0.01, momentum=0.9),
                         batch_size=batch, shuffle=False, threads=1)
_, report = train(model, arrays, settings, progress=progress, world=world)
if world.root:
    w = report.world
    timed = len(times) - 1
    step_ms = 1000 * (times[-1] - times[0]) / timed
    phases = {{k: 1000 * v / steps for k, v in PHASES.items()}}
    print(json.dumps({{"ranks": world.size, "steps_per_s": timed / (times[-1] - times[0]),
                       "examples_per_s": timed * batch / (times[-1] - times[0]),
                       "allreduce_ms": 1000 * w.get("allreduce_seconds", 0) / steps,
                       "allreduce_bytes": w.get("allreduce_bytes", 0) / steps,
                       "step": step_ms, **phases, "rest": step_ms - sum(phases.values())}}))
"""

# For `phases`: timers around onnxruntime's step, the SGD step and the parts of the gradient sum
INSTRUMENT = r"""
from onnxsurgeon.train import optim, ort
PHASES.update(dict.fromkeys(("onnxruntime", "sgd", "scaling", "waiting", "sum"), 0.0))
def timed(key, fn):
    def wrapper(*a, **k):
        t = time.perf_counter(); r = fn(*a, **k); PHASES[key] += time.perf_counter() - t; return r
    return wrapper
api = ort.api()
api.Module.__call__ = timed("onnxruntime", api.Module.__call__)
optim.SGD.step = timed("sgd", optim.SGD.step)
if world.size > 1:  # the same steps as MPIWorld.reduce_step, with a barrier to tell waiting from summing
    MPI = world.MPI
    def reduce_step(grads, stats, scalars, mine, total):
        t0 = time.perf_counter()
        for a in (*grads, *stats):
            a *= np.float32(mine / total)
        t1 = time.perf_counter(); world.comm.Barrier(); t2 = time.perf_counter()
        sums = np.array([v * mine for v in scalars])
        MPI.Request.Waitall([world.comm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM) for a in (*grads, *stats, sums)])
        PHASES["scaling"] += t1 - t0; PHASES["waiting"] += t2 - t1; PHASES["sum"] += time.perf_counter() - t2
        return [float(v) / total for v in sums]
    world.reduce_step = reduce_step
"""


def mlp_model(sizes=SIZES):
    """The MLP of bench/train_speed.py at these sizes."""
    from bench.train_speed import mlp

    return mlp(sizes)


def mlp_data(n: int):
    import numpy as np

    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, SIZES[0]), dtype=np.float32), "labels": rng.integers(0, SIZES[-1], n)}


def _env(threads: int = 1) -> dict[str, str]:
    t = str(threads)
    return {**os.environ, "OMP_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "MKL_NUM_THREADS": t}


def _load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def _mpiexec() -> str:
    """The mpiexec beside this python (the [mpi] extra's), else the one on the PATH."""
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found is None:
        raise SystemExit("no mpiexec: pip install -e '.[mpi]'")
    return found


def scale(args) -> None:
    mpiexec = _mpiexec()
    code = CHILD.format(root=str(ROOT), steps=args.steps, batch=args.batch_size, instrument="")
    half = CHILD.format(root=str(ROOT), steps=args.steps, batch=args.batch_size // 2, instrument="")
    runs: dict[str, list[dict]] = {"1": [], "2": [], "alone": []}
    print(f"before: {_load()}", file=sys.stderr)
    for r in range(args.repeat):
        for variant in runs:
            if variant == "alone":  # the ceiling: 2 processes, half the batch each, no communication
                commands = [[sys.executable, "-c", half]] * 2
            elif variant == "1":
                commands = [[sys.executable, "-c", code]]
            else:
                commands = [[mpiexec, "-n", variant, sys.executable, "-c", code]]
            procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                                      cwd=tempfile.gettempdir()) for c in commands]
            results = []
            for proc in procs:
                out, err = proc.communicate(timeout=1800)
                if proc.returncode != 0:
                    raise SystemExit(f"{variant} failed:\n{err}")
                results.append(json.loads(out.strip().splitlines()[-1]))
            result = {**results[0], "examples_per_s": sum(x["examples_per_s"] for x in results)}
            runs[variant].append(result)
            label = {"1": "1 rank", "2": "2 ranks", "alone": "2 alone"}[variant]
            print(f"run {r + 1}: {label:8s} {result['examples_per_s']:8.0f} examples/s  "
                  f"allreduce {result['allreduce_ms']:.2f} ms/step  ({_load()})", file=sys.stderr)
    best = {k: max(v, key=lambda x: x["examples_per_s"]) for k, v in runs.items()}
    one, two, alone = (best[k]["examples_per_s"] for k in ("1", "2", "alone"))
    grad_bytes = best["2"]["allreduce_bytes"]
    n = 2
    print(f"MLP {'-'.join(map(str, SIZES))}, SGD momentum, global batch {args.batch_size}, 1 thread per rank, "
          f"{args.steps} steps, best of {args.repeat}; {_load()}")
    print(f"  1 rank:  {one:8.0f} examples/s ({best['1']['steps_per_s']:.2f} steps/s)")
    print(f"  2 ranks: {two:8.0f} examples/s ({best['2']['steps_per_s']:.2f} steps/s)")
    print(f"  2 processes alone, batch {args.batch_size // 2} each, no communication: {alone:8.0f} examples/s "
          f"(2 ranks if the allreduce cost nothing)")
    print(f"  speed-up 2 ranks / 1 rank: {two / one:.2f}x (target >= 1.7x); ceiling {alone / one:.2f}x; "
          f"2 ranks reach {two / alone:.0%} of the ceiling")
    print(f"  allreduce: {best['2']['allreduce_ms']:.2f} ms per step on rank 0 (of {1000 / best['2']['steps_per_s']:.1f} ms), "
          f"{grad_bytes / 1e6:.2f} MB summed per rank per step; a ring moves 2(N-1)/N of it: "
          f"{2 * (n - 1) / n * grad_bytes / 1e6:.2f} MB sent per rank per step")


def phases(args) -> None:
    """Where the time of a step goes: 1 rank on the global batch, 1 rank on half of it,
    and rank 0 of 2 ranks, each phase timed inside the training loop."""
    mpiexec = _mpiexec()
    print(f"ms per step, {args.steps} steps, 1 thread per rank, fastest of {args.repeat}; {_load()}")
    print("  " + "".join(f"{h:>13s}" for h in ("", "step", "onnxruntime", "sgd", "scaling", "waiting", "sum", "rest")))
    rows = (("1 rank", 1, args.batch_size), ("1 rank, half", 1, args.batch_size // 2), ("2 ranks", 2, args.batch_size))
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for label, ranks, batch in rows:
            code = CHILD.format(root=str(ROOT), steps=args.steps, batch=batch, instrument=INSTRUMENT)
            command = [sys.executable, "-c", code] if ranks == 1 else [mpiexec, "-n", "2", sys.executable, "-c", code]
            proc = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=tempfile.gettempdir(), timeout=1800)
            if proc.returncode != 0:
                raise SystemExit(f"{label} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            if label not in best or r["step"] < best[label]["step"]:
                best[label] = r
    for label, _, _ in rows:
        r = best[label]
        print(f"  {label:>13s}" + "".join(f"{r[k]:13.2f}" for k in ("step", "onnxruntime", "sgd", "scaling", "waiting", "sum", "rest")))
    print(f"after: {_load()}")


# ---------------------------------------------------------------- onnxsurgeon against PyTorch

TORCH_CHILD = r"""
import json, sys, time, tempfile
import numpy as np
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads({threads})
torch.set_num_interop_threads(1)
from bench.train_scale import torch_models
name, steps, threads, which = {name!r}, {steps}, {threads}, {which!r}
module, feeds, batch, onnx_path = torch_models(name, {folder!r})
if which == "torch":
    opt = torch.optim.SGD(module.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    xs = torch.from_numpy(feeds["x"]) ; ys = torch.from_numpy(feeds["labels"])
    module.train()
    t = []
    for s in range(steps):
        x, y = xs[s * batch:(s + 1) * batch], ys[s * batch:(s + 1) * batch]
        opt.zero_grad(set_to_none=True)
        loss = lossf(module(x), y)
        loss.backward()
        opt.step()
        t.append(time.perf_counter())
else:
    import onnx
    from onnxsurgeon.cli.train_cmds import _Log
    from onnxsurgeon.train.loop import TrainSettings, train
    from onnxsurgeon.train.optim import OptimizerSettings
    from pathlib import Path
    model = onnx.load(onnx_path)
    folder = tempfile.mkdtemp()
    log = _Log(Path(folder) / "metrics.jsonl")
    t = []
    def progress(e):
        log(e)
        if e["event"] == "step":
            t.append(time.perf_counter())
    settings = TrainSettings(loss="ce(z, labels)", optimizer=OptimizerSettings("sgd", lr=0.01, momentum=0.9),
                             batch_size=batch, shuffle=False, threads=threads)
    train(model, feeds, settings, progress=progress)
print(json.dumps({{"steps_per_s": (len(t) - 1) / (t[-1] - t[0])}}))
"""


def torch_models(name: str, folder: str):
    """(torch module, data, batch, ONNX file of the same module) for `name`: mlp or transformer."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    steps = 64
    path = Path(folder) / f"{name}.onnx"
    if name == "mlp":
        layers = []
        for i, (a, b) in enumerate(zip(SIZES, SIZES[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(SIZES) - 2:
                layers.append(torch.nn.ReLU())
        module, batch = torch.nn.Sequential(*layers), 256
        rng = np.random.default_rng(1)
        feeds = {"x": rng.standard_normal((steps * batch, SIZES[0]), dtype=np.float32), "labels": rng.integers(0, 10, steps * batch)}
        example = torch.from_numpy(feeds["x"][:2])
    else:
        class Encoder(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                layer = torch.nn.TransformerEncoderLayer(128, 4, 512, dropout=0.0, batch_first=True)
                self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
                self.head = torch.nn.Linear(128, 10)

            def forward(self, x):
                return self.head(self.encoder(x).mean(1))

        module, batch = Encoder(), 32
        rng = np.random.default_rng(1)
        feeds = {"x": rng.standard_normal((steps * batch, 32, 128), dtype=np.float32), "labels": rng.integers(0, 10, steps * batch)}
        example = torch.from_numpy(feeds["x"][:2])
    if not path.exists():
        module.eval()
        torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["z"],
                          dynamic_axes={"x": {0: "N"}, "z": {0: "N"}}, opset_version=17, dynamo=False)
    return module, feeds, batch, str(path)


def against_torch(args) -> None:
    folder = tempfile.mkdtemp(prefix="onnxsurgeon-bench-")
    print(f"before: {_load()}", file=sys.stderr)
    rows = []
    for name in ("mlp", "transformer"):
        for threads in (1, 2):
            best = {}
            for r in range(args.repeat):
                for which in ("torch", "onnxsurgeon"):
                    code = TORCH_CHILD.format(root=str(ROOT), name=name, steps=args.steps, threads=threads, which=which, folder=folder)
                    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(threads),
                                          cwd=tempfile.gettempdir(), timeout=1800)
                    if proc.returncode != 0:
                        raise SystemExit(f"{name} {which} failed:\n{proc.stderr}")
                    v = json.loads(proc.stdout.strip().splitlines()[-1])["steps_per_s"]
                    best[which] = max(best.get(which, 0), v)
                    print(f"run {r + 1}: {name} {threads} thread(s) {which:11s} {v:7.2f} steps/s ({_load()})", file=sys.stderr)
            rows.append((name, threads, best["onnxsurgeon"], best["torch"]))
    print(f"steps/s, best of {args.repeat}, SGD momentum; {_load()}")
    print("  model        threads  onnxsurgeon   torch eager   ratio")
    for name, threads, ours, theirs in rows:
        print(f"  {name:12s} {threads:7d} {ours:12.2f} {theirs:13.2f}   {ours / theirs:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="scale", choices=("scale", "phases", "torch"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    {"scale": scale, "phases": phases, "torch": against_torch}[args.what](args)


if __name__ == "__main__":
    main()
