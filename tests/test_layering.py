"""The shape of the package: public names that no submodule can replace, and the layers
(command line -> library -> graph core), read from the import statements with ``ast``."""

from __future__ import annotations

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
    # a public function X (`osg.compose` became the module once `osg.Network` was used).
    submodules = {m.name for m in pkgutil.iter_modules([str(PACKAGE)])}
    assert sorted(set(onnxsurgeon._EXPORTS) & submodules) == []
    assert "composition" in submodules  # the listing is real


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
