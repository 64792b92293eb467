"""Typer options several commands share, declared once (each command module imports these; commands
never import each other)."""

from __future__ import annotations

from typing import Annotated

import typer

Checkpoint = Annotated[
    str | None,
    typer.Option(
        "--checkpoint",
        "-c",
        metavar="N",
        help="Epoch of the run's checkpoint, or 'last'.",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


def sets_option(help_text: str) -> object:
    """The ``--set KEY=VALUE`` option with a command's own help text."""
    return Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=help_text, show_default=False)
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
