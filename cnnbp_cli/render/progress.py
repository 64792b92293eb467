"""Training progress: the runner's callbacks that print the epoch table, draw a live bar, write JSON
lines, and keep ``train.log``.

The epoch table has one header line and one row per epoch, the same names as ``metrics.csv``
(``train_loss``, ``val_acc``, …; which split ``val`` is, is said once above it), and stays within 80
columns whatever the numbers::

    epoch  train_loss  train_acc  val_loss  val_acc   time
     0/15           -          -    3.1418    10.9%   0.0s
     1/15      1.3658      58.1%    0.3813    86.4%   0.1s

A run with ``train.schedule`` gets an ``lr`` column (the rate of the epoch's last step).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cnnbp import __version__
from cnnbp.files import json_number
from cnnbp.render.console import pct
from cnnbp.runner import Callback, StartInfo, StepInfo
from cnnbp.runs import TRAIN_LOG

#: column widths: every loss fits 9 characters (loss_text), an accuracy 6 (100.0%), a time 6 (59m59s)
_WIDTHS = {"train_loss": 10, "train_acc": 9, "val_loss": 9, "val_acc": 7, "lr": 9, "time": 6}


def loss_text(value: float) -> str:
    """A loss in at most 9 characters: 4 decimals, or 4 significant digits in scientific notation."""
    if not math.isfinite(value):
        return "-" if math.isnan(value) else f"{value}"
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3e}"


def duration(seconds: float) -> str:
    """``0.1s``, ``42.0s``, ``3m05s``, ``2h07m``."""
    if not math.isfinite(seconds):
        return "-"
    if seconds < 100:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 100:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


class EpochTable:
    """The header and the rows of the epoch table (plain strings, no trailing spaces)."""

    def __init__(self, epochs: int, lr: bool = False) -> None:
        self.epochs, self.lr = epochs, lr
        self.epoch_w = max(len("epoch"), 2 * len(str(epochs)) + 1)

    @property
    def names(self) -> list[str]:
        return ["train_loss", "train_acc", "val_loss", "val_acc", *(["lr"] if self.lr else []), "time"]

    def _line(self, first: str, cells: Sequence[str]) -> str:
        widths = [_WIDTHS[name] for name in self.names]
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells, widths, strict=True))]).rstrip()

    def header(self) -> str:
        return self._line("epoch".ljust(self.epoch_w), self.names)

    def row(self, row: Mapping[str, float]) -> str:
        lr = [format(row.get("lr", math.nan), ".4g")] if self.lr else []
        return self._line(f"{int(row['epoch'])}/{self.epochs}".rjust(self.epoch_w), [
            loss_text(row.get("train_loss", math.nan)), pct(row.get("train_acc", math.nan)),
            loss_text(row.get("val_loss", math.nan)), pct(row.get("val_acc", math.nan)),
            *lr, duration(row.get("seconds", math.nan)),
        ])  # fmt: skip


def start_lines(info: StartInfo) -> list[str]:
    """Where the run goes, and where a resumed one continues."""
    lines = [f"run folder: {info.run_dir}"]
    start = info.start
    if start is not None and start.checkpoint is None:
        lines.append("no checkpoint yet: the run starts over")
    elif start is not None:
        where = (
            f"epoch {start.epoch}, batch {start.progress.batches_done} of {info.batches}"
            if start.progress is not None
            else f"the end of epoch {start.epoch}"
        )
        lines.append(f"resuming from {start.checkpoint} ({where}, step {start.step})")
    return lines


class EpochLines(Callback):
    """The epoch table on stderr, one plain line per epoch (for logs and pipes)."""

    def __init__(self, console: Console, head: bool = True) -> None:
        self.console, self.head = console, head
        self.table = EpochTable(0)

    def on_start(self, info: StartInfo) -> None:
        self.table = EpochTable(info.epochs, info.scheduled)
        if self.head:
            self._print(self.table.header())

    def on_epoch(self, row: dict[str, float]) -> None:
        self._print(self.table.row(row))

    def _print(self, text: str) -> None:
        self.console.print(text, markup=False, soft_wrap=True, highlight=False)


class LiveProgress(EpochLines):
    """A live bar on a terminal for the epoch in progress: batch counter, the epoch's running mean loss
    and accuracy, its time left, and "validating" while the validation set is evaluated.  Each finished
    epoch's row is printed above it (unless ``epoch_lines`` is False: JSON lines own stdout)."""

    def __init__(self, console: Console, epoch_lines: bool = True) -> None:
        super().__init__(console, head=epoch_lines)
        self.epoch_lines = epoch_lines
        self._progress: Progress | None = None
        self._task = 0

    def on_start(self, info: StartInfo) -> None:
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        done = info.start.progress.batches_done if info.start and info.start.progress else 0
        self._task = self._progress.add_task(
            "train", total=info.batches, completed=done, epoch=info.first_epoch, epochs=info.epochs, status=""
        )
        super().on_start(info)
        self._progress.start()

    def on_step(self, info: StepInfo) -> None:
        if self._progress is not None:
            if info.batch == 1:
                self._progress.reset(self._task, total=info.batches)
            status = f"loss {loss_text(info.mean_loss)} acc {pct(info.mean_acc)}"
            self._progress.update(self._task, completed=info.batch, epoch=info.epoch, status=status)

    def on_validate(self, epoch: int, samples: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, status=f"validating {samples:,} samples")

    def on_epoch(self, row: dict[str, float]) -> None:
        if self.epoch_lines:
            super().on_epoch(row)
        epoch = int(row["epoch"])
        if self._progress is not None and 0 < epoch < self.table.epochs:  # the next epoch's bar, empty
            self._progress.reset(self._task, completed=0)  # (reset's fields would replace them all)
            self._progress.update(self._task, epoch=epoch + 1, status="")

    def _print(self, text: str) -> None:
        console = self._progress.console if self._progress is not None else self.console
        console.print(text, markup=False, soft_wrap=True, highlight=False)

    def on_stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JsonLines(Callback):
    """One JSON object per trained epoch on stdout (epoch and step as integers, other numbers by the
    one JSON number rule: NaN null, infinities "inf"/"-inf")."""

    KEYS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")

    def on_epoch(self, row: dict[str, float]) -> None:
        if int(row["epoch"]) == 0:  # the initial state is not a trained epoch
            return
        obj = {
            k: int(row[k]) if k in ("epoch", "step") else json_number(row.get(k, math.nan)) for k in self.KEYS
        }
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


class TrainLog(Callback):
    """``<run>/train.log``: what training prints, as plain text, appended (a resumed run adds to it).

    ``header`` (the model table and the data lines) is written once the run folder exists, then the
    start lines, the epoch table and whatever :meth:`write` is given (the summary, a stop).
    """

    def __init__(self, header: Iterable[str] = ()) -> None:
        self.header = list(header)
        self._fh: TextIO | None = None
        self.table = EpochTable(0)

    def on_start(self, info: StartInfo) -> None:
        try:
            self._fh = open(Path(info.run_dir) / TRAIN_LOG, "a", encoding="utf-8")
        except OSError:
            self._fh = None  # a log that cannot be written must not stop the training
            return
        self.table = EpochTable(info.epochs, info.scheduled)
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.write([f"# cnnbp {__version__} · train · {stamp}", *self.header, *start_lines(info),
                    self.table.header()])  # fmt: skip

    def on_epoch(self, row: dict[str, float]) -> None:
        self.write([self.table.row(row)])

    def write(self, lines: Iterable[str]) -> None:
        if self._fh is None:
            return
        try:
            self._fh.writelines(line.rstrip() + "\n" for line in lines)
            self._fh.flush()
        except OSError:
            self._fh = None

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass  # like a failed write: the log must not change how the run ends
            self._fh = None
