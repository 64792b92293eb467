"""Drawing sweeps: the progress of ``cnnbp sweep`` (a bar over the trials, a line per trial that ends, or
JSON lines), the ranked table of a sweep's trials, and the view ``cnnbp inspect`` gives of a sweep
folder (that table and the curves of the best trials, overlaid)."""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from cnnbp.inspection import log_scale
from cnnbp.render import termplot as tp
from cnnbp.render.console import num, pct, plural, print_lines
from cnnbp.runs import inspect_command
from cnnbp.sweeping import STATUSES, SweepCallback, SweepPlan, SweepResult, SweepStart, TrialRow, rank

TOP_CURVES = 3  # trials whose curves the inspect view overlays
MARKERS = (("1", "cyan"), ("2", "magenta"), ("3", "yellow"))


def metric_text(metric: str, value: float) -> str:
    """An accuracy as a percentage, a loss with 4 decimals; ``-`` when not finite."""
    return pct(value) if metric.endswith("_acc") else num(value)


def counts_text(counts: Counter | dict, total: int | None = None) -> str:
    """``11 finished, 1 diverged`` (statuses in their usual order)."""
    parts = [f"{counts[s]} {s}" for s in STATUSES if counts.get(s)]
    head = f"{total}: " if total is not None else ""
    return head + (", ".join(parts) or "none")


def print_plan(console: Console, plan: SweepPlan) -> None:
    """``--dry-run``: the sweep, then the trials in order with what each needs and its overrides."""
    width = console.width
    spec = plan.spec
    console.print(Text(tp.clip(f"sweep {spec.name}: {len(plan.trials)} trials", width)), soft_wrap=True)
    for key, path in (("into", plan.folder), ("base", spec.base)):  # paths cut on the left: the names stay
        console.print(Text(tp.clip_left(f"{key}  {path}", width)), soft_wrap=True)
    rows = []
    for i, p in enumerate(plan.trials):
        todo = {"new": "new", "resume": f"resume at epoch {max(p.done, 0)}"}.get(
            p.action, f"keep {p.row.status}"
        )
        rows.append([str(i + 1), p.trial.name, todo, " ".join(p.trial.overrides)])
    print_lines(console, tp.text_table(["#", "trial", "to do", "overrides"], rows, width,
                                       right=[True, False, False, False]))  # fmt: skip


# ---- progress -----------------------------------------------------------------------------------------


def start_lines(info: SweepStart) -> list[str]:
    """What the sweep will do and where."""
    resumed = f" ({info.resumed} resumed)" if info.resumed else ""
    lines = [
        f"sweep folder: {info.folder}",
        f"{plural(info.trials, 'trial')}; running {info.to_run}{resumed} on {info.workers}",
    ]
    if info.skipped:
        lines.append(f"left as they are: {counts_text(info.skipped)} (see trials.csv)")
    return lines + [f"note: {n}" for n in info.notes]


def trial_line(row: TrialRow, metric: str, done: int, total: int, name_width: int, width: int) -> str:
    """``[ 3/12] lr_0.1-init_he_normal-seed_0  finished  val_acc 97.5%  12.1s``, cut to ``width``."""
    k = len(str(total))
    result = f"{metric} {metric_text(metric, row.final)}" if row.status == "finished" else ""
    tail = "  ".join(t for t in (row.status, result, f"{row.seconds:.1f}s") if t)
    head = f"[{done:>{k}}/{total}] "
    room = max(12, min(name_width, width - len(head) - len(tail) - 2))
    return f"{head}{tp.clip(row.trial, room).ljust(room)}  {tail}"


class TrialLines(SweepCallback):
    """The plan on stderr, then one line per trial that ends (its reason below it when it did not
    finish), for logs and pipes."""

    def __init__(self, console: Console, metric: str) -> None:
        self.console, self.metric, self.total, self.name_width = console, metric, 0, 0

    def on_start(self, info: SweepStart) -> None:
        self.total, self.name_width = info.to_run, info.name_width
        for line in start_lines(info):
            self.say(line)

    def on_trial(self, row: TrialRow, counts: Counter, running: int) -> None:
        self.say(
            trial_line(row, self.metric, counts["done"], self.total, self.name_width, self.console.width)
        )
        if row.reason and row.status != "finished":
            self.printer().print(Text("        " + row.reason, style="dim"))  # wrapped to the width

    def printer(self) -> Console:
        return self.console

    def say(self, text: str) -> None:
        self.printer().print(text, markup=False, highlight=False, soft_wrap=True)


class TrialBar(TrialLines):
    """On a terminal: a live bar over the trials (running, finished and failed counts) under the lines."""

    def __init__(self, console: Console, metric: str) -> None:
        super().__init__(console, metric)
        self._progress: Progress | None = None
        self._task = 0

    def on_start(self, info: SweepStart) -> None:
        super().on_start(info)
        self._progress = Progress(
            TextColumn("trials"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(
                "running {task.fields[running]} · finished {task.fields[finished]} · "
                "failed {task.fields[failed]}"
            ),  # fmt: skip
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        running = min(info.slots, info.to_run)
        self._task = self._progress.add_task(
            "sweep", total=info.to_run, running=running, finished=0, failed=0
        )
        self._progress.start()

    def on_trial(self, row: TrialRow, counts: Counter, running: int) -> None:
        super().on_trial(row, counts, running)
        if self._progress is not None:
            failed = counts["failed"] + counts["diverged"]
            self._progress.update(self._task, completed=counts["done"], running=running,
                                  finished=counts["finished"], failed=failed)  # fmt: skip

    def printer(self) -> Console:
        return self._progress.console if self._progress is not None else self.console

    def on_end(self, result: SweepResult) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JsonTrials(SweepCallback):
    """One JSON object per trial that ends (``"kind": "trial"``), and the summary last."""

    def on_trial(self, row: TrialRow, counts: Counter, running: int) -> None:
        _write({"kind": "trial", **row.to_dict()})

    def on_end(self, result: SweepResult) -> None:
        _write(result.to_dict())


def _write(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---- the ranked table -----------------------------------------------------------------------------------


def ranked_table(rows: Sequence[TrialRow], metric: str, mode: str, width: int) -> list[Text]:
    """Finished trials best first (by the last epoch's metric), then the others with their status (their
    partial metrics are in trials.csv)."""
    ranked = rank(rows, mode)
    others = [r for r in rows if r not in ranked]
    cells = []
    for i, r in enumerate([*ranked, *others]):
        final, best = "-", "-"  # the metrics of a trial that did not finish are not its result
        if r.status == "finished":
            final = metric_text(metric, r.final)
            best = f"{metric_text(metric, r.best)} ({r.best_epoch})" if r.best_epoch is not None else "-"
        cells.append(
            [str(i + 1) if i < len(ranked) else "-", r.trial, r.status, final, best, f"{r.seconds:.1f}"]
        )
    headers = ["#", "trial", "status", metric, "best (epoch)", "seconds"]
    styles = ["" if r.status == "finished" else "dim" for r in [*ranked, *others]]
    fixed = sum(max([len(h), *(len(c[k]) for c in cells)]) + 2 for k, h in enumerate(headers) if k != 1)
    room = max(12, width - fixed)
    for c in cells:
        c[1] = tp.clip(c[1], room)
    return tp.text_table(headers, cells, width, right=[True, False, False, True, True, True], styles=styles)


def print_result(console: Console, result: SweepResult) -> None:
    """The end of a sweep: the ranked table, the counts, and how to look at it."""
    width = console.width
    by = f"ranked by the last epoch's {result.metric} ({result.mode})"
    console.print(Text(tp.clip(f"sweep {result.name} · {by}", width), style="bold"), soft_wrap=True)
    print_lines(console, ranked_table(result.rows, result.metric, result.mode, width))
    console.print(f"trials   {counts_text(result.counts, len(result.rows))}", markup=False, soft_wrap=True)
    console.print(f"inspect  {inspect_command(result.folder)}", markup=False, soft_wrap=True, highlight=False)


# ---- cnnbp inspect of a sweep folder ----------------------------------------------------------------------


def print_sweep(console: Console, summary: dict[str, Any], color: bool) -> None:
    """A sweep folder: its trials ranked, then the metric (and its loss or accuracy counterpart) of the
    best trials over the epochs, one curve per trial, marked by its rank."""
    width = max(console.width, 40)
    metric, mode = summary["metric"], summary["mode"]
    rows = [
        TrialRow(**{**t, **{k: _nan(t[k]) for k in ("final", "best", "seconds")}}) for t in summary["trials"]
    ]
    head = [
        ("sweep", f"{summary['sweep']}  ({summary['folder']})"),
        ("trials", counts_text(summary["counts"], len(rows))),
        ("ranked", f"by the last epoch's {metric} ({mode})"),
    ]
    for key, value in head:
        console.print(Text(tp.clip(f"{key.ljust(8)}{value}", width)), soft_wrap=True)
    console.print()
    print_lines(console, ranked_table(rows, metric, mode, width))
    curves = summary["curves"][: len(MARKERS)]
    for column in (metric, summary["other"]):
        print_curves(console, curves, column, width, color)


def print_curves(
    console: Console, curves: Sequence[dict[str, Any]], column: str, width: int, color: bool
) -> None:
    """One chart of ``column`` over the trained epochs (epoch 0, the untrained start, left out so the
    trials' differences show), a curve per trial marked by its rank; losses on a log axis when they
    span more than a factor of 30."""
    series = []
    for i, c in enumerate(curves):
        keep = [k for k, e in enumerate(c["epoch"]) if e >= 1] or list(range(len(c["epoch"])))
        x, y = [c["epoch"][k] for k in keep], [c[column][k] for k in keep]
        series.append(tp.Series("", x, y, MARKERS[i][0], MARKERS[i][1]))
    acc = column.endswith("_acc")
    log_y = not acc and log_scale(*(s.y for s in series))
    fmt = pct if acc else (lambda v: format(v, ".4g"))
    title = f"{column} of the best, by rank:"
    console.print()
    chart = tp.line_chart(series, width=width, title=title, y_format=fmt, color=color, log_y=log_y)
    print_lines(console, chart)


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)
