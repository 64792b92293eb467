"""The README's examples run as written."""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from tests.conftest import block_after


def test_the_notebook_example_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block_after("notebook"), "README.md", "exec"), {})  # noqa: S102 - our own README
    lines = out.getvalue().splitlines()
    assert lines[0] == f"runs{os.sep}nb [0, 1, 2, 3]"
    assert lines[-1] == "(1, 2, 2, 2) (1, 1, 3, 3) (2, 1, 2, 2)"
    assert "True True" in lines  # the export was verified and written


# ---- the plugin tutorial: "Your own layers" and "Check your own layer" -------------------------------

NUMBER = re.compile(r"-?\d+(\.\d+)?(e[+-]\d+)?")


def cli(args: list[str]):  # noqa: ANN201 - typer's Result
    from typer.testing import CliRunner

    from cnnbp.app import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "80", "NO_COLOR": "1"})


def apply_diff(source: str, diff: str) -> str:
    """Replace each ``-`` line of a README diff block by the ``+`` line after it, first match first."""
    lines = source.splitlines()
    pairs = diff.splitlines()
    for old, new in zip(pairs[::2], pairs[1::2], strict=True):
        assert old.startswith("-") and new.startswith("+"), (old, new)
        at = lines.index(old[1:])  # ValueError when the README's diff does not fit the file any more
        lines[at] = new[1:]
    return "\n".join(lines) + "\n"


def fix(path: Path, marker: str) -> None:
    """Apply the README's diff block ``marker`` to the file."""
    path.write_text(apply_diff(path.read_text(encoding="utf-8"), block_after(marker)), encoding="utf-8")


def masked(text: str) -> list[str]:
    """Lines with every number replaced by ``#`` (the errors' digits are the machine's, not the text's)."""
    return [NUMBER.sub("#", line.rstrip()) for line in text.splitlines()]


def check_session(marker: str, expected_code: int) -> None:
    """Run the ``$ cnnbp ...`` line of a README block; its output must read as the block does, numbers
    aside (``...`` stands for the lines the README leaves out)."""
    command, *shown = block_after(marker).splitlines()
    assert command.startswith("$ cnnbp "), command
    result = cli(command.split()[2:])
    assert result.exit_code == expected_code, result.output
    got = masked(result.output)
    assert all(len(line) <= 80 for line in result.output.splitlines())
    if "..." in shown:
        head, tail = shown[: shown.index("...")], shown[shown.index("...") + 1 :]
        assert got[: len(head)] == masked("\n".join(head))
        assert got[len(got) - len(tail) :] == masked("\n".join(tail))
    else:
        assert got == masked("\n".join(shown))


def test_the_plugin_example_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_layers.py").write_text(block_after("my_layers.py"), encoding="utf-8")
    (tmp_path / "plugin.yaml").write_text(block_after("plugin.yaml"), encoding="utf-8")
    result = cli(["train", "plugin.yaml", "--quiet", "--json"])
    assert result.exit_code == 0, result.output
    import json

    last = json.loads(result.stdout.splitlines()[-1])  # one JSON line per epoch
    assert last["epoch"] == 5 and last["val_acc"] > 0.9  # a 64-32-10 net on the 8×8 digits
    recorded = (tmp_path / "runs" / "plugin" / "config.yaml").read_text(encoding="utf-8")
    assert str(tmp_path / "my_layers.py") in recorded and "sha256" in recorded
    gradcheck = cli(["gradcheck", "runs/plugin"])  # loads the recorded plugin by itself
    assert gradcheck.exit_code == 0, gradcheck.output


def test_the_check_layer_tutorial_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    student = tmp_path / "student_conv.py"
    student.write_text(block_after("student_conv.py"), encoding="utf-8")
    check_session("run 1", 1)  # stride 2: the input gradient is wrong
    fix(student, "fix 1")
    check_session("run 2", 0)
    check_session("run 3", 1)  # a true convolution: --like conv tells
    fix(student, "fix 2")
    check_session("run 4", 0)
