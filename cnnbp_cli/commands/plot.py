"""``cnnbp plot``: parse the options, draw with the library (:func:`cnnbp.plotting.plot`), say what was
written.  Needs matplotlib (``pip install 'cnnbp[plot]'``); without it, one line and exit 2."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from cnnbp.commands import options
from cnnbp.plotting import plot as draw
from cnnbp.plugins import load_option
from cnnbp.render.console import stdout_console


class Kind(str, Enum):
    curves = "curves"
    deltas = "deltas"
    activations = "activations"
    weights = "weights"
    histograms = "histograms"
    health = "health"


_TARGET_HELP = "Run folders (or a folder holding runs, or checkpoint files); every kind but curves draws one."
_KIND_HELP = (
    "curves (loss and accuracy per epoch, loss per step; several runs overlaid), deltas, activations "
    "(one probe sample), weights, histograms (every checkpoint), health."
)
_OUTPUT_HELP = "The figure file: .png, .svg or .pdf."
_LAYER_HELP = "Only these layers (repeat, or comma-separate). Default: the layers with parameters."
_CHECKPOINT_HELP = (
    "Epoch, 'last' or 'best'. Default: the last for deltas, activations and weights; every checkpoint for "
    "histograms and health."
)


def plot(
    targets: Annotated[list[Path], typer.Argument(metavar="RUN", help=_TARGET_HELP, show_default=False)],
    kind: Annotated[Kind, typer.Option("--kind", "-k", metavar="KIND", help=_KIND_HELP)] = Kind.curves,
    output: Annotated[
        Path, typer.Option("--output", "-o", metavar="FILE", help=_OUTPUT_HELP, show_default=False)
    ] = ...,
    layer: Annotated[
        list[str] | None, typer.Option("--layer", "-l", metavar="NAME", help=_LAYER_HELP, show_default=False)
    ] = None,
    checkpoint: Annotated[
        str | None,
        typer.Option("--checkpoint", "-c", metavar="N|last|best", help=_CHECKPOINT_HELP, show_default=False),
    ] = None,  # fmt: skip
    sample: Annotated[int, typer.Option("--sample", metavar="I", min=0, help="Probe sample (0-based).")] = 0,
    channel: Annotated[
        int | None,
        typer.Option(
            "--channel",
            metavar="C",
            min=0,
            help="One channel of δ maps or one filter of kernels.",
            show_default=False,
        ),
    ] = None,  # fmt: skip
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json_out: options.Json = False,
    plugins: options.Plugins = None,
) -> None:
    """Draw runs' curves, deltas, activations, weights, histograms or health as a PNG, SVG or PDF figure."""
    load_option(plugins)
    report = draw(targets, kind.value, output, layers=layer, checkpoint=checkpoint, sample=sample,
                  channel=channel, force=force)  # fmt: skip
    if json_out:
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    size = f"{report.bytes / 1000:,.1f} kB"
    inches = f"{report.width_in:.1f} × {report.height_in:.1f} in"
    at = f", checkpoint {report.checkpoint}" if report.checkpoint is not None else ""
    line = Text.assemble(
        ("wrote  ", "bold"), f"{report.path} ({report.format.upper()}, {size}, {inches}{at})"
    )
    stdout_console().print(line, soft_wrap=True)
