"""The typer application: one module per group of commands registers itself here."""

from __future__ import annotations

import typer

from onnxsurgeon import __version__

try:  # typer >= 0.20 carries its own copy of click; older ones use click itself
    from typer import _click as click
except ImportError:  # pragma: no cover - depends on the installed typer
    import click  # type: ignore[no-redef]

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

__all__ = ["app", "click", "compose_cmds", "cut_cmds", "inspect_cmds", "train_cmds"]
