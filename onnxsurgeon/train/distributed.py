"""Data-parallel training over MPI: every rank trains on its share of each global batch.

Under an MPI launcher (``mpiexec -n 4 onnxsurgeon train ...``, ``srun``) with ``mpi4py``
installed (the ``[mpi]`` extra), :func:`from_environment` returns an :class:`MPIWorld`; in
one process it returns :data:`SINGLE`, and nothing of MPI is imported. The training loop
talks to either through the same few calls, which cost nothing in one process:

- ``--batch-size`` is the global batch. Rank ``r`` of ``N`` takes the contiguous rows
  ``[n*r//N, n*(r+1)//N)`` of every global batch of ``n`` examples (:meth:`World.share_of`)
  and reads only those rows.
- The loss is a mean over the rank's rows, so each rank's gradients are scaled by its
  share ``n_r / n`` in place on onnxruntime's own buffers, then summed with ``Allreduce``
  in place (one non-blocking call per parameter, all awaited together): the sum is the
  gradient of the mean over the whole batch, as one process computes it, for unequal
  shares too. The step's loss and metrics travel in the same round, weighted the same way.
  Every rank then takes the same optimizer step (clipping and L2 terms see the summed
  gradient).
- The running statistics of BatchNormalization that trains are averaged over the ranks
  after every step, weighted by share, so every rank holds the same statistics; each
  rank's forward pass normalises with its own rows' statistics (no synchronised
  BatchNorm), so a model with BatchNorm trains slightly differently on N ranks than in one.
- Dropout masks are seeded from the seed, the step and the rank (rank 0 as one process).
- Rank 0 alone reads checkpoints, reports progress, writes the log, the checkpoints and
  the model; what it reads to resume is broadcast, and all ranks start from rank 0's
  parameters. Checkpoints hold global positions and sums only, so they do not depend on
  the number of ranks.

Failures: a user error every rank meets at the same point (a mismatch of graph or
settings, a checkpoint that does not fit, a diverging loss) is *collective*: every rank
raises it, rank 0 alone prints it, all exit with its code. Any other error on one rank
aborts the whole job (``MPI_Abort``) after that rank printed its message: a rank that
simply exited would leave the others waiting forever in the next collective call. Every
wait of the loop runs under a watchdog (``ONNXSURGEON_MPI_TIMEOUT`` seconds, default
600) that aborts the job when another rank stopped answering; a rank killed outright is
noticed by the launcher, which ends the job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from onnxsurgeon.errors import EnvironmentProblem, InputError, SurgeonError

T = TypeVar("T")

# Variables launchers set to the number of processes they started (MPICH/Intel MPI's hydra,
# Open MPI, MVAPICH, srun). SLURM_NTASKS is not among them: an sbatch script sees it too,
# while it runs as one process; srun sets SLURM_STEP_NUM_TASKS for the processes it starts.
SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
INSTALL_HINT = (
    "pip install 'onnxsurgeon[mpi]' (mpi4py and the mpich wheel; run the mpiexec of that environment), "
    "or pip install mpi4py built against your cluster's MPI; without a launcher, train runs in one process"
)
TIMEOUT_VARIABLE = "ONNXSURGEON_MPI_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
ABORT_GRACE = 0.5  # seconds between a rank's last message and MPI_Abort

_current: MPIWorld | None = None


def launcher_size(environ: Mapping[str, str] = os.environ) -> tuple[int, str] | None:
    """The number of processes a launcher started, and the variable that says so; None
    when no launcher variable is set."""
    for name in SIZE_VARIABLES:
        value = environ.get(name, "").strip()
        if value.isdigit():
            return int(value), name
    return None


def rank_seed(step_seed: int, rank: int) -> int:
    """The seed of onnxruntime's generator on `rank` for a step whose seed is `step_seed`
    (splitmix64 of both): rank 0 uses the step's seed as one process does."""
    if rank == 0:
        return step_seed
    z = (step_seed * 0x9E3779B97F4A7C15 + rank) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


def collective(error: SurgeonError) -> SurgeonError:
    """Mark `error` as raised by every rank alike (rank 0 alone reports it, no abort)."""
    error.collective = True  # type: ignore[attr-defined]
    return error


def collective_interrupt() -> KeyboardInterrupt:
    """The interruption every rank stops at (the stop flag is agreed on at every step)."""
    stop = KeyboardInterrupt()
    stop.collective = True  # type: ignore[attr-defined]
    return stop


def is_collective(error: BaseException) -> bool:
    return bool(getattr(error, "collective", False))


def current() -> MPIWorld | None:
    """The MPI world this process trains in, once :func:`from_environment` made one."""
    return _current


class World:
    """One process: every call is the identity. The base of :class:`MPIWorld`."""

    rank = 0
    size = 1

    @property
    def root(self) -> bool:
        return self.rank == 0

    def share_of(self, indices: np.ndarray) -> np.ndarray:
        """This rank's rows of a global batch: a contiguous slice, sizes differing by at most one."""
        n = len(indices)
        return indices[n * self.rank // self.size : n * (self.rank + 1) // self.size]

    def seed(self, step_seed: int) -> int:
        """The random seed of this rank for a step (Dropout masks)."""
        return step_seed

    def together(self, fn: Callable[[], T]) -> T:
        """Run `fn` on every rank; if it fails on any, every rank raises the first failing
        rank's error."""
        return fn()

    def from_root(self, fn: Callable[[], T]) -> T:
        """Run `fn` on rank 0 and give every rank its result (or its error)."""
        return fn()

    def agree(self, what: Mapping[str, Any]) -> None:
        """Check that every rank has the same `what` (graph hash, settings, data)."""

    def broadcast_(self, arrays: Sequence[np.ndarray]) -> None:
        """Overwrite `arrays` in place with rank 0's."""

    def reduce_step(
        self, grads: Sequence[np.ndarray], stats: Sequence[np.ndarray], scalars: Sequence[float], mine: int, total: int,
    ) -> list[float]:
        """Sum the gradients of a global batch of `total` examples of which this rank computed
        `mine`, average the running statistics, and average the step's `scalars` (loss,
        metrics); gradients and statistics in place. Returns the scalars of the whole batch."""
        return list(scalars)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Elementwise sum over the ranks."""
        return list(values)

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (a stop asked on one rank)."""
        return flag

    def to_dict(self) -> dict[str, Any]:
        return {"ranks": self.size}


SINGLE = World()


class MPIWorld(World):
    """The ranks of an MPI communicator (``MPI.COMM_WORLD`` under a launcher)."""

    def __init__(self, comm: Any, timeout: float = DEFAULT_TIMEOUT) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.timeout = timeout
        self.allreduce_seconds = 0.0  # the time spent waiting in reduce_step
        self.allreduce_bytes = 0  # the bytes this rank contributed to reduce_step's sums
        self._waiting: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._watchdog = threading.Thread(target=self._watch, name="onnxsurgeon-mpi-watchdog", daemon=True)
        self._watchdog.start()

    # --- failures -----------------------------------------------------------------------

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self._lock:
                waiting = self._waiting
            if waiting is not None and time.monotonic() > waiting[0]:
                self._say(
                    f"rank {self.rank} of {self.size} waited more than {self.timeout:g} s for the other ranks "
                    f"({waiting[1]}): one of them failed or hangs; ending the job "
                    f"(set {TIMEOUT_VARIABLE} to wait longer)"
                )
                self.abort(1)

    def _wait(self, what: str) -> _Deadline:
        return _Deadline(self, what)

    def _say(self, message: str) -> None:
        try:
            sys.stdout.flush()
            sys.stderr.write(f"onnxsurgeon: error: {message}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def abort(self, code: int) -> None:
        """End every rank of the job at once with exit `code`."""
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        # The launcher forwards what a rank printed through a pipe, and tears the job down
        # at the abort: give it time to pass this rank's message on first.
        time.sleep(ABORT_GRACE)
        try:
            self.comm.Abort(code)
        finally:  # Abort does not return; if the MPI library is broken, leave anyway
            os._exit(code)

    def speaks(self, error: BaseException) -> bool:
        """Whether this rank prints `error`: rank 0 a collective one, every rank its own."""
        return self.root or not is_collective(error)

    def tag(self, error: BaseException) -> str:
        """What to put before the message of `error`: the rank, when it is this rank's alone."""
        return "" if is_collective(error) else f"rank {self.rank} of {self.size}: "

    def end(self, error: BaseException, code: int) -> int:
        """After this rank printed (or not) `error`: a collective error ends every rank with
        `code` by itself; any other error aborts the job, or the other ranks would wait forever."""
        if is_collective(error):
            return code
        self.abort(code)
        return code  # not reached

    # --- collective calls -----------------------------------------------------------------

    def seed(self, step_seed: int) -> int:
        return rank_seed(step_seed, self.rank)

    def together(self, fn: Callable[[], T]) -> T:
        error: BaseException | None = None
        result: Any = None
        try:
            result = fn()
        except SurgeonError as e:
            error = e
        except Exception as e:  # a bug on this rank: it reports its traceback and aborts the job
            with self._wait("the set-up"):
                self.comm.allgather(("bug", f"{type(e).__name__}: {e}", None, 4))
            raise
        outcome = None if error is None else ("error", error.message, error.hint, error.exit_code)
        with self._wait("the set-up"):
            outcomes = self.comm.allgather(outcome)
        failed = [(r, o) for r, o in enumerate(outcomes) if o is not None]
        if not failed:
            return result
        rank, (kind, message, hint, code) = failed[0]
        if error is not None and rank == self.rank:
            raise collective(error)
        raise collective(_remote_error(rank, message, hint, code))

    def from_root(self, fn: Callable[[], T]) -> T:
        payload: Any = None
        if self.root:
            try:
                payload = ("ok", fn())
            except SurgeonError as e:
                with self._wait("rank 0 to read"):
                    self.comm.bcast(("error", (e.message, e.hint, e.exit_code)), root=0)
                raise collective(e)
            except Exception:
                with self._wait("rank 0 to read"):
                    self.comm.bcast(("error", ("rank 0 failed (internal error)", None, 4)), root=0)
                raise
        with self._wait("rank 0 to read"):
            payload = self.comm.bcast(payload, root=0)
        kind, value = payload
        if kind == "error":
            if self.root:  # not reached: rank 0 raised above
                raise AssertionError
            raise collective(_remote_error(0, *value))
        return value

    def agree(self, what: Mapping[str, Any]) -> None:
        mine = json.dumps(what, sort_keys=True, default=str)
        with self._wait("the check that every rank has the same graph and settings"):
            everyone = self.comm.allgather(mine)
        if all(x == everyone[0] for x in everyone):
            return
        ref = json.loads(everyone[0])
        lines = []
        for r, text in enumerate(everyone):
            if text == everyone[0]:
                continue
            theirs = json.loads(text)
            keys = [k for k in sorted(set(ref) | set(theirs)) if ref.get(k) != theirs.get(k)]
            lines.append(f"  - rank {r}: " + "; ".join(f"{k} {theirs.get(k)!r} (rank 0: {ref.get(k)!r})" for k in keys))
        raise collective(InputError(
            f"the {self.size} ranks do not train the same thing:\n" + "\n".join(lines),
            "give every rank the same model, data, loss and options (the same command line, the same files)",
        ))

    def broadcast_(self, arrays: Sequence[np.ndarray]) -> None:
        with self._wait("rank 0's parameters"):
            for a in arrays:
                self.comm.Bcast(a, root=0)

    def reduce_step(
        self, grads: Sequence[np.ndarray], stats: Sequence[np.ndarray], scalars: Sequence[float], mine: int, total: int,
    ) -> list[float]:
        MPI = self.MPI
        weight = np.float32(mine / total)
        for g in grads:
            if mine:
                g *= weight
            else:  # no rows for this rank in this batch: it adds nothing
                g[...] = 0
        for s in stats:
            s *= weight
        sums = np.array([v * mine for v in scalars] if mine else [0.0] * len(scalars), dtype=np.float64)
        t0 = time.perf_counter()
        with self._wait("the sum of the gradients"):
            requests = [self.comm.Iallreduce(MPI.IN_PLACE, a, op=MPI.SUM) for a in (*grads, *stats, sums)]
            MPI.Request.Waitall(requests)
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_bytes += sum(a.nbytes for a in (*grads, *stats, sums))
        return [float(v) / total for v in sums]

    def sum(self, values: Sequence[float]) -> list[float]:
        with self._wait("a sum over the ranks"):
            return [float(v) for v in self.comm.allreduce(np.asarray(values, dtype=np.float64), op=self.MPI.SUM)]

    def any(self, flag: bool) -> bool:
        with self._wait("the ranks' stop flags"):
            return bool(self.comm.allreduce(bool(flag), op=self.MPI.LOR))

    def to_dict(self) -> dict[str, Any]:
        return {"ranks": self.size, "allreduce_seconds": round(self.allreduce_seconds, 4), "allreduce_bytes": self.allreduce_bytes}


class _Deadline:
    """Arms the watchdog for one wait."""

    def __init__(self, world: MPIWorld, what: str) -> None:
        self.world, self.what = world, what

    def __enter__(self) -> None:
        with self.world._lock:
            self.world._waiting = (time.monotonic() + self.world.timeout, self.what)

    def __exit__(self, *exc: object) -> None:
        with self.world._lock:
            self.world._waiting = None


def _remote_error(rank: int, message: str, hint: str | None, code: int) -> SurgeonError:
    kind = {3: EnvironmentProblem}.get(code, InputError)
    error = kind(f"on rank {rank}: {message}" if rank else message, hint)
    error.exit_code = code
    return error


def from_environment(environ: Mapping[str, str] = os.environ) -> World:
    """The world this process was started in: :data:`SINGLE` unless a launcher started
    several processes, then MPI's ``COMM_WORLD`` (imported only then).

    Raises EnvironmentProblem (exit 3) when a launcher started several processes but
    mpi4py is missing, or sees one process only (an mpi4py built for another MPI than the
    launcher's): N independent runs would write the same files.
    """
    global _current
    found = launcher_size(environ)
    if found is None or found[0] <= 1:
        return SINGLE
    size, variable = found
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise EnvironmentProblem(
            f"started as one of {size} processes ({variable}={size}) but mpi4py is not installed ({e}); "
            "the processes cannot train together", INSTALL_HINT,
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != size:
        raise EnvironmentProblem(
            f"started as one of {size} processes ({variable}={size}) but MPI sees {comm.Get_size()}: "
            f"mpi4py is built for another MPI than the launcher ({MPI.Get_library_version().splitlines()[0].strip()})",
            "launch with the mpiexec of the MPI that mpi4py uses (the one beside python with the [mpi] extra), "
            "or install mpi4py built against the launcher's MPI",
        )
    timeout = environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(timeout) if timeout else DEFAULT_TIMEOUT
    except ValueError:
        raise InputError(f"{TIMEOUT_VARIABLE}={timeout!r} is not a number of seconds") from None
    if _current is None:
        _current = MPIWorld(comm, seconds)
    return _current


def fingerprint(settings: Any, graph_sha256: str, first_rows: Mapping[str, np.ndarray], examples: int) -> dict[str, Any]:
    """What every rank must have alike: the training graph, the settings, the number of
    examples and the data's first rows (as the data set reads them: types and shapes too)."""
    digest = hashlib.sha256()
    for name in sorted(first_rows):
        a = np.ascontiguousarray(first_rows[name])
        digest.update(f"{name}{a.dtype}{a.shape}".encode())
        digest.update(a.tobytes())
    fields = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            flat[prefix[:-1]] = value

    walk("", fields)
    return {"training graph": graph_sha256[:16], "examples": examples, "data (first rows)": digest.hexdigest()[:16], **flat}
