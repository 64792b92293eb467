"""``cnnbp predict``: parse the options, call :func:`cnnbp.predicting.predict`, print each sample's top
class and its probabilities (or outputs), or one JSON document."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from cnnbp.commands import options
from cnnbp.plugins import load_option
from cnnbp.predicting import Prediction, predict
from cnnbp.render.console import pct, print_report, wrap_pairs

_INPUT_HELP = "An .npz (key x), IDX or HDF5 (dataset x) file, or an image (PNG, JPEG; needs cnnbp[image])."
_TOP = 3  # classes shown per sample when all of them do not fit the width


def predict_command(
    run: options.RunArg,
    input_path: Annotated[Path, typer.Argument(metavar="INPUT", help=_INPUT_HELP, show_default=False)],
    checkpoint: options.BestCheckpoint = None,
    json_out: options.Json = False,
    plugins: options.Plugins = None,
) -> None:
    """Class probabilities (or outputs) and the top class of each input sample, by a run's network."""
    load_option(plugins)
    result = predict(run, input_path, checkpoint)
    if json_out:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return
    print_report(lambda width: report_lines(result, width))


def report_lines(p: Prediction, width: int = 80) -> list[Text]:
    """The header (checkpoint, input, what the numbers are), then one row per sample."""
    what = (
        "class probabilities (the softmax of the network's outputs)"
        if p.kind == "probabilities"
        else "the network's outputs (an mse run: no softmax)"
    )
    rows = [
        ("checkpoint", f"{p.checkpoint} (epoch {p.epoch}; {p.chosen})"),
        ("input", f"{p.input} ({p.values.shape[0]:,} sample{'s' * (p.values.shape[0] != 1)})"),
        *[("note", n) for n in p.notes],
        ("values", what),
    ]
    lines = [Text.assemble((k, "bold"), v) for k, v in wrap_pairs(rows, width)]
    return [*lines, Text(""), *[Text(line) for line in sample_lines(p, width)]]


def sample_lines(p: Prediction, width: int = 80) -> list[str]:
    """``sample  top  0  1  …`` with every class's value when they fit the width, else the top three."""
    n, k = p.values.shape
    show = pct if p.kind == "probabilities" else (lambda v: f"{v:.4f}")
    cell = max(4, *(len(show(float(v))) + 1 for v in p.values.ravel()))
    sample_w = max(len("sample"), len(str(n - 1)))
    fits = sample_w + 4 + k * cell <= width
    if fits:
        head = "sample".ljust(sample_w) + " top" + "".join(str(j).rjust(cell) for j in range(k))
        body = [
            str(i).ljust(sample_w) + str(int(top)).rjust(4) + "".join(show(float(v)).rjust(cell) for v in row)
            for i, (top, row) in enumerate(zip(p.top, p.values, strict=True))
        ]
        return [head, *body]
    head = "sample".ljust(sample_w) + "  top" + "   classes by value (class: value)"
    body = []
    for i, row in enumerate(p.values):
        order = row.argsort()[::-1][:_TOP]
        best = "   ".join(f"{j}: {show(float(row[j]))}" for j in order)
        body.append(str(i).ljust(sample_w) + str(int(p.top[i])).rjust(5) + "   " + best)
    return [head, *body]
