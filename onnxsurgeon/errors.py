"""The exceptions a user can meet, each with a message, a hint and an exit code.

Anything raised that is not a :class:`SurgeonError` is a bug in onnxsurgeon.
"""

from __future__ import annotations


class SurgeonError(Exception):
    """A problem with the user's input or environment, explained in words."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\nhint: {self.hint}"


class InputError(SurgeonError):
    """Bad usage or bad input: unknown name, open cut, unreadable model (exit 2)."""

    exit_code = 2


class CheckFailed(SurgeonError):
    """A check ran and found problems, e.g. ``verify`` saw a mismatch (exit 1)."""

    exit_code = 1


class EnvironmentProblem(SurgeonError):
    """A missing optional component or a problem with the machine (exit 3)."""

    exit_code = 3
