"""Run a Python program in this very process and record its peak memory at exit.

    python _hwm.py RESULT.json -c CODE [ARGS...]
    python _hwm.py RESULT.json -e MODULE:FUNCTION [ARGS...]   (a console script's entry point)

The program runs in-process (no exec) so that /proc/self/status's VmHWM, the peak
resident set of this process's address space, is the program's own; ru_maxrss would
not do: it survives exec and can report the parent's peak.  At exit, normal or not,
RESULT.json gets {"hwm": bytes, "exit": code}.  Standard library only: it runs in the
peers' virtual environments too.
"""

import atexit
import json
import sys

_exit = {"code": None}


def _peak() -> int | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def _report(path: str) -> None:
    with open(path, "w") as f:
        json.dump({"hwm": _peak(), "exit": _exit["code"]}, f)


def main() -> None:
    result, mode, target, *args = sys.argv[1:]
    atexit.register(_report, result)
    del sys.path[0]  # this script's folder: the program must not import from bench/
    code = 0
    try:
        if mode == "-c":
            sys.argv = ["-c", *args]
            exec(compile(target, "<bench>", "exec"), {"__name__": "__main__"})
        elif mode == "-e":
            module, func = target.split(":")
            sys.argv = [module.split(".")[0], *args]
            import importlib

            code = getattr(importlib.import_module(module), func)()
        else:
            raise SystemExit(f"unknown mode {mode}")
    except SystemExit as e:
        code = e.code
    except BaseException:
        _exit["code"] = 1
        raise
    if code is None:
        code = 0
    _exit["code"] = code if isinstance(code, int) else 1
    if not isinstance(code, int):
        print(code, file=sys.stderr)
    sys.exit(_exit["code"])


if __name__ == "__main__":
    main()
