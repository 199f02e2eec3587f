"""Fault injection: kill -9 at random moments while a model or a checkpoint is written, and
a full disk at write time.

- Saving a model (inline and with external data) in a forked child killed at a random
  moment: the destination is always the old complete file or the new complete file (byte
  for byte), never a mix; a model's data file always belongs to the model beside it.
- ``onnxsurgeon extract ... -o existing.onnx --force`` killed at random moments: same.
- ``onnxsurgeon train --checkpoint-every 1`` killed at random moments: every checkpoint
  left reads cleanly, and ``train --resume`` ends with bit-for-bit the parameters of a run
  that was never interrupted.
- ENOSPC raised by the write itself: a clean error, exit 2, the old file(s) intact and no
  temporary file left.

Kill moments are drawn from seeded generators over the duration of one uninterrupted run
measured first, so the kills spread over the whole write, whatever the machine's speed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import serde
from onnxsurgeon.cli import main
from onnxsurgeon.errors import InputError
from onnxsurgeon.train import checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402
from test_train import DATA  # noqa: E402
from test_train_stack import mlp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AE = ROOT / "fixtures" / "autoencoder.onnx"


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def temps(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def big_model(seed: int, mb: int = 24) -> onnx.ModelProto:
    """x[N,1024] -> x @ W_k ... with about ``mb`` MB of weights (different per seed)."""
    rng = np.random.default_rng(seed)
    n = max(1, mb * (1 << 20) // (4 * 1024 * 1024))
    inits = [numpy_helper.from_array(rng.standard_normal((1024, 1024)).astype(np.float32), f"W{k}") for k in range(n)]
    nodes = [helper.make_node("MatMul", ["x" if k == 0 else f"h{k - 1}", f"W{k}"], [f"h{k}"], name=f"mm{k}") for k in range(n)]
    graph = helper.make_graph(nodes, f"big{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
                              [helper.make_tensor_value_info(f"h{n - 1}", TensorProto.FLOAT, ["N", 1024])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def forked_save(model: onnx.ModelProto, dest: Path, external: bool, delay: float | None) -> float:
    """Save in a forked child; kill it with SIGKILL after ``delay`` seconds (None: let it
    finish). Returns how long the child ran."""
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child: save, then leave at once
        try:
            serde.save(model, dest, external_data=external)
            os._exit(0)
        except BaseException:
            os._exit(1)
    if delay is not None:
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if delay is None:
        assert os.waitstatus_to_exitcode(status) == 0
    return time.perf_counter() - start


def same_model(loaded: onnx.ModelProto, want: onnx.ModelProto) -> bool:
    return loaded.graph.name == want.graph.name and all(
        np.array_equal(serde.to_array(a), numpy_helper.to_array(b)) for a, b in zip(loaded.graph.initializer, want.graph.initializer)
    )


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_kill_while_saving_a_model(tmp_path, external):
    # Every save writes other bytes (a data file starts with the id of its save), so the
    # files are told apart by what they hold: the old model or the new one, whole.
    old, new = big_model(1), big_model(2)
    dest = tmp_path / "model.onnx"
    data = tmp_path / "model.onnx.data"
    forked_save(new, dest, external, None)
    duration = forked_save(old, dest, external, None)  # over an existing file, as in the trials
    rng = np.random.default_rng(1234 + external)
    trials, mid_write, replaced, mixed = 20, 0, 0, 0
    for _ in range(trials):
        forked_save(old, dest, external, None)  # the old complete file(s)
        before = (sha(dest), sha(data))
        forked_save(new, dest, external, float(rng.uniform(0, duration * 1.1)))
        model_kept, data_kept = sha(dest) == before[0], sha(data) == before[1]
        left = temps(tmp_path)
        for p in left:
            p.unlink()
        if model_kept and not data_kept:
            # Only with external data: killed between the data file's rename and the
            # model's (two files cannot be renamed in one step). The old model beside the
            # new data is refused, never read with the wrong weights.
            assert external
            with pytest.raises(InputError, match="written by different saves"):
                serde.load(dest)
            mixed += 1
            continue
        assert same_model(serde.load(dest), old if model_kept else new)
        mid_write += bool(left)
        replaced += not model_kept
    kind = "with external data" if external else "inline"
    figures.add(f"kills while saving a model ({kind})", trials)
    figures.add(f"  ({kind}) landed mid-write (temporary file left)", mid_write)
    figures.add(f"  ({kind}) landed after the rename (new file in place)", replaced)
    if external:
        figures.add("  (with external data) landed between the two renames (old model, new data: refused on load)", mixed)
    assert mid_write >= trials // 4, f"only {mid_write} of {trials} kills landed mid-write: the test would prove little"


def test_kill_cli_extract_over_an_existing_file(tmp_path):
    source = tmp_path / "big.onnx"
    osg.save(big_model(3, mb=32), source)
    dest = tmp_path / "piece.onnx"
    argv = [sys.executable, "-m", "onnxsurgeon", "extract", str(source), "--in", "x", "--out", "h3", "-o", str(dest), "--force", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, timeout=60)
    duration = time.perf_counter() - start
    new = sha(dest)
    old_model = big_model(4, mb=8)
    rng = np.random.default_rng(99)
    trials, landed = 8, 0
    for _ in range(trials):
        osg.save(old_model, dest)
        old = sha(dest)
        proc = subprocess.Popen(argv, env=env)
        time.sleep(float(rng.uniform(duration * 0.6, duration * 1.02)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert sha(dest) in (old, new)
        left = temps(tmp_path)
        landed += bool(left)
        for p in left:
            p.unlink()
        osg.load(dest)
    figures.add("kills of onnxsurgeon extract -o existing --force", trials)
    figures.add("  (extract) landed mid-write (temporary file left)", landed)


TRAIN = ["train", "mlp.onnx", "--data", "train.npz", "--loss", "ce(y, labels)", "--optimizer", "adamw", "--lr", "0.05",
         "--epochs", "24", "--batch-size", "8", "--seed", "3", "--checkpoint-every", "1", "--keep", "2", "-q"]


def test_train_killed_then_resumed_ends_where_an_uninterrupted_run_ends(tmp_path):
    osg.save(mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "train.npz", **DATA)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "onnxsurgeon", *TRAIN]

    def train(folder: str, *extra: str, kill_after: float | None = None) -> tuple[int, float]:
        """Run train; with ``kill_after``, kill it that long after its first checkpoint.
        Returns the exit code and the time from the first checkpoint to the end."""
        proc = subprocess.Popen([*cmd, "--checkpoint-dir", folder, *extra], cwd=tmp_path, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not list((tmp_path / folder).glob("step-*.ckpt")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first = time.perf_counter()
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        assert b"Traceback" not in err, err.decode()
        return proc.returncode, time.perf_counter() - first

    code, duration = train("straight", "-o", "straight.onnx")
    assert code == 0
    want = {t.name: t.raw_data or numpy_helper.to_array(t).tobytes() for t in osg.load(tmp_path / "straight.onnx").graph.initializer}
    rng = np.random.default_rng(2024)
    trials, killed, resumed_from_checkpoint = 12, 0, 0
    for k in range(trials):
        folder = f"run{k}"
        out = tmp_path / f"out{k}.onnx"
        code, _ = train(folder, "-o", out.name, kill_after=float(rng.uniform(0.0, 1.0) * duration))
        killed += code == -signal.SIGKILL
        found = checkpoint.listing(tmp_path / folder)
        for _, path in found:  # every checkpoint left is whole
            checkpoint.read(path)
        resumed_from_checkpoint += bool(found)
        assert train(folder, "--resume", "-o", out.name, "--force")[0] == 0
        got = {t.name: t.raw_data or numpy_helper.to_array(t).tobytes() for t in osg.load(out).graph.initializer}
        assert got == want, f"trial {k}: resumed parameters differ from the uninterrupted run"
    figures.add("kills of onnxsurgeon train --checkpoint-every 1", killed)
    figures.add("  (train) resumed from a checkpoint (the others started afresh)", resumed_from_checkpoint)
    assert killed >= trials // 2 and resumed_from_checkpoint >= trials // 2


# --- a full disk --------------------------------------------------------------------------------


def _full_disk_after(monkeypatch, budget: int) -> None:
    """Writes through Python file objects fail with ENOSPC once ``budget`` bytes are written."""
    import io

    state = {"left": budget}
    real_write = io.BufferedWriter.write

    class Full(io.BufferedWriter):
        pass

    def write(self, data):
        n = len(memoryview(data).cast("B"))
        if state["left"] < n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        state["left"] -= n
        return real_write(self, data)

    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode and isinstance(f, io.BufferedWriter):
            return _Limited(f, write)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)


class _Limited:
    """A binary file whose write goes through a given function (the disk filling up)."""

    def __init__(self, f, write):
        self._f, self._write = f, write

    def write(self, data):
        return self._write(self._f, data)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
@pytest.mark.parametrize("budget", [0, 3000, 12_000], ids=["at-once", "after-3kB", "after-12kB"])
def test_disk_full_keeps_the_old_file(tmp_path, capsys, monkeypatch, external, budget):
    out = tmp_path / "piece.onnx"
    args = ["--external-data"] if external else []
    assert main(["extract", str(AE), "--in", "input", "--out", "L4.y", "-o", str(out), "-q", *args]) == 0
    before = {p.name: sha(p) for p in tmp_path.iterdir()}
    capsys.readouterr()
    _full_disk_after(monkeypatch, budget)
    code = main(["extract", str(AE), "--in", "input", "--out", "L2.y", "-o", str(out), "--force", "-q", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("onnxsurgeon: error: cannot write") and "No space left on device" in err and "Traceback" not in err
    assert {p.name: sha(p) for p in tmp_path.iterdir()} == before  # old files intact, no temporary file
    monkeypatch.undo()
    piece = osg.load(out)
    assert [o.name for o in piece.graph.output] == ["L4.y"] and osg.verify(osg.load(AE), piece).ok
    figures.add("full-disk injections (ENOSPC at write)", 1)


def test_disk_full_on_a_small_tmpfs(tmp_path):
    """A real full file system, where one can be mounted (root in a container); skipped otherwise."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        old = mnt / "piece.onnx"
        piece, _ = osg.extract(osg.load(AE), inputs=["input"], outputs=["L1.y"])
        osg.save(piece, old)
        before = sha(old)
        try:  # fill what is left
            with open(mnt / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        except OSError:
            pass
        proc = subprocess.run([sys.executable, "-m", "onnxsurgeon", "extract", str(AE), "--in", "input", "--out", "L7.y",
                               "-o", str(old), "--force"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=tmp_path)
        assert proc.returncode == 2 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert sha(old) == before and not temps(mnt)
        figures.add("full-disk runs on a 1 MB tmpfs", 1)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
