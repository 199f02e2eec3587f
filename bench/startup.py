"""How long does the command line take to start?

Wall time, median of `--runs` (10) fresh processes each, of:

  onnxsurgeon --help              the console script (the one beside this Python,
                                  not a pyenv shim, which adds its own start-up)
  python -m onnxsurgeon --help
  python -c pass                  the interpreter alone
  python -c "import onnx"         for reference: what importing onnx costs

The commands are interleaved (run 1 of each, then run 2, ...) after one untimed
warm-up round, and their ratios to `python -c pass` and to `import onnx` are
printed.  Then, in a fresh process, `from onnxsurgeon.cli import main;
main(['--help'])` is run and the heavy modules (onnx, onnxruntime, numpy, rich,
typer) found in sys.modules afterwards are listed, with the slowest imports
of that process (python -X importtime).

Usage:
    python bench/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("onnx", "onnxruntime", "numpy", "rich", "typer")

IN_PROCESS = """
import contextlib, io, json, sys
from onnxsurgeon.cli import main
with contextlib.redirect_stdout(io.StringIO()) as out:
    code = main(["--help"])
heavy = {m: m in sys.modules for m in HEAVY}
print(json.dumps({"code": code, "help_chars": len(out.getvalue()), "heavy": heavy}))
""".replace("HEAVY", repr(HEAVY))


def console_script() -> list[str]:
    """The onnxsurgeon script installed for this interpreter (not a pyenv shim)."""
    beside = Path(sys.executable).parent / "onnxsurgeon"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("onnxsurgeon")
    if found:
        return [found]
    raise SystemExit("no onnxsurgeon console script: pip install -e . first")


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    t = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.decode()[-300:]}")
    return t


def slowest_imports(code: str, top: int) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the slowest top-level imports of a process."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=env())
    found = []
    for line in p.stderr.splitlines():
        # "import time: self [us] | cumulative | imported package"; top level has no indent
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:"):].split("|")
        if not name.startswith("  "):  # one space after "|" at top level
            found.append((int(cumulative) / 1e6, name.strip()))
    return sorted(found, reverse=True)[:top]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()

    py = sys.executable
    script = console_script()
    cmds = {
        "onnxsurgeon --help": script + ["--help"],
        "python -m onnxsurgeon --help": [py, "-m", "onnxsurgeon", "--help"],
        "python -c pass": [py, "-c", "pass"],
        'python -c "import onnx"': [py, "-c", "import onnx"],
    }
    print(f"python: {py}\nconsole script: {script[0]}")
    for cmd in cmds.values():  # warm-up: file cache, .pyc files
        wall(cmd)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.runs):
        for k, cmd in cmds.items():
            times[k].append(wall(cmd))

    med = {k: statistics.median(v) for k, v in times.items()}
    base, onnx_t = med["python -c pass"], med['python -c "import onnx"']
    print(f"\nwall time, median of {args.runs} fresh processes (min-max)")
    print(f"{'command':30s} {'ms':>6} {'range':>11} {'x pass':>7} {'x import onnx':>14}")
    for k, v in times.items():
        print(f"{k:30s} {1000 * med[k]:>6.0f} {1000 * min(v):>5.0f}-{1000 * max(v):<5.0f} "
              f"{med[k] / base:>7.2f} {med[k] / onnx_t:>14.2f}")

    p = subprocess.run([py, "-c", IN_PROCESS], capture_output=True, text=True, env=env())
    if p.returncode != 0:
        raise SystemExit(f"in-process --help failed: {p.stderr[-500:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    loaded = [m for m, v in res["heavy"].items() if v]
    absent = [m for m, v in res["heavy"].items() if not v]
    print(f"\nafter `from onnxsurgeon.cli import main; main(['--help'])` in a fresh process "
          f"(exit code {res['code']}, {res['help_chars']} chars of help):")
    print(f"  in sys.modules:     {', '.join(loaded) or 'none'}")
    print(f"  not in sys.modules: {', '.join(absent) or 'none'}")
    top = slowest_imports(IN_PROCESS, 5)
    print("  slowest top-level imports (cumulative ms): " + ", ".join(f"{name} {1000 * t:.0f}" for t, name in top))

    print(f"\nsummary: onnxsurgeon --help {1000 * med['onnxsurgeon --help']:.0f} ms "
          f"(x{med['onnxsurgeon --help'] / base:.1f} python -c pass, x{med['onnxsurgeon --help'] / onnx_t:.2f} import onnx); "
          f"python -m: {1000 * med['python -m onnxsurgeon --help']:.0f} ms; "
          f"pass {1000 * base:.0f} ms, import onnx {1000 * onnx_t:.0f} ms; "
          f"heavy modules loaded by --help: {', '.join(loaded) or 'none'}")


if __name__ == "__main__":
    main()
