"""Checkpoint files: one file per checkpoint, written atomically, checked when read.

A checkpoint ``step-000001200.ckpt`` is an uncompressed zip holding:

- ``meta.json``: the run's position (step, epoch, next batch, the epoch's running sums),
  its settings, the hash of the training graph, and the parameter names and shapes;
- ``ort_state``: onnxruntime-training's own checkpoint (parameters, updated statistics
  and the optimizer state of AdamW: moments and step);
- ``arrays/K.npy``: further optimizer state (SGD momentum), named in ``meta.json``.

It is written to a temporary name in the same folder, flushed, synced and renamed, and the
folder is synced: a crash leaves either the whole checkpoint or none. Reading checks every
member against the CRC-32 the zip stores, so a damaged file is recognised and skipped.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxsurgeon import serde
from onnxsurgeon.errors import InputError

FORMAT = "onnxsurgeon-checkpoint"
VERSION = 1
_NAME = re.compile(r"^step-(\d+)\.ckpt$")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read and checked: its position, settings and state."""

    path: Path
    meta: dict[str, Any]
    ort_state: bytes
    arrays: dict[str, np.ndarray]

    @property
    def step(self) -> int:
        return int(self.meta["step"])


def file_name(step: int) -> str:
    return f"step-{step:09d}.ckpt"


def save(folder: str | os.PathLike, step: int, ort_state: bytes, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically; returns its path."""
    folder = Path(folder)
    names = list(arrays)
    members: list[tuple[str, bytes]] = [("ort_state", ort_state)]
    for k, name in enumerate(names):
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
        members.append((f"arrays/{k}.npy", buf.getvalue()))
    info = dict(meta, format=FORMAT, version=VERSION, step=step, arrays=names, members=[m for m, _ in members])
    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
            z.writestr("meta.json", json.dumps(info, indent=1, sort_keys=True))
            for m, data in members:
                z.writestr(m, data)

    path = serde.write_atomically(folder / file_name(step), write)
    _sync_folder(folder)
    return path


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible everywhere (e.g. some network file systems)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def listing(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """The checkpoints in a folder, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def read(path: str | os.PathLike) -> Checkpoint:
    """Read and check one checkpoint; an InputError says what is wrong with a damaged one."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            if bad is not None:
                raise InputError(f"checkpoint {path} is damaged: member {bad!r} fails its CRC check")
            meta = json.loads(z.read("meta.json"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise InputError(f"{path} is not an onnxsurgeon checkpoint")
            if meta.get("version") != VERSION:
                raise InputError(f"checkpoint {path} has format version {meta.get('version')}; this onnxsurgeon reads {VERSION}")
            data = {m: z.read(m) for m in meta.get("members", [])}  # read() checks the CRC-32 too
        arrays = {}
        for k, name in enumerate(meta.get("arrays", [])):
            arrays[name] = np.lib.format.read_array(io.BytesIO(data[f"arrays/{k}.npy"]), allow_pickle=False)
        return Checkpoint(path, meta, data["ort_state"], arrays)
    # A crafted meta.json may name members that are not there, or hold the wrong kinds.
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, OSError, EOFError, RecursionError) as e:
        raise InputError(f"checkpoint {path} is damaged or incomplete ({type(e).__name__}: {e})") from None


def newest_intact(folder: str | os.PathLike) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that reads cleanly, and a warning for each damaged newer one."""
    warnings = []
    for _, path in listing(folder):
        try:
            return read(path), warnings
        except InputError as e:
            warnings.append(f"skipped {e.message}")
    return None, warnings


def prune(folder: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints (None keeps all); returns those deleted."""
    if keep is None:
        return []
    removed = []
    for _, path in listing(folder)[keep:]:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed
