"""Drawing several runs side by side (``cnnbp inspect RUN_A RUN_B …`` or a folder of runs): a table of
their final and best metrics, the config keys that differ, and their curves overlaid in one chart per
metric, each run drawn with its own marker (``1``, ``2``, … as numbered in the table).  The data comes
from :func:`cnnbp.inspection.compare_data`; a sweep folder's trials are runs too, so this view works for
any folder holding runs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.console import Console
from rich.text import Text

from cnnbp import inspection as ins
from cnnbp.render import termplot as tp
from cnnbp.render.console import pct, print_lines

MARKERS = "123456789abcdefghijklmnopqrstuvwxyz"
COLOURS = ("cyan", "magenta", "yellow", "green", "blue", "red")
STATE_WORDS = {
    "early_stopped": "stopped early",
    "finished": "finished",
    "diverged": "diverged",
    "interrupted": "interrupted",
    "training": "training",
}
MAX_VALUE = 18  # characters of a config value in the differences table


def marker(i: int) -> str:
    return MARKERS[i] if i < len(MARKERS) else "?"


def _loss(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "-"


def _best_text(best: dict[str, Any]) -> str:
    if best["epoch"] is None:
        return "-"
    value = best[best["monitor"]]
    shown = pct(value) if best["monitor"].endswith("_acc") else _loss(value)
    return f"{shown} ({best['epoch']})"


def _state(r: dict[str, Any]) -> str:
    state = (r["status"] or {}).get("state")
    return STATE_WORDS.get(state, state or "-")


def table_lines(data: dict[str, Any], width: int) -> list[Text]:
    """One row per run: its marker, name, how it ended, epochs, final metrics and best epoch."""
    rows = []
    for i, r in enumerate(data["runs"]):
        f = r["final"]
        planned = r["epochs_planned"]
        epochs = f"{r['epochs']}" + (f"/{planned}" if planned is not None else "")
        rows.append(
            (
                marker(i),
                tp.clip(r["label"], 28),
                _state(r),
                epochs,
                _loss(f["train_loss"]),
                _loss(f["val_loss"]),
                pct(f["val_acc"]),
                _best_text(r["best"]),
            )
        )
    monitors = {r["best"]["monitor"] for r in data["runs"]}
    best_head = f"best {monitors.pop()}" if len(monitors) == 1 else "best"
    heads = ("#", "run", "status", "epochs", "train_loss", "val_loss", "val_acc", best_head)
    return tp.text_table(heads, rows, width, right=[False, False, False, True, True, True, True, True])


def differences_lines(data: dict[str, Any], width: int) -> list[Text]:
    """The config keys whose values differ, one row each (one column per run, or ``1: v · 2: v`` lines
    when the columns would not fit)."""
    from cnnbp.sweeping import value_text

    diffs = data["differences"]
    n = len(data["runs"])
    if n < 2:
        return []
    if not diffs:
        return [Text("every config key is the same (but the name)", style="dim")]

    def cell(v: Any) -> str:
        return "-" if v is ins.MISSING else tp.clip(value_text(v), MAX_VALUE)

    rows = [(d["key"], *(cell(v) for v in d["values"])) for d in diffs]
    widths = [max(len(r[k]) for r in rows) for k in range(n + 1)]
    if sum(widths) + 2 * n <= width:
        return tp.text_table(("config key", *(marker(i) for i in range(n))), rows, width)
    lines = []
    for row in rows:
        items = [f"{marker(i)}: {v}" for i, v in enumerate(row[1:])]
        lines += [Text(x) for x in tp.pack(items, width, first=f"{row[0]}  ", sep=" · ")]
    return lines


def _series(data: dict[str, Any], key: str, color: bool) -> list[tp.Series]:
    out = []
    for i, r in enumerate(data["runs"]):
        x = ins.metric_column(r["metrics"], "epoch")
        y = ins.metric_column(r["metrics"], key)
        out.append(tp.Series(r["label"], x, y, marker(i), COLOURS[i % len(COLOURS)] if color else ""))
    return out


def epoch_chart(data: dict[str, Any], key: str, width: int, color: bool) -> list[Text]:
    """One metric per epoch, every run overlaid."""
    series = _series(data, key, color)
    title = f"{key} per epoch"
    if key.endswith("_acc"):
        return tp.line_chart(
            series,
            width=width,
            title=title,
            color=color,
            y_range=(0.0, 1.0),
            y_format=lambda v: f"{100 * v:.0f}%",
        )
    trained = [np.asarray(s.y)[np.asarray(s.x) >= 1] for s in series]
    fit = np.concatenate(trained) if trained else np.zeros(0)
    if np.isfinite(fit).sum() < 2:
        fit = np.concatenate([np.asarray(s.y) for s in series])
    return tp.line_chart(
        series,
        width=width,
        title=title,
        color=color,
        y_fit=fit,
        log_y=ins.log_scale(fit),
        y_format=lambda v: format(v, ".4g"),
    )


def step_chart(data: dict[str, Any], width: int, color: bool, column: str = "loss") -> list[Text]:
    """The loss (smoothed as TensorBoard does) or the learning rate per step, every run overlaid."""
    series = []
    for i, r in enumerate(data["runs"]):
        x = np.asarray(r["steps"].get("step", []), dtype=np.float64)
        y = np.asarray(r["steps"].get(column, []), dtype=np.float64)
        if column == "loss" and len(y):
            y = tp.smooth(y, 1 - 2 / (max(2.0, len(y) / 50) + 1))
        series.append(tp.Series(r["label"], x, y, marker(i), COLOURS[i % len(COLOURS)] if color else ""))
    if not any(len(s.x) >= 2 for s in series):
        return []
    ys = np.concatenate([np.asarray(s.y) for s in series])
    title = "loss per step (smoothed)" if column == "loss" else "learning rate per step"
    log = column == "loss" and ins.log_scale(ys)
    return tp.line_chart(
        series,
        width=width,
        title=title,
        color=color,
        x_label="step",
        log_y=log,
        y_format=lambda v: format(v, ".4g"),
    )


def _lr_changes(data: dict[str, Any]) -> bool:
    lrs = [np.asarray(r["steps"].get("lr", []), dtype=np.float64) for r in data["runs"]]
    values = np.concatenate(lrs) if lrs else np.zeros(0)
    values = values[np.isfinite(values)]
    return bool(values.size) and float(values.max()) != float(values.min())


def print_compare(console: Console, data: dict[str, Any], width: int, color: bool, show: str) -> None:
    """The comparison: the table, the differing config keys, then the curves (``show``: ``summary`` for
    validation loss and accuracy and the loss per step, ``metrics`` for every metric per epoch)."""
    n = len(data["runs"])
    console.print(Text(tp.clip(f"{n} run{'s' if n != 1 else ''} side by side", width), style="bold"))
    print_lines(console, table_lines(data, width))
    if n > 1:
        console.print()
        console.print(Text("config keys that differ", style="bold"))
        print_lines(console, differences_lines(data, width))
    has_val = any(np.isfinite(ins.metric_column(r["metrics"], "val_loss")).any() for r in data["runs"])
    if show == "metrics":
        keys = ["train_loss", "val_loss", "train_acc", "val_acc"] if has_val else ["train_loss", "train_acc"]
    else:
        keys = ["val_loss", "val_acc"] if has_val else ["train_loss", "train_acc"]
    for key in keys:
        console.print()
        print_lines(console, epoch_chart(data, key, width, color))
    charts = [step_chart(data, width, color)]
    if show == "metrics" and _lr_changes(data):
        charts.append(step_chart(data, width, color, "lr"))
    for chart in charts:
        if chart:
            console.print()
            print_lines(console, chart)


# ---- health of several runs ---------------------------------------------------------------------------


def print_compare_health(
    console: Console, labels: Sequence[str], healths: Sequence[dict[str, Any]], width: int
) -> None:
    """The health of each run's last checkpoint side by side (one column per run), then each run's
    verdicts."""
    from cnnbp.render.health import figure_text, fraction_text, verdict_lines

    n = len(labels)
    console.print(
        Text(tp.clip(f"gradient health of {n} runs, each at its last checkpoint", width), style="bold")
    )
    for i, label in enumerate(labels):
        epoch = healths[i]["health"]["epoch"]
        console.print(Text(tp.clip(f"{marker(i)}  {label} (checkpoint {epoch})", width)), soft_wrap=True)
    names: dict[str, list[str]] = {
        "δ in/out": [figure_text(h["health"]["total"]["ratio"], 3) for h in healths]
    }
    for k, h in enumerate(healths):
        for r in h["health"]["units"]:
            key = f"{r['name']} {'dead' if r['kind'] == 'dead' else 'saturated'}"
            names.setdefault(key, ["-"] * n)[k] = fraction_text(r["fraction"])
        for r in h["health"]["params"]:
            if r["judged"]:
                names.setdefault(f"{r['name']} update", ["-"] * n)[k] = figure_text(r["update_ratio"], 2)
    rows = [(key, *cells) for key, cells in names.items()]
    console.print()
    print_lines(
        console,
        tp.text_table(("figure", *(marker(i) for i in range(n))), rows, width, right=[False] + [True] * n),
    )
    for i, h in enumerate(healths):
        console.print()
        console.print(
            Text(tp.clip(f"verdicts of {marker(i)} {labels[i]}", width), style="bold"), soft_wrap=True
        )
        print_lines(console, verdict_lines(h["verdicts"], width))
