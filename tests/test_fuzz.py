"""Hostile and damaged inputs through the real command line: every one ends with exit code
0 (if it happens to still be valid), 1, 2 or 3 and a clean message, never an internal error
(exit 4), a traceback, a hang or a memory blow-up.

The inputs (seeded): random bytes; models, recipes and .npz files truncated at random
offsets, with random bits flipped and random runs of bytes overwritten; and crafted files:
absurd shapes (``[2**40]``), cycles, duplicate, empty and newline value names, subgraphs
nested deeper than protobuf or onnxruntime can take, .npz headers that claim terabytes.

They run in a child process (one per group) that calls ``onnxsurgeon.cli.main`` for each
input with its address space limited by ``RLIMIT_AS`` and each call bounded by an alarm, so a
memory blow-up or hang fails the test instead of the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
AE = FIXTURES / "autoencoder.onnx"
BASES = ["autoencoder", "if_outer", "loop_scan", "two_io", "local_function", "bn_dropout"]
MEMORY = 3 << 30  # address space of the child: onnxruntime and numpy need about 0.3 GB
PER_INPUT = 20  # seconds, for any one input
CLEAN = {0, 1, 2, 3}

CHILD = r"""
import contextlib, io, json, resource, signal, sys, time
memory, per_input, cases, progress = json.loads(sys.stdin.read())
resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

class Hang(BaseException):
    pass

def alarm(*_):
    raise Hang()

signal.signal(signal.SIGALRM, alarm)
from onnxsurgeon.cli import main
results = []
for case in cases:
    with open(progress, "w") as f:
        f.write(json.dumps(case))
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    signal.alarm(per_input)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(case["argv"])
    except Hang:
        code = "hang"
    except MemoryError:
        code = "memory"
    finally:
        signal.alarm(0)
    results.append({"id": case["id"], "code": code, "err": err.getvalue()[-3000:], "seconds": time.perf_counter() - start})
with open(progress, "w") as f:
    f.write(json.dumps(results))
"""


def run_cases(cases: list[dict], tmp: Path) -> list[dict]:
    """Run each case's argv through the CLI in one memory-limited child; return the results."""
    progress = tmp / "progress.json"
    payload = json.dumps([MEMORY, PER_INPUT, cases, str(progress)])
    proc = subprocess.run([sys.executable, "-c", CHILD], input=payload, capture_output=True, text=True,
                          timeout=PER_INPUT * 4 + 3 * len(cases), cwd=tmp, env={**os.environ, "PYTHONPATH": str(ROOT)})
    last = progress.read_text() if progress.exists() else "(nothing)"
    assert proc.returncode == 0, f"the child died ({proc.returncode}) at {last}:\n{proc.stderr[-3000:]}"
    return json.loads(last)


def assert_clean(results: list[dict], cases: list[dict], group: str) -> None:
    by_id = {c["id"]: c for c in cases}
    bad = []
    for r in results:
        err = r["err"]
        ok = r["code"] in CLEAN and "Traceback" not in err and "internal error" not in err
        if ok and r["code"] != 0:
            first = err.splitlines()[0] if err else ""
            ok = first.startswith("onnxsurgeon: error: ") or first.startswith("Usage:")
        if not ok:
            bad.append(f"{r['id']} {by_id[r['id']]['argv']}: exit {r['code']}\n{err[-1500:]}")
    assert len(results) == len(cases)
    figures.add(f"fuzz: {group} inputs", len(cases))
    figures.add(f"fuzz: {group} refused cleanly (exit 1-3)", sum(r["code"] in (1, 2, 3) for r in results))
    figures.note(f"fuzz: {group} slowest input (s)", round(max(r["seconds"] for r in results), 2))
    assert not bad, f"{len(bad)} of {len(cases)} inputs were not handled cleanly:\n" + "\n\n".join(bad[:5])


# --- mutations ---------------------------------------------------------------------------------


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    kind = rng.choice(["random", "truncate", "flip", "overwrite", "splice"])
    if kind == "random" or not data:
        return "random", rng.bytes(int(rng.integers(0, 4000)))
    if kind == "truncate":
        return "truncate", data[: int(rng.integers(0, len(data)))]
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 17))):
            i = int(rng.integers(0, len(buf)))
            buf[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == "overwrite":
        i = int(rng.integers(0, len(buf)))
        n = int(rng.integers(1, 64))
        buf[i : i + n] = rng.bytes(n)
    else:  # a chunk of the file repeated somewhere else
        i, j = sorted(int(x) for x in rng.integers(0, len(buf), 2))
        k = int(rng.integers(0, len(buf)))
        buf[k:k] = buf[i:j][:4096]
    return kind, bytes(buf)


def ports(path: Path) -> tuple[str, str]:
    m = onnx.load(path, load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return next(v.name for v in m.graph.input if v.name not in inits), m.graph.output[0].name


def model_commands(path: str, base: Path, first_in: str, first_out: str) -> list[list[str]]:
    return [
        ["info", path], ["nodes", path], ["params", path, "--json"],
        ["extract", path, "--in", first_in, "--out", first_out, "-o", "piece.onnx", "--force", "-q"],
        ["extract", path, "--in", first_in, "--out", first_out, "--params", "constant", "--dry-run", "--json"],
        ["verify", str(base), path, "-q"],
    ]


def test_damaged_models(tmp_path):
    rng = np.random.default_rng(20240601)
    cases = []
    for k in range(240):
        name = BASES[k % len(BASES)]
        base = FIXTURES / f"{name}.onnx"
        kind, data = mutate(base.read_bytes(), rng)
        path = tmp_path / f"m{k}-{name}-{kind}.onnx"
        path.write_bytes(data)
        commands = model_commands(path.name, base, *ports(base))
        cases.append({"id": path.name, "argv": commands[k % len(commands)]})
    assert_clean(run_cases(cases, tmp_path), cases, "damaged models")


# --- crafted models -------------------------------------------------------------------------------

F = TensorProto.FLOAT


def _vi(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, shape)


def _model(nodes, inputs, outputs, inits=()) -> bytes:
    g = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m.SerializeToString()


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def nested_if(depth: int) -> bytes:
    """A model whose If nodes nest ``depth`` deep, written byte by byte: onnx's own helpers
    refuse to build what protobuf would not parse."""
    leaf = helper.make_graph([helper.make_node("Relu", ["x"], ["o"])], "leaf", [], [_vi("o", ["N", 2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "other", [], [_vi("e", ["N", 2])])
    else_attr = helper.make_attribute("else_branch", other).SerializeToString()
    body = leaf.SerializeToString()
    out = _field(12, _vi("o", ["N", 2]).SerializeToString())
    top = _field(1, helper.make_node("Relu", ["x"], ["o"]).SerializeToString())
    for d in range(depth):
        then_attr = helper.make_attribute("then_branch", onnx.GraphProto()).SerializeToString() + _field(6, body)
        node = helper.make_node("If", ["c"], ["o"], name=f"if{d}").SerializeToString()
        top = _field(1, node + _field(5, then_attr) + _field(5, else_attr))
        body = top + _field(2, f"b{d}".encode()) + out
    top += _field(5, numpy_helper.from_array(np.array(True), "c").SerializeToString())
    top += _field(11, _vi("x", ["N", 2]).SerializeToString()) + out + _field(2, b"top")
    head = onnx.ModelProto(ir_version=8)
    head.opset_import.append(helper.make_opsetid("", 17))
    return head.SerializeToString() + _field(7, top)


def crafted_models() -> dict[str, bytes]:
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    huge_init = onnx.TensorProto(name="W", data_type=F, dims=[2**40])
    lying_init = onnx.TensorProto(name="W", data_type=F, dims=[2**20, 2**20], raw_data=b"\0" * 16)
    negative = onnx.TensorProto(name="W", data_type=F, dims=[-5, 3], raw_data=b"\0" * 16)
    add_w = [helper.make_node("Add", ["x", "W"], ["y"], name="a")]
    return {
        "shape-2e40": _model(relu, [_vi("x", [2**40])], [_vi("y", [2**40])]),
        "shape-2e31-squared": _model(relu, [_vi("x", [2**31, 2**31])], [_vi("y", None)]),
        "shape-negative": _model(relu, [_vi("x", [-7, 2])], [_vi("y", [-7, 2])]),
        "init-2e40-no-data": _model(add_w, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], [huge_init]),
        "init-lying-dims": _model(add_w, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], [lying_init]),
        "init-negative-dims": _model(add_w, [_vi("x", ["N", 4])], [_vi("y", ["N", 4])], [negative]),
        "cycle": _model(
            [helper.make_node("Relu", ["b"], ["a"], name="r1"), helper.make_node("Relu", ["a"], ["b"], name="r2"),
             helper.make_node("Add", ["x", "a"], ["y"], name="r3")],
            [_vi("x", ["N", 2])], [_vi("y", ["N", 2])]),
        "self-loop": _model([helper.make_node("Add", ["x", "y"], ["y"], name="r")], [_vi("x", ["N", 2])], [_vi("y", ["N", 2])]),
        "duplicate-values": _model(
            [helper.make_node("Relu", ["x"], ["a"], name="r1"), helper.make_node("Neg", ["x"], ["a"], name="r2"),
             helper.make_node("Add", ["x", "a"], ["y"], name="r3")],
            [_vi("x", ["N", 2])], [_vi("y", ["N", 2])]),
        "duplicate-inputs": _model(relu, [_vi("x", ["N", 2]), _vi("x", ["N", 3])], [_vi("y", ["N", 2])]),
        "empty-names": _model(
            [helper.make_node("Relu", ["x"], [""], name=""), helper.make_node("Add", ["x", ""], ["y"], name="")],
            [_vi("x", ["N", 2])], [_vi("y", ["N", 2])]),
        "empty-input-name": _model([helper.make_node("Relu", [""], ["y"], name="r")], [_vi("", ["N", 2])], [_vi("y", ["N", 2])]),
        "newline-names": _model(
            [helper.make_node("Relu", ["x\n"], ["a\nb"], name="n\nm"), helper.make_node("Add", ["x\n", "a\nb"], ["y\r\n"], name="\n")],
            [_vi("x\n", ["N", 2])], [_vi("y\r\n", ["N", 2])]),
        "unknown-op": _model([helper.make_node("NoSuchOp", ["x"], ["y"], name="r", domain="evil")], [_vi("x", ["N", 2])], [_vi("y", ["N", 2])]),
        "no-nodes": _model([], [_vi("x", ["N", 2])], [_vi("y", ["N", 2])]),
        "nested-if-12": nested_if(12),
        "nested-if-24": nested_if(24),
        "nested-if-40": nested_if(40),
        "nested-if-3000": nested_if(3000),
    }


def test_crafted_models(tmp_path):
    cases = []
    for name, data in crafted_models().items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(data)
        for k, argv in enumerate(model_commands(path.name, path, "x", "y")):
            cases.append({"id": f"{name}#{k}", "argv": argv})
        cases.append({"id": f"{name}#name", "argv": ["extract", path.name, "--in", "x\n", "--out", "a\nb", "-o", "p.onnx", "--force"]})
    results = run_cases(cases, tmp_path)
    assert_clean(results, cases, "crafted models")
    codes = {r["id"]: r["code"] for r in results}
    # the ones that must be refused, not merely survived
    assert codes["shape-2e40#5"] == 2 and codes["init-2e40-no-data#5"] == 2  # no 4 TiB of random data
    assert codes["nested-if-40#0"] == 2 and codes["nested-if-3000#0"] == 2  # deeper than protobuf parses
    assert codes["nested-if-24#5"] == 2  # parses, but onnxruntime would take minutes: refused
    assert codes["cycle#5"] == 2 and codes["duplicate-values#5"] == 2


def test_deep_nesting_is_refused_quickly():
    from onnxsurgeon import runtime
    from onnxsurgeon.errors import InputError

    model = onnx.ModelProto()
    model.ParseFromString(nested_if(24))
    assert runtime.nesting(model.graph) == 24
    with pytest.raises(InputError, match="nests subgraphs 24 levels deep"):
        runtime.session(model)
    model.ParseFromString(nested_if(3))
    assert runtime.nesting(model.graph) == 3


# --- recipes ----------------------------------------------------------------------------------------

RECIPE = (ROOT / "examples" / "feature_extractor" / "recipe.toml").read_text().replace(
    "../../fixtures/autoencoder.onnx", str(AE).replace("\\", "/"))

HOSTILE_EXPRESSIONS = [
    "features.__class__", "__import__('os').system('touch pwned')", "(lambda: 1)()", "features ** 2**10**10",
    "features ** (10**8)", "features * 9" + "9" * 5000, "features * 1e999", "features * (1e308 * 1e308)", "features * 2 ** -1e999",
    "features * " + "9" * 400, "features * (" + "9" * 300 + " * " + "9" * 300 + ")",
    "(" * 200 + "features" + ")" * 200, "relu(" * 100 + "features" + ")" * 100, "-" * 5000 + "features",
    "features" + " + features" * 3000, "open('/etc/passwd')", "eval('1')", "exec('x=1')", "getattr(features, 'x')",
    "features[0]", "[x for x in features]", "{'a': 1}", "f'{features}'", "features if features else features",
    "encoder(features).__dict__", "encoder(features)._x", "globals()", "__builtins__", "features.real",
    "dense(features, 10**12)", "dense(features, -1)", "dense(features, 2.5)", "dense(features, 'a')",
    "encoder(features, features, features)", "encoder(nope=features)", "encoder(**features)", "encoder(*features)",
    "\x00", "features\n\n\n+", "'''", "\\", "a := features", "await features", "yield features",
]


def test_damaged_recipes(tmp_path):
    rng = np.random.default_rng(7)
    cases = []
    base = RECIPE.encode()
    for k in range(80):
        kind, data = mutate(base, rng)
        path = tmp_path / f"r{k}-{kind}.toml"
        path.write_bytes(data)
        cases.append({"id": path.name, "argv": ["compose", path.name, "-o", "net.onnx", "--force", "-q"]})
    for k, expression in enumerate(HOSTILE_EXPRESSIONS):
        path = tmp_path / f"hostile{k}.toml"
        text = RECIPE.replace("z = \"dense(h, 10, name='classifier')\"", f"z = {json.dumps(expression)}")
        path.write_text(text, encoding="utf-8")
        cases.append({"id": path.name, "argv": ["compose", path.name, "-o", f"hostile{k}.onnx", "-q"]})
    # tables nested 5,000 deep, a huge integer, a recipe that is not UTF-8, one that is a directory
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000)
    (tmp_path / "bigint.toml").write_text("seed = " + "9" * 5000 + "\n" + RECIPE.split("\n", 2)[2])
    (tmp_path / "latin1.toml").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / "adir.toml").mkdir()
    for name in ("deep.toml", "bigint.toml", "latin1.toml", "adir.toml", "missing.toml"):
        cases.append({"id": name, "argv": ["compose", name, "-o", "net.onnx", "--force", "-q"]})
    results = run_cases(cases, tmp_path)
    assert_clean(results, cases, "recipes")
    codes = {r["id"]: r["code"] for r in results}
    accepted = [HOSTILE_EXPRESSIONS[k] for k in range(len(HOSTILE_EXPRESSIONS)) if codes[f"hostile{k}.toml"] != 2]
    assert not accepted, f"hostile expressions not refused: {accepted}"
    assert not (tmp_path / "pwned").exists()
    assert not list(tmp_path.glob("hostile*.onnx"))
    figures.add("fuzz: hostile recipe expressions, each refused (exit 2)", len(HOSTILE_EXPRESSIONS))


# --- .npz files -------------------------------------------------------------------------------------


def crafted_npz(folder: Path) -> list[str]:
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    np.savez(folder / "objects.npz", input=np.array([{"a": 1}, None], dtype=object))
    np.save(folder / "single.npy", x)
    for name, shape in (("header-2e40", (2**40,)), ("header-1e9", (250_000_000,)), ("header-negative", (-1, 64))):
        with zipfile.ZipFile(folder / f"{name}.npz", "w") as z:
            with z.open("input.npy", "w") as f:
                header = {"descr": "<f4", "fortran_order": False, "shape": shape}
                try:
                    np.lib.format.write_array_header_1_0(f, header)
                except ValueError:
                    f.write(b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 64), }" + b" " * 50 + b"\n")
                f.write(b"\0" * 256)
    with zipfile.ZipFile(folder / "code-in-header.npz", "w") as z:
        z.writestr("input.npy", b"\x93NUMPY\x01\x00F\x00{'descr': __import__('os').getcwd(), 'shape': (3,64)}        \n" + b"\0" * 768)
    np.savez(folder / "wrong-dtype.npz", input=x.astype(np.complex64))
    np.savez(folder / "zero-size.npz", input=np.zeros((0, 64), np.float32))
    np.savez(folder / "bool.npz", input=np.zeros((3, 64), bool))
    np.savez(folder / "strings.npz", input=np.array(["a", "b"]))
    np.savez(folder / "nan.npz", input=np.full((3, 64), np.nan, np.float32))
    return ["objects.npz", "single.npy", "header-2e40.npz", "header-1e9.npz", "header-negative.npz", "code-in-header.npz",
            "wrong-dtype.npz", "zero-size.npz", "bool.npz", "strings.npz", "nan.npz"]


def test_damaged_npz(tmp_path):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    np.savez(tmp_path / "plain.npz", input=x)
    np.savez_compressed(tmp_path / "packed.npz", input=x)
    shutil.copy(AE, tmp_path / "ae.onnx")
    cases = []
    for k in range(80):
        base = (tmp_path / ("plain.npz" if k % 2 else "packed.npz")).read_bytes()
        kind, data = mutate(base, rng)
        path = tmp_path / f"d{k}-{kind}.npz"
        path.write_bytes(data)
        argv = ["verify", "ae.onnx", "ae.onnx", "--data", path.name, "-q"]
        if k % 4 == 3:
            argv = ["extract", "ae.onnx", "--in", "input", "--out", "L4.y", "--data", path.name, "-o", "p.onnx", "--force", "-q"]
        cases.append({"id": path.name, "argv": argv})
    crafted = crafted_npz(tmp_path)
    for name in crafted:
        cases.append({"id": name, "argv": ["verify", "ae.onnx", "ae.onnx", "--data", name, "-q"]})
    results = run_cases(cases, tmp_path)
    assert_clean(results, cases, ".npz files")
    codes = {r["id"]: r["code"] for r in results}
    for name in ("objects.npz", "single.npy", "header-2e40.npz", "header-1e9.npz", "header-negative.npz", "code-in-header.npz"):
        assert codes[name] == 2, name
    errs = {r["id"]: r["err"] for r in results}
    assert "never unpickled" in errs["objects.npz"] and "header says" in errs["header-2e40.npz"]


# --- fields: types, values and encodings, not just bytes ------------------------------------------

HOSTILE_COUNTS = ["-1", "-5", "abc", "", " 5", "5 ", "+5", "1e3", "0x10", "99999999999", str(2**64), "9" * 400, "١٢"]


def external_base(tmp: Path) -> Path:
    """The external-data auto-encoder copied into ``tmp`` (model and data file)."""
    for p in (FIXTURES / "autoencoder_external").iterdir():
        shutil.copy(p, tmp / p.name)
    return tmp / "autoencoder.onnx"


def test_hostile_external_data_fields(tmp_path):
    """offset and length of every kind a file can hold: refused with exit 2 within seconds,
    by every command, never a hang (`length: "-1"` once looped forever) or an exit 4."""
    base = external_base(tmp_path)
    model = onnx.load(base, load_external_data=False)
    cases = []
    for key in ("offset", "length"):
        for k, value in enumerate(HOSTILE_COUNTS):
            m = onnx.ModelProto()
            m.CopyFrom(model)
            t = next(t for t in m.graph.initializer if t.data_location == TensorProto.EXTERNAL)
            entries = {e.key: e for e in t.external_data}
            if key not in entries:
                entries[key] = t.external_data.add()
                entries[key].key = key
            entries[key].value = value
            path = tmp_path / f"{key}{k}.onnx"
            path.write_bytes(m.SerializeToString())
            for c, argv in enumerate(model_commands(path.name, base, "input", "output")):
                cases.append({"id": f"{key}={value[:12]!r}#{c}", "argv": argv})
    results = run_cases(cases, tmp_path)
    assert_clean(results, cases, "external data fields")
    wrong = [(r["id"], r["code"]) for r in results if r["code"] != 2]
    assert not wrong, wrong  # every one is refused, by every command
    slowest = max(r["seconds"] for r in results)
    figures.note("fuzz: external data fields slowest answer (s)", round(slowest, 2))
    assert slowest < PER_INPUT
    assert "not a non-negative integer" in next(r["err"] for r in results if r["id"].startswith("length='-1'"))


def _strings(msg) -> list[tuple[object, str, int | None]]:
    """Every non-empty string field of a message and its parts: (message, field, index)."""
    from google.protobuf.descriptor import FieldDescriptor as FD

    def _text_plan(desc):
        def repeated(f):
            r = getattr(f, "is_repeated", None)
            return r if r is not None else f.label == FD.LABEL_REPEATED

        return ([(f.name, repeated(f)) for f in desc.fields if f.type == FD.TYPE_STRING],
                [(f.name, repeated(f)) for f in desc.fields if f.type == FD.TYPE_MESSAGE])

    found: list[tuple[object, str, int | None]] = []
    stack = [msg]
    while stack:
        m = stack.pop()
        strings, messages = _text_plan(m.DESCRIPTOR)
        for name, repeated in strings:
            value = getattr(m, name)
            if repeated:
                found.extend((m, name, k) for k, v in enumerate(value) if v)
            elif value:
                found.append((m, name, None))
        for name, repeated in messages:
            if repeated:
                stack.extend(getattr(m, name))
            elif m.HasField(name):
                stack.append(getattr(m, name))
    return found


def _tensors(m: onnx.ModelProto) -> list[onnx.TensorProto]:
    from onnxsurgeon.serde import iter_model_tensors

    return list(iter_model_tensors(m))


def mutate_fields(model: onnx.ModelProto, rng: np.random.Generator, kind: str | None = None) -> tuple[str, bytes]:
    """One field of the model changed to a hostile value of its kind: a string that is not
    UTF-8 (or empty, or a newline), an external data offset or length, a tensor's type or
    dims, a value's element type or dimension, an attribute's type, an opset or IR version,
    a node's op type or one of its inputs."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    kind = kind or str(rng.choice(["utf8", "utf8", "utf8", "string", "external", "tensor-type", "tensor-dims", "elem-type",
                                   "dim", "attribute", "opset", "ir", "op", "wire"]))
    marker = None
    if kind in ("utf8", "string"):
        fields = _strings(m)
        msg, name, k = fields[int(rng.integers(len(fields)))]
        value = ["", "\n", "x" * 300, "a\x00b", "é"][int(rng.integers(5))] if kind == "string" else "\x01MARK\x01"
        marker = value if kind == "utf8" else None
        if k is None:
            setattr(msg, name, value)
        else:
            getattr(msg, name)[k] = value
        kind = f"{kind}:{type(msg).__name__}.{name}"
    elif kind == "external":
        ext = [t for t in _tensors(m) if t.data_location == TensorProto.EXTERNAL]
        if not ext:
            return mutate_fields(model, rng)
        t = ext[int(rng.integers(len(ext)))]
        key = str(rng.choice(["offset", "length", "location"]))
        entries = {e.key: e for e in t.external_data}
        if key not in entries:
            entries[key] = t.external_data.add()
            entries[key].key = key
        entries[key].value = HOSTILE_COUNTS[int(rng.integers(len(HOSTILE_COUNTS)))] if key != "location" else str(
            rng.choice(["", ".", "..", "nope.data", "autoencoder.onnx", "/dev/zero", "a/../autoencoder.onnx.data"]))
        kind = f"external:{key}"
    elif kind == "tensor-type":
        ts = _tensors(m)
        ts[int(rng.integers(len(ts)))].data_type = int(rng.choice([0, 2, 3, 7, 8, 9, 10, 16, 17, 22, 23, 40, 999]))
    elif kind == "tensor-dims":
        ts = _tensors(m)
        t = ts[int(rng.integers(len(ts)))]
        if t.dims:
            t.dims[int(rng.integers(len(t.dims)))] = int(rng.choice([0, -1, 1, 2**31, 2**62]))
        else:
            t.dims.append(int(rng.choice([0, 3, 2**40])))
    elif kind in ("elem-type", "dim"):
        values = [*m.graph.input, *m.graph.output, *m.graph.value_info]
        v = values[int(rng.integers(len(values)))]
        if kind == "elem-type":
            v.type.tensor_type.elem_type = int(rng.choice([0, 8, 9, 11, 16, 40, 999]))
        elif v.type.tensor_type.shape.dim:
            d = v.type.tensor_type.shape.dim[int(rng.integers(len(v.type.tensor_type.shape.dim)))]
            if rng.integers(2):
                d.dim_value = int(rng.choice([0, -3, 2**40]))
            else:
                d.dim_param = str(rng.choice(["", "N", "?", "a b", "\n"]))
    elif kind == "attribute":
        attrs = [a for n in m.graph.node for a in n.attribute]
        if not attrs:
            return mutate_fields(model, rng)
        a = attrs[int(rng.integers(len(attrs)))]
        a.type = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 13]))
    elif kind == "opset":
        m.opset_import[0].version = int(rng.choice([0, 1, 6, 99, -1, 2**40]))
    elif kind == "ir":
        m.ir_version = int(rng.choice([1, 2, 3, 99]))
    elif kind == "op":
        n = m.graph.node[int(rng.integers(len(m.graph.node)))]
        n.op_type = str(rng.choice(["If", "Loop", "Relu", "Gemm", "Nope", ""]))
    else:  # a node reads a value of another scope, or nothing
        n = m.graph.node[int(rng.integers(len(m.graph.node)))]
        if n.input:
            n.input[int(rng.integers(len(n.input)))] = str(rng.choice(["", "nope", m.graph.output[0].name, n.output[0]]))
    data = m.SerializeToString()
    if marker is not None:
        bad = bytes([0xFF, 0xFE, 0xC3]) + bytes(rng.integers(0x80, 0xFF, 3, dtype=np.uint8))
        data = data.replace(marker.encode(), bad)
    return kind, data


def test_mutated_fields(tmp_path):
    """400 models, each with one field given a hostile value of its kind; every command
    answers 0-3 with a clean message, never 4."""
    rng = np.random.default_rng(12)
    ext = external_base(tmp_path)
    bases = {name: onnx.load(FIXTURES / f"{name}.onnx") for name in BASES}
    bases["external"] = onnx.load(ext, load_external_data=False)
    names = [*BASES, "external"]
    cases, kinds = [], {}
    for k in range(400):
        name = names[k % len(names)]
        kind, data = mutate_fields(bases[name], rng, "external" if name == "external" and k % 2 else None)
        kinds[kind.split(":")[0]] = kinds.get(kind.split(":")[0], 0) + 1
        path = tmp_path / f"f{k}-{name}.onnx"
        path.write_bytes(data)
        base = ext if name == "external" else FIXTURES / f"{name}.onnx"
        commands = model_commands(path.name, base, *ports(base))
        cases.append({"id": f"{path.name} {kind}", "argv": commands[(k // len(names)) % len(commands)]})
    results = run_cases(cases, tmp_path)
    assert_clean(results, cases, "mutated fields")
    assert kinds.get("utf8", 0) >= 50 and kinds.get("external", 0) >= 10, kinds
