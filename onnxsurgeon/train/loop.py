"""Training a model on with onnxruntime-training: the run from data to trained model.

:func:`train` prepares the model (:mod:`~onnxsurgeon.train.prepare`), compiles the loss and
metrics into it (:mod:`~onnxsurgeon.train.losses`), checks the data, builds the training
artifacts in a temporary folder, runs the steps and writes the trained values back into
the *original* model (modes and metadata kept), so that the result can be cut, composed and
trained again.

Exact resume: everything a step depends on is either stored in the checkpoint (parameters,
updated statistics, optimizer state, the epoch's running sums) or a pure function of the
seed and the step (the order of examples, the learning rate, the Dropout masks, for which
onnxruntime's random generator is re-seeded before every step). One thread by default:
onnxruntime's sums are then computed in a fixed order.

The library never prints: it reports through the optional ``progress`` callback, which
receives one dict per event (``start``, ``step``, ``epoch``, ``checkpoint``, ``warning``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxsurgeon import __version__, checks, faults, runtime
from onnxsurgeon.errors import InputError
from onnxsurgeon.expr import TensorType
from onnxsurgeon.train import artifacts, checkpoint, data as data_mod, distributed, losses, ort, prepare, weights
from onnxsurgeon.train.optim import SGD, Buffers, OptimizerSettings, Schedule, clip_, l2_

Progress = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class TrainSettings:
    """Everything that decides a run (the CLI's options)."""

    loss: str
    metrics: tuple[str, ...] = ()
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: Schedule = field(default_factory=Schedule)
    epochs: int = 1
    batch_size: int = 32
    seed: int = 0
    shuffle: bool = True
    freeze: tuple[str, ...] = ()
    checkpoint_dir: str | None = None
    checkpoint_every: int | None = None
    keep: int | None = 3  # None keeps every checkpoint
    resume: bool = False
    resume_from: str | None = None  # a chosen checkpoint file to continue from
    overwrite: bool = False  # a fresh run may replace the checkpoints in checkpoint_dir
    max_steps: int | None = None  # stop this run after so many steps (resume later)
    threads: int = 1
    fixed: tuple[str, ...] = ()  # data arrays fed whole at every step
    batch_axes: tuple[tuple[str, int], ...] = ()  # (array, axis): its examples lie on that axis

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_axes", self.layout.batch_axes)
        problems = []
        if self.epochs < 1:
            problems.append(f"--epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            problems.append(f"--checkpoint-every must be at least 1, not {self.checkpoint_every}")
        if self.keep is not None and self.keep < 1:
            problems.append(f"--keep must be at least 1 or 'all', not {self.keep}")
        if self.max_steps is not None and self.max_steps < 0:
            problems.append("--max-steps must be >= 0")
        if self.threads < 1:
            problems.append("--threads must be at least 1")
        elif self.threads > _cores():
            # more threads than cores only slows onnxruntime down: thousands take minutes to start
            problems.append(f"--threads {self.threads} is more than the {_cores()} cores this process may use")
        if self.seed < 0:
            problems.append(f"--seed must be a non-negative integer, not {self.seed}")
        if (self.resume or self.checkpoint_every) and not self.checkpoint_dir:
            problems.append("--resume and --checkpoint-every need --checkpoint-dir DIR")
        if problems:
            raise InputError("; ".join(problems))


    @property
    def layout(self) -> data_mod.Layout:
        return data_mod.Layout(self.fixed, self.batch_axes)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may run on (taskset, containers)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class EpochResult:
    """The means of one epoch: loss and metrics on the training data, and on validation data."""

    epoch: int  # 1-based
    steps: int
    examples: int
    loss: float
    metrics: dict[str, float]
    val: dict[str, float] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "steps": self.steps, "examples": self.examples, "loss": self.loss,
            "metrics": dict(self.metrics), "val": dict(self.val) if self.val is not None else None,
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True)
class TrainReport:
    """What a run did."""

    steps: int  # the total step count reached (over all runs)
    steps_run: int  # steps this run took
    epochs_done: float
    epochs: int
    finished: bool
    interrupted: bool
    seconds: float
    examples_per_second: float
    plan: prepare.TrainPlan
    objective: losses.Objective
    optimizer: OptimizerSettings
    schedule: Schedule
    data: data_mod.Dataset
    val: data_mod.Dataset | None
    history: tuple[EpochResult, ...]
    resumed_from: str | None
    checkpoints: tuple[str, ...]
    graph_sha256: str
    warnings: tuple[str, ...]
    world: dict[str, Any] = field(default_factory=lambda: {"ranks": 1})  # ranks; allreduce time and bytes

    @property
    def final(self) -> EpochResult | None:
        return self.history[-1] if self.history else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps, "steps_run": self.steps_run, "epochs_done": self.epochs_done, "epochs": self.epochs,
            "finished": self.finished, "interrupted": self.interrupted, "seconds": round(self.seconds, 3),
            "examples_per_second": round(self.examples_per_second, 1),
            "plan": self.plan.to_dict(), "objective": self.objective.to_dict(),
            "optimizer": self.optimizer.to_dict(), "schedule": self.schedule.to_dict(),
            "data": self.data.to_dict(), "val": self.val.to_dict() if self.val else None,
            "history": [e.to_dict() for e in self.history], "resumed_from": self.resumed_from,
            "checkpoints": list(self.checkpoints), "graph_sha256": self.graph_sha256, "warnings": list(self.warnings),
            "world": dict(self.world),
        }


@dataclass(frozen=True)
class Compiled:
    """The training graph: the prepared model with the loss and metrics, and the plan."""

    model: onnx.ModelProto
    objective: losses.Objective
    plan: prepare.TrainPlan
    wanted: dict[str, TensorType]  # what the data must hold
    sha256: str


def compile_training(
    model: onnx.ModelProto, /, arrays: Mapping[str, np.ndarray], loss: str, metrics: tuple[str, ...] = (),
    freeze: tuple[str, ...] = (), layout: data_mod.Layout | None = None,
) -> Compiled:
    """Prepare `model`, compile `loss` and `metrics` into it and decide what is trained."""
    try:
        frozen, unmatched = prepare.frozen_names(model, freeze), None
    except InputError as e:  # reported with the loss's unknown names, if any: every miss at once
        frozen, unmatched = prepare.frozen_names(model), e
    layout = layout or data_mod.Layout()
    prepared, prep = prepare.prepare(model, frozen, data_mod.fixed_values(model, arrays, layout))
    prepare.pin_shapes(prepared, arrays, layout.bind(list(arrays))[0])
    params = prepare.candidates(prepared, frozen, prep.running_stats)
    read = losses.names_read([loss, *metrics])
    model_values, data_names, missing = losses.split_names(prepared, read, arrays)
    problems = [unmatched] if unmatched else []
    if missing:
        problems.append(losses.unknown_names_error(missing, prepared, arrays, "the data"))
    if problems:  # a miss of --fixed or --batch-axis too (alone, the data check reports it)
        _, misses = layout.bind(list(arrays))
        if misses:
            problems.append(InputError("; ".join(misses), "give --fixed and --batch-axis names of arrays in the data"))
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise InputError(
            f"{len(problems)} problems with the names given:\n" + "\n".join(f"  - {e.message}" for e in problems),
            "; ".join(e.hint for e in problems if e.hint),
        )
    axes, _ = (layout or data_mod.Layout()).bind(list(arrays))
    batch = losses.batch_symbol(prepared, axes)
    float_elem = _float_elem(prepared)
    types = {n: losses.data_type(_array_like(arrays[n]), float_elem, batch, axes.get(n, 0)) for n in data_names}
    objective_model, objective = losses.compile_objective(prepared, loss, metrics, types, params, batch)
    plan = prepare.plan(objective_model, objective.loss_output or "", params, prep)
    wanted = data_mod.graph_inputs(objective_model)
    digest = hashlib.sha256(objective_model.SerializeToString())
    digest.update(repr((plan.trainable, plan.running_stats)).encode())
    return Compiled(objective_model, objective, plan, wanted, digest.hexdigest())


def _array_like(value: Any) -> Any:
    return value if hasattr(value, "dtype") and hasattr(value, "shape") else np.asarray(value)


def _float_elem(model: onnx.ModelProto) -> int:
    for t in model.graph.initializer:
        if t.data_type in losses.FLOATS and len(t.dims) >= 1:
            return t.data_type
    return onnx.TensorProto.FLOAT


def step_seed(seed: int, step: int) -> int:
    """The seed of onnxruntime's random generator (Dropout masks) for one step: a
    splitmix64 mix of the run's seed and the step, so that nearby steps get unrelated seeds."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFF


def train(
    model: onnx.ModelProto,
    /,
    data: Mapping[str, np.ndarray],
    settings: TrainSettings,
    *,
    val: Mapping[str, np.ndarray] | None = None,
    data_label: str = "the training data",
    val_label: str = "the validation data",
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    world: distributed.World = distributed.SINGLE,
) -> tuple[onnx.ModelProto, TrainReport]:
    """Train `model` on `data` (arrays named after graph inputs and loss names) and return the
    model with its trained parameters, and a report. `stop` is asked before every step; when
    it says yes the run checkpoints and ends (``report.interrupted``).

    With an MPI `world` (:func:`onnxsurgeon.train.distributed.from_environment`) every rank
    calls this alike and trains on its share of each batch; rank 0 alone reports progress
    and writes checkpoints, and every rank returns the same model."""

    def set_up():
        layout = settings.layout
        compiled = compile_training(model, data, settings.loss, settings.metrics, settings.freeze, layout)
        train_set = data_mod.check(data, compiled.wanted, data_label, settings.batch_size, layout)
        val_set = data_mod.check(val, compiled.wanted, val_label, layout=layout) if val is not None else None
        for checked in (train_set, val_set):
            if checked is not None:
                data_mod.check_class_indices(checked, compiled.objective.class_indices)
        return compiled, train_set, val_set

    compiled, train_set, val_set = world.together(set_up)
    first_rows = world.together(lambda: train_set.batch(np.arange(min(16, train_set.examples))))
    fingerprint = distributed.fingerprint(settings, compiled.sha256, first_rows, train_set.examples)
    world.agree(fingerprint)
    with tempfile.TemporaryDirectory(prefix="onnxsurgeon-train-") as work:
        paths = world.together(lambda: artifacts.build(
            compiled.model, list(compiled.plan.trainable), list(compiled.plan.running_stats), work,
            settings.optimizer.ort_adamw(),
        ))
        quiet = progress is None or not world.root  # rank 0 alone reports
        run = _Run(paths, compiled, settings, train_set, val_set, (lambda e: None) if quiet else progress, stop, Path(work), world,
                   data_rows=fingerprint["data (first rows)"])
        try:
            run.start()
            run.loop()
            values = run.values()
            report = run.report()
        finally:
            if run.lock is not None:
                run.lock.release()
    record = {
        "steps": report.steps, "epochs": report.epochs_done, "loss": settings.loss,
        "optimizer": settings.optimizer.to_dict(), "graph_sha256": compiled.sha256, "onnxsurgeon": __version__,
    }
    trained = weights.write_back(model, values, record)
    more = checks.check_result(trained, "a trained model", [model])
    if more:
        for message in more:
            if progress is not None and world.root:
                progress({"event": "warning", "message": message})
        report = dataclasses.replace(report, warnings=report.warnings + tuple(more))
    return trained, report


def rehearse(model: onnx.ModelProto, /, data: Mapping[str, np.ndarray], settings: TrainSettings, *, data_label: str = "the training data") -> float:
    """What ``--dry-run`` does beyond the checks: build the artifacts and the training session
    and run one step on the first batch, in a temporary folder, so that what onnxruntime
    refuses (a missing kernel, a shape it rejects) is reported before a long run. Nothing is
    written or kept; returns the loss of that step."""
    one = dataclasses.replace(settings, epochs=1, max_steps=1, checkpoint_dir=None, checkpoint_every=None, resume=False)
    compiled = compile_training(model, data, one.loss, one.metrics, one.freeze, one.layout)
    train_set = data_mod.check(data, compiled.wanted, data_label, one.batch_size, one.layout)
    steps: list[float] = []
    with tempfile.TemporaryDirectory(prefix="onnxsurgeon-dry-run-") as work:
        paths = artifacts.build(compiled.model, list(compiled.plan.trainable), list(compiled.plan.running_stats), work, one.optimizer.ort_adamw())
        run = _Run(paths, compiled, one, train_set, None, lambda e: steps.append(e["loss"]) if e["event"] == "step" else None, None, Path(work))
        run.start()
        run.loop()
    return steps[0] if steps else math.nan


class _Run:
    """The sessions and counters of one run."""

    def __init__(self, paths, compiled: Compiled, settings: TrainSettings, train_set, val_set, progress: Progress, stop, work: Path,
                 world: distributed.World = distributed.SINGLE, data_rows: str | None = None) -> None:
        self.paths, self.compiled, self.settings, self.world = paths, compiled, settings, world
        self.lock: checkpoint.FolderLock | None = None
        self.data_rows = data_rows  # a digest of the training data's first rows
        self.train_set, self.val_set = train_set, val_set
        self.progress, self.stop, self.work = progress, stop, work
        self.api = ort.api()
        self.spe = data_mod.steps_per_epoch(train_set.examples, settings.batch_size)
        self.total = settings.epochs * self.spe
        self.step = self.epoch = self.batch = 0
        self.sums = self._zero_sums()
        self.history: list[EpochResult] = []
        self.warnings: list[str] = []
        self.written: list[str] = []
        self.last_saved = -1
        self.resumed_from: str | None = None
        self.interrupted = False
        self.steps_run = 0
        self.run_examples = 0
        self.started = time.perf_counter()
        self.run_seconds = 0.0
        self.epoch_started = self.started

    # --- set-up -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _onnxruntime(self, what: str) -> Iterator[None]:
        """onnxruntime's errors as user errors naming the forward node (runtime.failure)."""
        try:
            yield
        except Exception as e:
            if not runtime.from_onnxruntime(e):
                raise
            raise runtime.failure(e, what, self.compiled.model.graph) from None

    def _zero_sums(self) -> dict[str, Any]:
        return {"examples": 0, "steps": 0, "loss": 0.0, "metrics": [0.0] * len(self.compiled.objective.metrics), "seconds": 0.0}

    def _open(self, checkpoint_path: Path) -> None:
        options = ort.session_options()
        options.intra_op_num_threads = self.settings.threads
        with self._onnxruntime("onnxruntime-training cannot build the training session"):
            self.state = self.api.CheckpointState.load_checkpoint(checkpoint_path)
            self.module = self.api.Module(str(self.paths.training_model), self.state, str(self.paths.eval_model), session_options=options)
            self.optimizer = None
            if self.settings.optimizer.name != "sgd":
                self.optimizer = self.api.Optimizer(str(self.paths.optimizer_model), self.module)
        trainable = list(self.compiled.plan.trainable)
        self.buffers = Buffers(self.state, trainable)
        self.stats = Buffers(self.state, list(self.compiled.plan.running_stats), grads=False).params
        self.sgd = SGD(self.settings.optimizer, self.buffers) if self.optimizer is None else None
        self.train_inputs = self.module.input_names()
        self.module.eval()
        self.eval_inputs = self.module.input_names()
        eval_outputs = self.module.output_names()
        self.module.train()
        outputs = self.module.output_names()
        obj = self.compiled.objective
        self.metric_index = [outputs.index(v) for _, v in obj.metrics]
        self.eval_metric_index = [eval_outputs.index(v) for _, v in obj.metrics]
        missing = [n for n in self.train_inputs if n not in self.train_set.arrays]
        if missing:  # check() covered the graph's inputs; this is a bug if it happens
            raise RuntimeError(f"training model reads {missing}, which the data check did not provide")

    def start(self) -> None:
        self.keep = self.settings.keep
        self.parts = checkpoint.graph_parts(self.compiled.model)
        self._replaced: list[Path] = []  # checkpoints --overwrite replaces (found by rank 0)
        found = self.world.from_root(self._find)  # rank 0 reads; every rank gets what it read
        if found is None:
            self._open(self.paths.checkpoint)
        else:
            self.world.together(lambda: self._check_resume(found))
            blob = self.work / "resume_state"
            blob.write_bytes(found.ort_state)
            self._open(blob)
            if self.sgd is not None and self.sgd.momentum:
                self.sgd.load(found.arrays)
            m = found.meta
            self.step, self.epoch, self.batch = int(m["step"]), int(m["epoch"]), int(m["batch"])
            self.sums = m["epoch_sums"]
            self.history = [EpochResult(**e) for e in m.get("history", [])]
            self.resumed_from = str(found.path)
        checkpoint.remove(self._replaced)  # every check passed: the old run's files may go
        self.world.broadcast_([*self.buffers.params.values(), *self.stats.values()])  # all start from rank 0's
        self.progress({
            "event": "start", "step": self.step, "epoch": self.epoch, "total_steps": self.total,
            "steps_per_epoch": self.spe, "epochs": self.settings.epochs, "resumed_from": self.resumed_from,
            "trainable": list(self.compiled.plan.trainable),
        })

    def _find(self) -> checkpoint.Checkpoint | None:
        """The checkpoint to resume from, if any (read by rank 0 alone)."""
        folder = self.settings.checkpoint_dir
        if folder is not None:
            checkpoint.make_folder(folder)
            self.lock = checkpoint.FolderLock(folder)  # released by train() when the run ends
        found = None
        if self.settings.resume_from is not None:
            given = Path(self.settings.resume_from)
            if given.is_dir():
                raise InputError(
                    f"--resume-from {given} is a folder, not a checkpoint file",
                    f"name one of its step-*.ckpt files, or continue from its newest with --checkpoint-dir {given} --resume",
                )
            if not given.is_file():
                raise InputError(f"no such checkpoint file: {given}", "name a step-*.ckpt file of a checkpoint folder")
            found = checkpoint.read(self.settings.resume_from)
            if folder is not None:
                self._replaced = checkpoint.check_target(folder, found, self.settings.overwrite)
        elif self.settings.resume:
            found, warnings = checkpoint.newest_intact(folder)  # type: ignore[arg-type]
            for w in warnings:
                self._warn(w)
            if found is None:
                self._warn(f"no checkpoint in {folder} to resume from; starting from the beginning")
        elif folder is not None:
            self._replaced = checkpoint.check_fresh(folder, self.settings.overwrite)
        return found

    def _check_resume(self, found: checkpoint.Checkpoint) -> None:
        """Everything that must hold before resuming from `found` (on every rank)."""
        self._check_fits(found)
        checkpoint.check_not_past_end(found, self.total, self.spe, self.settings.epochs)
        self.keep = checkpoint.wider_keep(self.settings.keep, found)
        if self.keep != self.settings.keep:
            self._warn(f"keeping {checkpoint.keep_label(self.keep)} checkpoints, as the run that wrote {found.path} asked")

    def _expected(self) -> dict[str, Any]:
        s = self.settings
        return {
            "examples": self.train_set.examples, "batch_size": s.batch_size, "seed": s.seed, "shuffle": s.shuffle,
            "optimizer": s.optimizer.name, "momentum": bool(s.optimizer.name == "sgd" and s.optimizer.momentum),
            **s.layout.to_dict(),  # checkpoints written before --fixed existed lack these: read as the defaults
        }

    def _check_fits(self, found: checkpoint.Checkpoint) -> None:
        m = found.meta
        have = {k: tuple(v) for k, v in m.get("parameters", {}).items()}
        want = self._parameter_shapes()
        missing = sorted(set(want) - set(have))
        unexpected = sorted(set(have) - set(want))
        shapes = sorted(f"{k} {list(have[k])} (model {list(want[k])})" for k in set(have) & set(want) if have[k] != want[k])
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append("not in the checkpoint: " + ", ".join(missing))
            if unexpected:
                parts.append("not trained in this model: " + ", ".join(unexpected))
            if shapes:
                parts.append("other shapes: " + ", ".join(shapes))
            raise InputError(
                f"checkpoint {found.path} does not fit the model:\n" + "\n".join(f"  - {p}" for p in parts),
                "resume with the model, loss and --freeze it was written for, or start afresh in another "
                "--checkpoint-dir (onnxsurgeon transfer copies parameters across)",
            )
        if m.get("graph_sha256") != self.compiled.sha256:
            what = []
            if m.get("loss") != self.settings.loss:
                what.append(f"the loss was {m.get('loss')!r}")
            if list(m.get("metrics", [])) != list(self.settings.metrics):
                what.append(f"the metrics were {m.get('metrics')}")
            if not what:
                changed = checkpoint.describe_change(m.get("graph_parts"), self.parts)
                what.append(f"the model changed: {changed}" if changed else "the model changed")
            raise InputError(
                f"checkpoint {found.path} was written for another training graph ({'; '.join(what)})",
                "resume with the same model, loss and metrics (the model the run started from), or start "
                "afresh in another --checkpoint-dir",
            )
        s = self.settings
        for note in checkpoint.compare_settings(found, self._expected(), s.optimizer.to_dict(), s.schedule.to_dict(), s.epochs):
            self._warn(note)
        written_on = m.get("data_first_rows")  # absent in checkpoints of older versions
        if written_on is not None and self.data_rows is not None and written_on != self.data_rows:
            self._warn(
                f"resuming {found.path} on other data than its run (the first examples differ, their number is the same); "
                "the result differs from an uninterrupted run on either"
            )

    def _parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        inits = {t.name: tuple(t.dims) for t in self.compiled.model.graph.initializer}
        names = [*self.compiled.plan.trainable, *self.compiled.plan.running_stats]
        return {n: inits[n] for n in names}

    # --- the loop ---------------------------------------------------------------------------

    def loop(self) -> None:
        s = self.settings
        opt = s.optimizer
        budget = s.max_steps
        import onnxruntime

        obj = self.compiled.objective
        metric_names = [t for t, _ in obj.metrics]
        while self.epoch < s.epochs:
            if self.batch == 0 and self.sums["steps"] == 0:
                self.epoch_started = time.perf_counter()
            for b, idx in data_mod.batches(self.train_set.examples, s.batch_size, s.seed, self.epoch, self.batch, s.shuffle):
                if budget is not None and self.steps_run >= budget:
                    self._stopped()
                    return
                if self.world.any(self.stop is not None and self.stop()):
                    self.interrupted = True
                    self._stopped()
                    return
                t0 = time.perf_counter()
                mine = self.world.share_of(idx)  # this rank's rows of the global batch (all of it in one process)
                lr = opt.lr * s.schedule.factor(self.step, self.total)
                values = [math.nan] * (1 + len(self.metric_index))
                if len(mine):
                    batch = self.train_set.batch(mine)
                    onnxruntime.set_seed(self.world.seed(step_seed(s.seed, self.step)))
                    with self._onnxruntime(f"training step {self.step + 1} failed"):
                        outs = self.module(*[batch[n] for n in self.train_inputs])
                    outs = outs if isinstance(outs, tuple) else (outs,)
                    values = [float(outs[0]), *(float(outs[i]) for i in self.metric_index)]
                loss, *values = self.world.reduce_step(
                    list(self.buffers.grads.values()), list(self.stats.values()), values, len(mine), len(idx),
                )
                if not math.isfinite(loss):
                    raise distributed.collective(InputError(
                        f"the loss is {loss} at step {self.step + 1} (epoch {self.epoch + 1}): training diverged",
                        "lower --lr, add --clip-norm, or check the data for inf/nan",
                    ))
                if opt.clip_norm is not None:
                    clip_(self.buffers.grads, opt.clip_norm)
                if self.optimizer is not None:
                    if opt.name == "adam":
                        l2_(self.buffers.grads, self.buffers.params, opt.decay)
                    self.optimizer.set_learning_rate(lr)
                    with self._onnxruntime(f"the optimizer step {self.step + 1} failed"):
                        self.optimizer.step()
                else:
                    l2_(self.buffers.grads, self.buffers.params, opt.decay)
                    self.sgd.step(lr)  # type: ignore[union-attr]
                self.module.lazy_reset_grad()
                n = len(idx)
                self.step += 1
                self.steps_run += 1
                self.run_examples += n
                self.batch = b + 1
                self.sums["examples"] += n
                self.sums["steps"] += 1
                self.sums["loss"] += loss * n
                for k, v in enumerate(values):
                    self.sums["metrics"][k] += v * n
                dt = time.perf_counter() - t0
                self.run_seconds += dt
                self.sums["seconds"] += dt
                self.progress({
                    "event": "step", "step": self.step, "epoch": self.epoch + 1, "batch": self.batch,
                    "batches": self.spe, "loss": loss, "lr": lr, "examples": n,
                    "metrics": dict(zip(metric_names, values)), "seconds": dt,
                })
                faults.reached("step")
                if s.checkpoint_every and self.step % s.checkpoint_every == 0 and self.batch < self.spe:
                    self._checkpoint()
            self._end_epoch()

    def _end_epoch(self) -> None:
        sums = self.sums
        count = max(sums["examples"], 1)
        names = [t for t, _ in self.compiled.objective.metrics]
        val = self.evaluate() if self.val_set is not None else None
        result = EpochResult(
            epoch=self.epoch + 1, steps=sums["steps"], examples=sums["examples"], loss=sums["loss"] / count,
            metrics={n: v / count for n, v in zip(names, sums["metrics"])}, val=val, seconds=sums["seconds"],
        )
        self.history.append(result)
        self.epoch += 1
        self.batch = 0
        self.sums = self._zero_sums()
        self.progress(dict(result.to_dict(), event="epoch", step=self.step))
        if self.settings.checkpoint_dir is not None:
            self._checkpoint()

    def _stopped(self) -> None:
        if self.settings.checkpoint_dir is not None and self.steps_run > 0 and self.last_saved != self.step:
            self._checkpoint()

    def evaluate(self) -> dict[str, float]:
        """Loss and metrics on the validation data, with the eval model (inference mode)."""
        obj = self.compiled.objective
        self.module.eval()
        total, loss_sum, metric_sums = 0, 0.0, [0.0] * len(obj.metrics)
        try:
            for _, idx in data_mod.batches(self.val_set.examples, self.settings.batch_size, 0, 0, shuffle=False):
                idx = self.world.share_of(idx)
                if not len(idx):
                    continue
                batch = self.val_set.batch(idx)
                with self._onnxruntime("evaluating the validation data failed"):
                    outs = self.module(*[batch[n] for n in self.eval_inputs])
                outs = outs if isinstance(outs, tuple) else (outs,)
                n = len(idx)
                total += n
                loss_sum += float(outs[0]) * n
                for k, i in enumerate(self.eval_metric_index):
                    metric_sums[k] += float(outs[i]) * n
        finally:
            self.module.train()
        total, loss_sum, *metric_sums = self.world.sum([total, loss_sum, *metric_sums])
        result = {"loss": loss_sum / max(total, 1)}
        result.update({t: v / max(total, 1) for (t, _), v in zip(obj.metrics, metric_sums)})
        return result

    # --- checkpoints and results --------------------------------------------------------------

    def _checkpoint(self) -> None:
        if not self.world.root:  # every rank holds the same state; rank 0 writes it
            self.last_saved = self.step
            return
        folder = Path(self.settings.checkpoint_dir)  # type: ignore[arg-type]
        tmp = folder / f".ort-state-{self.step}.tmp"
        try:
            self.api.CheckpointState.save_checkpoint(self.state, tmp, include_optimizer_state=self.optimizer is not None)
            blob = tmp.read_bytes()
        finally:
            tmp.unlink(missing_ok=True)
        s = self.settings
        meta = {
            "epoch": self.epoch, "batch": self.batch, "epoch_sums": self.sums,
            "history": [e.to_dict() for e in self.history],
            "graph_sha256": self.compiled.sha256, "loss": s.loss, "metrics": list(s.metrics),
            "settings": self._expected(), "epochs": s.epochs,
            "optimizer_settings": s.optimizer.to_dict(), "schedule": s.schedule.to_dict(),
            "parameters": {k: list(v) for k, v in self._parameter_shapes().items()},
            "lr": s.optimizer.lr * s.schedule.factor(self.step, self.total),
            "keep": checkpoint.keep_label(self.keep), "graph_parts": self.parts, "data_first_rows": self.data_rows,
            "onnxsurgeon": __version__,
        }
        arrays = self.sgd.state() if self.sgd is not None else {}
        path = checkpoint.save(folder, self.step, blob, arrays, meta)
        faults.reached("checkpoint")
        removed = checkpoint.prune(folder, self.keep)
        self.written.append(str(path))
        self.last_saved = self.step
        self.progress({"event": "checkpoint", "path": str(path), "step": self.step, "removed": [str(p) for p in removed]})

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        self.progress({"event": "warning", "message": message})

    def values(self) -> dict[str, np.ndarray]:
        names = [*self.compiled.plan.trainable, *self.compiled.plan.running_stats]
        return {n: self.state.parameters[n].data.copy() for n in names}

    def report(self) -> TrainReport:
        seconds = time.perf_counter() - self.started
        done = self.epoch + (self.batch / self.spe if self.spe else 0)
        return TrainReport(
            steps=self.step, steps_run=self.steps_run, epochs_done=round(done, 4), epochs=self.settings.epochs,
            finished=self.epoch >= self.settings.epochs, interrupted=self.interrupted, seconds=seconds,
            examples_per_second=(self.run_examples / self.run_seconds) if self.run_seconds else 0.0,
            plan=self.compiled.plan, objective=self.compiled.objective, optimizer=self.settings.optimizer,
            schedule=self.settings.schedule, data=self.train_set, val=self.val_set, history=tuple(self.history),
            resumed_from=self.resumed_from, checkpoints=tuple(self.written), graph_sha256=self.compiled.sha256,
            warnings=tuple(self.warnings), world=self.world.to_dict(),
        )
