"""The ``cnnbp`` command: a Typer app with one module per command.

Adding a command: write ``cnnbp_cli/commands/<command>.py`` with a plain function whose parameters are
Typer arguments/options (see ``commands/train.py``) that parses, calls the library and renders, then
register it below with one line.  Raise
:class:`~cnnbp_cli.errors.UserError` for anything the user can fix: every command then prints it as
``error: <message>`` on one line of stderr and exits 2, with no traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

# The engine's matrix products are small (a batch's im2col rows by a few hundred columns): a BLAS
# thread pool costs more than it gains there, and on a busy machine it collapses (an epoch measured
# 12x slower with 2 OpenBLAS threads on 2 cores).  One thread unless the user sets these; this has to
# run before NumPy is first imported, hence here, above the imports that bring it in.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from cnnbp import __version__  # noqa: E402
from cnnbp.commands import bench, check_layer, export, gradcheck, inspect, schema, train  # noqa: E402
from cnnbp.errors import UserError  # noqa: E402
from cnnbp.render.console import print_error  # noqa: E402


class _Group(TyperGroup):
    """Turns a UserError raised by any command into one clean line and exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            print_error(str(e))
            raise typer.Exit(UserError.exit_code) from None


app = typer.Typer(
    name="cnnbp",
    cls=_Group,
    help="Train small CNNs on a transparent NumPy backprop engine, check every gradient, look inside.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cnnbp {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_print_version, is_eager=True),
    ] = False,
) -> None:
    """Train small CNNs on a transparent NumPy backprop engine, check every gradient, look inside."""


# ---- commands: one module each, one line each ---------------------------------------------------------
app.command("train")(train.train)
app.command("gradcheck")(gradcheck.gradcheck)
app.command("inspect")(inspect.inspect)
app.command("export")(export.export)
app.command("bench")(bench.bench)
app.command("schema")(schema.schema)
app.command("check-layer")(check_layer.check_layer_command)


def main() -> None:
    """Console-script entry point: run the app; a UserError that escapes a command still ends cleanly."""
    try:
        app()
    except UserError as e:
        print_error(str(e))
        sys.exit(UserError.exit_code)
