"""The command line: every command has help with an example, JSON output, clean exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import onnxsurgeon as osg

COMMANDS = ["extract", "verify", "nodes", "params", "info", "compose", "train", "eval", "run", "transfer"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(cli, command):
    code, out, _ = cli(command, "--help")
    assert code == 0
    assert "Example: onnxsurgeon " + command in " ".join(out.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_quiet(cli, command):
    """SPEC 6: --quiet on every command (for nodes, params and info: the exit code alone)."""
    code, out, _ = cli(command, "--help")
    assert code == 0 and "--quiet" in out


@pytest.mark.parametrize("command", ["nodes", "params", "info"])
def test_a_quiet_listing_prints_nothing_and_still_fails_on_a_bad_model(cli, fixture_path, tmp_path, command):
    code, out, err = cli(command, fixture_path("autoencoder.onnx"), "--quiet")
    assert (code, out, err) == (0, "", "")
    code, out, _ = cli(command, fixture_path("autoencoder.onnx"), "--quiet", "--json")
    assert code == 0 and json.loads(out)  # --json is data asked for: printed all the same
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code, out, err = cli(command, bad, "-q")
    assert code == 2 and out == "" and "not an ONNX model" in err


def test_extract_verify_params_info_round_trip(cli, fixture_path, tmp_path):
    src = fixture_path("autoencoder.onnx")
    feat = tmp_path / "feat.onnx"
    code, out, err = cli("extract", src, "--in", "input", "--out", "L4_y", "--params", "constant", "-o", feat)
    assert code == 0, err
    assert "wrote" in out and "from 'L4_y' by alias" in out
    code, out, _ = cli("verify", src, feat)
    assert code == 0 and "ok" in out
    code, out, _ = cli("params", feat, "--json")
    data = json.loads(out)
    assert data["total"]["frozen"] == 8 and data["total"]["count"] == 8
    code, out, _ = cli("info", feat, "--json")
    data = json.loads(out)
    assert data["mode"] == "constant" and data["cut"]["outputs"] == {"L4.y": "L4.y"}
    assert data["cut"]["sha256"] == __import__("hashlib").sha256(src.read_bytes()).hexdigest()


def test_extract_json_shows_how_names_resolved(cli, fixture_path, tmp_path):
    code, out, _ = cli(
        "extract", fixture_path("autoencoder.onnx"), "--in", "feat=input", "--out", "z=L4_y", "-o", tmp_path / "p.onnx", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["inputs"][0]["name"] == "feat" and data["inputs"][0]["value"] == "input"
    assert data["outputs"][0]["resolved"] == {"query": "L4_y", "value": "L4.y", "how": "alias"}


def test_warnings_go_to_stderr(cli, fixture_path, tmp_path):
    code, out, err = cli("extract", fixture_path("two_io.onnx"), "--in", "a", "--in", "b", "--out", "a1", "-o", tmp_path / "p.onnx")
    assert code == 0 and "warning: input 'b' is not needed by any output" in err and "warning:" not in out


def test_dry_run_writes_nothing(cli, fixture_path, tmp_path):
    out_path = tmp_path / "p.onnx"
    code, out, _ = cli("extract", fixture_path("bn_dropout.onnx"), "--in", "image", "--out", "logits", "--params", "constant", "-o", out_path, "--dry-run")
    assert code == 0 and not out_path.exists()
    assert "node  bn1/folded_mul" in out and "param fc.weight" in out and "1 BatchNormalization folded" in out


def test_nodes_lines_grep_and_op(cli, fixture_path):
    code, out, _ = cli("nodes", fixture_path("autoencoder.onnx"), "--grep", "L4_y")
    assert code == 0
    # the node that writes L4.y and the one that reads it
    assert out.splitlines() == [
        "L4.y = Relu (L4.z) : float32[N,16] -> float32[N,16]  [alias L4_y]",
        "L5.o = MatMul (L4.y, L5.W) : float32[N,16], float32[16,24] -> float32[N,24]  [alias L5_o]",
    ]
    code, out, _ = cli("nodes", fixture_path("bn_dropout.onnx"), "--op", "conv", "--json")
    data = json.loads(out)
    assert [n["op"] for n in data["nodes"]] == ["Conv"] and data["total"] == 6


def test_verify_mismatch_exits_1(cli, fixture_path, tmp_path):
    src = fixture_path("autoencoder.onnx")
    model = osg.load(src)
    piece, _ = osg.extract(model, inputs=["input"], outputs=["L2.y"])
    piece.graph.initializer[0].raw_data = bytes(len(piece.graph.initializer[0].raw_data))
    osg.save(piece, tmp_path / "bad.onnx")
    code, out, err = cli("verify", src, tmp_path / "bad.onnx")
    assert code == 1 and "MISMATCH" in out and "outputs differ" in err


def test_help_is_fast_and_imports_no_onnx():
    code = (
        "import sys; from onnxsurgeon.cli import main; "
        "rc = main(['--help']); "
        "heavy = [m for m in ('onnx', 'onnxruntime', 'numpy') if m in sys.modules]; "
        "print(heavy); sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_library_never_prints(capsys, fixture_path):
    model = osg.load(fixture_path("bn_dropout_train.onnx"))
    piece, _ = osg.extract(model, inputs=["image"], outputs=["logits"], params="constant")
    osg.verify(model, piece)
    osg.info(piece), osg.params(piece), osg.nodes(piece)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_layering():
    """Only the CLI package imports typer and rich; the library imports no training code."""
    from pathlib import Path

    root = Path(osg.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        rel = path.relative_to(root).as_posix()
        if not rel.startswith("cli/"):
            assert "import typer" not in text and "from rich" not in text, rel
        if not rel.startswith("train/"):
            assert "import onnxruntime.training" not in text and "from onnxruntime.training" not in text, rel


def test_params_and_transfer_never_cut_names_when_piped(tmp_path):
    """Names longer than a terminal line come out whole on stdout when it is a pipe, so they
    can be pasted into --freeze or --map (issue 12); params says what training does."""
    from onnx import TensorProto, helper, numpy_helper

    long = "encoder/layers.11/attention/self/query/weight_of_a_really_long_exported_name"
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", long], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.ones((4, 4), np.float32), long), numpy_helper.from_array(np.array([-1, 4]), "shape")],
    )
    path = tmp_path / "m.onnx"
    osg.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    for argv in (["params", str(path)], ["transfer", "--from", str(path), "--to", str(path), "--dry-run"]):
        done = subprocess.run([sys.executable, "-m", "onnxsurgeon", *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stdout.splitlines() if long in line]
        assert lines, done.stdout  # the whole name, on one line
        assert "…" not in done.stdout
    rows = {line.split()[0]: line for line in subprocess.run(
        [sys.executable, "-m", "onnxsurgeon", "params", str(path)], capture_output=True, text=True, timeout=120).stdout.splitlines()}
    assert "trained" in rows[long] and "constant (int64)" in rows["shape"]


def test_params_says_what_training_does(cli, fixture_path):
    code, out, _ = cli("params", fixture_path("bn_dropout.onnx"), "--json")
    training = {p["name"]: p["training"] for p in json.loads(out)["params"]}
    assert training["fc.weight"] == "trained" and training["bn1.running_mean"] == "updated statistics"
    assert training["bn1.running_var"] == "updated statistics" and training["drop1.ratio"] == "constant (scalar)"


def _unread(argv: list[object], closed: bool = False) -> tuple[int, str]:
    """Run the command line in a process whose stdout nobody reads: a pipe closed before
    the command writes (``| head`` gone), or with ``closed`` no stdout at all (``>&-``)."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "onnxsurgeon", *map(str, argv)],
        stdout=subprocess.DEVNULL if closed else subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=(lambda: os.close(1)) if closed else None,
    )
    if not closed:
        proc.stdout.close()  # the reader is gone before the first line
    err = proc.stderr.read()
    return proc.wait(timeout=120), err


def test_stdout_that_nobody_reads(fixture_path, tmp_path):
    """`onnxsurgeon nodes m.onnx | head` after head has gone, or stdout closed: what is
    left of the output is dropped, and the exit code is the command's own (0 here; verify's
    1 on a mismatch), never a traceback (exit 4) nor rich's exit 1 for a broken pipe."""
    ae = fixture_path("autoencoder.onnx")
    for closed in (False, True):
        for argv in (["nodes", ae], ["nodes", ae, "--json"], ["params", ae], ["info", ae, "--json"]):
            code, err = _unread(argv, closed)
            assert (code, err) == (0, ""), (argv, closed, err)
        out = tmp_path / f"piece{closed}.onnx"
        code, err = _unread(["extract", ae, "--in", "input", "--out", "L4.y", "-o", out, "--json"], closed)
        assert (code, err) == (0, "") and out.exists(), err
    other = tmp_path / "other.onnx"
    m = osg.load(ae)
    m.graph.node[-1].op_type = "Tanh"  # the piece computes something else: verify's answer is 1
    osg.save(m, other)
    code, err = _unread(["verify", ae, other])
    assert code == 1 and "outputs differ" in err and "Traceback" not in err, err


def test_names_a_narrow_stdout_encoding_cannot_hold(tmp_path):
    """A Latin-1 locale or PYTHONIOENCODING=ascii cannot print '層': such characters come
    out as escapes, and the command ends normally (it was exit 4 after writing the piece)."""
    import os
    from pathlib import Path

    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "層.W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["entrée", "層.W"], ["層/o"], name="層/mm")], "g",
        [helper.make_tensor_value_info("entrée", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("層/o", TensorProto.FLOAT, ["N", 3])], [w],
    )
    model = tmp_path / "uni.onnx"
    osg.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    root = Path(__file__).resolve().parents[1]
    for encoding in ("ascii", "latin-1"):
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONIOENCODING": encoding}
        for argv in (["nodes", model], ["params", model], ["extract", model, "--in", "entrée", "--out", "層/o", "-o", tmp_path / f"p_{encoding}.onnx"]):
            done = subprocess.run([sys.executable, "-m", "onnxsurgeon", *map(str, argv)], capture_output=True, env=env, timeout=120)
            assert done.returncode == 0, done.stderr.decode(errors="replace")
            assert b"\\u5c64" in done.stdout


def test_a_closed_stderr_keeps_messages_out_of_stdout(tmp_path):
    """With stderr closed (2>&-), Python's print(file=None) fell back to stdout: the error
    text landed where a script reads its data (--json). Now it goes nowhere; the exit code
    still tells."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for argv in (["info", tmp_path / "nope.onnx", "--json"], ["bogus"]):
        done = subprocess.run(
            [sys.executable, "-m", "onnxsurgeon", *map(str, argv)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=lambda: os.close(2), timeout=120,
        )
        assert (done.returncode, done.stdout) == (2, b""), (argv, done.stdout)
