"""``cnnbp train``: parse the options, prepare a run with the library runner, render its progress.

Everything else — validation, data, the loop, checkpoints, signals, resume — is
:mod:`cnnbp.runner`.  Exit codes: 0 done, 1 diverged, 2 bad input (or a failed write, too little
memory), 70 a bug in cnnbp, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Annotated

import typer

from cnnbp.commands import options
from cnnbp.core.trainer import Diverged
from cnnbp.errors import InternalError, UserError
from cnnbp.plugins import load_option
from cnnbp.render.console import (
    data_lines,
    header_lines,
    model_table,
    print_error,
    print_summary,
    say,
    stderr_console,
    stdout_console,
    summary_lines,
)
from cnnbp.render.progress import EpochLines, JsonLines, LiveProgress, TrainLog, start_lines
from cnnbp.runner import Callback, Interrupted, Session, StartInfo
from cnnbp.runs import CONFIG, find_checkpoints, resume_command

EXIT_DIVERGED = 1

_CONFIG_HELP = "Run config (YAML). Default: the built-in digits config."
_SET_HELP = (
    "Override a config value, VALUE read as YAML, e.g. train.lr=0.05 (repeatable); a mapping merges "
    "into the one at KEY."
)
_RESUME_HELP = "Continue the run in this folder from its last checkpoint (--epochs sets a new total)."
_FORCE_HELP = "With --resume: continue even though config.yaml or the data changed since the checkpoint."


def train(
    config: Annotated[Path | None, typer.Argument(help=_CONFIG_HELP, show_default=False)] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override train.epochs.", show_default=False)
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the seed.", show_default=False)] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Run name: the folder under --out.", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
    sets: options.sets_option(_SET_HELP) = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, print the model and exit; write nothing.")
    ] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per epoch on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", metavar="RUN", help=_RESUME_HELP, show_default=False)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
    plugins: options.Plugins = None,
) -> None:
    """Train a network from a config; write metrics, config and checkpoints to a new run folder."""
    if resume is not None:
        given = [flag for flag, v in (("CONFIG", config), ("--seed", seed), ("--name", name),
                                      ("--set", sets)) if v]  # fmt: skip
        if given:
            raise UserError(
                f"--resume: cannot be combined with {', '.join(given)}: a resumed run keeps its config "
                f"(edit its {CONFIG} and pass --force to change it)"
            )
        load_option(plugins)
        session = Session.resumed(resume, out, epochs=epochs, force=force)
    elif force:
        raise UserError("--force: only used with --resume")
    else:
        session = Session.new(
            config, list(sets or []), name=name, epochs=epochs, seed=seed, plugins=plugins or ()
        )
    with session:
        _run(session, out, dry_run=dry_run, json_lines=json_lines, quiet=quiet)


def _run(session: Session, out: Path, *, dry_run: bool, json_lines: bool, quiet: bool) -> None:
    if session.complete:
        if not quiet:
            hint = (
                f" (to go on, change train.early_stopping in its {CONFIG} and resume with --force)"
                if "early" in session.complete_reason
                else " (pass --epochs to train further)"
            )
            text = f"{session.run_dir}: {session.complete_reason}; nothing to do{hint}"
            for line in textwrap.wrap(text, 80, break_long_words=False, break_on_hyphens=False):
                say(line)
        return
    if not (json_lines or quiet):
        out_con = stdout_console()
        width = out_con.width if out_con.is_terminal else 80
        out_con.print(f"model · {session.cfg.name}", markup=False, highlight=False)
        out_con.print(model_table(session.infos, session.cfg.model.input_shape))
        for line in data_lines(session.cfg, session.data, width):
            out_con.print(line, markup=False, soft_wrap=True, highlight=False)
    if dry_run:
        if not quiet:
            say("dry run: config, model and data are valid; nothing was written")
        return
    log = TrainLog(header_lines(session))
    try:
        _train(session, out, log, json_lines=json_lines, quiet=quiet)
    finally:
        log.close()


def _train(session: Session, out: Path, log: TrainLog, *, json_lines: bool, quiet: bool) -> None:
    """Train with the progress callbacks and ``train.log``; render the end of the run, or its stop."""
    try:
        summary = session.run(out, [*_callbacks(session, json_lines, quiet), log])
    except Interrupted as e:
        lines = [str(e)] + ([f"resume with: {resume_command(e.run_dir)}"] if e.run_dir is not None else [])
        for line in lines:
            say(line)
        log.write(lines)
        raise typer.Exit(e.exit_code) from None
    except Diverged as e:
        found = find_checkpoints(session.run_dir)
        last = f"; the last good checkpoint is {found[-1][1]}" if found else ""
        print_error(f"{e}{last}")
        log.write([f"error: {e}{last}"])
        raise typer.Exit(EXIT_DIVERGED) from None
    except (UserError, InternalError) as e:  # a failed write, too little memory, a bug: said by the app
        log.write([f"error: {e}"])
        raise
    # the summary is data, except in --json mode where stdout carries only the JSON lines
    console = stderr_console() if json_lines else stdout_console()
    print_summary(console, summary)
    log.write(line.plain for line in summary_lines(summary))


class _RunFolder(Callback):
    """Says where the run goes (and where a resumed one continues) once the folder exists."""

    def on_start(self, info: StartInfo) -> None:
        for line in start_lines(info):
            say(line)


def _callbacks(session: Session, json_lines: bool, quiet: bool) -> list[Callback]:
    err = stderr_console()
    callbacks: list[Callback] = []
    if not quiet:
        if not json_lines:
            callbacks.append(_RunFolder())
        if err.is_terminal:
            callbacks.append(LiveProgress(err, epoch_lines=not json_lines))
        elif not json_lines:
            callbacks.append(EpochLines(err))
    if json_lines:
        callbacks.append(JsonLines())
    return callbacks
