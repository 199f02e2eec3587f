"""The typer application: one module per group of commands registers itself here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from onnxsurgeon import __version__

# typer (>= 0.26) raises the errors of the click it carries inside. It exports their base
# class (TyperException) and BadParameter, but not UsageError: we reach UsageError as a base
# class of BadParameter rather than import typer's private copy of click.
UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")

# The arguments and options several commands share
Model = Annotated[Path, typer.Argument(help="The ONNX model file.", show_default=False, metavar="MODEL")]
Json = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]

def same_file(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and a.exists() and b.exists() and a.resolve() == b.resolve()


def refuse_output_over_inputs(out: Path | None, reads: list[tuple[str, Path | str]]) -> None:
    """An output naming a file the command reads (its data, its recipe, the model it copies
    from) would replace what it is computed from: refused, with --force too. ``reads`` pairs
    what a file is ("a data file") with its path; a data folder stands for its .npy files."""
    from onnxsurgeon.errors import InputError

    for what, path in reads:
        path = Path(path)
        for f in sorted(path.glob("*.npy")) if path.is_dir() else [path]:
            if same_file(f, out):
                raise InputError(f"the output {out} is {what} of this command", "write to another file")


app = typer.Typer(
    name="onnxsurgeon",
    help=(
        "Cut pieces out of trained ONNX models, freeze or share their parameters, check them, "
        "compose them into new networks and train them on."
    ),
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"onnxsurgeon {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """onnxsurgeon: the options that come before a command."""


from onnxsurgeon.cli import compose_cmds, cut_cmds, inspect_cmds, train_cmds  # noqa: E402  (commands register on import)

__all__ = ["UsageError", "app", "compose_cmds", "cut_cmds", "inspect_cmds", "train_cmds"]
