"""Reading and writing model files: the only module that deals with files and protobuf bytes.

Models are read with protobuf's own parser (no walk over every node). Tensors kept in
external data files are not read at load time: their locations are checked and made
absolute, and their bytes are read only when a model that still needs them is saved or run.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import itertools
import os
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx
from google.protobuf.message import DecodeError

from onnxsurgeon import dtypes, faults, formats, meta, wire
from onnxsurgeon.errors import InputError, write_failed

# Tensors at least this large go to the external data file when a model is written with
# external data; smaller ones stay inline, as onnx does.
EXTERNAL_THRESHOLD = 1024
# protobuf cannot serialise a message of 2 GiB or more; leave room for the graph itself.
INLINE_LIMIT = 1_800_000_000
# Model files this large are read without their big weights, which stay in the file and
# are read when needed (see wire.py); smaller ones are parsed whole, which is faster.
LAZY_FILE_SIZE = 256 << 20
LAZY_TENSOR_SIZE = 64 << 10
# A data file written by save() starts with this and the id of its save, in this many bytes.
DATA_MAGIC = b"onnxsurgeon data "
DATA_HEADER = 64
# External bytes are copied this much at a time.
COPY_CHUNK = 64 << 20


def load(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Read an ONNX model file, leaving external weights on disk until they are needed."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no such file: {path}", "check the path of the model")
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an ONNX model file", "name the .onnx file inside it")
    try:
        if path.stat().st_size >= LAZY_FILE_SIZE:
            model = _read_lazily(path)
            _resolve_external(model, path)
            return model
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from None
    model = parse(data, str(path))
    if b"location" in data:  # cheap test: no external data entry can exist without this key
        _resolve_external(model, path)
    return model


def _read_lazily(path: Path) -> onnx.ModelProto:
    try:
        model = wire.read_lazily(path, LAZY_TENSOR_SIZE)
    except (ValueError, IndexError, DecodeError, RuntimeError):
        with open(path, "rb") as f:
            head = f.read(256)
        raise formats.not_onnx(str(path), head, f"{path} {formats.UNPARSED}") from None
    return _check_parsed(model, str(path))


def parse(data: bytes, what: str = "model") -> onnx.ModelProto:
    """Parse the bytes of a model, refusing anything that is not a complete ONNX model."""
    model = onnx.ModelProto()
    text_ok = _text_is_utf8(data)  # before the model is parsed: never two copies at once
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        raise formats.not_onnx(what, data[:256], f"{what} {formats.UNPARSED}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise formats.not_onnx(what, data[:256], f"{what} {formats.INCOMPLETE}")
    return _check_parsed(model, what, text_ok)


def _check_parsed(model: onnx.ModelProto, what: str, text_ok: bool = False) -> onnx.ModelProto:
    # A truncated file can still parse when it ends on a field boundary; the graph and the
    # opset list are written before anything optional, so their absence gives it away.
    if model.ir_version <= 0 or not model.HasField("graph") or not model.opset_import:
        raise formats.not_onnx(what, b"", f"{what} {formats.INCOMPLETE}")
    bad = None if text_ok else invalid_text(model)
    if bad is not None:
        where, value = bad
        raise InputError(
            f"{what} holds text that is not valid UTF-8 in {where}: {value[:40]!r}",
            "ONNX stores names and doc strings as UTF-8: the file is damaged, or its writer is broken; re-export the model",
        )
    return model


_UTF8_CHECKER: list = []


def _text_is_utf8(data: bytes) -> bool:
    """Whether every string field of a serialised model is valid UTF-8, found by protobuf's
    own parser (a walk over every string in Python takes ten times as long as loading a
    200k-node graph): ONNX's messages declared proto3, whose parser refuses a string that
    is not UTF-8. False means only that the walk (invalid_text) must look."""
    if not _UTF8_CHECKER:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

        fdp = descriptor_pb2.FileDescriptorProto()
        onnx.ModelProto.DESCRIPTOR.file.CopyToProto(fdp)
        fdp.name, fdp.package, fdp.syntax = "onnxsurgeon_utf8.proto", "onnxsurgeon_utf8", "proto3"
        fdp.ClearField("dependency")

        def proto3(messages) -> None:
            for m in messages:
                for f in m.field:
                    f.label = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED if (
                        f.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                    ) else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
                    f.ClearField("default_value")
                    prefix = "." + onnx.ModelProto.DESCRIPTOR.file.package + "."
                    if f.type_name.startswith(prefix):
                        f.type_name = ".onnxsurgeon_utf8." + f.type_name[len(prefix):]
                m.ClearField("extension_range")
                proto3(m.nested_type)

        proto3(fdp.message_type)
        try:
            pool = descriptor_pool.DescriptorPool()
            pool.Add(fdp)
            _UTF8_CHECKER.append(message_factory.GetMessageClass(pool.FindMessageTypeByName("onnxsurgeon_utf8.ModelProto")))
        except Exception:  # another protobuf: fall back to the walk
            _UTF8_CHECKER.append(None)
    checker = _UTF8_CHECKER[0]
    if checker is None:
        return False
    try:
        checker.FromString(data)
    except Exception:  # bad UTF-8, or anything else: the walk decides
        return False
    return True


# The string fields (and the message fields to descend into) of each message type, found
# once from the descriptors. protobuf hands out a string field that holds invalid UTF-8 as
# bytes, which then breaks every use of it as a name.
_TEXT_PLAN: dict[object, tuple[list[tuple[str, bool]], list[tuple[str, bool]]]] = {}


def _text_plan(desc) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    plan = _TEXT_PLAN.get(desc)
    if plan is None:
        from google.protobuf.descriptor import FieldDescriptor as FD

        strings, messages = [], []
        for f in desc.fields:
            repeated = getattr(f, "is_repeated", None)
            if repeated is None:
                repeated = f.label == FD.LABEL_REPEATED
            if f.type == FD.TYPE_STRING:
                strings.append((f.name, repeated))
            elif f.type == FD.TYPE_MESSAGE:
                messages.append((f.name, repeated))
        plan = _TEXT_PLAN[desc] = (strings, messages)
    return plan


def invalid_text(model: onnx.ModelProto) -> tuple[str, bytes] | None:
    """The first string field of a model that is not valid UTF-8, as (where, bytes)."""
    stack: list[tuple[object, str]] = [(model, "model")]
    while stack:
        msg, where = stack.pop()
        strings, messages = _text_plan(msg.DESCRIPTOR)  # type: ignore[attr-defined]
        for name, repeated in strings:
            value = getattr(msg, name)
            for v in value if repeated else (value,):
                if type(v) is bytes:
                    return f"{where}.{name}", v
        for name, repeated in messages:
            if not repeated:
                if msg.HasField(name):  # type: ignore[attr-defined]
                    stack.append((getattr(msg, name), f"{where}.{name}"))
                continue
            items = getattr(msg, name)
            if name == "node":
                # the bulk of a big graph, spelled out: plain nodes are checked in one pass
                for k, n in enumerate(items):
                    if n.attribute or bytes in {type(n.name), type(n.op_type), type(n.domain), type(n.doc_string)} or any(
                        type(v) is bytes for v in n.input
                    ) or any(type(v) is bytes for v in n.output):
                        stack.append((n, f"{where}.{name}[{k}]"))
            else:
                stack.extend((sub, f"{where}.{name}[{k}]") for k, sub in enumerate(items))
    return None


def fingerprint(path: str | os.PathLike[str]) -> dict[str, object]:
    """What identifies a model file in a piece's provenance: its size and SHA-256, or, for a
    file read lazily, its size and modification time (hashing it would read every weight,
    which a cut of a large model must not)."""
    stat = os.stat(path)
    if stat.st_size >= LAZY_FILE_SIZE:
        modified = datetime.datetime.fromtimestamp(stat.st_mtime, datetime.timezone.utc)
        return {"bytes": stat.st_size, "modified": modified.isoformat(timespec="seconds")}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return {"bytes": stat.st_size, "sha256": h.hexdigest()}


def iter_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        if not node.attribute:
            continue
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from iter_tensors(attr.g)
            for g in attr.graphs:
                yield from iter_tensors(g)


def iter_model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of a model, local functions included."""
    yield from iter_tensors(model.graph)
    for f in model.functions:
        for node in f.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t


def is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


_DIGITS = frozenset("0123456789")


def _count(tensor: onnx.TensorProto, key: str, text: str) -> int:
    """A non-negative integer field of an external data entry, or an InputError. Only plain
    decimal digits: not '-5', '1e3', ' 5', '+5', '' or 'abc' (Python's int() takes some)."""
    if not text or len(text) > 20 or not set(text) <= _DIGITS:
        raise InputError(
            f"tensor {tensor.name!r} has an invalid external data {key}: {text[:40]!r} (not a non-negative integer)",
            "the model file is damaged or was written wrongly: re-export the model",
        )
    return int(text)


def external_span(tensor: onnx.TensorProto, file_size: int | None = None) -> tuple[str, int, int | None]:
    """The location, offset and length of an external tensor, parsed and checked in this one
    place: offset and length are non-negative integers and, given the data file's size,
    ``offset + length`` lies within the file (as onnx's ExternalDataInfo and checker ask).
    The length is None when the model does not give one (the rest of the file)."""
    info = _external_info(tensor)
    offset = _count(tensor, "offset", info["offset"]) if "offset" in info else 0
    length = _count(tensor, "length", info["length"]) if "length" in info else None
    if file_size is not None:
        if offset > file_size or (length is not None and offset + length > file_size):
            have = max(file_size - offset, 0)
            said = f"{have} of {length} bytes" if length is not None else f"it starts at byte {offset}"
            raise InputError(
                f"external data of tensor {tensor.name!r} is truncated: {said} "
                f"(offset {offset} in {Path(info.get('location', '?')).name!r}, a file of {file_size} bytes)",
                "re-export the model or restore its .data file",
            )
    return info.get("location", ""), offset, length


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """The bytes a tensor of fixed-size elements must hold, from its type and shape."""
    import numpy as np

    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    if tensor.data_type in (onnx.TensorProto.STRING,) or any(d < 0 for d in tensor.dims):
        return None
    if tensor.data_type in _PACKED_TYPES:
        return None
    n = 1
    for d in tensor.dims:
        n *= d
    return n * itemsize


# 4-bit types pack two elements to a byte; numpy's stand-in types do not say so.
_PACKED_TYPES = frozenset(
    getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, name)
)


def _resolve_external(model: onnx.ModelProto, path: Path) -> None:
    """Check every external location stays beside the model and belongs to the same save,
    and make it absolute."""
    base = path.parent.resolve()
    used = set()
    sizes: dict[str, int] = {}
    for tensor in iter_model_tensors(model):
        if not is_external(tensor):
            continue
        info = _external_info(tensor)
        location = info.get("location", "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or base not in target.parents:
            raise InputError(
                f"tensor {tensor.name!r} points at external data outside the model's folder: {location!r}",
                "external data files must lie in the model's folder (relative paths, no '..')",
            )
        if not target.is_file():
            raise InputError(
                f"external data file {location!r} of tensor {tensor.name!r} is missing",
                f"place {location!r} beside the model in {base}",
            )
        if location not in sizes:
            sizes[location] = target.stat().st_size
        _, offset, length = external_span(tensor, sizes[location])
        if length is None:
            length = sizes[location] - offset
        need = _expected_bytes(tensor)
        if need is not None and length != need:
            raise InputError(
                f"external data of tensor {tensor.name!r} is {length} bytes, but its type and shape "
                f"{dtypes.dtype_name(tensor.data_type)}[{','.join(map(str, tensor.dims))}] need {need}",
                "the model file is damaged or was written wrongly: re-export the model",
            )
        # From here on every entry holds a plain offset and length.
        _set_external(tensor, str(target), dict(info, offset=str(offset), length=str(length)))
        used.add(location)
    _check_pairing(model, path, used)


def _check_pairing(model: onnx.ModelProto, path: Path, used: set[str]) -> None:
    """Refuse a model beside a data file of another save. Two files cannot be replaced in
    one step: a writer killed between the two renames leaves the old model beside the new
    data, which would read wrong weights without a word. A data file that onnxsurgeon
    wrote starts with the id of its save, which the model records."""
    try:
        entry = json.loads(meta.get(model, meta.DATA) or "null")
        location, saved = entry["file"], entry["id"]
    except (ValueError, TypeError, KeyError, RecursionError):
        return  # no record (another tool wrote the model), or a damaged one
    if not isinstance(location, str) or not isinstance(saved, str) or location not in used:
        return  # a damaged record, or the data was written inline since
    try:
        with open(path.parent / location, "rb") as f:
            head = f.read(DATA_HEADER)
    except OSError:
        return  # reading the weights will report it
    if head.startswith(DATA_MAGIC) and head[len(DATA_MAGIC):].rstrip(b"\0") != saved.encode():
        raise InputError(
            f"{path.name} and its data file {location!r} were written by different saves "
            "(the last write of the model was interrupted)",
            "write the model again",
        )


def _set_external(tensor: onnx.TensorProto, location: str, info: dict[str, str]) -> None:
    info = dict(info, location=location)
    del tensor.external_data[:]
    for key, value in info.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def read_external(tensor: onnx.TensorProto) -> bytes:
    """The bytes of an external tensor whose location :func:`load` made absolute."""
    location, offset, span = external_span(tensor)
    length = -1 if span is None else span
    try:
        with open(location, "rb") as f:
            f.seek(offset)
            data = f.read(length)
    except OSError as e:
        raise InputError(f"cannot read external data of tensor {tensor.name!r}: {e}") from None
    if length >= 0 and len(data) != length:
        raise _truncated(tensor, len(data), length)
    return data


def _truncated(tensor: onnx.TensorProto, got: int, length: int) -> InputError:
    return InputError(
        f"external data of tensor {tensor.name!r} is truncated: {got} of {length} bytes",
        "re-export the model or restore its .data file",
    )


def to_array(tensor: onnx.TensorProto):
    """A tensor's values as a numpy array, reading external data if need be."""
    from onnx import numpy_helper

    if is_external(tensor):
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        _inline(copy)
        tensor = copy
    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError, KeyError) as e:  # data that does not fit the type and shape
        raise InputError(
            f"tensor {tensor.name!r} cannot be read: its data does not fit its type and shape "
            f"{dtypes.dtype_name(tensor.data_type)}[{','.join(map(str, tensor.dims))}] ({e})",
            "the model file is damaged or was written wrongly: re-export the model",
        ) from None


def mapped_array(tensor: onnx.TensorProto):
    """An external tensor's values mapped read-only from its file: pages are read when
    touched, and only then. None for types numpy cannot map (bfloat16, float8, 4-bit)."""
    import numpy as np

    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")
    except (KeyError, TypeError, ValueError):
        return None
    if dtype.kind not in "biufc" or not all(tensor.dims):
        return None  # and empty tensors, which cannot be mapped
    location, offset, length = external_span(tensor)
    shape = tuple(tensor.dims)
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if (need if length is None else length) != need:
        return None  # let the reader report the mismatch
    try:
        return np.memmap(location, dtype=dtype, mode="r", offset=offset, shape=shape)
    except (OSError, ValueError):
        return None  # e.g. a truncated file: the reader names the problem


def _inline(tensor: onnx.TensorProto) -> None:
    tensor.raw_data = read_external(tensor)
    del tensor.external_data[:]
    tensor.data_location = onnx.TensorProto.DEFAULT


def materialize(model: onnx.ModelProto, keep: Collection[str] = ()) -> onnx.ModelProto:
    """A copy of the model with every external tensor read into memory, but for the
    initializers named in ``keep``, which stay references."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in iter_model_tensors(out):
        if is_external(tensor) and tensor.name not in keep:
            _inline(tensor)
    return out


def to_bytes(model: onnx.ModelProto, keep: Collection[str] = ()) -> bytes:
    """Serialised bytes with all weights inline (for onnxruntime or a small model file),
    but for the external initializers named in ``keep``, which stay references."""
    if _has_external(model):
        model = materialize(model, keep)
    return model.SerializeToString()


def _has_external(model: onnx.ModelProto) -> bool:
    return any(is_external(t) for t in iter_model_tensors(model))


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if is_external(tensor):
        return external_span(tensor)[2] or 0
    return tensor.ByteSize()


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes held by the model's initializers, inline or external."""
    return sum(_tensor_bytes(t) for t in model.graph.initializer)


def footprint(model: onnx.ModelProto) -> dict[str, int]:
    """What writing the model costs: its graph's bytes, its weights' bytes, and the memory
    :func:`save` needs (the graph plus the largest tensor: weights are streamed one by one)."""
    sizes = [_tensor_bytes(t) for t in iter_model_tensors(model)]
    weights = sum(sizes)
    graph = max(model.ByteSize() - sum(len(t.raw_data) for t in iter_model_tensors(model)), 0)
    return {"graph_bytes": graph, "weight_bytes": weights, "memory_bytes": graph + max(sizes, default=0)}


def save(model: onnx.ModelProto, path: str | os.PathLike[str], external_data: bool | None = None) -> list[Path]:
    """Write a model atomically and return the files written.

    ``external_data=None`` writes weights inline unless they would not fit in one protobuf
    message; ``True`` always writes them to ``<name>.data`` beside the model. Each file is
    written to a temporary name in the same folder, flushed and renamed, so a reader never
    sees a half-written file; the data file is renamed before the model that refers to it.
    """
    path = _through_link(Path(path))
    _check_target(path)
    if external_data is None:
        external_data = weight_bytes(model) > INLINE_LIMIT
    if not external_data:
        return [write_atomically(path, lambda f: _write_inline(model, f))]
    data_path = path.with_name(path.name + ".data")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    save_id = os.urandom(16).hex()
    meta.put(out, meta.DATA, json.dumps({"file": data_path.name, "id": save_id}))
    # Both files are written in full before either is renamed: a failure while writing (a
    # full disk) leaves the old model and its old data file as they were.
    data_tmp = _write_temp(data_path, lambda f: _write_external(out, f, data_path.name, save_id))
    with _discarded_on_failure(data_tmp, data_path):
        model_tmp = _write_temp(path, lambda f: f.write(out.SerializeToString()))
    with _discarded_on_failure(model_tmp, path):
        _commit(data_tmp, data_path)
    _commit(model_tmp, path)
    return [data_path, path]


def _write_inline(model: onnx.ModelProto, f: BinaryIO) -> None:
    """Write a model with every weight inline, streaming those of external initializers."""
    if not any(is_external(t) for t in model.graph.initializer):
        data = model.SerializeToString()
        # no tensor refers to external data without naming its location: where the bytes
        # do not hold that word, looking at every tensor of every node would find nothing
        if b"location" not in data:
            f.write(data)
            return
        del data
    others = itertools.islice(iter_model_tensors(model), len(model.graph.initializer), None)
    if any(is_external(t) for t in others):
        model = materialize(model)  # rare: external tensors outside the initializers
    wire.write_streaming(model, f, is_external, read_external, lambda t: external_span(t)[2])


def _write_external(model: onnx.ModelProto, f: BinaryIO, location: str, save_id: str) -> None:
    """Write the data file, one tensor at a time, and point each tensor at its bytes. The
    file starts with the id of the save (see _check_pairing); readers go by offsets and
    never look at it."""
    offset = f.write((DATA_MAGIC + save_id.encode()).ljust(DATA_HEADER, b"\0"))
    for tensor in iter_model_tensors(model):
        external = is_external(tensor)
        if not external and len(tensor.raw_data) < EXTERNAL_THRESHOLD:
            continue  # small tensors, and those held in typed fields, stay inline
        pad = (-offset) % 64  # keep tensors aligned for memory mapping
        f.write(b"\0" * pad)
        offset += pad
        if external:
            length = _copy_external(tensor, f)
        else:
            length = f.write(tensor.raw_data)
            tensor.ClearField("raw_data")
        _set_external(tensor, location, {"offset": str(offset), "length": str(length)})
        tensor.data_location = onnx.TensorProto.EXTERNAL
        offset += length


def _copy_external(tensor: onnx.TensorProto, f: BinaryIO) -> int:
    """Append an external tensor's bytes to ``f`` and return their length.

    The kernel copies them (copy_file_range: no trip through Python's memory, and no
    more memory than a buffer where it must fall back to reading and writing)."""
    location, offset, span = external_span(tensor)
    try:
        with open(location, "rb") as src:
            length = span if span is not None else os.fstat(src.fileno()).st_size - offset
            f.flush()
            done = _kernel_copy(src.fileno(), f.fileno(), offset, length)
            while done < length:  # no kernel copy here: read and write a buffer at a time
                src.seek(offset + done)
                chunk = src.read(min(length - done, COPY_CHUNK))
                if not chunk:
                    break
                done += f.write(chunk)
    except OSError as e:
        raise InputError(f"cannot read external data of tensor {tensor.name!r}: {e}") from None
    if done != length:
        raise _truncated(tensor, done, length)
    return length


def _kernel_copy(src: int, dst: int, offset: int, length: int) -> int:
    """Bytes copied from ``src`` at ``offset`` to ``dst``'s position by copy_file_range;
    0 where the system cannot (another OS, an old kernel, some file systems)."""
    done = 0
    copy = getattr(os, "copy_file_range", None)
    start = os.lseek(dst, 0, os.SEEK_CUR)
    while copy is not None and done < length:
        try:
            n = copy(src, dst, min(length - done, COPY_CHUNK), offset + done)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) and done == 0:
                return 0
            raise
        if n == 0:
            break  # end of the source file
        # Start writing the chunk to disk now, while the next is copied, so the fsync that
        # ends the write has little left to do (and gigabytes of output do not crowd the
        # page cache).
        os.posix_fadvise(dst, start + done, n, os.POSIX_FADV_DONTNEED)
        done += n
    return done


def _mode_for(path: Path) -> int:
    """The mode a new file would get (umask applied), or that of the file it replaces."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def check_output(path: str | os.PathLike[str]) -> None:
    """Refuse an output path that cannot become a file; for commands that work long before they write."""
    path = Path(path)
    _check_target(path)
    fd, probe = _temp_file(path)  # what the write does first (a folder read-only, full, no rights)
    os.close(fd)
    os.unlink(probe)


def _check_target(path: Path) -> None:
    """A folder to be in, and no folder, device or pipe where the rename puts the file."""
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist", "create the folder first")
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a directory", "name a file to write")
    if path.exists() and not path.is_file():  # the rename would replace a device or a pipe (/dev/null!)
        raise InputError(f"cannot write {path}: it is not a regular file (a device or a pipe)", "name a file to write")


def _through_link(path: Path) -> Path:
    """A symbolic link is written through: the rename replaces its target, the link stays."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write a file through ``write(f)`` under a temporary name beside it, flush and sync
    it, and rename it over ``path``: readers see the old file or the new one, never half."""
    path = _through_link(Path(path))
    _check_target(path)
    _commit(_write_temp(path, write), path)
    return path


def _write_temp(path: Path, write: Callable[[BinaryIO], object]) -> str:
    """Write, flush and sync a temporary file beside ``path``; return its name."""
    fd, tmp = _temp_file(path)
    with _discarded_on_failure(tmp, path):
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as f:
            write(faults.watch(f))
            f.flush()
            os.fsync(f.fileno())
    faults.reached("synced")
    return tmp


def _temp_file(path: Path) -> tuple[int, str]:
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}", "choose a writable output folder") from None


def _commit(tmp: str, path: Path) -> None:
    """Rename a finished temporary file over ``path`` in one step."""
    with _discarded_on_failure(tmp, path):
        os.replace(tmp, path)
    faults.reached("renamed")


@contextlib.contextmanager
def _discarded_on_failure(tmp: str, path: Path) -> Iterator[None]:
    """On any failure, Ctrl-C included, remove the temporary file; a failed write is
    reported as one that cannot be done (disk full, permissions)."""
    try:
        yield
    except BaseException as e:
        _discard(tmp)
        if isinstance(e, OSError):
            raise write_failed(f"cannot write {path}", e) from None
        raise


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass
