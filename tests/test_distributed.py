"""Data-parallel training over MPI: runs under ``mpiexec -n 2`` (subprocesses with timeouts)
against the same run in one process; failures of one rank; the launcher without mpi4py.

The MPI tests need mpi4py and an ``mpiexec`` (the ``[mpi]`` extra brings both; the test extra
too); they are skipped only when mpi4py is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxsurgeon.train import checkpoint, distributed

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from onnxsurgeon.cli import run; run()"]
HAVE_MPI = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py is not installed (pip install -e '.[mpi]')")


def mpiexec() -> str:
    found = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    if found is None:
        pytest.fail("mpi4py is installed but no mpiexec was found beside python or on PATH")
    return found


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.SIZE_VARIABLES and not k.startswith(("PMI_", "OMPI_"))}
    return {**env, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def mlp(sizes=(20, 32, 32, 5), seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits.append(numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"))
        inits.append(numpy_helper.from_array((0.1 * rng.standard_normal(b)).astype(np.float32), f"b{i}"))
        nodes += [helper.make_node("MatMul", [x, f"W{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["z"]))
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", sizes[-1]])], inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def params(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray], rtol: float = 1e-5) -> None:
    """Every parameter within `rtol` of the other, relative to its norm: the sums of the
    gradients differ only in the order of their terms."""
    assert a.keys() == b.keys()
    for k in a:
        assert np.linalg.norm(a[k] - b[k]) <= rtol * np.linalg.norm(a[k]), (k, np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mpi")
    onnx.save(mlp(), folder / "mlp.onnx")
    rng = np.random.default_rng(4)
    # 197 examples, batch 64: the last batch of each epoch has 5, shared 2 and 3 by two ranks
    np.savez(folder / "d.npz", x=rng.standard_normal((197, 20)).astype(np.float32), labels=rng.integers(0, 5, 197))
    return folder


def train(folder: Path, ranks: int, out: str, *extra: str, timeout: float = 180, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [*CLI, "train", str(folder / "mlp.onnx"), "--data", str(folder / "d.npz"), "--loss", "ce(z, labels)",
               "--metric", "error(z, labels)", "--batch-size", "64", "--seed", "3", "-o", str(folder / out), "--quiet", *extra]
    if ranks > 1:
        command = [mpiexec(), "-n", str(ranks), *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=folder, env=env or clean_env())


SGD = ("--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--epochs", "7", "--max-steps", "20")
# each rank updates its shard of every parameter: clipping needs the norm of all shards
SGD_CLIP = ("--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--nesterov", "--weight-decay", "0.001",
            "--clip-norm", "0.1", "--epochs", "7", "--max-steps", "20")
ADAM = ("--optimizer", "adam", "--lr", "0.01", "--weight-decay", "0.001", "--clip-norm", "0.5", "--schedule", "linear",
        "--warmup", "3", "--epochs", "7", "--max-steps", "20")


# ---------------------------------------------------------------- without MPI


def test_launcher_size_from_the_environment():
    assert distributed.launcher_size({}) is None
    assert distributed.launcher_size({"PMI_SIZE": "4"}) == (4, "PMI_SIZE")
    assert distributed.launcher_size({"OMPI_COMM_WORLD_SIZE": "2"}) == (2, "OMPI_COMM_WORLD_SIZE")
    assert distributed.launcher_size({"SLURM_STEP_NUM_TASKS": "8"}) == (8, "SLURM_STEP_NUM_TASKS")
    # an sbatch script runs as one process although its allocation has several tasks
    assert distributed.launcher_size({"SLURM_NTASKS": "8"}) is None
    assert distributed.from_environment({"PMI_SIZE": "1"}) is distributed.SINGLE


def test_rank_seeds_differ_and_rank_0_is_one_process():
    seeds = [distributed.rank_seed(12345, r) for r in range(8)]
    assert seeds[0] == 12345 and len(set(seeds)) == 8 and all(0 <= s < 2**31 for s in seeds)


def test_plain_train_imports_nothing_of_mpi(files, tmp_path):
    code = (
        "import sys; from onnxsurgeon.cli import main; "
        f"rc = main(['train', {str(files / 'mlp.onnx')!r}, '--data', {str(files / 'd.npz')!r}, '--loss', 'ce(z, labels)', "
        f"'--max-steps', '2', '-o', {str(tmp_path / 'o.onnx')!r}, '-q']); "
        "print([m for m in sys.modules if m.startswith('mpi4py')]); sys.exit(rc)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_launcher_without_mpi4py_exits_3_and_writes_nothing(files, tmp_path):
    code = (
        "import sys; sys.modules['mpi4py'] = None; from onnxsurgeon.cli import main; "  # as if not installed
        f"sys.exit(main(['train', {str(files / 'mlp.onnx')!r}, '--data', {str(files / 'd.npz')!r}, '--loss', 'ce(z, labels)', "
        f"'--checkpoint-dir', {str(tmp_path / 'ck')!r}, '-o', {str(tmp_path / 'o.onnx')!r}]))"
    )
    for variable in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env=clean_env(**{variable: "4"}))
        assert proc.returncode == 3, proc.stderr
        assert f"one of 4 processes ({variable}=4) but mpi4py is not installed" in proc.stderr
        assert "pip install 'onnxsurgeon[mpi]'" in proc.stderr and "Traceback" not in proc.stderr
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- under mpiexec -n 2


@needs_mpi
@pytest.mark.parametrize("optimizer", [SGD, SGD_CLIP, ADAM], ids=["sgd-momentum", "sgd-clip", "adam"])
def test_two_ranks_end_where_one_process_ends(files, optimizer):
    name = optimizer[1] + ("-clip" if "--clip-norm" in optimizer and optimizer[1] == "sgd" else "")
    one = train(files, 1, f"{name}1.onnx", *optimizer)
    two = train(files, 2, f"{name}2.onnx", *optimizer, "--log", str(files / f"{name}2.jsonl"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert_close(params(files / f"{name}1.onnx"), params(files / f"{name}2.onnx"))
    before = params(files / "mlp.onnx")
    assert all(np.linalg.norm(params(files / f"{name}2.onnx")[k] - before[k]) > 1e-3 for k in before)  # it trained
    # rank 0 alone wrote the log; its losses are those of the whole batch
    import json

    steps = [json.loads(line) for line in (files / f"{name}2.jsonl").read_text().splitlines()]
    steps = [e for e in steps if e["event"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 21)) and {e["examples"] for e in steps} == {64, 5}


@needs_mpi
def test_checkpoints_do_not_depend_on_the_number_of_ranks(files, tmp_path):
    """A 2-rank run stopped at step 9 resumes in 1 process, and a 1-process run on 3 ranks:
    both end where the run that never stopped ends."""
    straight = train(files, 1, "straight.onnx", *SGD)
    assert straight.returncode == 0, straight.stderr
    ck = str(tmp_path / "ck2")
    first = train(files, 2, "x.onnx", *SGD[:-1], "9", "--checkpoint-dir", ck)
    assert first.returncode == 0, first.stderr
    assert checkpoint.newest_intact(ck)[0].step == 9
    second = train(files, 1, "resumed1.onnx", *SGD[:-1], "11", "--checkpoint-dir", ck, "--resume")  # --max-steps: of this run
    assert second.returncode == 0, second.stderr
    assert_close(params(files / "straight.onnx"), params(files / "resumed1.onnx"))

    ck = str(tmp_path / "ck1")
    first = train(files, 1, "x.onnx", *SGD[:-1], "6", "--checkpoint-dir", ck)
    second = train(files, 3, "resumed3.onnx", *SGD[:-1], "14", "--checkpoint-dir", ck, "--resume")
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert_close(params(files / "straight.onnx"), params(files / "resumed3.onnx"))


@needs_mpi
def test_batchnorm_statistics_are_the_share_weighted_mean_over_ranks(tmp_path):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((7, 4)) * [1, 2, 3, 4] + [0, 1, -1, 2]).astype(np.float32)
    t = rng.standard_normal((7, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for n, a in (
        ("scale", np.ones(4, np.float32)), ("bias", np.zeros(4, np.float32)), ("mean", np.full(4, 0.5, np.float32)),
        ("var", np.full(4, 2.0, np.float32)), ("W", rng.standard_normal((4, 3)).astype(np.float32)))]
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["h"], epsilon=1e-5, momentum=0.9),
         helper.make_node("MatMul", ["h", "W"], ["y"])],
        "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "bn.onnx")
    np.savez(tmp_path / "d.npz", x=x, t=t)
    proc = subprocess.run(
        [mpiexec(), "-n", "2", *CLI, "train", str(tmp_path / "bn.onnx"), "--data", str(tmp_path / "d.npz"), "--loss", "mse(y, t)",
         "--optimizer", "sgd", "--lr", "0.1", "--batch-size", "7", "--no-shuffle", "-o", str(tmp_path / "out.onnx"), "-q"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=clean_env(),
    )
    assert proc.returncode == 0, proc.stderr
    got = params(tmp_path / "out.onnx")
    a, b = x[:3].astype(np.float64), x[3:].astype(np.float64)  # rank 0 has 3 rows, rank 1 has 4
    np.testing.assert_allclose(got["mean"], 0.9 * 0.5 + 0.1 * (3 * a.mean(0) + 4 * b.mean(0)) / 7, rtol=1e-6)
    np.testing.assert_allclose(got["var"], 0.9 * 2.0 + 0.1 * (3 * a.var(0) + 4 * b.var(0)) / 7, rtol=1e-5)
    # not the statistics of the whole batch, nor those of rank 0's rows
    assert not np.allclose(got["var"], 0.9 * 2.0 + 0.1 * x.astype(np.float64).var(0), rtol=1e-3)
    assert not np.allclose(got["var"], 0.9 * 2.0 + 0.1 * a.var(0), rtol=1e-3)


@needs_mpi
def test_ranks_that_differ_stop_every_rank_with_a_clear_error(files, tmp_path):
    other = mlp(seed=1)
    onnx.save(other, tmp_path / "other.onnx")
    with np.load(files / "d.npz") as d:
        np.savez(tmp_path / "d2.npz", x=d["x"][::-1], labels=d["labels"])
    base = [*CLI, "train", "--loss", "ce(z, labels)", "-o", str(tmp_path / "o.onnx")]
    data = ["--data", str(files / "d.npz")]
    for rank1, what in (
        ([str(tmp_path / "other.onnx"), *data], "training graph"),
        ([str(files / "mlp.onnx"), *data, "--lr", "0.5"], "optimizer.lr 0.5"),
        ([str(files / "mlp.onnx"), "--data", str(tmp_path / "d2.npz")], "data (first rows)"),
    ):
        command = [mpiexec(), "-n", "1", *base, str(files / "mlp.onnx"), *data, ":", "-n", "1", *base, *rank1]
        t0 = time.monotonic()
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env())
        assert proc.returncode == 2, proc.stderr
        assert time.monotonic() - t0 < 60
        assert "the 2 ranks do not train the same thing" in proc.stderr and f"rank 1: {what}" in proc.stderr
        assert proc.stderr.count("onnxsurgeon: error:") == 1  # rank 0 alone reports it
        assert not (tmp_path / "o.onnx").exists()


@needs_mpi
def test_an_error_on_one_rank_ends_the_job_with_its_message(files, tmp_path):
    base = [*CLI, "train", str(files / "mlp.onnx"), "--loss", "ce(z, labels)", "-o", str(tmp_path / "o.onnx")]
    command = [mpiexec(), "-n", "1", *base, "--data", str(files / "d.npz"), ":", "-n", "1", *base, "--data", str(tmp_path / "gone.npz")]
    t0 = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_env())
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    seen = f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    assert "onnxsurgeon: error: rank 1 of 2: no such file" in proc.stderr and "gone.npz" in proc.stderr, seen
    assert not (tmp_path / "o.onnx").exists()


def _rank_pid(marker: str, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"ONNXSURGEON_TEST_MARKER={marker}".encode() in env and f"PMI_RANK={rank}".encode() in env:
            cmd = (entry / "cmdline").read_bytes()
            if b"onnxsurgeon.cli" in cmd:
                return int(entry.name)
    return None


def _start_long_run(files: Path, tmp_path: Path, marker: str, **env: str) -> tuple[subprocess.Popen, Path, list[str]]:
    np.savez(tmp_path / "long.npz", x=np.random.default_rng(0).standard_normal((64 * 40, 20)).astype(np.float32),
             labels=np.random.default_rng(1).integers(0, 5, 64 * 40))
    ck = tmp_path / "ck"
    args = ["train", str(files / "mlp.onnx"), "--data", str(tmp_path / "long.npz"), "--loss", "ce(z, labels)", "--optimizer",
            "sgd", "--lr", "0.01", "--momentum", "0.9", "--batch-size", "64", "--epochs", "400", "--checkpoint-dir", str(ck),
            "--checkpoint-every", "10", "-o", str(tmp_path / "o.onnx"), "-q"]
    proc = subprocess.Popen([mpiexec(), "-n", "2", *CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(ONNXSURGEON_TEST_MARKER=marker, **env), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not checkpoint.listing(ck) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert checkpoint.listing(ck), "no checkpoint was written"
    return proc, ck, args


@needs_mpi
def test_kill_9_of_one_rank_ends_the_job_and_resume_finishes(files, tmp_path):
    marker = f"kill-{os.getpid()}"
    proc, ck, args = _start_long_run(files, tmp_path, marker)
    pid = _rank_pid(marker, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job did not end within 60 s of kill -9 of rank 1")
    assert proc.returncode != 0 and time.monotonic() - t0 < 60
    found, warnings = checkpoint.newest_intact(ck)
    assert found is not None and not warnings
    assert not [p for p in ck.iterdir() if p.name.startswith(".")]
    # resume, to a nearby end, on 2 ranks
    end = found.step + 5
    resumed = subprocess.run([mpiexec(), "-n", "2", *CLI, *args, "--resume", "--max-steps", "5", "--json"],
                             capture_output=True, text=True, timeout=180, env=clean_env(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert checkpoint.newest_intact(ck)[0].step == end
    assert (tmp_path / "o.onnx").exists()


@needs_mpi
def test_a_rank_that_stops_answering_ends_the_job_after_the_timeout(files, tmp_path):
    marker = f"stop-{os.getpid()}"
    proc, ck, _ = _start_long_run(files, tmp_path, marker, ONNXSURGEON_MPI_TIMEOUT="3")
    pid = _rank_pid(marker, 1)
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # alive, but silent: the launcher sees nothing wrong
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.kill(pid, signal.SIGKILL)
        proc.kill()
        pytest.fail("the job did not end within 60 s of rank 1 stopping")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode != 0
    assert "rank 0 of 2 waited more than 3 s for the other ranks" in err
    assert checkpoint.newest_intact(ck)[1] == []


@needs_mpi
def test_ctrl_c_stops_every_rank_at_the_same_step_with_a_checkpoint(files, tmp_path):
    proc, ck, args = _start_long_run(files, tmp_path, f"int-{os.getpid()}")
    proc.send_signal(signal.SIGINT)  # mpiexec passes Ctrl-C on to every rank
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job did not end within 60 s of Ctrl-C")
    assert proc.returncode == 130, err
    assert err.count("interrupted at step") == 1  # rank 0 alone reports
    step = int(err.split("interrupted at step ")[1].split(";")[0])
    assert checkpoint.newest_intact(ck)[0].step == step
    assert not (tmp_path / "o.onnx").exists()
