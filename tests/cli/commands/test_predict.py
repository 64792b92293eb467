"""``cnnbp predict`` through the Typer app: one row per sample with every class when they fit 80
columns, the top three when they do not, and ``--json`` with every probability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from cnnbp.app import app
from cnnbp.predicting import predict

PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}


def invoke(*args: object):  # noqa: ANN201 - typer's Result
    return CliRunner().invoke(app, [str(a) for a in args], env=PLAIN)


def test_rows_of_probabilities_and_json(digits_run: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 17, size=(4, 8, 8))
    np.savez(tmp_path / "x.npz", x=x)
    want = predict(digits_run, tmp_path / "x.npz")
    result = invoke("predict", digits_run, tmp_path / "x.npz")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 or str(tmp_path) in line or str(digits_run) in line for line in lines)
    assert "values      class probabilities (the softmax of the network's outputs)" in lines
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["sample", "top", *map(str, range(10))]
    for i, row in enumerate(table[1:]):
        cells = row.split()
        assert cells[:2] == [str(i), str(want.top[i])]
        assert cells[2:] == [f"{100 * p:.1f}%" for p in want.values[i]]
    doc = json.loads(invoke("predict", digits_run, tmp_path / "x.npz", "--json").stdout)
    assert [s["top"] for s in doc["samples"]] == want.top.tolist()
    assert [s["probabilities"] for s in doc["samples"]] == want.values.tolist()


def test_narrow_terminals_get_the_top_three(digits_run: Path, tmp_path: Path) -> None:
    from cnnbp.commands.predict import sample_lines

    np.savez(tmp_path / "x.npz", x=np.full((1, 8, 8), 8))
    want = predict(digits_run, tmp_path / "x.npz")
    order = want.values[0].argsort()[::-1][:3]
    lines = sample_lines(want, width=60)
    assert lines[0].split() == ["sample", "top", "classes", "by", "value", "(class:", "value)"]
    assert lines[1].split() == [
        "0", str(want.top[0]), *[w for j in order for w in (f"{j}:", f"{100 * want.values[0, j]:.1f}%")]
    ]
