"""Every failure a user can meet: a clear message, a documented exit code, no traceback,
and no output file left behind (SPEC sections 1, 2 and 6; the table is docs/errors.md).

Each test drives the real command line in-process through ``onnxsurgeon.cli.main``.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon import serde
from onnxsurgeon.cli import main

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
AE = FIXTURES / "autoencoder.onnx"
TWO_IO = FIXTURES / "two_io.onnx"
AE_EXT = FIXTURES / "autoencoder_external" / "autoencoder.onnx"

OK, CHECK_FAILED, BAD_INPUT, ENVIRONMENT, BUG, INTERRUPTED = 0, 1, 2, 3, 4, 130


# --- helpers ----------------------------------------------------------------------------


def run(argv: list[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(code: int, err: str, exit_code: int, *words: str, hint: tuple[str, ...] = ()) -> None:
    """The command failed with exit_code, a one-line error naming `words`, a hint naming `hint`."""
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    assert code == exit_code, err
    assert "onnxsurgeon: error:" in err, err
    for w in words:
        assert w in err, f"{w!r} not in:\n{err}"
    if hint:
        hints = [line for line in err.splitlines() if line.startswith("hint: ")]
        assert hints, f"no hint line in:\n{err}"
        for w in hint:
            assert w in hints[0], f"{w!r} not in hint:\n{hints[0]}"


def assert_not_written(path: Path) -> None:
    """Neither the output nor a temporary file of it exists."""
    assert not path.exists() or path.is_dir(), f"{path} was written"
    assert_no_temp_files(path.parent)
    data = path.with_name(path.name + ".data")
    assert not data.exists() or data.is_dir(), f"{data} was written"


def assert_no_temp_files(folder: Path) -> None:
    """No temporary file (``.NAME.*.tmp``) is left in the folder."""
    if folder.is_dir():
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]
        assert not leftovers, f"temporary files left in {folder}: {leftovers}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return path


def tiny_model(nodes: list[onnx.NodeProto], initializers: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x[N,2] -> nodes -> y[N,2], opset 17, IR 8."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    inits = [numpy_helper.from_array(a, n) for n, a in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def extract_argv(model: Path, out: Path, *args: str) -> list[object]:
    return ["extract", model, *args, "-o", out]


# --- the model file -----------------------------------------------------------------------


def test_missing_model_file(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(tmp_path / "nope.onnx", out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "no such file", "nope.onnx", hint=("path",))
    assert_not_written(out)


@pytest.mark.parametrize("command", [["nodes"], ["params"], ["info"]])
def test_missing_model_file_every_command(tmp_path, capsys, command):
    code, _, err = run([*command, tmp_path / "nope.onnx"], capsys)
    assert_error(code, err, BAD_INPUT, "no such file", "nope.onnx")


def test_missing_piece_in_verify(tmp_path, capsys):
    code, _, err = run(["verify", AE, tmp_path / "nope.onnx"], capsys)
    assert_error(code, err, BAD_INPUT, "no such file", "nope.onnx")


def test_directory_as_model(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(FIXTURES, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "is a directory", hint=(".onnx",))
    assert_not_written(out)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(np.random.default_rng(0).bytes(1000), id="random-bytes"),
        pytest.param(b"hello, this is a text file\n", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(numpy_helper.from_array(np.ones((2, 3), np.float32), "x").SerializeToString(), id="tensor-pb"),
    ],
)
def test_not_an_onnx_file(tmp_path, capsys, content):
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "model.onnx", "is not an ONNX model", hint=("re-export",))
    assert_not_written(out)


def _other_formats():
    import gzip
    import io

    from google.protobuf import json_format

    m = onnx.load(AE)
    npz = io.BytesIO()
    np.savez(npz, input=np.zeros((2, 64), np.float32))
    return [
        pytest.param(gzip.compress(AE.read_bytes()), "a gzip-compressed file", "gunzip", id="gzip"),
        pytest.param(npz.getvalue(), "a zip archive", "torch.onnx.export", id="zip"),
        pytest.param(str(m).encode(), "protobuf's text format", "format='textproto'", id="textproto"),
        pytest.param(json_format.MessageToJson(m).encode(), "in JSON", "format='json'", id="json"),
        pytest.param(onnx.printer.to_text(m).encode(), "ONNX's text syntax", "onnx.parser.parse_model", id="onnx-text"),
    ]


@pytest.mark.parametrize("content, what, fix", _other_formats())
def test_a_model_in_another_format_is_named_with_the_way_out(tmp_path, capsys, content, what, fix):
    """A model gzipped, zipped or saved in one of ONNX's text formats: the message says which,
    and the hint how to get the binary model ("re-export or re-download" was no way out)."""
    model = tmp_path / "model.onnx"
    model.write_bytes(content)
    code, _, err = run(["info", model], capsys)
    assert_error(code, err, BAD_INPUT, f"model.onnx is {what}" if what.startswith("a ") else what, hint=(fix,))


def test_truncated_model_first_half(tmp_path, capsys):
    data = AE.read_bytes()
    model = tmp_path / "half.onnx"
    model.write_bytes(data[: len(data) // 2])
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "half.onnx", "is not an ONNX model", "truncated", hint=("re-export",))
    assert_not_written(out)


def _prefix_up_to(field: str) -> bytes:
    """The bytes of autoencoder.onnx up to the end of one top-level field (a field boundary)."""
    data = AE.read_bytes()
    head = onnx.ModelProto()
    head.ParseFromString(data)
    number = head.DESCRIPTOR.fields_by_name[field].number
    for f, _ in head.ListFields():
        if f.number > number:  # protobuf writes fields in number order: these come later
            head.ClearField(f.name)
    prefix = head.SerializeToString()
    assert data.startswith(prefix) and len(prefix) < len(data)  # really a truncation of the file
    return prefix


@pytest.mark.parametrize("field", ["graph", "producer_name"])
def test_truncated_model_at_field_boundary(tmp_path, capsys, field):
    model = tmp_path / "cut.onnx"
    model.write_bytes(_prefix_up_to(field))
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "cut.onnx", "is not an ONNX model", "truncated", hint=("re-export",))
    assert_not_written(out)


# --- names (SPEC 1) -------------------------------------------------------------------------


def test_unknown_name_with_suggestions(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4_yy"), capsys)
    assert_error(
        code, err, BAD_INPUT, "no value or node named 'L4_yy'", "did you mean", "'L4.y'",
        hint=("onnxsurgeon nodes", str(AE), "--grep"),
    )
    first = err.splitlines()[0]
    assert first.count("'") <= 2 * (1 + 5), "at most five suggestions"
    assert_not_written(out)


def test_several_unknown_names_at_once(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "inptu", "--out", "L4_yy", "--out", "zzz"), capsys)
    assert_error(
        code, err, BAD_INPUT, "3 names could not be resolved", "'inptu'", "did you mean 'input'", "'L4_yy'", "'zzz'",
        hint=("onnxsurgeon nodes", "--grep"),
    )
    assert_not_written(out)


def test_ambiguous_alias(tmp_path, capsys):
    model = save(
        tiny_model([
            helper.make_node("Relu", ["x"], ["a.b"], name="n1"),
            helper.make_node("Neg", ["x"], ["a[b"], name="n2"),
            helper.make_node("Add", ["a.b", "a[b"], ["y"], name="n3"),
        ]),
        tmp_path / "amb.onnx",
    )
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "x", "--out", "a_b"), capsys)
    assert_error(code, err, BAD_INPUT, "'a_b' is ambiguous", "'a.b'", "'a[b'", hint=("onnxsurgeon nodes",))
    assert_not_written(out)
    # an exact name is never ambiguous
    code, _, err = run(extract_argv(model, out, "--in", "x", "--out", "a.b", "-q"), capsys)
    assert code == OK, err


def test_node_with_several_outputs(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(TWO_IO, out, "--in", "a", "--in", "b", "--out", "split"), capsys)
    assert_error(code, err, BAD_INPUT, "node 'split' has 2 outputs", "split:0 = s_lo", "split:1 = s_hi")
    assert_not_written(out)


def test_node_output_by_index_works(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, stdout, err = run(extract_argv(TWO_IO, out, "--in", "a", "--in", "b", "--out", "split:1"), capsys)
    assert code == OK, err
    assert "s_hi" in stdout
    assert [o.name for o in onnx.load(out).graph.output] == ["s_hi"]


def test_node_output_index_out_of_range(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(TWO_IO, out, "--in", "a", "--in", "b", "--out", "split:5"), capsys)
    assert_error(code, err, BAD_INPUT, "'split'", "no output 5")
    assert_not_written(out)


def test_same_input_twice(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "name the same value 'input'", hint=("name=value",))
    assert_not_written(out)


def test_record_name_used_twice(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "z=L4.y", "--out", "z=L3.y"), capsys)
    assert_error(code, err, BAD_INPUT, "'z' is given to more than one", hint=("name=value",))
    assert_not_written(out)


def test_record_name_given_to_two_inputs(tmp_path, capsys):
    """Two inputs of one name: a user error, not a piece with two graph inputs 'x' that
    the checker refuses (an internal error, exit 4)."""
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(TWO_IO, out, "--in", "x=a", "--in", "x=b", "--out", "s"), capsys)
    assert_error(code, err, BAD_INPUT, "'x' is given to more than one", hint=("name=value",))
    assert_not_written(out)


def test_record_name_that_is_already_a_value(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(TWO_IO, out, "--in", "a", "--in", "b", "--out", "b1=s"), capsys)
    assert_error(code, err, BAD_INPUT, "the new name 'b1' is already a value", hint=("record name",))
    assert_not_written(out)


# --- the cut (SPEC 2) -----------------------------------------------------------------------


def test_open_cut_names_the_leak_and_a_path(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(TWO_IO, out, "--in", "a", "--out", "s"), capsys)
    assert_error(code, err, BAD_INPUT, "the cut is open", "'b'", hint=("--in b", "--auto-inputs"))
    leak = [line for line in err.splitlines() if "'b'" in line and "->" in line]
    assert leak and leak[0].rstrip().endswith("s"), err  # a path from b to the output s
    assert_not_written(out)


def test_info_sizes_a_cut_only_with_out_and_takes_the_hint_it_gives(capsys):
    """info --in without --out was ignored silently; info's open-cut hint names
    --auto-inputs, which info now takes as extract does."""
    code, _, err = run(["info", AE, "--in", "input"], capsys)
    assert_error(code, err, BAD_INPUT, "--in without --out", hint=("add --out NAME",))
    code, _, err = run(["info", AE, "--out", "L4.y"], capsys)
    assert_error(code, err, BAD_INPUT, "the cut is open", hint=("--auto-inputs",))
    code, out, err = run(["info", AE, "--out", "L4.y", "--auto-inputs"], capsys)
    assert code == OK and "the cut     12 nodes" in out, err


def test_auto_inputs_closes_the_cut(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, stdout, err = run(extract_argv(TWO_IO, out, "--in", "a", "--out", "s", "--auto-inputs"), capsys)
    assert code == OK, err
    assert "--auto-inputs" in stdout
    assert [i.name for i in onnx.load(out).graph.input] == ["a", "b"]


def test_output_that_is_a_parameter(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(TWO_IO, out, "--in", "a", "--out", "Wa"), capsys)
    assert_error(code, err, BAD_INPUT, "'Wa'", "does not depend on any listed input", hint=("--in",))
    assert_not_written(out)


def test_output_computed_from_parameters_alone(tmp_path, capsys):
    ones = np.ones(2, np.float32)
    nodes = [
        helper.make_node("Add", ["W1", "W2"], ["c"], name="c"),
        helper.make_node("Add", ["x", "c"], ["y"], name="y"),
    ]
    model = save(tiny_model(nodes, {"W1": ones, "W2": ones}), tmp_path / "const.onnx")
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "x", "--out", "y", "--out", "c"), capsys)
    assert_error(code, err, BAD_INPUT, "output 'c' does not depend on any listed input", hint=("--in",))
    assert "'y'" not in err.splitlines()[0]  # only the dead output is named
    assert_not_written(out)


def test_unknown_params_mode(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y", "--params", "frozen"), capsys)
    assert_error(code, err, BAD_INPUT, "unknown parameter mode 'frozen'", hint=("learnable", "constant", "shared"))
    assert_not_written(out)


def test_no_out(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input"), capsys)
    assert_error(code, err, BAD_INPUT, "no --out given", hint=("--out",))
    assert_not_written(out)


def test_no_output_file_writes_beside_the_model(tmp_path, capsys):
    """Without -o the piece goes to MODEL.OUTS.PARAMS.onnx beside the model, and the path is
    printed; the input model is untouched."""
    model = shutil.copy(AE, tmp_path / "model.onnx")
    before = sha256(Path(model))
    code, out, err = run(["extract", model, "--in", "input", "--out", "L4.y", "--params", "constant"], capsys)
    assert code == OK, err
    piece = tmp_path / "model.L4_y.constant.onnx"
    assert f"wrote {piece}" in out
    onnx.checker.check_model(onnx.load(piece), full_check=True)
    assert sha256(Path(model)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.L4_y.constant.onnx", "model.onnx"]


def test_default_output_that_exists_is_kept_without_force(tmp_path, capsys):
    model = shutil.copy(AE, tmp_path / "model.onnx")
    piece = tmp_path / "model.z+L2_y.learnable.onnx"
    piece.write_bytes(b"mine")
    argv = ["extract", model, "--in", "input", "--out", "z=L4.y", "--out", "L2_y"]
    code, _, err = run(argv, capsys)
    assert_error(code, err, BAD_INPUT, f"{piece} already exists", hint=("-o", "--force"))
    assert piece.read_bytes() == b"mine"
    assert_no_temp_files(tmp_path)
    code, out, err = run([*argv, "--force"], capsys)
    assert code == OK, err
    assert onnx.load(piece).graph.output[0].name == "z"


def test_the_known_command_as_written(tmp_path):
    """`onnxsurgeon extract model.onnx --in input --out L4.y --params constant`, exactly, in
    the model's folder, as a separate process."""
    import subprocess

    shutil.copy(AE, tmp_path / "model.onnx")
    cmd = "onnxsurgeon extract model.onnx --in input --out L4.y --params constant"
    exe = Path(sys.executable).with_name("onnxsurgeon")
    done = subprocess.run([str(exe), *cmd.split()[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "model.L4_y.constant.onnx" in done.stdout
    onnx.checker.check_model(onnx.load(tmp_path / "model.L4_y.constant.onnx"), full_check=True)


# --- type and shape overrides ---------------------------------------------------------------


@pytest.mark.parametrize("spec", ["input:float16[N,64]", "input:int64[N,64]"])
def test_type_override_that_cannot_fit(tmp_path, capsys, spec):
    """A new element type the operators cannot take (the weights stay float32) passes
    shape inference on the piece; it was found by the checker afterwards and called a bug (exit 4)."""
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", spec, "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, repr(spec), "does not fit the piece", "L1.o", hint=("check the type you gave",))
    assert_not_written(out)


def test_shape_override_that_cannot_fit(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input:float32[N,7]", "--out", "output"), capsys)
    assert_error(code, err, BAD_INPUT, "'input:float32[N,7]'", "does not fit", "L1.o", "Incompatible dimensions")
    assert_not_written(out)


def test_shape_override_that_cannot_fit_is_refused(tmp_path, capsys):
    """The part that works today: refused, exit 2, nothing written."""
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input:float32[N,7]", "--out", "output"), capsys)
    assert_error(code, err, BAD_INPUT, "'input:float32[N,7]'", "does not fit", hint=("shape",))
    assert_not_written(out)


@pytest.mark.parametrize("spec", ["input:float99[N,64]", "input:floot32[N,64]"])
def test_unknown_dtype_in_override(tmp_path, capsys, spec):
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", spec, "--out", "L4.y"), capsys)
    bad = spec.split(":")[1].split("[")[0]
    assert_error(code, err, BAD_INPUT, repr(bad), "type", "float32")
    assert "no value or node named" not in err
    assert_not_written(out)


@pytest.mark.parametrize("spec, bad", [("input:float32[-1,64]", "'-1'"), ("input:float32[N,6.5]", "'6.5'")])
def test_bad_dimension_in_override(tmp_path, capsys, spec, bad):
    """A known type with a dimension that is not one (PyTorch's -1 for "any") names that
    dimension; it was reported as "unknown type 'float32'"."""
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", spec, "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, f"{bad} is not a dimension", "a name such as N", spec)
    assert "unknown type" not in err
    assert_not_written(out)


# --- the output file ------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["same", "dot", "symlink"])
def test_output_equal_to_input(tmp_path, capsys, spelling):
    model = tmp_path / "ae.onnx"
    shutil.copy(AE, model)
    before = sha256(model)
    out = {"same": model, "dot": f"{tmp_path}/./ae.onnx", "symlink": tmp_path / "link.onnx"}[spelling]
    if spelling == "symlink":
        (tmp_path / "link.onnx").symlink_to(model)
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "is the input model", hint=("--force",))
    assert sha256(model) == before
    assert_no_temp_files(tmp_path)


def test_force_replaces_the_input(tmp_path, capsys):
    model = tmp_path / "ae.onnx"
    shutil.copy(AE, model)
    code, _, err = run(extract_argv(model, model, "--in", "input", "--out", "L4.y", "--force", "-q"), capsys)
    assert code == OK, err
    assert [o.name for o in onnx.load(model).graph.output] == ["L4.y"]
    assert [p.name for p in tmp_path.iterdir()] == ["ae.onnx"]


def test_written_file_has_normal_permissions(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        out = tmp_path / "piece.onnx"
        code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y", "-q"), capsys)
    finally:
        os.umask(old)
    assert code == OK, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_output_that_is_a_pipe_or_a_link(tmp_path, capsys, ae_data):
    """The atomic rename replaced whatever -o named: a pipe (and, run as root, a device:
    `-o /dev/null` replaced /dev/null, `-o /dev/stdout` the link in /dev) became a regular
    file. A pipe or device is refused; a link is written through, and stays a link."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to_fifo.onnx").symlink_to(fifo)
    for out in (fifo, tmp_path / "to_fifo.onnx"):
        code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y"), capsys)
        assert_error(code, err, BAD_INPUT, "it is not a regular file", hint=("name a file",))
        assert stat.S_ISFIFO(os.stat(fifo).st_mode) and (tmp_path / "to_fifo.onnx").is_symlink()
    real, link = tmp_path / "real.npz", tmp_path / "link.npz"
    real.write_bytes(b"")
    link.symlink_to(real)
    code, _, err = run(["run", AE, "--data", ae_data, "-o", link], capsys)
    assert code == OK, err
    assert link.is_symlink() and set(np.load(real)) == {"output"}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_data_from_a_pipe(tmp_path, capsys):
    """--data <(cat x.npz) is a pipe: its arrays cannot be read at offsets. Refused by what it
    is, without opening it (which would wait for a writer); it was 'not a zip of plain
    numpy arrays', though it is one."""
    fifo = tmp_path / "x.npz"
    os.mkfifo(fifo)
    code, _, err = run(["run", AE, "--data", fifo, "-o", tmp_path / "out.npz"], capsys)
    assert_error(code, err, BAD_INPUT, "is a pipe or a device", hint=("save the data to a file",))
    assert not (tmp_path / "out.npz").exists()


def test_output_folder_does_not_exist(tmp_path, capsys):
    out = tmp_path / "nodir" / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "does not exist", hint=("folder",))
    assert not out.parent.exists()


def test_output_is_a_directory(tmp_path, capsys):
    out = tmp_path / "isdir"
    out.mkdir()
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "is a directory")
    assert list(out.iterdir()) == []
    assert_not_written(out)


def test_external_data_file_is_a_directory(tmp_path, capsys):
    out = tmp_path / "piece.onnx"
    (tmp_path / "piece.onnx.data").mkdir()
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y", "--external-data"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "piece.onnx.data")
    assert_not_written(out)


def test_disk_full_while_writing(tmp_path, capsys, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, ENVIRONMENT, "cannot write", "No space left", hint=("space",))
    assert_not_written(out)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_disk_full_while_writing_the_training_log(tmp_path):
    from onnxsurgeon.cli.train_cmds import _Log
    from onnxsurgeon.errors import EnvironmentProblem

    log = _Log(tmp_path / "log.jsonl")
    log.file = open("/dev/full", "w", encoding="utf-8")  # every write there fails with ENOSPC
    with pytest.raises(EnvironmentProblem, match="cannot write the log .*No space left") as caught:
        log({"event": "step", "loss": 1.0})
    assert caught.value.exit_code == ENVIRONMENT and "space" in caught.value.hint


def test_interrupted_while_writing(tmp_path, capsys, monkeypatch):
    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, out, "--in", "input", "--out", "L4.y"), capsys)
    assert code == INTERRUPTED, err
    assert "Traceback" not in err
    assert_not_written(out)


# --- the argument parser --------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["extract", AE, "--in", "input", "--out", "L4.y", "--bogus", "-o", "x.onnx"], ["No such option", "--bogus"]),
        (["extract", AE, "--in", "input", "--out", "L4.y", "-o"], ["-o", "requires an argument"]),
        (["verify", AE, AE, "--rtol", "abc"], ["--rtol"]),
        (["bogus"], ["No such command", "bogus"]),
    ],
    ids=["unknown-option", "missing-value", "bad-number", "unknown-command"],
)
def test_usage_errors(tmp_path, capsys, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == BAD_INPUT, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err
    assert list(tmp_path.iterdir()) == []


def test_nodes_bad_grep_regex(capsys):
    code, _, err = run(["nodes", AE, "--grep", "["], capsys)
    assert_error(code, err, BAD_INPUT, "--grep", "'['", "regular expression")


# --- external data --------------------------------------------------------------------------


def test_external_data_file_missing(tmp_path, capsys):
    model = tmp_path / "autoencoder.onnx"
    shutil.copy(AE_EXT, model)
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "'autoencoder.onnx.data'", "is missing", hint=("beside the model",))
    assert_not_written(out)


def test_external_data_file_truncated(tmp_path, capsys):
    model = tmp_path / "autoencoder.onnx"
    shutil.copy(AE_EXT, model)
    data = (AE_EXT.parent / "autoencoder.onnx.data").read_bytes()
    (tmp_path / "autoencoder.onnx.data").write_bytes(data[:1000])
    out = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "external data", "truncated", "1000 of", hint=(".data",))
    assert_not_written(out)


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_external_data_outside_the_model_folder(tmp_path, capsys, where):
    folder = tmp_path / "model"
    folder.mkdir()
    data = AE_EXT.parent / "autoencoder.onnx.data"
    shutil.copy(data, folder / "autoencoder.onnx.data")
    shutil.copy(data, tmp_path / "x.data")  # the target exists: refused for where it is, not for being missing
    location = "../x.data" if where == "parent" else str(tmp_path / "x.data")
    m = onnx.load(AE_EXT, load_external_data=False)
    for entry in m.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    model = folder / "autoencoder.onnx"
    model.write_bytes(m.SerializeToString())
    out = folder / "piece.onnx"
    code, _, err = run(extract_argv(model, out, "--in", "input", "--out", "L4.y"), capsys)
    assert_error(code, err, BAD_INPUT, "'L1.W'", "outside the model's folder", repr(location), hint=("folder",))
    assert_not_written(out)


# --- verify ---------------------------------------------------------------------------------


@pytest.fixture
def piece(tmp_path, capsys) -> Path:
    """An auto-encoder encoder piece: input -> L4.y."""
    path = tmp_path / "piece.onnx"
    code, _, err = run(extract_argv(AE, path, "--in", "input", "--out", "L4.y", "-q"), capsys)
    assert code == OK, err
    return path


def test_verify_mismatch(tmp_path, capsys, piece):
    m = onnx.load(piece)
    bias = next(t for t in m.graph.initializer if t.name == "L4.b")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, "L4.b"))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, bad)
    before = set(tmp_path.iterdir())
    code, out, err = run(["verify", AE, bad], capsys)
    assert_error(code, err, CHECK_FAILED, "1 of 1 outputs differ", "L4.y", hint=("does not compute",))
    assert "MISMATCH" in out
    assert set(tmp_path.iterdir()) == before


def test_verify_same_piece_passes(capsys, piece):
    code, _, err = run(["verify", AE, piece, "-q"], capsys)
    assert code == OK, err


def test_verify_against_another_model(capsys, piece):
    code, _, err = run(["verify", TWO_IO, piece], capsys)
    assert_error(code, err, BAD_INPUT, "the original model does not have", "'input'", hint=("cut from",))


def test_verify_data_missing_an_input(tmp_path, capsys, piece):
    data = tmp_path / "data.npz"
    np.savez(data, other=np.zeros((2, 64), np.float32))
    code, _, err = run(["verify", AE, piece, "--data", data], capsys)
    assert_error(code, err, BAD_INPUT, "no array for input 'input'", hint=("input",))


def test_verify_data_named_by_alias(tmp_path, capsys):
    """The alias rule holds for data arrays in verify as in train, eval and run: 'input_0'
    feeds the input 'input:0' (verify said the data had no array for it)."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input:0", "W"], ["y:0"], name="mm")], "tf",
        [helper.make_tensor_value_info("input:0", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y:0", TensorProto.FLOAT, ["N", 3])], [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = save(model, tmp_path / "tf.onnx")
    data = tmp_path / "d.npz"
    np.savez(data, input_0=np.ones((2, 4), np.float32))
    code, out, err = run(["verify", path, path, "--data", data], capsys)
    assert code == OK and "ok" in out, err


def test_verify_data_file_missing(tmp_path, capsys, piece):
    code, _, err = run(["verify", AE, piece, "--data", tmp_path / "nope.npz"], capsys)
    assert_error(code, err, BAD_INPUT, "no such file", "nope.npz")


def test_verify_data_not_an_npz(tmp_path, capsys, piece):
    data = tmp_path / "data.npz"
    data.write_bytes(b"not a zip file at all")
    code, _, err = run(["verify", AE, piece, "--data", data], capsys)
    assert_error(code, err, BAD_INPUT, "data.npz", "is not a readable .npz file", hint=("numpy.savez",))


def test_verify_data_not_an_npz_does_not_suggest_pickle(tmp_path, capsys, piece):
    data = tmp_path / "data.npz"
    data.write_bytes(b"not a zip file at all")
    code, _, err = run(["verify", AE, piece, "--data", data], capsys)
    assert_error(code, err, BAD_INPUT, "is not a readable .npz file")
    assert "pickle" not in err


def test_verify_data_is_npy_not_npz(tmp_path, capsys, piece):
    data = tmp_path / "data.npy"
    np.save(data, np.zeros((2, 64), np.float32))
    code, _, err = run(["verify", AE, piece, "--data", data], capsys)
    assert_error(code, err, BAD_INPUT, "data.npy", "npz", hint=("numpy.savez",))


def test_verify_data_with_wrong_shape(tmp_path, capsys, piece):
    data = tmp_path / "data.npz"
    np.savez(data, input=np.zeros((2, 7), np.float32))
    code, _, err = run(["verify", AE, piece, "--data", data], capsys)
    assert_error(code, err, BAD_INPUT, "'input'", "7", "64")


@pytest.mark.parametrize("option, value", [("--rtol", "-1"), ("--rtol", "nan"), ("--atol", "-1e-6"), ("--atol", "inf")])
def test_verify_tolerance_that_is_not_a_tolerance(capsys, piece, option, value):
    """A negative or nan tolerance made every output "differ" (exit 1, "MISMATCH" beside a
    difference of 0); inf accepted anything. Both are bad input: exit 2."""
    code, out, err = run(["verify", AE, piece, option, value], capsys)
    assert_error(code, err, BAD_INPUT, f"{option} must be a finite number >= 0", hint=("--rtol 1e-5",))
    assert "MISMATCH" not in out


def test_verify_model_with_too_new_opset(tmp_path, capsys):
    model = tiny_model([helper.make_node("Relu", ["x"], ["y"], name="r")])
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 22))
    model.ir_version = 10
    path = save(model, tmp_path / "op22.onnx")
    code, _, err = run(["verify", path, path], capsys)
    assert_error(code, err, ENVIRONMENT, "opset 22", "up to 21", hint=("version_converter",))


def test_verify_without_onnxruntime(capsys, monkeypatch, piece):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    code, _, err = run(["verify", AE, piece], capsys)
    assert_error(code, err, ENVIRONMENT, "onnxruntime is not installed", hint=("pip install",))


def test_verify_data_with_wrong_dtype(tmp_path, capsys, piece):
    data = tmp_path / "data.npz"
    np.savez(data, input=np.zeros((2, 64), np.int64))
    code, _, err = run(["verify", AE, piece, "--data", data], capsys)
    assert_error(code, err, BAD_INPUT, "int64", "float")


def test_verify_casts_float64_as_train_does(tmp_path, capsys, piece):
    """numpy's default float64 is cast to the input's float32 by verify as by train, eval, run."""
    data = tmp_path / "data.npz"
    np.savez(data, input=np.random.default_rng(0).random((2, 64)))
    code, out, err = run(["verify", AE, piece, "--data", data], capsys)
    assert code == OK and "Traceback" not in err, err


# --- training -------------------------------------------------------------------------------


@pytest.fixture
def ae_data(tmp_path: Path) -> Path:
    x = np.random.default_rng(0).random((16, 64), dtype=np.float32)
    np.savez(tmp_path / "train.npz", input=x, features=x)
    return tmp_path / "train.npz"


def train_argv(data: Path, out: Path, *args: object) -> list[object]:
    return ["train", AE, "--data", data, "--loss", "mse(output, features)", "--batch-size", 8, "-o", out, *args]


def test_train_data_missing_array(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, inp=np.zeros((4, 64), np.float32), features=np.zeros((4, 64), np.float32))
    out = tmp_path / "t.onnx"
    code, _, err = run(train_argv(bad, out), capsys)
    assert_error(code, err, BAD_INPUT, "does not fit the graph", "no array named 'input'; did you mean 'inp'?", hint=("arrays needed: input float32[N,64]",))
    assert_not_written(out)


@pytest.mark.parametrize(
    "loss, words",
    [
        ("mse(output, featurs)", ("unknown name in the loss or metrics: 'featurs'", "did you mean 'features'?")),
        ("foo(output, features)", ("<expression>:1:1: unknown function or piece 'foo'",)),
        ("mse(output, L4_y)", ("mse: the shapes of output (float32[N,64]) and L4_y",)),
    ],
)
def test_train_bad_loss(ae_data, tmp_path, capsys, loss, words):
    out = tmp_path / "t.onnx"
    code, _, err = run(["train", AE, "--data", ae_data, "--loss", loss, "-o", out], capsys)
    assert_error(code, err, BAD_INPUT, *words)
    assert_not_written(out)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--optimizer", "rmsprop"], ("unknown optimizer 'rmsprop' (use sgd, adam, adamw)",)),
        (["--lr", "-1"], ("--lr must be a number >= 0, not -1.0",)),
        (["--keep", "0"], ("--keep must be at least 1 or 'all', not 0",)),
        (["--resume"], ("--resume and --checkpoint-every need --checkpoint-dir DIR",)),
        (["--freeze", "nothing*"], ("--freeze pattern matched no parameter: nothing*",)),
    ],
)
def test_train_bad_settings(ae_data, tmp_path, capsys, args, words):
    out = tmp_path / "t.onnx"
    code, _, err = run(train_argv(ae_data, out, *args), capsys)
    assert_error(code, err, BAD_INPUT, *words)
    assert_not_written(out)


def test_train_more_threads_than_cores(ae_data, tmp_path, capsys):
    """onnxruntime with far more threads than cores only slows down (1,000 took over a
    minute to start on 2 cores): refused, naming the cores there are."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = tmp_path / "t.onnx"
    code, _, err = run(train_argv(ae_data, out, "--threads", cores + 1), capsys)
    assert_error(code, err, BAD_INPUT, f"--threads {cores + 1} is more than the {cores} cores")
    assert_not_written(out)


def test_every_name_miss_is_reported_at_once(ae_data, tmp_path, capsys):
    """SPEC 1: every miss of one command at once. train reported an unmatched --freeze
    pattern and hid the loss's unknown names behind it; run --out stopped at its first miss."""
    out = tmp_path / "t.onnx"
    code, _, err = run(["train", AE, "--data", ae_data, "--loss", "mse(outptu, features)", "--freeze", "nothing*", "-o", out], capsys)
    assert_error(code, err, BAD_INPUT, "2 problems with the names given", "--freeze pattern matched no parameter: nothing*",
                 "unknown name in the loss or metrics: 'outptu' (did you mean 'output'?)", hint=("onnxsurgeon params", "an output of the model"))
    assert_not_written(out)
    code, _, err = run(["run", AE, "--data", ae_data, "--out", "nope", "--out", "L4_yy", "-o", tmp_path / "o.npz"], capsys)
    assert_error(code, err, BAD_INPUT, "2 names could not be resolved", "'nope'", "'L4_yy'; did you mean 'L4.y'")
    assert_not_written(tmp_path / "o.npz")
    code, _, err = run(["train", AE, "--data", ae_data, "--loss", "mse(outptu, features)", "--fixed", "rate", "-o", out], capsys)
    assert_error(code, err, BAD_INPUT, "2 problems with the names given", "'outptu'",
                 "--fixed 'rate': the data holds no array of that name", hint=("--fixed and --batch-axis",))
    assert_not_written(out)


def test_train_op_without_gradient(tmp_path, capsys):
    w = np.ones((2, 2), np.float32)
    model = tiny_model([helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Shrink", ["h"], ["y"], name="act")], {"W1": w})
    path = save(model, tmp_path / "shrink.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2), np.float32), t=np.ones((4, 2), np.float32))
    out = tmp_path / "t.onnx"
    code, _, err = run(["train", path, "--data", tmp_path / "d.npz", "--loss", "mse(y, t)", "-o", out], capsys)
    assert_error(code, err, BAD_INPUT, "no gradient for 1 node", "node 'act' (Shrink), after 'W1'", hint=("--freeze",))
    assert_not_written(out)


def _classifier(tmp_path: Path, labels: np.ndarray) -> tuple[Path, Path]:
    w = numpy_helper.from_array(np.ones((2, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["z"])], "c",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], [w])
    model = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c.onnx")
    np.savez(tmp_path / "d.npz", x=np.ones((len(labels), 2), np.float32), labels=labels)
    return model, tmp_path / "d.npz"


@pytest.mark.parametrize("labels, words", [
    (np.array([0, 2, 3, 1]), ("array 'labels' holds class indices outside 0 to 2 (ce(z, labels)): 3 (1 in all; 3 at [2])",)),
    (np.array([0, -1, 2, 1]), ("outside 0 to 2", "-1 at [1]")),
])
def test_train_and_eval_class_indices_out_of_range(tmp_path, capsys, labels, words):
    model, data = _classifier(tmp_path, labels)
    out = tmp_path / "t.onnx"
    code, _, err = run(["train", model, "--data", data, "--loss", "ce(z, labels)", "-o", out], capsys)
    assert_error(code, err, BAD_INPUT, *words, hint=("from 0 to the number of classes - 1",))
    assert_not_written(out)
    code, _, err = run(["eval", model, "--data", data, "--metric", "error(z, labels)"], capsys)
    assert_error(code, err, BAD_INPUT, "holds class indices outside 0 to 2 (error(z, labels))")


def test_train_float_labels_shaped_like_indices(tmp_path, capsys):
    model, data = _classifier(tmp_path, np.array([0.0, 2.0, 1.0, 1.0]))
    code, _, err = run(["train", model, "--data", data, "--loss", "ce(z, labels)", "-o", tmp_path / "t.onnx"], capsys)
    assert_error(code, err, BAD_INPUT, "ce: labels (float32[N]) has the shape of class indices, but holds floats",
                 hint=("labels.astype(numpy.int64)",))


def test_train_layout_and_data_files_errors(ae_data, tmp_path, capsys):
    out = tmp_path / "t.onnx"
    code, _, err = run(train_argv(ae_data, out, "--fixed", "inptu"), capsys)
    assert_error(code, err, BAD_INPUT, "--fixed 'inptu': the data holds no array of that name; did you mean 'input'?")
    code, _, err = run(train_argv(ae_data, out, "--batch-axis", "input"), capsys)
    assert_error(code, err, BAD_INPUT, "--batch-axis 'input' is not NAME=AXIS", hint=("state=1",))
    code, _, err = run(train_argv(tmp_path / "shards-*.npz", out), capsys)
    assert_error(code, err, BAD_INPUT, "no file matches", hint=("quote it",))
    (tmp_path / "empty").mkdir()
    code, _, err = run(train_argv(tmp_path / "empty", out), capsys)
    assert_error(code, err, BAD_INPUT, "holds no .npy files", hint=("NAME.npy",))
    assert_not_written(out)


def test_train_refuses_an_output_it_cannot_write_before_training(ae_data, tmp_path, capsys, monkeypatch):
    """An -o that is a folder, a --checkpoint-dir that is a file, a --log that is a folder:
    refused before the first step (not after the whole run), exit 2, and no log left."""
    from onnxsurgeon.train import loop

    def never(*args, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "train", never)
    (tmp_path / "isdir").mkdir()
    code, _, err = run(train_argv(ae_data, tmp_path / "isdir"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "it is a directory", hint=("name a file",))
    assert not (tmp_path / "isdir.metrics.jsonl").exists()
    out = tmp_path / "t.onnx"
    for where in ("train.npz", "train.npz/sub"):
        code, _, err = run(train_argv(ae_data, out, "--checkpoint-dir", tmp_path / where), capsys)
        assert_error(code, err, BAD_INPUT, "as the checkpoint folder", "train.npz is a file", hint=("--checkpoint-dir",))
    code, _, err = run(train_argv(ae_data, out, "--log", tmp_path / "isdir"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write the log", "it is a directory", hint=("--log",))
    (tmp_path / "t.onnx.data").mkdir()  # where --external-data (or weights past 2 GB) would go
    code, _, err = run(train_argv(ae_data, out, "--external-data"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "t.onnx.data: it is a directory", hint=("name a file",))
    assert_not_written(out)


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder nothing can be made in. chmod 555 where that binds; as root (which it does
    not bind), every way a file or folder is made in it fails as the kernel would."""
    import builtins
    import tempfile

    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(AE, folder / "model.onnx")  # a model that lies there
    folder.chmod(0o555)
    try:
        (folder / "probe").touch()
    except PermissionError:
        yield folder
        folder.chmod(0o755)
        return
    (folder / "probe").unlink()
    denied = PermissionError(errno.EACCES, "Permission denied")

    def inside(path) -> bool:
        return Path(path).resolve().parent == folder.resolve()

    real_mkstemp, real_open, real_mkdir = tempfile.mkstemp, builtins.open, os.mkdir

    def mkstemp(*args, dir=None, **kw):
        if dir is not None and Path(dir).resolve() == folder.resolve():
            raise denied
        return real_mkstemp(*args, dir=dir, **kw)

    def open_(file, mode="r", *args, **kw):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            raise denied
        return real_open(file, mode, *args, **kw)

    def mkdir(path, *args, **kw):
        if inside(path):
            raise denied
        return real_mkdir(path, *args, **kw)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "mkdir", mkdir)
    yield folder


def test_train_into_a_read_only_folder_is_refused_before_training(ae_data, tmp_path, capsys, monkeypatch, read_only):
    """-o, --log or --checkpoint-dir where nothing can be written: exit 2 before the first
    step (the log's open was exit 4, and -o alone was found out only after the run)."""
    from onnxsurgeon.train import loop

    def never(*args, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "train", never)
    out = tmp_path / "t.onnx"
    code, _, err = run(train_argv(ae_data, read_only / "t.onnx", "--log", tmp_path / "log.jsonl"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "t.onnx", "Permission denied", hint=("writable",))
    code, _, err = run(train_argv(ae_data, read_only / "t.onnx"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "Permission denied", hint=("writable",))
    code, _, err = run(train_argv(ae_data, out, "--log", read_only / "log.jsonl"), capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "log.jsonl", "Permission denied", hint=("writable",))
    for ck in (read_only, read_only / "ck"):
        code, _, err = run(train_argv(ae_data, out, "--checkpoint-dir", ck), capsys)
        assert_error(code, err, BAD_INPUT, f"cannot write checkpoints in {ck}", "Permission denied", hint=("--checkpoint-dir",))
    assert_not_written(out)
    assert [p.name for p in read_only.iterdir()] == ["model.onnx"]


def test_default_output_in_a_read_only_folder_points_at_o(capsys, read_only):
    """Without -o the piece goes beside the model; where that folder cannot be written, the
    hint is -o (the user chose no folder), and nothing is written."""
    code, _, err = run(["extract", read_only / "model.onnx", "--in", "input", "--out", "L4.y"], capsys)
    assert_error(code, err, BAD_INPUT, "cannot write", "the default output of this cut", hint=("pass -o OUT.onnx",))
    assert [p.name for p in read_only.iterdir()] == ["model.onnx"]


def test_train_outputs_that_collide_are_refused_before_training(ae_data, tmp_path, capsys, monkeypatch):
    """-o, --log, --plot and --checkpoint-dir naming one path, or --log naming the model or
    a data file: refused before the first step (the log was appended to the model, -o over
    the checkpoint folder failed after the whole run)."""
    from onnxsurgeon.train import loop

    def never(*args, **kw):
        raise AssertionError("training started")

    monkeypatch.setattr(loop, "train", never)
    model = tmp_path / "m.onnx"
    shutil.copy(AE, model)
    same = tmp_path / "same"
    for args, words in [
        (["-o", same, "--checkpoint-dir", same], "-o and --checkpoint-dir name the same path"),
        (["-o", same, "--log", same], "-o and --log name the same path"),
        (["-o", same, "--plot", same], "-o and --plot name the same path"),
        (["-o", tmp_path / "t.onnx", "--log", model], "is the model of this command"),
        (["-o", tmp_path / "t.onnx", "--log", ae_data], "is a data file of this command"),
    ]:
        before = sha256(model), sha256(ae_data)
        argv = ["train", model, "--data", ae_data, "--loss", "mse(output, features)", *args]
        code, _, err = run(argv, capsys)
        assert_error(code, err, BAD_INPUT, words)
        assert (sha256(model), sha256(ae_data)) == before and not same.exists()


def test_no_output_over_a_file_the_command_reads(ae_data, tmp_path, capsys):
    """-o naming a file the command reads (run's model and data, also inside a --data
    folder; train's --data and --val; extract's --data; compose's recipe; transfer's --from)
    is refused, --force or not: the output would replace what it is computed from."""
    model = tmp_path / "m.onnx"
    shutil.copy(AE, model)
    folder = tmp_path / "arrays"
    folder.mkdir()
    np.save(folder / "input.npy", np.zeros((2, 64), np.float32))
    val = tmp_path / "v.npz"
    shutil.copy(ae_data, val)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[inputs]\nx = "float32[N,64]"\n[pieces.ae]\nmodel = "{AE.as_posix()}"\ninputs = ["input"]\n'
                      'outputs = ["L4.y"]\n[outputs]\nz = "ae(x)"\n')
    cases = [
        (["run", model, "--data", ae_data, "-o", model], model, "the model"),
        (["run", model, "--data", ae_data, "-o", ae_data], ae_data, "a data file"),
        (["run", model, "--data", folder, "-o", folder / "input.npy"], folder / "input.npy", "a data file"),
        (train_argv(ae_data, ae_data), ae_data, "a data file"),
        (train_argv(ae_data, val, "--val", val), val, "a data file"),
        (["extract", AE, "--in", "input", "--out", "L4.y", "--data", ae_data, "-o", ae_data, "--force"], ae_data, "the --data file"),
        (["compose", recipe, "-o", recipe, "--force"], recipe, "the recipe"),
        (["transfer", "--from", model, "--to", AE, "-o", model, "--force"], model, "the --from model"),
    ]
    for argv, out, what in cases:
        before = sha256(out)
        code, _, err = run(argv, capsys)
        assert_error(code, err, BAD_INPUT, f"the output {out} is {what} of this command", hint=("another file",))
        assert sha256(out) == before
    (tmp_path / "isdir").mkdir()
    code, _, err = run(["run", model, "--data", ae_data, "-o", tmp_path / "isdir"], capsys)
    assert_error(code, err, BAD_INPUT, "it is a directory", hint=("name a file",))


def test_train_resume_checks_the_checkpoint(ae_data, tmp_path, capsys):
    ck, out = tmp_path / "ck", tmp_path / "t.onnx"
    assert run(train_argv(ae_data, out, "--checkpoint-dir", ck, "--optimizer", "adam"), capsys)[0] == OK
    out.unlink()
    code, _, err = run(["train", AE, "--data", ae_data, "--loss", "0.5 * mse(output, features)", "-o", out, "--checkpoint-dir", ck, "--resume"], capsys)
    assert_error(code, err, BAD_INPUT, "was written for another training graph", hint=("same model, loss and metrics",))
    code, _, err = run(train_argv(ae_data, out, "--checkpoint-dir", ck, "--resume"), capsys)
    assert_error(code, err, BAD_INPUT, "written by a run with other settings", "optimizer 'adam' (now 'adamw')", hint=("--batch-size",))
    assert_not_written(out)
    newest = sorted(ck.glob("*.ckpt"))[-1]
    damaged = newest.with_name("step-999999999.ckpt")
    damaged.write_bytes(newest.read_bytes()[:-100])
    code, _, err = run(train_argv(ae_data, out, "--checkpoint-dir", ck, "--resume", "--optimizer", "adam", "--epochs", 2), capsys)
    assert code == OK and f"warning: skipped checkpoint {damaged}" in err and out.exists()


def test_transfer_strict_and_bad_map(tmp_path, capsys):
    out = tmp_path / "x.onnx"
    code, out_text, err = run(["transfer", "--from", AE, "--to", TWO_IO, "-o", out, "--strict"], capsys)
    assert_error(code, err, CHECK_FAILED, "not every parameter matched", "nothing written", hint=("--map OLD=NEW",))
    assert "UNEXPECTED" in out_text
    assert_not_written(out)
    code, _, err = run(["transfer", "--from", AE, "--to", AE, "-o", out, "--map", "L1.*"], capsys)
    assert_error(code, err, BAD_INPUT, "--map 'L1.*' is not OLD=NEW", hint=("e.g. --map",))
    assert_not_written(out)


def test_transfer_to_an_output_it_cannot_write_says_so_first(tmp_path, capsys):
    """The report (its table, or --json with "written") came first, then the refusal: the
    JSON on stdout named a file that was never written."""
    for args in ([], ["--json"]):
        out = tmp_path / "nodir" / "x.onnx"
        code, stdout, err = run(["transfer", "--from", AE, "--to", AE, "-o", out, *args], capsys)
        assert_error(code, err, BAD_INPUT, "folder", "does not exist", hint=("create the folder",))
        assert stdout == ""


def test_model_beside_a_data_file_of_another_save(tmp_path, capsys):
    # What a writer killed between its two renames leaves: the old model, the new data.
    model = serde.load(AE_EXT)
    old, new = tmp_path / "old" / "m.onnx", tmp_path / "new" / "m.onnx"
    for path in (old, new):
        path.parent.mkdir()
        serde.save(model, path, external_data=True)
    shutil.copyfile(new.with_name("m.onnx.data"), old.with_name("m.onnx.data"))
    code, _, err = run(["info", old], capsys)
    assert_error(code, err, BAD_INPUT, "m.onnx and its data file 'm.onnx.data' were written by different saves", hint=("write the model again",))
    code, _, err = run(["info", new], capsys)
    assert code == OK, err


@pytest.mark.parametrize("field", ["graph.name", "graph.doc_string", "producer_name", "node.output"])
def test_text_that_is_not_utf8(tmp_path, capsys, field):
    """A string field holding invalid UTF-8 (one flipped byte) is refused on load, exit 2."""
    model = onnx.load(AE)
    mark = "\x01MARK\x01"
    if field == "graph.name":
        model.graph.name = mark
    elif field == "graph.doc_string":
        model.graph.doc_string = mark
    elif field == "producer_name":
        model.producer_name = mark
    else:
        model.graph.node[-1].output[0] = mark
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString().replace(mark.encode(), b"\xffMARK\x01"))
    out = tmp_path / "p.onnx"
    for argv in (extract_argv(path, out, "--in", "input", "--out", "L4.y"), ["info", path], ["params", path]):
        code, _, err = run(argv, capsys)
        assert_error(code, err, BAD_INPUT, "m.onnx holds text that is not valid UTF-8", field.split(".")[-1], hint=("UTF-8",))
    assert_not_written(out)


def test_negative_seeds_are_refused(tmp_path, capsys, ae_data):
    """compose --seed -5, a recipe's seed = -1, train --seed -3, verify --seed -1: exit 2 with
    a message, not a traceback (issue 12)."""
    recipe = (Path(__file__).resolve().parent.parent / "examples" / "feature_extractor" / "recipe.toml").read_text()
    recipe = recipe.replace("../../fixtures/autoencoder.onnx", str(AE).replace("\\", "/"))
    good = tmp_path / "r.toml"
    good.write_text(recipe)
    net = tmp_path / "net.onnx"
    code, _, err = run(["compose", good, "-o", net, "--seed", "-5"], capsys)
    assert_error(code, err, BAD_INPUT, "seed must be a non-negative integer, not -5")
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = -1\n" + recipe)
    code, _, err = run(["compose", bad, "-o", net], capsys)
    assert_error(code, err, BAD_INPUT, "bad.toml:1:", "'seed' must be a non-negative integer, not -1")
    assert_not_written(net)
    out = tmp_path / "t.onnx"
    code, _, err = run(train_argv(ae_data, out, "--seed", "-3"), capsys)
    assert_error(code, err, BAD_INPUT, "--seed must be a non-negative integer, not -3")
    assert_not_written(out)
    code, _, err = run(["verify", AE, AE, "--seed", "-1"], capsys)
    assert_error(code, err, BAD_INPUT, "--seed must be a non-negative integer, not -1")


def test_transfer_that_matches_nothing_fails_and_writes_nothing(tmp_path, capsys):
    """0 matched is never what was meant: exit 1 even without --strict, nothing written."""
    out = tmp_path / "x.onnx"
    code, stdout, err = run(["transfer", "--from", TWO_IO, "--to", AE, "-o", out], capsys)
    assert_error(code, err, CHECK_FAILED, "nothing matched: none of the 16 parameters of", "nothing written", hint=("--map",))
    assert "MISSING" in stdout
    assert_not_written(out)
    code, _, err = run(["transfer", "--from", AE, "--to", AE, "-o", out], capsys)  # everything matches: written
    assert code == OK, err
    assert out.exists()


def test_sigterm_while_writing_is_an_interrupt(tmp_path, capsys, monkeypatch):
    """SIGTERM (kill, timeout) ends a command as Ctrl-C does: exit 130, no temporary file."""
    import signal

    real = serde._write_inline

    def killed(model, f):
        f.write(b"partial")
        os.kill(os.getpid(), signal.SIGTERM)
        real(model, f)

    class Unhandled(Exception):
        pass

    def unhandled(signum, frame):  # what reaches this handler was not handled by the command
        raise Unhandled

    monkeypatch.setattr(serde, "_write_inline", killed)
    previous = signal.signal(signal.SIGTERM, unhandled)  # not the default: that would end pytest
    try:
        out = tmp_path / "piece.onnx"
        code, _, err = run(["extract", AE, "--in", "input", "--out", "L4.y", "-o", out], capsys)
        assert signal.getsignal(signal.SIGTERM) is unhandled  # given back after the command
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert code == INTERRUPTED and "Traceback" not in err, err
    assert_not_written(out)
