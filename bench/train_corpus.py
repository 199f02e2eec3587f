"""The training bar of issue 10: does each real model of the corpus train with the CLI?

    python scripts/fetch_corpus.py && python scripts/train_corpus.py   # the models
    python bench/train_corpus.py [--only SUBSTRING] [--timeout 900] [--json OUT.json]

For each model: data is made from the model's inputs (floats from a normal distribution,
integer ids within the size of the table they index, flags as the model expects; symbolic
sizes from the hints below), a target shaped like the chosen output, then, with the CLI of
the environment that runs this script (``python -m onnxsurgeon``):

    eval  MODEL --data D.npz --metric 'mse(ALIAS, target)' [--fixed ..] [--batch-axis ..]
    train MODEL --data D.npz --loss 'mse(ALIAS, target)' --optimizer sgd --lr 0.01 --epochs 5
          --batch-size N --log L -o OUT [--fixed ..] [--batch-axis ..]        (one batch)
    eval  OUT   (same as before)

A model *trains* when train exits 0, at least one parameter changed (initializers and
Constant-node tensors compared with the input model) and the loss after is below the loss
before. The table shows the exit codes, the parameters moved, the loss before and after,
and the first line of the error where one was refused. Exit 4 (a bug) or a time-out is a
failure of the bar whatever the count. Where a model lives:

  torch/NAME   tests/corpus/torch (committed, scripts/make_torch_models.py)
  xtorch/NAME  .corpus/train/torch (scripts/train_corpus.py)
  pypi/NAME    .corpus/PKG/ (scripts/fetch_corpus.py) or .corpus/train/pypi/PKG/
  onnx/NAME    onnx's backend test data in the installed onnx package
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("ONNXSURGEON_CORPUS", ROOT / ".corpus"))
ONNX_DATA = Path(onnx.__file__).resolve().parent / "backend" / "test" / "data"


@dataclass
class Case:
    id: str
    path: str  # relative to the place its prefix names
    output: str  # the alias of the output the loss reads
    n: int = 4  # examples = the batch
    shapes: dict[str, tuple] = field(default_factory=dict)  # input -> shape ("N" for the examples)
    fixed: dict[str, object] = field(default_factory=dict)  # input -> value fed whole
    batch_axis: dict[str, int] = field(default_factory=dict)  # array -> axis of the examples
    target_axis: int = 0  # axis of the examples in the output (and so in the target)


CASES = [
    # PyTorch, TorchScript and dynamo exporters (committed)
    Case("torch/mlp_ts", "mlp_ts.onnx", "probs"),
    Case("torch/mlp_ts_init_as_inputs", "mlp_ts_init_as_inputs.onnx", "hidden"),
    Case("torch/mlp_dynamo_extdata", "mlp_dynamo_extdata.onnx", "softmax"),
    Case("torch/cnn_ts_train", "cnn_ts_train.onnx", "logits"),
    Case("torch/lstm_ts", "lstm_ts.onnx", "y", shapes={"seq": ("N", 7, 6)}),
    Case("torch/transformer_ts", "transformer_ts.onnx", "encoded"),
    Case("torch/transformer_dynamo", "transformer_dynamo.onnx", "layer_norm_1"),
    Case("torch/control_flow_ts", "control_flow_ts.onnx", "y", fixed={"n": np.array(3, np.int64)}),
    # PyTorch exports made by scripts/train_corpus.py
    Case("xtorch/upsample_ts", "upsample_ts.onnx", "y"),
    Case("xtorch/norms_dynamo", "norms_dynamo.onnx", "conv2d_2"),
    Case("xtorch/bigru_ts", "bigru_ts.onnx", "y", shapes={"h0": (2, "N", 8)}, batch_axis={"h0": 1}),
    Case("xtorch/textcnn_dynamo", "textcnn_dynamo.onnx", "linear"),
    Case("xtorch/cnn_dynamo_train", "cnn_dynamo_train.onnx", "linear"),
    # models shipped inside PyPI packages
    Case("pypi/silero_vad", "silero-vad-6.2.3/silero_vad.onnx", "output", shapes={"input": ("N", 512), "state": (2, "N", 128)},
         fixed={"sr": np.array(16000, np.int64)}, batch_axis={"state": 1}),
    Case("pypi/silero_vad_16k_op15", "silero-vad-6.2.3/silero_vad_16k_op15.onnx", "output",
         shapes={"input": ("N", 512), "state": (2, "N", 128)}, fixed={"sr": np.array(16000, np.int64)}, batch_axis={"state": 1}),
    Case("pypi/magika", "magika-0.5.1/model.onnx", "target_label"),
    Case("pypi/rapidocr_det", "rapidocr-onnxruntime-1.4.4/ch_PP-OCRv4_det_infer.onnx", "p2o_Add_281", n=2,
         shapes={"x": ("N", 3, 64, 64)}),
    Case("pypi/rapidocr_rec", "rapidocr-onnxruntime-1.4.4/ch_PP-OCRv4_rec_infer.onnx", "p2o_Add_277", n=2,
         shapes={"x": ("N", 3, 48, 320)}),
    Case("pypi/rapidocr_cls", "rapidocr-onnxruntime-1.4.4/ch_ppocr_mobile_v2.0_cls_infer.onnx", "save_infer_model_scale_0_tmp_1",
         shapes={"x": ("N", 3, 48, 192)}),
    Case("pypi/captcha_crnn", "train/pypi/captcha-whisperer-0.1.0/captcha_crnn.onnx", "logits", n=2, target_axis=1),
    Case("pypi/romanizer_encoder", "train/pypi/arabic-name-romanizer-0.2.0/encoder.onnx", "memory_out",
         shapes={"src": ("N", 6), "src_mask": ("N", 6)}),
    Case("pypi/romanizer_decoder", "train/pypi/arabic-name-romanizer-0.2.0/decoder.onnx", "logprobs",
         shapes={"prefix": ("N", 3), "memory": ("N", 6, 256), "src_mask": ("N", 6), "hidden": ("N", 2, 256)}),
    # onnx's own test models: Caffe2 conversions (weights made by ConstantOfShape), old PyTorch.
    # Their filler weights blow the activations up layer after layer (inf at the logits), so
    # the loss reads an early value, named by its alias.
    Case("onnx/light_squeezenet", "light/light_squeezenet.onnx", "r21", n=1),
    Case("onnx/light_resnet50", "light/light_resnet50.onnx", "r24", n=1),
    Case("onnx/light_inception_v1", "light/light_inception_v1.onnx", "r13", n=1),
    Case("onnx/light_shufflenet", "light/light_shufflenet.onnx", "r201", n=1),
    Case("onnx/test_Conv2d", "pytorch-converted/test_Conv2d/model.onnx", "_3", n=2),
    Case("onnx/test_Linear_no_bias", "pytorch-converted/test_Linear_no_bias/model.onnx", "_3"),
]


def locate(case: Case) -> Path:
    kind = case.id.split("/")[0]
    base = {"torch": ROOT / "tests" / "corpus" / "torch", "xtorch": CORPUS / "train" / "torch", "pypi": CORPUS, "onnx": ONNX_DATA}[kind]
    return base / case.path


# ---------------------------------------------------------------------------------- data

_NP = {1: np.float32, 10: np.float16, 11: np.float64, 7: np.int64, 6: np.int32, 9: np.bool_}


def _tables(model: onnx.ModelProto) -> dict[str, int]:
    """Integer inputs that index a table (Gather, through Cast/Identity): the table's size."""
    consts = {t.name: tuple(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].type == onnx.AttributeProto.TENSOR:
            consts[node.output[0]] = tuple(node.attribute[0].t.dims)
    alias = {i.name: i.name for i in model.graph.input}
    sizes: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("Cast", "Identity", "Unsqueeze", "Reshape") and node.input[0] in alias:
            alias[node.output[0]] = alias[node.input[0]]
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in alias and node.input[0] in consts:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            sizes[alias[node.input[1]]] = consts[node.input[0]][axis]
    return sizes


def make_data(case: Case, path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    tables = _tables(model)
    arrays: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        t = vi.type.tensor_type
        dtype = _NP[t.elem_type]
        if vi.name in case.fixed:
            arrays[vi.name] = np.asarray(case.fixed[vi.name], dtype)
            continue
        if vi.name in case.shapes:
            shape = tuple(case.n if d == "N" else d for d in case.shapes[vi.name])
        else:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]
            shape = tuple(case.n if (i == 0 and d is None) else (d or 2) for i, d in enumerate(dims))
        if np.dtype(dtype).kind == "f":
            arrays[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif np.dtype(dtype).kind == "b":
            arrays[vi.name] = np.ones(shape, dtype)  # masks: every position present
        else:
            arrays[vi.name] = rng.integers(0, tables.get(vi.name, 4), shape).astype(dtype)
    return arrays


def output_shape(path: Path, arrays: dict[str, np.ndarray], name: str) -> tuple[int, ...]:
    """The shape of the output the loss reads, by running the model once (onnxsurgeon run)."""
    import onnxsurgeon as osg
    from onnxsurgeon.train import evaluate

    model = osg.load(str(path))
    (value,) = evaluate.run(model, arrays, [name]).values()
    return value.shape


# ---------------------------------------------------------------------------------- runs

def cli(args: list[str], timeout: float) -> tuple[int | None, str, str, float]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "onnxsurgeon", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {timeout:.0f} s", time.perf_counter() - t0
    return r.returncode, r.stdout, r.stderr, time.perf_counter() - t0


def data_options(case: Case) -> list[str]:
    out: list[str] = []
    for name in case.fixed:
        out += ["--fixed", name]
    for name, axis in case.batch_axis.items():
        out += ["--batch-axis", f"{name}={axis}"]
    if case.target_axis:
        out += ["--batch-axis", f"target={case.target_axis}"]
    return out


def float_tensors(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every float tensor a model stores: initializers and the values of Constant nodes."""
    out = {}
    for t in model.graph.initializer:
        if t.data_type in (1, 10, 11, 16):
            out[t.name] = numpy_helper.to_array(t)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type in (1, 10, 11, 16):
                    out[node.output[0]] = numpy_helper.to_array(a.t)
    return out


def moved(before: Path, after: Path) -> int:
    """How many stored tensors changed. A weight the model computed from constants (Caffe2's
    ConstantOfShape, paddle's Reshape of a bias) is a Constant in the trained model: its
    value before is computed from the original."""
    from onnxsurgeon.train import lift

    original = onnx.load(str(before))
    a = float_tensors(original)
    b = float_tensors(onnx.load(str(after)))
    computed = [k for k in b if k not in a and k in set(lift.boundary(original.graph))]
    if computed:
        a.update(lift._compute(original, computed))
    return sum(1 for k, v in a.items() if k in b and b[k].shape == v.shape and not np.array_equal(b[k], v))


def _error(stderr: str) -> str:
    lines = stderr.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("onnxsurgeon: error:")), None)
    if start is not None:
        return " / ".join(ln.strip().removeprefix("onnxsurgeon: error: ") for ln in lines[start:] if ln.strip())
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return tail[-1] if tail else ""


def run_case(case: Case, work: Path, timeout: float) -> dict:
    path = locate(case)
    row = {"model": case.id, "train_exit": None, "moved": 0, "before": None, "after": None, "trains": False, "reason": ""}
    if not path.is_file():
        row["reason"] = f"missing: {path} (run scripts/fetch_corpus.py and scripts/train_corpus.py)"
        return row
    rng = np.random.default_rng(0)
    arrays = make_data(case, path, rng)
    try:
        probe = {k: v for k, v in arrays.items()}
        shape = output_shape(path, probe, case.output) if not case.fixed and not case.batch_axis else None
    except Exception as e:  # the model does not run on this data without the data options
        shape = None
        row["note"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    if shape is None:  # ask the CLI (it knows --fixed / --batch-axis)
        np.savez(work / "probe.npz", **arrays)
        code, _, err, _ = cli(["run", str(path), "--data", str(work / "probe.npz"), "--out", case.output,
                               "-o", str(work / "probe_out.npz"), *data_options(case)], timeout)
        if code != 0:
            row["train_exit"] = code
            row["reason"] = "run: " + _error(err)
            return row
        with np.load(work / "probe_out.npz") as z:
            shape = next(iter(z.values())).shape
    arrays["target"] = rng.standard_normal(shape).astype(np.float32)
    data = work / "data.npz"
    np.savez(data, **arrays)
    loss = f"mse({case.output}, target)"
    opts = data_options(case)
    code, out, err, _ = cli(["eval", str(path), "--data", str(data), "--metric", loss, "--json", *opts], timeout)
    row["eval_before_exit"] = code
    if code == 0:
        row["before"] = json.loads(out)["metrics"][loss]
    trained = work / "trained.onnx"
    code, out, err, seconds = cli(["train", str(path), "--data", str(data), "--loss", loss, "--optimizer", "sgd", "--lr", "0.01",
                                   "--epochs", "5", "--batch-size", str(case.n), "--log", str(work / "log.jsonl"),
                                   "-o", str(trained), "--quiet", *opts], timeout)
    row["train_exit"], row["seconds"] = code, round(seconds, 1)
    if code != 0:
        row["reason"] = _error(err)
        return row
    row["moved"] = moved(path, trained)
    code, out, err, _ = cli(["eval", str(trained), "--data", str(data), "--metric", loss, "--json", *opts], timeout)
    row["eval_after_exit"] = code
    if code == 0:
        row["after"] = json.loads(out)["metrics"][loss]
    else:
        row["reason"] = "eval after: " + _error(err)
    row["trains"] = bool(row["moved"] and row["before"] is not None and row["after"] is not None and row["after"] < row["before"])
    if not row["trains"] and not row["reason"]:
        row["reason"] = "no parameter moved" if not row["moved"] else "the loss did not go down"
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="run the models whose id contains this")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per command")
    ap.add_argument("--json", default=None, help="write the rows to this file")
    args = ap.parse_args()
    rows = []
    for case in CASES:
        if args.only and args.only not in case.id:
            continue
        with tempfile.TemporaryDirectory(prefix="train-corpus-") as work:
            row = run_case(case, Path(work), args.timeout)
        rows.append(row)
        print(_line(row), flush=True)
    trains = sum(r["trains"] for r in rows)
    bugs = [r["model"] for r in rows if r["train_exit"] in (4, None) and r["reason"] and "missing:" not in r["reason"]]
    print(f"\n{trains} of {len(rows)} train; exit 4 or time-out: {', '.join(bugs) or 'none'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0 if not bugs else 1


def _line(r: dict) -> str:
    f = lambda v: "-" if v is None else f"{v:.5g}"  # noqa: E731
    verdict = "trains" if r["trains"] else "no"
    return (f"| {r['model']:<28} | {str(r['train_exit']):>4} | {r['moved']:>4} | {f(r['before']):>10} | {f(r['after']):>10} | "
            f"{verdict:<6} | {r['reason'][:400]} |")


if __name__ == "__main__":
    sys.exit(main())
