"""The ``cnnbp`` command: a Typer app with one module per command.

Adding a command: write ``cnnbp_cli/commands/<command>.py`` with a plain function whose parameters are
Typer arguments/options (see ``commands/train.py``) that parses, calls the library and renders, then
register it below with one line.  Raise
:class:`~cnnbp_cli.errors.UserError` for anything the user can fix: every command then prints it as
``error: <message>`` on one line of stderr and exits 2, with no traceback.

Whatever else escapes a command ends the same way, never with a traceback: a MemoryError or an OSError
(a disk or file fault) is one ``error:`` line and exit 2; Ctrl-C that lands outside the training loop
(which handles it itself) is ``interrupted`` and exit 130; a reader that closed the pipe of stdout
(``cnnbp … | head``) ends it quietly with 141, as SIGPIPE would; anything else is a bug in cnnbp: one
line that says so and names the file with the traceback (:class:`~cnnbp.errors.InternalError`), exit 70.
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
# NumPy asks Linux for transparent huge pages on every array of 4 MB or more.  Where the kernel then
# compacts memory to find one (THP defrag "madvise", the common default), the first touch of a new
# array is several times slower: converting MNIST's 47M training pixels to float32 took 0.40 s with
# it and 0.08 s without, and an array is only touched a few times here.  Off unless the user sets it.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from cnnbp import __version__  # noqa: E402
from cnnbp.commands import bench, check_layer, export, gradcheck, inspect, schema, train  # noqa: E402
from cnnbp.commands import plot as plot_command  # noqa: E402
from cnnbp.commands import sweep as sweep_command  # noqa: E402
from cnnbp.commands import trace as trace_command  # noqa: E402
from cnnbp.commands.evaluate import evaluate_command  # noqa: E402
from cnnbp.commands.predict import predict_command  # noqa: E402
from cnnbp.errors import InternalError, UserError, out_of_memory, write_crash_log  # noqa: E402
from cnnbp.render.console import print_error  # noqa: E402
from cnnbp.render.usage import (  # noqa: E402
    DELIBERATE_EXITS,
    UsageError,
    is_help_request,
    plain_flags,
    usage_message,
)


class _Group(TyperGroup):
    """Turns a UserError raised by any command, and a usage error Typer finds in the command line (a bad
    option value, an unknown option or command), into one clean line and exit code 2, and whatever else
    escapes a command into one line and its exit code (:func:`_one_line`); keeps ``<bool>`` out of
    every command's help."""

    def make_context(self, info_name: Any, args: Any, parent: Any = None, **extra: Any) -> Any:
        self._argv = list(args)  # the words as typed, for messages that quote a value
        try:
            return super().make_context(info_name, args, parent, **extra)
        except UsageError as e:
            if is_help_request(e):
                raise
            print_error(usage_message(e, self._argv))
            raise typer.Exit(UsageError.exit_code) from None

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        plain_flags(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            plain_flags([*command.params, command.get_help_option(ctx)])
        return command

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError as e:
            if is_help_request(e):
                raise
            print_error(usage_message(e, getattr(self, "_argv", [])))
            raise typer.Exit(UsageError.exit_code) from None
        except (typer.Exit, typer.Abort, *DELIBERATE_EXITS):
            raise  # how Typer and Click end a command on purpose
        except BaseException as e:  # noqa: BLE001 - every other way out: one line and an exit code
            code = _one_line(e)
            if code is None:
                raise
            raise typer.Exit(code) from None


app = typer.Typer(
    name="cnnbp",
    cls=_Group,
    help="Train small CNNs on a transparent NumPy backprop engine, check every gradient, look inside.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
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
app.command("plot")(plot_command.plot)
app.command("bench")(bench.bench)
app.command("schema")(schema.schema)
app.command("check-layer")(check_layer.check_layer_command)
app.command("sweep")(sweep_command.sweep)
app.command("evaluate")(evaluate_command)
app.command("predict")(predict_command)
app.command("trace")(trace_command.trace)


#: the exit code of Ctrl-C (128 + SIGINT), as a shell reports it
EXIT_INTERRUPTED = 130
#: a pipe closed by the reader (``cnnbp inspect | head``): 128 + SIGPIPE
EXIT_BROKEN_PIPE = 141


def _one_line(e: BaseException) -> int | None:
    """Say ``e`` on one line of stderr and give the exit code; None for exits that are not errors."""
    if isinstance(e, (SystemExit, GeneratorExit)):
        return None
    if isinstance(e, BrokenPipeError):
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    if isinstance(e, KeyboardInterrupt):
        _say("interrupted", error=False)
        return EXIT_INTERRUPTED
    if isinstance(e, MemoryError):
        e = out_of_memory(e)
    elif isinstance(e, OSError):  # a disk or file fault no command turned into a UserError
        place = f"{e.filename}: " if e.filename else ""
        e = UserError(f"{place}{e.strerror or e}")
    elif not isinstance(e, (UserError, InternalError)):
        e = InternalError(e, write_crash_log(e))
    _say(str(e))
    return e.exit_code


def _say(text: str, error: bool = True) -> None:
    """One line on stderr (``error: text``, or ``text`` as it is); never a second error when stderr
    itself fails."""
    try:
        if error:
            print_error(text)
        else:
            print(text, file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - stderr is gone (a closed pipe): nothing left to tell
        pass


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe stays silent."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _broken_pipe(console: Console) -> None:
    """rich's reaction to a reader that closed the pipe (``cnnbp train | head -1``), which rich ends with
    exit 1 (divergence, here): stdout quiet, then the 141 of :func:`_one_line`."""
    raise BrokenPipeError(32, "Broken pipe")


Console.on_broken_pipe = _broken_pipe  # rich documents the method as the one to override


def main() -> None:
    """Console-script entry point: run the app; whatever escapes a command still ends in one line and an
    exit code (see the module docstring)."""
    try:
        app()
    except BaseException as e:  # noqa: BLE001 - the last place to keep a traceback off the terminal
        code = _one_line(e)
        if code is None:
            raise
        sys.exit(code)
