"""The feature-extractor example written with the Python API instead of a recipe.

    python examples/python_api.py [OUT.onnx]

Builds the same network as feature_extractor/recipe.toml, prints the plan and writes it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnxsurgeon as osg

HERE = Path(__file__).resolve().parent


def build():
    """The network and its report."""
    net = osg.Network("feature_extractor")
    features = net.input("features", "float32[N,64]")
    encoder = net.piece(HERE.parent / "fixtures" / "autoencoder.onnx", inputs=["input"], outputs=["feat=L4.y"],
                        params="constant", name="encoder")
    feat = net.apply(encoder, features).feat
    h = net.let("h", net.sigmoid(net.dense(feat, 32, name="hidden")))
    net.output("z", net.dense(h, 10, name="classifier"))
    return net.build()


if __name__ == "__main__":
    model, report = build()
    for state, n in report.counts().items():
        print(f"{state:>7}: {n['count']} parameters, {n['bytes']} bytes")
    out = sys.argv[1] if len(sys.argv) > 1 else "feature_extractor.onnx"
    osg.save(model, out)
    print(f"wrote {out}")
