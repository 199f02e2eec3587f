"""The data layer of train, eval and run: arrays fed whole (--fixed), examples on another
axis (--batch-axis), on an LSTM with an initial state and on Silero VAD."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon.errors import InputError
from onnxsurgeon.train.data import Layout
from onnxsurgeon.train.evaluate import evaluate, run
from onnxsurgeon.train.loop import TrainSettings, train
from onnxsurgeon.train.optim import OptimizerSettings

sys.path.insert(0, str(Path(__file__).parent))
from corpus import FETCH_DIR  # noqa: E402


def lstm_h0(seed: int = 0, inp: int = 3, hid: int = 4) -> onnx.ModelProto:
    """An LSTM over x [T, N, 3] (time first, as ONNX's LSTM) from a given h0 [1, N, 4], and
    a dense head on the last state: z [N, 1]. Both inputs hold the examples on axis 1."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32), name)

    nodes = [
        helper.make_node("LSTM", ["x", "W", "R", "B", "", "h0"], ["", "hn"], hidden_size=hid),
        helper.make_node("Squeeze", ["hn", "zero"], ["h"]),
        helper.make_node("MatMul", ["h", "V"], ["hv"]),
        helper.make_node("Add", ["hv", "c"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes, "rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", inp]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "N", hid])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, "N", hid])],
        [init("W", 1, 4 * hid, inp), init("R", 1, 4 * hid, hid), init("B", 1, 8 * hid), init("V", hid, 1), init("c", 1),
         numpy_helper.from_array(np.array([0], np.int64), "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def lstm_data(n: int = 10) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, n, 3)).astype(np.float32)
    return {"x": x, "h0": rng.standard_normal((1, n, 4)).astype(np.float32) * 0.1, "t": x.sum((0, 2))[:, None] * 0.1}


LSTM_AXES = (("x", 1), ("h0", 1))


def test_lstm_with_h0_trains_evaluates_and_runs_in_batches():
    model, data = lstm_h0(), lstm_data()
    settings = TrainSettings(loss="mse(z, t)", batch_size=4, epochs=6, batch_axes=dict(LSTM_AXES), seed=3,
                             optimizer=OptimizerSettings("sgd", lr=0.1))
    trained, report = train(model, data, settings)
    losses = [e.loss for e in report.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert report.data.examples == 10 and report.to_dict()["data"]["layout"] == {"fixed": [], "batch_axes": {"h0": 1, "x": 1}}
    # the batches really hold different examples: h0's axis 1 was sliced with x's
    whole = evaluate(trained, data, ["mse(z, t)"], batch_size=10, batch_axes=LSTM_AXES)
    batched = evaluate(trained, data, ["mse(z, t)"], batch_size=3, batch_axes=LSTM_AXES)
    assert batched.metrics[0][1] == pytest.approx(whole.metrics[0][1], rel=1e-6)
    assert whole.to_dict()["layout"]["batch_axes"] == {"h0": 1, "x": 1}
    inputs = {k: data[k] for k in ("x", "h0")}
    one = run(trained, inputs, batch_axes=LSTM_AXES)
    parts = run(trained, inputs, batch_size=3, batch_axes=(*LSTM_AXES, ("hn", 1)))
    assert parts["hn"].shape == (1, 10, 4) and parts["z"].shape == (10, 1)
    for k in one:
        np.testing.assert_allclose(parts[k], one[k], rtol=1e-6, atol=1e-7)
    # without the layout the same data is refused with the way out
    with pytest.raises(InputError) as e:
        train(model, data, TrainSettings(loss="mse(z, t)", batch_size=4))
    assert "--batch-axis h0=1" in str(e.value) and "x has 5, h0 has 1, t has 10" in str(e.value)
    # an output whose examples lie on axis 1 is not joined on axis 0
    with pytest.raises(InputError, match="--batch-axis hn=AXIS"):
        run(trained, inputs, batch_size=3, batch_axes=LSTM_AXES)


def test_layout_in_the_checkpoint_and_the_command_line(cli, tmp_path):
    osg.save(lstm_h0(), tmp_path / "rnn.onnx")
    np.savez(tmp_path / "d.npz", **lstm_data(), note=np.zeros(3))
    base = ["train", tmp_path / "rnn.onnx", "--data", tmp_path / "d.npz", "--loss", "mse(z, t)", "--batch-size", "4",
            "--optimizer", "sgd", "--lr", "0.1", "--checkpoint-dir", tmp_path / "ck", "-o", tmp_path / "t.onnx"]
    code, stdout, err = cli(*base, "--batch-axis", "x=1", "--batch-axis", "h0=1", "--dry-run", "--json")
    assert code == 0, err
    assert json.loads(stdout)["data"]["layout"] == {"fixed": [], "batch_axes": {"h0": 1, "x": 1}}
    code, _, err = cli(*base, "--batch-axis", "x=1", "--batch-axis", "h0=1", "--max-steps", "2", "--quiet")
    assert code == 0, err
    code, _, err = cli(*base, "--batch-axis", "x=1", "--batch-axis", "h0=1", "--fixed", "note", "--resume", "--epochs", "2")
    assert code == 2 and "other settings" in err and "fixed [] (now ['note'])" in err
    code, _, err = cli(*base, "--batch-axis", "x=1", "--batch-axis", "h0=1", "--resume", "--epochs", "2", "--quiet")
    assert code == 0, err
    # typos are named, with the way to write it
    code, _, err = cli(*base, "--batch-axis", "X=1", "--batch-axis", "h0=1", "--dry-run")
    assert code == 2 and "--batch-axis 'X': the data holds no array of that name; did you mean 'x'?" in err
    code, _, err = cli(*base, "--batch-axis", "x:1", "--dry-run")
    assert code == 2 and "is not NAME=AXIS" in err
    code, _, err = cli(*base, "--batch-axis", "x=1", "--fixed", "x", "--dry-run")
    assert code == 2 and "both as --fixed and --batch-axis" in err
    # eval and run take the same options
    code, stdout, err = cli("eval", tmp_path / "t.onnx", "--data", tmp_path / "d.npz", "--metric", "mse(z, t)", "--batch-size", "3",
                            "--batch-axis", "x=1", "--batch-axis", "h0=1", "--json")
    assert code == 0, err
    assert json.loads(stdout)["layout"]["batch_axes"] == {"h0": 1, "x": 1}
    code, stdout, err = cli("run", tmp_path / "t.onnx", "--data", tmp_path / "d.npz", "-o", tmp_path / "o.npz", "--batch-size", "3",
                            "--batch-axis", "x=1", "--batch-axis", "h0=1", "--batch-axis", "hn=1", "--json")
    assert code == 0, err
    assert json.loads(stdout)["outputs"] == {"z": "float32[10, 1]", "hn": "float32[1, 10, 4]"}


def test_fixed_array_is_fed_whole_and_checked_whole():
    model, data = lstm_h0(), lstm_data()
    h0 = data["h0"][:, :1]  # one initial state for every example: [1, 1, 4] fed whole
    shared = dict(data, h0=h0)
    # h0's dim 1 is N, the batch's: a whole array cannot follow it; said before onnxruntime fails
    with pytest.raises(InputError, match="'h0' is --fixed, but its dim 1 is 'N', the examples' axis of 'x'"):
        train(model, shared, TrainSettings(loss="mse(z, t)", batch_size=4, fixed=("h0",), batch_axes=(("x", 1),)))
    with pytest.raises(InputError, match="every array of the data is --fixed"):
        run(model, {"x": data["x"], "h0": data["h0"]}, fixed=("x", "h0"))
    scalar = dict(data, h0=np.float32(0.0))
    with pytest.raises(InputError, match="if it is not per example, give --fixed h0"):
        train(model, scalar, TrainSettings(loss="mse(z, t)", batch_size=4, batch_axes=(("x", 1),)))


def test_layout_parse():
    assert Layout.parse(["sr"], ["state=1", "a=b=2"]).batch_axes == (("state", 1), ("a=b", 2))
    for bad in (["x"], ["x=-1"], ["=1"]):
        with pytest.raises(InputError):
            Layout.parse((), bad)


SILERO = sorted(FETCH_DIR.glob("silero-vad-*"))


@pytest.mark.skipif(not SILERO, reason="silero-vad is not fetched (python scripts/fetch_corpus.py)")
def test_silero_vad_runs_and_evaluates_in_batches(cli, tmp_path):
    """Silero VAD: a sample rate scalar fed whole, a state [2, N, 128] with the examples on axis 1."""
    model = SILERO[-1] / "silero_vad_op18_ifless.onnx"
    rng = np.random.default_rng(0)
    n = 7
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((n, 512)).astype(np.float32) * 0.1,
             state=rng.standard_normal((2, n, 128)).astype(np.float32) * 0.1, sr=np.array(16000), target=rng.random((n, 1)))
    layout = ["--fixed", "sr", "--batch-axis", "state=1"]
    code, _, err = cli("run", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "whole.npz", *layout)
    assert code == 0, err
    code, _, err = cli("run", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "parts.npz", "--batch-size", "3",
                       "--batch-axis", "stateN=1", *layout)
    assert code == 0, err
    with np.load(tmp_path / "whole.npz") as whole, np.load(tmp_path / "parts.npz") as parts:
        assert parts["stateN"].shape == (2, n, 128)
        for k in ("output", "stateN"):
            np.testing.assert_allclose(parts[k], whole[k], rtol=1e-5, atol=1e-6)
    metric = ["--metric", "mse(output, target)", "--json"]
    results = []
    for b in ("7", "2"):
        code, stdout, err = cli("eval", model, "--data", tmp_path / "d.npz", "--batch-size", b, *layout, *metric)
        assert code == 0, err
        results.append(json.loads(stdout)["metrics"]["mse(output, target)"])
    assert results[1] == pytest.approx(results[0], rel=1e-5)
    code, _, err = cli("run", model, "--data", tmp_path / "d.npz", "-o", tmp_path / "x.npz", "--batch-size", "3")
    assert code == 2 and "--fixed sr" in err
    # and it trains: its If on sr is decided by the value fed whole
    train_args = ["--loss", "mse(output, target)", "--batch-size", "4", "--optimizer", "sgd", "--lr", "0.5", "--epochs", "3"]
    code, stdout, err = cli("train", model, "--data", tmp_path / "d.npz", *layout, *train_args, "-o", tmp_path / "t.onnx")
    assert code == 0, err
    code, stdout, err = cli("eval", tmp_path / "t.onnx", "--data", tmp_path / "d.npz", *layout, *metric)
    assert code == 0, err
    assert json.loads(stdout)["metrics"]["mse(output, target)"] < results[0]


@pytest.mark.skipif(not SILERO, reason="silero-vad is not fetched (python scripts/fetch_corpus.py)")
def test_silero_vad_trains_with_its_state_fixed(cli, tmp_path):
    """Silero VAD's sequence model: the LSTM state h, c [1, 1, 128] is fed whole at every step."""
    model = SILERO[-1] / "silero_vad_16k_sequence.onnx"
    rng = np.random.default_rng(0)
    n = 8
    np.savez(tmp_path / "d.npz", input=rng.standard_normal((n, 576)).astype(np.float32) * 0.1,
             h=np.zeros((1, 1, 128), np.float32), c=np.zeros((1, 1, 128), np.float32), target=(rng.random(n) > 0.5))
    args = ["--data", tmp_path / "d.npz", "--fixed", "h", "--fixed", "c"]
    code, before, err = cli("eval", model, *args, "--metric", "mse(speech_probs, target)", "--json")
    assert code == 0, err
    code, stdout, err = cli("train", model, *args, "--loss", "mse(speech_probs, target)", "--batch-size", "4",
                            "--optimizer", "sgd", "--lr", "0.5", "--epochs", "3", "-o", tmp_path / "t.onnx", "--json")
    assert code == 0, err
    assert json.loads(stdout)["data"]["layout"]["fixed"] == ["c", "h"]
    code, after, err = cli("eval", tmp_path / "t.onnx", *args, "--metric", "mse(speech_probs, target)", "--json")
    assert code == 0, err
    assert json.loads(after)["metrics"]["mse(speech_probs, target)"] < json.loads(before)["metrics"]["mse(speech_probs, target)"]


# ---------------------------------------------------------------- data files: folders, several files, on disk


def _mlp_files(tmp_path):
    from test_train import DATA
    from test_train_stack import mlp

    osg.save(mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "one.npz", **DATA)
    (tmp_path / "folder").mkdir()
    for k, v in DATA.items():
        np.save(tmp_path / "folder" / f"{k}.npy", v)
    np.savez(tmp_path / "part1.npz", **{k: v[:15] for k, v in DATA.items()})
    np.savez(tmp_path / "part2.npz", **{k: v[15:] for k, v in DATA.items()})
    np.savez(tmp_path / "feat.npz", x=DATA["x"])
    np.save(tmp_path / "labels.npy", DATA["labels"])
    return DATA


def test_every_data_form_trains_to_the_same_bits(cli, tmp_path):
    """One .npz, a folder of .npy, two shards, a glob, features and labels in two files:
    the same data set, the same epoch order, the same trained model bit for bit."""
    _mlp_files(tmp_path)
    forms = {
        "npz": ["one.npz"], "folder": ["folder"], "shards": ["part1.npz", "part2.npz"], "glob": [str(tmp_path / "part*.npz")],
        "columns": ["feat.npz", "labels.npy"],
    }
    digests = {}
    for name, files in forms.items():
        data = [a for f in files for a in ("--data", f if name == "glob" else tmp_path / f)]
        code, stdout, err = cli("train", tmp_path / "mlp.onnx", *data, "--loss", "ce(y, labels)", "--optimizer", "sgd", "--lr", "0.1",
                                "--momentum", "0.9", "--epochs", "2", "--batch-size", "8", "--seed", "1",
                                "-o", tmp_path / f"{name}.onnx", "--json")
        assert code == 0, (name, err)
        assert json.loads(stdout)["data"]["examples"] == 40
        digests[name] = (tmp_path / f"{name}.onnx").read_bytes()
    assert len(set(digests.values())) == 1
    code, _, err = cli("eval", tmp_path / "mlp.onnx", "--data", tmp_path / "part1.npz", "--data", tmp_path / "feat.npz",
                       "--metric", "error(y, labels)")
    assert code == 2 and "disagree on the number of examples" in err
    code, _, err = cli("eval", tmp_path / "mlp.onnx", "--data", str(tmp_path / "nothing*.npz"), "--metric", "error(y, labels)")
    assert code == 2 and "no file matches" in err


def test_arrays_stay_on_disk_and_batches_read_their_rows(tmp_path):
    from onnxsurgeon import datafiles

    rng = np.random.default_rng(5)
    a = rng.standard_normal((9, 4, 3)).astype(np.float32)
    f = np.asfortranarray(rng.standard_normal((9, 2)))
    np.savez(tmp_path / "d.npz", a=a, f=f, s=np.array(16000), e=np.zeros((0, 3)))
    np.save(tmp_path / "a.npy", a)
    opened = datafiles.open_data(tmp_path / "d.npz")
    assert isinstance(opened["a"], datafiles.FileArray) and isinstance(opened["f"], np.memmap)
    assert int(opened["s"]) == 16000 and opened["e"].shape == (0, 3)
    idx = np.array([7, 0, 3, 3, 8, 1])
    for arr in (opened["a"], datafiles.open_data(tmp_path / "a.npy")["a"]):
        for axis in range(3):
            i = idx % a.shape[axis]
            np.testing.assert_array_equal(datafiles.take(arr, i, axis), np.take(a, i, axis=axis))
        np.testing.assert_array_equal(np.asarray(arr), a)
    np.testing.assert_array_equal(datafiles.take(opened["f"], idx, 0), f[idx])
    # a compressed member is read whole, and said so above the threshold
    np.savez_compressed(tmp_path / "c.npz", a=a)
    small = datafiles.open_data(tmp_path / "c.npz")
    assert isinstance(small["a"], np.ndarray) and not small.warnings
    old, datafiles.COMPRESSED_WARN = datafiles.COMPRESSED_WARN, 100
    try:
        assert "is compressed: it is read whole" in datafiles.open_data(tmp_path / "c.npz").warnings[0]
    finally:
        datafiles.COMPRESSED_WARN = old


def test_crafted_data_files_are_refused(tmp_path):
    from onnxsurgeon import datafiles

    x = np.zeros((3, 4), np.float32)
    np.save(tmp_path / "x.npy", x)
    raw = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "big.npy").write_bytes(raw.replace(b"(3, 4)", b"(9, 4)"))  # the header claims more than is there
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "short.npy").write_bytes(raw[:5])
    np.savez(tmp_path / "z.npz", x=x)
    z = bytearray((tmp_path / "z.npz").read_bytes())
    z[0:4] = b"XXXX"  # the local header is gone, the central directory still points at it
    (tmp_path / "nolocal.npz").write_bytes(bytes(z))
    expected = {"big.npy": "header says", "obj.npy": "never unpickled", "short.npy": "not a readable .npy",
                "nolocal.npz": "no local header"}
    for name, message in expected.items():
        with pytest.raises(InputError, match=message):
            datafiles.open_data(tmp_path / name)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no .npy files"):
        datafiles.open_data(tmp_path / "empty")


def test_crafted_and_damaged_npz_through_run(cli, tmp_path):
    """The crafted files of the fuzz test, and random damage, through run (the reader of
    train, eval and run): exit 2, never a traceback (the cli fixture checks)."""
    from test_fuzz import crafted_npz, mutate

    from onnxsurgeon.serde import load

    shutil_model = tmp_path / "ae.onnx"
    osg.save(load(Path(__file__).resolve().parents[1] / "fixtures" / "autoencoder.onnx"), shutil_model)
    for name in crafted_npz(tmp_path)[:6]:
        code, _, err = cli("run", shutil_model, "--data", tmp_path / name, "-o", tmp_path / "o.npz", "-q")
        assert code == 2, (name, err)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "plain.npz", input=x)
    base = (tmp_path / "plain.npz").read_bytes()
    for k in range(40):
        _, data = mutate(base, rng)
        (tmp_path / "m.npz").write_bytes(data)
        code, _, err = cli("run", shutil_model, "--data", tmp_path / "m.npz", "-o", tmp_path / "o.npz", "-q")
        assert code in (0, 2), err


def test_run_streams_its_outputs(tmp_path):
    from onnxsurgeon.train.evaluate import run_to_file

    model, data = lstm_h0(), lstm_data(23)
    inputs = {k: data[k] for k in ("x", "h0")}
    axes = (*LSTM_AXES, ("hn", 1))
    whole = run(model, inputs, batch_axes=LSTM_AXES)
    shapes = run_to_file(model, inputs, tmp_path / "o.npz", batch_size=4, batch_axes=axes)
    assert shapes == {"z": "float32[23, 1]", "hn": "float32[1, 23, 4]"}
    assert [p.name for p in tmp_path.iterdir()] == ["o.npz"]  # no scratch left
    with np.load(tmp_path / "o.npz") as f:
        for k in whole:
            np.testing.assert_allclose(f[k], whole[k], rtol=1e-6, atol=1e-7)
    assert run_to_file(model, inputs, tmp_path / "dry.npz", batch_size=4, batch_axes=axes, write=False) == shapes
    assert not (tmp_path / "dry.npz").exists()
    with pytest.raises(InputError, match="--batch-axis hn=AXIS"):
        run_to_file(model, inputs, tmp_path / "bad.npz", batch_size=4, batch_axes=LSTM_AXES)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz"]
