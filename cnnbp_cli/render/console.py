"""Terminal output: consoles, the one-line error, the model table and the run summary.

Data (tables, summaries, JSON lines) goes to stdout; progress and errors go to stderr.  Colour and
live bars follow rich's own detection: ``TERM=dumb`` and pipes get plain text; ``NO_COLOR`` drops the
colours, while on a terminal rich still draws bold and dim (``cnnbp inspect`` turns those off too).
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Callable, Iterable, Sequence
from typing import Any

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


def print_lines(console: Console, lines: Iterable[Text | str]) -> None:
    """Print lines as they are made (they already fit the width); a plain string is text, never markup."""
    for line in lines:
        console.print(line if isinstance(line, Text) else Text(line), soft_wrap=True)


def print_report(lines: Callable[[int], Sequence[Text | str]]) -> None:
    """Print ``lines(width)`` on stdout, each line as made: the terminal's width, 80 in a pipe."""
    console = stdout_console()
    print_lines(console, lines(console.width if console.is_terminal else 80))


def say(text: str) -> None:
    """One line of progress or a notice on stderr, as it is (no markup, no highlighting)."""
    stderr_console().print(text, markup=False, soft_wrap=True, highlight=False)


def shape_text(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape) if len(shape) else "()"


def pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{100 * value:.1f}%"


def num(value: float, digits: int = 4) -> str:
    return "-" if not math.isfinite(value) else f"{value:.{digits}f}"


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def model_table(infos: Sequence[LayerInfo], input_shape: Sequence[int], title: str | None = None) -> Table:
    """Layer, type, output shape and parameter count per layer, with the input first and a total last.

    (``title`` is rich's table title, padded to the table's width: print a title line of your own to
    keep piped output free of trailing spaces.)"""
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


# ---- the data of a run ------------------------------------------------------------------------------


def wrap_pairs(
    rows: Sequence[tuple[str, str]], width: int = 80, whole: Sequence[str] = (), cut: bool = False
) -> list[tuple[str, str]]:
    """``(key, text)`` lines for a key column: each text wrapped at spaces to fit ``width`` after the
    keys (the continuation lines get an empty key).  A word longer than the room (a long path) stays
    whole on a line of its own (``cut``: is cut on the left, ``…`` + its end), and the texts of the keys
    in ``whole`` (a command to copy) are never wrapped."""
    key_w = max(len(k) for k, _ in rows) + 2
    room = max(20, width - key_w)
    out: list[tuple[str, str]] = []
    for key, text in rows:
        if cut:
            text = " ".join(w if len(w) <= room else "…" + w[len(w) - room + 1 :] for w in text.split(" "))
        wrap = key not in whole
        lines = textwrap.wrap(text, room, break_long_words=False, break_on_hyphens=False) if wrap else [text]
        lines = lines or [""]
        out += [(key if i == 0 else "", line) for i, line in enumerate(lines)]
    return [(k.ljust(key_w), v) for k, v in out]


def split_text(n_train: int, n_val: int, val_is_test: bool, val_fraction: float) -> str:
    """``1,438 train · 359 val (20 % held out)``: the two splits, and once, which split val is."""
    if not n_val:
        return f"{n_train:,} train · no validation data"
    which = "the source's test split" if val_is_test else f"a seeded {100 * val_fraction:g} % hold-out"
    return f"{n_train:,} train · {n_val:,} val ({which})"


def data_lines(cfg: Any, data: Any, width: int = 80) -> list[str]:
    """The data lines under the model table: the source, then the split sizes, wrapped to ``width``."""
    from cnnbp.inspection import dataset_text

    resolved = cfg.resolved["data"]
    split = split_text(data.x_train.shape[0], data.x_val.shape[0], data.val_is_test,
                       float(resolved.get("val_fraction") or 0))  # fmt: skip
    lines: list[str] = []
    for part in dataset_text(cfg.resolved).split(" · "):  # a part that does not fit starts a line
        if lines and len(lines[-1]) + 3 + len(part) <= width - 6:
            lines[-1] += f" · {part}"
        else:
            lines.append(part)
    return [("data  " if i == 0 else "      ") + line for i, line in enumerate([*lines, split])]


def header_lines(session: Any, width: int = 80) -> list[str]:
    """What ``cnnbp train`` prints before training, as plain lines: the model table and the data lines
    (for ``train.log``)."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, highlight=False, force_terminal=False)
    console.print(f"model · {session.cfg.name}", markup=False)
    console.print(model_table(session.infos, session.cfg.model.input_shape))
    lines = [line.rstrip() for line in buf.getvalue().splitlines()]
    return lines + data_lines(session.cfg, session.data, width)


# ---- the end of a run -------------------------------------------------------------------------------


def trained_text(s: RunSummary) -> str:
    """``15 epochs, 675 steps in 5.2s (4,132 images/s)``; a resumed or stopped run names its epochs."""
    per_s = s.samples / s.train_seconds if s.train_seconds > 0 else math.nan
    rate = f" ({per_s:,.0f} images/s)" if math.isfinite(per_s) else ""
    timing = f"{plural(s.steps_run, 'step')} in {s.seconds:.1f}s{rate}"
    if not s.resumed and s.stopped is None and s.first_epoch == 1:
        return f"{plural(s.epochs_run, 'epoch')}, {timing}"
    first, last = s.first_epoch, s.last_epoch
    span = f"epoch {last}" if first == last else f"epochs {first}–{last}"
    note = " (resumed)" if s.resumed else ""
    return f"{span} of {s.epochs}{note}, {timing}"


def summary_lines(s: RunSummary, width: int = 80) -> list[Text]:
    """Final and best validation metrics, what was trained in how long, a stop, the run folder and how to
    inspect it.  One name per thing (``val_*`` as in ``metrics.csv`` and the epoch table).

    Plain lines rather than a table; long values wrap under their column, so every line fits ``width``.
    """
    rows = [("run", str(s.run_dir)), ("trained", trained_text(s))]
    if s.has_val:
        bests = (("val_acc", pct, s.best_val_acc), ("val_loss", num, s.best_val_loss))
        for key, fmt, (value, epoch) in bests:
            rows.append((key, f"final {fmt(s.final[key])}   best {fmt(value)} (epoch {epoch})"))
    else:
        rows.append(("val", "no validation data"))
    train_loss, train_acc = s.final.get("train_loss", math.nan), s.final.get("train_acc", math.nan)
    rows.append(("train", f"loss {num(train_loss)}   acc {pct(train_acc)}"))
    if s.stopped:
        rows.append(("stopped", s.stopped.removeprefix("stopped ")))
    rows.append(("inspect", inspect_command(s.run_dir)))
    return [Text.assemble((k, "bold"), v) for k, v in wrap_pairs(rows, width, whole=("run", "inspect"))]


def print_summary(console: Console, s: RunSummary) -> None:
    print_lines(console, summary_lines(s, max(console.width, 40) if console.is_terminal else 80))
