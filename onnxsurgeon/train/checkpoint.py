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
import tempfile
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


def make_folder(folder: str | os.PathLike) -> Path:
    """Create the checkpoint folder (and its parents) unless it exists; a file in its way
    is the user's to fix, not a crash."""
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise InputError(
                f"cannot use {folder} as the checkpoint folder: {part} is a file",
                "give --checkpoint-dir a folder (a new one is created)",
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=folder)  # as a checkpoint is written
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"cannot write checkpoints in {folder}: {e.strerror}", "choose a writable --checkpoint-dir") from None
    return folder


class FolderLock:
    """Held by the run that writes a checkpoint folder for as long as it runs, so that a
    second run started into the same folder meanwhile is refused instead of writing over the
    first one's checkpoints (neither finds the other's before the first checkpoint). An
    flock on the folder itself: no file is left, and the system drops it when a run dies."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.fd: int | None = None
        try:
            import fcntl
        except ImportError:  # no flock on this system: unguarded, as before
            return
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(
                f"{self.folder} is in use by another training run (it is writing its checkpoints there now)",
                "wait until that run ends (then --resume continues it), or give this run another --checkpoint-dir",
            ) from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


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
        if isinstance(e, zipfile.BadZipFile) and not _starts_as_zip(path):
            raise InputError(
                f"{path} is not an onnxsurgeon checkpoint (not a zip archive: a model, or another file)",
                "name a step-*.ckpt file of a checkpoint folder",
            ) from None
        raise InputError(f"checkpoint {path} is damaged or incomplete ({type(e).__name__}: {e})") from None


def _starts_as_zip(path: Path) -> bool:
    """Whether a file begins as every zip archive written by zipfile does (a checkpoint cut
    short still does)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return True  # unreadable: reported as damaged, with the reason


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
    """Delete all but the newest `keep` checkpoints (None keeps all); returns those deleted.

    A checkpoint is deleted only if the policy it was written under allows it too: one
    written with ``--keep all`` (or a larger count) stays, whatever a later run asks."""
    if keep is None:
        return []
    removed = []
    for rank, (_, path) in enumerate(listing(folder)):
        if rank < keep or rank < _own_keep(path, keep):
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _own_keep(path: Path, default: int) -> float:
    """The keep count a checkpoint was written under (infinite for "all"); ``default`` for
    one that does not say or cannot be read."""
    try:
        with zipfile.ZipFile(path) as z:
            label = json.loads(z.read("meta.json")).get("keep")
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, AttributeError, RecursionError):
        return default
    own = _keep_from(label, default)
    return float("inf") if own is None else own


# --- what a resume may and may not change ---------------------------------------------------
#
# A checkpoint folder belongs to one run. A fresh run never writes into a folder that holds
# another run's checkpoints unless told to (--overwrite); a resume keeps at least what the
# folder's run asked to keep; a resume past the requested end is refused; and what changed
# since the checkpoint was written is said in words.


def keep_label(keep: int | None) -> int | str:
    """The keep policy as stored in a checkpoint: a count, or "all"."""
    return "all" if keep is None else keep


def _keep_from(label: Any, default: int | None) -> int | None:
    if label == "all":
        return None
    if isinstance(label, int) and not isinstance(label, bool) and label >= 1:
        return label
    return default


def wider_keep(keep: int | None, found: Checkpoint) -> int | None:
    """The keep policy of a resumed run: the wider of the one asked for now and the one
    the checkpoint's run used, so that resuming never deletes what that run kept."""
    before = _keep_from(found.meta.get("keep"), keep)
    if keep is None or before is None:
        return None
    return max(keep, before)


def check_fresh(folder: str | os.PathLike, overwrite: bool, what: str = "a fresh run") -> list[Path]:
    """Refuse to write into a folder holding another run's checkpoints, unless ``overwrite``;
    return those checkpoints (for the caller to remove once it starts)."""
    found = [p for _, p in listing(folder)]
    if found and not overwrite:
        raise InputError(
            f"{folder} holds {len(found)} checkpoint{'s' if len(found) != 1 else ''} of another run "
            f"(newest {found[0]}); {what} would overwrite or mix with them",
            "continue that run with --resume, choose another --checkpoint-dir, or pass --overwrite to replace them",
        )
    return found


def remove(paths: list[Path]) -> None:
    """Remove the checkpoints a run was told to replace (``--overwrite``)."""
    for p in paths:
        p.unlink(missing_ok=True)


def check_not_past_end(found: Checkpoint, total_steps: int, steps_per_epoch: int, epochs: int) -> None:
    """Refuse to resume from a checkpoint past the end the user asks for: training cannot go
    back, and writing the later state as if it were the earlier one would be a silent lie."""
    step = found.step
    if step <= total_steps:
        return
    epoch = found.meta.get("epoch", "?")
    target = [p for s, p in listing(found.path.parent) if s == total_steps]
    if target:
        hint = (
            f"the state after epoch {epochs} is in {target[0]}: resume from it with "
            f"--resume-from {target[0]} --epochs {epochs}, or ask for --epochs {epoch} or more"
        )
    else:
        hint = (
            f"no checkpoint of step {total_steps} (the end of epoch {epochs}) is kept in {found.path.parent}; "
            f"train afresh with --epochs {epochs} in another --checkpoint-dir, or ask for --epochs {epoch} or more"
        )
    raise InputError(
        f"checkpoint {found.path} is at epoch {epoch} (step {step}), past the end asked for: "
        f"--epochs {epochs} ends at step {total_steps}",
        hint,
    )


_REFUSED_BECAUSE = {
    "examples": "the data position in the checkpoint counts examples of the old data",
    "batch_size": "the data position in the checkpoint counts batches of the old size",
    "seed": "the data order and Dropout masks follow the seed",
    "shuffle": "the data order of the rest of the epoch would change",
    "optimizer": "the optimizer state in the checkpoint belongs to the old optimizer",
    "momentum": "the optimizer state in the checkpoint does not match (momentum buffers)",
    "fixed": "the arrays fed whole decide what the batches hold",
    "batch_axes": "the batches are sliced on these axes",
}
# Settings added after checkpoints were first written: an older checkpoint holds their default.
_DEFAULTS = {"fixed": [], "batch_axes": {}}


def compare_settings(found: Checkpoint, expected: Mapping[str, Any], optimizer: Mapping[str, Any],
                     schedule: Mapping[str, Any], epochs: int) -> list[str]:
    """Check the settings of a resume against the checkpoint's. Changes that make an exact
    resume impossible are refused with the reason; the others (learning rate, optimizer
    hyperparameters, schedule, epochs under a schedule) are returned, one sentence each,
    to be reported."""
    m = found.meta
    before = {**_DEFAULTS, **m.get("settings", {})}
    differ = [
        f"{k} {before.get(k)!r} (now {v!r}): {_REFUSED_BECAUSE.get(k, 'the run depends on it')}"
        for k, v in expected.items() if before.get(k) != v
    ]
    if differ:
        raise InputError(
            f"checkpoint {found.path} was written by a run with other settings: {'; '.join(differ)}",
            "an exact resume needs the same data, --batch-size, --seed, optimizer, --fixed and --batch-axis",
        )
    notes = []
    old_opt = m.get("optimizer_settings") or {}
    for k, v in optimizer.items():
        if k in old_opt and old_opt[k] != v:
            notes.append(f"{k} {old_opt[k]!r} -> {v!r}")
    old_sched = m.get("schedule") or {}
    for k, v in schedule.items():
        if k in old_sched and old_sched[k] != v:
            notes.append(f"schedule {k} {old_sched[k]!r} -> {v!r}")
    old_epochs = m.get("epochs")
    scheduled = schedule.get("kind") == "linear" and not schedule.get("decay_steps")
    if scheduled and isinstance(old_epochs, int) and old_epochs != epochs:
        notes.append(f"epochs {old_epochs} -> {epochs} (the linear schedule decays over all epochs)")
    if not notes:
        return []
    return [
        f"resuming {found.path} with other settings than its run: {', '.join(notes)}; the result differs "
        "from an uninterrupted run with either"
    ]


# --- what changed in the model ---------------------------------------------------------------

_PARTS_MAX_NODES = 20_000


def graph_parts(model) -> dict[str, Any]:
    """Short digests of the parts of a training graph, stored in each checkpoint so that a
    refusal can say what changed: each parameter's type, shape and values, each node, the
    graph's inputs and outputs. Graphs of more than 20,000 nodes keep the parameters only."""
    import hashlib

    def digest(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()[:16]

    g = model.graph
    parts: dict[str, Any] = {
        "parameters": {t.name: digest(t.SerializeToString()) for t in g.initializer},
        "inputs": [v.name for v in g.input],
        "outputs": [v.name for v in g.output],
    }
    if len(g.node) <= _PARTS_MAX_NODES:
        nodes = {}
        for k, n in enumerate(g.node):
            key = n.name or f"the node computing {', '.join(n.output) or f'#{k}'}"
            nodes[key] = f"{n.op_type}:{digest(n.SerializeToString())}"
        parts["nodes"] = nodes
    return parts


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" … ({len(items)} in all)" if len(items) > limit else "")


def describe_change(before: Any, now: Mapping[str, Any]) -> str:
    """What differs between two :func:`graph_parts`, in words ('' if nothing can be said)."""
    if not isinstance(before, dict):
        return ""
    said = []
    try:
        old_p, new_p = dict(before.get("parameters", {})), dict(now["parameters"])
        values = sorted(k for k in set(old_p) & set(new_p) if old_p[k] != new_p[k])
        if values:
            said.append("parameters with other values or types: " + _names(values))
        added, gone = sorted(set(new_p) - set(old_p)), sorted(set(old_p) - set(new_p))
        if added:
            said.append("new parameters: " + _names(added))
        if gone:
            said.append("parameters no longer there: " + _names(gone))
        for key in ("inputs", "outputs"):
            if key in before and list(before[key]) != list(now[key]):
                said.append(f"graph {key} {list(before[key])} -> {list(now[key])}")
        if isinstance(before.get("nodes"), dict) and "nodes" in now:
            old_n, new_n = before["nodes"], now["nodes"]
            def op(d: str) -> str:
                return str(d).rpartition(":")[0] or "?"

            changed = [
                f"{k} ({op(old_n[k])}{' -> ' + op(new_n[k]) if op(old_n[k]) != op(new_n[k]) else ''})"
                for k in new_n if k in old_n and old_n[k] != new_n[k]
            ]
            if changed:
                said.append("changed nodes: " + _names(changed))
            added = [f"{k} ({op(new_n[k])})" for k in new_n if k not in old_n]
            if added:
                said.append("new nodes: " + _names(added))
            gone = [f"{k} ({op(old_n[k])})" for k in old_n if k not in new_n]
            if gone:
                said.append("nodes no longer there: " + _names(gone))
    except (TypeError, AttributeError, KeyError):
        return ""
    return "; ".join(said)


def check_target(folder: str | os.PathLike, found: Checkpoint, overwrite: bool) -> list[Path]:
    """Where a run resumed from a chosen checkpoint (``--resume-from``) writes its own:
    refused if that would overwrite or mix with checkpoints of another run, or with the
    newer checkpoints of the same run, unless ``overwrite``. Returns the checkpoints to
    remove once the run starts."""
    folder = Path(folder)
    same = folder.resolve() == found.path.parent.resolve()
    if not same:
        return check_fresh(folder, overwrite, "resuming into it")
    newer = [p for s, p in listing(folder) if s > found.step]
    if newer and not overwrite:
        raise InputError(
            f"{folder} holds {len(newer)} checkpoint{'s' if len(newer) != 1 else ''} newer than {found.path} "
            f"(newest {newer[0]}); resuming from it here would overwrite them",
            "give another --checkpoint-dir for the resumed run, or pass --overwrite to replace the newer ones",
        )
    return newer
