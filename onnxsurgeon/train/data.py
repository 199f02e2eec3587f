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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from onnxsurgeon.datafiles import Joined, castable, take
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
class Layout:
    """Where the examples of each data array lie.

    By default every array holds one example per index of its first axis. A `fixed` array
    is fed whole at every step (a sample rate, a trip count, a weight); an array in
    `batch_axes` holds its examples on that axis (a state ``[2, N, 128]``: axis 1), and
    batches are sliced there. Names are those of the arrays in the data (exact, or by alias).
    """

    fixed: tuple[str, ...] = ()
    batch_axes: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", tuple(self.fixed))
        axes = self.batch_axes.items() if isinstance(self.batch_axes, Mapping) else self.batch_axes
        object.__setattr__(self, "batch_axes", tuple((str(k), int(v)) for k, v in axes))
        problems = []
        seen: dict[str, int] = {}
        for name, axis in self.batch_axes:
            if axis < 0:
                problems.append(f"--batch-axis {name}={axis}: the axis must be >= 0")
            if seen.get(name, axis) != axis:
                problems.append(f"--batch-axis gives {name!r} two axes ({seen[name]} and {axis})")
            seen[name] = axis
        both = sorted(set(self.fixed) & set(seen))
        if both:
            problems.append(f"{', '.join(map(repr, both))} given both as --fixed and --batch-axis")
        if problems:
            raise InputError("; ".join(problems), "--fixed NAME feeds an array whole; --batch-axis NAME=AXIS slices it on AXIS")

    @classmethod
    def parse(cls, fixed: Sequence[str] = (), batch_axes: Sequence[str] = ()) -> Layout:
        """From the command line's ``--fixed NAME`` and ``--batch-axis NAME=AXIS`` options."""
        pairs = []
        for text in batch_axes:
            name, sep, axis = text.rpartition("=")
            try:
                pairs.append((name, int(axis)))
            except ValueError:
                sep = ""
            if not sep or not name:
                raise InputError(f"--batch-axis {text!r} is not NAME=AXIS", "e.g. --batch-axis state=1")
        return cls(tuple(fixed), tuple(pairs))

    def __bool__(self) -> bool:
        return bool(self.fixed or self.batch_axes)

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": sorted(self.fixed), "batch_axes": dict(sorted(self.batch_axes))}

    def bind(self, keys: Sequence[str], others: Sequence[str] = ()) -> tuple[dict[str, int | None], list[str]]:
        """The axis of each named array (None: fixed), keyed by the array's name in the data,
        and the problems: names that match no array (nor one of `others`)."""
        by_alias: dict[str, list[str]] = {}
        for k in keys:
            by_alias.setdefault(alias(k), []).append(k)
        axes: dict[str, int | None] = {}
        problems = []
        other_aliases = {alias(o) for o in others}
        for name, axis in [*((n, None) for n in self.fixed), *self.batch_axes]:
            option = "--fixed" if axis is None else "--batch-axis"
            if name in keys:
                axes[name] = axis
                continue
            if name in others or (alias(name) in other_aliases and alias(name) not in by_alias):
                continue
            hits = by_alias.get(alias(name), [])
            if len(hits) == 1:
                axes[hits[0]] = axis
            elif hits:
                problems.append(f"{option} {name!r} matches several arrays by alias: {', '.join(hits)}")
            else:
                close = difflib.get_close_matches(name, list(keys), n=3, cutoff=0.6)
                close = close or [k for k in keys if k.lower() == name.lower()]
                did = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                problems.append(f"{option} {name!r}: the data holds no array of that name{did}")
        return axes, problems


def fixed_values(model: onnx.ModelProto, arrays: Mapping[str, Any], layout: Layout) -> dict[str, np.ndarray]:
    """The values of the graph inputs fed whole (``--fixed``), in the inputs' types: known
    before training, they decide If branches and trip counts in the training graph."""
    axes, _ = layout.bind(list(arrays))
    by_alias: dict[str, list[str]] = {}
    for key in arrays:
        by_alias.setdefault(alias(key), []).append(key)
    out = {}
    for name, want in graph_inputs(model).items():
        hits = [name] if name in arrays else by_alias.get(alias(name), [])
        if len(hits) != 1 or hits[0] not in axes or axes[hits[0]] is not None:
            continue
        value = arrays[hits[0]]
        value = value.first() if isinstance(value, Joined) else np.asarray(value)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(want.elem))
        if value.dtype != dtype and castable(value.dtype, dtype):
            value = value.astype(dtype)
        out[name] = value
    return out


@dataclass(frozen=True)
class Dataset:
    """The arrays a run uses, checked, and what was left out.

    Arrays stay as given (memory-mapped ones are not read); :meth:`batch` reads and casts
    only the examples it is asked for, so a share of a batch (one rank's rows) is read alone.
    """

    label: str  # the file, for messages
    arrays: Mapping[str, Any]
    examples: int
    unused: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    axes: Mapping[str, int | None] = field(default_factory=dict)  # by graph name: None = fixed, default 0
    casts: Mapping[str, np.dtype] = field(default_factory=dict)  # the graph's type where the data's differs
    layout: Layout = field(default_factory=Layout)

    def to_dict(self) -> dict[str, Any]:
        report = {
            "file": self.label,
            "examples": self.examples,
            "arrays": {k: f"{np.dtype(self.casts.get(k, v.dtype))}{list(v.shape)}" for k, v in self.arrays.items()},
            "unused": list(self.unused),
            "notes": list(self.notes),
        }
        if self.layout:
            report["layout"] = self.layout.to_dict()
        return report

    def axis(self, name: str) -> int | None:
        """The axis on which `name` holds its examples; None for a fixed array."""
        return self.axes.get(name, 0)

    def batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays of the examples at `indices` (fixed arrays whole), contiguous and in
        the graph's types. Only those examples are read."""
        out = {}
        for k, v in self.arrays.items():
            axis = self.axes.get(k, 0)
            out[k] = self._fixed(k) if axis is None else self._cast(k, take(v, indices, axis))
        return out

    def _cast(self, name: str, part: np.ndarray) -> np.ndarray:
        dtype = self.casts.get(name)
        return np.ascontiguousarray(part if dtype is None else part.astype(dtype))

    def _fixed(self, name: str) -> np.ndarray:
        cache = self.__dict__.setdefault("_fixed_cache", {})
        if name not in cache:
            cache[name] = self._cast(name, np.asarray(self.arrays[name]))
        return cache[name]

    def whole(self) -> dict[str, np.ndarray]:
        """Every array whole, in the graph's types."""
        return {k: self._fixed(k) if self.axes.get(k, 0) is None else self._cast(k, np.asarray(v)) for k, v in self.arrays.items()}


def _show(dims: tuple) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def check(
    arrays: Mapping[str, Any],
    wanted: Mapping[str, TensorType],
    label: str,
    batch_size: int | None = None,
    layout: Layout | None = None,
    others: Sequence[str] = (),
) -> Dataset:
    """Match `arrays` to the `wanted` types and report every problem at once.

    A wanted name is found exactly or by its alias (``input_1`` for ``input.1``). Each array
    holds its examples on axis 0, on the axis `layout` gives, or is fixed (fed whole).
    Arrays that nothing reads are listed as unused. `others` are names `layout` may give
    that are not arrays (the outputs of ``run``).
    """
    layout = layout or Layout()
    problems: list[str] = []
    notes: list[str] = []
    found: dict[str, Any] = {}
    axes: dict[str, int | None] = {}
    casts: dict[str, np.dtype] = {}
    by_alias: dict[str, list[str]] = {}
    for key in arrays:
        by_alias.setdefault(alias(key), []).append(key)
    key_axes, problems = layout.bind(list(arrays), others)
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
        array = arrays[key]
        if not hasattr(array, "dtype") or not hasattr(array, "shape"):
            array = np.asarray(array)
        axis = key_axes.get(key, 0)
        if isinstance(array, Joined):  # one array in several files
            if axis is None:
                if not array.same_everywhere():
                    problems.append(f"--fixed {key!r} differs between the data files; a fixed array is the same in every file")
                    continue
                array = array.first()
            else:
                array = array.on(axis)
                mismatch = array.mismatch(key)
                if mismatch:
                    problems.append(mismatch)
                    continue
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(want.elem))
        if array.dtype != dtype:
            if castable(array.dtype, dtype):
                notes.append(f"{key}: {array.dtype} cast to {dtype}")
                casts[name] = dtype
            else:
                problems.append(f"array {key!r} is {array.dtype}, the graph wants {dtype} for {name!r}")
                continue
        where = "fed whole (--fixed)" if axis is None else f"axis {axis} = example"
        if axis is not None and array.ndim <= axis:
            what = "a scalar" if array.ndim == 0 else f"of rank {array.ndim}"
            hint = "; if it is not per example, give --fixed " + key if array.ndim == 0 or axis else ""
            problems.append(f"array {key!r} is {what}; its axis {axis} must be the example{hint}")
            continue
        if want.shape is not None:
            if array.ndim != len(want.shape):
                problems.append(
                    f"array {key!r} has shape {list(array.shape)}, {name!r} wants rank {len(want.shape)} "
                    f"{_show(want.shape)} ({where})"
                )
                continue
            bad = [
                f"dim {i} is {got}, not {d}"
                for i, (got, d) in enumerate(zip(array.shape, want.shape))
                if i != axis and isinstance(d, int) and got != d
            ]
            if bad:
                problems.append(f"array {key!r} has shape {list(array.shape)}, {name!r} wants {_show(want.shape)}: {'; '.join(bad)} ({where})")
                continue
            first = want.shape[axis] if axis is not None else None
            if isinstance(first, int) and batch_size is not None and first != batch_size:
                symbolic = [i for i, d in enumerate(want.shape) if not isinstance(d, int)]
                other = f", or --batch-axis {key}={symbolic[0]} if its examples lie on axis {symbolic[0]}" if symbolic else ""
                problems.append(
                    f"{name!r} has a fixed batch size of {first} in the model (axis {axis}); use --batch-size {first}"
                    f"{other}, or --fixed {key} if it is not per example"
                )
        found[name] = array
        if axis != 0:
            axes[name] = axis
    symbols: dict[str, str] = {}
    for n in found:
        a, shape = axes.get(n, 0), wanted[n].shape
        if a is not None and shape is not None and isinstance(shape[a], str):
            symbols.setdefault(shape[a], n)
    for name in found:
        shape = wanted[name].shape if axes.get(name, 0) is None else None
        for i, d in enumerate(shape or ()):
            if d in symbols:  # its size must be the batch's, which a whole array cannot follow
                problems.append(
                    f"{name!r} is --fixed, but its dim {i} is {d!r}, the examples' axis of {symbols[d]!r}: "
                    f"it must follow the batch; give --batch-axis {name}={i}"
                )
    counts = {name: a.shape[axes.get(name, 0)] for name, a in found.items() if axes.get(name, 0) is not None}
    if len(set(counts.values())) > 1:
        problems.append(
            "arrays disagree on the number of examples (" + ("first axis" if not layout.batch_axes else "their batch axes") + "): "
            + ", ".join(f"{k} has {v}" for k, v in counts.items())
        )
    if found and not counts:
        problems.append(f"every array of {label} is --fixed: at least one must hold the examples")
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
    return Dataset(label, found, examples, unused, tuple(notes), axes, casts, layout)


def check_class_indices(dataset: Dataset, uses: Sequence[tuple[str, int | None, str]], chunk: int = 1 << 20) -> None:
    """Every value of an array read as class indices lies in ``0 .. classes-1`` (with an
    unknown number of classes: is not negative); else an error naming the array, the bad
    values and where they are. The array is read a chunk at a time."""
    problems = []
    grouped: dict[tuple[str, int | None], list[str]] = {}
    for name, classes, call in uses:
        grouped.setdefault((name, classes), []).append(call)
    for (name, classes), calls in grouped.items():
        call = ", ".join(calls)
        array = dataset.arrays.get(name)
        if array is None:
            continue
        axis = dataset.axes.get(name, 0)
        count, bad, where = 0, {}, []
        if axis is None or array.ndim == 0:
            parts = [(0, np.asarray(array))]
        else:
            size = array.shape[axis]
            parts = ((s, take(array, np.arange(s, min(s + chunk, size)), axis)) for s in range(0, size, chunk))
        for start, values in parts:
            values = np.asarray(values)
            wrong = values < 0 if classes is None else (values < 0) | (values >= classes)
            n = int(np.count_nonzero(wrong))
            if not n:
                continue
            count += n
            for position in np.argwhere(wrong)[: 5 - len(where)]:
                value = values[tuple(position)].item()
                if axis is not None and values.ndim:
                    position[axis] += start
                where.append(f"{value} at [{', '.join(map(str, position))}]")
            for v in np.unique(values[wrong])[:5]:
                bad.setdefault(v.item(), None)
        if count:
            allowed = f"0 to {classes - 1}" if classes is not None else "0 or more"
            shown = ", ".join(map(str, list(bad)[:5]))
            problems.append(
                f"array {name!r} holds class indices outside {allowed} ({call}): {shown} "
                f"({count} in all; {', '.join(where)}{' ...' if count > len(where) else ''})"
            )
    if problems:
        raise InputError(
            f"{dataset.label}: " + ("\n  - ".join(["class indices out of range:", *problems]) if len(problems) > 1 else problems[0]),
            "class indices count from 0 to the number of classes - 1 on the class axis; -1 (ignore) is not supported: "
            "drop those examples, or check that the labels belong to this model",
        )


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
