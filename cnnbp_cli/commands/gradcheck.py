"""``cnnbp gradcheck``: parse the options, run the library check (:mod:`cnnbp.checking`), render the
report: a table on stdout (one row per tensor; compacted, then with columns left out, to fit the
terminal — see :func:`rows_table`) and a footer (method, inputs, precision, size and time, verdict);
``--json`` prints the same as one JSON object.

Exit codes: 0 no row FAILs (KINK rows allowed), 1 a FAIL (or a KINK with ``--strict``), 2 a usage or
config error.
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from cnnbp.checking import GradcheckReport, Subject, check_options, prepare, run_check
from cnnbp.commands import options
from cnnbp.core.gradcheck import DEFAULT_EPS, FAIL, KINK, PASS, GradcheckResult
from cnnbp.errors import UserError
from cnnbp.plugins import load_option
from cnnbp.render.console import shape_text, stderr_console, stdout_console

__all__ = ["Method", "gradcheck", "parse_eps"]

_STATUS_STYLE = {PASS: "green", FAIL: "bold red", KINK: "yellow"}
_MAX_LISTED = 8  # failing rows named in the verdict


class Method(str, Enum):
    """``--method``."""

    central = "central"
    richardson = "richardson"
    complex = "complex"
    auto = "auto"


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
    counts_only = compact and all(r.checked == r.total for r in result.rows)
    columns: dict[str, tuple[dict[str, Any], list[str | Text]]] = {
        "layer": ({"overflow": "fold"}, [r.layer for r in result.rows]),
        "tensor": ({"no_wrap": True}, [r.tensor for r in result.rows]),
        "shape": ({"overflow": "fold"}, [shape_text(r.shape) for r in result.rows]),
        "checked": (
            {"justify": "right", "no_wrap": True},
            [f"{r.total}" if counts_only else f"{r.checked}/{r.total}" for r in result.rows],
        ),
        "max err": (
            {"justify": "right", "no_wrap": True},
            [_num(r.max_rel_error, ".1e") for r in result.rows],
        ),
        "worst at": (
            {"no_wrap": True},
            [(_index(r.worst_index) if compact else f"({_index(r.worst_index)})") for r in result.rows],
        ),
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


def verdict_text(result: GradcheckResult, strict: bool) -> Text:
    """The verdict with the rows that decide it."""
    fails = [f"{r.layer}.{r.tensor}" for r in result.rows if r.status == FAIL]
    kinks = [f"{r.layer}.{r.tensor}" for r in result.rows if r.status == KINK]

    def names(rows: list[str]) -> str:
        return ", ".join(rows[:_MAX_LISTED]) + (", …" if len(rows) > _MAX_LISTED else "")

    if fails:
        text = Text("FAIL", style="bold red")
        text.append(f": {len(fails)} row{'s' * (len(fails) != 1)} over rtol {result.rtol:g} ({names(fails)})")
        if kinks:
            text.append(f"; also {len(kinks)} KINK row{'s' * (len(kinks) != 1)}")
        return text
    if kinks and strict:
        text = Text("FAIL", style="bold red")
        text.append(f" (--strict): {len(kinks)} KINK row{'s' * (len(kinks) != 1)} ({names(kinks)})")
        return text
    text = Text("PASS", style="green")
    if kinks:
        text.append(
            f": no FAIL; {len(kinks)} KINK row{'s' * (len(kinks) != 1)} ({names(kinks)}): a perturbation "
            "crossed a relu/max/lp kink, where finite differences do not apply (--strict fails them)"
        )
    else:
        text.append(f": every checked element within rtol {result.rtol:g}")
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
    checked = sum(r.checked for r in result.rows)
    total = sum(r.total for r in result.rows)
    elements = f"every element ({total:,})" if checked == total else f"{checked:,} of {total:,} elements"
    grid.add_row(
        "checked",
        f"{elements}, {len(result.rows)} tensors, {result.samples} samples in {result.seconds:.2f} s",
    )
    grid.add_row("verdict", verdict_text(result, strict))
    return grid


def print_report(console: Console, subject: Subject, result: GradcheckResult, strict: bool) -> None:
    """Header line, the rows table, the footer."""
    head = Text.assemble(("gradcheck", "bold"), " · ", subject.target, " · ", subject.weights)
    console.print(head)
    console.print(rows_table(result, console.width))
    console.print(footer(subject, result, strict))


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
Strict = Annotated[bool, typer.Option("--strict", help="Count KINK rows as failures (exit 1).")]
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

    Status: PASS, every checked element within --rtol. FAIL, one is not. KINK, the only elements
    over --rtol are ones whose perturbation flipped a relu, max-pool or lp-pool decision (read from
    the layers' state, never from the error size): finite differences do not apply there.

    Exit codes: 0 pass (KINK rows allowed), 1 a FAIL (or a KINK with --strict), 2 a usage or
    config error.
    """
    load_option(plugins)
    out_con, err_con = stdout_console(), stderr_console()
    step = parse_eps(eps)
    check_options(check_all or None, per_tensor, step, rtol)
    subject, selected, rng = prepare(
        target, method=method.value, checkpoint=checkpoint, samples=samples, layers=list(layers or []),
        seed=seed, overrides=list(sets or []),
    )  # fmt: skip

    def run() -> GradcheckReport:
        return run_check(subject, selected, rng, check_all=True if check_all else None, per_tensor=per_tensor,
                         eps=step, rtol=rtol)  # fmt: skip

    try:
        if err_con.is_terminal and not json_out:
            with err_con.status("checking gradients…"):
                report = run()
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
