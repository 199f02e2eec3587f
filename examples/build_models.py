"""Build the small trained-looking models the examples compose (deterministic, byte-identical).

    python examples/build_models.py

- ``models/classifier.onnx``: a frame classifier as a speech model would have it,
  ``features[N,40] -> L1 (MatMul, Add) -> bn1 (BatchNormalization) -> Relu -> drop1 (Dropout)
  -> L2 (MatMul, Add, Relu) -> out (MatMul, Add) -> logits[N,10]``, exported in inference mode.
  Used by the KL-adaptation and FDLR examples.
- ``models/tower.onnx``: a DSSM tower, ``text[N,100] -> tanh(L1) -> tanh(L2) -> semantic[N,32]``.

The feature-extractor example uses the shipped ``fixtures/autoencoder.onnx``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = Path(__file__).resolve().parent
OPSET, IR = 17, 8


def _linear(r, name: str, x: str, n_in: int, n_out: int, nodes: list, inits: list) -> str:
    inits += [
        numpy_helper.from_array((r.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32), f"{name}.W"),
        numpy_helper.from_array((r.standard_normal(n_out) * 0.1).astype(np.float32), f"{name}.b"),
    ]
    nodes += [
        helper.make_node("MatMul", [x, f"{name}.W"], [f"{name}.o"], name=f"{name}.o"),
        helper.make_node("Add", [f"{name}.o", f"{name}.b"], [f"{name}.z"], name=f"{name}.z"),
    ]
    return f"{name}.z"


def _model(nodes, name, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="onnxsurgeon-examples")
    m.ir_version = IR
    onnx.checker.check_model(m, full_check=True)
    return m


def classifier() -> onnx.ModelProto:
    r = np.random.default_rng(11)
    nodes: list = []
    inits: list = []
    z1 = _linear(r, "L1", "features", 40, 64, nodes, inits)
    inits += [
        numpy_helper.from_array((1 + 0.1 * r.standard_normal(64)).astype(np.float32), "bn1.scale"),
        numpy_helper.from_array((0.1 * r.standard_normal(64)).astype(np.float32), "bn1.bias"),
        numpy_helper.from_array((0.5 * r.standard_normal(64)).astype(np.float32), "bn1.mean"),
        numpy_helper.from_array(r.uniform(0.5, 2.0, 64).astype(np.float32), "bn1.var"),
        numpy_helper.from_array(np.array(0.2, dtype=np.float32), "drop1.ratio"),
    ]
    nodes += [
        helper.make_node("BatchNormalization", [z1, "bn1.scale", "bn1.bias", "bn1.mean", "bn1.var"], ["bn1.y"], name="bn1"),
        helper.make_node("Relu", ["bn1.y"], ["L1.y"], name="L1.y"),
        helper.make_node("Dropout", ["L1.y", "drop1.ratio"], ["drop1.y"], name="drop1"),
    ]
    z2 = _linear(r, "L2", "drop1.y", 64, 64, nodes, inits)
    nodes.append(helper.make_node("Relu", [z2], ["L2.y"], name="L2.y"))
    _linear(r, "out", "L2.y", 64, 10, nodes, inits)
    nodes.append(helper.make_node("Identity", ["out.z"], ["logits"], name="logits"))
    f = TensorProto.FLOAT
    return _model(
        nodes, "classifier", [helper.make_tensor_value_info("features", f, ["N", 40])],
        [helper.make_tensor_value_info("logits", f, ["N", 10])], inits,
    )


def tower() -> onnx.ModelProto:
    r = np.random.default_rng(12)
    nodes: list = []
    inits: list = []
    z1 = _linear(r, "L1", "text", 100, 64, nodes, inits)
    nodes.append(helper.make_node("Tanh", [z1], ["L1.y"], name="L1.y"))
    z2 = _linear(r, "L2", "L1.y", 64, 32, nodes, inits)
    nodes.append(helper.make_node("Tanh", [z2], ["semantic"], name="semantic"))
    f = TensorProto.FLOAT
    return _model(
        nodes, "tower", [helper.make_tensor_value_info("text", f, ["N", 100])],
        [helper.make_tensor_value_info("semantic", f, ["N", 32])], inits,
    )


MODELS = {"classifier.onnx": classifier, "tower.onnx": tower}


def main() -> None:
    for name, make in MODELS.items():
        onnx.save(make(), HERE / "models" / name)
        print(f"wrote examples/models/{name}")


if __name__ == "__main__":
    main()
