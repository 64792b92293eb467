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


# ---- line charts: round ticks, fixed and fitted axes, bands under lines ------------------------------------

import math  # noqa: E402
import re  # noqa: E402


def labels(lines: list) -> list[str]:
    """The y-axis labels of a chart, top to bottom."""
    return [m.group(1) for line in lines if (m := re.match(r"^\s*(\S+) ┤", line.plain))]


def test_nice_ticks_are_round_and_cover_the_data() -> None:
    assert termplot.nice_ticks(0.0721, 0.0981) == [0.07, 0.08, 0.09, 0.1]
    assert termplot.nice_ticks(0.109, 0.982) == [0.0, 0.5, 1.0]
    assert termplot.nice_ticks(-5, 17) == [-10.0, 0.0, 10.0, 20.0]
    for lo, hi in ((0.0123, 0.0456), (3, 1234), (-0.7, -0.2)):
        ticks = termplot.nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and 2 <= len(ticks) <= 5
        step = ticks[1] - ticks[0]
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5)) < 1e-9  # 1, 2 or 5 × 10^k apart
    to_values = lambda t: [round(10**v, 12) for v in t]  # noqa: E731
    assert to_values(termplot.log_ticks(math.log10(0.3), math.log10(2.5))) == [0.2, 0.5, 1.0, 2.0, 5.0]
    wide = termplot.log_ticks(math.log10(7.8e-4), math.log10(3.2))  # 3.6 decades: the ends, powers between
    assert to_values(wide) == [5e-4, 1e-3, 0.01, 0.1, 1, 5]


def test_accuracy_axes_run_from_0_to_100_percent() -> None:
    series = [termplot.Series("val", [0, 1, 2], [0.9, 0.95, 0.97], "o")]
    chart = termplot.line_chart(series, width=80, y_range=(0.0, 1.0), y_format=lambda v: f"{100 * v:.0f}%")
    assert labels(chart) == ["100%", "50%", "0%"]
    # the points stay near the top instead of filling the height
    assert "o" in chart[1].plain and "o" not in "".join(line.plain for line in chart[3:9])


def test_a_fitted_axis_leaves_an_outlier_off_it_with_an_arrow() -> None:
    """The initial loss (3.1) above trained losses of 0.07-0.1: the axis fits the trained ones."""
    y = [3.1, 0.1, 0.09, 0.08, 0.075, 0.072]
    series = [termplot.Series("val", range(6), y, "o")]
    chart = termplot.line_chart(series, width=80, y_fit=y[1:])
    assert labels(chart) == ["0.1", "0.09", "0.08", "0.07"]
    assert chart[1].plain.split("┤")[1].startswith("↑") and "↑↓ off the axis" in chart[0].plain
    assert all(len(line.plain) <= 80 for line in chart)


def test_a_band_is_drawn_under_its_smoothed_line() -> None:
    rng = np.random.default_rng(0)
    raw = 1 + 0.3 * rng.standard_normal(400)
    smoothed = termplot.smooth(raw, 0.9)
    series = [termplot.Series("raw", range(400), raw, "·", band=True),
              termplot.Series("smoothed", range(400), smoothed, "*")]  # fmt: skip
    chart = termplot.line_chart(series, width=80, x_label="step")
    body = "".join(line.plain for line in chart[1:10])
    assert "·" in body and "*" in body and "#" not in body  # a line covers a band, no "both" cells
    columns = [line.plain.split("┤" if "┤" in line.plain else "│", 1)[1] for line in chart[1:10]]
    for c in range(64):  # every column holds the smoothed line once
        assert sum(row[c : c + 1] == "*" for row in columns) == 1


def test_smooth_is_tensorboards_debiased_moving_average() -> None:
    w, v = 0.6, [1.0, 3.0, float("nan"), 2.0]
    s1 = (1 - w) * 1.0
    s2 = w * s1 + (1 - w) * 3.0
    s3 = w * s2 + (1 - w) * 2.0
    want = [s1 / (1 - w), s2 / (1 - w**2), math.nan, s3 / (1 - w**3)]
    np.testing.assert_allclose(termplot.smooth(v, w), want, rtol=1e-15)


# ---- palettes per colour system --------------------------------------------------------------------------

XTERM_LEVELS = (0, 95, 135, 175, 215, 255)


def xterm_to_rgb(index: int) -> tuple[int, int, int]:
    """xterm's 256 colours, written out from the standard: 16–231 the 6×6×6 cube, 232–255 greys."""
    if index >= 232:
        return (8 + 10 * (index - 232),) * 3
    i = index - 16
    return (XTERM_LEVELS[i // 36], XTERM_LEVELS[i // 6 % 6], XTERM_LEVELS[i % 6])


def styles_of(values: np.ndarray, mode: str | None, signed: bool = True) -> list[str]:
    lines = termplot.heatmap(values.reshape(1, -1), scale=1.0, color=mode, width=400, signed=signed)
    return [str(span.style) for span in lines[1].spans if span.style != "dim"]


def test_256_colour_palette_is_monotone_and_centred_at_0() -> None:
    """Each side of 0 gets darker and more saturated step by step, every channel moving one way, and
    everything within the middle step of 0 is one neutral colour (no speckles of grey, cyan or lavender)."""
    t = np.linspace(-1, 1, 201)
    indices = [termplot.xterm_index(float(v)) for v in t]
    rgb = np.array([xterm_to_rgb(i) for i in indices], dtype=float)
    for side in (rgb[:101][::-1], rgb[100:]):  # from 0 outwards
        steps = np.diff(side, axis=0)
        for c in range(3):
            assert (steps[:, c] <= 0).all() or (steps[:, c] >= 0).all()  # one direction per channel
        lightness = side.sum(axis=1)
        assert (np.diff(lightness) <= 0).all()  # never lighter further from 0
    centre = {i for v, i in zip(t, indices, strict=True) if abs(v) < 0.1}
    assert centre == {231} and xterm_to_rgb(231) == (255, 255, 255)
    assert all(xterm_to_rgb(i)[2] > xterm_to_rgb(i)[0] for v, i in zip(t, indices, strict=True) if v <= -0.1)
    assert all(xterm_to_rgb(i)[0] > xterm_to_rgb(i)[2] for v, i in zip(t, indices, strict=True) if v >= 0.1)
    greys = [xterm_to_rgb(termplot.xterm_index(float(v), signed=False)) for v in np.linspace(0, 1, 101)]
    assert all(r == g == b for r, g, b in greys) and (np.diff([g[0] for g in greys]) <= 0).all()


def test_heatmap_uses_the_palette_of_the_colour_system() -> None:
    values = np.array([-1.0, -0.5, -0.04, 0.0, 0.03, 0.5, 1.0])
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system="256")
    for line in termplot.heatmap(values.reshape(1, -1), scale=1.0, color="256", width=80):
        console.print(line, soft_wrap=True)
    codes = out.getvalue()
    assert "48;2;" not in codes and "48;5;231m" in codes  # explicit 256 indices, never RGB to be rounded
    near_zero = styles_of(values[2:5], "256")
    assert near_zero == ["on color(231)"] * 3  # -0.04, 0 and 0.03 look the same: the centre
    assert styles_of(values, "truecolor")[3] == "on rgb(247,247,247)"
    sixteen = termplot.heatmap(values.reshape(1, -1), scale=1.0, color="standard", width=80)[1]
    assert {str(s.style) for s in sixteen.spans} - {"dim"} <= {"blue", "red", ""}
    assert sixteen.plain.split(" ", 1)[1].rstrip() == "-█-▒-░  +░+▒+█"  # shades: monotone in |value|
    plain = termplot.heatmap(values.reshape(1, -1), scale=1.0, color=None, width=80)[1]
    assert {str(s.style) for s in plain.spans} <= {"dim"}
    assert termplot.color_mode(True) == "truecolor" and termplot.color_mode(False) is None
    assert termplot.color_mode("windows") == "standard"


def test_histogram_rows_fit_and_share_one_axis() -> None:
    edges = np.linspace(-1.0, 1.0, 41)
    counts = [
        np.histogram(np.random.default_rng(k).normal(0, 0.1 * (k + 1), 500), bins=edges)[0] for k in range(3)
    ]
    lines = termplot.histogram_rows(["0", "5", "10"], counts, edges, ["a", "b", "c"], width=60)
    assert all(len(line.plain) <= 60 for line in lines)
    rows = [line.plain.split("│")[1][:40] for line in lines[:3]]
    assert all(set(r) <= set(termplot.BARS) for r in rows)
    assert [r.count(" ") for r in rows] == sorted(r.count(" ") for r in rows)[
        ::-1
    ]  # wider spread, fewer gaps
    assert lines[-2].plain.strip().startswith("└") and "0" in lines[-1].plain
