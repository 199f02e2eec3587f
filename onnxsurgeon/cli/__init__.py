"""The ``onnxsurgeon`` command line: a thin layer over the library.

This is the one place that turns exceptions into messages and exit codes:
0 success, 1 a check found problems, 2 bad usage or input, 3 missing component or
environment problem, 4 internal error (a bug), 130 interrupted.
"""

from __future__ import annotations

import sys
import traceback

from onnxsurgeon.errors import SurgeonError

BUG = 4
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    import typer

    from onnxsurgeon.cli.app import UsageError, app

    try:
        result = app(args=argv, standalone_mode=False, prog_name="onnxsurgeon")
    except SurgeonError as e:
        _error(e.message, e.hint)
        return e.exit_code
    except typer.Exit as e:
        return e.exit_code
    except UsageError as e:
        e.show(file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt):
        print("onnxsurgeon: interrupted", file=sys.stderr)
        return INTERRUPTED
    except typer.TyperException as e:
        _error(e.format_message(), None)
        return 2
    except Exception:
        print("onnxsurgeon: internal error, this is a bug; please report it with the text below", file=sys.stderr)
        traceback.print_exc()
        return BUG
    return result if isinstance(result, int) else 0


def _error(message: str, hint: str | None) -> None:
    print(f"onnxsurgeon: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
