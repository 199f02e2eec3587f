"""A test hook: make this process SIGKILL itself at a named event, so the fault tests
(tests/test_faults.py) can kill a write or a training run at a chosen moment on any
machine, instead of at a moment guessed from a clock.

``ONNXSURGEON_TEST_KILL_AT=EVENT:N`` kills the process the N-th time it reaches EVENT:

- ``write``: a chunk of at most 1 MiB was written to a file being written atomically
  (``serde.write_atomically``, ``serde.save``); when armed, larger writes are made in such
  chunks, so a kill can land inside the write of one large tensor;
- ``synced``: such a file is complete and synced under its temporary name, not yet renamed;
- ``renamed``: it has been renamed into place;
- ``step``: ``train`` finished an optimizer step (before that step's checkpoint);
- ``checkpoint``: ``train`` wrote a checkpoint (before older ones are pruned).

The variable is read here and nowhere else, once, at import. Unset (as always outside the
fault tests) :func:`reached` returns at its first line and :func:`watch` returns the file
it was given; a malformed value or an unknown event is an error at import, so a test cannot
believe it armed a kill that never comes.
"""

from __future__ import annotations

import os
import re
import signal
from typing import BinaryIO

ENV = "ONNXSURGEON_TEST_KILL_AT"
CHUNK = 1 << 20
EVENTS = ("write", "synced", "renamed", "step", "checkpoint")

_target: tuple[str, int] | None = None
_counts: dict[str, int] = {}
_seen: list[str] = []


def arm(spec: str | None) -> None:
    """Kill this process at ``EVENT:N`` (None disarms); counting starts afresh."""
    global _target
    _counts.clear()
    _seen.clear()
    if spec is None:
        _target = None
        return
    m = re.fullmatch(r"([a-z]+):([1-9][0-9]*)", spec)
    if m is None or m.group(1) not in EVENTS:
        raise ValueError(f"{ENV}={spec!r}: expected EVENT:N with EVENT one of {', '.join(EVENTS)} and N >= 1")
    _target = (m.group(1), int(m.group(2)))


def seen() -> list[str]:
    """The events reached since :func:`arm`, in order (tests list a run's events)."""
    return list(_seen)


def reached(event: str) -> None:
    """Mark an event; SIGKILL this process if it is the armed one."""
    if _target is None:
        return
    _seen.append(event)
    n = _counts[event] = _counts.get(event, 0) + 1
    if _target == (event, n):
        os.kill(os.getpid(), signal.SIGKILL)


def watch(f: BinaryIO) -> BinaryIO:
    """``f`` itself, or, when armed, ``f`` with every write marked as a ``write`` event."""
    return f if _target is None else _Watched(f)  # type: ignore[return-value]


class _Watched:
    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        for start in range(0, max(len(view), 1), CHUNK):
            self._f.write(view[start:start + CHUNK])
            reached("write")
        return len(view)

    def __getattr__(self, name: str):
        return getattr(self._f, name)


arm(os.environ.get(ENV))
