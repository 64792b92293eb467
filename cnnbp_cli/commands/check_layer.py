"""``cnnbp check-layer PLUGIN:CLASS``: parse the options, run the library's check of a user's own layer
(:mod:`cnnbp.layercheck`), render the report.  Exit codes: 0 every case passes, 1 one fails, 2 bad input.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from enum import Enum
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from cnnbp.commands import options
from cnnbp.layercheck import FAIL, Case, Check, LayerCheckReport, check_layer
from cnnbp.render.console import plural, shape_text, stdout_console
from cnnbp.render.termplot import clip_left

_STATUS_STYLE = {"PASS": "green", FAIL: "bold red", "KINK": "yellow", "UNCHECKED": "yellow"}


class Dtype(str, Enum):
    float64 = "float64"
    float32 = "float32"


def _num(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.1e}"


def _value(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:.8g}"


def case_title(i: int, case: Case) -> str:
    """``case 3 · input 2×6×7 · batch 3 · stride 2`` (the argument it varies, or the defaults)."""
    varied = f"{case.varied} {case.hyper[case.varied]}" if case.varied else "the defaults"
    return f"case {i} · input {shape_text(case.input_shape)} · batch {case.batch} · {varied}"


def _wrapped(text: str, width: int, indent: str = "    ") -> list[Text]:
    return [
        Text(line) for line in textwrap.wrap(text, width, initial_indent=indent, subsequent_indent=indent)
    ]


def check_lines(c: Check, name_width: int, width: int) -> list[Text]:
    """``  ∂L/∂W  1.0e-04  FAIL``, and what is wrong on lines of its own."""
    line = Text(f"  {c.check:<{name_width}} ")
    line.append(f"{_num(c.max_rel_error):>8}  ")
    line.append(c.status, style=_STATUS_STYLE.get(c.status, ""))
    return [line, *(_wrapped(c.problem, width) if c.problem else [])]


def worst_lines(c: Check, like: str | None, width: int) -> list[Text]:
    """Where a failing check is worst: the element, the layer's value and the expected one."""
    if c.problem:
        return _wrapped(f"{c.check}: {c.problem}", width, "  ")
    source = f"the built-in {like}" if " vs " in c.check else "finite differences"
    text = (
        f"{c.check}: relative error {_num(c.max_rel_error)} at [{', '.join(map(str, c.worst_index))}]: "
        f"yours {_value(c.value)}, {source} {_value(c.expected)}"
    )
    return _wrapped(text, width, "  ")


def print_report(console: Console, report: LayerCheckReport) -> None:
    """Every case and its checks, the first failure in full, the verdict."""
    like = f" · like {report.like}" if report.like else ""
    tail = f"{like} · {report.dtype}"
    target = clip_left(report.target, console.width - len("check-layer · ") - len(tail))
    console.print(Text.assemble(("check-layer", "bold"), f" · {target}{tail}"), soft_wrap=True)
    # the lines that can grow with the user's input wrap at the console's width (80 in a pipe)
    fixed = ", ".join(f"{k}={v}" for k, v in report.fixed.items()) or "none"
    console.print(Text(f"arguments given: {fixed}; the others varied one at a time"))
    width = max(len(c.check) for case in report.cases for c in case.checks)
    for i, case in enumerate(report.cases, start=1):
        console.print(Text(case_title(i, case), style="bold"))
        for c in case.checks:
            for line in check_lines(c, width, console.width):
                console.print(line, soft_wrap=True)
    for refused in report.refused:
        console.print(Text(f"not checked: {refused} (takes none of the sweep's input shapes)"))
    failure = report.first_failure
    if failure is not None:
        console.print(
            Text(f"first failure: {case_title(report.cases.index(failure) + 1, failure)}", style="bold")
        )
        for c in failure.checks:
            if c.status == FAIL:
                for line in worst_lines(c, report.like, console.width):
                    console.print(line, soft_wrap=True)
    console.print(verdict(report))


def verdict(report: LayerCheckReport) -> Text:
    checks = [c for case in report.cases for c in case.checks]
    if report.passed:
        worst = max((c.max_rel_error for c in checks if not math.isnan(c.max_rel_error)), default=0.0)
        text = Text("PASS", style="green")
        text.append(
            f": {plural(len(report.cases), 'case')}, {plural(len(checks), 'check')}, "
            f"largest relative error {_num(worst)}"
        )
        unchecked = sum(c.unchecked for c in checks)
        if unchecked:
            text.append(f"; {plural(unchecked, 'element')} UNCHECKED (see cnnbp gradcheck)")
        return text
    failed = [case for case in report.cases if case.status == FAIL]
    names = sorted({c.check for case in failed for c in case.checks if c.status == FAIL})
    text = Text("FAIL", style="bold red")
    text.append(f": {len(failed)} of {plural(len(report.cases), 'case')} ({', '.join(names)})")
    return text


Target = Annotated[str, typer.Argument(metavar="PLUGIN:CLASS", help="A plugin file and the class in it.")]
Like = Annotated[
    str | None,
    typer.Option(
        "--like", metavar="KIND", help="Compare with cnnbp's built-in layer of this kind.", show_default=False
    ),
]
Sets = Annotated[
    list[str] | None,
    typer.Option(
        "--set", metavar="KEY=VALUE", show_default=False,
        help="A constructor argument, VALUE read as YAML (repeatable; required for those without a default).",
    ),
]  # fmt: skip
DtypeOption = Annotated[Dtype, typer.Option("--dtype", help="Precision of the API and --like runs.")]


def check_layer_command(
    target: Target,
    like: Like = None,
    sets: Sets = None,
    dtype: DtypeOption = Dtype.float64,
    json_out: options.Json = False,
) -> None:
    """Check your own layer: its API, its backward pass against finite differences, and with --like its
    forward and backward against cnnbp's built-in layer, over a sweep of input shapes and arguments."""
    report = check_layer(target, like=like, sets=list(sets or []), dtype=dtype.value)
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
    else:
        print_report(stdout_console(), report)
    if not report.passed:
        raise typer.Exit(1)
