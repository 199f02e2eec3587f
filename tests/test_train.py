"""Training: losses and data against numpy, optimizer steps against numpy references,
frozen and shared parameters, exact resume, checkpoints, write-back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import meta, runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.train import checkpoint
from onnxsurgeon.train.losses import compile_objective, data_type
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings, Schedule

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402
from test_train_stack import mlp, mlp_grads  # noqa: E402

RNG = np.random.default_rng(7)
X = RNG.standard_normal((12, 3)).astype(np.float32)
T = RNG.standard_normal((12, 2)).astype(np.float32)
LABELS = RNG.integers(0, 2, 12)


def init(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}


def after(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def settings(**kw) -> TrainSettings:
    kw.setdefault("loss", "mse(y, t)")
    kw.setdefault("batch_size", 12)
    kw.setdefault("shuffle", False)
    return TrainSettings(**kw)


# ---------------------------------------------------------------- losses and metrics


def run_objective(model, loss, metrics, feeds, params=frozenset({"W1"})):
    types = {k: data_type(v, TensorProto.FLOAT, "N") for k, v in feeds.items() if k != "x"}
    compiled, objective = compile_objective(model, loss, metrics, types, set(params))
    onnx.checker.check_model(compiled, full_check=True)
    cast = {k: (v.astype(np.float32) if v.dtype in (np.float64, np.bool_) else v) for k, v in feeds.items()}
    out = runtime.session(compiled).run(None, cast)
    return out, objective


def forward(model, x=X):
    return runtime.session(model).run(None, {"x": x})[0].astype(np.float64)


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_losses_match_numpy():
    m = mlp()
    y = forward(m)
    w = np.linspace(0, 1, 12).astype(np.float32)
    onehot = np.eye(2)[LABELS]
    feeds = {"x": X, "labels": LABELS, "onehot": onehot, "t": T, "w": w, "bits": (T > 0)}
    out, objective = run_objective(
        m, "w * ce(y, labels) + 0.3 * mse(y, t)",
        ["ce(y, onehot)", "bce(y, t)", "error(y, labels)", "hamming(y, bits)", "error(y, onehot)"], feeds,
    )
    ce = -log_softmax(y)[np.arange(12), LABELS]
    assert out[0] == pytest.approx((w * ce + 0.3 * ((y - T) ** 2).mean(1)).mean(), rel=1e-6)
    assert out[1] == pytest.approx(ce.mean(), rel=1e-6)
    bce = np.maximum(y, 0) - y * T + np.log1p(np.exp(-np.abs(y)))
    assert out[2] == pytest.approx(bce.mean(), rel=1e-6)
    assert out[3] == pytest.approx((y.argmax(1) != LABELS).mean())
    assert out[4] == pytest.approx(((y > 0) != (T > 0)).mean())
    assert out[5] == out[3]
    assert [m for m, _ in objective.metrics][0] == "ce(y, onehot)"
    assert {n for n, _ in objective.data_inputs} == {"w", "labels", "onehot", "t", "bits"}


def test_bce_is_stable_for_large_logits():
    model = mlp()
    for t in model.graph.initializer:  # huge logits
        if t.name == "b2":
            t.CopyFrom(numpy_helper.from_array(np.array([1000.0, -1000.0], np.float32), "b2"))
    y = forward(model)
    out, _ = run_objective(model, "bce(y, t)", [], {"x": X, "t": np.ones((12, 2))})
    expected = (np.maximum(y, 0) - y + np.log1p(np.exp(-np.abs(y)))).mean()
    assert np.isfinite(out[0]) and out[0] == pytest.approx(expected, rel=1e-5)


def two_heads() -> onnx.ModelProto:
    """z = x @ W (trained), zRef = x @ R (a frozen reference)."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("MatMul", ["x", "R"], ["zRef"])],
        "heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4]), helper.make_tensor_value_info("zRef", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), n) for n in ("W", "R")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta.set_frozen(model, {"R"})
    return model


def test_kl_adaptation_loss_takes_the_trained_output_as_scores():
    model = two_heads()
    labels = np.eye(4)[RNG.integers(0, 4, 12)]
    out, objective = run_objective(model, "ce(0.1 * labels + 0.9 * softmax(zRef), z)", [], {"x": X, "labels": labels}, {"W"})
    z, zref = (runtime.session(model).run(None, {"x": X})[i].astype(np.float64) for i in (0, 1))
    target = 0.1 * labels + 0.9 * np.exp(log_softmax(zref))
    assert out[0] == pytest.approx((-(target * log_softmax(z)).sum(1)).mean(), rel=1e-6)
    assert "took z as the scores" in objective.notes[0]


def test_loss_errors_point_at_the_problem():
    types = {"labels": data_type(LABELS, TensorProto.FLOAT, "N")}
    with pytest.raises(InputError, match=r"unknown name.*'lables' \(did you mean 'labels'"):
        compile_objective(mlp(), "ce(y, lables)", [], types, {"W1"})
    with pytest.raises(InputError, match=r"1:1: .*two axes share one symbolic size"):
        w = {"w": data_type(np.ones((12, 1), np.float32), TensorProto.FLOAT, "N"), **types}
        compile_objective(mlp(), "w * ce(y, labels)", [], w, {"W1"})
    with pytest.raises(InputError, match="syntax error"):
        compile_objective(mlp(), "ce(y, labels", [], types, {"W1"})


def test_data_problems_are_reported_together(fixture_path):
    model = osg.load(fixture_path("two_io.onnx"))
    a = RNG.standard_normal((10, 6)).astype(np.float32)
    arrays = {"a": a[:, :5], "b_in": a, "t": a[:, :3], "w": np.ones(9)}
    with pytest.raises(InputError) as e:
        train(model, arrays, settings(loss="w * mse(r, t)"))
    text = str(e.value)
    assert "does not fit the graph (3 problems)" in text
    assert "array 'a' has shape [10, 5], 'a' wants [N,6]: dim 1 is 5, not 6" in text
    assert "no array named 'b'; did you mean 'b_in'?" in text
    assert "arrays disagree on the number of examples (first axis):" in text and "w has 9" in text
    with pytest.raises(InputError, match="mse: t is int64; it must be a floating-point value"):
        train(mlp(), {"x": X, "t": T.astype(np.int64)}, settings())
    with pytest.raises(InputError, match=r"mse: the shapes of y \(float32\[N,2\]\) and t \(float32\[N,1\]\) differ"):
        train(mlp(), {"x": X, "t": T[:, :1]}, settings())
    with pytest.raises(InputError, match="fixed batch size of 1"):
        fixed = mlp()
        fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
        train(fixed, {"x": X, "t": T}, settings())


# ---------------------------------------------------------------- one step against numpy


def test_sgd_momentum_steps_match_numpy():
    lr, mu, wd = 0.1, 0.9, 0.01
    trained, report = train(mlp(), {"x": X, "t": T}, settings(
        optimizer=OptimizerSettings("sgd", lr=lr, momentum=mu, weight_decay=wd), epochs=3,
    ))
    p = init(mlp())
    buf = {k: np.zeros_like(v) for k, v in p.items()}
    for _ in range(3):
        g = mlp_grads(p, X, T)
        for k in p:
            d = g[k] + wd * p[k]
            buf[k] = mu * buf[k] + d
            p[k] = p[k] - lr * buf[k]
    got = after(trained)
    for k in p:
        np.testing.assert_allclose(got[k], p[k], rtol=0, atol=1e-5)
    assert report.plan.trainable == ("W1", "W2", "b1", "b2") and report.steps == 3


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_steps_match_torch_formulas(name):
    lr, wd, b1, b2, eps = 0.05, 0.1, 0.8, 0.95, 1e-7
    trained, _ = train(mlp(), {"x": X, "t": T}, settings(
        optimizer=OptimizerSettings(name, lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=wd), epochs=3,
    ))
    p = init(mlp())
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, 4):
        g = mlp_grads(p, X, T)
        for k in p:
            gk = g[k] + (wd * p[k] if name == "adam" else 0)  # torch Adam: L2; AdamW: decoupled
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk**2
            if name == "adamw":
                p[k] = p[k] * (1 - lr * wd)
            p[k] = p[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
    got = after(trained)
    for k in p:
        np.testing.assert_allclose(got[k], p[k], rtol=0, atol=1e-5)


def test_gradient_clipping_matches_torch():
    lr, clip = 0.1, 0.05
    trained, _ = train(mlp(), {"x": X, "t": T}, settings(optimizer=OptimizerSettings("sgd", lr=lr, clip_norm=clip)))
    p = init(mlp())
    g = mlp_grads(p, X, T)
    norm = np.sqrt(sum((v**2).sum() for v in g.values()))
    assert norm > clip
    got = after(trained)
    for k in p:
        np.testing.assert_allclose(got[k], p[k] - lr * g[k] * clip / (norm + 1e-6), rtol=0, atol=1e-6)


def test_schedules():
    s = Schedule("linear", warmup=2)
    assert [s.factor(t, 6) for t in range(7)] == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25, 0])
    s = Schedule("step", step_size=2, gamma=0.5)
    assert [s.factor(t, 6) for t in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    assert Schedule().factor(100, 10) == 1
    with pytest.raises(InputError, match="--step-size"):
        Schedule("step")


def test_shared_weight_gets_the_sum_of_its_gradients(fixture_path):
    model = osg.load(fixture_path("shared_weight.onnx"))
    x = RNG.standard_normal((6, 8)).astype(np.float32)
    t = RNG.standard_normal((6, 8)).astype(np.float32)
    lr = 0.1
    trained, report = train(model, {"x": x, "t": t}, settings(loss="mse(y, t)", batch_size=6, optimizer=OptimizerSettings("sgd", lr=lr)))
    W = init(model)["W"]
    a = x.astype(np.float64) @ W
    h = np.maximum(a, 0)
    y = h @ W
    dy = 2 * (y - t) / y.size
    grad = h.T @ dy + x.T @ ((dy @ W.T) * (a > 0))  # second use + first use
    np.testing.assert_allclose(after(trained)["W"], W - lr * grad, rtol=0, atol=1e-6)
    assert report.plan.trainable == ("W",)


# ---------------------------------------------------------------- frozen parameters


def frozen_front() -> onnx.ModelProto:
    """A constant piece (the auto-encoder's encoder, BN-free) with a new trainable head."""
    source = osg.load(ROOT / "fixtures" / "autoencoder.onnx")
    piece, _ = osg.extract(source, inputs=["input"], outputs=["L4_y"], params="constant")
    rng = np.random.default_rng(0)
    piece.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32) * 0.3, "head.W"),
        numpy_helper.from_array(np.zeros(3, np.float32), "head.b"),
    ])
    piece.graph.node.extend([helper.make_node("MatMul", ["L4.y", "head.W"], ["hm"]), helper.make_node("Add", ["hm", "head.b"], ["z"])])
    del piece.graph.output[:]
    piece.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3]))
    meta.put(piece, meta.MODE, None)  # a network around a constant piece: its parameters stay listed frozen
    return piece


def test_frozen_piece_is_bit_identical_after_training():
    model = frozen_front()
    frozen = meta.frozen(model)
    assert len(frozen) == 8
    x = RNG.standard_normal((20, 64)).astype(np.float32)
    trained, report = train(model, {"input": x, "labels": RNG.integers(0, 3, 20)}, TrainSettings(
        loss="ce(z, labels)", optimizer=OptimizerSettings("adamw", lr=0.1), epochs=2, batch_size=5,
    ))
    before, now = {t.name: t for t in model.graph.initializer}, {t.name: t for t in trained.graph.initializer}
    for name in frozen:
        assert now[name].SerializeToString() == before[name].SerializeToString(), name
    assert set(report.plan.trainable) == {"head.W", "head.b"}
    assert not np.array_equal(numpy_helper.to_array(now["head.W"]), numpy_helper.to_array(before["head.W"]))
    assert meta.frozen(trained) == frozen  # metadata kept
    assert json.loads(meta.get(trained, "onnxsurgeon.trained"))["steps"] == 8


def test_freeze_patterns_and_errors():
    trained, report = train(mlp(), {"x": X, "t": T}, settings(freeze=("W1", "b*")))
    assert report.plan.trainable == ("W2",)
    assert set(report.plan.frozen) == {"W1", "b1", "b2"}
    with pytest.raises(InputError, match="matched no parameter: nope"):
        train(mlp(), {"x": X, "t": T}, settings(freeze=("nope",)))
    with pytest.raises(InputError, match="nothing to train"):
        train(mlp(), {"x": X, "t": T}, settings(freeze=("*",)))


# ---------------------------------------------------------------- resume and checkpoints


def classifier_data(n=40):
    x = RNG.standard_normal((n, 3)).astype(np.float32)
    return {"x": x, "labels": (x[:, 0] + x[:, 1] > 0).astype(np.int64)}


DATA = classifier_data()


def run(tmp_path, name, optimizer, schedule, **kw):
    s = TrainSettings(
        loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=optimizer, schedule=schedule,
        epochs=3, batch_size=8, seed=5, checkpoint_dir=str(tmp_path / name), **kw,
    )
    return train(mlp(), DATA, s)


RESUMABLE = [
    (OptimizerSettings("sgd", lr=0.1, momentum=0.9, weight_decay=0.01), Schedule("step", step_size=4, gamma=0.5)),
    (OptimizerSettings("adamw", lr=0.05), Schedule("linear", warmup=3)),
]


@pytest.mark.parametrize("optimizer, schedule", RESUMABLE, ids=["sgd-step", "adamw-linear"])
def test_resume_is_bitwise_exact(tmp_path, optimizer, schedule):
    straight, full = run(tmp_path, "straight", optimizer, schedule)
    part, first = run(tmp_path, "split", optimizer, schedule, max_steps=7)  # stops mid-epoch 2
    assert first.steps == 7 and not first.finished
    resumed, second = run(tmp_path, "split", optimizer, schedule, resume=True)
    assert second.resumed_from.endswith("step-000000007.ckpt") and second.steps_run == 8
    assert after(resumed).keys() == after(straight).keys()
    for name, value in after(straight).items():
        assert after(resumed)[name].tobytes() == value.tobytes(), name
    assert [e.to_dict() | {"seconds": 0} for e in second.history] == [e.to_dict() | {"seconds": 0} for e in full.history]


def test_epochs_is_the_total(tmp_path):
    opt = OptimizerSettings("sgd", lr=0.1, momentum=0.5)
    s = dict(loss="ce(y, labels)", optimizer=opt, batch_size=8, seed=1)
    straight, _ = train(mlp(), DATA, TrainSettings(epochs=4, **s))
    train(mlp(), DATA, TrainSettings(epochs=2, checkpoint_dir=str(tmp_path), **s))
    resumed, report = train(mlp(), DATA, TrainSettings(epochs=4, checkpoint_dir=str(tmp_path), resume=True, **s))
    assert report.steps_run == 10 and report.finished
    assert all(after(resumed)[k].tobytes() == v.tobytes() for k, v in after(straight).items())


KILLER = """
import os, signal, sys, numpy as np
sys.path.insert(0, {tests!r})
from test_train import DATA, RESUMABLE, mlp
from onnxsurgeon.train.loop import TrainSettings, train
optimizer, schedule = RESUMABLE[1]
def progress(event):
    if event["event"] == "step" and event["step"] == 13:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9, between two checkpoints
train(mlp(), DATA, TrainSettings(loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=optimizer,
      schedule=schedule, epochs=3, batch_size=8, seed=5, checkpoint_dir={folder!r}, checkpoint_every=4,
      keep=None), progress=progress)
"""


def test_resume_after_kill_9(tmp_path):
    folder = tmp_path / "killed"
    code = KILLER.format(tests=str(Path(__file__).parent), folder=str(folder))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == -9, proc.stderr
    assert [s for s, _ in checkpoint.listing(folder)] == [12, 10, 8, 5, 4]  # every 4 steps and each epoch end (5 steps)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    optimizer, schedule = RESUMABLE[1]
    straight, _ = run(tmp_path, "straight", optimizer, schedule)
    resumed, report = run(tmp_path, "killed", optimizer, schedule, resume=True, checkpoint_every=4, keep=None)
    assert report.resumed_from.endswith("step-000000012.ckpt")
    assert all(after(resumed)[k].tobytes() == v.tobytes() for k, v in after(straight).items())


def test_corrupt_checkpoint_is_skipped_and_keep(tmp_path):
    opt = OptimizerSettings("adamw", lr=0.05)
    _, report = run(tmp_path, "c", opt, Schedule(), checkpoint_every=2, keep=2)
    assert [s for s, _ in checkpoint.listing(tmp_path / "c")] == [15, 14]
    newest = tmp_path / "c" / "step-000000015.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    _, report = run(tmp_path, "c", opt, Schedule(), resume=True)
    assert report.resumed_from.endswith("step-000000014.ckpt")
    assert any("skipped checkpoint" in w and "step-000000015" in w for w in report.warnings)
    assert report.steps_run == 1


def test_checkpoint_that_does_not_fit_is_refused(tmp_path):
    run(tmp_path, "x", OptimizerSettings("adamw"), Schedule(), max_steps=2)
    with pytest.raises(InputError, match=r"does not fit the model:\n  - not trained in this model: W1, b1"):
        train(mlp(), DATA, TrainSettings(loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=OptimizerSettings("adamw"),
                                         epochs=3, batch_size=8, seed=5, checkpoint_dir=str(tmp_path / "x"), resume=True, freeze=("W1", "b1")))
    with pytest.raises(InputError, match="another training graph.*the loss was 'ce"):
        train(mlp(), DATA, TrainSettings(loss="mse(y, y)", metrics=("error(y, labels)",), optimizer=OptimizerSettings("adamw"),
                                         epochs=3, batch_size=8, seed=5, checkpoint_dir=str(tmp_path / "x"), resume=True))
    with pytest.raises(InputError, match="other settings: batch_size 8 .now 4."):
        train(mlp(), DATA, TrainSettings(loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=OptimizerSettings("adamw"),
                                         epochs=3, batch_size=4, seed=5, checkpoint_dir=str(tmp_path / "x"), resume=True))


def test_trained_model_trains_again_and_validation(tmp_path):
    s = TrainSettings(loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=OptimizerSettings("adamw", lr=0.05), epochs=5, batch_size=8)
    once, report = train(mlp(), DATA, s, val=DATA)
    assert report.history[-1].loss < report.history[0].loss
    assert set(report.history[-1].val) == {"loss", "error(y, labels)"}
    twice, _ = train(once, DATA, s)
    assert twice.graph.node == once.graph.node and twice.opset_import == once.opset_import


def test_stop_request_checkpoints_and_resumes_exactly(tmp_path):
    optimizer, schedule = RESUMABLE[0]
    straight, _ = run(tmp_path, "straight", optimizer, schedule)
    steps = []
    s = TrainSettings(loss="ce(y, labels)", metrics=("error(y, labels)",), optimizer=optimizer, schedule=schedule,
                      epochs=3, batch_size=8, seed=5, checkpoint_dir=str(tmp_path / "stopped"))
    _, report = train(mlp(), DATA, s, progress=lambda e: steps.append(e) if e["event"] == "step" else None,
                      stop=lambda: len(steps) >= 3)
    assert report.interrupted and report.steps == 3 and report.checkpoints[-1].endswith("step-000000003.ckpt")
    resumed, _ = run(tmp_path, "stopped", optimizer, schedule, resume=True)
    assert all(after(resumed)[k].tobytes() == v.tobytes() for k, v in after(straight).items())


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m.update(arrays=m["arrays"] + ["ghost"]),  # names an array that is not there
        lambda m: m.update(members=7),  # the wrong kind
        lambda m: m.update(members=["arrays/0.npy"]),  # no ort_state
    ],
)
def test_crafted_checkpoint_is_refused_cleanly(tmp_path, change):
    import zipfile

    run(tmp_path, "c", OptimizerSettings("sgd", lr=0.1), Schedule(), checkpoint_every=15, keep=1)
    (_, path), = checkpoint.listing(tmp_path / "c")
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(members["meta.json"])
    change(meta)
    members["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(InputError, match="is damaged or incomplete"):
        checkpoint.read(path)
    figures.add("crafted checkpoint meta.json, refused as damaged", 1)
