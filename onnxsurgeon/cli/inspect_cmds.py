"""``nodes``, ``params`` and ``info``: looking into a model."""

from __future__ import annotations

from typing import Annotated

import typer

from onnxsurgeon.cli import output
from onnxsurgeon.cli.app import Json, Model, Quiet, app


@app.command()
def nodes(
    model: Model,
    grep: Annotated[str | None, typer.Option("--grep", help="Only nodes with a name (or alias) matching this regular expression.")] = None,
    op: Annotated[str | None, typer.Option("--op", help="Only nodes of this op type, e.g. Conv.")] = None,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """List every node with its outputs, op, inputs and types: the names a cut can use.

    Example: onnxsurgeon nodes fixtures/autoencoder.onnx --grep L4
    """
    import onnxsurgeon as osg

    report = osg.nodes(osg.load(model), grep=grep, op=op)
    if as_json:
        output.emit_json(report.to_dict())
        return
    if quiet:
        return
    output.lines(line.text() for line in report.nodes)
    if grep or op:
        output.err.print(f"{len(report.nodes)} of {report.total} nodes", markup=False)


@app.command()
def params(model: Model, as_json: Json = False, quiet: Quiet = False) -> None:
    """List every parameter with its type, shape, size, state (learnable, frozen, shared) and
    what training does with it (trained, updated statistics, or constant and why).

    Example: onnxsurgeon params feat.onnx
    """
    import onnxsurgeon as osg

    report = osg.params(osg.load(model))
    if as_json:
        output.emit_json(report.to_dict())
        return
    if quiet:
        return
    t = output.table("name", "type", "shape", "size", "state", "training", "alias")
    for p in report.params:
        t.add_row(p.name, p.dtype, "[" + ",".join(map(str, p.shape)) + "]", f"{p.size:,}", p.state, p.training, p.alias)
    output.out.print(t)
    counts = ", ".join(f"{n} {state}" for state, n in report.counts().items())
    output.out.print(
        f"{len(report.params)} parameters, {report.total_size:,} values, {output.size(report.total_bytes)}"
        + (f" ({counts})" if counts else ""),
        markup=False,
    )


@app.command()
def info(
    model: Model,
    inputs: Annotated[list[str] | None, typer.Option("--in", help="With --out: size a cut before making it.")] = None,
    outputs: Annotated[list[str] | None, typer.Option("--out", help="The cut's outputs, as for extract.")] = None,
    params: Annotated[str, typer.Option("--params", help="The cut's parameter mode.")] = "learnable",
    auto_inputs: Annotated[bool, typer.Option("--auto-inputs", help="Add graph inputs the outputs need, as for extract.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Summarise a model: inputs, outputs, versions, size, parameters, mode and provenance;
    with --in/--out, also the size of that piece and the memory cutting it needs.

    Example: onnxsurgeon info fixtures/autoencoder.onnx --in input --out L4_y
    """
    import onnxsurgeon as osg

    report = osg.info(osg.load(model), path=model, inputs=inputs, outputs=outputs, mode=params, auto_inputs=auto_inputs)
    if as_json:
        output.emit_json(report.to_dict())
        return
    if quiet:  # the exit code alone: the model loads (and the cut asked for can be made)
        return
    p = output.out.print
    p(f"file        {report.file} ({output.size(report.file_bytes or 0)})", markup=False)
    if report.external_files:
        p(f"external    {', '.join(report.external_files)}", markup=False)
    p(f"ir version  {report.ir_version}", markup=False)
    p("opsets      " + ", ".join(f"{d} {v}" for d, v in report.opsets.items()), markup=False)
    if report.producer:
        p(f"producer    {report.producer}", markup=False)
    for label, ports in (("inputs", report.inputs), ("outputs", report.outputs)):
        p(f"{label:<12}" + ("; ".join(f"{n} {t}" for n, t in ports) or "-"), markup=False)
    sub = f" (+{report.nodes_in_subgraphs} in subgraphs)" if report.nodes_in_subgraphs else ""
    p(f"nodes       {report.nodes}{sub}", markup=False)
    top = ", ".join(f"{op} {n}" for op, n in list(report.ops.items())[:8])
    p(f"ops         {top}", markup=False)
    if report.functions:
        p(f"functions   {', '.join(report.functions)}", markup=False)
    p(
        f"parameters  {report.parameters} ({report.parameter_size:,} values, {output.size(report.parameter_bytes)}"
        f", {report.frozen} frozen)",
        markup=False,
    )
    if report.mode:
        p(f"mode        {report.mode}", markup=False)
    if report.piece:
        pc = report.piece
        p(
            f"the cut     {pc['nodes']} nodes, {pc['parameters']} parameters, weights {output.size(pc['weight_bytes'])}, "
            f"graph {output.size(pc['graph_bytes'])}; writing it needs about {output.size(pc['memory_bytes'])}",
            markup=False,
        )
    if report.cut:
        ins = ", ".join(f"{k}={v}" if k != v else k for k, v in report.cut.get("inputs", {}).items())
        outs = ", ".join(f"{k}={v}" if k != v else k for k, v in report.cut.get("outputs", {}).items())
        src = report.cut.get("file", "?")
        p(f"cut from    {src} --in {ins} --out {outs}", markup=False)
