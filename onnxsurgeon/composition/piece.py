"""Pieces: a model used as a function, loaded whole or cut from a model file
(:func:`load_piece`), with typed input and output ports and a parameter mode.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from onnxsurgeon import meta, modes, serde
from onnxsurgeon.errors import InputError
from onnxsurgeon.expr import (
    IDENTIFIER,
    TensorType,
)
from onnxsurgeon.graph import default_opset


class PieceError(InputError):
    """A problem with one piece (raised while building, reported at the piece's declaration)."""

    def __init__(self, piece: str, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.piece = piece


# --- pieces ------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Piece:
    """A model used as a function: its input and output ports, parameter mode and origin."""

    name: str
    model: onnx.ModelProto
    mode: str
    inputs: tuple[tuple[str, TensorType], ...]
    outputs: tuple[tuple[str, TensorType], ...]
    source: str = "<memory>"
    sha256: str | None = None

    @property
    def opset(self) -> int:
        return default_opset(self.model)

    @property
    def parameters(self) -> list[onnx.TensorProto]:
        return list(self.model.graph.initializer)

    @property
    def frozen(self) -> set[str]:
        return meta.frozen_params(self.model, self.mode)


def load_piece(
    model: onnx.ModelProto | str | os.PathLike[str],
    /,
    inputs: Sequence[str] | None = None,
    outputs: Sequence[str] | None = None,
    params: str | None = None,
    *,
    name: str | None = None,
    auto_inputs: bool = False,
    base_dir: str | os.PathLike[str] | None = None,
) -> Piece:
    """A piece from a model file or a model: cut with ``inputs``/``outputs``/``params`` as in
    ``extract``, or, without ``inputs`` and ``outputs``, an already-extracted piece used whole
    (its stored mode, unless ``params`` says otherwise)."""
    if params is not None and params not in modes.MODES:
        raise InputError(f"unknown parameter mode {params!r}", f"use one of: {', '.join(modes.MODES)}")
    source, sha, path = "<memory>", None, None
    if not isinstance(model, onnx.ModelProto):
        path = Path(base_dir or ".") / Path(model)
        source = str(model)
        loaded = serde.load(path)
        sha = serde.fingerprint(path).get("sha256")
        model = loaded
    if name is None:
        stem = re.sub(r"\W", "_", path.stem) if path else "piece"
        name = stem if IDENTIFIER.match(stem) else f"piece_{stem}"
    if inputs is None and outputs is None:
        model, mode = _whole_piece(model, params, source)
    else:
        model, _ = _extract(model, list(inputs or []), list(outputs or []), params or "learnable", auto_inputs, source, sha)
        mode = params or "learnable"
    return Piece(name, model, mode, _ports(model, name, "input"), _ports(model, name, "output"), source, sha)


def _extract(model, inputs, outputs, params, auto_inputs, source, sha):
    from onnxsurgeon.cut import extract

    provenance = {"file": Path(source).name, "sha256": sha} if sha else None
    return extract(model, inputs=inputs, outputs=outputs, params=params, auto_inputs=auto_inputs, source=provenance, model_hint=source)


def _whole_piece(model: onnx.ModelProto, params: str | None, source: str) -> tuple[onnx.ModelProto, str]:
    stored = meta.mode(model) or "learnable"
    if params is None or params == stored:
        return model, stored
    if stored == "constant":
        raise InputError(
            f"{source} was extracted in constant mode (BatchNorm folded, Dropout removed); it cannot become {params}",
            "extract the piece again from its source model with the mode you want",
        )
    if params == "constant":  # freeze it now: a cut of the whole piece in constant mode
        inits = {t.name for t in model.graph.initializer}
        ins = [v.name for v in model.graph.input if v.name not in inits]
        outs = [v.name for v in model.graph.output]
        model, _ = _extract(model, ins, outs, "constant", False, source, None)
    return model, params


def _ports(model: onnx.ModelProto, piece: str, kind: str) -> tuple[tuple[str, TensorType], ...]:
    g = model.graph
    inits = {t.name for t in g.initializer}
    values = [v for v in g.input if v.name not in inits] if kind == "input" else list(g.output)
    types = {v.name: TensorType.from_proto(v.type) for v in values}
    if any(t is None for t in types.values()):
        types.update(_inferred_types(model, [n for n, t in types.items() if t is None]))
    missing = [n for n, t in types.items() if t is None]
    if missing:
        raise InputError(
            f"piece {piece!r}: the type of {kind} {', '.join(repr(m) for m in missing)} is not known",
            "only tensor inputs and outputs with a recorded type can be composed; re-extract the piece",
        )
    return tuple((v.name, types[v.name]) for v in values)  # type: ignore[misc]


def _inferred_types(model: onnx.ModelProto, names: list[str]) -> dict[str, TensorType | None]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (best effort; a type still missing is reported by the caller)
        return {}
    found = {v.name: TensorType.from_proto(v.type) for v in list(inferred.graph.output) + list(inferred.graph.value_info)}
    return {n: found.get(n) for n in names}
