"""``compose``: building a network from pieces, new inputs and new layers described in a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxsurgeon.cli import output
from onnxsurgeon.cli.app import Json, Quiet, app, refuse_output_over_inputs
from onnxsurgeon.errors import InputError


@app.command()
def compose(
    recipe: Annotated[Path, typer.Argument(help="The recipe (TOML); model paths in it are relative to it.", show_default=False, metavar="RECIPE")],
    out_path: Annotated[Path | None, typer.Option("-o", "--output", help="Where to write the network.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of new layers' parameters (overrides the recipe's).")] = None,
    external_data: Annotated[bool, typer.Option("--external-data", help="Write weights to one file beside the network: OUT.data for -o OUT.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Allow the output to replace a model the recipe reads.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan; write nothing.")] = False,
    as_json: Json = False,
    quiet: Quiet = False,
) -> None:
    """Build a network from pieces, new inputs and new layers described in a recipe file.

    Pieces used several times get their own parameters (learnable), frozen copies (constant)
    or one shared set (shared), as each piece's mode says. --dry-run shows the plan: the
    pieces, their uses, and how many parameters are new, copied, frozen and shared.
    Example: onnxsurgeon compose examples/kl_adaptation/recipe.toml -o kl.onnx
    """
    from onnxsurgeon import serde
    from onnxsurgeon.composition import compose as build

    if out_path is None and not dry_run:
        raise InputError("no output file given", "add -o OUT.onnx, or --dry-run to see the plan")
    refuse_output_over_inputs(out_path, [("the recipe", recipe)])
    model, report = build(recipe, seed=seed)
    if out_path is not None and not force:
        _refuse_overwriting_a_source(recipe, out_path, [p.source for p in report.pieces])
    written = [] if dry_run else serde.save(model, out_path, external_data=external_data or None)
    for w in report.warnings:
        if not quiet:
            output.warn(w)
    if as_json:
        output.emit_json(dict(report.to_dict(), written=[str(p) for p in written], dry_run=dry_run))
        return
    if quiet:
        return
    _print_plan(report)
    target = "dry run, nothing written" if dry_run else f"wrote {out_path}"
    output.out.print(
        f"{target}: {report.nodes} nodes, {len(report.parameters)} parameters ({output.size(report.parameter_bytes)}), "
        f"opset {report.opsets.get('ai.onnx')}, IR {report.ir_version}",
        markup=False,
    )


def _refuse_overwriting_a_source(recipe: Path, out_path: Path, sources: list[str]) -> None:
    target = out_path.resolve()
    for source in sources:
        if (recipe.parent / source).resolve() == target:
            raise InputError(f"the output {out_path} is a model the recipe reads", "write to another file, or pass --force to replace it")


def _print_plan(report) -> None:
    p = output.out.print
    for piece in report.pieces:
        converted = f", converted from opset {piece.opset} to {piece.converted_to}" if piece.converted_to else ""
        uses = f"{len(piece.uses)} use{'s' if len(piece.uses) != 1 else ''}" + (f": {', '.join(piece.uses)}" if piece.uses else "")
        p(
            f"piece {piece.name} ({piece.mode}) from {piece.source}{converted}: {piece.nodes} nodes, "
            f"{piece.parameters} parameters ({output.size(piece.parameter_bytes)}); {uses}",
            markup=False,
        )
    for label, ports in (("in ", report.inputs), ("out", report.outputs)):
        for name, type_ in ports:
            p(f"{label} {name} : {type_}", markup=False)
    counts = report.counts()
    parts = [f"{counts[s]['count']} {s} ({output.size(counts[s]['bytes'])})" for s in ("new", "copied", "frozen", "shared")]
    p("parameters: " + ", ".join(parts), markup=False)
