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

``--json`` prints the same numbers as one JSON document on stdout (arrays as nested lists, non-finite
values as null), never truncated.  Text output fits the console width (80 columns when it is not a
terminal); under ``NO_COLOR`` or in a pipe it contains no escape codes: heatmaps become sign + shade
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
import yaml
from cnnbp.checkpoint import Checkpoint, LayerRecord, read_checkpoint
from cnnbp.runs import CHECKPOINTS, find_checkpoints, run_folder
from cnnbp.runs import resolve_checkpoint as resolve_target
from cnnbp.errors import UserError
from cnnbp.render import termplot as tp
from cnnbp.render.console import pct, shape_text, stderr_console
from cnnbp.runs import METRIC_COLUMNS, METRICS_CSV, read_metrics
from rich.console import Console
from rich.text import Text

SMALL_MAP = 12  # maps up to 12×12 print as numbers, larger ones as heatmaps
MAX_MAPS = 8  # maps shown per array without --full
MAX_VECTOR_LINES = 8  # rows of a vector shown without --full
MAX_HEAT_ROWS = 40  # heatmap rows shown without --full
DELTA_NORM_CAPTION = "mean over the probe samples of ‖δ_x‖ (L2 norm of one sample's δ)"


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


# ---- finding and reading --------------------------------------------------------------------------------


def load_checkpoint(target: Path, checkpoint: str) -> Checkpoint:
    """Read the checkpoint ``--checkpoint`` names (``last`` or an epoch) of a run folder or file."""
    return read_checkpoint(resolve_target(target, checkpoint))


def load_all(target: Path) -> list[Checkpoint]:
    """Every checkpoint of a run folder, by epoch."""
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run folder or checkpoint file")
    if target.is_file():
        raise UserError(f"{target}: --checkpoint all needs a run folder, not one checkpoint file")
    run_dir = run_folder(target) or target
    found = find_checkpoints(run_dir)
    if not found:
        raise UserError(f"{target}: no checkpoints found (expected {CHECKPOINTS}/NNNN.h5 in a run folder)")
    return [read_checkpoint(path) for _, path in found]


def load_metrics(target: Path, ck: Checkpoint, warn: Console) -> tuple[dict[str, np.ndarray], str]:
    """The run's metrics columns and where they came from.

    ``metrics.csv`` of the run folder when there is one (the whole run, even when an earlier checkpoint
    is shown); otherwise, or when it cannot be read, the checkpoint's own ``/metrics`` (the history up
    to that checkpoint).
    """
    run_dir = run_folder(target)
    if run_dir is not None and (run_dir / METRICS_CSV).is_file():
        try:
            cols = read_metrics(run_dir)
            return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}, str(run_dir / METRICS_CSV)
        except UserError as e:
            warn.print(f"note: {e}; showing the checkpoint's /metrics instead", markup=False, soft_wrap=True)
    cols = {k: np.asarray(ck.history.get(k, []), dtype=np.float64) for k in METRIC_COLUMNS}
    return cols, f"{ck.path} /metrics"


def select_layers(ck: Checkpoint, names: Sequence[str] | None, *, params_only: bool) -> list[LayerRecord]:
    """The layers ``--layer`` names (repeatable, or comma-separated), in network order.

    Without ``--layer``: the layers with parameters when ``params_only``, else every layer.  An unknown
    name is a UserError listing the layers there are.
    """
    by_name = {layer.name: layer for layer in ck.layers}
    wanted: list[str] = []
    for raw in names or []:
        parts = [raw] if raw in by_name else [p.strip() for p in raw.split(",") if p.strip()]
        wanted.extend(parts)
    for name in wanted:
        if name not in by_name:
            raise UserError(f"--layer: no layer {name!r} in {ck.path}; its layers: {', '.join(by_name)}")
    param_names = [n for n in ck.weights if ck.weights[n]]
    if params_only:
        for name in wanted:
            if name not in param_names:
                have = ", ".join(param_names) or "none"
                raise UserError(f"--layer: {name} has no parameters; layers with parameters: {have}")
    if not wanted:
        return [layer for layer in ck.layers if not params_only or layer.name in param_names]
    chosen = set(wanted)
    return [layer for layer in ck.layers if layer.name in chosen]


def probe_count(ck: Checkpoint) -> int:
    return int(ck.probe_index.shape[0])


def check_sample(ck: Checkpoint, sample: int) -> None:
    n = probe_count(ck)
    if n == 0:
        raise UserError(f"{ck.path}: the run recorded no probe samples (record.probe: 0), so no deltas")
    if not 0 <= sample < n:
        raise UserError(f"--sample {sample}: the probe batch of {ck.path} has {n} samples (0..{n - 1})")


def check_channel(arrays: dict[str, np.ndarray], channel: int | None, noun: str) -> None:
    """``--channel`` must exist in every selected array that has maps (3 or more dimensions)."""
    if channel is None:
        return
    for name, arr in arrays.items():
        if arr.ndim >= 3 and not 0 <= channel < arr.shape[0]:
            n = arr.shape[0]
            raise UserError(f"--channel {channel}: {name} has {n} {noun}{'' if n == 1 else 's'} (0..{n - 1})")


# ---- numbers ------------------------------------------------------------------------------------------


def norm(arrays: Sequence[np.ndarray]) -> float:
    """The L2 norm of several arrays taken together (NaN when there are none)."""
    if not arrays:
        return math.nan
    return float(np.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays)))


def delta_norm(d: np.ndarray) -> float:
    """Mean over probe samples of ‖δ_x‖ (NaN without samples)."""
    if d.shape[0] == 0:
        return math.nan
    flat = np.asarray(d, dtype=np.float64).reshape(d.shape[0], -1)
    return float(np.mean(np.sqrt(np.sum(flat * flat, axis=1))))


def layer_row(ck: Checkpoint, layer: LayerRecord) -> dict[str, Any]:
    """One summary row: shapes, parameter count, norms and |δ| statistics of a layer."""
    weights = list(ck.weights.get(layer.name, {}).values())
    grads = list(ck.grads.get(layer.name, {}).values())
    d = np.abs(np.asarray(ck.deltas[layer.name], dtype=np.float64))
    return {
        "name": layer.name,
        "type": layer.type,
        "input_shape": list(layer.input_shape),
        "output_shape": list(layer.output_shape),
        "params": int(sum(w.size for w in weights)),
        "param_norm": norm(weights),
        "grad_norm": norm(grads),
        "delta_mean_abs": float(d.mean()) if d.size else math.nan,
        "delta_max_abs": float(d.max()) if d.size else math.nan,
    }


def to_json(value: Any) -> Any:
    """Arrays as nested lists and non-finite floats as null, recursively: strict JSON."""
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def metrics_json(metrics: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    """Metric columns as lists: epoch and step as integers, the rest as floats (NaN → null later)."""
    out: dict[str, list[Any]] = {}
    for key, values in metrics.items():
        if key in ("epoch", "step"):
            out[key] = [int(v) if math.isfinite(v) else None for v in values]
        else:
            out[key] = [float(v) for v in values]
    return out


def checkpoint_info(ck: Checkpoint) -> dict[str, Any]:
    return {
        "path": str(ck.path),
        "run_name": ck.run_name,
        "epoch": ck.epoch,
        "step": ck.step,
        "interrupted": ck.interrupted,
        "dtype": ck.dtype,
        "loss": ck.loss,
        "format_version": ck.format_version,
    }


def run_config(ck: Checkpoint) -> dict[str, Any]:
    """The checkpoint's resolved config as a dict (empty when it cannot be parsed)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # inline data can make the YAML large
    try:
        cfg = yaml.load(ck.config, Loader=loader)  # CSafeLoader or SafeLoader: safe
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def dataset_text(cfg: dict[str, Any]) -> str:
    """The data source of a run from its config: ``digits``, ``idx · data/mnist · limit 3000``, …"""
    data = cfg.get("data")
    if not isinstance(data, dict):
        return "?"
    parts = [str(data.get("source", "?"))]
    if data.get("path"):
        parts.append(str(data["path"]))
    if data.get("limit"):
        parts.append(f"limit {data['limit']}")
    return " · ".join(parts)


def planned_epochs(cfg: dict[str, Any]) -> int | None:
    """``train.epochs`` of a run's config, when it is there."""
    train = cfg.get("train")
    value = train.get("epochs") if isinstance(train, dict) else None
    return value if isinstance(value, int) else None


def best(metrics: dict[str, np.ndarray], key: str) -> tuple[float, int | None]:
    """The highest finite value of a column and its epoch (the earliest on ties)."""
    values, epochs = metrics.get(key, np.zeros(0)), metrics.get("epoch", np.zeros(0))
    finite = [(float(v), int(e)) for v, e in zip(values, epochs, strict=False) if math.isfinite(v)]
    if not finite:
        return math.nan, None
    top = max(v for v, _ in finite)
    return top, next(e for v, e in finite if v == top)


def epoch_ranges(epochs: Sequence[int]) -> str:
    """``0–5, 8, 10–12`` for a sorted list of epochs."""
    parts, i = [], 0
    while i < len(epochs):
        j = i
        while j + 1 < len(epochs) and epochs[j + 1] == epochs[j] + 1:
            j += 1
        parts.append(str(epochs[i]) if i == j else f"{epochs[i]}–{epochs[j]}")
        i = j + 1
    return ", ".join(parts)


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
    return not style.full and (arr.shape[-2] > SMALL_MAP or arr.shape[-1] > SMALL_MAP)


def _draw_map(m: np.ndarray, style: Style, scale: float, heat: bool, width: int, exponent: int) -> list[Text]:
    if heat:
        return tp.heatmap(m, scale=scale, color=style.color, width=width, max_rows=MAX_HEAT_ROWS)
    return tp.number_matrix(m, style.precision, width, exponent)


def _section(console: Console, text: str) -> None:
    console.print()
    console.print(Text(tp.clip(text, console.width), style="bold"), soft_wrap=True)


def _print_lines(console: Console, lines: Sequence[Text]) -> None:
    for line in lines:
        console.print(line, soft_wrap=True)


def _ck_lines(ck: Checkpoint, width: int) -> list[Text]:
    """Which checkpoint is shown: its epoch, run and step, then its path (cut on the left to fit)."""
    flag = " · interrupted mid-epoch" if ck.interrupted else ""
    head = f"checkpoint {ck.epoch} of run {ck.run_name} · step {ck.step}{flag}"
    return [Text(tp.clip(head, width), style="dim"), Text(tp.clip_left(str(ck.path), width), style="dim")]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


# ---- views: data ----------------------------------------------------------------------------------------


def summary_data(target: Path, ck: Checkpoint, layers: list[LayerRecord], warn: Console) -> dict[str, Any]:
    metrics, source = load_metrics(target, ck, warn)
    run_dir = run_folder(target)
    present = [e for e, _ in find_checkpoints(run_dir)] if run_dir is not None else []
    if not present:  # a checkpoint file outside a run folder
        present = [ck.epoch]
    top, top_epoch = best(metrics, "val_acc")
    cfg = run_config(ck)
    epochs = metrics.get("epoch", np.zeros(0))
    return {
        "view": "summary",
        "run": {
            "name": ck.run_name,
            "folder": str(run_dir) if run_dir is not None else None,
            "dataset": dataset_text(cfg),
            "dtype": ck.dtype,
            "loss": ck.loss,
            "epochs": int(epochs.max()) if epochs.size else ck.epoch,
            "epochs_planned": planned_epochs(cfg),
            "best_val_acc": top,
            "best_val_acc_epoch": top_epoch,
            "checkpoints": present,
            "probe_samples": probe_count(ck),
        },
        "checkpoint": checkpoint_info(ck),
        "layers": [layer_row(ck, layer) for layer in layers],
        "metrics_source": source,
        "metrics": metrics_json(metrics),
    }


def deltas_data(
    ck: Checkpoint, layers: list[LayerRecord], sample: int, channel: int | None
) -> dict[str, Any]:
    check_sample(ck, sample)
    arrays = {layer.name: np.asarray(ck.deltas[layer.name][sample]) for layer in layers}
    check_channel(arrays, channel, "channel")
    y = ck.probe_y[sample]
    out = []
    for layer in layers:
        d = arrays[layer.name]
        shown = d[channel] if channel is not None and d.ndim >= 3 else d
        out.append({
            "name": layer.name,
            "type": layer.type,
            "shape": list(d.shape),
            "channel": channel if channel is not None and d.ndim >= 3 else None,
            "delta": shown,
            "stats": tp.array_stats(shown),
        })  # fmt: skip
    return {
        "view": "deltas",
        "checkpoint": checkpoint_info(ck),
        "sample": {"index": sample, "train_index": int(ck.probe_index[sample]), "target": y},
        "layers": out,
    }


def params_data(ck: Checkpoint, layers: list[LayerRecord], which: str, channel: int | None) -> dict[str, Any]:
    source = ck.grads if which == "grads" else ck.weights
    arrays = {f"{layer.name}.{k}": v for layer in layers for k, v in source.get(layer.name, {}).items()}
    check_channel(arrays, channel, "filter")
    out = []
    for layer in layers:
        params = {}
        for key, arr in source.get(layer.name, {}).items():
            sliced = channel is not None and arr.ndim >= 3
            shown = arr[channel] if sliced else arr
            params[key] = {
                "shape": list(arr.shape),
                "channel": channel if sliced else None,
                "values": shown,
                "stats": tp.array_stats(shown),
            }
        out.append({"name": layer.name, "type": layer.type, "params": params})
    return {"view": which, "checkpoint": checkpoint_info(ck), "layers": out}


def norms_data(cks: list[Checkpoint], names: Sequence[str] | None, which: str) -> dict[str, Any]:
    """Per-layer norms across checkpoints; rows from the output layer to the input."""
    last = cks[-1]
    layers = select_layers(last, names, params_only=which != "deltas")
    rows = []
    for layer in reversed(layers):
        values = []
        for ck in cks:
            if which == "deltas":
                d = ck.deltas.get(layer.name)
                values.append(delta_norm(np.asarray(d)) if d is not None else math.nan)
            else:
                group = (ck.grads if which == "grads" else ck.weights).get(layer.name, {})
                values.append(norm(list(group.values())))
        rows.append({"name": layer.name, "type": layer.type, "values": values})
    measure = {
        "deltas": DELTA_NORM_CAPTION,
        "grads": "‖∂L/∂θ‖: L2 norm of the gradient of all the layer's parameters (probe batch)",
        "weights": "‖θ‖: L2 norm of all the layer's parameters",
    }[which]
    return {
        "view": which,
        "measure": measure,
        "checkpoints": [{"epoch": c.epoch, "step": c.step, "interrupted": c.interrupted} for c in cks],
        "layers": rows,
    }


# ---- views: text --------------------------------------------------------------------------------------


def print_summary(console: Console, data: dict[str, Any], style: Style) -> None:
    run, ck = data["run"], data["checkpoint"]
    top = run["best_val_acc"]
    best_text = f"{pct(top)} (epoch {run['best_val_acc_epoch']})" if math.isfinite(top) else "-"
    planned = run["epochs_planned"]
    epochs = f"{run['epochs']}" + (f" of {planned}" if planned is not None else "")
    have = run["checkpoints"]
    rows = [
        ("run", run["name"] + (f"  ({run['folder']})" if run["folder"] else "")),
        ("dataset", run["dataset"]),
        ("dtype · loss", f"{run['dtype']} · {run['loss']}"),
        ("epochs", f"{epochs} · {ck['step']:,} steps at checkpoint {ck['epoch']}"),
        ("best val_acc", best_text),
        ("checkpoints", f"{epoch_ranges(have)} ({len(have)})" if have else "-"),
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
    return tp.scalar(value, precision) if math.isfinite(value) else missing


def print_curves(console: Console, metrics: dict[str, Any], style: Style) -> None:
    """Loss (log scale when it spans more than a factor of 30) and accuracy per epoch, train and val."""

    def column(key: str) -> np.ndarray:
        return np.asarray([math.nan if v is None else v for v in metrics.get(key, [])], dtype=np.float64)

    epochs = column("epoch")
    charts = (("loss", "train_loss", "val_loss"), ("accuracy", "train_acc", "val_acc"))
    for title, train_key, val_key in charts:
        train, val = column(train_key), column(val_key)
        log_y = False
        if title == "loss":
            values = np.concatenate([train, val])
            values = values[np.isfinite(values)]
            log_y = bool(values.size and values.min() > 0 and values.max() / values.min() > 30)
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


def print_metrics(console: Console, metrics: dict[str, np.ndarray], source: str, style: Style) -> None:
    p = style.precision
    rows = []
    for i in range(len(metrics.get("epoch", []))):
        cells = []
        for c in METRIC_COLUMNS:
            v = float(metrics[c][i]) if i < len(metrics.get(c, [])) else math.nan
            if not math.isfinite(v):
                cells.append("-")
            elif c in ("epoch", "step"):
                cells.append(str(int(v)))
            elif c.endswith("_acc"):
                cells.append(pct(v))
            elif c == "lr":
                cells.append(tp.scalar(v, p))
            elif c == "seconds":
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{v:.{p}f}")
        rows.append(cells)
    console.print(Text(tp.clip_left(f"metrics · {source}", style.width), style="bold"), soft_wrap=True)
    _print_lines(
        console, tp.text_table(METRIC_COLUMNS, rows, style.width, right=[True] * len(METRIC_COLUMNS))
    )
    print_curves(console, metrics, style)


def print_deltas(console: Console, data: dict[str, Any], ck: Checkpoint, style: Style) -> None:
    s = data["sample"]
    target = s["target"]
    target_text = str(int(target)) if np.ndim(target) == 0 else "[" + ", ".join(
        tp.scalar(float(v), style.precision) for v in np.ravel(target)
    ) + "]"  # fmt: skip
    head = [
        f"probe sample {s['index']} of {probe_count(ck)}: "
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
    which = data["view"]
    source = ck.grads if which == "grads" else ck.weights
    _print_lines(console, _ck_lines(ck, style.width))
    if which == "grads":
        probes = _plural(probe_count(ck), "probe sample")
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
) -> None:
    """Look inside a run: layer summary, deltas, gradients, weights and metrics of its checkpoints."""
    console, warn = make_console(), stderr_console()
    style = Style(precision, full, console.color_system is not None, max(console.width, 40))
    which = show.value
    text = checkpoint.strip().lower()

    if text == "all":
        if which not in ("deltas", "grads", "weights"):
            raise UserError(f"--checkpoint all: works with --show deltas, grads or weights, not {which}")
        data = norms_data(load_all(target), layer, which)
        if json_out:
            _dump(data)
        else:
            print_norms(console, data, style)
        return

    ck = load_checkpoint(target, text)
    if which == "metrics":
        metrics, source = load_metrics(target, ck, warn)
        if json_out:
            _dump({"view": "metrics", "source": source, "metrics": metrics_json(metrics)})
        else:
            print_metrics(console, metrics, source, style)
        return
    if which == "summary":
        data = summary_data(target, ck, select_layers(ck, layer, params_only=False), warn)
    elif which == "deltas":
        data = deltas_data(ck, select_layers(ck, layer, params_only=not layer), sample, channel)
    else:
        data = params_data(ck, select_layers(ck, layer, params_only=True), which, channel)
    if json_out:
        _dump(data)
    elif which == "summary":
        print_summary(console, data, style)
    elif which == "deltas":
        print_deltas(console, data, ck, style)
    else:
        print_params(console, data, ck, style)


def _dump(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(to_json(data)) + "\n")  # ASCII: safe whatever the locale
    sys.stdout.flush()
