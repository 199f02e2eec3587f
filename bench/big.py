"""Big models: cut time and peak memory of onnxsurgeon, the floors, and the peers.

Two synthetic transformers whose weights dominate (bench/bigmodel.py, written by
streaming; PyTorch-exporter names):

  inline    ~1.5 GB, weights inside the .onnx file; cut: the middle slice
            (outputs of layers L/3 -> 2L/3, a third of the weights)
  external  ~2.4 GB, weights in one data file beside the .onnx file; cut: the
            first quarter of the layers (graph input -> output of layer L/4-1)

(Deep graphs of 10k/50k/200k nodes: bench/extract_speed.py.)

Each tool runs in a fresh subprocess, interleaved (run 1 of every case and
tool, then run 2, ...), `--repeat` times; the time is the subprocess's wall
time (interpreter start, imports, work, exit) and the memory its peak resident
set (VmHWM, read by bench/_hwm.py at the subprocess's exit):

  floor: load+save   onnx.load + onnx.save of the whole model (inline only)
  floor: copy        python with onnx imported, reading and writing the bytes
                     of the piece's weights (from the model or data file)
  floor: copy+fsync  the same, then fsync (onnxsurgeon fsyncs what it writes)
  onnxsurgeon        the CLI: onnxsurgeon extract MODEL --in A --out B -o OUT
  onnxsurgeon (lib)  onnxsurgeon.load + extract + save
  onnx.utils.extract_model, polygraphy surgeon extract, sne4onnx
                     the peers, each in its own virtual environment made by
                     this script under DIR/venvs (onnx pinned to 1.17.0 there:
                     onnx >= 1.18 writes IR 11, which onnxruntime 1.19 cannot
                     load); a peer that fails to install is skipped, one that
                     fails, times out or passes --mem-cap is not run again

Every piece written is checked at once (in a subprocess, with onnxruntime): it
must load, have exactly the cut's input and output, and compute on a random
input what the same layers rebuilt from the generator's recipe compute
(bigmodel.reference_piece; the model file's bytes of those layers are checked
against the recipe first).  Then it is deleted.

Usage:
    python bench/big.py [--quick] [--repeat 3] [--dir /tmp/osg-bench] [--no-peers] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import bigmodel  # noqa: E402
from extract_speed import library_version  # noqa: E402

HWM = HERE / "_hwm.py"
MB = 1e6

# name -> (hidden, layers) of each case, full and --quick
SIZES = {
    "full": {"inline": (1024, 30), "external": (1024, 48)},  # 1.51 GB, 2.42 GB
    "quick": {"inline": (512, 24), "external": (512, 24)},  # 302 MB each (>= 256 MiB: onnxsurgeon reads lazily)
}
TARGET_MEMORY_SLACK = 300 * MB

# Peer virtual environments: name -> pip requirements.
VENVS = {
    "onnx117": ["onnx==1.17.0"],
    "polygraphy": ["polygraphy", "onnx-graphsurgeon", "onnx==1.17.0"],
    "sne4onnx": ["sne4onnx", "onnx==1.17.0"],  # sne4onnx does not declare its onnx dependency
}

FLOOR_LOADSAVE = """
import sys, onnx
path, out = sys.argv[1:3]
onnx.save(onnx.load(path), out)
"""

FLOOR_COPY = """
import sys, json, os, onnx
ranges, out, sync = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
buf = bytearray(64 << 20)
with open(out, "wb") as dst:
    for src_path, spans in json.load(open(ranges)):
        with open(src_path, "rb", buffering=0) as src:
            for offset, length in spans:
                src.seek(offset)
                while length:
                    n = src.readinto(memoryview(buf)[:min(length, len(buf))])
                    dst.write(memoryview(buf)[:n])
                    length -= n
    if sync:
        dst.flush()
        os.fsync(dst.fileno())
"""

SURGEON_LIB = """
import sys, onnxsurgeon as osg
path, out, a, b = sys.argv[1:5]
piece, report = osg.extract(osg.load(path), inputs=[a], outputs=[b])
osg.save(piece, out)
"""

# --profile: the CLI's own code path, with its steps timed and VmHWM read after each.
PROFILE = """
import time
T0 = time.perf_counter()
import json, os, sys
marks = []
def hwm():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
def mark(what, t0):
    marks.append((what, time.perf_counter() - t0, hwm()))
import onnxsurgeon as osg
from onnxsurgeon import serde
from onnxsurgeon.cli import main
import onnxsurgeon.cli.cut_cmds, onnxsurgeon.cut
osg.load, osg.extract
mark("imports", T0)
def timed(what, f):
    def g(*a, **k):
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            mark(what, t0)
    return g
osg.load = timed("load", osg.load)
osg.extract = timed("extract", osg.extract)
serde.fingerprint = timed("fingerprint of the model file", serde.fingerprint)
serde.save = timed("save", serde.save)
os.fsync = timed("  of which fsync", os.fsync)
path, out, a, b = sys.argv[1:5]
t0 = time.perf_counter()
code = main(["extract", path, "--in", a, "--out", b, "-o", out, "-q"])
mark("CLI total (from its start)", t0)
print(json.dumps({"code": code, "marks": marks}))
"""

ONNX_EXTRACT = """
import sys, onnx.utils
sys.setrecursionlimit(1_000_000)
path, out, a, b = sys.argv[1:5]
onnx.utils.extract_model(path, out, [a], [b])
"""


class Tool:
    def __init__(self, name, venv, mode, target, args, floor=False, cases=("inline", "external")):
        self.name, self.venv, self.mode, self.target = name, venv, mode, target
        self.args, self.floor, self.cases = args, floor, cases


def tools() -> list[Tool]:
    """args(case) gets {model, out, a, b, dims, ranges}."""
    return [
        Tool("floor: load+save", None, "-c", FLOOR_LOADSAVE, lambda c: [c["model"], c["out"]], True, ("inline",)),
        Tool("floor: copy", None, "-c", FLOOR_COPY, lambda c: [c["ranges"], c["out"], "0"], True),
        Tool("floor: copy+fsync", None, "-c", FLOOR_COPY, lambda c: [c["ranges"], c["out"], "1"], True),
        Tool("onnxsurgeon", None, "-e", "onnxsurgeon.cli:run",
             lambda c: ["extract", c["model"], "--in", c["a"], "--out", c["b"], "-o", c["out"], "-q"]),
        Tool("onnxsurgeon (lib)", None, "-c", SURGEON_LIB, lambda c: [c["model"], c["out"], c["a"], c["b"]]),
        Tool("onnx.utils.extract_model", "onnx117", "-c", ONNX_EXTRACT, lambda c: [c["model"], c["out"], c["a"], c["b"]]),
        Tool("polygraphy surgeon extract", "polygraphy", "-e", "polygraphy.tools:main",
             lambda c: ["surgeon", "extract", c["model"], "--inputs", f"{c['a']}:{c['dims']}:float32",
                        "--outputs", f"{c['b']}:float32", "-o", c["out"]]),
        Tool("sne4onnx", "sne4onnx", "-e", "sne4onnx:main",
             lambda c: ["-if", c["model"], "-ion", c["a"], "-oon", c["b"], "-of", c["out"], "-n"]),
    ]


# --- virtual environments ------------------------------------------------------------------


def make_venv(root: Path, name: str, reqs: list[str], timeout: float) -> tuple[str | None, str]:
    """(python of the venv or None, versions or why not), reusing one made with the same reqs."""
    d = root / name
    marker = d / ".bench-reqs"
    py = d / "bin" / "python"
    if not (marker.exists() and marker.read_text() == " ".join(reqs) and py.exists()):
        shutil.rmtree(d, ignore_errors=True)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(d)], check=True, capture_output=True, timeout=120)
            p = subprocess.run([str(py), "-m", "pip", "install", "-q", *reqs], capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"pip install {' '.join(reqs)} took more than {timeout:.0f} s"
        except subprocess.CalledProcessError as e:
            return None, f"python -m venv failed: {e.stderr.decode()[-200:]}"
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.splitlines() if ln.strip() and "is ignored" not in ln]
            return None, f"pip install {' '.join(reqs)} failed: {(lines or ['?'])[-1][:200]}"
        marker.write_text(" ".join(reqs))
    p = subprocess.run([str(py), "-m", "pip", "list", "--format=json"], capture_output=True, text=True)
    want = {r.split("=")[0].lower().replace("_", "-") for r in reqs}
    try:
        pkgs = {x["name"].lower().replace("_", "-"): x["version"] for x in json.loads(p.stdout)}
    except ValueError:
        pkgs = {}
    return str(py), ", ".join(f"{k} {pkgs.get(k, '?')}" for k in sorted(want))


# --- one measured run ----------------------------------------------------------------------


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(python: str, tool: Tool, args: list[str], env: dict, cwd: Path, timeout: float, mem_cap: float) -> dict:
    """Run the tool once; {"wall", "hwm"} or {"error", ...}."""
    result = cwd / "hwm.json"
    result.unlink(missing_ok=True)
    log = open(cwd / "run.log", "w+")
    killed = {}
    t0 = time.perf_counter()
    p = subprocess.Popen([python, str(HWM), str(result), tool.mode, tool.target, *args],
                         stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)

    def watch():  # stop a run whose memory passes the cap (the machine is shared)
        while p.poll() is None:
            if _rss(p.pid) > mem_cap:
                killed["mem"] = True
                p.kill()
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code = p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return {"error": f"timeout > {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    watcher.join()
    if killed:
        return {"error": f"killed: memory > {mem_cap / 1e9:.0f} GB cap"}
    log.seek(0)
    lines = [ln.strip() for ln in log.read().splitlines() if ln.strip()]
    log.close()
    info = json.loads(result.read_text()) if result.exists() else {}
    if code != 0:
        # the last line that looks like an error, else the last line
        errs = [ln for ln in lines if "Error" in ln or "error" in ln or "ERROR" in ln]
        msg = (errs or lines or [f"exit code {code}"])[-1]
        return {"error": msg[:240], "wall": wall, "hwm": info.get("hwm")}
    return {"wall": wall, "hwm": info.get("hwm")}


# --- checking pieces (in a subprocess: `big.py --_reference` / `--_check`) ---------------------


def _session(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # same arithmetic in both
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def reference_main(spec_path: str) -> None:
    """Check the model file's bytes of the piece against the recipe, then write the
    reference piece's output on a random input to spec['npz']."""
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    manifest = json.loads(Path(spec["manifest"]).read_text())
    _, b = bigmodel.build(manifest["hidden"], manifest["layers"], manifest["ffn_mult"], manifest["seed"])
    index = {t.name: i for i, t in enumerate(b.inits)}
    folder = Path(spec["manifest"]).parent
    for name, _layer, file, offset, length in bigmodel.piece_tensors(manifest, spec["first"], spec["last"]):
        with open(folder / file, "rb") as f:
            f.seek(offset)
            if f.read(length) != b.data(index[name]):
                raise SystemExit(f"model file differs from the recipe at tensor {name}")
    ref = bigmodel.reference_piece(manifest, spec["first"], spec["last"])
    a, z = ref.graph.input[0].name, ref.graph.output[0].name
    sess = _session(ref.SerializeToString())
    del ref
    x = np.random.default_rng(1).standard_normal((2, 7, manifest["hidden"])).astype(np.float32)
    (y,) = sess.run([z], {a: x})
    np.savez(spec["npz"], x=x, y=y)


def check_main(spec_path: str) -> None:
    """Check one piece against the reference output; print {"valid", "why"}."""
    import numpy as np

    spec = json.loads(Path(spec_path).read_text())
    ref = np.load(spec["npz"])
    a, z = spec["a"], spec["b"]
    try:
        sess = _session(spec["piece"])
    except Exception as e:
        msg = str(e).split("failed:")[-1].strip()
        print(json.dumps({"valid": False, "why": f"does not load in onnxruntime: {msg[:200]}"}))
        return
    ins, outs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if ins != [a] or outs != [z]:
        print(json.dumps({"valid": False, "why": f"inputs {ins} / outputs {outs}, not [{a}] / [{z}]"}))
        return
    try:
        (y,) = sess.run([z], {a: ref["x"]})
    except Exception as e:
        print(json.dumps({"valid": False, "why": f"does not run: {str(e)[:200]}"}))
        return
    err = float(np.max(np.abs(y - ref["y"]))) if y.shape == ref["y"].shape else float("inf")
    ok = y.shape == ref["y"].shape and np.allclose(y, ref["y"], rtol=1e-5, atol=1e-5)
    print(json.dumps({"valid": bool(ok), "why": f"max abs err {err:.1e}" + ("" if ok else " vs the reference")}))


def run_check(spec: dict, what: str, cwd: Path) -> dict:
    path = cwd / f"{what}.json"
    path.write_text(json.dumps(spec))
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), f"--_{what}", str(path)],
                       capture_output=True, text=True, cwd=cwd)
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or [f"exit code {p.returncode}"]
        return {"valid": False, "why": f"check failed: {lines[-1][:200]}"}
    if what == "reference":
        return {"valid": True}
    return json.loads(p.stdout.strip().splitlines()[-1])


# --- the benchmark -----------------------------------------------------------------------


def merged_ranges(tensors: list[list], folder: Path) -> list:
    """[[file, [[offset, length], ...]], ...] with adjacent spans merged."""
    out: dict[str, list[list[int]]] = {}
    for _name, _layer, file, offset, length in sorted(tensors, key=lambda t: (t[2], t[3])):
        spans = out.setdefault(str(folder / file), [])
        if spans and spans[-1][0] + spans[-1][1] == offset:
            spans[-1][1] += length
        else:
            spans.append([offset, length])
    return [[f, s] for f, s in out.items()]


def make_case(name: str, hidden: int, layers: int, folder: Path) -> dict:
    external = name == "external"
    model = folder / f"big-{name}-{hidden}x{layers}.onnx"
    manifest_path = model.with_name(model.name + ".json")
    t0 = time.perf_counter()
    if manifest_path.exists() and model.exists():
        manifest = json.loads(manifest_path.read_text())
        how = "reused"
    else:
        manifest = bigmodel.write(model, hidden, layers, ffn_mult=4, seed=0, external=external)
        how = f"written in {time.perf_counter() - t0:.1f} s"
    if external:  # the first quarter of the layers
        first, last = 0, layers // 4 - 1
    else:  # the middle slice, as synth.middle_slice
        first, last = layers // 3 + 1, 2 * layers // 3
    tensors = bigmodel.piece_tensors(manifest, first, last)
    ranges = folder / f"{model.stem}.ranges.json"
    ranges.write_text(json.dumps(merged_ranges(tensors, folder)))
    files = [model] + ([model.with_name(model.name + ".data")] if external else [])
    return {
        "name": name, "model": str(model), "files": files, "manifest": str(manifest_path),
        "first": first, "last": last, "layers": layers, "hidden": hidden,
        "a": bigmodel.boundary(first - 1, layers), "b": bigmodel.boundary(last, layers),
        "dims": f"[batch,seq,{hidden}]", "ranges": str(ranges),
        "model_bytes": manifest["bytes"], "piece_bytes": sum(t[4] for t in tensors), "how": how,
    }


def profile(c: dict, env: dict, work: Path) -> None:
    """One onnxsurgeon CLI run with its steps timed (bench/big.py --profile)."""
    out = work / "profile.onnx"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROFILE, c["model"], str(out), c["a"], c["b"]],
                       capture_output=True, text=True, env=env, cwd=work)
    wall = time.perf_counter() - t0
    out.unlink(missing_ok=True)
    if p.returncode != 0:
        print(f"profile {c['name']}: failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
        return
    res = json.loads(p.stdout.strip().splitlines()[-1])
    inside = next(t for w, t, _ in res["marks"] if w.startswith("CLI total")) + res["marks"][0][1]
    print(f"\nprofile of one onnxsurgeon CLI run, case {c['name']} (wall {wall:.2f} s; s, VmHWM MB after the step):")
    print(f"  {'interpreter start + exit':28s} {wall - inside:6.2f}")
    for what, t, peak in res["marks"]:
        print(f"  {what:28s} {t:6.2f}  {peak / MB:6.0f}")


def fmt(x, spec=".2f") -> str:
    return "-" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~300 MB models instead of 1.5 and 2.4 GB")
    ap.add_argument("--repeat", type=int, default=None, help="runs per tool and case (default 3, --quick 1)")
    ap.add_argument("--dir", default="/tmp/osg-bench", help="models, outputs and venvs go here")
    ap.add_argument("--cases", default="inline,external")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--only", help="comma-separated tool names to run (floors are always run)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run before a tool is given up")
    ap.add_argument("--install-timeout", type=float, default=900)
    ap.add_argument("--mem-cap", type=float, default=12, help="GB; a run using more is killed (shared machine)")
    ap.add_argument("--profile", action="store_true",
                    help="after the runs, time the steps of one onnxsurgeon CLI run per case, with VmHWM after each")
    ap.add_argument("--keep", action="store_true", help="keep the models (the venvs are always kept)")
    ap.add_argument("--_reference", help=argparse.SUPPRESS)
    ap.add_argument("--_check", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._reference:
        return reference_main(args._reference)
    if args._check:
        return check_main(args._check)
    repeat = args.repeat or (1 if args.quick else 3)
    sizes = SIZES["quick" if args.quick else "full"]
    root = Path(args.dir)
    work = root / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    # the package measured: a copy taken now, so that edits during a long run are not measured
    version = library_version()
    lib = work / "lib"
    shutil.copytree(REPO / "onnxsurgeon", lib / "onnxsurgeon", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(lib))
    env.pop("PYTHONSTARTUP", None)
    p = subprocess.run([sys.executable, "-c", "import onnxsurgeon; print(onnxsurgeon.__file__)"],
                       capture_output=True, text=True, env=env, cwd=work)
    if Path(p.stdout.strip()).parent != lib / "onnxsurgeon":
        raise SystemExit(f"the copy of onnxsurgeon is not what gets imported: {p.stdout or p.stderr}")
    mem_total = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) * 1024
    print(f"{version}, copied at the start; python {sys.version.split()[0]}; {os.cpu_count()} cores, "
          f"{mem_total / 2**30:.0f} GiB RAM; runs: {repeat} per tool and case, interleaved")

    selected = [t for t in tools() if t.floor or not args.only or t.name in args.only.split(",")]
    pythons: dict[str | None, str] = {None: sys.executable}
    skipped: dict[str, str] = {}
    for t in selected:
        if t.venv is None or t.venv in pythons or t.venv in skipped:
            continue
        if args.no_peers:
            skipped[t.venv] = "--no-peers"
            continue
        t0 = time.perf_counter()
        py, about = make_venv(root / "venvs", t.venv, VENVS[t.venv], args.install_timeout)
        if py:
            pythons[t.venv] = py
            print(f"venv {t.venv}: {about} ({time.perf_counter() - t0:.0f} s)")
        else:
            skipped[t.venv] = about
            print(f"venv {t.venv}: SKIPPED, {about}")
    selected = [t for t in selected if t.venv not in skipped]

    cases = []
    for name in args.cases.split(","):
        hidden, layers = sizes[name]
        c = make_case(name, hidden, layers, root)
        cases.append(c)
        print(f"case {name}: {Path(c['model']).name}, {c['model_bytes'] / MB:.0f} MB "
              f"({'one data file beside it' if name == 'external' else 'inline'}), {layers} layers, hidden {hidden} "
              f"({c['how']}); cut layers {c['first']}..{c['last']}: {c['a']} -> {c['b']}, "
              f"piece weights {c['piece_bytes'] / MB:.0f} MB")
        npz = str(work / f"ref-{name}.npz")
        r = run_check({"manifest": c["manifest"], "first": c["first"], "last": c["last"], "npz": npz}, "reference", work)
        if not r["valid"]:
            raise SystemExit(f"reference for {name}: {r['why']}")
        c["npz"] = npz
        for f in c["files"]:  # warm the page cache: every run reads a cached file
            with open(f, "rb", buffering=0) as fh:
                while fh.read(64 << 20):
                    pass

    results = {(c["name"], t.name): [] for c in cases for t in selected}
    checks = {(c["name"], t.name): [] for c in cases for t in selected}
    given_up: dict[tuple[str, str], str] = {}
    for rep in range(repeat):
        for c in cases:
            for t in selected:
                key = (c["name"], t.name)
                if c["name"] not in t.cases or key in given_up:
                    continue
                out = work / "out" / "piece.onnx"
                shutil.rmtree(out.parent, ignore_errors=True)
                out.parent.mkdir()
                r = measure(pythons[t.venv], t, t.args(dict(c, out=str(out))), env, work, args.timeout,
                            args.mem_cap * 1e9)
                results[key].append(r)
                line = f"run {rep + 1} {c['name']:8s} {t.name:27s} "
                if "error" in r:
                    given_up[key] = r["error"]
                    line += f"FAILED after {fmt(r.get('wall'), '.1f')} s: {r['error']}"
                else:
                    line += f"{r['wall']:7.2f} s  peak {fmt(r['hwm'] and r['hwm'] / MB, '.0f')} MB"
                    if not t.floor:
                        chk = run_check({"npz": c["npz"], "piece": str(out), "a": c["a"], "b": c["b"]}, "check", work)
                        checks[key].append(chk)
                        line += f"  {'valid' if chk['valid'] else 'INVALID'}: {chk['why']}"
                print(line, flush=True)
                shutil.rmtree(out.parent, ignore_errors=True)

    # --- report ------------------------------------------------------------------------------
    print(f"\n{version}; median of {repeat} run(s); s = wall time of the whole subprocess; "
          "peak = its VmHWM; x = / the case's floor (inline: floor: load+save, external: floor: copy)")
    head = f"{'tool':27s} {'case':8s} {'median s':>8} {'x floor':>7} {'peak MB':>8} {'piece MB':>8}  valid"
    print(head)
    print("-" * len(head))
    summary = []
    for c in cases:
        floor_name = "floor: load+save" if c["name"] == "inline" else "floor: copy"
        med = {}
        for t in selected:
            good = [r for r in results[(c["name"], t.name)] if "error" not in r]
            if good and len(good) == len(results[(c["name"], t.name)]):
                med[t.name] = (statistics.median(r["wall"] for r in good),
                               statistics.median(r["hwm"] for r in good if r["hwm"]) if any(r["hwm"] for r in good) else None)
        floor = med.get(floor_name, (None,))[0]
        for t in selected:
            key = (c["name"], t.name)
            if c["name"] not in t.cases:
                continue
            s, peak = med.get(t.name, (None, None))
            if t.floor:
                valid = "(floor)"
            elif key in given_up:
                valid = f"FAILED: {given_up[key][:110]}"
            elif not checks[key]:
                valid = "-"
            else:
                bad = [ch for ch in checks[key] if not ch["valid"]]
                valid = f"INVALID: {bad[0]['why'][:110]}" if bad else "valid"
            x = s / floor if s and floor else None
            print(f"{t.name:27s} {c['name']:8s} {fmt(s):>8} {fmt(x):>7} {fmt(peak and peak / MB, '.0f'):>8} "
                  f"{c['piece_bytes'] / MB:8.0f}  {valid}")
            if t.name == "onnxsurgeon" and s:
                bound = 2.0 if c["name"] == "external" else 1.0
                mem_cap = (c["piece_bytes"] + TARGET_MEMORY_SLACK) / MB
                summary.append(
                    f"  {c['name']}: memory {fmt(peak and peak / MB, '.0f')} MB <= {mem_cap:.0f} MB "
                    f"(piece + 300 MB): {'PASS' if peak and peak / MB <= mem_cap else 'MISS'}; "
                    f"time x{fmt(x)} <= x{bound:.0f} of {floor_name}: {'PASS' if x and x <= bound else 'MISS'}")
        print()
    if summary:
        print("targets of issue 5 (onnxsurgeon CLI):")
        print("\n".join(summary))
    for venv, why in skipped.items():
        print(f"peers in venv {venv} skipped: {why}")
    if args.profile:
        for c in cases:
            profile(c, env, work)

    shutil.rmtree(work, ignore_errors=True)
    if not args.keep:
        for c in cases:
            for f in c["files"] + [Path(c["manifest"]), Path(c["ranges"])]:
                Path(f).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
