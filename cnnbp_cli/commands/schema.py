"""``cnnbp schema``: print the JSON Schema of the config format (for editors with a YAML language server)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cnnbp.config_schema import json_schema_document


def schema(
    indent: Annotated[
        int, typer.Option("--indent", min=0, max=8, help="Spaces per indent level (0: one line).")
    ] = 2,
) -> None:
    """Print the JSON Schema of run configs; save it and point your editor's YAML language server at it."""
    sys.stdout.write(json.dumps(json_schema_document(), indent=indent or None, ensure_ascii=False) + "\n")
