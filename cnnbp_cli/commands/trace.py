"""``cnnbp trace``: parse the options, build the derivation with the library (:func:`cnnbp.trace`), render
it as terminal text, Markdown or LaTeX (:mod:`cnnbp.render.trace`), or print ``--json``.

``-o FILE`` writes the rendering (or the JSON) to FILE with the one atomic writer instead of stdout.
Exit codes: 0 done, 2 a usage or config error.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from cnnbp.commands import options
from cnnbp.errors import UserError
from cnnbp.files import write_atomic
from cnnbp.plugins import load_option
from cnnbp.render.console import stderr_console
from cnnbp.render.trace import latex_fragment, markdown, plain_text, text_lines
from cnnbp.tracing import trace as trace_sample


class Format(str, Enum):
    """``--format``."""

    text = "text"
    markdown = "markdown"
    latex = "latex"


_TARGET_HELP = (
    "A config file (the trace is at its initial weights, on a sample of its training data), a run folder "
    "(its last checkpoint) or a checkpoint file (.h5; on one of its probe samples)."
)
_SAMPLE_HELP = "The sample (0-based): of the config's training split, or of the checkpoint's probe batch."
_LAYER_HELP = "Only this layer's steps (repeatable; 'input': the input gradient). The loss is always shown."
_AT_HELP = (
    "Write out this element of a larger tensor, counted from 1 as the trace prints it: conv1[1,2,2] "
    "(channel 1, row 2, column 2 of conv1's output), conv1.W[1,1,2,2], input[1,3,3] (repeatable). "
    "Default: the element with the largest |δ| in each map."
)
_FORMAT_HELP = "text (the terminal), markdown ($…$ math) or latex (a fragment for amsmath)."
_PRECISION_HELP = "Decimals of the numbers printed."
_OUT_HELP = "Write to FILE (atomically) instead of stdout."
_SET_HELP = "Override a config value, VALUE read as YAML (repeatable); on a run or checkpoint only data.*."


def _console() -> Console:
    """stdout; under NO_COLOR without any escape codes (not even bold)."""
    console = Console(highlight=False)
    return Console(highlight=False, color_system=None) if console.no_color else console


def trace(
    target: Annotated[Path | None, typer.Argument(help=_TARGET_HELP, show_default=False)] = None,
    sample: Annotated[int, typer.Option("--sample", "-s", min=0, help=_SAMPLE_HELP)] = 0,
    checkpoint: options.Checkpoint = None,
    layers: Annotated[
        list[str] | None, typer.Option("--layer", "-l", metavar="NAME", help=_LAYER_HELP, show_default=False)
    ] = None,
    at: Annotated[
        list[str] | None, typer.Option("--at", metavar="LAYER[i,j,...]", help=_AT_HELP, show_default=False)
    ] = None,
    fmt: Annotated[Format, typer.Option("--format", "-f", help=_FORMAT_HELP)] = Format.text,
    precision: Annotated[int, typer.Option("--precision", "-p", min=1, max=17, help=_PRECISION_HELP)] = 4,
    out: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help=_OUT_HELP)] = None,
    sets: options.sets_option(_SET_HELP) = None,  # type: ignore[valid-type]
    json_out: options.Json = False,
    plugins: options.Plugins = None,
) -> None:
    """The worked backpropagation derivation of one sample, for your own network.

    The forward pass (each layer's z and a), the loss, the backward pass from
    the output (each layer's δ, each parameter gradient, the input gradient)
    and the gradient-descent update w+ = w − α·dE/dw with the run's learning
    rate: each quantity with its formula and its numbers, as the seeds' worked
    examples write them. Small layers are written out element by element;
    larger ones show the elements --at names (default: the largest |δ| of each
    map) and a summary of the rest.

    E is the sample's own loss; the update shown is the one a batch of that
    single sample would make.
    """
    load_option(plugins)
    if out is not None and out.is_dir():
        raise UserError(f"{out}: is a folder; -o takes a file name")
    report = trace_sample(target, sample=sample, checkpoint=checkpoint, layers=list(layers or []) or None,
                          at=list(at or []), overrides=list(sets or []))  # fmt: skip
    if json_out:
        data = json.dumps(report.to_dict()) + "\n"
    elif fmt is Format.markdown:
        data = markdown(report, precision)
    elif fmt is Format.latex:
        data = latex_fragment(report, precision)
    elif out is not None:
        data = plain_text(report, precision)
    else:
        console = _console()
        for line in text_lines(report, precision, console.width):
            console.print(line, soft_wrap=True)
        return
    if out is not None:
        write_atomic(out, data)
        stderr_console().print(f"wrote {out}", markup=False, highlight=False)
        return
    sys.stdout.write(data)
    sys.stdout.flush()
