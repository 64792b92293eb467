"""``cnnbp schema``: print the JSON Schema of the config format (for editors with a YAML language server)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from cnnbp.commands import options
from cnnbp.config_schema import json_schema_document
from cnnbp.plugins import load_option

Indent = Annotated[int, typer.Option("--indent", min=0, max=8, help="Spaces per indent level (0: one line).")]


def schema(indent: Indent = 2, plugins: options.Plugins = None) -> None:
    """Print the JSON Schema of run configs; save it and point your editor's YAML language server at it."""
    load_option(plugins)
    sys.stdout.write(json.dumps(json_schema_document(), indent=indent or None, ensure_ascii=False) + "\n")
