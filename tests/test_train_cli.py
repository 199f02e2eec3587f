"""The training commands from the command line: train, eval, run, transfer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxsurgeon as osg
from onnxsurgeon import runtime

sys.path.insert(0, str(Path(__file__).parent))
from test_train import DATA, frozen_front, two_heads  # noqa: E402
from test_train_stack import mlp  # noqa: E402


@pytest.fixture
def files(tmp_path):
    osg.save(mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "train.npz", **DATA)
    return tmp_path


def test_train_writes_model_log_and_summary(cli, files):
    out = files / "trained.onnx"
    code, stdout, err = cli(
        "train", files / "mlp.onnx", "--data", files / "train.npz", "--val", files / "train.npz",
        "--loss", "ce(y, labels)", "--metric", "error(y, labels)", "--optimizer", "sgd", "--lr", "0.1",
        "--momentum", "0.9", "--epochs", "3", "--batch-size", "8", "--checkpoint-dir", files / "ckpt", "-o", out,
        "--plot", files / "loss.png",
    )
    assert code == 0, err
    assert out.exists() and "wrote" in stdout and "15 steps in all" in stdout and "val loss" in stdout
    assert "loss per epoch: " in stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in err and not (files / "loss.png").exists()
    else:
        assert (files / "loss.png").exists()
    events = [json.loads(line) for line in (files / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("step") == 15 and [e["event"] for e in events].count("epoch") == 3
    assert sorted(p.name for p in (files / "ckpt").iterdir()) == [
        "metrics.jsonl", "step-000000005.ckpt", "step-000000010.ckpt", "step-000000015.ckpt"]
    original = osg.load(files / "mlp.onnx")
    assert osg.load(out).graph.node == original.graph.node
    # resume with more epochs in all, as JSON
    code, stdout, err = cli(
        "train", files / "mlp.onnx", "--data", files / "train.npz", "--loss", "ce(y, labels)", "--metric", "error(y, labels)",
        "--val", files / "train.npz", "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--epochs", "4", "--batch-size", "8",
        "--checkpoint-dir", files / "ckpt", "--resume", "--keep", "all", "-o", out, "--json", "--force",
    )
    assert code == 0, err
    report = json.loads(stdout)
    assert report["steps"] == 20 and report["steps_run"] == 5 and report["resumed_from"].endswith("step-000000015.ckpt")
    assert len(report["history"]) == 4 and report["plan"]["trainable"] == ["W1", "W2", "b1", "b2"]


def test_train_dry_run_and_errors(cli, files):
    out = files / "never.onnx"
    base = ["train", files / "mlp.onnx", "--data", files / "train.npz"]
    code, stdout, _ = cli(*base, "--loss", "ce(y, labels)", "-o", out, "--dry-run")
    assert code == 0 and "trained: 4 parameters" in stdout and "40 examples" in stdout and not out.exists()
    code, _, err = cli(*base, "--loss", "ce(y, lables)", "-o", out)
    assert code == 2 and "did you mean 'labels'" in err and not out.exists()
    code, _, err = cli(*base, "--loss", "ce(y, labels", "-o", out)
    assert code == 2 and "syntax error" in err
    code, _, err = cli(*base, "--loss", "ce(y, labels)", "-o", out, "--resume")
    assert code == 2 and "--checkpoint-dir" in err
    code, _, err = cli(*base, "--loss", "ce(y, labels)", "-o", out, "--optimizer", "rmsprop")
    assert code == 2 and "unknown optimizer 'rmsprop'" in err
    code, _, err = cli(*base, "--loss", "ce(y, labels)", "-o", files / "mlp.onnx")
    assert code == 2 and "is the input model" in err
    assert not out.exists() and not list(files.glob("*.metrics.jsonl"))


def test_kl_adaptation_from_the_command_line(cli, tmp_path):
    osg.save(two_heads(), tmp_path / "kl.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3)).astype(np.float32)
    labels = np.eye(4, dtype=np.float32)[(x[:, 0] > 0) * 2 + (x[:, 1] > 0)]
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    code, stdout, err = cli(
        "train", tmp_path / "kl.onnx", "--data", tmp_path / "d.npz", "--loss", "ce(0.1 * labels + 0.9 * softmax(zRef), z)",
        "--optimizer", "adamw", "--lr", "0.05", "--epochs", "6", "--batch-size", "16", "-o", tmp_path / "out.onnx", "--json",
    )
    assert code == 0, err
    report = json.loads(stdout)
    losses = [e["loss"] for e in report["history"]]
    assert losses[-1] < losses[0]
    assert report["plan"]["trainable"] == ["W"] and report["plan"]["frozen"] == ["R"]
    assert report["objective"]["notes"] == ["ce: took z as the scores (only it depends on trained parameters) and the first argument as the target"]


def test_feature_extractor_reaches_accuracy(cli, tmp_path):
    """A frozen encoder (constant piece) with a new head, on a task its features separate."""
    model = frozen_front()
    osg.save(model, tmp_path / "fe.onnx")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    feats = _features(x)
    labels = (feats @ rng.standard_normal((16, 3))).argmax(1)
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    code, _, err = cli(
        "train", tmp_path / "fe.onnx", "--data", tmp_path / "d.npz", "--loss", "ce(z, labels)", "--optimizer", "adam",
        "--lr", "0.05", "--epochs", "30", "--batch-size", "30", "-o", tmp_path / "t.onnx", "--quiet",
    )
    assert code == 0, err
    code, stdout, err = cli("eval", tmp_path / "t.onnx", "--data", tmp_path / "d.npz", "--metric", "error(z, labels)", "--metric", "ce(z, labels)", "--json")
    assert code == 0, err
    metrics = json.loads(stdout)["metrics"]
    assert metrics["error(z, labels)"] <= 0.1  # stated accuracy: at least 90 %


def _features(x: np.ndarray) -> np.ndarray:
    source = osg.load(Path(__file__).resolve().parents[1] / "fixtures" / "autoencoder.onnx")
    piece, _ = osg.extract(source, inputs=["input"], outputs=["L4_y"])
    return runtime.session(piece).run(None, {"input": x})[0]


def test_eval_and_run(cli, files):
    code, stdout, err = cli("eval", files / "mlp.onnx", "--data", files / "train.npz", "--metric", "error(y, labels)", "--json")
    assert code == 0, err
    y = runtime.session(mlp()).run(None, {"x": DATA["x"]})[0]
    assert json.loads(stdout)["metrics"]["error(y, labels)"] == pytest.approx((y.argmax(1) != DATA["labels"]).mean())
    code, stdout, err = cli("run", files / "mlp.onnx", "--data", files / "train.npz", "-o", files / "out.npz", "--batch-size", "7")
    assert code == 0, err
    with np.load(files / "out.npz") as f:
        np.testing.assert_allclose(f["y"], y, rtol=1e-6)
    code, stdout, err = cli("run", files / "mlp.onnx", "--data", files / "train.npz", "-o", files / "o3.npz", "--dry-run", "--out", "h2")
    assert code == 0 and "would write: h2 float32[40, 4]" in stdout and not (files / "o3.npz").exists()
    code, _, err = cli("run", files / "mlp.onnx", "--data", files / "missing.npz", "-o", files / "o2.npz")
    assert code == 2 and "no such file" in err and not (files / "o2.npz").exists()


def test_transfer_table_maps_and_strict(cli, files):
    src = mlp()
    for t in src.graph.initializer:
        t.name = "old." + t.name
    for n in src.graph.node:
        n.input[:] = ["old." + i if i in ("W1", "b1", "W2", "b2") else i for i in n.input]
    osg.save(src, files / "src.onnx")
    dst = mlp()
    for t in dst.graph.initializer:
        if t.name == "b2":
            t.dims[:] = [2]
    osg.save(dst, files / "dst.onnx")
    code, stdout, err = cli("transfer", "--from", files / "src.onnx", "--to", files / "dst.onnx", "-o", files / "o.onnx", "--strict")
    assert code == 1 and "MISSING" in stdout and "UNEXPECTED" in stdout and "nothing written" in err
    assert not (files / "o.onnx").exists()
    code, stdout, err = cli("transfer", "--from", files / "src.onnx", "--to", files / "dst.onnx", "--map", "old.*=*", "-o", files / "o.onnx", "--strict", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["complete"] and {m["how"] for m in report["matched"]} == {"map"}
    # from a checkpoint
    cli("train", files / "mlp.onnx", "--data", files / "train.npz", "--loss", "ce(y, labels)", "--checkpoint-dir", files / "c", "-o", files / "t.onnx", "-q")
    (ckpt,) = (files / "c").glob("*.ckpt")
    code, stdout, err = cli("transfer", "--from", ckpt, "--to", files / "mlp.onnx", "-o", files / "from_ckpt.onnx", "--json")
    assert code == 0, err
    trained = {t.name: t.raw_data for t in osg.load(files / "t.onnx").graph.initializer}
    copied = {t.name: t.raw_data for t in osg.load(files / "from_ckpt.onnx").graph.initializer}
    assert copied == trained


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_checkpoints_and_exits_130(files, signame):
    """Ctrl-C, and SIGTERM (kill, timeout, a scheduler preempting the job), finish the step,
    write a checkpoint and exit 130 with a message; nothing is lost since the last one."""
    import os
    import signal
    import subprocess
    import time

    root = Path(__file__).resolve().parents[1]
    out = files / "t.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxsurgeon", "train", str(files / "mlp.onnx"), "--data", str(files / "train.npz"),
         "--loss", "ce(y, labels)", "--epochs", "100000", "--batch-size", "8", "--checkpoint-dir", str(files / "c"), "-o", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )
    log = files / "c" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.exists() and log.read_text().count('"step"') > 3):
        time.sleep(0.05)
    proc.send_signal(getattr(signal, signame))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "Traceback" not in err
    assert not out.exists() and list((files / "c").glob("step-*.ckpt"))


def test_train_and_transfer_outputs_pass_the_checker(cli, files):
    """SPEC section 6: every model written passes the checker, the trained and the transferred too."""
    import onnx

    code, _, err = cli("train", files / "mlp.onnx", "--data", files / "train.npz", "--loss", "ce(y, labels)", "-o", files / "t.onnx", "-q")
    assert code == 0, err
    code, _, err = cli("transfer", "--from", files / "t.onnx", "--to", files / "mlp.onnx", "-o", files / "x.onnx", "-q")
    assert code == 0, err
    for name in ("t.onnx", "x.onnx"):
        onnx.checker.check_model(osg.load(files / name), full_check=True)


def test_a_broken_write_back_is_a_bug_not_a_file(files, monkeypatch):
    """The trained model and a transfer's result go through onnx.checker before they are
    returned: a bug that builds an invalid one is exit 4 with the checker's words, and no
    file appears (SPEC section 6)."""
    from onnxsurgeon import checks
    from onnxsurgeon.cli import main
    from onnxsurgeon.train import transfer, weights
    from onnxsurgeon.train.loop import TrainSettings, train

    real = weights.write_back

    def broken(model, *args, **kw):  # a bug: a node reads a value nothing produces
        out = real(model, *args, **kw)
        out.graph.node[0].input[0] = "nowhere"
        return out

    monkeypatch.setattr(weights, "write_back", broken)
    with pytest.raises(checks.InvalidResult, match="onnxsurgeon built a trained model that onnx.checker refuses: .*nowhere"):
        train(mlp(), DATA, TrainSettings(loss="ce(y, labels)"))
    with pytest.raises(checks.InvalidResult, match="onnxsurgeon built a model with transferred parameters that onnx.checker refuses"):
        transfer.transfer(mlp(), mlp())
    out = files / "t.onnx"
    code = main(["train", str(files / "mlp.onnx"), "--data", str(files / "train.npz"), "--loss", "ce(y, labels)", "-o", str(out), "-q"])
    assert code == 4 and not out.exists()
    code = main(["transfer", "--from", str(files / "mlp.onnx"), "--to", str(files / "mlp.onnx"), "-o", str(out), "-q"])
    assert code == 4 and not out.exists()


def test_transfer_into_a_model_that_fails_the_checker_warns(cli, files):
    """Same rule as extract: when the model given already fails the checker, the result
    inherits its problem, and a warning says so instead of exit 4."""
    from onnx import helper

    dst = mlp()
    dst.graph.node[0].attribute.append(helper.make_attribute("bogus", 1))  # the checker refuses it
    osg.save(dst, files / "dst.onnx")
    code, stdout, err = cli("transfer", "--from", files / "mlp.onnx", "--to", files / "dst.onnx", "-o", files / "o.onnx", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert any("nor does the model it comes from" in w for w in report["warnings"]) and (files / "o.onnx").exists()
