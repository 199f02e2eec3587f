"""``train``, ``eval``, ``run`` and ``transfer``: training on, measuring, running, carrying weights."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxsurgeon.cli import output
from onnxsurgeon.cli.app import Json, Model, Quiet, app, refuse_output_over_inputs, same_file
from onnxsurgeon.errors import CheckFailed, InputError, write_failed

Fixed = Annotated[list[str] | None, typer.Option("--fixed", help="A data array fed whole at every step (not per example: a sample rate, a trip count). Repeat for several.", show_default=False)]
DataHelp = "Repeat, or a glob, for several files forming one data set; .npy and stored .npz members are memory-mapped."
BatchAxis = Annotated[list[str] | None, typer.Option("--batch-axis", help="NAME=AXIS: that array holds its examples on AXIS (a state [2,N,128]: state=1). Repeat for several.", show_default=False)]


def _keep(text: str) -> int | None:
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--keep {text!r} is not a number or 'all'") from None


class _Log:
    """The JSON-lines metrics log: one line per event, appended, flushed."""

    def __init__(self, path: Path, mode: str = "a") -> None:
        from onnxsurgeon import serde

        if not path.parent.is_dir():
            raise InputError(f"cannot write the log {path}: folder {path.parent} does not exist", "create the folder first, or give --log")
        if path.is_dir():
            raise InputError(f"cannot write the log {path}: it is a directory", "name a file with --log")
        serde.check_output(path)  # a folder the log cannot be made in: before the run
        self.path, self.mode = path, mode
        self.file = None  # opened at the first event: a run refused before it starts leaves no log

    def __call__(self, event: dict[str, Any]) -> None:
        if self.file is None:
            try:
                self.file = open(self.path, self.mode, encoding="utf-8")  # noqa: SIM115 - closed by close()
            except OSError as e:
                raise InputError(f"cannot write the log {self.path}: {e.strerror}", "choose a writable --log") from None
        try:
            self.file.write(json.dumps(dict(event, time=round(time.time(), 3)), default=str) + "\n")
            self.file.flush()
        except OSError as e:
            raise write_failed(f"cannot write the log {self.path}", e) from None

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Bar:
    """A rich progress bar on stderr: epoch, step, loss, examples/s."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} ex/s"), TimeRemainingColumn(),
            console=output.err, transient=True,
        )
        self.task = None
        self.smooth = None

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "start":
            self.progress.start()
            self.task = self.progress.add_task("train", total=event["total_steps"], completed=event["step"], epoch=event["epoch"] + 1, loss="-", speed="-")
        elif kind == "step" and self.task is not None:
            speed = event["examples"] / max(event["seconds"], 1e-9)
            self.smooth = speed if self.smooth is None else 0.9 * self.smooth + 0.1 * speed
            self.progress.update(self.task, completed=event["step"], epoch=event["epoch"], loss=f"{event['loss']:.4g}", speed=f"{self.smooth:,.0f}")
        elif kind == "warning":
            output.warn(event["message"])

    def close(self) -> None:
        self.progress.stop()


def _open(paths: list[Path], quiet: bool):
    """The data files of --data (or --val) as one data set; what is read whole is said."""
    from onnxsurgeon.datafiles import open_data

    files = open_data(paths)
    if not quiet:
        for w in files.warnings:
            output.warn(w)
    return files


def _fan(*sinks):
    def send(event: dict[str, Any]) -> None:
        for sink in sinks:
            if sink is not None:
                sink(event)
    return send


@app.command()
def train(
    model: Model,
    data: Annotated[list[Path], typer.Option("--data", help="An .npz or a folder of NAME.npy files, arrays named after the graph inputs and the loss's names; first axis = example. " + DataHelp, show_default=False)],
    loss: Annotated[str, typer.Option("--loss", help="The loss, e.g. 'ce(z, labels)', 'w * ce(z, labels)', '0.3 * mse(r, x) + ce(z, y)'.", show_default=False)],
    out_path: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the trained model.")] = None,
    val: Annotated[list[Path] | None, typer.Option("--val", help="Data (as --data) to measure the loss and metrics on after each epoch.")] = None,
    metrics: Annotated[list[str] | None, typer.Option("--metric", help="A metric: 'error(z, labels)', 'hamming(z, t)' or any loss. Repeat for several.")] = None,
    optimizer: Annotated[str, typer.Option("--optimizer", help="sgd, adam or adamw.")] = "adamw",
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (CNTK's alpha).")] = 1e-3,
    momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum.")] = 0.0,
    nesterov: Annotated[bool, typer.Option("--nesterov", help="Nesterov momentum (sgd).")] = False,
    beta1: Annotated[float, typer.Option("--beta1", help="Adam's first-moment decay (CNTK's momentum).")] = 0.9,
    beta2: Annotated[float, typer.Option("--beta2", help="Adam's second-moment decay (CNTK's variance momentum).")] = 0.999,
    eps: Annotated[float, typer.Option("--eps", help="Adam's epsilon.")] = 1e-8,
    weight_decay: Annotated[float | None, typer.Option("--weight-decay", help="Decoupled for adamw (default 0.01), an L2 term for sgd and adam (default 0).", show_default=False)] = None,
    clip_norm: Annotated[float | None, typer.Option("--clip-norm", help="Scale the gradients so that their joint L2 norm is at most this.")] = None,
    schedule: Annotated[str, typer.Option("--schedule", help="Learning-rate schedule: constant, linear (decay to 0) or step.")] = "constant",
    warmup: Annotated[int, typer.Option("--warmup", help="Steps of linear warm-up from 0.")] = 0,
    decay_steps: Annotated[int | None, typer.Option("--decay-steps", help="linear: the step at which the rate reaches 0 (default: the last).")] = None,
    step_size: Annotated[int | None, typer.Option("--step-size", help="step: multiply the rate by --gamma every so many steps.")] = None,
    gamma: Annotated[float, typer.Option("--gamma", help="step: the factor.")] = 0.1,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs in all: with --resume, training continues until this many are done.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step.")] = 32,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data order and the Dropout masks.")] = 0,
    no_shuffle: Annotated[bool, typer.Option("--no-shuffle", help="Keep the data's order.")] = False,
    freeze: Annotated[list[str] | None, typer.Option("--freeze", help="Freeze parameters matching this pattern (e.g. 'encoder/*'). Repeat for several.")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="Folder for checkpoints (written at each epoch end).")] = None,
    checkpoint_every: Annotated[int | None, typer.Option("--checkpoint-every", help="Also checkpoint every so many steps.")] = None,
    keep: Annotated[str, typer.Option("--keep", help="Keep the newest K checkpoints, or 'all'.")] = "3",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the newest intact checkpoint in --checkpoint-dir.")] = False,
    resume_from: Annotated[
        Path | None,
        typer.Option("--resume-from", help="Continue from this checkpoint file (e.g. an older one); new checkpoints go to --checkpoint-dir."),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Let a fresh run replace the checkpoints (and metrics log) of another run in --checkpoint-dir."),
    ] = False,
    max_steps: Annotated[int | None, typer.Option("--max-steps", help="Stop this run after so many steps (resume later).")] = None,
    threads: Annotated[int, typer.Option("--threads", help="onnxruntime threads (1 gives exactly reproducible sums).")] = 1,
    fixed: Fixed = None,
    batch_axis: BatchAxis = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Draw the loss per epoch to this PNG (needs matplotlib; else a sparkline is shown).")] = None,
    log: Annotated[Path | None, typer.Option("--log", help="The JSON-lines metrics log (default: OUTPUT.metrics.jsonl, or in --checkpoint-dir).")] = None,
    external_data: Annotated[bool, typer.Option("--external-data", help="Write weights to one file beside the model: OUT.data for -o OUT.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Allow the output to replace the input model.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the model, loss and data, build the training session and run one step on a copy; show what would be trained; write nothing.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Train a model (or a cut piece, or a composed network) on with onnxruntime-training.

    Frozen parameters never change; the trained values are written into the full model.
    Example: onnxsurgeon train net.onnx --data train.npz --loss 'ce(z, labels)' --metric 'error(z, labels)' --optimizer sgd --lr 0.1 --momentum 0.9 --epochs 5 --checkpoint-dir ckpt -o trained.onnx
    """
    import onnxsurgeon as osg
    from onnxsurgeon import serde
    from onnxsurgeon.train import data as data_mod, distributed
    from onnxsurgeon.train.loop import TrainSettings, compile_training, rehearse
    from onnxsurgeon.train.loop import train as run_training
    from onnxsurgeon.train.optim import OptimizerSettings, Schedule

    world = distributed.from_environment()  # several ranks under mpiexec/srun; rank 0 alone writes and prints
    if out_path is None and not dry_run:
        raise InputError("no output file given", "add -o TRAINED.onnx, or --dry-run to only check")
    if not force and same_file(model, out_path):
        raise InputError(f"the output {out_path} is the input model", "write to another file, or pass --force to replace it")
    if out_path is not None and not dry_run:
        serde.check_output(out_path)  # before the run, not after it
    settings = TrainSettings(
        loss=loss, metrics=tuple(metrics or ()),
        optimizer=OptimizerSettings(optimizer, lr, momentum, nesterov, beta1, beta2, eps, weight_decay, clip_norm),
        schedule=Schedule(schedule, warmup, decay_steps, step_size, gamma),
        epochs=epochs, batch_size=batch_size, seed=seed, shuffle=not no_shuffle, freeze=tuple(freeze or ()),
        checkpoint_dir=str(checkpoint_dir) if checkpoint_dir is not None else None, checkpoint_every=checkpoint_every,
        keep=_keep(keep), resume=resume, max_steps=max_steps, threads=threads,
        resume_from=str(resume_from) if resume_from is not None else None, overwrite=overwrite,
        fixed=tuple(fixed or ()), batch_axes=data_mod.Layout.parse((), batch_axis or ()).batch_axes,
    )
    source = osg.load(model)
    if out_path is not None and not dry_run and (external_data or serde.weight_bytes(source) > serde.INLINE_LIMIT):
        serde.check_output(out_path.with_name(out_path.name + ".data"))  # where the weights will go
    arrays = _open(data, quiet)
    val_arrays = _open(val, quiet) if val else None
    if dry_run:
        compiled = compile_training(source, arrays, settings.loss, settings.metrics, settings.freeze, settings.layout)
        checked = data_mod.check(arrays, compiled.wanted, arrays.label, settings.batch_size, settings.layout)
        data_mod.check_class_indices(checked, compiled.objective.class_indices)
        if val_arrays is not None:
            val_checked = data_mod.check(val_arrays, compiled.wanted, val_arrays.label, layout=settings.layout)
            data_mod.check_class_indices(val_checked, compiled.objective.class_indices)
        step_loss = rehearse(source, arrays, settings, data_label=arrays.label)  # artifacts, session, one step
        report = {
            "plan": compiled.plan.to_dict(), "objective": compiled.objective.to_dict(), "data": checked.to_dict(),
            "dry_run": True, "first_step_loss": step_loss,
        }
        if not world.root:  # under mpiexec every rank checks; rank 0 reports
            return
        if as_json:
            output.emit_json(report)
        elif not quiet:
            _show_plan(compiled.plan, compiled.objective, checked)
            output.out.print(
                f"dry run: the training session builds and one step runs (loss {step_loss:.5g}); nothing trained or written",
                markup=False,
            )
        return

    if log is None:
        log = (checkpoint_dir / "metrics.jsonl") if checkpoint_dir is not None else out_path.with_name(out_path.stem + ".metrics.jsonl")  # type: ignore[union-attr]
    written = {"-o": out_path, "--log": log, "--plot": plot, "--checkpoint-dir": checkpoint_dir}
    data_files = [("a data file", f) for f in (*arrays.files, *(val_arrays.files if val_arrays else ()))]
    for option, path in written.items():
        if option != "--checkpoint-dir":  # -o over the model: the --force rule above
            refuse_output_over_inputs(path, data_files if option == "-o" else [("the model", model), *data_files])
    seen: dict[Path, str] = {}
    for option, path in written.items():
        if path is not None:
            other = seen.setdefault(path.resolve(), option)
            if other != option:
                raise InputError(f"{other} and {option} name the same path {path}", f"give {other} and {option} paths of their own")
    if checkpoint_dir is not None:
        from onnxsurgeon.train import checkpoint

        checkpoint.make_folder(checkpoint_dir)
    fresh = not resume and resume_from is None
    writer = _Log(log, "w" if overwrite and fresh else "a")
    bar = _Bar() if (not quiet and not as_json and sys.stderr.isatty()) else None
    warn = None if bar is not None or quiet else (lambda e: output.warn(e["message"]) if e["event"] == "warning" else None)
    interrupted = []
    # Ctrl-C, and SIGTERM (kill, timeout, a scheduler ending or preempting the job), both
    # finish the step, checkpoint, then stop.
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in stops}

    def on_interrupt(signum, frame):
        interrupted.append(True)

    for s in stops:
        signal.signal(s, on_interrupt)
    try:
        trained, report = run_training(
            source, arrays, settings, val=val_arrays, data_label=arrays.label, val_label=val_arrays.label if val_arrays else "",
            progress=_fan(writer, bar, warn), stop=lambda: bool(interrupted), world=world,
        )
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if bar is not None:
            bar.close()
        writer.close()
    if report.interrupted:
        if world.root:
            where = f"; checkpoint {report.checkpoints[-1]}" if report.checkpoints else ""
            output.err.print(f"interrupted at step {report.steps}{where}; nothing written to {out_path}", markup=False)
        raise distributed.collective_interrupt()
    if not world.root:
        return
    written = serde.save(trained, out_path, external_data=external_data or None)  # type: ignore[arg-type]
    plotted = _plot(report, plot) if plot is not None else None
    if plot is not None and plotted is None and not quiet:
        output.warn(f"matplotlib is not installed: no {plot}; the loss curve is shown as a sparkline")
    if as_json:
        output.emit_json(dict(report.to_dict(), written=[str(p) for p in written], log=str(log)))
        return
    if quiet:
        return
    _show_plan(report.plan, report.objective, None)
    t = output.table("epoch", "steps", "loss", *[m for m, _ in report.objective.metrics], *(["val loss"] if report.val else []),
                     *[f"val {m}" for m, _ in report.objective.metrics if report.val], "seconds")
    for e in report.history:
        row = [str(e.epoch), str(e.steps), f"{e.loss:.5g}", *[f"{v:.4g}" for v in e.metrics.values()]]
        if e.val is not None:
            row += [f"{v:.5g}" for v in e.val.values()]
        t.add_row(*row, f"{e.seconds:.2f}")
    output.out.print(t)
    if len(report.history) > 1:
        curve = [e.loss for e in report.history]
        output.out.print(f"loss per epoch: {_sparkline(curve)}  {curve[0]:.4g} -> {curve[-1]:.4g}", markup=False)
    state = "finished" if report.finished else f"stopped at epoch {report.epochs_done:g} of {report.epochs} (resume with --resume)"
    resumed = f", resumed from {report.resumed_from}" if report.resumed_from else ""
    output.out.print(
        f"wrote {out_path}: {report.steps} steps in all ({report.steps_run} this run{resumed}), {state}; "
        f"{report.examples_per_second:,.0f} examples/s; log {log}", markup=False,
    )


def _sparkline(values: list[float]) -> str:
    bars = "▁▂▃▄▅▆▇█"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[min(int((v - lo) / span * len(bars)), len(bars) - 1)] for v in values)


def _plot(report, path: Path) -> Path | None:
    """The loss per epoch (and the validation loss) as a PNG, written atomically; None
    without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [e.epoch for e in report.history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [e.loss for e in report.history], marker="o", label="training loss")
    if report.val is not None:
        ax.plot(epochs, [e.val["loss"] for e in report.history], marker="o", label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    from onnxsurgeon import serde

    try:
        serde.write_atomically(path, lambda f: fig.savefig(f, format="png"))
    finally:
        plt.close(fig)
    return path


def _show_plan(plan, objective, checked) -> None:
    p = output.out.print
    p(f"loss: {objective.loss}", markup=False)
    p(f"trained: {len(plan.trainable)} parameters ({', '.join(plan.trainable[:6])}{' ...' if len(plan.trainable) > 6 else ''})", markup=False)
    if plan.running_stats:
        p(f"updated (BatchNormalization statistics): {len(plan.running_stats)}", markup=False)
    if plan.frozen:
        p(f"frozen: {len(plan.frozen)}", markup=False)
    for c in (*plan.changes, *objective.notes):
        p(f"note: {c}", markup=False)
    if checked is not None:
        p(f"data: {checked.examples} examples; arrays {', '.join(checked.arrays)}", markup=False)
        for n in checked.notes:
            p(f"note: {n}", markup=False)


@app.command(name="eval")
def eval_(
    model: Model,
    data: Annotated[list[Path], typer.Option("--data", help="An .npz or a folder of NAME.npy files, arrays named after the graph inputs and the metrics' names. " + DataHelp, show_default=False)],
    metrics: Annotated[list[str], typer.Option("--metric", help="A metric: 'error(z, labels)', 'hamming(z, t)' or any loss. Repeat for several.", show_default=False)],
    batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per run.")] = 256,
    fixed: Fixed = None,
    batch_axis: BatchAxis = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Measure metrics (error rate, hamming loss, any loss) of a model on data, in inference mode.

    Example: onnxsurgeon eval trained.onnx --data val.npz --metric 'error(z, labels)' --metric 'ce(z, labels)'
    """
    import onnxsurgeon as osg
    from onnxsurgeon.train.data import Layout
    from onnxsurgeon.train.evaluate import evaluate

    layout = Layout.parse(fixed or (), batch_axis or ())
    arrays = _open(data, quiet)
    report = evaluate(osg.load(model), arrays, metrics, batch_size, label=arrays.label, fixed=layout.fixed, batch_axes=layout.batch_axes)
    if as_json:
        output.emit_json(report.to_dict())
    elif not quiet:
        t = output.table("metric", "mean")
        for name, value in report.metrics:
            t.add_row(name, f"{value:.6g}")
        output.out.print(t)
        output.out.print(f"{report.examples} examples of {arrays.label}", markup=False)


@app.command(name="run")
def run_(
    model: Model,
    data: Annotated[list[Path], typer.Option("--data", help="An .npz or a folder of NAME.npy files, arrays named after the graph inputs. " + DataHelp, show_default=False)],
    out_path: Annotated[Path, typer.Option("-o", "--output", help="The .npz to write the outputs to.", show_default=False)],
    outputs: Annotated[list[str] | None, typer.Option("--out", help="A value to write instead of the graph outputs. Repeat for several.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", help="Run in batches of this many examples (default: all at once).")] = None,
    fixed: Fixed = None,
    batch_axis: BatchAxis = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Run, and show what would be written; write nothing.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Run a model on the arrays of an .npz and write its outputs to an .npz.

    Example: onnxsurgeon run trained.onnx --data x.npz -o out.npz
    """
    import onnxsurgeon as osg
    from onnxsurgeon import serde
    from onnxsurgeon.train.data import Layout
    from onnxsurgeon.train.evaluate import run_to_file

    layout = Layout.parse(fixed or (), batch_axis or ())
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    serde.check_output(out_path)
    arrays = _open(data, quiet)
    refuse_output_over_inputs(out_path, [("the model", model), *(("a data file", f) for f in arrays.files)])
    shapes = run_to_file(osg.load(model), arrays, out_path, outputs or (), batch_size, label=arrays.label,
                         fixed=layout.fixed, batch_axes=layout.batch_axes, write=not dry_run)
    extra = {"layout": layout.to_dict()} if layout else {}
    if dry_run:
        if as_json:
            output.emit_json({"written": None, "outputs": shapes, "dry_run": True, **extra})
        elif not quiet:
            output.out.print("would write: " + ", ".join(f"{k} {v}" for k, v in shapes.items()), markup=False)
        return
    if as_json:
        output.emit_json({"written": str(out_path), "outputs": shapes, **extra})
    elif not quiet:
        output.out.print(f"wrote {out_path}: " + ", ".join(f"{k} {v}" for k, v in shapes.items()), markup=False)


@app.command()
def transfer(
    source: Annotated[Path, typer.Option("--from", help="The model (.onnx) or checkpoint (.ckpt) to copy parameters from.", show_default=False)],
    target: Annotated[Path, typer.Option("--to", help="The model to copy them into.", show_default=False)],
    out_path: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the result.")] = None,
    maps: Annotated[list[str] | None, typer.Option("--map", help="A rename OLD=NEW, '*' for any text: 'enc.*=encoder/*'. Repeat for several.")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1, nothing written) unless every parameter matched.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Allow the output to replace the --to model.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be copied; write nothing.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Copy parameters from a model or checkpoint into another model by name (exact, alias, then --map).

    Example: onnxsurgeon transfer --from old.onnx --to new.onnx --map 'enc.*=encoder/*' -o new_init.onnx --strict
    """
    import onnxsurgeon as osg
    from onnxsurgeon import serde
    from onnxsurgeon.train import weights
    from onnxsurgeon.train.transfer import transfer as run_transfer

    if out_path is None and not dry_run:
        raise InputError("no output file given", "add -o OUT.onnx, or --dry-run to only look")
    if not force and same_file(target, out_path):
        raise InputError(f"the output {out_path} is the --to model", "write to another file, or pass --force to replace it")
    if not source.exists():
        raise InputError(f"no such file: {source}", "check the path of --from")
    if not same_file(source, target):  # --from is --to: the --to rule above decides
        refuse_output_over_inputs(out_path, [("the --from model", source)])
    if not dry_run:
        serde.check_output(out_path)  # before the report, which says where it is written
    src = weights.from_checkpoint(source) if source.suffix == ".ckpt" else osg.load(source)
    result, report = run_transfer(src, osg.load(target), maps or ())
    nothing = not report.matched
    if as_json:
        refused = (strict and not report.complete) or nothing
        output.emit_json(dict(report.to_dict(), written=None if dry_run or refused else str(out_path)))
    elif not quiet:
        t = output.table("parameter", "status", "from")
        for m in report.matched:
            t.add_row(m.target, f"matched ({m.how})", m.source)
        for w in report.wrong_shape:
            t.add_row(w.target, f"WRONG SHAPE {w.target_type} <- {w.source_type}", w.source)
        for name in report.missing:
            t.add_row(name, "MISSING", "-")
        for name in report.unexpected:
            t.add_row("-", "UNEXPECTED", name)
        output.out.print(t)
        output.out.print(
            f"{len(report.matched)} matched, {len(report.missing)} missing, {len(report.unexpected)} unexpected, "
            f"{len(report.wrong_shape)} wrong shape", markup=False,
        )
        for w in report.warnings:
            output.warn(w)
    if strict and not report.complete:
        raise CheckFailed(
            "not every parameter matched: "
            f"{len(report.missing)} missing, {len(report.unexpected)} unexpected, {len(report.wrong_shape)} wrong shape; nothing written",
            "add --map OLD=NEW renames, or drop --strict to copy what matches",
        )
    if nothing:
        # A copy that copies nothing is never what was meant: a wrong --from, or names that
        # need --map. Writing the --to model unchanged would hide that.
        raise CheckFailed(
            f"nothing matched: none of the {len(report.missing) + len(report.wrong_shape)} parameters of {target} "
            f"found one in {source} ({len(report.unexpected)} there unused); nothing written",
            "check --from, or add --map OLD=NEW renames (onnxsurgeon params MODEL lists the names)",
        )
    if not dry_run:
        serde.save(result, out_path)  # type: ignore[arg-type]
        if not as_json and not quiet:
            output.out.print(f"wrote {out_path}", markup=False)
