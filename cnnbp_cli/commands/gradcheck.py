"""``cnnbp gradcheck``: prove a network's gradients by finite differences (``core.gradcheck``).

What is checked: every parameter gradient, every layer's per-sample delta and the input gradient of
a small batch, element by element, against finite differences of the loss (see ``core/gradcheck.py``
for the methods, the relative error and kink detection).

The network (TARGET):

* a config file (default: the built-in digits config): the network ``cnnbp train`` starts from,
  built with ``np.random.default_rng(cfg.seed)`` in the config's dtype, or with ``model.init_from``'s
  weights when the config names them;
* a run folder (its last checkpoint, or ``--checkpoint N``) or a checkpoint file: rebuilt from the
  checkpoint's own ``/config`` with its ``/weights`` (as ``cnnbp export`` does).

Told apart by content: a folder is a run, an HDF5 file a checkpoint, anything else a YAML config.
The check always runs in float64: a float32 network is checked on a float64 copy (core casts it) and
the report says so.

The inputs: ``--samples`` examples of the config's training split (``load_dataset`` loads the data
as train does: the config's dtype, seed, validation split and ``data.limit``), targets included,
drawn with ``np.random.default_rng([seed, SAMPLE_STREAM])`` (``--seed``, default the config's seed;
SAMPLE_STREAM is "gradcheck" in ASCII, so the draw shares no stream with the split or shuffles) and
sorted.  The same generator then picks the elements ``--per-tensor`` samples.  ``--seed`` never
changes the network (``--set seed=S`` does, as ``cnnbp train --seed S`` would).

A checkpoint whose data path does not exist on this machine (a run trained elsewhere) falls back to
its probe samples (``/probe/x``, ``/probe/y``; up to ``--samples`` of them, drawn the same way) and
the report says so; ``--set data.path=...`` points it at a local copy instead.  Data that exists but
cannot be loaded, or a config's missing data, is an error (exit 2).  On a checkpoint ``--set`` may
change ``data.*`` only: the network is the checkpoint's.

The report: a table on stdout (one row per tensor; compacted, then with columns left out, to fit the
terminal — see :func:`rows_table`) and a footer (method, inputs, precision, size and time, verdict);
``--json`` prints the same as one JSON object.

Exit codes: 0 no row FAILs (KINK rows allowed), 1 a FAIL (or a KINK with ``--strict``), 2 a usage or
config error.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import h5py
import numpy as np
import typer
from cnnbp.checkpoint import Checkpoint, read_checkpoint, resolve_target
from cnnbp.commands.export import checkpoint_config, rebuild
from cnnbp.commands.train import load_initial_weights, n_outputs
from cnnbp.config import (  # apply_override: the same --set KEY=VALUE rules train uses
    apply_override,
    build_loss,
    build_network,
    default_config_path,
    load_config,
)
from cnnbp.core.gradcheck import (
    DEFAULT_EPS,
    FAIL,
    KINK,
    PASS,
    GradcheckResult,
    TensorCheck,
    non_analytic_layers,
)
from cnnbp.core.gradcheck import gradcheck as check_gradients
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.data import load_dataset
from cnnbp.errors import UserError
from cnnbp.render.console import json_number, shape_text, stderr_console, stdout_console
from cnnbp.spec import RunConfig
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

__all__ = ["SAMPLE_STREAM", "Method", "Subject", "gradcheck", "parse_eps", "resolve_network"]

SAMPLE_STREAM = int.from_bytes(b"gradcheck", "big")
_PATH_SOURCES = ("npz", "idx", "hdf5")
_STATUS_STYLE = {PASS: "green", FAIL: "bold red", KINK: "yellow"}
_MAX_LISTED = 8  # sample indices (and failing rows) named in the text footer


class Method(str, Enum):
    """``--method``."""

    central = "central"
    richardson = "richardson"
    complex = "complex"
    auto = "auto"


# ---- what is checked --------------------------------------------------------------------------------
@dataclass
class Subject:
    """The network, its loss and the batch to check, with how each was obtained (for the report)."""

    net: Sequential
    loss: Loss
    x: np.ndarray
    y: np.ndarray
    kind: str  # "config" | "checkpoint"
    target: str  # the config file or checkpoint file read
    weights: str  # where the weights come from, in words
    inputs: str  # "data" | "probe"
    inputs_text: str  # the inputs, in words
    sample_indices: list[int]  # the samples' indices in the training split
    requested_method: str  # --method as given ("auto" before core resolves it)
    non_analytic: list[str]  # the layers (and loss) that rule out complex-step
    epoch: int | None = None


@dataclass
class _Network:
    """A network resolved from TARGET, before any data is read."""

    cfg: RunConfig
    net: Sequential
    kind: str
    target: str
    weights: str
    ck: Checkpoint | None = None


def _is_checkpoint(path: Path) -> bool:
    """A folder (a run) or an HDF5 file is a checkpoint target; anything else is a config."""
    if path.is_dir():
        return True
    try:
        return bool(h5py.is_hdf5(path)) or path.suffix.lower() == ".h5"
    except OSError:
        return path.suffix.lower() == ".h5"


def resolve_network(target: Path | None, checkpoint: str | None, sets: list[str]) -> _Network:
    """The config and network TARGET names (see the module docstring); UserError when it cannot."""
    if target is not None and not target.exists():
        raise UserError(f"{target}: no such config file, run folder or checkpoint file")
    if target is None or not _is_checkpoint(target):
        path = default_config_path() if target is None else target
        if checkpoint is not None:
            raise UserError(f"--checkpoint: selects a checkpoint of a run folder, but {path} is a config")
        cfg = load_config(path, sets)
        net = build_network(cfg).build(np.random.default_rng(cfg.seed), np.dtype(cfg.dtype))
        weights = f"initial weights (seed {cfg.seed}), {cfg.dtype}"
        if cfg.model.init_from:
            read = load_initial_weights(net, cfg.model.init_from)
            weights = f"weights of model.init_from {read}, {cfg.dtype}"
        shown = "the built-in default config" if target is None else str(path)
        return _Network(cfg, net, "config", shown, weights)

    path = resolve_target(target, checkpoint)
    ck = read_checkpoint(path)
    raw = checkpoint_config(path, ck)
    for text in sets:
        key = text.partition("=")[0].strip()
        if key != "data" and not key.startswith(("data.", "data[")):
            raise UserError(f"--set {text}: a checkpoint's network is fixed; only data.* can be changed here")
        apply_override(raw, text)
    cfg, net = rebuild(path, ck, raw)
    weights = f"run {ck.run_name}, epoch {ck.epoch}, {ck.dtype}"
    return _Network(cfg, net, "checkpoint", str(path), weights, ck)


def _draw(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``min(k, n)`` sorted indices out of ``n``, without replacement."""
    return np.sort(rng.choice(n, size=min(k, n), replace=False)).astype(np.int64)


def _data_missing(cfg: RunConfig) -> str | None:
    """The data path when the config's data lives in a file or folder that does not exist here."""
    path = cfg.data.path
    if cfg.data.source in _PATH_SOURCES and path is not None and not Path(path).expanduser().exists():
        return path
    return None


def _listed(indices: list[int]) -> str:
    shown = ", ".join(str(i) for i in indices[:_MAX_LISTED])
    return shown + (", …" if len(indices) > _MAX_LISTED else "")


def choose_inputs(
    found: _Network, samples: int, rng: np.random.Generator, seed: int
) -> tuple[np.ndarray, np.ndarray, str, str, list[int]]:
    """The batch to check: ``(x, y, "data" | "probe", description, training-set indices)``."""
    cfg, ck = found.cfg, found.ck
    missing = _data_missing(cfg) if ck is not None else None
    if ck is not None and missing is not None:
        probe_x = np.asarray(ck.probe_x)
        n_probe = int(probe_x.shape[0]) if probe_x.ndim else 0
        if n_probe == 0:
            raise UserError(
                f"{missing}: data not found and {found.target} has no probe samples; "
                "--set data.path=... points at a copy of the data"
            )
        pick = _draw(n_probe, samples, rng)
        index = [int(i) for i in np.asarray(ck.probe_index)[pick]]
        text = (
            f"{len(pick)} of the checkpoint's {n_probe} probe samples (data not found here: {missing}), "
            f"drawn with seed {seed}; training-set indices {_listed(index)}"
        )
        return probe_x[pick], np.asarray(ck.probe_y)[pick], "probe", text, index

    out = n_outputs(found.net.summary()[-1].output_shape)
    data = load_dataset(cfg.data, cfg.model.input_shape, out, np.dtype(cfg.dtype), cfg.seed, cfg.base_dir)
    n = data.x_train.shape[0]
    pick = _draw(n, samples, rng)
    index = [int(i) for i in pick]
    text = (
        f"{len(pick)} of {n:,} training samples of {data.description}, drawn with seed {seed}; "
        f"indices {_listed(index)}"
    )
    return data.x_train[pick], data.y_train[pick], "data", text, index


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


def check_layers(net: Sequential, layers: list[str]) -> list[str] | None:
    """``--layer`` names, checked against the network (``input`` is the input-gradient row)."""
    if not layers:
        return None
    names = ["input", *(layer.name for layer in net.layers)]
    unknown = [n for n in dict.fromkeys(layers) if n not in names]
    if unknown:
        what = "no such layer" if len(unknown) == 1 else "no such layers"
        raise UserError(f"--layer {', '.join(unknown)}: {what}; the layers are {', '.join(names)}")
    return list(dict.fromkeys(layers))


def refuse_complex(net: Sequential, loss: Loss) -> None:
    """UserError naming what is not holomorphic, for ``--method complex``."""
    bad = non_analytic_layers(net, loss)
    if bad:
        kinds = {layer.name: type(layer).__name__ for layer in net.layers}
        named = ", ".join(f"{b} ({kinds[b]})" if b in kinds else b for b in bad)
        raise UserError(
            f"--method complex: needs every layer to be analytic, and these are not: {named}; "
            "use --method auto (complex where possible, else central), central or richardson"
        )


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


def verdict(result: GradcheckResult, strict: bool) -> str:
    """``PASS`` or ``FAIL`` (``--strict`` counts KINK rows as failures)."""
    return PASS if result.passed(strict) else FAIL


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


def _row_json(r: TensorCheck) -> dict[str, Any]:
    d = asdict(r)
    d["shape"] = list(r.shape)
    d["worst_index"] = list(r.worst_index)
    for key in ("max_rel_error", "analytic", "numeric"):
        d[key] = json_number(d[key])
    return d


def to_json(subject: Subject, result: GradcheckResult, strict: bool) -> str:
    """The whole report as one JSON object (non-finite numbers as "inf"/"-inf"/null)."""
    counts = {s: sum(r.status == s for r in result.rows) for s in (PASS, FAIL, KINK)}
    return json.dumps(
        {
            "target": subject.target,
            "kind": subject.kind,
            "weights": subject.weights,
            "epoch": subject.epoch,
            "inputs": subject.inputs,
            "sample_indices": subject.sample_indices,
            "method": result.method,
            "requested_method": subject.requested_method,
            "eps": result.eps,
            "rtol": result.rtol,
            "atol_floor": result.atol_floor,
            "samples": result.samples,
            "seconds": result.seconds,
            "cast_from": result.cast_from,
            "strict": strict,
            "verdict": verdict(result, strict),
            "counts": counts,
            "rows": [_row_json(r) for r in result.rows],
        }
    )


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


def gradcheck(
    target: Annotated[Path | None, typer.Argument(help=_TARGET_HELP, show_default=False)] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(
            "--checkpoint",
            "-c",
            metavar="N",
            help="Epoch of the run's checkpoint, or 'last'.",
            show_default=False,
        ),
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", "-n", min=1, help="Training samples in the checked batch.")
    ] = 4,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layer",
            "-l",
            metavar="NAME",
            help="Check only this layer's parameters and delta (repeatable; 'input': the input gradient).",
            show_default=False,
        ),
    ] = None,
    check_all: Annotated[
        bool, typer.Option("--all", help="Check every element (default up to 20,000 parameters).")
    ] = False,
    per_tensor: Annotated[
        int | None,
        typer.Option(
            "--per-tensor",
            metavar="K",
            min=1,
            help="Check K elements per tensor (always including the largest gradient).",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        Method, typer.Option("--method", "-m", metavar="METHOD", help=_METHOD_HELP)
    ] = Method.central,
    eps: Annotated[str, typer.Option("--eps", metavar="auto|FLOAT", help=_EPS_HELP)] = "auto",
    rtol: Annotated[
        float, typer.Option("--rtol", help="An element fails when its relative error exceeds this.")
    ] = 1e-6,
    strict: Annotated[bool, typer.Option("--strict", help="Count KINK rows as failures (exit 1).")] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Seed of the sample draw. Default: the config's seed.", show_default=False
        ),
    ] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=_SET_HELP, show_default=False)
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
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
    out_con, err_con = stdout_console(), stderr_console()
    if check_all and per_tensor is not None:
        raise UserError("--all and --per-tensor: use one or the other")
    step = parse_eps(eps)
    if not (math.isfinite(rtol) and rtol > 0):
        raise UserError(f"--rtol: expected a number > 0, got {rtol!r}")

    found = resolve_network(target, checkpoint, list(sets or []))
    loss = build_loss(found.cfg)
    selected = check_layers(found.net, list(layers or []))
    if method is Method.complex:
        refuse_complex(found.net, loss)
    draw_seed = found.cfg.seed if seed is None else seed
    rng = np.random.default_rng([draw_seed, SAMPLE_STREAM])
    x, y, inputs, inputs_text, index = choose_inputs(found, samples, rng, draw_seed)
    subject = Subject(
        net=found.net, loss=loss, x=x, y=y, kind=found.kind, target=found.target, weights=found.weights,
        inputs=inputs, inputs_text=inputs_text, sample_indices=index, requested_method=method.value,
        non_analytic=non_analytic_layers(found.net, loss),
        epoch=found.ck.epoch if found.ck is not None else None,
    )  # fmt: skip

    def run() -> GradcheckResult:
        try:
            return check_gradients(
                subject.net, loss, subject.x, subject.y, method=method.value, eps=step, rtol=rtol,
                layers=selected, per_tensor=per_tensor, check_all=True if check_all else None, rng=rng,
            )  # fmt: skip
        except ValueError as e:  # the options are checked above; keep core's words for anything left
            raise UserError(f"gradcheck: {e}") from None

    try:
        if err_con.is_terminal and not json_out:
            with err_con.status("checking gradients…"):
                result = run()
        else:
            result = run()
    except KeyboardInterrupt:
        err_con.print("interrupted", markup=False)
        raise typer.Exit(130) from None

    if json_out:
        sys.stdout.write(to_json(subject, result, strict) + "\n")
        sys.stdout.flush()
    else:
        print_report(out_con, subject, result, strict)
    if not result.passed(strict):
        raise typer.Exit(1)
