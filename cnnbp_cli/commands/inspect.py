"""``cnnbp inspect``: look inside a run's checkpoints — layers, deltas, gradients, weights, curves.

Views (``--show``):

- ``summary``: the run header, a layer table of one checkpoint (shapes, parameters, ‖θ‖, ‖∂L/∂θ‖, mean
  and max |δ| over the probe batch) and the loss and accuracy curves.
- ``deltas``: every selected layer's δ for one probe sample: small maps (up to 12×12) as numbers with
  rows and columns labelled from 1 as in the seeds (δ₁₁ …), larger ones as heatmaps, vectors as rows.
- ``grads`` / ``weights``: the same pictures of ``/grads`` and ``/weights`` (conv kernels per filter and
  input channel, biases as vectors, untied biases as maps).
- ``metrics``: every epoch's metrics and the curves.
- ``--checkpoint all`` with deltas, grads or weights: one norm per layer and checkpoint in a table.

The numbers come from :mod:`cnnbp.inspection`; this module parses the options and draws.  ``--json``
prints the same numbers as one JSON document on stdout (arrays as nested lists, NaN as null and ±inf as
``"inf"`` / ``"-inf"``), never truncated.  Text output fits the console width (80 columns when it is not
a terminal); under ``NO_COLOR`` or in a pipe it contains no escape codes: heatmaps become sign + shade
characters.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.text import Text

from cnnbp import inspection as ins
from cnnbp.checkpoint import Checkpoint
from cnnbp.commands import options
from cnnbp.errors import UserError
from cnnbp.plugins import load_option
from cnnbp.render import termplot as tp
from cnnbp.render.console import pct, shape_text, stderr_console
from cnnbp.runs import METRIC_COLUMNS

SMALL_MAP = 12  # maps up to 12×12 print as numbers, larger ones as heatmaps
MAX_MAPS = 8  # maps shown per array without --full
MAX_VECTOR_LINES = 8  # rows of a vector shown without --full
MAX_HEAT_ROWS = 40  # heatmap rows shown without --full


class View(str, Enum):
    """What ``--show`` can display."""

    summary = "summary"
    deltas = "deltas"
    grads = "grads"
    weights = "weights"
    metrics = "metrics"


@dataclass(frozen=True)
class Style:
    """How arrays are drawn: digits, truncation, colour and the width to fit."""

    precision: int
    full: bool
    color: bool
    width: int


# ---- drawing arrays -----------------------------------------------------------------------------------


def _axes_names(arr: np.ndarray, kind: str) -> tuple[str, ...]:
    """Names of the leading (non-map) axes: δ channels, kernel filters and input channels."""
    lead = arr.ndim - 2
    if kind == "delta":
        names: tuple[str, ...] = ("channel",)
    else:
        names = ("filter", "input")
    return tuple(names[i] if i < len(names) else f"axis {i}" for i in range(lead))


def draw_array(arr: np.ndarray, kind: str, style: Style, channel: int | None) -> list[Text]:
    """Lines picturing one array: a scalar, a vector, a matrix or a stack of maps, with statistics.

    Maps (the last two axes of arrays with 3 or more) up to 12×12 are number matrices; larger ones are
    heatmaps sharing one scale; ``--full`` prints every value as numbers.  ``channel`` picks one index of
    the first axis of a stack of maps.  Numbers of one array share a power of ten, noted ``× 1e-04``.
    """
    arr = np.asarray(arr)
    w, p = style.width, style.precision
    if arr.ndim == 0:
        return [Text(tp.plain_number(float(arr), p, tp.exponent_for(arr)))]

    names = _axes_names(arr, kind)
    offset = 0
    if channel is not None and arr.ndim >= 3:
        arr, offset = arr[channel : channel + 1], channel
    e = tp.exponent_for(arr)
    note = tp.factor_note(e)
    if arr.ndim == 1:
        head = [Text(f"values {note}", style="bold")] if note else []
        body = tp.vector_lines(arr, p, w, None if style.full else MAX_VECTOR_LINES, e)
        return [*head, *body, *tp.stats_lines(arr, p, w, exponent=e)]

    maps = arr.reshape(1, *arr.shape) if arr.ndim == 2 else arr
    lead = maps.shape[:-2]
    indices = list(np.ndindex(*lead))
    shown = indices if style.full else indices[:MAX_MAPS]
    heat = _is_heat(arr, style)
    scale = tp.heat_scale(arr)
    lines: list[Text] = []
    if heat:
        lines += tp.heat_legend(scale, p, style.color, w)
    elif note:
        lines.append(Text(f"values {note}" + (" (every map)" if len(indices) > 1 else ""), style="bold"))
    blocks = []
    for idx in shown:
        m = maps[idx]
        if arr.ndim == 2:
            title = ""
        else:
            parts = zip(names, idx, strict=True)
            title = ", ".join(f"{n} {i + (offset if k == 0 else 0)}" for k, (n, i) in enumerate(parts))
        body = _draw_map(m, style, scale, heat, w, e)
        stat_w = min(w, max(tp.block_width(body), 32))
        stats = tp.stats_lines(m, p, stat_w, exponent=e) if arr.ndim > 2 else []
        blocks.append([*([Text(tp.clip(title, w), style="bold")] if title else []), *body, *stats])
    lines += tp.side_by_side(blocks, w)
    if len(shown) < len(indices):
        more = len(indices) - len(shown)
        pick = "--channel N picks one" + (" filter" if kind != "delta" else "")
        lines.append(
            Text(tp.clip(f"{tp.ELLIPSIS} {more} more maps ({pick}; --full shows all)", w), style="dim")
        )
    if arr.ndim == 2:
        lines += tp.stats_lines(arr, p, w, exponent=e)
    elif len(indices) > 1:
        lines += tp.stats_lines(arr, p, w, prefix=f"all {len(indices)} maps: ", exponent=e)
    return lines


def _is_heat(arr: np.ndarray, style: Style) -> bool:
    """Whether maps of this array are drawn as heatmaps (larger than 12×12, without --full)."""
    return not style.full and (arr.shape[-2] > SMALL_MAP or arr.shape[-1] > SMALL_MAP)


def _draw_map(m: np.ndarray, style: Style, scale: float, heat: bool, width: int, exponent: int) -> list[Text]:
    """One map as a heatmap or a number matrix."""
    if heat:
        return tp.heatmap(m, scale=scale, color=style.color, width=width, max_rows=MAX_HEAT_ROWS)
    return tp.number_matrix(m, style.precision, width, exponent)


def _section(console: Console, text: str) -> None:
    """A blank line and a bold heading."""
    console.print()
    console.print(Text(tp.clip(text, console.width), style="bold"), soft_wrap=True)


def _print_lines(console: Console, lines: Sequence[Text]) -> None:
    """Print lines as they are (they already fit the width)."""
    for line in lines:
        console.print(line, soft_wrap=True)


def _ck_lines(ck: Checkpoint, width: int) -> list[Text]:
    """Which checkpoint is shown: its epoch, run and step, then its path (cut on the left to fit)."""
    flag = " · interrupted mid-epoch" if ck.interrupted else ""
    head = f"checkpoint {ck.epoch} of run {ck.run_name} · step {ck.step}{flag}"
    return [Text(tp.clip(head, width), style="dim"), Text(tp.clip_left(str(ck.path), width), style="dim")]


def _plugins_text(plugins: list[dict[str, str]], width: int) -> str:
    """``…/my_layers.py (305d53ed3da5)`` per plugin: paths cut on the left, so file names stay."""
    room = max(12, (width - 2 * (len(plugins) - 1)) // len(plugins) - 15)
    return ", ".join(f"{tp.clip_left(p['path'], room)} ({str(p.get('sha256', ''))[:12]})" for p in plugins)


def _plural(n: int, word: str) -> str:
    """``1 probe sample``, ``8 probe samples``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---- views: text --------------------------------------------------------------------------------------


def print_summary(console: Console, data: dict[str, Any], style: Style) -> None:
    """The ``summary`` view: the run header, the layer table and the curves."""
    run, ck = data["run"], data["checkpoint"]
    top = run["best_val_acc"]
    best_text = f"{pct(top)} (epoch {run['best_val_acc_epoch']})" if math.isfinite(top) else "-"
    planned = run["epochs_planned"]
    epochs = f"{run['epochs']}" + (f" of {planned}" if planned is not None else "")
    have = run["checkpoints"]
    rows = [
        ("run", run["name"] + (f"  ({run['folder']})" if run["folder"] else "")),
        ("dataset", run["dataset"]),
        *([("plugins", _plugins_text(run["plugins"], style.width - 14))] if run["plugins"] else []),
        ("dtype · loss", f"{run['dtype']} · {run['loss']}"),
        ("epochs", f"{epochs} · {ck['step']:,} steps at checkpoint {ck['epoch']}"),
        ("best val_acc", best_text),
        ("checkpoints", f"{ins.epoch_ranges(have)} ({len(have)})" if have else "-"),
        ("showing", f"checkpoint {ck['epoch']}" + (" (interrupted mid-epoch)" if ck["interrupted"] else "")),
    ]
    key_w = max(len(k) for k, _ in rows) + 2
    for key, value in rows:
        line = Text(key.ljust(key_w), style="bold")
        line.append(value)
        if len(line.plain) > style.width:  # cut with …, printed without the bold key
            line = Text(tp.clip(line.plain, style.width))
        console.print(line, soft_wrap=True)

    p = style.precision
    headers = ("layer", "type", "output", "params", "‖θ‖", "‖∂L/∂θ‖", "mean|δ|", "max|δ|")
    rows = [
        (
            r["name"], r["type"], shape_text(r["output_shape"]), f"{r['params']:,}" if r["params"] else "",
            _opt(r["param_norm"], p, ""), _opt(r["grad_norm"], p, ""), _opt(r["delta_mean_abs"], p),
            _opt(r["delta_max_abs"], p),
        )
        for r in data["layers"]
    ]  # fmt: skip
    console.print()
    console.print(Text(f"layers at checkpoint {ck['epoch']}", style="bold"), soft_wrap=True)
    right = [False, False, False, True, True, True, True, True]
    _print_lines(console, tp.text_table(headers, rows, style.width, right=right))
    n = run["probe_samples"]
    notes = [
        "‖θ‖, ‖∂L/∂θ‖: L2 norm over all of a layer's parameters (weights and biases)",
        f"mean|δ|, max|δ|: over every element of δ for the {_plural(n, 'probe sample')}",
    ]
    _print_lines(console, [Text(x, style="dim") for x in tp.pack(notes, style.width, sep="; ")])
    print_curves(console, data["metrics"], style)


def _opt(value: float, precision: int, missing: str = "-") -> str:
    """A number with ``precision`` significant digits, or ``missing`` when it is not finite."""
    return tp.scalar(value, precision) if math.isfinite(value) else missing


def print_curves(console: Console, metrics: dict[str, Any], style: Style) -> None:
    """Loss (log scale when it spans more than a factor of 30) and accuracy per epoch, train and val."""
    epochs = ins.metric_column(metrics, "epoch")
    charts = (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc"))
    for title, train_key, val_key in charts:
        train, val = ins.metric_column(metrics, train_key), ins.metric_column(metrics, val_key)
        log_y = title == "loss" and ins.log_scale(train, val)
        series = [
            tp.Series("train", epochs, train, "*", "cyan"),
            tp.Series("val", epochs, val, "o", "magenta"),
        ]
        fmt = pct if title == "accuracy" else (lambda v: format(v, ".4g"))
        console.print()
        chart = tp.line_chart(
            series, width=style.width, title=title, y_format=fmt, color=style.color, log_y=log_y
        )
        _print_lines(console, chart)


def print_metrics(console: Console, data: dict[str, Any], style: Style) -> None:
    """The ``metrics`` view: where the metrics come from, a table of every epoch, and the curves."""
    p = style.precision
    rows = [[_metric_cell(c, v, p) for c, v in zip(METRIC_COLUMNS, values, strict=True)]
            for values in ins.metric_rows(data["metrics"])]  # fmt: skip
    title = tp.clip_left(f"metrics · {data['source']}", style.width)
    console.print(Text(title, style="bold"), soft_wrap=True)
    _print_lines(
        console, tp.text_table(METRIC_COLUMNS, rows, style.width, right=[True] * len(METRIC_COLUMNS))
    )
    print_curves(console, data["metrics"], style)


def _metric_cell(column: str, v: float, precision: int) -> str:
    """One cell of the metrics table: ``-`` when missing, percentages for accuracies."""
    if not math.isfinite(v):
        return "-"
    if column in ("epoch", "step"):
        return str(int(v))
    if column.endswith("_acc"):
        return pct(v)
    if column == "lr":
        return tp.scalar(v, precision)
    if column == "seconds":
        return f"{v:.2f}"
    return f"{v:.{precision}f}"


def print_deltas(console: Console, data: dict[str, Any], ck: Checkpoint, style: Style) -> None:
    """The ``deltas`` view: the probe sample, then each layer's δ drawn."""
    s = data["sample"]
    target = s["target"]
    target_text = str(int(target)) if np.ndim(target) == 0 else "[" + ", ".join(
        tp.scalar(float(v), style.precision) for v in np.ravel(target)
    ) + "]"  # fmt: skip
    head = [
        f"probe sample {s['index']} of {ins.probe_count(ck)}: "
        f"training sample {s['train_index']}, target {target_text}",
        "δ = ∂L_x/∂(layer output) for this sample's own loss (per sample, undivided);",
        "maps: rows i and columns j counted from 1, as δ_ij in the seeds",
    ]
    _print_lines(console, _ck_lines(ck, style.width))
    _print_lines(console, [Text(tp.clip(h, style.width), style="dim") for h in head])
    for entry in data["layers"]:
        arr = ck.deltas[entry["name"]][s["index"]]
        _section(console, f"{entry['name']} ({entry['type']}) · δ · {shape_text(entry['shape'])}")
        _print_lines(console, draw_array(arr, "delta", style, entry["channel"]))


def print_params(console: Console, data: dict[str, Any], ck: Checkpoint, style: Style) -> None:
    """The ``grads`` or ``weights`` view: each parameter array of each layer drawn."""
    which = data["view"]
    source = ck.grads if which == "grads" else ck.weights
    _print_lines(console, _ck_lines(ck, style.width))
    if which == "grads":
        probes = _plural(ins.probe_count(ck), "probe sample")
        note = f"∂L/∂θ: gradient of the mean loss over the {probes} at these weights"
        _print_lines(console, [Text(tp.clip(note, style.width), style="dim")])
    if not data["layers"] or not any(entry["params"] for entry in data["layers"]):
        console.print(
            "no gradients recorded (the probe batch is empty)" if which == "grads" else "no parameters"
        )
        return
    for entry in data["layers"]:
        for key, info in entry["params"].items():
            label = f"∂L/∂{key}" if which == "grads" else key
            _section(
                console, f"{entry['name']}.{key} ({entry['type']}) · {label} · {shape_text(info['shape'])}"
            )
            _print_lines(console, draw_array(source[entry["name"]][key], "param", style, info["channel"]))


def print_norms(console: Console, data: dict[str, Any], style: Style) -> None:
    """The layers × checkpoints table, split into column blocks that fit the width."""
    p = style.precision
    cks = data["checkpoints"]
    heads = [f"{c['epoch']}*" if c["interrupted"] else str(c["epoch"]) for c in cks]
    cells = [[_opt(v, p) for v in row["values"]] for row in data["layers"]]
    name_w = max([len("layer")] + [len(r["name"]) for r in data["layers"]])
    cell_w = max([len(h) for h in heads] + [len(c) for row in cells for c in row]) + 2
    per_block = max(1, (style.width - name_w) // cell_w)
    title = {"deltas": "mean ‖δ_x‖", "grads": "‖∂L/∂θ‖", "weights": "‖θ‖"}[data["view"]]
    console.print(Text(tp.clip(f"{title} per layer (rows, output → input) and checkpoint (columns)",
                               style.width), style="bold"), soft_wrap=True)  # fmt: skip
    for start in range(0, len(cks), per_block):
        stop = min(len(cks), start + per_block)
        console.print()
        head = Text("epoch".ljust(name_w) + "".join(h.rjust(cell_w) for h in heads[start:stop]), style="bold")
        console.print(head, soft_wrap=True)
        for row, row_cells in zip(data["layers"], cells, strict=True):
            line = row["name"].ljust(name_w) + "".join(c.rjust(cell_w) for c in row_cells[start:stop])
            console.print(Text(line), soft_wrap=True)
    notes = [data["measure"]]
    if any(c["interrupted"] for c in cks):
        notes.append("* interrupted mid-epoch")
    console.print()
    for note in notes:
        for line in tp.pack(note.split(" "), style.width, sep=" "):
            console.print(Text(line, style="dim"), soft_wrap=True)


# ---- the command --------------------------------------------------------------------------------------


def make_console() -> Console:
    """The stdout console; under NO_COLOR it emits no escape codes at all (not even bold)."""
    console = Console(highlight=False)
    if console.no_color:
        console = Console(highlight=False, color_system=None)
    return console


_TARGET_HELP = "A run folder (its last checkpoint), its checkpoints/ folder, or one checkpoint file (.h5)."
_CHECKPOINT_HELP = "Epoch number, 'last', or 'all' (a table of per-layer norms across every checkpoint)."
_SHOW_HELP = "summary | deltas | grads | weights | metrics."
_LAYER_HELP = "Only these layers (repeat, or comma-separate). Default: all for summary and norm tables, "
_LAYER_HELP += "the layers with parameters otherwise."
_SAMPLE_HELP = "Probe sample (0-based) whose deltas to show."
_CHANNEL_HELP = "Only this channel of δ maps, or this filter of conv kernels and untied biases (0-based)."
_FULL_HELP = "Print every value of every array as numbers: no heatmaps, nothing cut."
_PRECISION_HELP = "Decimals of array values; significant digits in tables and norms."
_JSON_HELP = "Print the numbers as one JSON document on stdout (arrays as nested lists)."


def inspect(
    target: Annotated[Path, typer.Argument(help=_TARGET_HELP, show_default=False)],
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", "-c", metavar="N|last|all", help=_CHECKPOINT_HELP)
    ] = "last",
    show: Annotated[View, typer.Option("--show", "-s", metavar="VIEW", help=_SHOW_HELP)] = View.summary,
    layer: Annotated[
        list[str] | None, typer.Option("--layer", "-l", metavar="NAME", help=_LAYER_HELP, show_default=False)
    ] = None,
    sample: Annotated[int, typer.Option("--sample", metavar="I", min=0, help=_SAMPLE_HELP)] = 0,
    channel: Annotated[
        int | None, typer.Option("--channel", metavar="C", min=0, help=_CHANNEL_HELP, show_default=False)
    ] = None,
    full: Annotated[bool, typer.Option("--full", help=_FULL_HELP)] = False,
    precision: Annotated[
        int, typer.Option("--precision", "-p", metavar="P", min=0, max=15, help=_PRECISION_HELP)
    ] = 4,
    json_out: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    plugins: options.Plugins = None,
) -> None:
    """Look inside a run: layer summary, deltas, gradients, weights and metrics of its checkpoints."""
    load_option(plugins)
    console = make_console()
    style = Style(precision, full, console.color_system is not None, max(console.width, 40))
    which = show.value
    text = checkpoint.strip().lower()

    if text == "all":
        if which not in ins.NORM_VIEWS:
            raise UserError(f"--checkpoint all: works with --show deltas, grads or weights, not {which}")
        data = ins.norms_data(ins.load_all(target), layer, which)
        if json_out:
            _dump(data)
        else:
            print_norms(console, data, style)
        return

    ck = ins.load_checkpoint(target, text)
    if which == "metrics":
        data = ins.metrics_data(target, ck, _warn)
    elif which == "summary":
        data = ins.summary_data(target, ck, ins.select_layers(ck, layer, params_only=False), _warn)
    elif which == "deltas":
        data = ins.deltas_data(ck, ins.select_layers(ck, layer, params_only=not layer), sample, channel)
    else:
        data = ins.params_data(ck, ins.select_layers(ck, layer, params_only=True), which, channel)
    if json_out:
        _dump(data)
    elif which == "metrics":
        print_metrics(console, data, style)
    elif which == "summary":
        print_summary(console, data, style)
    elif which == "deltas":
        print_deltas(console, data, ck, style)
    else:
        print_params(console, data, ck, style)


def _warn(message: str) -> None:
    """A note on stderr (the library's ``warn`` callback)."""
    stderr_console().print(message, markup=False, soft_wrap=True)


def _dump(data: dict[str, Any]) -> None:
    """The view's data as one line of strict JSON on stdout."""
    sys.stdout.write(json.dumps(ins.to_json(data)) + "\n")  # ASCII: safe whatever the locale
    sys.stdout.flush()
