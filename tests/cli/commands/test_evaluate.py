"""``cnnbp evaluate`` through the Typer app: the report fits 80 columns, its confusion matrix reads back
as the library's, ``--json`` is the same numbers, and mistakes are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cnnbp.app import app
from cnnbp.evaluating import evaluate

PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}


def invoke(*args: object):  # noqa: ANN201 - typer's Result
    return CliRunner().invoke(app, [str(a) for a in args], env=PLAIN)


def test_the_report_and_its_confusion_matrix(digits_run: Path) -> None:
    result = invoke("evaluate", digits_run, "--checkpoint", "2")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 or str(digits_run) in line for line in lines)
    want = evaluate(digits_run, checkpoint=2)
    assert f"loss        {want.loss:.6g} (mean softmax_cross_entropy)" in lines
    assert f"accuracy    {100 * want.accuracy:.1f}% ({want.correct} of 359)" in lines
    assert "data        digits · limit 200: the validation split (359 samples)" in lines
    head = lines.index("confusion matrix: rows the true class, columns the predicted one")
    assert lines[head + 1].split() == ["true", *map(str, range(10)), "recall"]
    rows = [line.split() for line in lines[head + 2 : head + 12]]
    counts = np.array([[0 if c == "·" else int(c) for c in row[1:11]] for row in rows])
    np.testing.assert_array_equal(counts, want.confusion)
    for i, row in enumerate(rows):  # recall: the diagonal over the row's samples
        assert row[11] == f"{100 * want.confusion[i, i] / want.confusion[i].sum():.1f}%"
    assert lines[head + 12].split()[0] == "precision"


def test_json_and_one_line_errors(digits_run: Path, tmp_path: Path) -> None:
    result = invoke("evaluate", digits_run, "-c", "best", "--json")
    doc = json.loads(result.stdout)
    want = evaluate(digits_run, checkpoint="best")
    assert (doc["epoch"], doc["loss"], doc["confusion"]) == (want.epoch, want.loss, want.confusion.tolist())
    assert doc["chosen"] == "best (lowest val_loss)" and doc["split"] == "val"
    for args, text in (
        (["-c", "7"], f"error: {digits_run}: no checkpoint for epoch 7 (have 0, 1, 2)"),
        (["--data", tmp_path / "none.npz"], f"error: --data: {tmp_path / 'none.npz'}: no such config"),
    ):
        result = invoke("evaluate", digits_run, *args)
        assert result.exit_code == 2 and result.stderr.splitlines()[0].startswith(text), result.output
        assert len(result.stderr.splitlines()) == 1


def test_a_missing_run_or_one_without_checkpoints_is_one_line(tmp_path: Path) -> None:
    """Without --checkpoint the best is looked for: a path that is not a run says so (exit 2), for
    evaluate and predict alike."""
    (tmp_path / "empty").mkdir()
    for target, text in (
        (tmp_path / "nowhere", "no such run folder or checkpoint file"),
        (tmp_path / "empty", "no checkpoints found"),
    ):
        for command in (["evaluate", target], ["predict", target, tmp_path / "x.npz"]):
            result = invoke(*command)
            assert result.exit_code == 2, result.output
            lines = result.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"error: {target}: {text}"), result.output
