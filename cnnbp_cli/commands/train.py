"""``cnnbp train``: parse the options, prepare a run with the library runner, render its progress.

Everything else — validation, data, the loop, checkpoints, signals, resume — is
:mod:`cnnbp.runner`.  Exit codes: 0 done, 1 diverged, 2 bad input, 130/143 stopped by SIGINT/SIGTERM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnbp.commands import options
from cnnbp.core.trainer import Diverged
from cnnbp.errors import UserError
from cnnbp.plugins import load_option
from cnnbp.render.console import model_table, print_error, print_summary, stderr_console, stdout_console
from cnnbp.render.progress import EpochLines, JsonLines, LiveProgress
from cnnbp.runner import Callback, Interrupted, Session
from cnnbp.runs import CONFIG, find_checkpoints, resume_command

EXIT_DIVERGED = 1

_CONFIG_HELP = "Run config (YAML). Default: the built-in digits config."
_SET_HELP = "Override a config value, VALUE read as YAML, e.g. train.lr=0.05 (repeatable)."
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
    sets: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=_SET_HELP, show_default=False)
    ] = None,
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


def _say(text: str) -> None:
    stderr_console().print(text, markup=False, soft_wrap=True, highlight=False)


def _run(session: Session, out: Path, *, dry_run: bool, json_lines: bool, quiet: bool) -> None:
    cfg, data = session.cfg, session.data
    if session.complete:
        if not quiet:
            _say(f"{session.run_dir} is complete at epoch {session.start.epoch} of {cfg.train.epochs}; "
                 "nothing to do (pass --epochs to train further)")  # fmt: skip
        return
    if not (json_lines or quiet):
        out_con = stdout_console()
        out_con.print(model_table(session.infos, cfg.model.input_shape, title=f"model · {cfg.name}"))
        split = "test" if data.val_is_test else "val"
        out_con.print(
            f"data: {data.description} · {data.x_train.shape[0]:,} train, {data.x_val.shape[0]:,} {split}",
            markup=False, soft_wrap=True, highlight=False,
        )  # fmt: skip
    if dry_run:
        if not quiet:
            _say("dry run: config, model and data are valid; nothing was written")
        return
    try:
        summary = session.run(out, _callbacks(session, json_lines, quiet))
    except Interrupted as e:
        _say(str(e))
        _say(f"resume with: {resume_command(e.run_dir)}")
        raise typer.Exit(e.exit_code) from None
    except Diverged as e:
        found = find_checkpoints(session.run_dir)
        last = f"; the last good checkpoint is {found[-1][1]}" if found else ""
        print_error(f"{e}{last}")
        raise typer.Exit(EXIT_DIVERGED) from None
    # the summary is data, except in --json mode where stdout carries only the JSON lines
    print_summary(stderr_console() if json_lines else stdout_console(), summary)


class _RunFolder(Callback):
    """Says where the run goes (and where a resumed one continues) once the folder exists."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def on_start(self, info) -> None:  # type: ignore[override]
        _say(f"run folder: {info.run_dir}")
        start = info.start
        if start is not None and start.checkpoint is None:
            _say("no checkpoint yet: the run starts over")
        elif start is not None:
            where = (
                f"epoch {start.epoch}, batch {start.progress.batches_done} of {info.batches}"
                if start.progress is not None
                else f"the end of epoch {start.epoch}"
            )
            _say(f"resuming from {start.checkpoint} ({where}, step {start.step})")


def _callbacks(session: Session, json_lines: bool, quiet: bool) -> list[Callback]:
    err = stderr_console()
    callbacks: list[Callback] = []
    if not quiet:
        if not json_lines:
            callbacks.append(_RunFolder(session))
        if err.is_terminal:
            callbacks.append(LiveProgress(err, epoch_lines=not json_lines))
        elif not json_lines:
            callbacks.append(EpochLines(err))
    if json_lines:
        callbacks.append(JsonLines())
    return callbacks
