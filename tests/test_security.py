"""Nothing a file says can steer onnxsurgeon outside what the user asked: external data
outside the model's folder (absolute, ``..``, symlinks) is refused, metadata that looks like a
recipe or shell input is never interpreted, recipe expressions cannot escape, and nothing
read is ever executed or unpickled (a static check of the package's source)."""

from __future__ import annotations

import ast
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import onnxsurgeon as osg
from onnxsurgeon import expr
from onnxsurgeon.errors import InputError

sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AE = ROOT / "fixtures" / "autoencoder.onnx"
AE_EXT = ROOT / "fixtures" / "autoencoder_external" / "autoencoder.onnx"
PACKAGE = ROOT / "onnxsurgeon"


def _with_location(folder: Path, location: str) -> Path:
    m = onnx.load(AE_EXT, load_external_data=False)
    for t in m.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = location
    path = folder / "model.onnx"
    path.write_bytes(m.SerializeToString())
    return path


@pytest.mark.parametrize("where", ["absolute", "parent", "nested-parent", "symlink-file", "symlink-folder", "proc"])
def test_external_data_outside_the_model_folder_is_refused(tmp_path, cli, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(AE_EXT.parent / "autoencoder.onnx.data", outside / "secret.data")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "sub").mkdir()
    location = {
        "absolute": str(outside / "secret.data"),
        "parent": "../outside/secret.data",
        "nested-parent": "sub/../../outside/secret.data",
        "symlink-file": "link.data",
        "symlink-folder": "linkdir/secret.data",
        "proc": "/proc/self/environ",
    }[where]
    (folder / "link.data").symlink_to(outside / "secret.data")
    (folder / "linkdir").symlink_to(outside)
    model = _with_location(folder, location)
    for argv in (["info", model], ["extract", model, "--in", "input", "--out", "L4.y", "-o", folder / "p.onnx"],
                 ["verify", model, model]):
        code, _, err = cli(*argv)
        assert code == 2 and "outside the model's folder" in err, err
    assert not (folder / "p.onnx").exists()
    with pytest.raises(InputError, match="outside the model's folder"):
        osg.load(model)


def test_external_data_inside_the_folder_still_works(tmp_path, cli):
    shutil.copy(AE_EXT.parent / "autoencoder.onnx.data", tmp_path / "w.data")
    model = _with_location(tmp_path, "w.data")
    code, _, err = cli("verify", model, model, "-q")
    assert code == 0, err


CRAFTED_METADATA = {
    "onnxsurgeon.cut": json.dumps({"inputs": "$(touch pwned)", "outputs": ["`touch pwned`"], "file": "; touch pwned"}),
    "onnxsurgeon.params": "__import__('os').system('touch pwned')",
    "onnxsurgeon.frozen": "[" * 100_000,
    "onnxsurgeon.shared": json.dumps({"__class__": "x"}),
    "onnxsurgeon.compose": "[pieces.evil]\nmodel = '/etc/passwd'\n[outputs]\nz = \"__import__('os').system('touch pwned')\"",
    "recipe": "[outputs]\nz = \"open('pwned', 'w')\"",
    "shell": "$(touch pwned); `touch pwned` && touch pwned\n",
}


def test_metadata_is_never_interpreted(tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = onnx.load(AE)
    del m.metadata_props[:]
    for key, value in CRAFTED_METADATA.items():
        onnx.helper.set_model_props(m, {**{e.key: e.value for e in m.metadata_props}, key: value})
    path = tmp_path / "crafted.onnx"
    path.write_bytes(m.SerializeToString())
    (tmp_path / "recipe.toml").write_text(
        f'[inputs]\nx = "float32[N,64]"\n[pieces.p]\npiece = "{path.name}"\n[outputs]\nz = "p(x).output"\n')
    runs = [
        ["info", path], ["info", path, "--json"], ["params", path], ["nodes", path],
        ["extract", path, "--in", "input", "--out", "L4.y", "-o", "piece.onnx"],
        ["verify", path, path], ["verify", AE, path], ["compose", "recipe.toml", "-o", "net.onnx"],
    ]
    for argv in runs:
        code, _, err = cli(*argv)  # the fixture asserts there is no traceback
        assert code in (0, 1, 2), (argv, err)
    assert not (tmp_path / "pwned").exists()
    piece = osg.load(tmp_path / "piece.onnx")  # the crafted entries were carried, as data
    kept = {e.key: e.value for e in piece.metadata_props}
    assert kept["shell"] == CRAFTED_METADATA["shell"] and kept["recipe"] == CRAFTED_METADATA["recipe"]


ESCAPES = [
    "x.__class__", "x.__class__.__mro__", "__import__('os')", "__builtins__", "(lambda: 0)()", "lambda: 0",
    "x ** 2 ** 10 ** 10", "x ** 9", "x ** (10 ** 10)", "2 ** 10 ** 10", "10 ** 400", "1e999 * x",
    "(" * 500 + "x" + ")" * 500, "-" * 100_000 + "x", "open('/etc/passwd')", "eval('x')", "exec('x')",
    "compile('x', 'f', 'eval')", "getattr(x, '__class__')", "globals()", "vars()", "x[0]", "[c for c in 'ab']",
    "x if x else x", "f'{x}'", "x.real", "relu(x)._value", "relu(x, **{'a': 1})", "relu(*x)",
]


@pytest.mark.parametrize("text", ESCAPES, ids=range(len(ESCAPES)))
def test_recipe_expressions_cannot_escape(text):
    b = expr.Builder()
    x = b.value("x", expr.TensorType.parse("float32[N,4]"))
    with pytest.raises(InputError):
        expr.evaluate(expr.parse(text), {"x": x}, expr.tensor_functions(b))
    figures.add("security: recipe expressions that try to escape, each refused", 1)


def test_npz_with_objects_is_never_unpickled(tmp_path, cli, monkeypatch):
    class Boom:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    monkeypatch.chdir(tmp_path)
    np.savez(tmp_path / "evil.npz", input=np.array([Boom()], dtype=object))
    assert b"system" in (tmp_path / "evil.npz").read_bytes()  # the pickle is really in there
    code, _, err = cli("verify", AE, AE, "--data", "evil.npz")
    assert code == 2 and "never unpickled" in err
    assert not (tmp_path / "pwned").exists()


# --- nothing the tool reads is executed: a static check of the package ------------------------------

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "execfile", "input"}
FORBIDDEN_ATTRS = {
    ("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execvp"), ("os", "spawnv"), ("pickle", "load"),
    ("pickle", "loads"), ("marshal", "loads"), ("yaml", "load"), ("shelve", "open"), ("dill", "load"),
}
FORBIDDEN_IMPORTS = {"pickle", "marshal", "shelve", "subprocess", "dill", "cloudpickle", "yaml", "joblib", "runpy"}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_never_executes_or_unpickles_what_it_reads():
    problems = []
    for path in _sources():
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in FORBIDDEN_IMPORTS]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_IMPORTS:
                problems.append(f"{where}:{node.lineno}: from {node.module} import")
            elif isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Name) and f.id in FORBIDDEN_CALLS:
                    problems.append(f"{where}:{node.lineno}: {f.id}(...)")
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and (f.value.id, f.attr) in FORBIDDEN_ATTRS:
                    problems.append(f"{where}:{node.lineno}: {f.value.id}.{f.attr}(...)")
                for k in node.keywords:  # np.load(..., allow_pickle=True) and the like
                    if k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False):
                        problems.append(f"{where}:{node.lineno}: allow_pickle={ast.unparse(k.value)}")
                if isinstance(f, ast.Attribute) and f.attr == "load" and ast.unparse(f.value) in ("np", "numpy"):
                    if not any(k.arg == "allow_pickle" for k in node.keywords):
                        problems.append(f"{where}:{node.lineno}: np.load without allow_pickle=False")
    assert not problems, "\n".join(problems)


def test_the_static_check_catches_what_it_looks_for(tmp_path, monkeypatch):
    """The check above would fail on each forbidden construct (it is not vacuous)."""
    bad = tmp_path / "onnxsurgeon"
    bad.mkdir()
    samples = ["eval(s)", "import pickle", "os.system(s)", "np.load(p)", "np.load(p, allow_pickle=True)",
               "from subprocess import run", "__import__(s)"]
    for k, line in enumerate(samples):
        (bad / f"m{k}.py").write_text(line + "\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", bad)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError) as e:
        test_the_package_never_executes_or_unpickles_what_it_reads()
    assert all(f"m{k}.py" in str(e.value) for k in range(len(samples)))


@pytest.mark.parametrize("record", ['{"file": ["x"], "id": 1}', '{"file": "autoencoder.onnx.data", "id": 7}', '[[[[', '{"file": "autoencoder.onnx.data"}'])
def test_crafted_save_record_is_ignored(tmp_path, record):
    # The record that pairs a model with its data file (onnxsurgeon.data) is only compared,
    # never trusted: a damaged or crafted one is ignored.
    folder = tmp_path / "m"
    shutil.copytree(AE_EXT.parent, folder)
    path = folder / "autoencoder.onnx"
    model = onnx.load(str(path), load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = "onnxsurgeon.data", record
    path.write_bytes(model.SerializeToString())
    assert len(osg.load(path).graph.initializer) == 16
