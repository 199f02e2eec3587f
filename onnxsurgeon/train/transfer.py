"""Copying parameters from one model or checkpoint into another by name (``transfer``).

Every parameter of the destination (a floating-point initializer with at least one
dimension) looks for its source: the same name, else the same alias (``L4_W`` for
``L4.W``, ``_enc_L4_W`` for ``/enc/L4.W``; :mod:`onnxsurgeon.names`), else a rename map
``OLD=NEW`` in which ``*`` stands for any text (``enc.*=encoder/*`` gives ``encoder/L1.W`` the
value of ``enc.L1.W``). A map may be written in aliases on either side (``enc_*=_encoder_*``). The report lists what matched and how,
the destination parameters without a source (missing), the source parameters nothing took
(unexpected) and the pairs whose shape or type differ (not copied).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import checks
from onnxsurgeon.errors import InputError
from onnxsurgeon.names import alias
from onnxsurgeon.train import weights


@dataclass(frozen=True)
class Match:
    target: str
    source: str
    how: str  # "exact", "alias" or "map"

    def to_dict(self) -> dict[str, str]:
        return {"target": self.target, "source": self.source, "how": self.how}


@dataclass(frozen=True)
class Mismatch:
    target: str
    source: str
    target_type: str
    source_type: str

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TransferReport:
    """What was copied, and what could not be."""

    matched: tuple[Match, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shape: tuple[Mismatch, ...]
    warnings: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "matched": [m.to_dict() for m in self.matched],
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
            "wrong_shape": [m.to_dict() for m in self.wrong_shape],
            "warnings": list(self.warnings),
        }


def _rule(text: str) -> tuple[re.Pattern[str], str]:
    old, sep, new = text.partition("=")
    if not sep or not old or not new or old.count("*") != new.count("*"):
        raise InputError(f"--map {text!r} is not OLD=NEW with as many '*' on both sides", "e.g. --map 'enc.*=encoder/*'")
    pattern = "^" + "(.*?)".join(re.escape(part) for part in old.split("*")) + "$"
    return re.compile(pattern), new


def _apply(new: str, groups: Sequence[str]) -> str:
    parts = new.split("*")
    out = parts[0]
    for g, part in zip(groups, parts[1:]):
        out += g + part
    return out


def _show(value: np.ndarray | onnx.TensorProto) -> str:
    if isinstance(value, onnx.TensorProto):
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.data_type)
        return f"{np.dtype(dtype)}{list(value.dims)}"
    return f"{value.dtype}{list(value.shape)}"


def transfer(
    source: onnx.ModelProto | Mapping[str, np.ndarray], target: onnx.ModelProto, /, maps: Sequence[str] = ()
) -> tuple[onnx.ModelProto, TransferReport]:
    """`target` with the parameters `source` (a model, or name -> array from a checkpoint)
    has for it, and the report. The target is never changed."""
    rules = [_rule(m) for m in maps]
    if isinstance(source, onnx.ModelProto):
        src_tensors = weights.parameters(source)
        src: dict[str, Any] = dict(src_tensors)
    else:
        src = dict(source)
    dst = weights.parameters(target)
    by_alias: dict[str, list[str]] = {}
    for name in src:
        by_alias.setdefault(alias(name), []).append(name)
    renamed: dict[str, str] = {}  # target name -> source name, from the maps (first rule wins)
    renamed_alias: dict[str, list[str]] = {}  # the alias of a renamed target -> source names
    for name in src:
        for pattern, new in rules:
            m = pattern.match(name) or pattern.match(alias(name))  # a map may be written in aliases
            if m:
                renamed.setdefault(_apply(new, m.groups()), name)
                renamed_alias.setdefault(alias(_apply(new, m.groups())), []).append(name)
                break
    matched: list[Match] = []
    missing: list[str] = []
    wrong: list[Mismatch] = []
    values: dict[str, np.ndarray | onnx.TensorProto] = {}
    used: set[str] = set()
    for name, tensor in dst.items():
        if name in src:
            found, how = name, "exact"
        elif len(by_alias.get(alias(name), [])) == 1:
            found, how = by_alias[alias(name)][0], "alias"
        elif name in renamed:
            found, how = renamed[name], "map"
        elif len(set(renamed_alias.get(alias(name), []))) == 1:
            found, how = renamed_alias[alias(name)][0], "map"
        else:
            missing.append(name)
            continue
        used.add(found)
        value = src[found]
        if isinstance(value, onnx.TensorProto):  # copied as it is: external bytes are not read here
            fits = tuple(value.dims) == tuple(tensor.dims) and value.data_type == tensor.data_type
        else:
            value = np.asarray(value)
            want = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
            fits = tuple(value.shape) == tuple(tensor.dims) and value.dtype == want
        if not fits:
            wrong.append(Mismatch(name, found, _show(tensor), _show(value)))
            continue
        matched.append(Match(name, found, how))
        values[name] = value
    unexpected = tuple(n for n in src if n not in used)
    out = weights.write_back(target, values) if values else _copy(target)
    warnings = checks.check_result(out, "a model with transferred parameters", [target])
    return out, TransferReport(tuple(matched), tuple(missing), unexpected, tuple(wrong), tuple(warnings))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
