"""``cnnbp sweep``: parse the options, plan and run the sweep with :mod:`cnnbp.sweeping`, render it.

Exit codes: 0 every trial finished, 1 a trial diverged or failed, 2 a bad sweep file or option,
130/143 stopped by SIGINT/SIGTERM (every finished trial kept; run it again to continue).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from cnnbp.errors import UserError
from cnnbp.render.console import say, stderr_console, stdout_console
from cnnbp.render.sweep import JsonTrials, TrialBar, TrialLines, counts_text, print_plan, print_result
from cnnbp.sweeping import SweepCallback, SweepInterrupted, prepare

_FILE_HELP = "The sweep file (YAML): base config, grid, seeds, random samples, metric."
_WORKERS_HELP = "Worker processes of the local Dask cluster (one trial each). Default: the number of cores."
_SCHEDULER_HELP = "Run the trials on an existing Dask cluster instead, e.g. tcp://HOST:8786."
_OUT_HELP = "Folder that holds the sweep folder."
_JSON_HELP = "One JSON object per trial that ends, then a summary, on stdout."
_DRY_HELP = "Check the sweep and every trial's config, list the trials; write nothing, start nothing."


def sweep(
    sweep_file: Annotated[Path, typer.Argument(metavar="SWEEP.yaml", help=_FILE_HELP, show_default=False)],
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help=_WORKERS_HELP, show_default=False)
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", metavar="ADDRESS", help=_SCHEDULER_HELP, show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help=_OUT_HELP)] = Path("runs"),
    json_lines: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help=_DRY_HELP)] = False,
) -> None:
    """Train a grid of configs × seeds (and random samples) as runs, in parallel on Dask; resumable."""
    if workers is not None and scheduler is not None:
        raise UserError("--workers: not used with --scheduler (the cluster has its own workers)")
    plan = prepare(sweep_file, out)
    if dry_run:
        print_plan(stdout_console(), plan)
        say(f"dry run: the sweep and its {len(plan.trials)} trial configs are valid; nothing was written")
        return
    metric = plan.spec.metric
    err = stderr_console()
    callbacks: list[SweepCallback] = [JsonTrials()] if json_lines else []
    if not json_lines:
        callbacks.append(TrialBar(err, metric) if err.is_terminal else TrialLines(err, metric))
    try:
        result = plan.run(workers, scheduler, callbacks)
    except SweepInterrupted as e:
        say(str(e))
        say(f"continue with: {_again(sweep_file, out)}")
        raise typer.Exit(e.exit_code) from None
    if not plan.to_run and not json_lines:
        say(f"nothing to do: {counts_text(result.counts, len(result.rows))}")
    print_result(err if json_lines else stdout_console(), result)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _again(sweep_file: Path, out: Path) -> str:
    extra = "" if out == Path("runs") else f" --out {shlex.quote(str(out))}"
    return f"cnnbp sweep {shlex.quote(str(sweep_file))}{extra}"
