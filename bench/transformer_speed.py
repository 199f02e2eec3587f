"""Steps/s of a real transformer fine-tune: `onnxsurgeon train` against a bare onnxruntime-training loop.

The model is the PyTorch TorchScript export of a transformer encoder layer in
tests/corpus/torch/transformer_ts.onnx (d_model 16, 2 heads, feed-forward 32, LayerNorm weights
kept in Constant nodes by the exporter, which onnxsurgeon lifts to parameters), the loss
``mse(encoded, t)``, AdamW (onnxruntime's fused op in both), one thread, synthetic data.
Each measurement runs in a fresh subprocess; the two variants are interleaved ``--repeat``
times in the same run, and the ratio is taken from the same run:

  tool   onnxsurgeon.train.loop.train with the command's JSON-lines log writer attached
         (shuffling, batching, per-step seeding, log lines). Timed: first step to last.
  plain  the same artifacts (built by onnxsurgeon for the same training graph) driven by
         module(*feeds); optimizer.step(); module.lazy_reset_grad() over batches sliced
         beforehand, in order.

Usage:
    python bench/transformer_speed.py [--steps 300] [--batch-size 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from train_speed import run_child  # bench/ is on sys.path when this file runs

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {root!r})
import onnxsurgeon as osg
variant, steps, batch = {variant!r}, {steps}, {batch}
model = osg.load({model!r})
rng = np.random.default_rng(1)
arrays = {{"tokens": rng.standard_normal((steps * batch, 5, 16), dtype=np.float32),
          "t": rng.standard_normal((steps * batch, 5, 16), dtype=np.float32)}}
result = {{"variant": variant}}
if variant == "plain":
    from onnxsurgeon.train import artifacts, ort
    from onnxsurgeon.train.loop import compile_training
    compiled = compile_training(model, arrays, "mse(encoded, t)")
    result["trainable"] = len(compiled.plan.trainable)
    work = tempfile.mkdtemp()
    paths = artifacts.build(compiled.model, list(compiled.plan.trainable), list(compiled.plan.running_stats), work,
                            {{"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.01}})
    api = ort.api()
    state = api.CheckpointState.load_checkpoint(paths.checkpoint)
    module = api.Module(str(paths.training_model), state, str(paths.eval_model), session_options=ort.session_options())
    opt = api.Optimizer(str(paths.optimizer_model), module)
    opt.set_learning_rate(1e-3)
    names = module.input_names()
    batches = [[np.ascontiguousarray(arrays[n][i * batch:(i + 1) * batch]) for n in names] for i in range(steps)]
    module.train()
    t0 = None
    for feeds in batches:
        module(*feeds)
        opt.step()
        module.lazy_reset_grad()
        if t0 is None:
            t0 = time.perf_counter()
    result["steps_per_s"] = (steps - 1) / (time.perf_counter() - t0)
else:
    from onnxsurgeon.cli.train_cmds import _Log
    from onnxsurgeon.train.loop import TrainSettings, train
    from onnxsurgeon.train.optim import OptimizerSettings
    folder = tempfile.mkdtemp()
    log = _Log(Path(folder) / "metrics.jsonl")
    times = []
    def progress(event):
        log(event)
        if event["event"] == "step":
            times.append(time.perf_counter())
    _, report = train(model, arrays, TrainSettings(loss="mse(encoded, t)", optimizer=OptimizerSettings("adamw", lr=1e-3),
                                                   epochs=1, batch_size=batch), progress=progress)
    log.close()
    result["trainable"] = len(report.plan.trainable)
    result["steps_per_s"] = (len(times) - 1) / (times[-1] - times[0])
print(json.dumps(result))
"""


def measure(variant: str, steps: int, batch: int) -> dict:
    model = str(ROOT / "tests" / "corpus" / "torch" / "transformer_ts.onnx")
    return run_child(variant, CHILD.format(root=str(ROOT), variant=variant, steps=steps, batch=batch, model=model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"plain": [], "tool": []}
    for r in range(args.repeat):
        for v in runs:
            result = measure(v, args.steps, args.batch_size)
            runs[v].append(result)
            print(f"run {r + 1} {v:5s} {result['steps_per_s']:7.1f} steps/s ({result['trainable']} parameters trained)", file=sys.stderr)
    best = {v: max(x["steps_per_s"] for x in runs[v]) for v in runs}
    med = {v: statistics.median(x["steps_per_s"] for x in runs[v]) for v in runs}
    print(f"transformer_ts (TorchScript export of nn.TransformerEncoderLayer), batch {args.batch_size}, 1 thread, AdamW; "
          f"{args.steps} steps, {args.repeat} runs each; load average {os.getloadavg()[0]:.1f}")
    for v in runs:
        print(f"  {v:5s} best {best[v]:7.1f}  median {med[v]:7.1f} steps/s")
    print(f"tool / plain: best {best['tool'] / best['plain']:.3f}, median {med['tool'] / med['plain']:.3f}")


if __name__ == "__main__":
    main()
