"""Big models: weights stay on disk until needed, so memory follows the piece."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import serde


def _chain(n_layers: int, width: int) -> onnx.ModelProto:
    """x -> n_layers x (MatMul W_i, Add b_i, Relu) -> y, weights of width x width floats."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(n_layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"layers.{i}.W"), numpy_helper.from_array(np.zeros(width, np.float32), f"layers.{i}.b")]
        nodes += [
            helper.make_node("MatMul", [prev, f"layers.{i}.W"], [f"l{i}.o"]),
            helper.make_node("Add", [f"l{i}.o", f"layers.{i}.b"], [f"l{i}.z"]),
            helper.make_node("Relu", [f"l{i}.z"], [f"l{i}.y"]),
        ]
        prev = f"l{i}.y"
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", width])
    y = helper.make_tensor_value_info(prev, onnx.TensorProto.FLOAT, ["N", width])
    return helper.make_model(helper.make_graph(nodes, "chain", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def lazy(monkeypatch):
    """Read every model file lazily, leaving tensors of 1 KB or more in the file."""
    monkeypatch.setattr(serde, "LAZY_FILE_SIZE", 0)
    monkeypatch.setattr(serde, "LAZY_TENSOR_SIZE", 1024)


def test_lazy_read_leaves_weights_in_the_file(lazy, fixture_path, tmp_path):
    path = fixture_path("autoencoder.onnx")
    model = osg.load(path)
    big = [t for t in model.graph.initializer if serde.is_external(t)]
    assert {t.name for t in big} >= {"L1.W", "L2.W", "result.W"}
    assert all(dict((e.key, e.value) for e in t.external_data)["location"] == str(path.resolve()) for t in big)
    eager = onnx.load(str(path))
    for t in model.graph.initializer:
        np.testing.assert_array_equal(serde.to_array(t), numpy_helper.to_array(next(e for e in eager.graph.initializer if e.name == t.name)))
    piece, _ = osg.extract(model, inputs=["L2.y"], outputs=["L5.y"])
    assert osg.verify(eager, piece).ok
    for external in (False, True):
        out = tmp_path / f"piece{external}.onnx"
        osg.save(piece, out, external_data=external)
        written = onnx.load(str(out))
        onnx.checker.check_model(written, full_check=True)
        assert osg.verify(eager, written).ok


def test_lazy_read_refuses_a_damaged_file(lazy, fixture_path, tmp_path):
    data = fixture_path("autoencoder.onnx").read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(osg.InputError, match="not an ONNX model"):
        osg.load(bad)


# Peak resident memory of a process that imports what a cut needs and does nothing else.
# (VmHWM, not ru_maxrss: the latter survives exec and would report the test runner's peak.)
BASELINE = (
    "import onnxsurgeon.cut, onnxsurgeon.serde, onnx.shape_inference; "
    "print(int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024)"
)


def test_memory_follows_the_piece(tmp_path):
    """A 300 MB inline model, a cut holding 4 MB of weights: peak memory stays far below the
    model's size (the whole file is never held in memory)."""
    model = _chain(n_layers=75, width=1000)  # 75 x 4 MB
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path))
    assert path.stat().st_size > serde.LAZY_FILE_SIZE
    script = textwrap.dedent(
        f"""
        import onnxsurgeon as osg
        m = osg.load({str(path)!r})
        piece, report = osg.extract(m, inputs=["l40.y"], outputs=["l41.y"])
        osg.save(piece, {str(tmp_path / 'piece.onnx')!r})
        hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM"))
        print(report.parameter_bytes, int(hwm.split()[1]) * 1024)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    piece_bytes, peak = int(out[0]), int(out[1])
    baseline = subprocess.run(
        [sys.executable, "-c", BASELINE],
        capture_output=True, text=True, check=True,
    ).stdout
    assert 4_004_000 <= piece_bytes < 4_010_000
    assert peak - int(baseline) < piece_bytes * 3 + 50_000_000, (peak, baseline)
    piece = osg.load(tmp_path / "piece.onnx")
    x = {"l40.y": np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)}
    from onnxsurgeon import runtime

    (got,) = runtime.session(piece).run(None, x)
    w = serde.to_array(next(t for t in piece.graph.initializer if t.name == "layers.41.W"))
    np.testing.assert_allclose(got, np.maximum(x["l40.y"] @ w, 0), rtol=1e-5, atol=1e-5)


def test_info_sizes_a_cut_before_making_it(cli, fixture_path):
    import json

    code, out, _ = cli("info", fixture_path("autoencoder_external/autoencoder.onnx"), "--in", "input", "--out", "L4_y", "--json")
    assert code == 0
    piece = json.loads(out)["piece"]
    assert piece["nodes"] == 12 and piece["parameters"] == 8
    assert piece["weight_bytes"] == 4 * (64 * 48 + 48 + 48 * 32 + 32 + 32 * 24 + 24 + 24 * 16 + 16)
    assert piece["memory_bytes"] < piece["weight_bytes"]  # weights are streamed one at a time


@pytest.mark.parametrize("kernel", ["copy_file_range", "no copy_file_range", "EXDEV"])
def test_external_bytes_are_copied_exactly(kernel, fixture_path, tmp_path, monkeypatch):
    # External to external: the kernel copies the bytes where it can; elsewhere (another
    # OS, across file systems) they are read and written a buffer at a time.
    import errno
    import os

    if kernel == "no copy_file_range":
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    elif kernel == "EXDEV":
        def refuse(*args):
            raise OSError(errno.EXDEV, "cross-device link")
        monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    monkeypatch.setattr(serde, "COPY_CHUNK", 5000)  # several chunks per tensor
    model = osg.load(fixture_path("autoencoder_external/autoencoder.onnx"))
    osg.save(model, tmp_path / "copy.onnx", external_data=True)
    copy = osg.load(tmp_path / "copy.onnx")
    want = {t.name: serde.to_array(t) for t in model.graph.initializer}
    got = {t.name: serde.to_array(t) for t in copy.graph.initializer}
    assert want.keys() == got.keys() and all(np.array_equal(want[k], got[k]) for k in want)
    offsets = [int(serde._external_info(t)["offset"]) for t in copy.graph.initializer if serde.is_external(t)]
    assert offsets and all(o % 64 == 0 for o in offsets)


def test_truncated_external_data_is_refused_when_copied(fixture_path, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(fixture_path("autoencoder_external"), src)
    data = next(src.glob("*.data"))
    model = osg.load(src / "autoencoder.onnx")
    data.write_bytes(data.read_bytes()[:-100])  # after loading: the copy finds it
    with pytest.raises(osg.InputError, match=r"is truncated: \d+ of \d+ bytes"):
        osg.save(model, tmp_path / "copy.onnx", external_data=True)
    with pytest.raises(osg.InputError, match=r"is truncated: \d+ of \d+ bytes"):  # before: loading finds it
        osg.load(src / "autoencoder.onnx")
    assert not (tmp_path / "copy.onnx").exists() and not (tmp_path / "copy.onnx.data").exists()


def _over_2gb(folder) -> tuple[onnx.ModelProto, np.ndarray]:
    """x[N,64] -> MatMul W0[64,64] -> h -> MatMul W1[64,BIG] -> y1 ... with 2.3 GB of external
    weights in a sparse file: W0 holds real values, W1 and W2 (1.15 GB each) are zeros that
    take no disk."""
    big = 4_500_000
    w0 = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    data = folder / "big.onnx.data"
    with open(data, "wb") as f:
        f.write(w0.tobytes())
        f.truncate(w0.nbytes + 2 * 64 * big * 4)
    inits = []
    for name, dims, offset in (("W0", [64, 64], 0), ("W1", [64, big], w0.nbytes), ("W2", [64, big], w0.nbytes + 64 * big * 4)):
        t = onnx.TensorProto(name=name, dims=dims, data_type=onnx.TensorProto.FLOAT, data_location=onnx.TensorProto.EXTERNAL)
        for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(int(np.prod(dims)) * 4))):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        inits.append(t)
    nodes = [helper.make_node("MatMul", ["x", "W0"], ["h"]), helper.make_node("MatMul", ["h", "W1"], ["y1"]),
             helper.make_node("MatMul", ["h", "W2"], ["y2"])]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])
    outs = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", big]) for n in ("y1", "y2")]
    model = helper.make_model(helper.make_graph(nodes, "big", [x], outs, inits), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    (folder / "big.onnx").write_bytes(model.SerializeToString())
    return model, w0


def test_models_over_2gb(cli, tmp_path):
    # Every command on a model whose weights pass protobuf's 2 GB limit; nothing reads the
    # weights the operation does not need (here that would be 2.3 GB of zeros).
    _, w0 = _over_2gb(tmp_path)
    big, piece = tmp_path / "big.onnx", tmp_path / "piece.onnx"
    for command in (["info", big], ["nodes", big], ["params", big]):
        code, out, err = cli(*command)
        assert code == 0, err
    code, out, _ = cli("params", big, "--json")
    assert sum(p["bytes"] for p in json.loads(out)["params"]) > 2**31
    assert cli("extract", big, "--in", "x", "--out", "h", "-o", piece)[0] == 0
    assert [t.name for t in osg.load(piece).graph.initializer] == ["W0"]
    code, out, err = cli("verify", big, piece)
    assert code == 0 and "ok" in out, err
    moved = tmp_path / "moved.onnx"
    code, out, err = cli("transfer", "--from", big, "--to", piece, "-o", moved)
    assert code == 0 and "1 matched" in out, err
    (w,) = osg.load(moved).graph.initializer
    assert np.array_equal(serde.to_array(w), w0)
    recipe = tmp_path / "net.toml"
    recipe.write_text('[inputs]\nx = "float32[N,64]"\n\n[pieces.head]\nmodel = "big.onnx"\ninputs = ["x"]\n'
                      'outputs = ["h"]\nparams = "constant"\n\n[outputs]\nz = "relu(head(x).h)"\n')
    code, out, err = cli("compose", recipe, "-o", tmp_path / "net.onnx")
    assert code == 0, err
    (w,) = osg.load(tmp_path / "net.onnx").graph.initializer
    assert w.name == "head/W0" and np.array_equal(serde.to_array(w), w0)


def test_provenance_of_a_large_file_reads_no_weights(lazy, cli, fixture_path, tmp_path):
    # Below 256 MB the piece records the model file's SHA-256; above, hashing would read every
    # weight, so it records the file's size and modification time instead.
    assert cli("extract", fixture_path("autoencoder.onnx"), "--in", "input", "--out", "L4.y", "-o", tmp_path / "p.onnx")[0] == 0
    code, out, err = cli("info", tmp_path / "p.onnx", "--json")
    cut = json.loads(out)["cut"]
    assert code == 0 and "sha256" not in cut and cut["modified"] and cut["bytes"] == fixture_path("autoencoder.onnx").stat().st_size
