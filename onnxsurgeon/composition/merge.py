"""Reconciling pieces from different models: the default-domain opset (converted upwards),
other operator sets, local functions and the IR version.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx
from onnx import helper

from onnxsurgeon.composition.piece import Piece, PieceError


def at_opset(piece: Piece, target: int) -> onnx.ModelProto:
    """The piece's model at the default-domain opset ``target`` (converted if older)."""
    if piece.opset >= target or piece.opset == 0:
        return piece.model
    try:
        converted = onnx.version_converter.convert_version(piece.model, target)
    except Exception as e:  # noqa: BLE001  (the converter raises several types; the reason is in the text)
        reason = _unconvertible(piece.model, target) or (str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
        raise PieceError(
            piece.name,
            f"piece {piece.name!r} uses opset {piece.opset} and cannot be converted to opset {target} "
            f"(the newest among the pieces): {reason}",
            f"extract the pieces from models exported with the same opset, or re-export {piece.source} with opset {target}",
        ) from None
    if len(converted.functions) != len(piece.model.functions):  # the converter drops local functions
        del converted.functions[:]
        converted.functions.extend(piece.model.functions)
    return converted


def _unconvertible(model: onnx.ModelProto, target: int) -> str | None:
    """Which operators of a model have no definition at ``target`` (the usual reason the
    version converter gives up, with an unhelpful message)."""
    missing = set()
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx"):
            try:
                onnx.defs.get_schema(node.op_type, target, "")
            except onnx.defs.SchemaError:
                missing.add(node.op_type)
    if not missing:
        return None
    return f"{', '.join(sorted(missing))} {'is' if len(missing) == 1 else 'are'} not defined in opset {target}"


def merged_opsets(models: Mapping[str, onnx.ModelProto], target: int) -> list[onnx.OperatorSetIdProto]:
    versions: dict[str, tuple[int, str]] = {"": (target, "")}
    for name, m in models.items():
        for o in m.opset_import:
            domain = "" if o.domain == "ai.onnx" else o.domain
            if domain == "":
                continue
            seen = versions.setdefault(domain, (o.version, name))
            if seen[0] != o.version:
                raise PieceError(
                    name,
                    f"pieces {seen[1]!r} and {name!r} use different versions of the operator set {domain!r} ({seen[0]} and {o.version})",
                    "only the default ONNX domain can be converted; extract both pieces from models with the same versions",
                )
    return [helper.make_opsetid(d, v) for d, (v, _) in versions.items()]


def merged_functions(models: Mapping[str, onnx.ModelProto]) -> list[onnx.FunctionProto]:
    found: dict[tuple[str, str, str], tuple[str, onnx.FunctionProto]] = {}
    for name, m in models.items():
        for f in m.functions:
            key = (f.domain, f.name, getattr(f, "overload", ""))
            seen = found.setdefault(key, (name, f))
            if seen[1] is not f and seen[1].SerializeToString() != f.SerializeToString():
                raise PieceError(
                    name,
                    f"pieces {seen[0]!r} and {name!r} both define the local function {f.domain}.{f.name}, differently",
                    "a network can hold one function of each name: extract the pieces from one model, or rename the function",
                )
    return [f for _, f in found.values()]


def merged_ir_version(models: Any, target: int) -> int:
    """The newest IR version of the pieces, and at least what the opset needs."""
    need = next((ir for _, ir, opset, *_ in helper.VERSION_TABLE if opset >= target), onnx.IR_VERSION)
    return max([need] + [m.ir_version for m in models])
