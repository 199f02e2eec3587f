"""Synthetic data for the training examples (train_kl_adaptation.sh, train_feature_extractor.sh).

    python examples/train_data.py OUT_DIR

writes, seeded:
- kl_train.npz / kl_val.npz: ``features`` [N,40] from ten Gaussian clusters and one-hot
  ``labels`` [N,10] (floats, so they can be mixed with the reference's softmax);
- fe_train.npz / fe_val.npz: ``features`` [N,64] and class ``labels`` [N] (3 classes) that
  the frozen auto-encoder's 16 features separate: the arg-max of a fixed projection of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def kl_data(n: int, rng: np.random.Generator, centres: np.ndarray) -> dict[str, np.ndarray]:
    classes = rng.integers(0, 10, n)
    features = centres[classes] + rng.standard_normal((n, 40)).astype(np.float32)
    return {"features": features.astype(np.float32), "labels": np.eye(10, dtype=np.float32)[classes]}


def fe_data(n: int, rng: np.random.Generator, projection: np.ndarray) -> dict[str, np.ndarray]:
    import onnxsurgeon as osg
    from onnxsurgeon import runtime

    encoder, _ = osg.extract(osg.load(ROOT / "fixtures" / "autoencoder.onnx"), inputs=["input"], outputs=["L4.y"])
    features = rng.standard_normal((n, 64)).astype(np.float32)
    codes = runtime.session(encoder).run(None, {"input": features})[0]
    return {"features": features, "labels": (codes @ projection).argmax(1)}


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 40)).astype(np.float32)
    projection = rng.standard_normal((16, 3))
    for split, n in (("train", 2000), ("val", 500)):
        np.savez(out / f"kl_{split}.npz", **kl_data(n, rng, centres))
        np.savez(out / f"fe_{split}.npz", **fe_data(n, rng, projection))
    print(f"wrote kl_train/val.npz and fe_train/val.npz to {out}")


if __name__ == "__main__":
    main()
