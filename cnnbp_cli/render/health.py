"""Drawing the gradient health of a run (``cnnbp inspect --show health``): the δ flow, the dead and
saturated units, the parameters' update ratios and the verdicts, for one checkpoint or across all of them.
The figures come from :mod:`cnnbp.health`; every line fits the width."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.text import Text

from cnnbp.render import termplot as tp
from cnnbp.render.console import plural, print_lines

UNIT_WORD = {"dead": "dead units", "saturated": "saturated"}


def figure_text(v: float | None, precision: int = 4, missing: str = "-") -> str:
    return tp.scalar(v, precision) if v is not None and math.isfinite(v) else missing


def fraction_text(v: float) -> str:
    return f"{100 * v:.1f}%" if math.isfinite(v) else "-"


def _heading(console: Console, text: str, width: int) -> None:
    console.print()
    console.print(Text(tp.clip(text, width), style="bold"), soft_wrap=True)


def flow_lines(h: dict[str, Any], width: int, precision: int) -> list[Text]:
    """The δ flow table, output → input, and the total."""
    rows = [
        (
            r["name"],
            r["type"],
            figure_text(r["delta_norm"], precision),
            figure_text(r["ratio"], precision, ""),
            r["flag"] or "",
        )
        for r in reversed(h["flow"])
    ]
    lines = tp.text_table(
        ("layer", "type", "‖δ‖", "÷ next", "flag"), rows, width, right=[False, False, True, True, False]
    )
    t = h["total"]
    if t["first"] is not None:
        flag = f" ({t['flag']})" if t["flag"] else ""
        value = figure_text(t["ratio"], precision)
        total = f"from output to input: ‖δ‖ {t['first']} ÷ ‖δ‖ {t['last']} = {value}{flag}"
        lines.append(Text(tp.clip(total, width)))
    note = "÷ next: over ‖δ‖ of the next layer (the row above, towards the output)"
    lines.append(Text(tp.clip(note, width), style="dim"))
    return lines


def units_lines(h: dict[str, Any], width: int) -> list[Text]:
    """Dead units of relu layers, saturated values of sigmoid/tanh layers."""
    if not h["activations_recorded"]:
        return [
            Text(
                tp.clip("not recorded: the checkpoint has no /activations (an older run)", width), style="dim"
            )
        ]
    if not h["units"]:
        return [Text("no relu, sigmoid or tanh layers", style="dim")]
    rows = [
        (
            r["name"],
            r["type"],
            UNIT_WORD[r["kind"]],
            fraction_text(r["fraction"]),
            str(r["units"]),
            r["flag"] or "",
        )
        for r in h["units"]
    ]
    return tp.text_table(
        ("layer", "type", "measure", "fraction", "units", "flag"),
        rows,
        width,
        right=[False, False, False, True, True, False],
    )


def params_lines(h: dict[str, Any], width: int, precision: int) -> list[Text]:
    """‖∂L/∂θ‖ / ‖θ‖ and the update ratio of every parameter tensor."""
    rows = []
    for r in h["params"]:
        flag = {"update_small": "too small", "update_large": "too large"}.get(r["flag"] or "", "")
        rows.append(
            (
                r["name"],
                figure_text(r["grad_norm"], precision),
                figure_text(r["param_norm"], precision),
                figure_text(r["ratio"], 3),
                figure_text(r["update_ratio"], 3),
                flag if r["judged"] else "not judged",
            )
        )
    heads = ("parameter", "‖∂L/∂θ‖", "‖θ‖", "ratio", "lr × ratio", "flag")
    return tp.text_table(heads, rows, width, right=[False, True, True, True, True, False])


def verdict_lines(verdicts: Sequence[dict[str, Any]], width: int) -> list[Text]:
    """One line (wrapped) per problem, or that nothing was flagged."""
    if not verdicts:
        return [Text("ok: nothing flagged")]
    lines = []
    for v in verdicts:
        words = v["text"].split(" ")
        wrapped = tp.pack(words, width - 2, sep=" ")
        lines += [Text(("! " if i == 0 else "  ") + w) for i, w in enumerate(wrapped)]
    return lines


def threshold_lines(thresholds: dict[str, float], width: int) -> list[Text]:
    items = [f"{k} {v:g}" for k, v in thresholds.items()]
    text = tp.pack(items, width, first="thresholds (--threshold KEY=VALUE): ", sep=", ")
    return [Text(line, style="dim") for line in text]


def print_health(
    console: Console, data: dict[str, Any], head: Sequence[Text], width: int, precision: int = 4
) -> None:
    """One checkpoint's health: flow, units, parameters, verdicts (``head``: which checkpoint)."""
    h = data["health"]
    print_lines(console, head)
    lr = f" at lr {tp.scalar(h['lr'], 4)}" if math.isfinite(h["lr"]) else ""
    note = f"gradient health of the probe batch ({plural(h['probe_samples'], 'sample')}){lr}"
    print_lines(console, [Text(tp.clip(note, width), style="dim")])
    if h["probe_samples"] == 0:
        console.print("no probe samples recorded (record.probe: 0): nothing to judge")
        return
    _heading(console, "δ flow, output → input: mean over the probe samples of ‖δ_x‖", width)
    print_lines(console, flow_lines(h, width, precision))
    _heading(console, "units", width)
    print_lines(console, units_lines(h, width))
    _heading(console, "parameters: ratio = ‖∂L/∂θ‖ / ‖θ‖, the update ratio lr × ratio", width)
    print_lines(console, params_lines(h, width, precision))
    _heading(console, f"verdicts at checkpoint {h['epoch']}", width)
    print_lines(console, verdict_lines(data["verdicts"], width))
    console.print()
    print_lines(console, threshold_lines(data["thresholds"], width))


# ---- across checkpoints ---------------------------------------------------------------------------------


def history_rows(history: Sequence[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """One row per figure that moves across checkpoints: the total δ ratio, each unit layer's fraction,
    each judged parameter's update ratio, each layer's ratio flagged anywhere."""
    rows = [("δ in/out", [figure_text(h["total"]["ratio"], 3) for h in history])]
    last = history[-1]
    flagged = {r["name"] for h in history for r in h["flow"] if r["flag"]}
    for r in reversed(last["flow"]):
        if r["name"] in flagged:
            rows.append(
                (
                    f"{r['name']} ÷ next",
                    [figure_text(_find(h["flow"], r["name"], "ratio"), 3) for h in history],
                )
            )
    for r in last["units"]:
        word = "dead" if r["kind"] == "dead" else "saturated"
        rows.append(
            (
                f"{r['name']} {word}",
                [fraction_text(_find(h["units"], r["name"], "fraction")) for h in history],
            )
        )
    for r in last["params"]:
        if r["judged"]:
            cells = [figure_text(_find(h["params"], r["name"], "update_ratio"), 2) for h in history]
            rows.append((f"{r['name']} update", cells))
    return rows


def _find(rows: Sequence[dict[str, Any]], name: str, key: str) -> float:
    for r in rows:
        if r["name"] == name:
            return r[key]
    return math.nan


def epoch_blocks(heads: Sequence[str], rows: Sequence[tuple[str, list[str]]], width: int) -> list[Text]:
    """A table of named rows and one column per checkpoint, in column blocks that fit ``width``."""
    name_w = max([len("epoch")] + [len(n) for n, _ in rows])
    cell_w = max([len(h) for h in heads] + [len(c) for _, cells in rows for c in cells]) + 2
    per_block = max(1, (width - name_w) // cell_w)
    lines: list[Text] = []
    for start in range(0, len(heads), per_block):
        stop = min(len(heads), start + per_block)
        if start:
            lines.append(Text(""))
        lines.append(
            Text("epoch".ljust(name_w) + "".join(h.rjust(cell_w) for h in heads[start:stop]), style="bold")
        )
        for name, cells in rows:
            lines.append(
                Text(tp.clip(name.ljust(name_w) + "".join(c.rjust(cell_w) for c in cells[start:stop]), width))
            )
    return lines


def print_health_all(console: Console, data: dict[str, Any], width: int) -> None:
    """How each figure moved across the checkpoints, then the verdicts of the last one."""
    history = data["checkpoints"]
    heads = [f"{h['epoch']}*" if h["interrupted"] else str(h["epoch"]) for h in history]
    console.print(
        Text(tp.clip("gradient health per checkpoint (columns)", width), style="bold"), soft_wrap=True
    )
    console.print()
    print_lines(console, epoch_blocks(heads, history_rows(history), width))
    notes = [
        "δ in/out: ‖δ‖ of the first layer ÷ ‖δ‖ of the last; dead: fraction of a relu layer's units "
        "zero for every probe sample; update: lr × ‖∂L/∂θ‖ / ‖θ‖"
    ]
    if any(h["interrupted"] for h in history):
        notes.append("* interrupted mid-epoch")
    console.print()
    for note in notes:
        print_lines(console, [Text(x, style="dim") for x in tp.pack(note.split(" "), width, sep=" ")])
    _heading(console, f"verdicts at checkpoint {history[-1]['epoch']}", width)
    print_lines(console, verdict_lines(data["verdicts"], width))
    console.print()
    print_lines(console, threshold_lines(data["thresholds"], width))
