"""Export a few small real PyTorch models to ONNX for the test corpus.

Run by hand, once; torch is NOT a dependency of onnxsurgeon. The outputs in
tests/corpus/torch/ are committed.

    python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 onnxscript onnx==1.17.0
    /tmp/torchvenv/bin/python scripts/make_torch_models.py

Every model is seeded and fixed, exported with opset <= 18 and saved with
ir_version <= 10 so that onnxruntime 1.19 loads it. Batch axes are dynamic.
An export that fails is reported and skipped (see FAILED at the end).
"""

import os
import sys
import traceback

import onnx
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "corpus", "torch")
OPSET = 17  # TorchScript exporter
DYNAMO_OPSET = 18
MAX_IR = 10  # onnxruntime 1.19 loads IR <= 10 and opset <= 21
FAILED = []


class MLP(nn.Module):
    """Nested Sequential / ModuleList names; returns the hidden state too, and
    that graph output is also consumed by the head (output used internally)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Sequential(nn.Linear(8, 16), nn.ReLU()),
            nn.Sequential(nn.Linear(16, 16), nn.Tanh()),
        )
        self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(2)])
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        h = self.encoder(x)
        for blk in self.blocks:
            h = torch.relu(blk(h)) + h
        return self.head(h).softmax(-1), h


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Dropout(0.25),
        )
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(6, 12, num_layers=1, batch_first=True)
        self.proj = nn.Linear(12, 3)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        return self.proj(y), h, c


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32,
                                                dropout=0.0, batch_first=True)

    def forward(self, x):
        return self.layer(x)


class ControlFlow(nn.Module):
    """Data-dependent control flow (scripted): a Loop whose trip count is an
    input, an If in the loop body and an If nested in that If's branch. The
    body uses a Linear layer, so subgraphs read weights from the outer scope."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.inner = nn.Linear(4, 4)

    def forward(self, x, n):
        y = self.lin(x)
        for i in range(int(n)):
            if bool(y.sum() > 0):
                y = self.inner(y) * 0.5 - 1.0
                if bool(y.mean() < -2.0):
                    y = y + float(i)
            else:
                y = torch.tanh(y) + 1.0
        return y


def fix_and_save(model: onnx.ModelProto, path: str) -> None:
    """Clamp IR version and check opsets for onnxruntime 1.19."""
    if model.ir_version > MAX_IR:
        model.ir_version = MAX_IR
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and op.version > 21:
            raise RuntimeError(f"{path}: opset {op.version} > 21")
    onnx.checker.check_model(model)
    onnx.save(model, path)


def ts_export(name, module, args, input_names, output_names, dyn, **kw):
    path = os.path.join(OUT, name + ".onnx")
    torch.onnx.export(module, args, path, dynamo=False, opset_version=OPSET,
                      input_names=input_names, output_names=output_names,
                      dynamic_axes=dyn, **kw)
    fix_and_save(onnx.load(path), path)


def dynamo_export(name, module, args, dynamic_shapes, external_data=False):
    path = os.path.join(OUT, name + ".onnx")
    prog = torch.onnx.export(module, args, dynamo=True, opset_version=DYNAMO_OPSET,
                             dynamic_shapes=dynamic_shapes)
    if external_data:
        # Weights go to NAME.onnx.data next to the model (real exporter output).
        prog.save(path, external_data=True)
        m = onnx.load(path, load_external_data=False)
        if m.ir_version > MAX_IR:
            m.ir_version = MAX_IR
            onnx.save(m, path)  # external_data refs are kept as they are
        onnx.checker.check_model(path)
    else:
        prog.save(path, external_data=False)
        fix_and_save(onnx.load(path), path)


def run(name, fn):
    try:
        torch.manual_seed(0)
        fn()
        print("ok    ", name)
    except Exception as e:  # record and move on
        FAILED.append((name, f"{type(e).__name__}: {e}".splitlines()[0]))
        traceback.print_exc(limit=2)
        print("FAILED", name)


def main():
    os.makedirs(OUT, exist_ok=True)
    batch = {0: "batch"}
    x8 = torch.randn(2, 8)
    img = torch.randn(2, 3, 8, 8)
    seq = torch.randn(2, 5, 6)
    tok = torch.randn(2, 5, 16)

    def mlp():
        torch.manual_seed(0)
        return MLP().eval()

    def cnn():
        torch.manual_seed(0)
        m = CNN()
        with torch.no_grad():  # non-trivial running stats
            for bn in (m.features[1], m.features[5]):
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.running_var.uniform_(0.5, 1.5)
        return m

    # (a) MLP, TorchScript exporter; plus two exporter-option variants that give
    # IR-3 style initializers-as-inputs and model-local functions.
    run("mlp_ts", lambda: ts_export(
        "mlp_ts", mlp(), (x8,), ["x"], ["probs", "hidden"],
        {"x": batch, "probs": batch, "hidden": batch}))
    run("mlp_ts_init_as_inputs", lambda: ts_export(
        "mlp_ts_init_as_inputs", mlp(), (x8,), ["x"], ["probs", "hidden"],
        {"x": batch, "probs": batch, "hidden": batch}, keep_initializers_as_inputs=True))
    run("mlp_ts_functions", lambda: ts_export(
        "mlp_ts_functions", mlp(), (x8,), ["x"], ["probs", "hidden"],
        {"x": batch, "probs": batch, "hidden": batch},
        export_modules_as_functions={nn.Sequential, nn.Linear}))

    # (b) CNN with BatchNorm + Dropout, training mode and eval mode.
    run("cnn_ts_train", lambda: ts_export(
        "cnn_ts_train", cnn().train(), (img,), ["image"], ["logits"],
        {"image": batch, "logits": batch},
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False))
    run("cnn_ts_eval", lambda: ts_export(
        "cnn_ts_eval", cnn().eval(), (img,), ["image"], ["logits"],
        {"image": batch, "logits": batch}))

    # (c) LSTM
    run("lstm_ts", lambda: ts_export(
        "lstm_ts", TinyLSTM().eval(), (seq,), ["seq"], ["y", "h", "c"],
        {"seq": {0: "batch", 1: "time"}, "y": {0: "batch", 1: "time"},
         "h": {1: "batch"}, "c": {1: "batch"}}))

    # (d) Transformer encoder layer, both exporters.
    run("transformer_ts", lambda: ts_export(
        "transformer_ts", Encoder().eval(), (tok,), ["tokens"], ["encoded"],
        {"tokens": batch, "encoded": batch}))
    run("transformer_dynamo", lambda: dynamo_export(
        "transformer_dynamo", Encoder().eval(), (tok,),
        {"x": {0: torch.export.Dim("batch", min=1, max=64)}}))

    # (e) Data-dependent control flow via torch.jit.script -> If / Loop.
    run("control_flow_ts", lambda: ts_export(
        "control_flow_ts", torch.jit.script(ControlFlow().eval()), (torch.randn(2, 4), torch.tensor(3)),
        ["x", "n"], ["y"], {"x": batch, "y": batch}))

    # (f) MLP, dynamo exporter; once more with its weights in external data.
    dim = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    run("mlp_dynamo", lambda: dynamo_export("mlp_dynamo", mlp(), (x8,), dim))
    run("mlp_dynamo_extdata", lambda: dynamo_export(
        "mlp_dynamo_extdata", mlp(), (x8,), dim, external_data=True))

    total = 0
    for f in sorted(os.listdir(OUT)):
        size = os.path.getsize(os.path.join(OUT, f))
        total += size
        assert size < 300_000, f"{f} is {size} bytes"
    assert total < 2_000_000, f"corpus is {total} bytes"
    for name, why in FAILED:
        print(f"FAILED {name}: {why}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
