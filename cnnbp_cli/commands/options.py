"""Typer options several commands share, declared once (each command module imports these; commands
never import each other)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="N|last|best",
        help="Epoch of the run's checkpoint, 'last' or 'best' (lowest val_loss, or record.monitor).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
#: a run to read (evaluate, predict): its folder, checkpoints/ folder or one checkpoint file
RunArg = Annotated[
    Path,
    typer.Argument(
        metavar="RUN",
        help="A run folder (or its checkpoints/ folder, or one checkpoint file).",
        show_default=False,
    ),
]
#: ``--checkpoint`` for commands that use a trained network, so default to the best one
BestCheckpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="N|last|best",
        help="Epoch number, 'last' or 'best'. Default: best (last when the run has no validation data).",
        show_default=False,
    ),
]


def check_sets(values: list[str] | None) -> list[str] | None:
    """Each ``--set`` value must be one word KEY=VALUE: ``--set train.lr 0.1`` is a mistake said as such
    (not a config file named 0.1)."""
    for value in values or []:
        if "=" not in value:
            raise typer.BadParameter(
                f"takes KEY=VALUE as one word, got {value!r} (write --set {value.strip()}=VALUE, no spaces "
                "around '=')"
            )
    return values


def sets_option(help_text: str) -> object:
    """The ``--set KEY=VALUE`` option with a command's own help text."""
    return Annotated[
        list[str] | None,
        typer.Option("--set", metavar="KEY=VALUE", help=help_text, show_default=False, callback=check_sets),
    ]


Plugins = Annotated[
    list[str] | None,
    typer.Option(
        "--plugin",
        metavar="FILE.py",
        help="Load your own layers from this Python file or module first (repeatable).",
        show_default=False,
    ),
]
