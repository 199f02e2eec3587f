"""How fast is an onnxsurgeon cut compared with just loading and saving the model?

For each size, a synthetic transformer (bench/synth.py) is written to a temp
dir in two variants that differ only in graph.value_info:

  types: none      no intermediate value has a recorded type (TorchScript exporter)
  types: recorded  every intermediate value has its type and shape recorded
                   (dynamo exporter; synth.make_transformer(value_info=True))

Then, interleaved (run 1 of every variant and method, then run 2, ...), each
in a fresh subprocess, `--repeat` times per variant:

  floor   onnx.load + onnx.save of the whole model (and raw: bare protobuf
          ModelProto.FromString + SerializeToString, for reference)
  surgeon onnxsurgeon.load + extract(middle slice) + save
  peer    onnx.utils.extract_model of the same slice (unless --no-peer; given
          up after --peer-timeout s, for that variant and larger sizes)

Timed is the block inside the subprocess (imports excluded); the whole
subprocess wall time is shown per run.  Medians are printed in one table, then
the linearity check (time per node at the largest size vs the smallest) and a
compact summary (the last lines).  Each piece is checked to load in
onnxruntime with exactly the slice's input and output; for the smallest size
its output is also compared with the original model's value at the slice
output.

Usage:
    python bench/extract_speed.py [--sizes 10000,50000,200000] [--repeat 3] [--no-peer]
                                  [--types none,recorded] [--slices late10,half]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import synth  # noqa: E402

REPO = HERE.parent
# Where the subprocesses import onnxsurgeon from: main() points it at a copy of the
# package taken at the start, so that edits made during a long run are not measured.
LIB = REPO

# Each snippet gets argv = [path, out, slice_input, slice_output] and prints
# {"timed": seconds, "hwm": bytes} as its last stdout line: hwm is the peak resident
# memory of the process (VmHWM; `python -c` runs in the process that was started).
PEAK = """
def peak():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
"""
FLOOR = PEAK + """
import sys, time, json
import onnx
path, out, a, b = sys.argv[1:5]
t0 = time.perf_counter()
m = onnx.load(path)
t1 = time.perf_counter()
onnx.save(m, out)
t2 = time.perf_counter()
hwm = peak()
# Same with bare protobuf: onnx.load/save also walk every tensor in Python
# (external-data handling), which costs more than the parsing itself.
with open(path, "rb") as f:
    m = onnx.ModelProto.FromString(f.read())
with open(out, "wb") as f:
    f.write(m.SerializeToString())
t3 = time.perf_counter()
print(json.dumps({"timed": t2 - t0, "load": t1 - t0, "save": t2 - t1, "raw": t3 - t2, "hwm": hwm}))
"""

# onnxsurgeon imports its modules (and onnx) on first attribute access: resolve the
# three functions before the clock starts, as FLOOR imports onnx before its clock.
SURGEON = PEAK + """
import sys, time, json
import onnxsurgeon
load, extract, save = onnxsurgeon.load, onnxsurgeon.extract, onnxsurgeon.save
path, out, a, b = sys.argv[1:5]
t0 = time.perf_counter()
m = load(path)
piece, report = extract(m, inputs=[a], outputs=[b])
save(piece, out)
t1 = time.perf_counter()
print(json.dumps({"timed": t1 - t0, "hwm": peak()}))
"""

# onnx 1.17's Extractor walks the graph recursively (one Python frame per
# value on the path), so the default recursion limit of 1000 is far too low.
PEER = PEAK + """
import sys, time, json
import onnx.utils
sys.setrecursionlimit(RECURSION_LIMIT)
path, out, a, b = sys.argv[1:5]
t0 = time.perf_counter()
onnx.utils.extract_model(path, out, [a], [b])
t1 = time.perf_counter()
print(json.dumps({"timed": t1 - t0, "hwm": peak()}))
"""


def run_snippet(code: str, args: list[str], timeout: float | None = None) -> dict:
    """Run code in a fresh interpreter; return its JSON result plus wall time,
    or {"error": ...}."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LIB), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    try:
        # cwd too: `python -c` puts the current directory first on sys.path
        p = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                           text=True, env=env, timeout=timeout, cwd=LIB)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout > {timeout:.0f} s"}
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        lines = p.stderr.strip().splitlines() or [f"exit code {p.returncode}"]
        return {"error": lines[-1][:200]}
    res = json.loads(p.stdout.strip().splitlines()[-1])
    res["wall"] = wall
    return res


def surgeon_available() -> str | None:
    """None if onnxsurgeon has load/extract/save, else why not."""
    code = ("import onnxsurgeon\n"
            "missing = [f for f in ('load', 'extract', 'save') if not hasattr(onnxsurgeon, f)]\n"
            "assert not missing, 'onnxsurgeon lacks ' + ', '.join(missing)\n"
            "import json; print(json.dumps({'file': onnxsurgeon.__file__}))")
    res = run_snippet(code, [])
    if "error" in res:
        return res["error"]
    if Path(LIB).resolve() not in Path(res["file"]).resolve().parents:
        return f"imported from {res['file']}, not from {LIB}"
    return None


def peer_available() -> bool:
    try:
        import onnx.utils
        return hasattr(onnx.utils, "extract_model")
    except ImportError:
        return False


def check_piece(piece_path: str, original: onnx.ModelProto | None, a: str, b: str) -> str:
    """Load the piece in onnxruntime; if `original` is given, also compare the
    piece's output with the original's value at `b`, feeding it the original's
    value at `a`."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(piece_path, so, providers=["CPUExecutionProvider"])
    ins, outs = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
    if ins != [a] or outs != [b]:
        return f"FAIL: piece has inputs {ins}, outputs {outs}"
    piece = onnx.load(piece_path)
    inner = {o for n in piece.graph.node for o in n.output if o} - {b}
    typed = {v.name for v in piece.graph.value_info if v.type.tensor_type.HasField("shape")} & inner
    types = f"{len(piece.graph.node)} nodes, {len(typed)}/{len(inner)} inner values typed"
    if original is None:
        return f"loads in ORT; {types}"

    # Expose a and b as outputs of the original, with their inferred types.
    full = onnx.shape_inference.infer_shapes(original)
    vi = {v.name: v for v in full.graph.value_info}
    full.graph.output.extend([vi[a], vi[b]])
    ref = ort.InferenceSession(full.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 7, 16)).astype(np.float32)
    _, val_a, val_b = ref.run(None, {synth.GRAPH_INPUT: x})
    (got,) = sess.run(None, {a: val_a})
    err = float(np.max(np.abs(got - val_b)))
    ok = np.allclose(got, val_b, rtol=1e-4, atol=1e-4)
    return f"{'OK' if ok else 'FAIL'}: vs original at slice output, max abs err {err:.1e}; {types}"


VARIANTS = ("none", "recorded")  # graph.value_info: empty (TorchScript export) / complete (dynamo export)
SLICES = ("late10", "half")
METHODS = ("surgeon", "peer")


def slices(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """The cuts measured: ``late10``, ten layers near the end (the same size at every model
    size; the issue's "small cut near the end", 4800 -> 4810 of 4878), and ``half``, the
    middle half (layers L/4 -> 3L/4: it grows with the model)."""
    layers = int({p.key: p.value for p in model.metadata_props}["synth.num_layers"])
    a = max(layers - 78, 0)
    return {
        "late10": (synth.layer_boundary(a), synth.layer_boundary(min(a + 10, layers - 2))),
        "half": (synth.layer_boundary(layers // 4), synth.layer_boundary(3 * layers // 4)),
    }


def library_version() -> str:
    """The commit of onnxsurgeon measured, and whether its files had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "onnxsurgeon"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "onnxsurgeon (commit unknown)"
    return f"onnxsurgeon {head}" + (" + uncommitted changes" if dirty else "")


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def ratio(x: float | None, y: float | None) -> float | None:
    return x / y if x and y else None


def median_of(runs: list[dict], key: str) -> float | None:
    """Median of a method's runs, or None if any run failed: a median of the lucky runs
    would mislead."""
    if not runs or any("error" in r for r in runs):
        return None
    return statistics.median(r[key] for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,50000,200000", help="comma-separated node counts")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true", help="skip onnx.utils.extract_model")
    ap.add_argument("--peer-timeout", type=float, default=120,
                    help="give up on the peer (and on larger sizes) after this many seconds")
    ap.add_argument("--peer-recursion-limit", type=int, default=1_000_000)
    ap.add_argument("--types", default=",".join(VARIANTS),
                    help="comma-separated variants to measure: none (no recorded types), recorded")
    ap.add_argument("--slices", default=",".join(SLICES), help="comma-separated slices to cut: late10, half")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = [v for v in args.types.split(",") if v]
    cuts_measured = [c for c in args.slices.split(",") if c]
    for name, given, known in (("--types", variants, VARIANTS), ("--slices", cuts_measured, SLICES)):
        if not given or set(given) - set(known):
            ap.error(f"{name} takes some of: {', '.join(known)}")

    global LIB
    peer_code = PEER.replace("RECURSION_LIMIT", str(args.peer_recursion_limit))
    use_peer = {(v, c): not args.no_peer and peer_available() for v in VARIANTS for c in SLICES}

    rows = []
    with tempfile.TemporaryDirectory(prefix="extract_speed_") as tmp:
        version = library_version()
        LIB = Path(tmp, "lib")
        shutil.copytree(REPO / "onnxsurgeon", LIB / "onnxsurgeon", ignore=shutil.ignore_patterns("__pycache__"))
        print(f"{version}, copied at the start of the run; load average {os.getloadavg()[0]:.1f}")
        why_not = surgeon_available()
        if why_not:
            print(f"onnxsurgeon not usable, skipping its measurement: {why_not}")
        for size in sizes:
            paths: dict[str, str] = {}
            t0 = time.perf_counter()
            model = synth.make_transformer(size)
            if "none" in variants:
                paths["none"] = os.path.join(tmp, f"synth{size}-none.onnx")
                onnx.save(model, paths["none"])
            t1 = time.perf_counter()
            n_vi = 0
            if "recorded" in variants:
                typed = synth.record_types(model)  # = make_transformer(size, value_info=True)
                paths["recorded"] = os.path.join(tmp, f"synth{size}-recorded.onnx")
                onnx.save(typed, paths["recorded"])
                n_vi = len(typed.graph.value_info)
                del typed
            t2 = time.perf_counter()
            cuts = {c: ab for c, ab in slices(model).items() if c in cuts_measured}
            nodes = len(model.graph.node)
            mb = {v: os.path.getsize(p) / 1e6 for v, p in paths.items()}
            print(f"\n{nodes} nodes; generated in {t2 - t0:.1f} s; "
                  + "; ".join(f"types {v}: {mb[v]:.1f} MB" for v in variants)
                  + (f" ({n_vi} value_info)" if n_vi else ""))
            for c, (a, b) in cuts.items():
                print(f"  slice {c}: {a} -> {b}")

            results: dict[tuple, list[dict]] = {}
            kept: dict[str, int] = {}
            for rep in range(args.repeat):
                for variant in variants:
                    def go(method: str, code: str, cut: str | None, timeout: float | None = None) -> dict:
                        a, b = cuts[cut or "half"]
                        out = os.path.join(tmp, f"{method}-{variant}-{cut}.onnx")
                        r = run_snippet(code, [paths[variant], out, a, b], timeout)
                        results.setdefault((variant, method, cut), []).append(r)
                        detail = r["error"] if "error" in r else (
                            f"{r['timed']:.2f} s (wall {r['wall']:.2f} s), peak {r['hwm'] / 1e6:.0f} MB")
                        print(f"  run {rep + 1} types {variant:8s} {method:8s} {cut or '':7s} {detail}", flush=True)
                        return r

                    go("floor", FLOOR, None)
                    for cut in cuts:
                        if not why_not:
                            go("surgeon", SURGEON, cut)
                        if use_peer[variant, cut]:
                            if "error" in go("peer", peer_code, cut, args.peer_timeout):
                                use_peer[variant, cut] = False  # too slow or broken: not again, nor larger sizes

            for variant in variants:
                floor = results[variant, "floor", None]
                base = {"nodes": nodes, "types": variant, "mb": mb[variant],
                        "floor": median_of(floor, "timed"), "floor_hwm": median_of(floor, "hwm"),
                        "raw": median_of(floor, "raw")}
                for cut in cuts:
                    row = dict(base, slice=cut)
                    for method in METHODS:
                        runs = results.get((variant, method, cut), [])
                        row[method] = median_of(runs, "timed")
                        row[method + "_hwm"] = median_of(runs, "hwm")
                    # Check the pieces of the last run (untimed).
                    for method in METHODS:
                        piece = os.path.join(tmp, f"{method}-{variant}-{cut}.onnx")
                        if row[method] is not None and os.path.exists(piece):
                            original = model if size == min(sizes) else None
                            try:
                                msg = check_piece(piece, original, *cuts[cut])
                                row[method + "_nodes"] = len(onnx.load(piece).graph.node)
                            except Exception as e:  # report, don't abort the bench
                                msg = f"FAIL: {type(e).__name__}: {e}"
                            print(f"  check types {variant:8s} {cut:7s} {method}: {msg}")
                            os.remove(piece)
                    rows.append(row)
            del model
            for p in paths.values():
                os.remove(p)

    print(f"\nmedians of {args.repeat} runs, seconds inside the subprocess (imports excluded); load average "
          f"{os.getloadavg()[0]:.1f} at the end")
    print("floor = onnx.load + onnx.save; raw = the same with bare protobuf (reference); x = ratio to floor; "
          "MB = peak resident memory of the process; s/1k = seconds per 1000 nodes kept")
    head = (f"{'nodes':>7} {'types':8s} {'slice':7s} {'kept':>6} {'file MB':>7} {'floor':>6} {'MB':>5} "
            f"{'surgeon':>7} {'x':>5} {'MB':>5} {'x':>5} {'raw':>5} {'peer':>7} {'x':>6} {'surgeon s/1k':>12}")
    print(head)
    print("-" * len(head))
    for r in rows:
        kept = r.get("surgeon_nodes")
        print(f"{r['nodes']:>7} {r['types']:8s} {r['slice']:7s} {fmt(kept, 'd'):>6} {r['mb']:>7.1f} "
              f"{fmt(r['floor']):>6} {fmt(r['floor_hwm'] and r['floor_hwm'] / 1e6, '.0f'):>5} "
              f"{fmt(r['surgeon']):>7} {fmt(ratio(r['surgeon'], r['floor'])):>5} "
              f"{fmt(r['surgeon_hwm'] and r['surgeon_hwm'] / 1e6, '.0f'):>5} "
              f"{fmt(ratio(r['surgeon_hwm'], r['floor_hwm'])):>5} {fmt(r.get('raw')):>5} {fmt(r['peer']):>7} "
              f"{fmt(ratio(r['peer'], r['floor']), '.1f'):>6} "
              f"{fmt(1000 * r['surgeon'] / kept if r['surgeon'] and kept else None, '.4f'):>12}")

    # Linearity: time per node at the largest size vs the smallest.
    lo_n, hi_n = min(r["nodes"] for r in rows), max(r["nodes"] for r in rows)
    growth = []
    if lo_n != hi_n:
        print(f"\nlinearity: time per node at {hi_n} nodes / at {lo_n} nodes (1.0 = linear); per node kept "
              "for the half slice, per node of the model for the late one (whose size does not grow), "
              "and for the floor")
        for variant in variants:
            for cut in cuts_measured:
                lo = next(r for r in rows if (r["types"], r["slice"], r["nodes"]) == (variant, cut, lo_n))
                hi = next(r for r in rows if (r["types"], r["slice"], r["nodes"]) == (variant, cut, hi_n))
                per = "surgeon_nodes" if cut == "half" else "nodes"
                if lo["surgeon"] and hi["surgeon"] and lo.get(per) and hi.get(per):
                    g = (hi["surgeon"] / hi[per]) / (lo["surgeon"] / lo[per])
                    growth.append(f"surgeon {variant} {cut} x{g:.2f}")
                    print(f"  types {variant:8s} {cut:7s} surgeon x{g:.2f}")
            lo = next(r for r in rows if (r["types"], r["nodes"]) == (variant, lo_n))
            hi = next(r for r in rows if (r["types"], r["nodes"]) == (variant, hi_n))
            if lo["floor"] and hi["floor"]:
                g = (hi["floor"] / hi_n) / (lo["floor"] / lo_n)
                growth.append(f"floor {variant} x{g:.2f}")
                print(f"  types {variant:8s} floor   x{g:.2f}")

    # Compact summary, for pasting into a note.
    print(f"\nsummary, {version} (median of {args.repeat}; s; x = / onnx.load+save floor; MB = peak):")
    for r in rows:
        part = (f"  {r['nodes']} nodes {r['types']:8s} {r['slice']:7s} floor {fmt(r['floor'])} s "
                f"{fmt(r['floor_hwm'] and r['floor_hwm'] / 1e6, '.0f')} MB | surgeon {fmt(r['surgeon'])} s "
                f"(x{fmt(ratio(r['surgeon'], r['floor']))}) {fmt(r['surgeon_hwm'] and r['surgeon_hwm'] / 1e6, '.0f')} MB "
                f"(x{fmt(ratio(r['surgeon_hwm'], r['floor_hwm']))})")
        if r["peer"] is not None:
            part += f" | peer {fmt(r['peer'], '.1f')} (x{fmt(ratio(r['peer'], r['floor']), '.0f')})"
        print(part)
    if growth:
        print(f"  linearity {lo_n}->{hi_n} nodes (per-node time ratio): " + ", ".join(growth))
    if args.no_peer:
        print("  peer (onnx.utils.extract_model): not run (--no-peer)")


if __name__ == "__main__":
    main()
