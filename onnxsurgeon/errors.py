"""The exceptions a user can meet, each with a message, a hint and an exit code.

Anything raised that is not a :class:`SurgeonError` is a bug in onnxsurgeon.
"""

from __future__ import annotations

import errno


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


def write_failed(what: str, e: OSError) -> SurgeonError:
    """The error for a write that failed midway: on a full or failing disk (no space, quota, I/O
    error) the machine's problem, exit 3; otherwise (no rights, a folder in the way) exit 2."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return EnvironmentProblem(f"{what}: {e.strerror}", "free space on that disk, or write elsewhere")
    return InputError(f"{what}: {e.strerror}", "check free space and permissions")
