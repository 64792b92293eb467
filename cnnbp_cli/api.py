"""The notebook-facing functions: ``cnnbp.train`` and ``cnnbp.resume`` (``cnnbp.load_run``,
``cnnbp.gradcheck`` and ``cnnbp.export`` live beside the code they call)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnbp.runner import Callback, Session
from cnnbp.runs import Run


def _run(session: Session, out: Path, quiet: bool, callbacks: Sequence[Callback]) -> Run:
    """Train ``session`` with the epoch lines (unless ``quiet``), ``train.log`` and ``callbacks``."""
    from cnnbp.render.console import header_lines, stderr_console, summary_lines
    from cnnbp.render.progress import EpochLines, TrainLog

    log = TrainLog(header_lines(session))
    progress = [] if quiet else [EpochLines(stderr_console())]
    try:
        summary = session.run(out, [*progress, log, *callbacks])
        if summary is not None:
            log.write(line.plain for line in summary_lines(summary))
    except Exception as e:
        log.write([f"error: {e}"])
        raise
    finally:
        log.close()
    return Run(session.run_dir)


def train(
    config: str | Path | dict | None = None,
    out: str | Path = "runs",
    name: str | None = None,
    epochs: int | None = None,
    quiet: bool = True,
    *,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Train a network from a config and return its run.

    ``config`` is a YAML file, a dict in the config format (relative paths against the current
    folder), or None for the built-in digits config.  The run folder is ``<out>/<name>`` exactly as
    ``cnnbp train`` makes it; ``name``, ``epochs`` and ``seed`` override the config's, ``overrides``
    are ``KEY=VALUE`` strings as ``--set`` takes them.  ``quiet=False`` prints one line per epoch on
    stderr; ``callbacks`` (:class:`cnnbp.Callback`) receive every batch and epoch.

    Raises :class:`cnnbp.UserError` for a bad config or data (nothing written),
    :class:`cnnbp.Diverged` when training diverges and :class:`cnnbp.Interrupted` on Ctrl-C (the state
    saved; :func:`cnnbp.resume` continues it).
    """
    with Session.new(None if config is None else config if isinstance(config, dict) else Path(config),
                     overrides, name=name, epochs=epochs, seed=seed) as session:  # fmt: skip
        return _run(session, Path(out), quiet, callbacks)


def resume(
    run: str | Path | Run,
    out: str | Path = "runs",
    epochs: int | None = None,
    quiet: bool = True,
    *,
    force: bool = False,
    callbacks: Sequence[Callback] = (),
) -> Run:
    """Continue a run from its last checkpoint, bit for bit (``cnnbp train --resume``); ``epochs`` sets
    a new total.  A run already at its total is returned as it is."""
    target = run.path if isinstance(run, Run) else run
    with Session.resumed(target, Path(out), epochs=epochs, force=force) as session:
        return _run(session, Path(out), quiet, callbacks)
