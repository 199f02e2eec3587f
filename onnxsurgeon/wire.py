"""Just enough of protobuf's wire format to read and write big models without holding
their weights in memory.

Reading: the initializers' ``raw_data`` in a model file are left where they are; each such
tensor is described as external data that points into the model file itself, so the rest of
onnxsurgeon reads a weight only if an operation needs it. Writing: a model whose tensors
point at external data is written inline by streaming each tensor's bytes into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import onnx

_MODEL_GRAPH = 7  # ModelProto.graph
_GRAPH_INITIALIZER = 5  # GraphProto.initializer
_TENSOR_RAW_DATA = 9  # TensorProto.raw_data
_LENGTH_DELIMITED = 2


class _File:
    """A file read as bytes by index and slice, a block at a time: only what is looked at is
    read (a memory map would count read-ahead pages of skipped weights as resident)."""

    BLOCK = 1 << 16

    def __init__(self, f: BinaryIO) -> None:
        self.fd = f.fileno()
        self.size = os.fstat(self.fd).st_size
        self.start, self.block = 0, b""

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int | slice):
        if isinstance(key, slice):
            data = os.pread(self.fd, key.stop - key.start, key.start)
            if len(data) != key.stop - key.start:
                raise ValueError("file ends early")
            return data
        offset = key - self.start
        if not 0 <= offset < len(self.block):
            self.start = key - key % self.BLOCK
            self.block = os.pread(self.fd, self.BLOCK, self.start)
            offset = key - self.start
            if offset >= len(self.block):
                raise IndexError("file ends early")
        return self.block[offset]


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, field start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        field_start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, value_end = _varint(buf, pos)
        elif wire == 1:
            value_end = pos + 8
        elif wire == _LENGTH_DELIMITED:
            length, pos = _varint(buf, pos)
            value_end = pos + length
        elif wire == 5:
            value_end = pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if value_end > end:
            raise ValueError("field runs past the end of its message")
        yield number, field_start, pos, value_end
        pos = value_end


def _stub(buf, start: int, end: int, location: str, threshold: int) -> onnx.TensorProto | None:
    """A tensor whose large raw_data stays in the file, as external data; None if small."""
    parts, raw = [], None
    for number, fs, vs, ve in _fields(buf, start, end):
        if number == _TENSOR_RAW_DATA and ve - vs >= threshold:
            raw = (vs, ve - vs)
        else:
            parts.append(buf[fs:ve])
    if raw is None:
        return None
    tensor = onnx.TensorProto.FromString(b"".join(parts))
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(raw[0])), ("length", str(raw[1]))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL
    return tensor


def read_lazily(path: Path, threshold: int = 1024) -> onnx.ModelProto:
    """Parse a model file, leaving every initializer's raw_data of ``threshold`` bytes or more
    in the file. Those tensors point at the file itself (relative location = its name)."""
    with open(path, "rb") as f:
        buf = _File(f)
        head: list[bytes] = []
        graph_span = None
        for number, fs, vs, ve in _fields(buf, 0, len(buf)):
            if number == _MODEL_GRAPH and graph_span is None:
                graph_span = (vs, ve)
            else:
                head.append(buf[fs:ve])
        model = onnx.ModelProto.FromString(b"".join(head))
        if graph_span is None:
            return model
        rest: list[bytes] = []
        tensors: list[onnx.TensorProto | tuple[int, int]] = []
        run = None  # a run of consecutive fields kept as they are
        for number, fs, vs, ve in _fields(buf, *graph_span):
            if number == _GRAPH_INITIALIZER:
                stub = _stub(buf, vs, ve, path.name, threshold)
                tensors.append(stub if stub is not None else (vs, ve))
                if run:
                    rest.append(buf[run[0] : run[1]])
                    run = None
            else:
                run = (run[0], ve) if run else (fs, ve)
        if run:
            rest.append(buf[run[0] : run[1]])
        graph = model.graph
        graph.ParseFromString(b"".join(rest))
        for t in tensors:
            graph.initializer.append(t if isinstance(t, onnx.TensorProto) else onnx.TensorProto.FromString(buf[t[0] : t[1]]))
    return model


def _key(number: int, wire: int) -> bytes:
    return _encode_varint((number << 3) | wire)


def _encode_varint(value: int) -> bytes:
    if value < 0:  # would never end; lengths are checked on load, this is the backstop
        raise ValueError(f"cannot encode {value} as a varint")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_streaming(
    model: onnx.ModelProto, f: BinaryIO, external: Callable[[onnx.TensorProto], bool], read: Callable[[onnx.TensorProto], bytes],
    external_length: Callable[[onnx.TensorProto], int | None] = lambda t: None,
) -> None:
    """Write a model with every initializer for which ``external`` is true made inline,
    reading its bytes with ``read`` one tensor at a time."""
    graph = model.graph
    stubs = [t for t in graph.initializer if external(t)]
    if not stubs:
        f.write(model.SerializeToString())
        return
    head = onnx.ModelProto()
    head.CopyFrom(model)
    head.ClearField("graph")
    shell = onnx.GraphProto()
    shell.CopyFrom(graph)
    kept = [t for t in graph.initializer if not external(t)]
    del shell.initializer[:]
    shell.initializer.extend(kept)
    pieces = []  # (bytes of the tensor without its data, data length)
    for t in stubs:
        bare = onnx.TensorProto()
        bare.CopyFrom(t)
        length = len(read(t)) if (span := external_length(t)) is None else span
        del bare.external_data[:]
        bare.ClearField("data_location")
        pieces.append((bare.SerializeToString(), length))
    raw_key = _key(_TENSOR_RAW_DATA, _LENGTH_DELIMITED)
    init_key = _key(_GRAPH_INITIALIZER, _LENGTH_DELIMITED)
    sizes = [len(b) + len(raw_key) + len(_encode_varint(n)) + n for b, n in pieces]
    shell_bytes = shell.SerializeToString()
    graph_size = len(shell_bytes) + sum(len(init_key) + len(_encode_varint(s)) + s for s in sizes)
    f.write(head.SerializeToString())
    f.write(_key(_MODEL_GRAPH, _LENGTH_DELIMITED) + _encode_varint(graph_size))
    f.write(shell_bytes)
    for t, (bare, n), size in zip(stubs, pieces, sizes):
        f.write(init_key + _encode_varint(size) + bare + raw_key + _encode_varint(n))
        data = read(t)
        if len(data) != n:
            raise ValueError(f"tensor {t.name!r}: expected {n} bytes, read {len(data)}")
        f.write(data)
