"""``cnnbp export``: parse the options, export with the library (:func:`cnnbp.export`), render the report.

Exit codes: 0 written and verified (or ``--no-verify``); 1 verification failed (nothing written);
2 a user error (bad target or option, an existing output without ``--force``, a model ONNX cannot
express, the ``onnx`` or ``tensorboard`` extra missing).
"""

from __future__ import annotations

import json
import math
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from cnnbp.commands import options
from cnnbp.exporting import TOLERANCE, ExportReport
from cnnbp.exporting import export as export_checkpoint
from cnnbp.plugins import load_option
from cnnbp.render.console import print_error, print_report, wrap_pairs
from cnnbp.tensorboard import TensorBoardReport


class Format(str, Enum):
    onnx = "onnx"
    npz = "npz"
    json = "json"
    tensorboard = "tensorboard"


class Ops(str, Enum):
    auto = "auto"
    native = "native"
    decomposed = "decomposed"


# ---- the report ------------------------------------------------------------------------------------
def _size(n: int) -> str:
    return f"{n:,} bytes" if n < 10_000 else f"{n / 1000:,.1f} kB" if n < 10_000_000 else f"{n / 1e6:,.1f} MB"


def _diff(d: float) -> str:
    return "0" if d == 0 else "inf" if math.isinf(d) else f"{d:.3g}"


def _tolerance(r: ExportReport) -> str:
    base = TOLERANCE[r.dtype]
    if not r.output_scale or r.output_scale == 1.0:
        return f"{base:g}"
    return f"{r.tolerance:.2e} = {base:g} × max |output| {r.output_scale:.3g}"


def tensorboard_lines(r: TensorBoardReport, width: int = 80) -> list[Text]:
    """The report of a TensorBoard export: the folder, the run, what was written, the read-back."""
    epochs = f"epoch {r.epochs[0]}" if len(r.epochs) == 1 else f"epochs {r.epochs[0]}–{r.epochs[-1]}"
    files = f"{r.files} event file{'s' if r.files != 1 else ''}"
    rows = [
        ("exported" if r.written else "not written", f"{r.path} (TensorBoard, {files}, {_size(r.bytes)})"),
        ("from", f"{r.source} · run {r.run}, {len(r.epochs)} checkpoints ({epochs}), {r.steps:,} steps"),
        ("scalars", f"{r.scalars:,} in {r.scalar_tags} tags (step/*: every step, epoch/*: every epoch)"),
        ("histograms", f"{r.histograms:,} in {r.histogram_tags} tags (weights, grads, deltas, activations)"),
    ]
    if not r.verified:
        rows.append(("verify", "skipped (--no-verify)"))
    else:
        result = "ok" if r.ok else f"FAILED: {r.problem}"
        rows.append(("verify", f"event files read back: every scalar, histogram and the config {result}"))
    if r.written:
        rows.append(("view", f"tensorboard --logdir {r.path}"))
    return _pairs(rows, width, whole=("view",))


def _pairs(rows: list[tuple[str, str]], width: int, whole: tuple[str, ...] = ()) -> list[Text]:
    """The rows as a bold key column and texts wrapped to ``width``."""
    return [Text.assemble((k, "bold"), v) for k, v in wrap_pairs(rows, width, whole=whole)]


def report_lines(r: ExportReport | TensorBoardReport, width: int = 80) -> list[Text]:
    """The plain report: file, source, the ONNX graph, the verification."""
    if isinstance(r, TensorBoardReport):
        return tensorboard_lines(r, width)
    rows = [
        ("exported" if r.written else "not written", f"{r.path} ({r.format.upper()}, {_size(r.bytes)})"),
        ("from", f"{r.checkpoint} · run {r.run}, epoch {r.epoch}, {r.dtype}"),
    ]
    if r.format == "onnx":
        rows.append(
            ("onnx", f"opset {r.opset}, IR {r.ir_version}, ops {r.ops}: {', '.join(r.op_types or [])}")
        )
        rows.append(("outputs", ", ".join(r.outputs or [])))
    if not r.verified:
        rows.append(("verify", "skipped (--no-verify)"))
    else:
        inputs = f"{r.samples} probe samples" if r.inputs == "probe" else f"{r.samples} random inputs"
        diff = _diff(r.max_abs_diff if r.max_abs_diff is not None else math.nan)
        verdict = "ok" if r.ok else "FAILED"
        if r.format == "onnx":
            text = (
                f"onnxruntime vs engine on {inputs}: max |diff| {diff} (tolerance {_tolerance(r)}) {verdict}"
            )
        else:
            same = "bit-identical" if r.ok else "not bit-identical"
            what = "weights, buffers and outputs" if r.buffers else "weights and outputs"
            text = f"file read back vs engine on {inputs}: {what} {same}, max |diff| {diff} {verdict}"
        rows.append(("verify", text))
    return _pairs(rows, width)


# ---- the command -----------------------------------------------------------------------------------
_TARGET_HELP = "A run folder (its last checkpoint) or a checkpoint file (.h5)."
_OUTPUT_HELP = (
    "Output file, or a folder for the default name. Default: runs/<name>/model.<ext> "
    "(model-NNNN.<ext> for an earlier checkpoint; <run>-NNNN.<ext> beside a loose checkpoint file)."
)
_FORMAT_HELP = (
    "onnx (a standard ONNX graph), npz (one array per layer/param), json, or tensorboard (the whole run as "
    "event files in a folder, default runs/<name>/tensorboard). Default: -o's suffix, else onnx."
)
_OPS_HELP = (
    "ONNX only. native: Conv/AveragePool/LpPool; decomposed: Slice/Sum/MatMul forms. "
    "auto: native for float32, decomposed for float64 (onnxruntime's CPU provider has no float64 "
    "Conv/AveragePool/LpPool kernels)."
)


def export(
    target: Annotated[Path, typer.Argument(help=_TARGET_HELP, show_default=False)],
    fmt: Annotated[
        Format | None, typer.Option("--format", "-f", help=_FORMAT_HELP, show_default=False)
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help=_OUTPUT_HELP, show_default=False)
    ] = None,
    checkpoint: options.Checkpoint = None,
    opset: Annotated[
        int | None,
        typer.Option("--opset", help="ONNX only: the opset version (default 17).", show_default=False),
    ] = None,
    ops: Annotated[Ops | None, typer.Option("--ops", help=_OPS_HELP, show_default=False)] = None,
    no_verify: Annotated[
        bool, typer.Option("--no-verify", help="Write without checking the file against the engine.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    plugins: options.Plugins = None,
) -> None:
    """Export a checkpoint's network as ONNX, NPZ or JSON (or a run as TensorBoard events), verified."""
    load_option(plugins)
    report = export_checkpoint(
        target, output, fmt.value if fmt is not None else None, checkpoint=checkpoint, opset=opset,
        ops=ops.value if ops is not None else None, verify=not no_verify, force=force,
    )  # fmt: skip
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        sys.stdout.flush()
    else:
        print_report(lambda width: report_lines(report, width))
    if not report.ok and isinstance(report, TensorBoardReport):
        print_error(f"{report.path}: verification failed: {report.problem}; nothing was written")
        raise typer.Exit(1)
    if not report.ok:
        diff = _diff(report.max_abs_diff if report.max_abs_diff is not None else math.nan)
        if report.format == "onnx":
            problem = f"max |diff| {diff} exceeds the {_tolerance(report)} tolerance"
        else:
            problem = f"the file read back is not bit-identical to the engine (max |diff| {diff})"
        print_error(
            f"{report.path}: verification failed: {problem}; nothing was written "
            "(--no-verify writes it without this check)"
        )
        raise typer.Exit(1)
