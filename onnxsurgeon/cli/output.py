"""How commands show what they found: data on stdout (text or JSON), diagnostics on stderr."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    out: Console  # stdout
    err: Console  # stderr


def __getattr__(name: str) -> Any:
    # The consoles are made on first use, so that --help never imports rich. Code in this
    # module reaches them through _console(): a module's own globals bypass __getattr__.
    if name in ("out", "err"):
        return _console(name)
    raise AttributeError(name)


def _console(name: str) -> Console:
    if name not in globals():
        from rich.console import Console

        # Not a terminal (a pipe, a file): no width to fit, so tables print every name in
        # full, on one line, ready to paste into --freeze or --map.
        class _Console(Console):
            def on_broken_pipe(self) -> None:  # rich's own exits 1, which means "a check failed"
                self.quiet = True
                _reader_gone(self.file)

        stream = _tolerant(sys.stderr if name == "err" else sys.stdout)
        width = None if _isatty(stream) else NOT_A_TERMINAL_WIDTH
        globals()[name] = _Console(stderr=name == "err", highlight=False, soft_wrap=True, width=width)
    return globals()[name]


def _reader_gone(stream: Any) -> None:
    """The reader of a stream went away (``| head``): the rest of what is written to it is
    discarded, and the command ends as it would have, with its files and its exit code."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):
        pass


def _tolerant(stream: Any) -> Any:
    """A stream whose encoding cannot hold every character of a name (a Latin-1 locale,
    PYTHONIOENCODING=ascii) writes those as ``\\u`` escapes instead of failing."""
    try:
        if stream.errors == "strict":
            stream.reconfigure(errors="backslashreplace")
    except (AttributeError, ValueError):  # closed, or not a text stream of io's
        pass
    return stream


def _write(text: str) -> None:
    """Data on stdout; nothing when stdout is closed (``>&-``) or its reader went away."""
    stream = _tolerant(sys.stdout)
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        _reader_gone(stream)


NOT_A_TERMINAL_WIDTH = 1 << 15


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def emit_json(data: Any) -> None:
    _write(json.dumps(data, indent=2, default=str) + "\n")


def lines(texts: Iterable[str]) -> None:
    """Lines of plain text on stdout, as they are: no markup, emoji codes or wrapping (and
    fast: a listing of a big model has hundreds of thousands)."""
    _write("".join(t + "\n" for t in texts))


def warn(message: str) -> None:
    _console("err").print(f"warning: {message}", markup=False)


def table(*columns: str, title: str | None = None) -> Table:
    from rich.table import Table

    # On a terminal too narrow for a row, cells wrap ("fold"); they are never cut short
    # with an ellipsis, so every name shown is whole.
    t = Table(title=title, box=None, header_style="bold", pad_edge=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    return t


def size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
