"""Training data: ``.npz`` files of named arrays whose first axis is the example.

Arrays are named after the graph inputs and after the names a loss or metric reads (labels,
per-example weights). Everything is checked before any work: every missing, misnamed,
mistyped or misshaped array is reported at once, with close names suggested. Floating-point
arrays are cast to the type the graph wants (``numpy.savez`` writes float64 by default),
integer arrays likewise; any other difference of element type is an error.

The order of examples in an epoch is a pure function of the seed and the epoch number, so a
resumed run sees the same batches as one that never stopped.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxsurgeon.errors import InputError
from onnxsurgeon.expr import TensorType
from onnxsurgeon.names import alias


def graph_inputs(model: onnx.ModelProto) -> dict[str, TensorType]:
    """The types of the graph inputs the data must hold (initializers listed as inputs are not)."""
    inits = {t.name for t in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        t = TensorType.from_proto(v.type)
        if t is None:
            raise InputError(f"graph input {v.name!r} is not a tensor; data holds tensors only")
        out[v.name] = t
    return out


@dataclass(frozen=True)
class Dataset:
    """The arrays a run uses, cast and checked, and what was left out."""

    label: str  # the file, for messages
    arrays: Mapping[str, np.ndarray]
    examples: int
    unused: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.label,
            "examples": self.examples,
            "arrays": {k: f"{v.dtype}{list(v.shape)}" for k, v in self.arrays.items()},
            "unused": list(self.unused),
            "notes": list(self.notes),
        }

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of the examples at `indices`, contiguous."""
        return {k: np.ascontiguousarray(v[indices]) for k, v in self.arrays.items()}


def _kind(dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    if dtype == np.bool_:
        return "bool"
    return dtype.kind


def _show(dims: tuple) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def check(
    arrays: Mapping[str, np.ndarray],
    wanted: Mapping[str, TensorType],
    label: str,
    batch_size: int | None = None,
) -> Dataset:
    """Match `arrays` to the `wanted` types (first dim = the example) and report every problem.

    A wanted name is found exactly or by its alias (``input_1`` for ``input.1``). Arrays that
    nothing reads are listed as unused.
    """
    problems: list[str] = []
    notes: list[str] = []
    found: dict[str, np.ndarray] = {}
    by_alias: dict[str, list[str]] = {}
    for key in arrays:
        by_alias.setdefault(alias(key), []).append(key)
    used: set[str] = set()
    for name, want in wanted.items():
        key = name if name in arrays else None
        if key is None:
            candidates = by_alias.get(alias(name), [])
            if len(candidates) == 1:
                key = candidates[0]
            elif candidates:
                problems.append(f"{name!r} matches several arrays by alias: {', '.join(candidates)}")
                continue
        if key is None:
            close = difflib.get_close_matches(name, list(arrays), n=3, cutoff=0.6)
            close = close or [k for k in arrays if name.lower() in k.lower() or k.lower() in name.lower()][:3]
            did = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            problems.append(f"no array named {name!r}{did}")
            continue
        used.add(key)
        array = np.asarray(arrays[key])
        dtype = onnx.helper.tensor_dtype_to_np_dtype(want.elem)
        if array.dtype != dtype:
            same = _kind(array.dtype) == _kind(np.dtype(dtype)) and _kind(array.dtype) in ("float", "int")
            if same or (_kind(array.dtype) == "bool" and _kind(np.dtype(dtype)) == "float"):
                notes.append(f"{key}: {array.dtype} cast to {np.dtype(dtype)}")
                array = array.astype(dtype)
            else:
                problems.append(f"array {key!r} is {array.dtype}, the graph wants {np.dtype(dtype)} for {name!r}")
                continue
        if array.ndim == 0:
            problems.append(f"array {key!r} is a scalar; its first axis must be the example")
            continue
        if want.shape is not None:
            if array.ndim != len(want.shape):
                problems.append(
                    f"array {key!r} has shape {list(array.shape)}, {name!r} wants rank {len(want.shape)} "
                    f"{_show(want.shape)} (first axis = example)"
                )
                continue
            bad = [
                f"dim {i} is {got}, not {d}"
                for i, (got, d) in enumerate(zip(array.shape, want.shape))
                if i > 0 and isinstance(d, int) and got != d
            ]
            if bad:
                problems.append(f"array {key!r} has shape {list(array.shape)}, {name!r} wants {_show(want.shape)}: {'; '.join(bad)}")
                continue
            first = want.shape[0]
            if isinstance(first, int) and batch_size is not None and first != batch_size:
                problems.append(
                    f"{name!r} has a fixed batch size of {first} in the model; use --batch-size {first} "
                    "or export the model with a dynamic first axis"
                )
        found[name] = array
    counts = {name: a.shape[0] for name, a in found.items()}
    if len(set(counts.values())) > 1:
        problems.append(
            "arrays disagree on the number of examples (first axis): "
            + ", ".join(f"{k} has {v}" for k, v in counts.items())
        )
    if counts and not any(counts.values()):
        problems.append(f"{label} holds no examples")
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise InputError(
            f"{label} does not fit the graph ({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n{listed}",
            f"arrays needed: {', '.join(f'{k} {v}' for k, v in wanted.items())}; present: {', '.join(arrays) or '(none)'}",
        )
    examples = next(iter(counts.values())) if counts else 0
    unused = tuple(k for k in arrays if k not in used)
    return Dataset(label, found, examples, unused, tuple(notes))


def order(examples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order of the examples in one epoch: the same for the same seed and epoch."""
    if not shuffle:
        return np.arange(examples)
    return np.random.default_rng([seed, epoch]).permutation(examples)


def steps_per_epoch(examples: int, batch_size: int) -> int:
    return -(-examples // batch_size)


def batches(examples: int, batch_size: int, seed: int, epoch: int, start: int = 0, shuffle: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """(batch number, indices) of one epoch from batch `start` on; the last batch may be smaller."""
    perm = order(examples, seed, epoch, shuffle)
    for b in range(start, steps_per_epoch(examples, batch_size)):
        yield b, perm[b * batch_size : (b + 1) * batch_size]
