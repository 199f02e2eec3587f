"""The training stack under onnxsurgeon.train: onnxruntime-training 1.19 without torch.

Two kinds of tests. The first check our base layer (onnxsurgeon.train.ort/artifacts), with
artifacts made as ``train`` makes them (the loss compiled in, then ``artifacts.build``): it
imports without torch, and the gradients and AdamW steps through onnxruntime.training.api
are exactly the numpy ones. The `test_fact_*` ones pin down behaviours of onnxruntime-training that the
training design works around; each fails if a future version changes the behaviour, so the
workaround can be revisited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon.errors import EnvironmentProblem, InputError
from onnxsurgeon.runtime import MAX_IR
from onnxsurgeon.train import artifacts, ort
from onnxsurgeon.train.loop import compile_training

ROOT = Path(__file__).resolve().parents[1]

# A stand-in torch that records being imported and then fails like a missing one; put first
# on PYTHONPATH it also shadows a real torch, so these tests mean the same on any machine.
FAKE_TORCH = """
import os
open(os.environ["TORCH_MARKER"], "a").write("imported\\n")
raise ImportError("fake torch: not installed")
"""


def run_python(code: str, tmp_path: Path, fake_torch: bool = True) -> tuple[subprocess.CompletedProcess, bool]:
    """Run `code` in a fresh interpreter; returns the process and whether torch was imported."""
    paths = [str(ROOT)]
    marker = tmp_path / "torch_marker"
    if fake_torch:
        (tmp_path / "fake" / "torch").mkdir(parents=True, exist_ok=True)
        (tmp_path / "fake" / "torch" / "__init__.py").write_text(FAKE_TORCH)
        paths.insert(0, str(tmp_path / "fake"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "TORCH_MARKER": str(marker)}
    if marker.exists():
        marker.unlink()
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], check=False, capture_output=True, text=True, env=env, timeout=120
    )
    return proc, marker.exists()


def mlp(opset: int = 17) -> onnx.ModelProto:
    """y = relu(x @ W1 + b1) @ W2 + b2, x: [N, 3], y: [N, 2]."""
    rng = np.random.default_rng(0)
    params = {
        "W1": rng.standard_normal((3, 4)),
        "b1": rng.standard_normal(4),
        "W2": rng.standard_normal((4, 2)),
        "b2": rng.standard_normal(2),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "W2"], ["o0"]),
            helper.make_node("Add", ["o0", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def initial(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


DATA = np.random.default_rng(1)
X = DATA.standard_normal((5, 3)).astype(np.float32)
TARGET = DATA.standard_normal((5, 2)).astype(np.float32)


def mlp_grads(p: dict[str, np.ndarray], x: np.ndarray = X, t: np.ndarray = TARGET) -> dict[str, np.ndarray]:
    """Gradients of mean((y - t)^2) for mlp() on x, in float64."""
    x = x.astype(np.float64)
    h1 = x @ p["W1"] + p["b1"]
    h2 = np.maximum(h1, 0)
    y = h2 @ p["W2"] + p["b2"]
    dy = 2 * (y - t) / y.size
    dh1 = (dy @ p["W2"].T) * (h1 > 0)
    return {"W1": x.T @ dh1, "b1": dh1.sum(0), "W2": h2.T @ dy, "b2": dy.sum(0)}


def train_artifacts(model: onnx.ModelProto, out_dir: Path, freeze: tuple[str, ...] = (), loss: str = "mse(y, target)",
                    data: dict[str, np.ndarray] | None = None, adamw: bool = True, weight_decay: float = 0.0):
    """Artifacts as `train` makes them: the model prepared and the loss compiled in, then
    artifacts.build, with onnxruntime's AdamW in torch's form (betas 0.9/0.999, eps 1e-6) or,
    for SGD (onnxsurgeon's own), no optimizer model."""
    compiled = compile_training(model, data if data is not None else {"x": X, "target": TARGET}, loss, freeze=tuple(freeze))
    settings = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-6, "weight_decay": weight_decay} if adamw else None
    return artifacts.build(compiled.model, list(compiled.plan.trainable), list(compiled.plan.running_stats), out_dir, settings)


def paths_in(directory: Path) -> artifacts.ArtifactPaths:
    return artifacts.ArtifactPaths(*(directory / name for name in artifacts.FILES))


def session(paths, optimizer: str | Path | None = None):
    """(state, module, optimizer or None) from artifact paths, quiet and single-threaded."""
    api = ort.api()
    state = api.CheckpointState.load_checkpoint(paths.checkpoint)
    module = api.Module(str(paths.training_model), state, str(paths.eval_model), session_options=ort.session_options())
    path = optimizer or paths.optimizer_model
    opt = api.Optimizer(str(path), module) if Path(path).exists() else None
    return state, module, opt


def train_step(module, opt, *inputs) -> float:
    module.train()
    loss = module(*inputs)
    opt.step()
    module.lazy_reset_grad()
    return float(loss)


@pytest.fixture(scope="module")
def sgd_artifacts(tmp_path_factory):
    return train_artifacts(mlp(), tmp_path_factory.mktemp("sgd"), freeze=("b2",), adamw=False)


@pytest.fixture(scope="module")
def adamw_artifacts(tmp_path_factory):
    return train_artifacts(mlp(), tmp_path_factory.mktemp("adamw"), freeze=("b2",))


# ---------------------------------------------------------------- the base layer


def test_loader_imports_without_torch(tmp_path):
    proc, torch_imported = run_python(
        """
        import sys
        from onnxsurgeon.train import ort
        api, artifacts, onnxblock = ort.api(), ort.artifacts(), ort.onnxblock()
        assert api.Module and api.CheckpointState and api.Optimizer and api.LinearLRScheduler
        assert artifacts.generate_artifacts and onnxblock.loss.MSELoss
        import onnxruntime, onnxruntime.training
        assert onnxruntime.training.TrainingParameters  # the placeholder keeps the plain names
        assert "torch" not in sys.modules
        print("ok")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
    assert not torch_imported


def test_inference_sessions_import_no_torch(tmp_path):
    # verify and run go through onnxsurgeon.runtime, which blocks onnxruntime's ORTModule probe.
    proc, torch_imported = run_python(
        f"""
        import sys
        import onnxsurgeon as osg
        model = osg.load({str(ROOT / "fixtures" / "autoencoder.onnx")!r})
        piece, _ = osg.extract(model, inputs=["input"], outputs=["L4.y"])
        assert osg.verify(model, piece).ok
        assert "torch" not in sys.modules and "onnxruntime.training.ortmodule" not in sys.modules
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert not torch_imported


def test_loader_reports_missing_training_build(tmp_path):
    # An inference-only onnxruntime: a package without the training folder.
    (tmp_path / "fake" / "onnxruntime").mkdir(parents=True)
    (tmp_path / "fake" / "onnxruntime" / "__init__.py").write_text("")
    proc, _ = run_python(
        """
        from onnxsurgeon.errors import EnvironmentProblem
        from onnxsurgeon.train import ort
        try:
            ort.api()
        except EnvironmentProblem as e:
            print(e.exit_code, e.hint)
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("3 pip install onnxruntime-training-cpu==1.19.2")


def test_gradients_match_numpy_and_frozen_is_a_constant(sgd_artifacts):
    state, module, opt = session(sgd_artifacts)
    assert opt is None  # SGD: no optimizer model, onnxsurgeon updates the parameters itself
    start = initial(mlp())
    module.train()
    loss = float(module(X, TARGET))
    assert loss == pytest.approx(((np.maximum(X @ start["W1"] + start["b1"], 0) @ start["W2"] + start["b2"] - TARGET) ** 2).mean(), abs=1e-6)
    grads = mlp_grads({k: v.astype(np.float64) for k, v in start.items()})
    assert sorted(name for name, _ in state.parameters) == ["W1", "W2", "b1"]
    for name in ("W1", "b1", "W2"):
        np.testing.assert_allclose(state.parameters[name].grad, grads[name], rtol=0, atol=1e-6)
    # frozen: not in the checkpoint at all, a constant inside the training graph, bit for bit
    (b2,) = [t for t in onnx.load(sgd_artifacts.training_model).graph.initializer if t.name == "b2"]
    assert numpy_helper.to_array(b2).tobytes() == start["b2"].tobytes()


def test_artifacts_are_loadable_and_quiet(tmp_path):
    # opset 22 and IR 11 (what onnx >= 1.18 writes): converted and clamped for onnxruntime 1.19
    model = mlp(opset=22)
    model.ir_version = 11
    paths = train_artifacts(model, tmp_path, freeze=("W2",))
    for path in (paths.training_model, paths.eval_model, paths.optimizer_model):
        written = onnx.load(path)
        assert written.ir_version <= MAX_IR
        assert max(o.version for o in written.opset_import if o.domain == "") <= 21
    session(paths)
    assert sorted(os.listdir(tmp_path)) == [
        "checkpoint",
        "eval_model.onnx",
        "optimizer_model.onnx",
        "training_model.onnx",
    ]


def test_cross_entropy_artifacts(tmp_path):
    labels = np.array([0, 1, 1, 0, 1], np.int64)
    paths = train_artifacts(mlp(), tmp_path, loss="ce(y, labels)", data={"x": X, "labels": labels})
    _, module, opt = session(paths)
    assert module.input_names() == ["x", "labels"]
    loss = train_step(module, opt, X, labels)
    assert np.isfinite(loss)


@pytest.mark.parametrize(
    "freeze, loss, message",
    [
        (("nope",), "mse(y, target)", "matched no parameter: nope"),
        (("*",), "mse(y, target)", "nothing to train"),
    ],
)
def test_training_graph_input_errors(tmp_path, freeze, loss, message):
    with pytest.raises(InputError, match=message):
        train_artifacts(mlp(), tmp_path, freeze=freeze, loss=loss)


def test_environment_problem_is_exit_3():
    assert EnvironmentProblem("x").exit_code == 3


# ---------------------------------------------------------------- facts about onnxruntime-training 1.19


def test_fact_a_only_package_inits_import_torch(tmp_path):
    # The training package's __init__ imports torch (via .optim); without torch it fails.
    proc, torch_imported = run_python("import onnxruntime.training", tmp_path)
    assert proc.returncode != 0 and "torch" in proc.stderr
    assert torch_imported
    # Plain `import onnxruntime` probes ortmodule, which imports torch; the failure is swallowed.
    proc, torch_imported = run_python("import onnxruntime", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert torch_imported
    # The submodules themselves do not need torch: building and running a training step works.
    proc, torch_imported = run_python(
        f"""
        import sys, tempfile
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_stack import mlp, X, TARGET, session, train_step
        from test_train_stack import train_artifacts
        from pathlib import Path
        paths = train_artifacts(mlp(), Path(tempfile.mkdtemp()))
        state, module, opt = session(paths)
        train_step(module, opt, X, TARGET)
        assert "torch" not in sys.modules
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert not torch_imported


def batchnorm_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    inits = {
        "W": rng.standard_normal((4, 4)),
        "scale": np.ones(4),
        "bias": np.zeros(4),
        "mean": np.full(4, 0.5),
        "var": np.full(4, 2.0),
    }
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"]),
            helper.make_node("BatchNormalization", ["h", "scale", "bias", "mean", "var"], ["y"], epsilon=1e-5),
        ],
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fact_b_batchnorm_is_always_in_training_mode(tmp_path):
    model = batchnorm_model()
    start = initial(model)
    raw_generate(model, ["W"], tmp_path, frozen=["scale", "bias", "mean", "var"])
    paths = paths_in(tmp_path)
    (bn,) = [
        n
        for n in onnx.load(paths.training_model).graph.node
        if n.op_type.startswith("BatchNorm") and "Grad" not in n.op_type
    ]
    assert bn.op_type == "BatchNormInternal"
    assert {a.name: helper.get_attribute_value(a) for a in bn.attribute}["training_mode"] == 1
    (bn_eval,) = [n for n in onnx.load(paths.eval_model).graph.node if n.op_type == "BatchNormalization"]
    assert len(bn_eval.output) == 1  # the eval model keeps the inference BatchNormalization

    state, module, opt = session(paths)
    x = np.random.default_rng(3).standard_normal((8, 4)).astype(np.float32)
    loss = train_step(module, opt, x, np.zeros((8, 4), np.float32))
    # the training forward normalises with the batch's statistics, not the stored ones
    h = x.astype(np.float64) @ start["W"]
    batch = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)
    stored = (h - 0.5) / np.sqrt(2.0 + 1e-5)
    assert loss == pytest.approx((batch**2).mean(), abs=1e-5)
    assert abs(loss - (stored**2).mean()) > 1e-2
    # frozen running statistics move anyway (momentum 0.9 towards the batch statistics) ...
    np.testing.assert_allclose(state.parameters["mean"].data, 0.9 * 0.5 + 0.1 * h.mean(0), atol=1e-5)
    assert not np.array_equal(state.parameters["var"].data, start["var"])
    # ... while frozen scale and bias do not
    assert state.parameters["scale"].data.tobytes() == start["scale"].tobytes()
    assert state.parameters["bias"].data.tobytes() == start["bias"].tobytes()


def layer_model(op: str, mask: bool = False) -> onnx.ModelProto:
    """x @ W, then a single-output LayerNormalization or Dropout(ratio) as exporters write them."""
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "W")]
    if op == "LayerNormalization":
        inits += [numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), n) for n in ("scale", "bias")]
        node = helper.make_node("LayerNormalization", ["h", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)
    else:
        inits.append(numpy_helper.from_array(np.array(0.5, np.float32), "ratio"))
        node = helper.make_node("Dropout", ["h", "ratio"], ["y", "mask"] if mask else ["y"])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def raw_generate(model: onnx.ModelProto, trainable: list[str], directory: Path, frozen: list[str] = (),
                 optimizer: str = "SGD") -> None:
    """onnxruntime's generate_artifacts as it is (quiet, MSE loss), without onnxsurgeon's preparation."""
    generate = ort.artifacts()
    directory.mkdir(parents=True, exist_ok=True)
    with ort.quiet_graph_builders():
        generate.generate_artifacts(
            model,
            requires_grad=trainable,
            frozen_params=list(frozen),
            loss=generate.LossType.MSELoss,
            optimizer=getattr(generate.OptimType, optimizer),
            artifact_directory=directory,
        )


LN_X = np.random.default_rng(5).standard_normal((3, 4)).astype(np.float32)
LN_T = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)


def dropout_free_grad_w(model: onnx.ModelProto) -> np.ndarray:
    """dloss/dW when the Dropout is the identity (inference mode)."""
    h = LN_X.astype(np.float64) @ initial(model)["W"]
    return LN_X.T @ (2 * (h - LN_T) / h.size)


def grads_after_forward(paths) -> dict[str, np.ndarray]:
    state, module, _ = session(paths)
    module.train()
    module(LN_X, LN_T)
    return {name: state.parameters[name].grad for name, _ in state.parameters}


def test_fact_c_single_output_layernorm_fails(tmp_path):
    model = layer_model("LayerNormalization")
    trainable = ["W", "scale", "bias"]
    with pytest.raises(Exception, match="OutputDefs"):
        raw_generate(model, trainable, tmp_path)
    # train's preparation declares the two optional outputs, and the gradients are right
    grads = grads_after_forward(train_artifacts(model, tmp_path / "ok", data={"x": LN_X, "target": LN_T}, adamw=False))
    start = {k: v.astype(np.float64) for k, v in initial(model).items()}

    def loss(p):
        h = LN_X.astype(np.float64) @ p["W"]
        y = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5) * p["scale"] + p["bias"]
        return ((y - LN_T) ** 2).mean()

    for name in trainable:
        numeric = np.zeros_like(start[name])
        for i in np.ndindex(numeric.shape):
            plus, minus = ({k: v.copy() for k, v in start.items()} for _ in range(2))
            plus[name][i] += 1e-6
            minus[name][i] -= 1e-6
            numeric[i] = (loss(plus) - loss(minus)) / 2e-6
        np.testing.assert_allclose(grads[name], numeric, atol=1e-5)


def test_fact_c_inference_dropout_fails_or_gets_wrong_gradients(tmp_path):
    # without a mask output: generate_artifacts fails
    with pytest.raises(Exception, match="OutputDefs"):
        raw_generate(layer_model("Dropout"), ["W"], tmp_path / "a")
    # with one: the forward is the identity, the gradient that of dropout keeping all: x 1/(1-ratio)
    model = layer_model("Dropout", mask=True)
    raw_generate(model, ["W"], tmp_path / "b")
    np.testing.assert_allclose(grads_after_forward(paths_in(tmp_path / "b"))["W"], 2 * dropout_free_grad_w(model), atol=1e-5)
    # train makes every Dropout drop while training (training_mode a constant True, the mask
    # declared; see tests/test_train_prepare.py), so neither case reaches generate_artifacts;
    # its eval model computes the identity
    h = LN_X.astype(np.float64) @ initial(model)["W"]
    for mask in (False, True):
        paths = train_artifacts(layer_model("Dropout", mask), tmp_path / f"ours-{mask}", data={"x": LN_X, "target": LN_T}, adamw=False)
        (drop,) = [n for n in onnx.load(paths.training_model).graph.node if n.op_type == "Dropout"]
        assert len(drop.input) == 3 and len(drop.output) == 2
        _, module, _ = session(paths)
        module.eval()
        assert float(np.ravel(module(LN_X, LN_T))[0]) == pytest.approx(((h - LN_T) ** 2).mean(), abs=1e-6)


def set_attributes(path: Path, out: Path, **attributes) -> Path:
    model = onnx.load(path)
    (node,) = [n for n in model.graph.node if n.op_type == "AdamWOptimizer"]
    for attr in node.attribute:
        if attr.name in attributes:
            attr.CopyFrom(helper.make_attribute(attr.name, attributes[attr.name]))
    onnx.save(model, out)
    return out


def adamw_reference(mode: str, steps: int, lr: float, eps: float, wd: float) -> dict[str, np.ndarray]:
    """mode "torch": torch.optim.AdamW; mode "hf": transformers' AdamW (ORT's adam_mode=1)."""
    b1, b2 = 0.9, 0.999
    p = {k: v.astype(np.float64) for k, v in initial(mlp()).items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t in range(1, steps + 1):
        g = mlp_grads(p)
        for k in ("W1", "b1", "W2"):
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            if mode == "torch":
                p[k] = p[k] - lr * wd * p[k]
                p[k] = p[k] - lr * (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            else:
                p[k] = p[k] - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m[k] / (np.sqrt(v[k]) + eps)
                p[k] = p[k] - lr * wd * p[k]
    return p


def test_fact_d_adamw_is_the_transformers_variant(tmp_path):
    raw_generate(mlp(), ["W1", "b1", "W2"], tmp_path / "raw", frozen=["b2"], optimizer="AdamW")
    raw = paths_in(tmp_path / "raw")
    model = onnx.load(raw.optimizer_model)
    (node,) = [n for n in model.graph.node if n.op_type == "AdamWOptimizer"]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["adam_mode"] == 1 and attrs["correct_bias"] == 1
    assert attrs["alpha"] == pytest.approx(0.9) and attrs["beta"] == pytest.approx(0.999)
    assert attrs["epsilon"] == pytest.approx(1e-6) and attrs["weight_decay"] == 0.0  # torch: 1e-8, 1e-2

    lr, wd, steps = 0.1, 0.1, 3
    results = {}
    for mode, adam_mode in (("hf", 1), ("torch", 0)):
        optimizer = set_attributes(raw.optimizer_model, tmp_path / f"{mode}.onnx", adam_mode=adam_mode, weight_decay=wd)
        state, module, opt = session(raw, optimizer)
        opt.set_learning_rate(lr)
        for _ in range(steps):
            train_step(module, opt, X, TARGET)
        results[mode] = {k: state.parameters[k].data for k in ("W1", "b1", "W2")}
    for mode in ("hf", "torch"):
        ref = adamw_reference(mode, steps, lr, 1e-6, wd)
        for k, value in results[mode].items():
            np.testing.assert_allclose(value, ref[k], rtol=0, atol=1e-6)
    # the two formulas differ well beyond float rounding
    torch_ref = adamw_reference("torch", steps, lr, 1e-6, wd)
    assert max(np.abs(results["hf"][k] - torch_ref[k]).max() for k in results["hf"]) > 1e-4
    # the artifacts train makes ask for torch's AdamW, with the settings given
    ours = train_artifacts(mlp(), tmp_path / "ours", freeze=("b2",), weight_decay=wd)
    state, module, opt = session(ours)
    opt.set_learning_rate(lr)
    for _ in range(steps):
        train_step(module, opt, X, TARGET)
    for k in ("W1", "b1", "W2"):
        np.testing.assert_allclose(state.parameters[k].data, torch_ref[k], rtol=0, atol=1e-6)


def test_fact_e_checkpoint_forgets_learning_rate_and_is_written_in_place(adamw_artifacts, tmp_path):
    api = ort.api()
    state, module, opt = session(adamw_artifacts)
    default_lr = opt.get_learning_rate()
    opt.set_learning_rate(0.05)
    train_step(module, opt, X, TARGET)
    state.properties["learning_rate"] = 0.05
    path = tmp_path / "ckpt"
    api.CheckpointState.save_checkpoint(state, path, include_optimizer_state=True)
    inode = os.stat(path).st_ino
    api.CheckpointState.save_checkpoint(state, path, include_optimizer_state=True)
    assert os.stat(path).st_ino == inode  # rewritten in place (O_TRUNC), not written aside and renamed

    reloaded = api.CheckpointState.load_checkpoint(path)
    module2 = api.Module(
        str(adamw_artifacts.training_model),
        reloaded,
        str(adamw_artifacts.eval_model),
        session_options=ort.session_options(),
    )
    opt2 = api.Optimizer(str(adamw_artifacts.optimizer_model), module2)
    assert opt2.get_learning_rate() == default_lr == pytest.approx(1e-3)  # not 0.05
    assert reloaded.properties["learning_rate"] == pytest.approx(0.05)  # user properties do survive


def test_fact_f_generate_artifacts_logs_info_unless_given_quiet_options(tmp_path):
    code = f"""
        import sys, tempfile
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_train_stack import mlp
        from onnxsurgeon.train import ort
        artifacts = ort.artifacts()  # also sets the default logger to errors only
        {{}}
        """
    raw = "artifacts.generate_artifacts(mlp(), requires_grad=['W1'], loss=artifacts.LossType.MSELoss, artifact_directory=tempfile.mkdtemp())"
    proc, _ = run_python(code.format(raw), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "[I:onnxruntime:Default, graph_transformer.cc" in proc.stderr  # INFO despite severity 3
    ours = "from pathlib import Path; from test_train_stack import train_artifacts; train_artifacts(mlp(), Path(tempfile.mkdtemp()))"
    proc, _ = run_python(code.format(ours), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""


def test_fact_g_artifact_ir_versions(tmp_path, monkeypatch):
    import onnxruntime

    model = mlp()
    model.ir_version = 7
    # the training and eval models keep the input's IR version, the optimizer model gets onnx's
    raw_generate(model, ["W1"], tmp_path / "a")
    versions = {
        f: onnx.load(tmp_path / "a" / f).ir_version
        for f in ("training_model.onnx", "eval_model.onnx", "optimizer_model.onnx")
    }
    assert versions == {"training_model.onnx": 7, "eval_model.onnx": 7, "optimizer_model.onnx": onnx.IR_VERSION}
    assert onnx.IR_VERSION == 10  # onnx 1.17; onnx >= 1.18 says 11, which onnxruntime 1.19 refuses:
    too_new = onnx.load(tmp_path / "a" / "optimizer_model.onnx")
    too_new.ir_version = 11
    with pytest.raises(Exception, match="max supported IR version: 10"):
        onnxruntime.InferenceSession(too_new.SerializeToString())

    # onnx >= 1.18 simulated: IR_VERSION 11, and a checker that accepts it
    check_model = onnx.checker.check_model

    def lenient(m, *args, **kwargs):
        if isinstance(m, onnx.ModelProto) and m.ir_version == 11:
            m = onnx.ModelProto.FromString(m.SerializeToString())
            m.ir_version = 10
        return check_model(m, *args, **kwargs)

    monkeypatch.setattr(onnx, "IR_VERSION", 11)
    monkeypatch.setattr(onnx.checker, "check_model", lenient)
    raw_generate(model, ["W1"], tmp_path / "b")
    assert onnx.load(tmp_path / "b" / "optimizer_model.onnx").ir_version == 11
    paths = train_artifacts(model, tmp_path / "ours")
    assert onnx.load(paths.optimizer_model).ir_version == 10
    session(paths)


def test_fact_h_linear_lr_scheduler_swaps_its_step_counts(adamw_artifacts):
    api = ort.api()

    def schedule(*args):
        _, module, opt = session(adamw_artifacts)
        scheduler = api.LinearLRScheduler(opt, *args)
        rates = []
        for _ in range(6):
            rates.append(opt.get_learning_rate())
            train_step(module, opt, X, TARGET)
            scheduler.step()
        return rates

    # documented as (optimizer, warmup_step_count, total_step_count, initial_lr), but the
    # binding takes (total, warmup): asking for warmup 1 of 4 steps gives warmup 4 of 1
    assert schedule(1, 4, 1.0) == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.0, 0.0])
    assert schedule(4, 1, 1.0) == pytest.approx([0.0, 1.0, 2 / 3, 1 / 3, 0.0, 0.0])
