"""Fault injection: kill -9 at chosen events while a model or a checkpoint is written, and
a full disk at write time.

Every kill lands on a named event, not on a moment guessed from a clock: the process is
armed with ``ONNXSURGEON_TEST_KILL_AT=EVENT:N`` (``onnxsurgeon/faults.py``) and SIGKILLs
itself the N-th time it reaches EVENT (after a 1 MiB chunk of an atomic write, when a
temporary file is synced, when it is renamed, after a training step, after a checkpoint).
So each kill lands in the same place on a fast and on a slow machine, and each test asserts
what it must find there.

- Saving a model (inline and with external data) in a forked child killed at every event
  of the save: before the rename the old file(s) are in place and the temporary file holds
  what was written so far; after it, the new file; between the two renames of an external
  data save, the old model beside the new data, which ``load`` refuses.
- ``onnxsurgeon extract ... -o existing.onnx --force`` killed mid-write, with the output
  complete under its temporary name, and after the rename: the old file, then the new.
- ``onnxsurgeon train --checkpoint-every 1 --keep 2`` killed after a step, after a
  checkpoint (before pruning), mid-write of a checkpoint and with a checkpoint complete but
  not renamed: exactly the expected checkpoints are left, each reads cleanly, and
  ``train --resume`` resumes from the newest and ends with bit-for-bit the parameters of a
  run that was never interrupted.
- ENOSPC raised by the write itself: a clean error, exit 3 (the machine's problem), the old file(s) intact and no
  temporary file left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxsurgeon as osg
from onnxsurgeon import faults, serde
from onnxsurgeon.cli import main
from onnxsurgeon.errors import InputError
from onnxsurgeon.train import checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import figures  # noqa: E402
from test_train import DATA  # noqa: E402
from test_train_stack import mlp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AE = ROOT / "fixtures" / "autoencoder.onnx"
KILLED = -signal.SIGKILL
NEVER = f"write:{10**9}"  # armed, so events are counted, but never reached


def sha(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def big_model(seed: int, mb: int = 6) -> onnx.ModelProto:
    """x[N,512] -> x @ W_k ... with ``mb`` weights of 1 MiB each (different per seed)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((512, 512)).astype(np.float32), f"W{k}") for k in range(mb)]
    nodes = [helper.make_node("MatMul", ["x" if k == 0 else f"h{k - 1}", f"W{k}"], [f"h{k}"], name=f"mm{k}") for k in range(mb)]
    graph = helper.make_graph(nodes, f"big{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 512])],
                              [helper.make_tensor_value_info(f"h{mb - 1}", TensorProto.FLOAT, ["N", 512])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def events_of(action) -> list[str]:
    """The events ``action()`` reaches, in order (counted in this process, never killing it)."""
    faults.arm(NEVER)
    try:
        action()
        return faults.seen()
    finally:
        faults.arm(None)


def forked_save(model: onnx.ModelProto, dest: Path, external: bool, kill_at: str | None = None) -> int:
    """Save in a forked child armed to kill itself at ``kill_at``; returns its exit code."""
    pid = os.fork()
    if pid == 0:  # the child: save, then leave at once
        try:
            faults.arm(kill_at)
            serde.save(model, dest, external_data=external)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def same_model(loaded: onnx.ModelProto, want: onnx.ModelProto) -> bool:
    return loaded.graph.name == want.graph.name and all(
        np.array_equal(serde.to_array(a), numpy_helper.to_array(b)) for a, b in zip(loaded.graph.initializer, want.graph.initializer)
    )


def kill_points(trace: list[str]) -> list[tuple[str, int, int, bool]]:
    """For each event of a trace: its ``EVENT:N`` spec, the temporary files alive when a kill
    lands there, the files renamed by then, and whether it lands inside a write."""
    points, count = [], {}
    for event in trace:
        count[event] = count.get(event, 0) + 1
        synced, renamed = count.get("synced", 0), count.get("renamed", 0)
        points.append((f"{event}:{count[event]}", synced + (event == "write") - renamed, renamed, event == "write"))
    return points


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-data"])
def test_kill_while_saving_a_model(tmp_path, external):
    # Every save writes other bytes (a data file starts with the id of its save), so the
    # files are told apart by what they hold: the old model or the new one, whole.
    old, new = big_model(1), big_model(2)
    dest = tmp_path / "model.onnx"
    data = tmp_path / "model.onnx.data"
    reference = tmp_path / "new" / "model.onnx"
    reference.parent.mkdir()
    trace = events_of(lambda: serde.save(new, reference, external_data=external))
    files = 2 if external else 1
    assert trace.count("synced") == trace.count("renamed") == files and trace.count("write") > 4 * files
    kind = "with external data" if external else "inline"
    landed = {"mid-write": 0, "written, not renamed": 0, "between the two renames": 0, "after the rename": 0}
    for spec, alive, renamed, in_write in kill_points(trace):
        assert forked_save(old, dest, external) == 0  # the old complete file(s)
        before = (sha(dest), sha(data))
        assert forked_save(new, dest, external, kill_at=spec) == KILLED, spec
        left = temps(tmp_path)
        assert len(left) == alive, (spec, left)
        assert (sha(dest) == before[0]) == (renamed < files), spec  # the model is renamed last
        if external:
            assert (sha(data) == before[1]) == (renamed == 0), spec
        if not external and not in_write:  # complete, under its temporary name or its own: the new file
            assert [sha(p) for p in left] + ([sha(dest)] if renamed else []) == [sha(reference)], spec
        if not external and in_write:  # a prefix of the new file: k chunks (the last may still be buffered)
            k, written = int(spec.split(":")[1]), left[0].read_bytes()
            assert written == reference.read_bytes()[: len(written)] and (k - 1) * faults.CHUNK <= len(written) <= k * faults.CHUNK, spec
        for p in left:
            p.unlink()
        if 0 < renamed < files:
            # Killed between the data file's rename and the model's (two files cannot be
            # renamed in one step): the old model beside the new data is refused, never
            # read with the wrong weights.
            with pytest.raises(InputError, match="written by different saves"):
                serde.load(dest)
            landed["between the two renames"] += 1
            continue
        assert same_model(serde.load(dest), new if renamed else old), spec
        landed["after the rename" if renamed else "mid-write" if in_write else "written, not renamed"] += 1
    figures.add(f"kills while saving a model ({kind})", len(trace))
    for where, n in landed.items():
        if n or external:
            figures.add(f"  ({kind}) {where}", n)


def test_kill_cli_extract_over_an_existing_file(tmp_path):
    source = tmp_path / "big.onnx"
    osg.save(big_model(3, mb=8), source)
    dest = tmp_path / "piece.onnx"
    argv = [sys.executable, "-m", "onnxsurgeon", "extract", str(source), "--in", "x", "--out", "h3", "-o", str(dest), "--force", "-q"]

    def extract(kill_at: str | None) -> int:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop(faults.ENV, None)
        if kill_at:
            env[faults.ENV] = kill_at
        return subprocess.run(argv, env=env, timeout=120).returncode

    assert extract(None) == 0
    new = dest.read_bytes()
    assert len(new) > 4 * faults.CHUNK  # four weights of 1 MiB: the write has five chunks
    old_model = big_model(4, mb=2)
    # (where, files left under a temporary name, what the destination holds)
    cases = [("write:1", "mid-write"), ("write:3", "mid-write"), ("synced:1", "written, not renamed"), ("renamed:1", "after the rename")]
    for spec, where in cases:
        osg.save(old_model, dest)
        old = dest.read_bytes()
        assert extract(spec) == KILLED, spec
        left = temps(tmp_path)
        if where == "after the rename":
            assert not left and dest.read_bytes() == new, spec
        else:
            assert len(left) == 1 and dest.read_bytes() == old, spec
            written = left[0].read_bytes()
            assert written == (new if where == "written, not renamed" else new[: len(written)]), spec
            assert where != "mid-write" or 0 < len(written) < len(new), spec
            left[0].unlink()
        osg.load(dest)
        figures.add("kills of onnxsurgeon extract -o existing --force", 1)
        figures.add(f"  (extract) {where}", 1)


EPOCHS, STEPS_PER_EPOCH = 4, 5  # 40 examples, batches of 8
TRAIN = ["train", "mlp.onnx", "--data", "train.npz", "--loss", "ce(y, labels)", "--optimizer", "adamw", "--lr", "0.05",
         "--epochs", str(EPOCHS), "--batch-size", "8", "--seed", "3", "--checkpoint-every", "1", "--keep", "2", "-q"]


def test_train_killed_then_resumed_ends_where_an_uninterrupted_run_ends(tmp_path):
    osg.save(mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "train.npz", **DATA)
    assert len(DATA["x"]) == 8 * STEPS_PER_EPOCH
    cmd = [sys.executable, "-m", "onnxsurgeon", *TRAIN]

    def train(folder: str, *extra: str, kill_at: str | None = None) -> tuple[int, str]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop(faults.ENV, None)
        if kill_at:
            env[faults.ENV] = kill_at
        proc = subprocess.run([*cmd, "--checkpoint-dir", folder, *extra], cwd=tmp_path, env=env, capture_output=True, timeout=300)
        assert b"Traceback" not in proc.stderr, proc.stderr.decode()
        return proc.returncode, proc.stdout.decode()

    code, _ = train("straight", "-o", "straight.onnx")
    assert code == 0
    want = {t.name: t.raw_data or numpy_helper.to_array(t).tobytes() for t in osg.load(tmp_path / "straight.onnx").graph.initializer}
    # The writes of one checkpoint (the checkpoints are the only files train writes
    # atomically before its output model, so the n-th checkpoint's writes follow the others').
    (tmp_path / "probe").mkdir()
    per_checkpoint = events_of(lambda: checkpoint.save(tmp_path / "probe", 1, b"state", {}, {"epoch": 0})).count("write")
    last = EPOCHS * STEPS_PER_EPOCH
    # (kill at, checkpoints left, temporary files left)
    cases = [
        ("step:1", [], 0),  # before the first checkpoint: resume starts afresh
        ("step:7", [6, 5], 0),  # after a step, before its checkpoint
        ("checkpoint:10", [10, 9, 8], 0),  # after a checkpoint, before the oldest is pruned
        (f"write:{per_checkpoint * 12 + per_checkpoint // 2}", [12, 11], 1),  # mid-write of checkpoint 13
        ("synced:15", [14, 13], 1),  # checkpoint 15 complete under its temporary name
        (f"checkpoint:{last}", [last, last - 1, last - 2], 0),  # the last one: resume has nothing left to do
    ]
    for k, (spec, expected, n_temps) in enumerate(cases):
        folder = tmp_path / f"run{k}"
        out = tmp_path / f"out{k}.onnx"
        code, _ = train(folder.name, "-o", out.name, kill_at=spec)
        assert code == KILLED, spec
        found = checkpoint.listing(folder)
        assert [step for step, _ in found] == expected, spec
        for step, path in found:  # every checkpoint left is whole
            assert checkpoint.read(path).meta["step"] == step
        assert len(temps(folder)) == n_temps, spec
        code, report = train(folder.name, "--resume", "-o", out.name, "--force", "--json")
        assert code == 0, spec
        resumed = json.loads(report)["resumed_from"]
        assert (Path(resumed).name if resumed else None) == (found[0][1].name if found else None), (spec, resumed)
        got = {t.name: t.raw_data or numpy_helper.to_array(t).tobytes() for t in osg.load(out).graph.initializer}
        assert got == want, f"{spec}: resumed parameters differ from the uninterrupted run"
        figures.add("kills of onnxsurgeon train --checkpoint-every 1, then --resume", 1)
        figures.add("  (train) resumed from the newest checkpoint left" if found else "  (train) no checkpoint left: started afresh", 1)
        figures.add("  (train) resumed runs bit-for-bit equal to the uninterrupted run", 1)


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
    assert code == 3, err
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
        assert proc.returncode == 3 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert sha(old) == before and not temps(mnt)
        figures.add("full-disk runs on a 1 MB tmpfs", 1)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_the_kill_hook_is_inert_unless_armed_and_read_in_one_place(tmp_path):
    faults.arm(None)
    with open(tmp_path / "f", "wb") as f:
        assert faults.watch(f) is f  # unarmed: the file itself, no wrapper
    faults.reached("write")
    assert faults.seen() == []
    for spec in ("write", "write:0", "write:-1", "wrtie:1", "step:1:2", " step:1"):
        with pytest.raises(ValueError, match=faults.ENV):
            faults.arm(spec)
    faults.arm(None)
    readers = [p.relative_to(ROOT).as_posix() for p in (ROOT / "onnxsurgeon").rglob("*.py") if faults.ENV in p.read_text()]
    assert readers == ["onnxsurgeon/faults.py"]
