"""How much does `onnxsurgeon train` cost over a plain onnxruntime-training loop?

The model is a 784-512-512-10 MLP (ReLU, Glorot weights), the loss ``ce(z, labels)``,
the optimizer AdamW (onnxruntime's fused op in both), batch 128, one thread, synthetic data.
Each measurement runs in a fresh subprocess (its peak RSS is the peak memory), and the
variants are interleaved, ``--repeat`` times each:

  tool   onnxsurgeon.train.loop.train, as `onnxsurgeon train` calls it, with the command's
         JSON-lines log writer attached (shuffling, batching, per-step seeding, metrics,
         log lines included). Timed: the steps (first step event to last), not the setup.
  plain  the same artifacts (built by onnxsurgeon for the same graph) driven by a bare
         loop: module(x, labels); optimizer.step(); module.lazy_reset_grad() over batches
         sliced beforehand, in order.
  ckpt   the tool again, checkpointing at every epoch end: the cost is the time of the
         checkpoint writes (fsync included) against the time of the epochs.
  sgd    the tool with SGD + momentum 0.9 (computed in numpy on onnxruntime's buffers), for
         reference: onnxruntime has no SGD with momentum to compare against.

Targets (issue 4): tool overhead <= 10 %, checkpointing every epoch <= 5 % of the epoch.

Usage:
    python bench/train_speed.py [--epochs 3] [--steps-per-epoch 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {root!r})
from bench.train_speed import mlp, data
variant, epochs, spe, batch = {variant!r}, {epochs}, {spe}, {batch}
model = mlp()
arrays = data(spe * batch)
result = {{"variant": variant, "base_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}
if variant == "plain":
    from onnxsurgeon.train import artifacts, ort
    from onnxsurgeon.train.loop import compile_training
    compiled = compile_training(model, arrays, "ce(z, labels)")
    work = tempfile.mkdtemp()
    paths = artifacts.build(compiled.model, list(compiled.plan.trainable), [], work,
                            {{"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}})
    api = ort.api()
    state = api.CheckpointState.load_checkpoint(paths.checkpoint)
    module = api.Module(str(paths.training_model), state, str(paths.eval_model), session_options=ort.session_options())
    opt = api.Optimizer(str(paths.optimizer_model), module)
    opt.set_learning_rate(1e-3)
    names = module.input_names()
    batches = [[np.ascontiguousarray(arrays[n][i * batch:(i + 1) * batch]) for n in names] for i in range(spe)]
    module.train()
    steps = 0
    t0 = None
    for e in range(epochs):
        for feeds in batches:
            module(*feeds)
            opt.step()
            module.lazy_reset_grad()
            steps += 1
            if t0 is None:
                t0, c0 = time.perf_counter(), time.process_time()
    result["steps_per_s"] = (steps - 1) / (time.perf_counter() - t0)
    result["cpu_steps_per_s"] = (steps - 1) / (time.process_time() - c0)
else:
    from onnxsurgeon.cli.train_cmds import _Log
    from onnxsurgeon.train.loop import TrainSettings, train
    from onnxsurgeon.train.optim import OptimizerSettings
    opt = OptimizerSettings("sgd", lr=0.01, momentum=0.9) if variant == "sgd" else OptimizerSettings("adamw", lr=1e-3)
    folder = tempfile.mkdtemp()
    log = _Log(Path(folder) / "metrics.jsonl")
    times = []
    def progress(event):
        log(event)
        times.append((event["event"], time.perf_counter(), time.process_time()))
    settings = TrainSettings(loss="ce(z, labels)", optimizer=opt, epochs=epochs, batch_size=batch,
                             checkpoint_dir=folder if variant == "ckpt" else None, keep=1)
    train(model, arrays, settings, progress=progress)
    log.close()
    steps = [t for kind, t, _ in times if kind == "step"]
    cpu = [c for kind, _, c in times if kind == "step"]
    result["steps_per_s"] = (len(steps) - 1) / (steps[-1] - steps[0])
    result["cpu_steps_per_s"] = (len(cpu) - 1) / (cpu[-1] - cpu[0])
    if variant == "ckpt":
        # each epoch end: the epoch event, then the checkpoint event once it is written
        cost = 0.0
        for (kind, t, _), (kind2, t2, _) in zip(times, times[1:]):
            if kind == "epoch" and kind2 == "checkpoint":
                cost += t2 - t
        epoch_time = steps[-1] - steps[0]
        result["checkpoint_fraction"] = cost / epoch_time
        result["checkpoint_seconds"] = cost / epochs
        result["checkpoint_bytes"] = max(p.stat().st_size for p in Path(folder).glob("*.ckpt"))
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(result))
"""


def mlp(sizes=(784, 512, 512, 10)):
    """An MLP (784-512-512-10 unless ``sizes`` says otherwise), Glorot-uniform weights
    (seeded), zero biases, ReLU between the layers."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        limit = np.sqrt(6 / (a + b))
        inits.append(numpy_helper.from_array(rng.uniform(-limit, limit, (a, b)).astype(np.float32), f"fc{i}.W"))
        inits.append(numpy_helper.from_array(np.zeros(b, np.float32), f"fc{i}.b"))
        nodes += [helper.make_node("MatMul", [x, f"fc{i}.W"], [f"fc{i}.m"]), helper.make_node("Add", [f"fc{i}.m", f"fc{i}.b"], [f"fc{i}.y"])]
        x = f"fc{i}.y"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"fc{i}.r"]))
            x = f"fc{i}.r"
    nodes.append(helper.make_node("Identity", [x], ["z"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", sizes[-1]])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def data(n: int):
    import numpy as np

    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((n, 784), dtype=np.float32), "labels": rng.integers(0, 10, n)}


def run_child(variant: str, code: str) -> dict:
    """Run ``code`` in a fresh 1-thread interpreter; its last stdout line is the JSON result."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(variant: str, epochs: int, spe: int, batch: int) -> dict:
    return run_child(variant, CHILD.format(root=str(ROOT), variant=variant, epochs=epochs, spe=spe, batch=batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=469, help="469 x 128 = an MNIST-sized epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    variants = ("plain", "tool", "ckpt", "sgd")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for r in range(args.repeat):
        for v in variants:
            result = measure(v, args.epochs, args.steps_per_epoch, args.batch_size)
            runs[v].append(result)
            print(f"run {r + 1} {v:5s} {result['steps_per_s']:7.1f} steps/s (CPU time: {result['cpu_steps_per_s']:7.1f})"
                  f"  peak {result['peak_rss_mb']:.0f} MB", file=sys.stderr)
    # The machine may be shared: the best run is the least disturbed one, and CPU time is
    # what the process itself spent.
    best = {v: max(x["steps_per_s"] for x in runs[v]) for v in variants}
    med = {v: statistics.median(x["steps_per_s"] for x in runs[v]) for v in variants}
    cpu = {v: statistics.median(x["cpu_steps_per_s"] for x in runs[v]) for v in variants}
    peak = {v: max(x["peak_rss_mb"] for x in runs[v]) for v in variants}
    extra = {v: max(x["peak_rss_mb"] - x["base_rss_mb"] for x in runs[v]) for v in variants}
    ckpt = statistics.median(x["checkpoint_fraction"] for x in runs["ckpt"])
    print(f"784-512-512-10 MLP, batch {args.batch_size}, 1 thread; {args.epochs} epochs x {args.steps_per_epoch} steps; "
          f"{args.repeat} runs each")
    print(f"steps/s: best, median (median in CPU time); peak RSS, and above the {runs['plain'][0]['base_rss_mb']:.0f} MB "
          "the process holds once the model and data are made")
    for v in variants:
        print(f"  {v:5s} {best[v]:6.1f} {med[v]:6.1f} ({cpu[v]:6.1f})   {peak[v]:5.0f} MB  (+{extra[v]:.0f} MB)")
    for label, table in (("best", best), ("median", med), ("CPU time", cpu)):
        print(f"tool overhead vs plain onnxruntime-training loop ({label}): {(table['plain'] / table['tool'] - 1) * 100:+.1f} % (target <= 10 %)")
    print(f"checkpoint every epoch: {ckpt * 100:.2f} % of the epoch time, "
          f"{statistics.median(x['checkpoint_seconds'] for x in runs['ckpt']) * 1000:.0f} ms and "
          f"{runs['ckpt'][0]['checkpoint_bytes'] / 1e6:.1f} MB each (target <= 5 %)")


if __name__ == "__main__":
    main()
