"""The README's examples run as written."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def block_after(marker: str) -> str:
    """The fenced code block that follows ``<!-- tested: MARKER -->`` in the README."""
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"<!-- tested: {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"no block marked {marker!r} in the README"
    return match.group(1)


def test_the_notebook_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block_after("notebook"), "README.md", "exec"), {})  # noqa: S102 - our own README
    lines = out.getvalue().splitlines()
    assert lines[0] == f"runs{os.sep}nb [0, 1, 2, 3]"
    assert lines[-1] == "(1, 2, 2, 2) (1, 1, 3, 3) (2, 1, 2, 2)"
    assert "True True" in lines  # the export was verified and written
