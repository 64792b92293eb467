"""Tests of :mod:`cnnbp.render.termplot`: heatmaps with and without colour, and number matrices that fit
the width without losing a value."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from cnnbp.render import termplot


def test_colour_heatmap_is_styled_and_fits() -> None:
    """With colour the map is drawn with background colours (and the plain text stays 80 wide)."""
    values = np.linspace(-1, 1, 28 * 40).reshape(28, 40)
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system="truecolor", record=True)
    for line in termplot.heatmap(values, scale=1.0, color=True, width=80):
        console.print(line, soft_wrap=True)
    text = console.export_text(styles=False, clear=False)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "more columns" in text
    styled = out.getvalue()  # what a colour terminal receives
    assert "48;2;" in styled  # truecolor backgrounds
    plain = termplot.heatmap(values, scale=1.0, color=False, width=80)
    assert {s.style for line in plain for s in line.spans} <= {"dim"}  # no colours without colour


def test_number_matrix_blocks_keep_every_value() -> None:
    values = np.arange(1, 13 * 13 + 1, dtype=float).reshape(13, 13) * -1000.5
    lines = [line.plain for line in termplot.number_matrix(values, 4, 80)]
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    for v in values.ravel():
        assert f"{v:.4f}" in text


def test_small_values_share_a_power_of_ten() -> None:
    assert termplot.exponent_for(np.array([3e-5, -1e-4])) == -4
    assert termplot.exponent_for(np.array([0.5, np.nan])) == 0
    assert termplot.format_values(np.array([3e-5, -1e-4]), 2, -4).tolist() == ["0.30", "-1.00"]
    assert termplot.factor_note(-4) == "× 1e-04" and termplot.factor_note(0) == ""
