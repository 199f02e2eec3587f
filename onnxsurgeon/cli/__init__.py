"""The ``onnxsurgeon`` command line: a thin layer over the library.

This is the one place that turns exceptions into messages and exit codes:
0 success, 1 a check found problems, 2 bad usage or input, 3 missing component or
environment problem, 4 internal error (a bug), 130 interrupted.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback

from onnxsurgeon.errors import SurgeonError

BUG = 4
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return its exit code."""
    import typer

    from onnxsurgeon.cli.app import UsageError, app

    if sys.stderr is None:  # closed (2>&-): diagnostics go nowhere, and never into stdout's data
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process
    previous = _terminate_as_interrupt()
    try:
        result = app(args=argv, standalone_mode=False, prog_name="onnxsurgeon")
    except SurgeonError as e:
        if _speaks(e):
            _error(_where(e) + e.message, e.hint)
        return _ended(e, e.exit_code)
    except typer.Exit as e:
        return e.exit_code
    except UsageError as e:
        e.show(file=sys.stderr)
        return 2
    except (typer.Abort, KeyboardInterrupt) as e:
        if _speaks(e):
            print("onnxsurgeon: interrupted", file=sys.stderr)
        return _ended(e, INTERRUPTED)
    except typer.TyperException as e:
        _error(e.format_message(), None)
        return 2
    except Exception as e:
        print("onnxsurgeon: internal error, this is a bug; please report it with the text below", file=sys.stderr)
        traceback.print_exc()
        return _ended(e, BUG)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return result if isinstance(result, int) else 0


def _terminate_as_interrupt():
    """SIGTERM (kill, timeout, a job scheduler) ends a command as Ctrl-C does: temporary
    files removed, exit 130. Returns the handler it replaced (None off the main thread)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (a library user calling main from a thread)
        return None


def _world():
    """The MPI world of a train run under a launcher, if one was started (never imports it)."""
    module = sys.modules.get("onnxsurgeon.train.distributed")
    return module.current() if module is not None else None


def _where(error: BaseException) -> str:
    world = _world()
    return "" if world is None else world.tag(error)


def _speaks(error: BaseException) -> bool:
    world = _world()
    return world is None or world.speaks(error)


def _ended(error: BaseException, code: int) -> int:
    """Under MPI an error of this rank alone aborts every rank (they would wait for it forever)."""
    world = _world()
    return code if world is None else world.end(error, code)


def _error(message: str, hint: str | None) -> None:
    print(f"onnxsurgeon: error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
