"""``cnnbp inspect``: look inside a run's checkpoints — layers, deltas, gradients, weights, curves.

Views (``--show``):

- ``summary``: the run header, a layer table of one checkpoint (shapes, parameters, ‖θ‖, ‖∂L/∂θ‖, mean
  and max |δ| over the probe batch) and the loss and accuracy curves.
- ``deltas``: every selected layer's δ for one probe sample: small maps (up to 12×12) as numbers with
  rows and columns labelled from 1 as in the seeds (δ₁₁ …), larger ones as heatmaps, vectors as rows.
- ``grads`` / ``weights``: the same pictures of ``/grads`` and ``/weights`` (conv kernels per filter and
  input channel, biases as vectors, untied biases as maps).
- ``metrics``: every epoch's metrics and the curves.
- ``activations``: every selected layer's output for one probe sample, drawn as the deltas are (both
  views show the probe sample's input image first, with its target).
- ``histograms``: per layer, the distribution of weights, gradients and deltas at each checkpoint, one
  row per checkpoint over a shared axis.
- ``health``: the gradient health of a checkpoint (δ flow, dead and saturated units, update ratios) and
  its verdicts (:mod:`cnnbp.health`); with ``--checkpoint all`` how each figure moved.
- ``--checkpoint all`` with deltas, grads or weights: one norm per layer and checkpoint in a table.
- several runs (``inspect RUN_A RUN_B …`` or a folder holding runs): their metrics side by side, the
  config keys that differ, overlaid curves (``summary``, ``metrics``) or their health (``health``).

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
from cnnbp.health import parse_thresholds
from cnnbp.plugins import load_option
from cnnbp.render import termplot as tp
from cnnbp.render.compare import print_compare, print_compare_health
from cnnbp.render.console import pct, plural, print_lines, shape_text, stderr_console, wrap_pairs
from cnnbp.render.health import print_health, print_health_all
from cnnbp.render.sweep import print_sweep
from cnnbp.runs import METRIC_COLUMNS
from cnnbp.sweeping import is_sweep_folder, summary_json, sweep_summary

SMALL_MAP = 12  # maps up to 12×12 print as numbers, larger ones as heatmaps
MAX_MAPS = 8  # maps shown per array without --full
MAX_VECTOR_LINES = 8  # rows of a vector shown without --full
MAX_HEAT_ROWS = 40  # heatmap rows shown without --full
MAX_HIST_ROWS = 12  # checkpoints a histogram shows without --full (evenly spread, first and last kept)
MAX_INPUT_CHANNELS = 3  # channels of the probe input drawn beside deltas and activations


class View(str, Enum):
    """What ``--show`` can display."""

    summary = "summary"
    deltas = "deltas"
    activations = "activations"
    grads = "grads"
    weights = "weights"
    metrics = "metrics"
    histograms = "histograms"
    health = "health"


COMPARE_VIEWS = ("summary", "metrics", "health")  # what --show can be for several runs


@dataclass(frozen=True)
class Style:
    """How arrays are drawn: digits, truncation, colour and the width to fit."""

    precision: int
    full: bool
    color: bool
    width: int
    palette: str | None = None  # the terminal's colour system (heatmap palettes): truecolor, 256, standard


# ---- drawing arrays -----------------------------------------------------------------------------------


def _axes_names(arr: np.ndarray, kind: str) -> tuple[str, ...]:
    """Names of the leading (non-map) axes: δ channels, kernel filters and input channels."""
    lead = arr.ndim - 2
    if kind in ("delta", "activation"):
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
        lines += tp.heat_legend(scale, p, style.palette, w)
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
        pick = "--channel N picks one" + (" filter" if kind == "param" else "")
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
        return tp.heatmap(m, scale=scale, color=style.palette, width=width, max_rows=MAX_HEAT_ROWS)
    return tp.number_matrix(m, style.precision, width, exponent)


def _section(console: Console, text: str) -> None:
    """A blank line and a bold heading."""
    console.print()
    console.print(Text(tp.clip(text, console.width), style="bold"), soft_wrap=True)


def _ck_lines(ck: Checkpoint, width: int) -> list[Text]:
    """Which checkpoint is shown: its epoch, run and step, then its path (cut on the left to fit)."""
    flag = " · interrupted mid-epoch" if ck.interrupted else ""
    head = f"checkpoint {ck.epoch} of run {ck.run_name} · step {ck.step}{flag}"
    return [Text(tp.clip(head, width), style="dim"), Text(tp.clip_left(str(ck.path), width), style="dim")]


def _plugins_text(plugins: list[dict[str, str]], width: int) -> str:
    """``…/my_layers.py (305d53ed3da5)`` per plugin: paths cut on the left, so file names stay."""
    room = max(12, (width - 2 * (len(plugins) - 1)) // len(plugins) - 15)
    return ", ".join(f"{tp.clip_left(p['path'], room)} ({str(p.get('sha256', ''))[:12]})" for p in plugins)


# ---- views: text --------------------------------------------------------------------------------------


def print_summary(console: Console, data: dict[str, Any], style: Style) -> None:
    """The ``summary`` view: the run header, the layer table and the curves."""
    run, ck = data["run"], data["checkpoint"]
    planned = run["epochs_planned"]
    epochs = f"{run['epochs']}" + (f" of {planned}" if planned is not None else "") + _ended(run["status"])
    have = run["checkpoints"]
    rows = [
        ("run", run["name"] + (f"  ({run['folder']})" if run["folder"] else "")),
        ("dataset", run["dataset"] + _val_text(run["status"])),
        *([("plugins", _plugins_text(run["plugins"], style.width - 14))] if run["plugins"] else []),
        ("dtype · loss", f"{run['dtype']} · {run['loss']}"),
        ("epochs", f"{epochs} · {ck['step']:,} steps at checkpoint {ck['epoch']}"),
        *([("status", _status_text(run["status"]))] if run["status"] else []),
        ("best epoch", _best_text(run["best"])),
        ("checkpoints", f"{ins.epoch_ranges(have)} ({len(have)})" if have else "-"),
        ("showing", f"checkpoint {ck['epoch']}" + (" (interrupted mid-epoch)" if ck["interrupted"] else "")),
    ]
    for key, value in wrap_pairs(rows, style.width, cut=True):
        line = Text(key, style="bold")
        line.append(value)
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
    print_lines(console, tp.text_table(headers, rows, style.width, right=right))
    n = run["probe_samples"]
    notes = [
        "‖θ‖, ‖∂L/∂θ‖: L2 norm over all of a layer's parameters (weights and biases)",
        f"mean|δ|, max|δ|: over every element of δ for the {plural(n, 'probe sample')}",
    ]
    print_lines(console, [Text(x, style="dim") for x in tp.pack(notes, style.width, sep="; ")])
    print_curves(console, data["metrics"], style, data.get("steps"))


def _opt(value: float, precision: int, missing: str = "-") -> str:
    """A number with ``precision`` significant digits, or ``missing`` when it is not finite."""
    return tp.scalar(value, precision) if math.isfinite(value) else missing


def _val_text(status: dict[str, Any] | None) -> str:
    """`` · val = the test split (10,000)`` from the run's status, when it says."""
    val = (status or {}).get("val")
    if not isinstance(val, dict) or not val.get("samples"):
        return ""
    which = "the test split" if val.get("test_split") else "held out"
    return f" · val: {which} ({val['samples']:,})"


def _status_text(status: dict[str, Any]) -> str:
    """How the run stands, from ``status.json``: finished, or why it stopped."""
    state = status.get("state")
    if state == "finished":
        return "finished"
    if state == "training":
        return "training (or killed: no end was recorded)"
    reason = status.get("reason") or state
    return {"early_stopped": "", "diverged": "", "interrupted": ""}.get(state, f"{state}: ") + str(reason)


def _ended(status: dict[str, Any] | None) -> str:
    """`` (diverged in epoch 1)``: how a run that stopped before its total ended, for the epochs line."""
    state = (status or {}).get("state")
    if state == "diverged":
        epoch = status.get("epoch")
        return f" (diverged in epoch {epoch})" if isinstance(epoch, int) else " (diverged)"
    return {"early_stopped": " (stopped early)", "interrupted": " (interrupted)"}.get(state, "")


def _best_text(best: dict[str, Any]) -> str:
    """``10: val_loss 0.0721, val_acc 98.3% (lowest val_loss)``."""
    if best["epoch"] is None:
        return "- (no validation data)"
    how = "lowest" if best["monitor"] == "val_loss" else "highest"
    return (
        f"{best['epoch']}: val_loss {tp.scalar(best['val_loss'], 4)}, val_acc {pct(best['val_acc'])} "
        f"({how} {best['monitor']})"
    )


def _loss_label(v: float) -> str:
    return format(v, ".4g")


def print_curves(
    console: Console, metrics: dict[str, Any], style: Style, steps: dict[str, Any] | None = None
) -> None:
    """Loss and accuracy per epoch (train and val), then the loss per step (raw and smoothed) and, when it
    changes, the learning rate per step.

    The loss axis fits the trained epochs (epoch 0, the initial loss, may lie above it: ``↑``) and is
    logarithmic when they span more than a factor of 30; accuracy axes run from 0 to 100 %.
    """
    epochs = ins.metric_column(metrics, "epoch")
    trained = epochs >= 1
    for title, keys in (("loss", ("train_loss", "val_loss")), ("accuracy", ("train_acc", "val_acc"))):
        train, val = (ins.metric_column(metrics, k) for k in keys)
        series = [tp.Series("train", epochs, train, "*", "cyan")]
        series.append(tp.Series("val", epochs, val, "o", "magenta"))
        if title == "loss":
            fit = np.concatenate([train[trained], val[trained]])
            fit = fit if np.isfinite(fit).sum() >= 2 else np.concatenate([train, val])
            kw: dict[str, Any] = {"y_fit": fit, "log_y": ins.log_scale(fit), "y_format": _loss_label}
        else:
            kw = {"y_range": (0.0, 1.0), "y_format": lambda v: f"{100 * v:.0f}%"}
        console.print()
        chart = tp.line_chart(series, width=style.width, title=f"{title} per epoch", color=style.color, **kw)
        print_lines(console, chart)
    if steps and len(steps.get("step", [])) >= 2:
        _step_curves(console, steps, style)


def _step_curves(console: Console, steps: dict[str, Any], style: Style) -> None:
    """The loss of every step (a band of the raw values under their smoothed line), and the lr."""
    x = np.asarray(steps["step"], dtype=np.float64)
    loss = np.asarray(steps["loss"], dtype=np.float64)
    window = max(2.0, len(x) / 50)
    smoothed = tp.smooth(loss, 1 - 2 / (window + 1))
    finite = loss[np.isfinite(loss)]
    fit = np.concatenate([smoothed[np.isfinite(smoothed)], np.percentile(finite, [2, 98])])
    series = [tp.Series("raw", x, loss, "·", "dim", band=True)]
    series.append(tp.Series("smoothed", x, smoothed, "*", "cyan"))
    common = {"width": style.width, "color": style.color, "x_label": "step", "y_format": _loss_label}
    console.print()
    title = f"loss per step (smoothed over ~{window:.0f} steps)"
    print_lines(console, tp.line_chart(series, title=title, y_fit=fit, log_y=ins.log_scale(fit), **common))
    lr = np.asarray(steps["lr"], dtype=np.float64)
    if np.nanmax(lr) != np.nanmin(lr):
        console.print()
        lr_series = [tp.Series("lr", x, lr, "*", "green")]
        print_lines(console, tp.line_chart(lr_series, title="learning rate per step", **common))


def print_metrics(console: Console, data: dict[str, Any], style: Style) -> None:
    """The ``metrics`` view: where the metrics come from, a table of every epoch, and the curves."""
    p = style.precision
    rows = [[_metric_cell(c, v, p) for c, v in zip(METRIC_COLUMNS, values, strict=True)]
            for values in ins.metric_rows(data["metrics"])]  # fmt: skip
    title = tp.clip_left(f"metrics · {data['source']}", style.width)
    console.print(Text(title, style="bold"), soft_wrap=True)
    print_lines(
        console, tp.text_table(METRIC_COLUMNS, rows, style.width, right=[True] * len(METRIC_COLUMNS))
    )
    print_curves(console, data["metrics"], style, data.get("steps"))


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
    """The ``deltas`` or ``activations`` view: the probe sample and its input image, then each layer's δ
    (or output) drawn."""
    s = data["sample"]
    activations = data["view"] == "activations"
    target = s["target"]
    target_text = str(int(target)) if np.ndim(target) == 0 else "[" + ", ".join(
        tp.scalar(float(v), style.precision) for v in np.ravel(target)
    ) + "]"  # fmt: skip
    head = [
        f"probe sample {s['index']} of {ins.probe_count(ck)}: "
        f"training sample {s['train_index']}, target {target_text}",
    ]
    if activations:
        head.append("a = each layer's output for this sample (after the layer: z for conv and dense,")
        head.append("the activation for relu, sigmoid, …); maps: rows and columns counted from 1")
    else:
        head.append("δ = ∂L_x/∂(layer output) for this sample's own loss (per sample, undivided);")
        head.append("maps: rows i and columns j counted from 1, as δ_ij in the seeds")
    print_lines(console, _ck_lines(ck, style.width))
    print_lines(console, [Text(tp.clip(h, style.width), style="dim") for h in head])
    _section(console, f"input · {shape_text(ck.input_shape)} · target {target_text}")
    print_lines(console, input_lines(np.asarray(ck.probe_x[s["index"]]), style))
    source, kind, symbol = (ck.activations, "activation", "a") if activations else (ck.deltas, "delta", "δ")
    for entry in data["layers"]:
        arr = source[entry["name"]][s["index"]]
        _section(console, f"{entry['name']} ({entry['type']}) · {symbol} · {shape_text(entry['shape'])}")
        print_lines(console, draw_array(arr, kind, style, entry["channel"]))


def input_lines(x: np.ndarray, style: Style) -> list[Text]:
    """The probe sample's input as a small picture: each channel (up to three) a heatmap, side by side
    when they fit (white → dark for inputs without negative values, else blue < 0 < red); a vector as one
    heatmap row."""
    x = np.asarray(x, dtype=np.float64)
    maps = x.reshape(1, 1, -1) if x.ndim == 1 else x.reshape(1, *x.shape) if x.ndim == 2 else x
    maps = maps.reshape(-1, *maps.shape[-2:])
    signed = bool((x[np.isfinite(x)] < 0).any())
    scale = tp.heat_scale(x)
    lines = tp.heat_legend(scale, style.precision, style.palette, style.width, signed=signed)
    blocks = []
    for c in range(min(len(maps), MAX_INPUT_CHANNELS)):
        kw = {"scale": scale, "color": style.palette, "width": style.width, "signed": signed}
        body = tp.heatmap(maps[c], max_rows=MAX_HEAT_ROWS, **kw)
        blocks.append(([Text(f"channel {c}", style="bold")] if len(maps) > 1 else []) + body)
    lines += tp.side_by_side(blocks, style.width)
    if len(maps) > MAX_INPUT_CHANNELS:
        lines.append(Text(f"{tp.ELLIPSIS} {len(maps) - MAX_INPUT_CHANNELS} more channels", style="dim"))
    return lines


def print_histograms(console: Console, data: dict[str, Any], style: Style) -> None:
    """The ``histograms`` view: per layer and quantity, one row per checkpoint over a shared axis."""
    shown = [c["epoch"] for c in data["checkpoints"]]
    title = "distributions: one row per checkpoint, one shared axis per array"
    console.print(Text(tp.clip(title, style.width), style="bold"), soft_wrap=True)
    total = data.get("checkpoints_total", len(shown))
    picked = f" ({len(shown)} of {total}, evenly spread; --full shows all)" if total > len(shown) else ""
    notes = [
        f"checkpoints {ins.epoch_ranges(shown)}{picked}",
        "bar height: a bin's count over the row's largest (blank: none); right: mean ± standard deviation",
    ]
    for note in notes:
        for line in tp.pack(note.split(" "), style.width, sep=" "):
            console.print(Text(line, style="dim"), soft_wrap=True)
    words = {"weights": "θ", "grads": "∂L/∂θ", "deltas": "δ"}
    for block in data["histograms"]:
        rows = block["rows"]
        n = sum(r["count"] for r in rows) // max(len(rows), 1)
        what = words[block["quantity"]]
        _section(console, f"{block['name']} ({block['type']}) · {what} · {n:,} values each")
        labels = [f"{r['epoch']}*" if r["interrupted"] else str(r["epoch"]) for r in rows]
        notes = [_spread(r) for r in rows]
        counts = [r["counts"] for r in rows]
        print_lines(console, tp.histogram_rows(labels, counts, block["edges"], notes, width=style.width))
    if not data["histograms"]:
        console.print("no arrays to show")


def _spread(row: dict[str, Any]) -> str:
    """``0.0123 ± 0.456`` (mean ± standard deviation), with how many values were not finite."""
    if not math.isfinite(row["mean"]):
        return "no finite values"
    text = f"{tp.scalar(row['mean'], 3)} ± {tp.scalar(row['std'], 3)}"
    return text + (f", {row['non_finite']} non-finite" if row["non_finite"] else "")


def hist_bins(width: int) -> int:
    """How many bins a histogram row gets: what fits beside an epoch label and a ``mean ± std`` note."""
    return max(10, min(60, width - 30))


def print_params(console: Console, data: dict[str, Any], ck: Checkpoint, style: Style) -> None:
    """The ``grads`` or ``weights`` view: each parameter array of each layer drawn."""
    which = data["view"]
    source = ck.grads if which == "grads" else ck.weights
    print_lines(console, _ck_lines(ck, style.width))
    if which == "grads":
        probes = plural(ins.probe_count(ck), "probe sample")
        note = f"∂L/∂θ: gradient of the mean loss over the {probes} at these weights"
        print_lines(console, [Text(tp.clip(note, style.width), style="dim")])
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
            print_lines(console, draw_array(source[entry["name"]][key], "param", style, info["channel"]))


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


_TARGET_HELP = (
    "A run folder (its last checkpoint), its checkpoints/ folder, or one checkpoint file (.h5). Several run "
    "folders, or a folder holding runs: the runs side by side."
)
_CHECKPOINT_HELP = (
    "Epoch number, 'last', 'best' (lowest val_loss, or record.monitor), or 'all' (a table of per-layer "
    "norms across every checkpoint; with health, each figure across them). Histograms show every "
    "checkpoint unless one is named."
)
_SHOW_HELP = (
    "summary | deltas | activations | grads | weights | metrics | histograms | health (several runs: "
    "summary, metrics or health)."
)
_LAYER_HELP = "Only these layers (repeat, or comma-separate). Default: all for summary and norm tables, "
_LAYER_HELP += "the layers with parameters otherwise."
_SAMPLE_HELP = "Probe sample (0-based) whose deltas or activations to show."
_CHANNEL_HELP = "Only this channel of δ maps, or this filter of conv kernels and untied biases (0-based)."
_FULL_HELP = (
    "Print every value of every array as numbers: no heatmaps, nothing cut (histograms: every checkpoint)."
)
_PRECISION_HELP = "Decimals of array values; significant digits in tables and norms."
_THRESHOLD_HELP = (
    "health: change a threshold, e.g. dead=0.3 or update_low=1e-6 (repeat, or comma-separate); the "
    "view lists them all."
)
_JSON_HELP = "Print the numbers as one JSON document on stdout (arrays as nested lists)."


def inspect(
    targets: Annotated[
        list[Path], typer.Argument(metavar="TARGET", help=_TARGET_HELP, show_default=False)
    ],
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint", "-c", metavar="N|last|best|all", help=_CHECKPOINT_HELP, show_default=False
        ),
    ] = None,
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
    threshold: Annotated[
        list[str] | None,
        typer.Option("--threshold", metavar="KEY=VALUE", help=_THRESHOLD_HELP, show_default=False),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help=_JSON_HELP)] = False,
    plugins: options.Plugins = None,
) -> None:
    """Look inside a run: its layers, deltas, activations, gradients, weights, histograms, health, metrics."""
    load_option(plugins)
    console = make_console()
    color = console.color_system is not None
    style = Style(precision, full, color, max(console.width, 40), console.color_system)
    which = show.value
    thresholds = parse_thresholds(threshold)
    runs = _several_runs(targets, which)
    if runs is not None:
        _inspect_runs(console, runs, which, thresholds, style, json_out)
        return
    target = targets[0]
    if is_sweep_folder(target):  # a folder of `cnnbp sweep`: its trials ranked, the best ones' curves
        summary = sweep_summary(target)
        if json_out:
            sys.stdout.write(summary_json(summary) + "\n")
        else:
            print_sweep(console, summary, style.color)
        return
    text = (checkpoint or "last").strip().lower()
    if which == "histograms":
        _inspect_histograms(console, target, checkpoint, layer, style, json_out)
    elif which == "health":
        data = ins.health_data(target, text, thresholds)
        if json_out:
            _dump(data)
        elif text == "all":
            print_health_all(console, data, style.width)
        else:
            ck_head = _ck_lines(ins.load_checkpoint(Path(data["checkpoint"]["path"])), style.width)
            print_health(console, data, ck_head, style.width, style.precision)
    elif text == "all":
        if which not in ins.NORM_VIEWS:
            views = "deltas, grads, weights, histograms or health"
            raise UserError(f"--checkpoint all: works with --show {views}, not {which}")
        data = ins.norms_data(ins.load_all(target), layer, which)
        _dump(data) if json_out else print_norms(console, data, style)
    else:
        _inspect_one(console, target, text, which, layer, sample, channel, style, json_out)


def _several_runs(targets: Sequence[Path], which: str) -> list[Path] | None:
    """The run folders to compare: several targets, or one folder holding runs (a sweep folder only with
    ``--show metrics`` or ``health``: its own view is the summary); None for one run."""
    if len(targets) == 1:
        target = targets[0]
        if is_sweep_folder(target) and which in ("metrics", "health"):
            return ins.runs_in(target)
        return ins.runs_in(target) if ins.is_runs_folder(target) and not is_sweep_folder(target) else None
    for t in targets:
        if not ins.is_run_folder(t):
            what = "no such folder" if not Path(t).exists() else "not a run folder (no config.yaml)"
            raise UserError(f"{t}: {what}; several targets are compared as runs")
    return list(targets)


def _inspect_runs(console: Console, runs: list[Path], which: str, thresholds: Any, style: Style,
                  json_out: bool) -> None:  # fmt: skip
    """Several runs side by side: ``summary`` and ``metrics`` (table, config differences, curves) or
    ``health`` (each run's last checkpoint)."""
    if which not in COMPARE_VIEWS:
        raise UserError(
            f"--show {which}: looks at one run; several runs show {', '.join(COMPARE_VIEWS)} (inspect one "
            "run folder for its arrays)"
        )
    if which == "health":
        healths = [ins.health_data(r, "last", thresholds) for r in runs]
        labels = ins.run_labels(runs)
        if json_out:
            pairs = zip(labels, runs, healths, strict=True)
            docs = [{"label": lab, "folder": str(r), **h} for lab, r, h in pairs]
            _dump({"view": "compare_health", "runs": docs})
        else:
            print_compare_health(console, labels, healths, style.width)
        return
    data = ins.compare_data(runs, _warn)
    if json_out:
        sys.stdout.write(json.dumps(ins.compare_json(data)) + "\n")
        sys.stdout.flush()
    else:
        print_compare(console, data, style.width, style.color, which)


def _inspect_histograms(console: Console, target: Path, checkpoint: str | None, layer: list[str] | None,
                        style: Style, json_out: bool) -> None:  # fmt: skip
    """Every checkpoint (evenly spread, at most MAX_HIST_ROWS without --full) or the one named."""
    text = (checkpoint or "all").strip().lower()
    if text == "all":
        every = ins.load_all(target)
        cks = every if style.full or json_out else ins.pick_evenly(every, MAX_HIST_ROWS)
    else:
        every = cks = [ins.load_checkpoint(target, text)]
    data = ins.histograms_data(cks, layer, hist_bins(style.width))
    data["checkpoints_total"] = len(every)
    _dump(data) if json_out else print_histograms(console, data, style)


def _inspect_one(console: Console, target: Path, text: str, which: str, layer: list[str] | None,
                 sample: int, channel: int | None, style: Style, json_out: bool) -> None:  # fmt: skip
    """One checkpoint's summary, metrics, deltas, activations, grads or weights."""
    ck = ins.load_checkpoint(target, text)
    if which == "metrics":
        data = ins.metrics_data(target, ck, _warn)
    elif which == "summary":
        data = ins.summary_data(target, ck, ins.select_layers(ck, layer, params_only=False), _warn)
    elif which in ("deltas", "activations"):
        get = ins.deltas_data if which == "deltas" else ins.activations_data
        data = get(ck, ins.select_layers(ck, layer, params_only=not layer), sample, channel)
    else:
        data = ins.params_data(ck, ins.select_layers(ck, layer, params_only=True), which, channel)
    if json_out:
        _dump(data)
    elif which == "metrics":
        print_metrics(console, data, style)
    elif which == "summary":
        print_summary(console, data, style)
    elif which in ("deltas", "activations"):
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
