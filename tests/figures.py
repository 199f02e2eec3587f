"""Counts the reliability tests gather as they run (inputs tried, kills, examples), shown at
the end of a pytest run and copied into docs/reliability.md."""

from __future__ import annotations

FIGURES: dict[str, object] = {}


def add(key: str, n: int = 1) -> None:
    FIGURES[key] = int(FIGURES.get(key, 0)) + n  # type: ignore[call-overload]


def note(key: str, value: object) -> None:
    FIGURES[key] = value
