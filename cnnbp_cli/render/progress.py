"""Training progress on the terminal: the runner's callbacks that draw a live bar, print epoch lines or
JSON lines."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from cnnbp.files import json_number
from cnnbp.render.console import num, pct
from cnnbp.runner import Callback, StartInfo


def epoch_line(row: Mapping[str, float], epochs: int) -> str:
    """``epoch 3/15  train_loss 0.1234  train_acc 96.1%  val_loss 0.0987  val_acc 97.2%  2.1s``."""
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    if math.isfinite(row.get("train_loss", math.nan)):
        parts += [f"train_loss {num(row['train_loss'])}", f"train_acc {pct(row['train_acc'])}"]
    if math.isfinite(row.get("val_loss", math.nan)):
        parts += [f"val_loss {num(row['val_loss'])}", f"val_acc {pct(row['val_acc'])}"]
    parts.append(f"{row.get('seconds', 0.0):.1f}s")
    return "  ".join(parts)


class EpochLines(Callback):
    """One plain line per epoch on stderr (for logs and pipes)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.epochs = 0

    def on_start(self, info: StartInfo) -> None:
        self.epochs = info.epochs

    def on_epoch(self, row: dict[str, float]) -> None:
        self.console.print(epoch_line(row, self.epochs), markup=False, soft_wrap=True)


class LiveProgress(EpochLines):
    """A live bar on a terminal (epoch, batch, running loss, ETA), each finished epoch logged above it."""

    def __init__(self, console: Console, epoch_lines: bool = True) -> None:
        super().__init__(console)
        self.epoch_lines = epoch_lines
        self._progress: Progress | None = None
        self._task = 0

    def on_start(self, info: StartInfo) -> None:
        self.epochs = epochs = info.epochs
        batches = info.batches
        self._progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
            BarColumn(),
            TextColumn("batch {task.fields[batch]}/{task.fields[batches]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self._task = self._progress.add_task(
            "train", total=epochs * batches, epoch=1, epochs=epochs, batch=0, batches=batches, loss="-"
        )
        self._progress.start()

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=1, epoch=epoch, batch=batch, loss=num(loss))

    def on_epoch(self, row: dict[str, float]) -> None:
        if self.epoch_lines:
            text = epoch_line(row, self.epochs)
            console = self._progress.console if self._progress is not None else self.console
            console.print(text, markup=False, soft_wrap=True)

    def on_stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JsonLines(Callback):
    """One JSON object per trained epoch on stdout (epoch and step as integers, other numbers by the
    one JSON number rule: NaN null, infinities "inf"/"-inf")."""

    KEYS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")

    def on_epoch(self, row: dict[str, float]) -> None:
        if int(row["epoch"]) == 0:  # the initial state is not a trained epoch
            return
        obj = {
            k: int(row[k]) if k in ("epoch", "step") else json_number(row.get(k, math.nan)) for k in self.KEYS
        }
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
