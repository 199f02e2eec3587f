"""The shape of the package: public names that no submodule can replace, and the layers
(command line -> library -> graph core), read from the import statements with ``ast``."""

from __future__ import annotations

import ast
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import onnxsurgeon

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "onnxsurgeon"


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


# --- public names --------------------------------------------------------------------------------


def test_no_public_name_is_also_a_submodule():
    # Importing `onnxsurgeon.X` sets the attribute X of the package to the module, replacing
    # a public function X (`osg.compose` became the module once `osg.Network` was used); the
    # other way round, `onnxsurgeon.expr.evaluate` was the function, not the module.
    import importlib

    clashes = {}
    packages = [p.parent for p in PACKAGE.rglob("__init__.py")]
    for folder in packages:
        name = ".".join(folder.relative_to(ROOT).parts)
        package = importlib.import_module(name)
        public = set(getattr(package, "_EXPORTS", None) or getattr(package, "__all__", ()))
        submodules = {m.name for m in pkgutil.iter_modules([str(folder)])}
        if public & submodules:
            clashes[name] = sorted(public & submodules)
    assert clashes == {}
    assert len(packages) >= 5 and "composition" in {m.name for m in pkgutil.iter_modules([str(PACKAGE)])}


def test_public_names_are_the_library_objects_after_every_module_is_imported(tmp_path):
    code = """
import importlib, pkgutil
import onnxsurgeon as osg
for m in pkgutil.walk_packages(osg.__path__, "onnxsurgeon."):
    if not m.name.endswith("__main__"):
        importlib.import_module(m.name)
wrong = [n for n, mod in osg._EXPORTS.items() if getattr(osg, n) is not getattr(importlib.import_module(mod), n)]
print("wrong:", wrong)
"""
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrong: []" in r.stdout, r.stdout


def _python_blocks(markdown: str, after: str) -> str:
    text = markdown.split(after, 1)[1]
    return "\n".join(re.findall(r"```python\n(.*?)```", text, re.DOTALL)[:1])


def test_the_python_example_of_docs_compose_runs(tmp_path):
    # The example uses osg.Network, then osg.compose: the function, not a module.
    snippet = _python_blocks((ROOT / "docs" / "compose.md").read_text(), "## Python")
    assert "osg.Network(" in snippet and "osg.compose(" in snippet
    for d in ("fixtures", "examples"):
        (tmp_path / d).symlink_to(ROOT / d, target_is_directory=True)
    r = _run(snippet + "\nprint('nodes', len(model.graph.node))\n", tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"nodes [1-9]", r.stdout), r.stdout
    assert (tmp_path / "fe.onnx").stat().st_size > 0


# --- layers, read from the import statements -------------------------------------------------------

# The graph core: the ONNX data model and its files, names, metadata, arrays, onnxruntime
# sessions. It imports nothing else of the package.
CORE = {"errors", "dtypes", "meta", "wire", "serde", "formats", "graph", "names", "arrays", "runtime", "faults"}
LARGEST = 700  # lines; a module beyond this holds more than one concern


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"
        or isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement, at any depth (imports inside
    functions count: a cycle hidden in a function is still a cycle), except those under
    ``if TYPE_CHECKING:``. ``from P import x`` gives ``P:x``."""
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            found.extend((f"{base}:{a.name}", node.lineno) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> tuple[dict[str, dict[str, int]], dict[str, list[tuple[str, int]]]]:
    """Edges inside the package (module -> {module: line}) and every external import."""
    modules = _modules()
    edges: dict[str, dict[str, int]] = {m: {} for m in modules}
    external: dict[str, list[tuple[str, int]]] = {m: [] for m in modules}
    for m, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        for name, line in _imports(tree, m, path.name == "__init__.py"):
            base, _, attr = name.partition(":")
            # `from P import x` imports the module P.x if there is one, else a name of P
            name = f"{base}.{attr}" if attr and f"{base}.{attr}" in modules else base
            if name == "onnxsurgeon" or name.startswith("onnxsurgeon."):
                if name in modules and name != m:
                    edges[m].setdefault(name, line)
            else:
                external[m].append((f"{base}.{attr}" if attr else base, line))
    return edges, external


def _layer(module: str) -> str:
    short = module.removeprefix("onnxsurgeon").lstrip(".")
    top = short.split(".")[0]
    if top in ("cli", "__main__"):
        return "cli"
    if short == "" or top in CORE:
        return "core"
    return "library"


ALLOWED = {"cli": {"cli", "library", "core"}, "library": {"library", "core"}, "core": {"core"}}


def test_layers_cli_library_core():
    edges, _ = _graph()
    wrong = [
        f"{m} ({_layer(m)}) imports {d} ({_layer(d)}) at line {line}"
        for m, ds in edges.items() for d, line in ds.items()
        if _layer(d) not in ALLOWED[_layer(m)]
    ]
    assert wrong == []
    assert "onnxsurgeon.graph" in edges["onnxsurgeon.cut"] and "onnxsurgeon.cut" in edges["onnxsurgeon.inspection"]


def _cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def _without_registration(edges: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    # cli/app.py imports the command modules at its end so that they register with the app
    # they import: the one cycle the package has on purpose.
    out = {m: dict(ds) for m, ds in edges.items()}
    out["onnxsurgeon.cli.app"] = {d: n for d, n in out["onnxsurgeon.cli.app"].items() if not d.endswith("_cmds")}
    return out


def test_no_import_cycle_apart_from_the_commands_registering():
    edges, _ = _graph()
    assert _cycles(_without_registration(edges)) == []
    assert _cycles(edges), "the command registration is a cycle; if it is gone, drop the exception"


def test_the_cycle_check_finds_a_cycle():
    edges, _ = _graph()
    edges["onnxsurgeon.graph"]["onnxsurgeon.cut"] = 1  # graph -> cut -> graph
    assert any({"onnxsurgeon.cut", "onnxsurgeon.graph"} <= set(c) for c in _cycles(_without_registration(edges)))


def test_typer_and_rich_only_in_cli_onnxruntime_training_only_in_train():
    _, external = _graph()
    wrong = []
    for m, names in external.items():
        for name, line in names:
            top = name.split(".")[0]
            if top in ("typer", "rich", "click") and _layer(m) != "cli":
                wrong.append(f"{m}:{line} imports {name}")
            if (name == "onnxruntime.training" or name.startswith("onnxruntime.training.")) and not m.startswith("onnxsurgeon.train."):
                wrong.append(f"{m}:{line} imports {name}")
    assert wrong == []


# onnxruntime-training 1.19 cannot be imported without torch, nor made quiet, through its
# public API: train/ort.py is the one place that works around it (see its docstring).
PRIVATE_IMPORTS_ALLOWED = {"onnxsurgeon.train.ort"}


def test_no_private_module_of_a_dependency_is_imported():
    _, external = _graph()
    wrong = [
        f"{m}:{line} imports {name}"
        for m, names in external.items() if m not in PRIVATE_IMPORTS_ALLOWED
        for name, line in names
        if any(part.startswith("_") and not part.startswith("__") for part in name.split("."))
    ]
    assert wrong == []


def test_no_module_is_over_700_lines():
    sizes = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    largest = max(sizes, key=sizes.__getitem__)
    print(f"\nlargest module: {largest} ({sizes[largest]} lines)")
    assert {m: n for m, n in sizes.items() if n > LARGEST} == {}


# --- the docs name code that exists ------------------------------------------------------------


def _defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def test_code_named_in_the_docs_exists():
    # After a file moves, a doc that still points at the old place misleads the next reader.
    pointers = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        for m in re.finditer(r"`(onnxsurgeon/[\w/]+\.py)`(?:,\s+`([A-Za-z_][\w.]*)`)?", text):
            pointers.append((doc.name, m.group(1), m.group(2)))
    wrong = []
    for doc, file, name in pointers:
        path = ROOT / file
        if not path.is_file():
            wrong.append(f"{doc}: {file} does not exist")
        elif name and not _defines(path, name.split(".")[0]):
            wrong.append(f"{doc}: {file} does not define {name}")
    assert wrong == []
    assert len(pointers) >= 5
