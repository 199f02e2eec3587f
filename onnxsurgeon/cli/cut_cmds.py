"""``extract`` and ``verify``: cutting a piece out of a model and checking it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxsurgeon.cli import output
from onnxsurgeon.cli.app import Json, Quiet, app, refuse_output_over_inputs
from onnxsurgeon.errors import CheckFailed, InputError


@app.command()
def extract(
    model: Annotated[Path, typer.Argument(help="The ONNX model to cut from.", show_default=False, metavar="MODEL")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--in", help="Where data enters the piece: NAME, NEW=NAME or NAME:float32[N,64]. Repeat for several."),
    ] = None,
    outputs: Annotated[
        list[str] | None,
        typer.Option("--out", help="Where data leaves the piece: NAME or NEW=NAME. Repeat for several."),
    ] = None,
    params: Annotated[str, typer.Option("--params", help="learnable, constant (frozen, inference form) or shared.")] = "learnable",
    out_path: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output",
            help="Where to write the piece. Default: beside MODEL, named MODEL.OUTS.PARAMS.onnx "
            "(model.onnx --out L4.y --params constant gives model.L4_y.constant.onnx).",
        ),
    ] = None,
    auto_inputs: Annotated[bool, typer.Option("--auto-inputs", help="Add graph inputs the outputs need instead of failing.")] = False,
    external_data: Annotated[bool, typer.Option("--external-data", help="Write weights to one file beside the piece: OUT.data for -o OUT.")] = False,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="An .npz of the model's inputs, run once if shape inference cannot type a boundary value."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Allow the output to replace the input model, or an existing file at the default path.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be kept; write nothing.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Cut the piece between --in and --out out of a model into a new model.

    Without -o the piece is written beside the model as MODEL.OUTS.PARAMS.onnx; the path is
    printed, the input model is never replaced, and an existing file there is kept unless
    --force is given.

    Example: onnxsurgeon extract model.onnx --in input --out L4.y --params constant
    (writes model.L4_y.constant.onnx)
    """
    import onnxsurgeon as osg
    from onnxsurgeon import serde
    from onnxsurgeon.arrays import load_data
    from onnxsurgeon.cut import default_output_path

    if not outputs:
        raise InputError("no --out given", "name the values the piece computes with --out NAME")
    if out_path is not None and not force and out_path.exists() and model.exists() and out_path.resolve() == model.resolve():
        raise InputError(f"the output {out_path} is the input model", "write to another file, or pass --force to replace it")
    if data is not None:
        refuse_output_over_inputs(out_path, [("the --data file", data)])
    source = osg.load(model)
    sample = load_data(str(data)) if data is not None else None
    provenance = {"file": model.name, **serde.fingerprint(model)}
    piece, report = osg.extract(
        source, inputs=list(inputs or []), outputs=list(outputs), params=params,
        auto_inputs=auto_inputs, sample=sample, source=provenance, model_hint=str(model),
    )
    if out_path is None:
        out_path = default_output_path(model, report)
        if not dry_run and not force and (out_path.exists() or out_path.is_symlink()):
            raise InputError(
                f"{out_path} already exists (the default output of this cut)",
                "pass -o OUT.onnx to write elsewhere, or --force to replace it",
            )
        if out_path.resolve() == model.resolve():  # cannot happen by construction; never risk it
            raise InputError(f"the output {out_path} is the input model", "write to another file with -o OUT.onnx")
        if not dry_run:
            try:
                serde.check_output(out_path)
            except InputError as e:  # the user chose no folder: the way out is -o
                raise InputError(f"{e.message} (the default output of this cut, beside the model)", "pass -o OUT.onnx to write elsewhere") from None
    for w in report.warnings:
        if not quiet:
            output.warn(w)
    written = [] if dry_run else serde.save(piece, out_path, external_data=external_data or None)
    if as_json:
        output.emit_json(dict(report.to_dict(), written=[str(p) for p in written], dry_run=dry_run))
        return
    if quiet:
        return
    p = output.out.print
    if dry_run:
        p("would keep:", markup=False)
        for name in report.nodes:
            p(f"  node  {name}", markup=False)
        for name in report.parameters:
            p(f"  param {name}", markup=False)
    for label, ports in (("in ", report.inputs), ("out", report.outputs)):
        for port in ports:
            via = "" if port.name == port.value else f" = {port.value}"
            how = f"  (from {port.resolved.query!r} by {port.resolved.how})" if port.resolved and port.resolved.how != "value" else ""
            how = how or ("  (added by --auto-inputs)" if port.resolved is None else "")
            p(f"{label} {port.name}{via} : {port.type}{how}", markup=False)
    changes = []
    if report.folded_batchnorms:
        changes.append(f"{len(report.folded_batchnorms)} BatchNormalization folded")
    if report.removed_dropouts:
        changes.append(f"{len(report.removed_dropouts)} Dropout removed")
    summary = f"{len(report.nodes)} nodes, {len(report.parameters)} parameters ({output.size(report.parameter_bytes)}, {report.params})"
    if changes:
        summary += "; " + ", ".join(changes)
    target = f"dry run, would write {out_path}" if dry_run else f"wrote {out_path}"
    p(f"{target}: {summary}", markup=False)


@app.command()
def verify(
    original: Annotated[Path, typer.Argument(help="The model the piece was cut from.", show_default=False, metavar="ORIGINAL")],
    piece: Annotated[Path, typer.Argument(help="The piece.", show_default=False, metavar="PIECE")],
    data: Annotated[Path | None, typer.Option("--data", help="An .npz with arrays named after the original's inputs.")] = None,
    rtol: Annotated[float, typer.Option("--rtol", help="Relative tolerance.")] = 1e-5,
    atol: Annotated[float, typer.Option("--atol", help="Absolute tolerance.")] = 1e-6,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random inputs.")] = 0,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Check with onnxruntime that a piece computes what the original computes at the same points.

    Exit code 1 if any output differs beyond the tolerances.
    Example: onnxsurgeon verify fixtures/autoencoder.onnx feat.onnx
    """
    import onnxsurgeon as osg
    from onnxsurgeon.arrays import load_data

    arrays = load_data(str(data)) if data is not None else None
    report = osg.verify(
        osg.load(original), osg.load(piece), arrays, rtol=rtol, atol=atol, seed=seed,
        data_label=str(data) if data is not None else None,
    )
    if as_json:
        output.emit_json(report.to_dict())
    elif not quiet:
        t = output.table("output", "source value", "shape", "max abs diff", "max rel diff", "")
        for o in report.outputs:
            t.add_row(o.name, o.value, str(list(o.shape)), f"{o.max_abs_diff:.3g}", f"{o.max_rel_diff:.3g}", "ok" if o.ok else "MISMATCH")
        output.out.print(t)
        output.out.print(f"data: {report.data}; tolerance: rtol {rtol:g}, atol {atol:g}", markup=False)
    if not report.ok:
        bad = [o.name for o in report.outputs if not o.ok]
        raise CheckFailed(
            f"{len(bad)} of {len(report.outputs)} outputs differ: {', '.join(bad)}",
            "the piece does not compute what the original does at these points",
        )
