"""``cnnbp evaluate``: parse the options, call :func:`cnnbp.evaluating.evaluate`, print the loss, the
accuracy and the confusion matrix (or one JSON document)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.text import Text

from cnnbp.commands import options
from cnnbp.evaluating import Evaluation, evaluate
from cnnbp.plugins import load_option
from cnnbp.render import termplot as tp
from cnnbp.render.console import pct, print_report, wrap_pairs

_DATA_HELP = (
    "Other data: a config file (its data section), an .npz or HDF5 file or an IDX folder (scaled by the "
    "run's data.scale). Default: the run's validation split."
)
_SPLITS = {"val": "the validation split", "test": "the test split", "all": "all samples"}


def evaluate_command(
    run: options.RunArg,
    checkpoint: options.BestCheckpoint = None,
    data: Annotated[
        Path | None, typer.Option("--data", metavar="CONFIG-OR-PATH", help=_DATA_HELP, show_default=False)
    ] = None,
    json_out: options.Json = False,
    plugins: options.Plugins = None,
) -> None:
    """Loss, accuracy and confusion matrix of a run's network on its validation split or other data."""
    load_option(plugins)
    result = evaluate(run, checkpoint, data)
    if json_out:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    print_report(lambda width: report_lines(result, width))


def report_lines(r: Evaluation, width: int = 80) -> list[Text]:
    """The header (checkpoint, data, loss, accuracy) and the confusion matrix."""
    rows = [
        ("checkpoint", f"{r.checkpoint} (epoch {r.epoch}; {r.chosen})"),
        ("data", f"{r.data}: {_SPLITS[r.split]} ({r.samples:,} samples)"),
        ("loss", f"{tp.scalar(r.loss, 6)} (mean {r.loss_name})"),
        ("accuracy", f"{pct(r.accuracy)} ({r.correct:,} of {r.samples:,})"),
        *[("note", n) for n in r.notes],
    ]
    lines = [Text.assemble((k, "bold"), v) for k, v in wrap_pairs(rows, width)]
    title = "confusion matrix: rows the true class, columns the predicted one"
    lines += [Text(""), Text(title, style="bold")]
    return lines + [Text(line) for line in confusion_lines(r.confusion, width)]


def confusion_lines(m: np.ndarray, width: int = 80) -> list[str]:
    """The matrix with each row's recall (its correct / its true samples, last column) and each column's
    precision (correct / its predictions, last row, whole percent); zeros as ``·``.  Columns that do not
    fit ``width`` continue in blocks below."""
    k = m.shape[0]
    cells = [[f"{v:,}" if v else "·" for v in row] for row in m]
    cell_w = max(5, *(len(c) + 1 for row in cells for c in row), len(str(k - 1)) + 1)
    label_w = max(len("precision"), len(str(k - 1)))
    recall = [pct(m[i, i] / m[i].sum()) if m[i].sum() else "-" for i in range(k)]
    precision = [f"{100 * m[j, j] / m[:, j].sum():.0f}%" if m[:, j].sum() else "-" for j in range(k)]
    per_block = max(1, (width - label_w - 8) // cell_w)
    out: list[str] = []
    for start in range(0, k, per_block):
        cols = range(start, min(k, start + per_block))
        last = cols[-1] == k - 1
        if start:
            out.append("")
        head = "true".ljust(label_w) + "".join(str(j).rjust(cell_w) for j in cols)
        out.append(head + ("  recall" if last else ""))
        for i in range(k):
            tail = f"  {recall[i].rjust(6)}" if last else ""
            out.append(str(i).ljust(label_w) + "".join(cells[i][j].rjust(cell_w) for j in cols) + tail)
        out.append("precision".ljust(label_w) + "".join(precision[j].rjust(cell_w) for j in cols))
    return [line.rstrip() for line in out]
