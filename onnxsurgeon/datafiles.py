"""Data files: ``.npz`` files, folders of ``NAME.npy`` files, several files as one data set.

Opening a data set reads only headers. ``.npy`` files and the members of an ``.npz`` that
are stored without compression (``numpy.savez``) stay on disk as :class:`FileArray`: a
batch reads only its rows, with positioned reads (``pread``) into the batch's buffer. A
compressed member (``savez_compressed``) is read whole; above :data:`COMPRESSED_WARN`
bytes that is said in a warning.

Why not through a memory mapping: the pages of a mapping that a batch touches count
towards the resident memory of the process until the kernel takes them back, and the
kernel maps whole page-cache folios (up to 2 MiB) around each row touched. Measured here:
256 random rows of 4 KiB from a mapped 256 MiB file added 220 MiB to the resident set.
Read with ``pread``, the file is cached by the kernel (reclaimable, shared, not counted
as the process's memory) and the process holds one batch.

Nothing is unpickled. Every header is checked against the size of its file or member
before anything is read, so a damaged or crafted file cannot make numpy allocate what its
header claims. The offsets of ``.npz`` members are taken from the zip's local headers (the
central directory's copy of the name and extra field may differ).
"""

from __future__ import annotations

import glob
import os
import struct
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxsurgeon.errors import InputError

# A compressed .npz member larger than this is read whole with a warning.
COMPRESSED_WARN = 64 << 20

_HINT = "save the arrays with numpy.savez(path, name=array, ...), or numpy.save each as NAME.npy in a folder"
_DAMAGED = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, struct.error, NotImplementedError)
_GLOB = set("*?[")


def take(array: Any, indices: np.ndarray, axis: int = 0) -> np.ndarray:
    """The entries at `indices` along `axis` of an array in memory or on disk."""
    if isinstance(array, (Joined, FileArray)):
        return array.take(indices, axis)
    if axis == 0:
        return np.asarray(array[indices])
    return np.take(array, indices, axis=axis)


def _kind(dtype: np.dtype) -> str:
    if np.issubdtype(dtype, np.floating):
        return "float"
    if np.issubdtype(dtype, np.integer):
        return "int"
    return "bool" if dtype == np.bool_ else dtype.kind


def castable(have: np.dtype, want: np.dtype) -> bool:
    """The one rule of every command that reads data (train, eval, run, verify, extract):
    floats are cast to the float type the graph wants (``numpy.savez`` writes float64 by
    default), integers to its integer type, booleans to 0/1 floats; nothing else is."""
    have, want = np.dtype(have), np.dtype(want)
    if have == want:
        return True
    kinds = _kind(have), _kind(want)
    return kinds in (("float", "float"), ("int", "int"), ("bool", "float"))


class Joined:
    """Arrays from several files joined on an axis without copying: only the rows a batch
    asks for are read."""

    def __init__(self, parts: Sequence[Any], axis: int = 0, labels: Sequence[str] = ()) -> None:
        self.parts = list(parts)
        self.labels = list(labels) or [str(i) for i in range(len(self.parts))]
        self.axis = axis
        first = self.parts[0]
        self.dtype = first.dtype
        self.ndim = first.ndim
        sizes = [p.shape[axis] if p.ndim > axis else 0 for p in self.parts]
        self.bounds = np.cumsum([0, *sizes])
        shape = list(first.shape)
        if axis < len(shape):
            shape[axis] = int(self.bounds[-1])
        self.shape = tuple(shape)

    def on(self, axis: int) -> Joined:
        """The same parts joined on another axis."""
        return self if axis == self.axis else Joined(self.parts, axis, self.labels)

    def mismatch(self, name: str) -> str | None:
        """Why the parts cannot be joined on this axis, or None."""
        first = self.parts[0]
        for part, label in zip(self.parts[1:], self.labels[1:]):
            if part.dtype != first.dtype:
                return f"array {name!r} is {first.dtype} in {self.labels[0]} but {part.dtype} in {label}"
            same = part.ndim == first.ndim and all(a == b for i, (a, b) in enumerate(zip(part.shape, first.shape)) if i != self.axis)
            if not same or part.ndim <= self.axis:
                return (f"array {name!r} is {list(first.shape)} in {self.labels[0]} but {list(part.shape)} in {label}: "
                        f"they cannot be joined on axis {self.axis}")
        return None

    def take(self, indices: np.ndarray, axis: int) -> np.ndarray:
        if axis != self.axis:
            return self.on(axis).take(indices, axis)
        indices = np.asarray(indices, dtype=np.int64)
        shape = list(self.shape)
        shape[axis] = len(indices)
        out = np.empty(shape, self.dtype)
        moved = np.moveaxis(out, axis, 0)
        part = np.searchsorted(self.bounds, indices, side="right") - 1
        for i in np.unique(part):
            mask = part == i
            local = indices[mask] - self.bounds[i]
            rows = take(self.parts[i], local, axis)
            moved[mask] = np.moveaxis(rows, axis, 0)
        return out

    def first(self) -> np.ndarray:
        return np.asarray(self.parts[0])

    def same_everywhere(self) -> bool:
        """Whether every part holds the same values (a --fixed array given in every file)."""
        first = self.first()
        return all(np.array_equal(first, np.asarray(p)) for p in self.parts[1:])

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(p) for p in self.parts], axis=self.axis)
        return whole if dtype is None else whole.astype(dtype)


class DataFiles(Mapping):
    """The arrays of one or more data files, by name, left on disk where the format allows.

    An array given in several files is a :class:`Joined` of its parts (examples on axis 0
    unless the data layout says otherwise). `warnings` lists what was read whole.
    """

    def __init__(self, label: str, arrays: dict[str, Any], warnings: list[str], files: list[str]) -> None:
        self.label = label
        self._arrays = arrays
        self.warnings = tuple(warnings)
        self.files = tuple(files)

    def __getitem__(self, key: str) -> Any:
        return self._arrays[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def close(self) -> None:
        for a in self._arrays.values():
            for part in getattr(a, "parts", [a]):
                if isinstance(part, FileArray):
                    part.close()


def expand(paths: Sequence[str | Path]) -> list[Path]:
    """The files the ``--data`` arguments name: files, folders and glob patterns, in order."""
    out: list[Path] = []
    for p in paths:
        text = str(p)
        if not os.path.exists(text) and _GLOB & set(text):
            hits = sorted(glob.glob(text))
            if not hits:
                raise InputError(f"no file matches {text}", "check the pattern of --data (quote it so the shell leaves it)")
            out.extend(Path(h) for h in hits)
        else:
            out.append(Path(text))
    return out


def open_data(paths: str | Path | Sequence[str | Path]) -> DataFiles:
    """The arrays of the data files `paths` (``.npz`` files, ``.npy`` files, folders of
    ``NAME.npy`` files, glob patterns) as one data set: an array named in several files is
    joined across them in the order given (shards of the examples); arrays of different
    names may come from different files (features in one, labels in another)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = expand(paths)
    if not files:
        raise InputError("no data file given", "give --data FILE.npz, a folder of NAME.npy files, or several files")
    warnings: list[str] = []
    shards: list[tuple[str, dict[str, Any]]] = []
    for f in files:
        if f.is_dir():
            members = sorted(f.glob("*.npy"))
            if not members:
                raise InputError(f"folder {f} holds no .npy files", _HINT)
            shards.append((str(f), {m.stem: _npy(m) for m in members}))
        elif not f.exists():
            raise InputError(f"no such file: {f}", "check the path of the data file")
        elif not f.is_file():  # a pipe (<(...)) or a device: arrays are read in place, at offsets
            raise InputError(f"{f} is a pipe or a device, not a file: data is read in place, by offset", "save the data to a file first")
        elif f.suffix == ".npy":
            shards.append((str(f), {f.stem: _npy(f)}))
        else:
            shards.append((str(f), _npz(f, warnings)))
    label = shards[0][0] if len(shards) == 1 else f"{shards[0][0]} and {len(shards) - 1} more"
    if len(shards) == 1:
        return DataFiles(label, shards[0][1], warnings, [s for s, _ in shards])
    joined: dict[str, Any] = {}
    for n in dict.fromkeys(n for _, arrays in shards for n in arrays):
        parts = [(label, arrays[n]) for label, arrays in shards if n in arrays]
        joined[n] = parts[0][1] if len(parts) == 1 else Joined([p for _, p in parts], 0, [lbl for lbl, _ in parts])
    return DataFiles(label, joined, warnings, [s for s, _ in shards])


class FileArray:
    """An array stored in a file at `offset` (C order), read on demand: :meth:`take` reads
    the entries a batch asks for with positioned reads into the batch's buffer, a run of
    neighbours in one read."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.path, self.offset, self.shape, self.dtype = path, offset, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)
        self._fd: int | None = None

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def _file(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def take(self, indices: np.ndarray, axis: int = 0) -> np.ndarray:
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        size = self.shape[axis]
        if indices.size and (indices.min() < 0 or indices.max() >= size):
            raise IndexError(f"index out of range for axis {axis} of size {size}")
        outer = int(np.prod(self.shape[:axis], dtype=np.int64))
        row = int(np.prod(self.shape[axis + 1 :], dtype=np.int64)) * self.dtype.itemsize
        n = len(indices)
        got = np.empty((outer, n, row), np.uint8)
        if got.size == 0:
            return got.view(self.dtype).reshape(*self.shape[:axis], n, *self.shape[axis + 1 :])
        # runs of neighbours in the order asked (a whole range in eval and run) are one read
        cuts = (np.flatnonzero(np.diff(indices) != 1) + 1).tolist()
        starts, ends = [0, *cuts], [*cuts, n]
        first = indices.tolist()
        fd = self._file()
        view = memoryview(got).cast("B")
        preadv = os.preadv
        for o in range(outer):
            base = self.offset + o * size * row
            at = o * n * row
            for s, e in zip(starts, ends):
                want = (e - s) * row
                if want and preadv(fd, [view[at + s * row : at + e * row]], base + first[s] * row) != want:
                    raise InputError(f"{self.path} changed while it was read (it is shorter than its header says)",
                                     "do not write the data files while onnxsurgeon reads them")
        return got.view(self.dtype).reshape(*self.shape[:axis], n, *self.shape[axis + 1 :])

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, np.ndarray) and key.dtype.kind in "iu" and key.ndim == 1:
            return self.take(key, 0)
        return np.asarray(self)[key]

    def __array__(self, dtype=None, copy=None):
        whole = self.take(np.arange(self.shape[0]), 0) if self.ndim else self._scalar()
        return whole if dtype is None else whole.astype(dtype)

    def _scalar(self) -> np.ndarray:
        data = os.pread(self._file(), self.dtype.itemsize, self.offset)
        return np.frombuffer(data, self.dtype).reshape(()).copy()


def _header(fp: Any, name: str, size: int) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """Shape, dtype, Fortran order and the data's offset (from the .npy's start) of the
    .npy that `fp` is at the start of, checked against the `size` of the .npy."""
    start = fp.tell()
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    if dtype.hasobject:
        raise InputError(f"{name} holds objects, which are never unpickled", _HINT)
    count = 1
    for d in shape:
        count *= d
    head = fp.tell() - start
    if head + count * dtype.itemsize != size:
        raise InputError(f"{name} is damaged: it is {size:,} bytes, its header says {dtype}{list(shape)}", _HINT)
    return shape, dtype, fortran, head


def _on_disk(path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool) -> Any:
    if fortran and len(shape) > 1:  # rows are not contiguous: numpy's own mapping
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F")
    array = FileArray(path, offset, shape, dtype)
    if not shape or 0 in shape:  # a scalar or nothing: read now
        small = np.asarray(array)
        array.close()
        return small
    return array


def _npy(path: Path) -> Any:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            shape, dtype, fortran, head = _header(f, str(path), size)
        return _on_disk(path, head, shape, dtype, fortran)
    except InputError:
        raise
    except _DAMAGED:
        raise InputError(f"{path} is not a readable .npy file", _HINT) from None


def _npz(path: Path, warnings: list[str]) -> dict[str, Any]:
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise InputError(f"no such file: {path}", "check the path of the data file") from None
    except _DAMAGED:
        raise InputError(f"{path} is not a readable .npz file (not a zip of plain numpy arrays)", _HINT) from None
    arrays: dict[str, Any] = {}
    with z, open(path, "rb") as raw:
        total = os.fstat(raw.fileno()).st_size
        for info in z.infolist():
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            where = f"{path} (member {name!r})"
            try:
                if info.flag_bits & 0x1:
                    raise InputError(f"{where} is encrypted", _HINT)
                if info.compress_type == zipfile.ZIP_STORED:
                    arrays[key] = _stored(path, raw, total, info, where)
                else:
                    arrays[key] = _compressed(z, info, where, warnings)
            except InputError:
                raise
            except _DAMAGED:
                raise InputError(f"{path} is not a readable .npz file: member {name!r} is damaged", _HINT) from None
    return arrays


def _stored(path: Path, raw: Any, total: int, info: zipfile.ZipInfo, where: str) -> Any:
    raw.seek(info.header_offset)
    head = raw.read(30)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        raise InputError(f"{where} is damaged (no local header where the directory says)", _HINT)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if info.compress_size != info.file_size or start + info.file_size > total:
        raise InputError(f"{where} is damaged (its size runs past the end of the file)", _HINT)
    raw.seek(start)
    shape, dtype, fortran, head_len = _header(raw, where, info.file_size)
    return _on_disk(path, start + head_len, shape, dtype, fortran)


def _compressed(z: zipfile.ZipFile, info: zipfile.ZipInfo, where: str, warnings: list[str]) -> np.ndarray:
    with z.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fp)
        if dtype.hasobject:
            raise InputError(f"{where} holds objects, which are never unpickled", _HINT)
        count = 1
        for d in shape:
            count *= d
        if fp.tell() + count * dtype.itemsize != info.file_size:
            raise InputError(f"{where} is damaged: it is {info.file_size:,} bytes, its header says {dtype}{list(shape)}", _HINT)
        if info.file_size > COMPRESSED_WARN:
            warnings.append(
                f"{where} is compressed: it is read whole into memory ({info.file_size / 2**20:,.0f} MiB); "
                "save with numpy.savez (not savez_compressed) or as .npy files to memory-map it"
            )
        data = fp.read(count * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


class NpzStream:
    """An ``.npz`` written as batches arrive: each array's batches go to a scratch file
    beside the output, joined on the array's axis, and :meth:`write` assembles the ``.npz``
    (stored, as ``numpy.savez`` writes it) atomically. Memory holds one batch at a time."""

    def __init__(self, folder: Path) -> None:
        import tempfile

        try:
            self.scratch = Path(tempfile.mkdtemp(prefix=".onnxsurgeon-run-", dir=folder))
        except OSError as e:
            raise InputError(f"cannot write in {folder}: {e.strerror}", "choose a writable output folder") from None
        self.arrays: dict[str, dict[str, Any]] = {}

    def add(self, name: str, value: np.ndarray, axis: int | None) -> None:
        """One batch's value of `name`, joined on `axis` (None: kept from the first batch)."""
        value = np.asarray(value)
        entry = self.arrays.get(name)
        if entry is None:
            if axis is not None and value.ndim <= axis:
                raise InputError(
                    f"cannot join the batches of output {name!r} on axis {axis}: it has rank {value.ndim}",
                    f"give --batch-axis {name}=AXIS for the axis that holds its examples, or --fixed {name} if it does not depend on them",
                )
            rest = tuple(d for i, d in enumerate(value.shape) if i != axis) if axis is not None else value.shape
            entry = {"dtype": value.dtype, "rest": rest, "axis": axis, "count": 0, "file": open(self.scratch / f"{len(self.arrays)}.raw", "wb")}  # noqa: SIM115
            self.arrays[name] = entry
        elif axis is None:
            return
        rest = tuple(d for i, d in enumerate(value.shape) if i != axis)
        if value.dtype != entry["dtype"] or rest != entry["rest"] or value.ndim != len(rest) + 1:
            raise InputError(
                f"cannot join the batches of output {name!r} on axis {axis}: their shapes differ elsewhere "
                f"({entry['dtype']}{list(entry['rest'])} without axis {axis}, then {value.dtype}{list(value.shape)})",
                f"give --batch-axis {name}=AXIS for the axis that holds its examples, or --fixed {name} if it does not depend on them",
            )
        moved = np.ascontiguousarray(np.moveaxis(value, axis, 0) if axis is not None else value)
        entry["file"].write(memoryview(moved).cast("B"))
        entry["count"] += value.shape[axis] if axis is not None else 1

    def shape(self, name: str) -> tuple[int, ...]:
        e = self.arrays[name]
        if e["axis"] is None:
            return e["rest"]
        rest = list(e["rest"])
        rest.insert(e["axis"], e["count"])
        return tuple(rest)

    def shapes(self) -> dict[str, str]:
        return {k: f"{e['dtype']}{list(self.shape(k))}" for k, e in self.arrays.items()}

    def write(self, path: Path) -> None:
        """Assemble the ``.npz`` at `path`, atomically."""
        from onnxsurgeon import serde

        for e in self.arrays.values():
            e["file"].close()
        serde.write_atomically(path, self._assemble)

    def _assemble(self, f: Any) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for k, (name, e) in enumerate(self.arrays.items()):
                shape = self.shape(name)
                header = {"descr": np.lib.format.dtype_to_descr(e["dtype"]), "fortran_order": False, "shape": shape}
                raw = self.scratch / f"{k}.raw"
                with z.open(name + ".npy", "w", force_zip64=True) as out:
                    try:
                        np.lib.format.write_array_header_1_0(out, header)
                    except ValueError:
                        np.lib.format.write_array_header_2_0(out, header)
                    if e["axis"] in (0, None) or 0 in shape:
                        with open(raw, "rb") as src:
                            while chunk := src.read(16 << 20):
                                out.write(chunk)
                    else:
                        self._transposed(out, raw, e, shape)

    @staticmethod
    def _transposed(out: Any, raw: Path, e: dict[str, Any], shape: tuple[int, ...]) -> None:
        """Write an array stored with its join axis first in its own order, a block of rows at a time."""
        axis = e["axis"]
        stored = FileArray(raw, 0, (e["count"], *e["rest"]), e["dtype"])
        row = max(int(np.prod(shape[axis + 1 :], dtype=np.int64)) * e["dtype"].itemsize, 1)
        block = max(1, (16 << 20) // row)
        try:
            for prefix in np.ndindex(*shape[:axis]):
                for j in range(0, shape[axis], block):
                    rows = stored.take(np.arange(j, min(j + block, shape[axis])), 0)[(slice(None), *prefix)]
                    out.write(memoryview(np.ascontiguousarray(rows)).cast("B"))
        finally:
            stored.close()

    def close(self) -> None:
        import shutil

        for e in self.arrays.values():
            e["file"].close()
        shutil.rmtree(self.scratch, ignore_errors=True)
