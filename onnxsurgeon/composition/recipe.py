"""Recipes: a TOML file (or the dict it holds) read into a :class:`Network`; every error
names the recipe's line and column.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from onnxsurgeon import modes
from onnxsurgeon.composition.network import Network, check_identifier
from onnxsurgeon.composition.piece import PieceError, load_piece
from onnxsurgeon.composition.report import ComposeReport
from onnxsurgeon.composition.toml_positions import Locator
from onnxsurgeon.errors import EnvironmentProblem, InputError
from onnxsurgeon.expr import (
    ExprError,
    Pos,
    Source,
    names_in,
    parse,
)

RECIPE_KEYS = ("name", "seed", "inputs", "pieces", "values", "outputs")
PIECE_KEYS = ("model", "piece", "inputs", "outputs", "params", "auto_inputs")


def compose(recipe: str | os.PathLike[str] | Mapping[str, Any], /, *, seed: int | None = None) -> tuple[onnx.ModelProto, ComposeReport]:
    """Build the network a recipe describes: a TOML file (model paths relative to it) or the
    dict it holds. Errors name the recipe's line and column."""
    r = _Recipe.read(recipe)
    return r.build(seed)


def _toml() -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise EnvironmentProblem(
                "reading recipes needs Python 3.11 or the tomli package", "pip install tomli"
            ) from None
    return tomllib


_TOML_ERROR_AT = re.compile(r"^(.*?)\s*\(at line (\d+), column (\d+)\)\s*$", re.DOTALL)


@dataclass
class _Recipe:
    data: Mapping[str, Any]
    file: str = "<recipe>"
    base_dir: Path = Path(".")
    locator: Locator | None = None

    @classmethod
    def read(cls, recipe: str | os.PathLike[str] | Mapping[str, Any]) -> _Recipe:
        if isinstance(recipe, Mapping):
            return cls(recipe)
        path = Path(recipe)
        if path.is_dir():
            raise InputError(f"{path} is a directory, not a recipe file", "name the .toml file inside it")
        if not path.is_file():
            raise InputError(f"no such recipe file: {path}", "check the path of the recipe")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{path} is not a text file (not UTF-8)", "a recipe is a TOML file") from None
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}") from None
        toml = _toml()
        try:
            data = toml.loads(text)
        except toml.TOMLDecodeError as e:
            m = _TOML_ERROR_AT.match(str(e))
            pos = Pos(int(m.group(2)), int(m.group(3)), str(path)) if m else Pos(1, 1, str(path))
            raise ExprError(f"TOML syntax error: {m.group(1) if m else e}", "see https://toml.io for the syntax", pos) from None
        except (RecursionError, ValueError) as e:  # arrays nested thousands deep, integers of thousands of digits
            what = "is nested too deeply" if isinstance(e, RecursionError) else f"cannot be read ({e})"
            raise InputError(f"{path} {what}", "a recipe is a short TOML file; see docs/compose.md") from None
        return cls(data, str(path), path.parent, Locator(text, str(path)))

    # --- positions ----------------------------------------------------------------------------

    def key_pos(self, *path: str) -> Pos:
        return self.locator.key(path) if self.locator else Pos(0, 0, f"recipe [{'.'.join(path)}]")

    def value_pos(self, *path: str) -> Pos:
        return self.locator.value(path) if self.locator else Pos(0, 0, f"recipe [{'.'.join(path)}]")

    def source(self, text: str, *path: str) -> Source:
        if self.locator is None:
            return Source(text, f"recipe [{'.'.join(path)}]")
        return self.locator.source(path, text)

    @contextmanager
    def at(self, pos: Pos) -> Iterator[None]:
        try:
            yield
        except InputError as e:
            raise _placed(pos, e) from None

    # --- building -----------------------------------------------------------------------------

    def build(self, seed: int | None) -> tuple[onnx.ModelProto, ComposeReport]:
        data = self.data
        for key in data:
            if key not in RECIPE_KEYS:
                raise ExprError(f"unknown recipe key {key!r}", f"a recipe has: {', '.join(RECIPE_KEYS)}", self.key_pos(key))
        name = self.scalar("name", str, "network")
        if seed is None:
            seed = self.scalar("seed", int, 0)
            if seed < 0:
                raise ExprError(f"'seed' must be a non-negative integer, not {seed}", None, self.value_pos("seed"))
        net = Network(name, seed=seed, base_dir=self.base_dir)
        declared: dict[str, Pos] = {}
        for key, text in self.table("inputs").items():
            with self.at(self.key_pos("inputs", key)):
                check_identifier(key, "an input")
            if not isinstance(text, str):
                raise ExprError(f"input {key!r} must be a type written as a string, e.g. \"float32[N,64]\"", None, self.value_pos("inputs", key))
            with self.at(self.value_pos("inputs", key)):
                net.input(key, text)
        for key, spec in self.table("pieces").items():
            declared[key] = self.key_pos("pieces", key)
            self.piece(net, key, spec)
        values = self.table("values")
        for k, (key, text) in enumerate(values.items()):
            later = {n: self.key_pos("values", n) for n in list(values)[k:]}
            self.expression(net, "values", key, text, later)
        outputs = self.table("outputs")
        if not outputs:
            raise ExprError("the recipe has no outputs", "add an [outputs] table, e.g. z = \"dense(h, 10)\"", self.key_pos("outputs") if "outputs" in data else Pos(1, 1, self.file))
        for key, text in outputs.items():
            self.expression(net, "outputs", key, text)
        try:
            return net.build()
        except PieceError as e:
            raise _placed(declared.get(e.piece, Pos(1, 1, self.file)), e) from None

    def scalar(self, key: str, kind: type, default: Any) -> Any:
        value = self.data.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise ExprError(f"{key!r} must be {'an integer' if kind is int else 'a string'}", None, self.value_pos(key))
        return value

    def table(self, key: str) -> Mapping[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, Mapping):
            raise ExprError(f"{key!r} must be a table ([{key}])", None, self.value_pos(key))
        return value

    def piece(self, net: Network, key: str, spec: Any) -> None:
        where = self.key_pos("pieces", key)
        if not isinstance(spec, Mapping):
            raise ExprError(f"piece {key!r} must be a table ([pieces.{key}]) with a model or piece file", None, where)
        for k in spec:
            if k not in PIECE_KEYS:
                raise ExprError(f"piece {key!r}: unknown key {k!r}", f"a piece has: {', '.join(PIECE_KEYS)}", self.key_pos("pieces", key, k))
        files = [k for k in ("model", "piece") if k in spec]
        if len(files) != 1:
            raise ExprError(f"piece {key!r} needs exactly one of 'model' (cut with inputs/outputs) or 'piece' (an extracted piece)", None, where)
        file_key = files[0]
        lists = {}
        for k in ("inputs", "outputs"):
            v = spec.get(k)
            if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
                raise ExprError(f"piece {key!r}: {k!r} must be a list of names, e.g. [\"input\"]", None, self.value_pos("pieces", key, k))
            lists[k] = v
        if file_key == "model" and not lists["outputs"]:
            raise ExprError(f"piece {key!r}: a model needs 'outputs' (and usually 'inputs') to cut the piece", None, where)
        if file_key == "piece" and (lists["inputs"] is not None or lists["outputs"] is not None):
            raise ExprError(f"piece {key!r}: an extracted piece is used whole; 'inputs' and 'outputs' belong with 'model'", None, where)
        params = spec.get("params")
        if params is not None and params not in modes.MODES:
            raise ExprError(f"piece {key!r}: unknown parameter mode {params!r}", f"use one of: {', '.join(modes.MODES)}", self.value_pos("pieces", key, "params"))
        if not isinstance(spec[file_key], str):
            raise ExprError(f"piece {key!r}: {file_key!r} must be a file path", None, self.value_pos("pieces", key, file_key))
        with self.at(self.key_pos("pieces", key)):
            check_identifier(key, "a piece")
        with self.at(self.value_pos("pieces", key, file_key)):
            path = self.base_dir / spec[file_key]
            if path.is_dir():
                raise InputError(f"piece {key!r}: {spec[file_key]} is a directory, not an ONNX model file ({path.resolve()})", "name the .onnx file inside it")
            if not path.is_file():
                raise InputError(f"piece {key!r}: no such model file: {spec[file_key]} ({path.resolve()})", "paths in a recipe are relative to the recipe file")
        with self.at(where):
            piece = load_piece(path, lists["inputs"], lists["outputs"], params, name=key, auto_inputs=bool(spec.get("auto_inputs", False)))
            net.piece(dataclasses.replace(piece, source=spec[file_key]))

    def expression(self, net: Network, table: str, key: str, text: Any, later: Mapping[str, Pos] = {}) -> None:
        if not isinstance(text, str):
            raise ExprError(f"[{table}] {key!r} must be an expression written as a string, e.g. \"relu(x)\"", None, self.value_pos(table, key))
        source = self.source(text, table, key)
        if table == "values":
            with self.at(self.key_pos(table, key)):
                net.claim_value(key)
        for name in names_in(parse(text, source)):
            if name.id in later:
                what = "itself" if name.id == key else f"{name.id!r}, which is defined later (line {later[name.id].line})"
                raise ExprError(f"{key!r} uses {what}", "values are computed in the order they are written", name.pos)
        if table == "values":
            with self.at(self.value_pos(table, key)):
                net.let(key, text, source, claimed=True)
            return
        with self.at(self.value_pos(table, key)):
            value = net.evaluate(text, source)
        with self.at(self.key_pos(table, key)):
            net.output(key, value)


def _placed(pos: Pos, e: InputError) -> ExprError:
    return ExprError.at(pos, e)
