"""``cnnbp gradcheck``: parse the options, run the library check (:mod:`cnnbp.checking`) with a progress
bar on stderr (a terminal only, not with ``--json``), render the report: a table on stdout (one row per
tensor; compacted, then with columns left out, to fit the terminal — see :func:`rows_table`) and a
footer (method, inputs, precision, size and time, verdict); ``--json`` prints the same as one JSON
object.

Exit codes: 0 no row FAILs (KINK and UNCHECKED rows allowed), 1 a FAIL (or an UNCHECKED element with
``--strict``), 2 a usage or config error.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from cnnbp.checking import GradcheckReport, Subject, check_options, prepare, run_check
from cnnbp.commands import options
from cnnbp.core.gradcheck import (
    DEFAULT_DIRECTIONS,
    DEFAULT_EPS,
    FAIL,
    KINK,
    PASS,
    UNCHECKED,
    GradcheckResult,
    TensorCheck,
)
from cnnbp.errors import UserError
from cnnbp.plugins import load_option
from cnnbp.render.console import plural, shape_text, stderr_console, stdout_console

__all__ = ["Method", "gradcheck", "parse_eps"]

_STATUS_STYLE = {PASS: "green", FAIL: "bold red", KINK: "yellow", UNCHECKED: "magenta"}
_MAX_LISTED = 8  # failing rows named in the verdict


class Method(str, Enum):
    """``--method``."""

    central = "central"
    richardson = "richardson"
    complex = "complex"
    auto = "auto"


class Mode(str, Enum):
    """``--mode``."""

    elements = "elements"
    directional = "directional"


# ---- option parsing ---------------------------------------------------------------------------------
def parse_eps(text: str) -> float | None:
    """``--eps``: ``auto`` (None: the method's default) or a finite number > 0."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"--eps: expected 'auto' or a number > 0, got {text!r}")
    return value


# ---- the report -------------------------------------------------------------------------------------
def _num(value: float, fmt: str) -> str:
    """A number for the table; ``fmt`` "sci" is 4 significant digits with a short exponent (-5.718e-4)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value == 0:
        return "0"
    if fmt == "sci":
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    return format(value, fmt)


#: Columns left out, in turn, while the compact table is wider than the terminal.
_OMIT_STEPS: tuple[tuple[str, ...], ...] = (
    (),
    ("shape",),
    ("shape", "analytic", "numeric"),
    ("shape", "analytic", "numeric", "worst at", "checked"),
)


def rows_table(result: GradcheckResult, width: int | None = None) -> Table:
    """One row per checked tensor: where, how much, the worst element and the status.

    When the table does not fit ``width`` columns it is made compact: single spaces between columns,
    analytic and numeric values to 4 significant digits (-5.718e-4), indices without parentheses and,
    when every element of every tensor was checked, the count alone in ``checked``.  If that is still
    too wide, columns are left out in the order of ``_OMIT_STEPS`` (a caption names them; ``--json``
    has everything) so that layer, tensor, error and status always show.
    """
    table = _rows_table(result, compact=False, omit=())
    if width is None or _natural_width(table) <= width:
        return table
    for omit in _OMIT_STEPS:
        table = _rows_table(result, compact=True, omit=omit)
        if _natural_width(table) <= width:
            break
    return table


def _natural_width(table: Table) -> int:
    console = Console(width=10_000)
    return Measurement.get(console, console.options, table).maximum


def _rows_table(result: GradcheckResult, compact: bool, omit: tuple[str, ...]) -> Table:
    caption = f"(left out to fit the terminal: {', '.join(omit)}; --json has every field)"
    table = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
        padding=(0, 0) if compact else (0, 1),
        caption=caption if omit else None,
        caption_justify="left",
    )
    fmt = "sci" if compact else ".6g"
    counts_only = compact and all(r.checked == r.total or r.mode == "directional" for r in result.rows)
    columns: dict[str, tuple[dict[str, Any], list[str | Text]]] = {
        "layer": ({"overflow": "fold"}, [r.layer for r in result.rows]),
        "tensor": ({"no_wrap": True}, [r.tensor for r in result.rows]),
        "shape": ({"overflow": "fold"}, [shape_text(r.shape) for r in result.rows]),
        "checked": ({"justify": "right", "no_wrap": True}, [_checked(r, counts_only) for r in result.rows]),
        "max err": (
            {"justify": "right", "no_wrap": True},
            [_num(r.max_rel_error, ".1e") for r in result.rows],
        ),
        "worst at": ({"no_wrap": True}, [_worst_at(r, compact) for r in result.rows]),
        "analytic": ({"justify": "right", "no_wrap": True}, [_num(r.analytic, fmt) for r in result.rows]),
        "numeric": ({"justify": "right", "no_wrap": True}, [_num(r.numeric, fmt) for r in result.rows]),
        "status": (
            {"no_wrap": True},
            [Text(r.status, style=_STATUS_STYLE.get(r.status, "")) for r in result.rows],
        ),
    }
    kept = [name for name in columns if name not in omit]
    for name in kept:
        table.add_column(name, **columns[name][0])
    for i in range(len(result.rows)):
        table.add_row(*(columns[name][1][i] for name in kept))
    return table


def _index(index: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in index)


def _checked(r: TensorCheck, counts_only: bool) -> str:
    """Elements checked (of how many), or the number of directions of a directional row."""
    if r.mode == "directional":
        return f"{r.checked} dirs"
    return f"{r.total}" if counts_only else f"{r.checked}/{r.total}"


def _worst_at(r: TensorCheck, compact: bool) -> str:
    """The worst element's index, or ``u<k>`` for direction k of a directional row."""
    if r.mode == "directional":
        return f"u{r.worst_index[0]}" if r.worst_index else ""
    return _index(r.worst_index) if compact else f"({_index(r.worst_index)})"


def _names(rows: list[str]) -> str:
    return ", ".join(rows[:_MAX_LISTED]) + (", …" if len(rows) > _MAX_LISTED else "")


def verdict_text(result: GradcheckResult, strict: bool) -> Text:
    """The verdict with the rows that decide it; rows with UNCHECKED elements are always named, with how
    many of their elements could not be checked."""
    fails = [f"{r.layer}.{r.tensor}" for r in result.rows if r.status == FAIL]
    kinks = [f"{r.layer}.{r.tensor}" for r in result.rows if r.status == KINK]
    gaps = [r for r in result.rows if r.n_unchecked]
    unit = "direction" if gaps and all(r.mode == "directional" for r in gaps) else "element"
    unchecked = (
        f"{plural(result.unchecked, unit)} UNCHECKED ("
        + _names([f"{r.layer}.{r.tensor} {r.n_unchecked:,}/{r.checked:,}" for r in gaps])
        + ")"
    )
    if fails:
        text = Text("FAIL", style="bold red")
        text.append(f": {plural(len(fails), 'row')} over rtol {result.rtol:g} ({_names(fails)})")
        if gaps:
            text.append(f"; also {unchecked}")
        return text
    if gaps and strict:
        return Text("FAIL", style="bold red") + Text(f" (--strict): {unchecked}")
    text = Text("PASS", style="green")
    if not kinks and not gaps:
        text.append(f": every checked element within rtol {result.rtol:g}")
        return text
    text.append(": no FAIL")
    if kinks:
        text.append(
            f"; {plural(len(kinks), 'KINK row')} ({_names(kinks)}): elements whose perturbation crossed a "
            "relu/max/lp kink, checked at the kink"
        )
    if gaps:
        text.append(f"; {unchecked}: several kinks at once, or too near a point of low smoothness "
                    "(--strict fails them)")  # fmt: skip
    return text


def footer(subject: Subject, result: GradcheckResult, strict: bool) -> Table:
    """Method, inputs, precision, size and time, verdict: a two-column grid that wraps in its cell."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    step = "h" if result.method == "complex" else "h = eps·max(1, |v|)"
    auto = ""
    if subject.requested_method == "auto":
        why = f": not analytic: {', '.join(subject.non_analytic)}" if subject.non_analytic else ""
        auto = f" (auto{why})"
    grid.add_row(
        "method",
        f"{result.method}{auto}, eps {result.eps:.3g} ({step}), rtol {result.rtol:g}, "
        f"floor {result.atol_floor:.0e}·max(1, |L|)",
    )
    grid.add_row("inputs", subject.inputs_text)
    precision = "checked in float64"
    if result.cast_from:
        precision += f" (network is {result.cast_from})"
    grid.add_row("precision", precision)
    grid.add_row("checked", checked_text(result))
    kinks = sum(r.n_kink for r in result.rows)
    if kinks:
        grid.add_row(
            "kinks",
            f"{plural(kinks, 'element')} crossed a kink: each matches the derivative of the piece its "
            "layers' state selects (or, for a layer that cannot be held in its state, lies between its "
            "backward and forward derivatives)",
        )
    grid.add_row("verdict", verdict_text(result, strict))
    return grid


def checked_text(result: GradcheckResult) -> str:
    """How much was checked, in what time: every element, some of them, or directions per tensor."""
    rows = result.rows
    size = f"{len(rows)} tensors, {result.samples} samples in {result.seconds:.2f} s"
    if result.mode == "directional":
        text = f"{result.directions} random directions per tensor, {size}"
        failed = [f"{r.layer}.{r.tensor}" for r in rows if r.fallback == FAIL]
        kinked = [f"{r.layer}.{r.tensor}" for r in rows if r.fallback == KINK]
        if failed:
            text += f"; every element after a failed direction: {_names(failed)}"
        if kinked:
            text += f"; some elements, as a direction crossed a kink: {_names(kinked)}"
        return text
    checked = sum(r.checked for r in rows)
    total = sum(r.total for r in rows)
    elements = f"every element ({total:,})" if checked == total else f"{checked:,} of {total:,} elements"
    return f"{elements}, {size}"


def print_report(console: Console, subject: Subject, result: GradcheckResult, strict: bool) -> None:
    """Header line, the rows table, the footer."""
    head = Text.assemble(("gradcheck", "bold"), " · ", subject.target, " · ", subject.weights)
    console.print(head)
    console.print(rows_table(result, console.width))
    console.print(footer(subject, result, strict))


@contextmanager
def progress_bar(console: Console, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A transient bar on ``console`` (stderr): items done of all, elapsed time and an ETA; yields the
    ``progress(done, total)`` callback the check calls."""
    bar = Progress(
        TextColumn("checking gradients"),
        BarColumn(),
        TextColumn("{task.fields[count]} {task.fields[unit]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
    task = bar.add_task("gradcheck", total=None, unit=unit, count="")

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total, count=f"{done:,}/{total:,}")

    with bar:
        yield update


# ---- the command ------------------------------------------------------------------------------------
_TARGET_HELP = (
    "A config file (its network at the initial weights train starts from), a run folder (its last "
    "checkpoint) or a checkpoint file (.h5). Default: the built-in digits config."
)
_SET_HELP = (
    "Override a config value, VALUE read as YAML, e.g. data.path=/data/mnist (repeatable). "
    "On a run or checkpoint only data.* keys."
)
_EPS_HELP = (
    "Step: relative, h = eps·max(1, |v|) for central and richardson; h itself for complex. "
    f"auto: {DEFAULT_EPS['central']:.3g} central, {DEFAULT_EPS['richardson']:.3g} richardson, "
    f"{DEFAULT_EPS['complex']:g} complex."
)
_METHOD_HELP = (
    "central: (L(v+h) − L(v−h)) / 2h. richardson: (4·D(h/2) − D(h)) / 3 of central differences D. "
    "complex: Im L(v + ih) / h, exact to rounding, only for networks without relu, max or lp pooling. "
    "auto: complex when the network allows it, else central. One of central, richardson, complex, auto."
)


Samples = Annotated[
    int, typer.Option("--samples", "-n", min=1, help="Training samples in the checked batch.")
]
Layers = Annotated[
    list[str] | None,
    typer.Option(
        "--layer", "-l", metavar="NAME", show_default=False,
        help="Check only this layer's parameters and delta (repeatable; 'input': the input gradient).",
    ),
]  # fmt: skip
All = Annotated[bool, typer.Option("--all", help="Check every element (default up to 20,000 parameters).")]
PerTensor = Annotated[
    int | None,
    typer.Option("--per-tensor", metavar="K", min=1, show_default=False,
                 help="Check K elements per tensor (always including the largest gradient)."),
]  # fmt: skip
MethodOption = Annotated[Method, typer.Option("--method", "-m", metavar="METHOD", help=_METHOD_HELP)]
Eps = Annotated[str, typer.Option("--eps", metavar="auto|FLOAT", help=_EPS_HELP)]
Rtol = Annotated[float, typer.Option("--rtol", help="An element fails when its relative error exceeds this.")]
Strict = Annotated[
    bool,
    typer.Option("--strict", help="Count UNCHECKED elements as failures (exit 1); KINK rows are checked."),
]
ModeOption = Annotated[
    Mode,
    typer.Option("--mode", metavar="MODE",
                 help="elements: every element (or --per-tensor K of each). directional: each tensor along "
                      f"random directions (--directions, default {DEFAULT_DIRECTIONS}), element by element "
                      "only where a direction fails; for networks too large to check element by element."),
]  # fmt: skip
Directions = Annotated[
    int | None,
    typer.Option("--directions", metavar="K", min=1, show_default=False,
                 help=f"Random directions per tensor, --mode directional (default {DEFAULT_DIRECTIONS})."),
]  # fmt: skip
Seed = Annotated[
    int | None,
    typer.Option("--seed", help="Seed of the sample draw. Default: the config's seed.", show_default=False),
]


def gradcheck(
    target: Annotated[Path | None, typer.Argument(help=_TARGET_HELP, show_default=False)] = None,
    checkpoint: options.Checkpoint = None,
    samples: Samples = 4,
    layers: Layers = None,
    check_all: All = False,
    per_tensor: PerTensor = None,
    method: MethodOption = Method.central,
    eps: Eps = "auto",
    rtol: Rtol = 1e-6,
    strict: Strict = False,
    mode: ModeOption = Mode.elements,
    directions: Directions = None,
    seed: Seed = None,
    sets: options.sets_option(_SET_HELP) = None,  # type: ignore[valid-type]
    json_out: options.Json = False,
    plugins: options.Plugins = None,
) -> None:
    """Check every parameter gradient, layer delta and input gradient by finite differences.

    Each row is one tensor: a layer's parameter (W, b, beta), its per-sample delta dL/d(output),
    or the input gradient. The check runs in float64 whatever the network's dtype.

    Relative error of an element, with a the analytic and n the numerical derivative:
    |a − n| / max(|a|, |n|, floor), floor = F·max(1, |L|), where L is the loss being differenced
    (the batch-mean loss for a parameter, the sample's own loss for a delta or the input) and
    F = 3e-4 for central, 5e-6 for richardson, 1e-9 for complex: gradients below the floor are
    compared absolutely, as a difference quotient's rounding noise grows with |L|.

    Status: PASS, every checked element within --rtol. FAIL, one is not. KINK, an element whose
    perturbation flipped a relu, max-pool or lp-pool decision (read from the layers' state, never
    from the error size) was checked at the kink: against the derivative of the piece the layers'
    state selects (the layers held in that state), with its backward and forward derivatives
    reported. UNCHECKED, an element could not be checked (several kinks at once in a layer that
    cannot be held in its state, or too near a point of low smoothness); the verdict names those.

    Exit codes: 0 pass (KINK and UNCHECKED rows allowed), 1 a FAIL (or an UNCHECKED element with
    --strict), 2 a usage or config error.
    """
    load_option(plugins)
    out_con, err_con = stdout_console(), stderr_console()
    step = parse_eps(eps)
    check_options(check_all or None, per_tensor, step, rtol, mode.value, directions)
    subject, selected, rng = prepare(
        target, method=method.value, checkpoint=checkpoint, samples=samples, layers=list(layers or []),
        seed=seed, overrides=list(sets or []),
    )  # fmt: skip

    def run(progress: Callable[[int, int], None] | None = None) -> GradcheckReport:
        return run_check(subject, selected, rng, check_all=True if check_all else None, per_tensor=per_tensor,
                         eps=step, rtol=rtol, mode=mode.value, directions=directions,
                         progress=progress)  # fmt: skip

    try:
        if err_con.is_terminal and not json_out:
            with progress_bar(err_con, "directions" if mode == Mode.directional else "elements") as update:
                report = run(update)
        else:
            report = run()
    except KeyboardInterrupt:
        err_con.print("interrupted", markup=False)
        raise typer.Exit(130) from None

    if json_out:
        sys.stdout.write(json.dumps(report.to_dict(strict)) + "\n")
        sys.stdout.flush()
    else:
        print_report(out_con, subject, report.result, strict)
    if not report.ok(strict):
        raise typer.Exit(1)
