"""Where keys and values are in a TOML text (``tomllib`` does not report positions), so
that recipe errors and expressions inside strings point at the file.
"""

from __future__ import annotations

import re

from onnxsurgeon.expr import (
    Pos,
    Source,
)

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY_PART = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER = re.compile(rf"^\s*\[\s*({_DOTTED})\s*\]")
_ASSIGN = re.compile(rf"\s*({_DOTTED})\s*=\s*")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\", "e": "\x1b"}


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


class Locator:
    """Positions of keys and values in a TOML text (tomllib does not report them)."""

    def __init__(self, text: str, file: str) -> None:
        self.text = text
        self.file = file
        self.line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.keys: dict[tuple[str, ...], int] = {}
        self.values: dict[tuple[str, ...], int] = {}
        self._scan()

    def _scan(self) -> None:
        table: tuple[str, ...] = ()
        for start, line in zip(self.line_starts, self.text.split("\n")):
            m = _HEADER.match(line)
            if m and not line.lstrip().startswith("[["):
                table = _key_parts(m.group(1))
                self.keys.setdefault(table, start + m.start(1))
                continue
            m = _ASSIGN.match(line)
            if m:
                path = table + _key_parts(m.group(1))
                self.keys.setdefault(path, start + m.start(1))
                self.values.setdefault(path, start + m.end())
                if line[m.end():].lstrip().startswith("{"):
                    self._inline(path, start + m.end(), line[m.end():])

    def _inline(self, path: tuple[str, ...], offset: int, rest: str) -> None:
        for m in re.finditer(rf"(?:\{{|,)\s*({_DOTTED})\s*=\s*", rest):
            sub = path + _key_parts(m.group(1))
            self.keys.setdefault(sub, offset + m.start(1))
            self.values.setdefault(sub, offset + m.end())

    def pos(self, offset: int) -> Pos:
        import bisect

        line = bisect.bisect_right(self.line_starts, offset) - 1
        return Pos(line + 1, offset - self.line_starts[line] + 1, self.file)

    def _find(self, table: dict[tuple[str, ...], int], path: tuple[str, ...]) -> Pos:
        while path:
            if path in table:
                return self.pos(table[path])
            if path in self.keys:
                return self.pos(self.keys[path])
            path = path[:-1]
        return Pos(1, 1, self.file)

    def key(self, path: tuple[str, ...]) -> Pos:
        return self._find(self.keys, path)

    def value(self, path: tuple[str, ...]) -> Pos:
        return self._find(self.values, path)

    def source(self, path: tuple[str, ...], value: str) -> Source:
        """The expression ``value`` with the file position of each of its characters."""
        offset = self.values.get(path)
        chars = _string_chars(self.text, offset, value) if offset is not None else None
        if chars is None:
            where = self.value(path)
            return Source(value, self.file, where.line, where.col)
        return Source(value, self.file, chars=tuple((p.line, p.col) for p in map(self.pos, chars)))


def _string_chars(text: str, offset: int, expected: str) -> list[int] | None:
    """The text offset of each character of the TOML string starting at ``offset``, or None
    if it cannot be followed (then positions are counted from the opening quote)."""
    quote = text[offset:offset + 1]
    if quote not in ("'", '"'):
        return None
    triple = text.startswith(quote * 3, offset)
    i = offset + (3 if triple else 1)
    if triple and text.startswith("\n", i):
        i += 1
    elif triple and text.startswith("\r\n", i):
        i += 2
    out: list[str] = []
    where: list[int] = []
    end = quote * 3 if triple else quote
    while i < len(text) and not text.startswith(end, i):
        c = text[i]
        if c == "\n" and not triple:
            return None
        if c == "\\" and quote == '"':
            nxt = text[i + 1:i + 2]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                where.append(i)
                i += 2
            elif nxt in ("u", "U"):
                n = 4 if nxt == "u" else 8
                try:
                    out.append(chr(int(text[i + 2:i + 2 + n], 16)))
                except ValueError:
                    return None
                where.append(i)
                i += 2 + n
            elif triple and nxt in " \t\r\n":  # a line-ending backslash swallows the whitespace after it
                i += 1
                while i < len(text) and text[i] in " \t\r\n":
                    i += 1
            else:
                return None
            continue
        out.append(c)
        where.append(i)
        i += 1
    return where if "".join(out) == expected else None
