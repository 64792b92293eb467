"""Terminal output: consoles, the model table, training progress and the run summary.

Data (tables, summaries, JSON lines) goes to stdout; progress and errors go to stderr.  Colour and
live bars follow rich's own detection: ``TERM=dumb`` and pipes get plain text; ``NO_COLOR`` drops the
colours, while on a terminal rich still draws bold and dim (``cnnbp inspect`` turns those off too).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cnnbp.core.network import LayerInfo
from cnnbp.runs import inspect_command
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text


def stdout_console() -> Console:
    """The console for results; made per command so it binds to the current ``sys.stdout``."""
    return Console(highlight=False)


def stderr_console() -> Console:
    """The console for progress and errors."""
    return Console(stderr=True, highlight=False)


def print_error(message: str, console: Console | None = None) -> None:
    """``error: <message>`` on one red line on stderr (plain without colour)."""
    console = console or stderr_console()
    # soft_wrap keeps a long message on one line instead of folding it at the terminal width
    console.print(f"error: {escape(message)}", style="red", soft_wrap=True)


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape) if len(shape) else "()"


def pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.1f}%"


def num(value: float, digits: int = 4) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def model_table(infos: Sequence[LayerInfo], input_shape: Sequence[int], title: str | None = None) -> Table:
    """Layer, type, output shape and parameter count per layer, with the input first and a total last."""
    table = Table(title=title, show_footer=True, title_justify="left")
    total = sum(info.n_params for info in infos)
    table.add_column("layer", footer="total")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("params", justify="right", footer=f"{total:,}")
    table.add_row("input", "", shape_text(input_shape), "", style="dim")
    for info in infos:
        params = f"{info.n_params:,}" if info.n_params else ""
        table.add_row(info.name, info.kind, shape_text(info.output_shape), params)
    return table


def epoch_line(row: Mapping[str, float], epochs: int) -> str:
    """``epoch 3/15  train_loss 0.1234  train_acc 96.1%  val_loss 0.0987  val_acc 97.2%  2.1s``."""
    parts = [f"epoch {int(row['epoch'])}/{epochs}"]
    if math.isfinite(row.get("train_loss", math.nan)):
        parts += [f"train_loss {num(row['train_loss'])}", f"train_acc {pct(row['train_acc'])}"]
    if math.isfinite(row.get("val_loss", math.nan)):
        parts += [f"val_loss {num(row['val_loss'])}", f"val_acc {pct(row['val_acc'])}"]
    parts.append(f"{row.get('seconds', 0.0):.1f}s")
    return "  ".join(parts)


# ---- progress reporters --------------------------------------------------------------------------------


class Reporter(Protocol):
    """Receives training events; the training loop knows nothing about terminals."""

    wants_batches: bool

    def start(self, epochs: int, batches: int) -> None: ...

    def batch(self, epoch: int, batch: int, batches: int, loss: float) -> None: ...

    def epoch(self, row: Mapping[str, float]) -> None: ...

    def stop(self) -> None: ...


class EpochLines:
    """One plain line per epoch on stderr (for logs and pipes)."""

    wants_batches = False

    def __init__(self, console: Console) -> None:
        self.console = console
        self.epochs = 0

    def start(self, epochs: int, batches: int) -> None:
        self.epochs = epochs

    def batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        pass

    def epoch(self, row: Mapping[str, float]) -> None:
        self.console.print(epoch_line(row, self.epochs), markup=False, soft_wrap=True)

    def stop(self) -> None:
        pass


class LiveProgress(EpochLines):
    """A live bar on a terminal (epoch, batch, running loss, ETA), each finished epoch logged above it."""

    wants_batches = True

    def __init__(self, console: Console, epoch_lines: bool = True) -> None:
        super().__init__(console)
        self.epoch_lines = epoch_lines
        self._progress: Progress | None = None
        self._task = 0

    def start(self, epochs: int, batches: int) -> None:
        self.epochs = epochs
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

    def batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        assert self._progress is not None
        self._progress.update(self._task, advance=1, epoch=epoch, batch=batch, loss=num(loss))

    def epoch(self, row: Mapping[str, float]) -> None:
        if self.epoch_lines:
            text = epoch_line(row, self.epochs)
            if self._progress is not None:
                self._progress.console.print(text, markup=False, soft_wrap=True)
            else:
                self.console.print(text, markup=False, soft_wrap=True)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class JsonLines:
    """One JSON object per trained epoch on stdout; NaN becomes null so every line is strict JSON."""

    wants_batches = False
    KEYS = ("epoch", "step", "train_loss", "train_acc", "val_loss", "val_acc", "seconds")

    def start(self, epochs: int, batches: int) -> None:
        pass

    def batch(self, epoch: int, batch: int, batches: int, loss: float) -> None:
        pass

    def epoch(self, row: Mapping[str, float]) -> None:
        if int(row["epoch"]) == 0:  # the initial state is not a trained epoch
            return
        obj = {k: _json_value(k, row.get(k, math.nan)) for k in self.KEYS}
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def stop(self) -> None:
        pass


def json_number(value: float) -> float | str | None:
    """A number for a JSON report: NaN as null, ±inf as ``"inf"`` / ``"-inf"``, others unchanged."""
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def _json_value(key: str, value: float) -> Any:
    if key in ("epoch", "step"):
        return int(value)
    return float(value) if math.isfinite(value) else None


# ---- the end of a run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run reports."""

    run_dir: Path
    epochs: int
    steps: int
    seconds: float  # wall time of the whole run
    train_seconds: float  # time spent in training passes only
    samples: int  # training samples processed
    final: Mapping[str, float]  # the last epoch's metrics row
    best_val_acc: tuple[float, int]  # (value, epoch)
    best_val_loss: tuple[float, int]
    has_val: bool
    val_is_test: bool


def summary_lines(s: RunSummary) -> list[Text]:
    """Final and best validation metrics, time, throughput, the run folder and how to inspect it.

    Plain lines rather than a table, printed with ``soft_wrap`` so a long path stays whole and the
    inspect command can be copied.
    """
    per_s = s.samples / s.train_seconds if s.train_seconds > 0 else math.nan
    rows = [
        ("run", str(s.run_dir)),
        (
            "trained",
            f"{plural(s.epochs, 'epoch')}, {s.steps:,} steps in {s.seconds:.1f}s ({per_s:,.0f} images/s)",
        ),
    ]
    label = "test" if s.val_is_test else "val"
    if s.has_val:
        acc, acc_e = s.best_val_acc
        loss, loss_e = s.best_val_loss
        final_acc, final_loss = s.final["val_acc"], s.final["val_loss"]
        rows.append((f"{label}_acc", f"final {pct(final_acc)}   best {pct(acc)} (epoch {acc_e})"))
        rows.append((f"{label}_loss", f"final {num(final_loss)}   best {num(loss)} (epoch {loss_e})"))
    else:
        rows.append(("val", "no validation data"))
    train_loss, train_acc = s.final.get("train_loss", math.nan), s.final.get("train_acc", math.nan)
    rows.append(("train", f"loss {num(train_loss)}   acc {pct(train_acc)}"))
    rows.append(("inspect", inspect_command(s.run_dir)))
    width = max(len(k) for k, _ in rows) + 2
    return [Text.assemble((k.ljust(width), "bold"), v) for k, v in rows]


def print_summary(console: Console, s: RunSummary) -> None:
    for line in summary_lines(s):
        console.print(line, soft_wrap=True)
