"""Terminal output: consoles, the one-line error, the model table and the run summary.

Data (tables, summaries, JSON lines) goes to stdout; progress and errors go to stderr.  Colour and
live bars follow rich's own detection: ``TERM=dumb`` and pipes get plain text; ``NO_COLOR`` drops the
colours, while on a terminal rich still draws bold and dim (``cnnbp inspect`` turns those off too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cnnbp.core.network import LayerInfo
from cnnbp.runner import RunSummary
from cnnbp.runs import inspect_command


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


# ---- the end of a run -------------------------------------------------------------------------------


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
