"""Terminal pictures of arrays: number matrices, heatmaps, vectors, statistics and line charts.

Pure rendering helpers: every function takes NumPy arrays or plain numbers and returns a list of
:class:`rich.text.Text` lines, each at most ``width`` cells wide.  Nothing here prints, reads files or
knows about checkpoints.  Colour is a parameter: with ``color=False`` the output carries no styles, so a
console without a colour system prints it as plain text (heatmaps then use signed shade characters).

Conventions, as in the seeds' worked examples: rows and columns of a matrix are labelled from 1
(``δ₁₁`` is row 1, column 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from rich.text import Text

from cnnbp.inspection import array_stats

SHADES = " ░▒▓█"  # |value| / scale in (0, ¼], (¼, ½], (½, ¾], (¾, 1]; blank for exactly 0
ELLIPSIS = "…"
_WHITE = (247, 247, 247)
_BLUE = (33, 102, 172)  # negative end of the diverging palette (ColorBrewer RdBu)
_RED = (178, 24, 43)  # positive end


# ---- numbers --------------------------------------------------------------------------------------------


def exponent_for(values: np.ndarray) -> int:
    """The power of ten an array is printed in units of: 0 when its largest finite |value| is in
    [0.01, 1e5) (or the array is all zero), else that value's decimal exponent.

    A whole array shares one exponent so its columns line up; the numbers shown are value / 10^e with a
    ``× 1e-04``-style note (:func:`factor_note`), as MATLAB and Octave print small matrices.
    """
    arr = np.asarray(values, dtype=np.float64)
    finite = np.abs(arr[np.isfinite(arr)])
    if not finite.size:
        return 0
    top = float(finite.max())
    if top == 0.0 or 0.01 <= top < 1e5:
        return 0
    return math.floor(math.log10(top))


def factor_note(exponent: int) -> str:
    """``× 1e-04`` for a non-zero exponent, empty for 0."""
    return f"× 1e{exponent:+03d}" if exponent else ""


def format_values(values: np.ndarray, precision: int, exponent: int = 0) -> np.ndarray:
    """Every element of ``values / 10**exponent`` as fixed-point text with ``precision`` decimals."""
    arr = np.asarray(values, dtype=np.float64)
    if exponent:
        arr = arr / 10.0**exponent
    spec = f".{precision}f"
    zero = format(0.0, spec)
    flat = [format(float(v), spec) for v in arr.ravel()]
    flat = [zero if t == "-" + zero else t for t in flat]  # "-0.0000" says no more than "0.0000"
    return np.array(flat, dtype=object).reshape(arr.shape)


def plain_number(value: float, precision: int, exponent: int = 0) -> str:
    """One number in full: fixed with ``precision`` decimals, or scientific when ``exponent`` is not 0."""
    spec = f".{precision}e" if exponent else f".{precision}f"
    text = format(float(value), spec)
    zero = format(0.0, spec)
    return zero if text == "-" + zero else text


def scalar(value: float | None, precision: int = 4) -> str:
    """One number with ``precision`` significant digits (``-`` for None, ``nan``, ``inf`` as such)."""
    if value is None:
        return "-"
    v = float(value)
    if math.isnan(v):
        return "nan"
    return format(v, f".{max(precision, 1)}g")


def stats_lines(
    values: np.ndarray, precision: int, width: int, prefix: str = "", exponent: int | None = None
) -> list[Text]:
    """``min … max … mean … ‖·‖ …`` packed into as few lines of at most ``width`` cells as fit.

    The statistics are printed in full (scientific when the array is printed with an exponent), so they
    never need the ``× 1e…`` note to be read.
    """
    s = array_stats(values)
    e = exponent_for(values) if exponent is None else exponent
    labels = (("min", "min"), ("max", "max"), ("mean", "mean"), ("‖·‖", "norm"))
    items = [f"{label} {plain_number(s[key], precision, e)}" for label, key in labels]
    return [Text(line, style="dim") for line in pack(items, width, first=prefix)]


def pack(items: Sequence[str], width: int, first: str = "", sep: str = "  ") -> list[str]:
    """Join ``items`` with ``sep`` into lines no wider than ``width``; ``first`` prefixes the first line."""
    lines: list[str] = []
    line, started = first, False
    for item in items:
        candidate = line + (sep if started else "") + item
        if started and len(candidate) > width:
            lines.append(line)
            line = item
        else:
            line = candidate
        started = True
    if started or line:
        lines.append(line)
    return [clip(x, width) for x in lines]


def clip(text: str, width: int) -> str:
    """``text`` cut to ``width`` cells with a trailing ``…`` when it is longer."""
    return text if len(text) <= width else text[: max(width - 1, 0)] + ELLIPSIS


def clip_left(text: str, width: int) -> str:
    """``text`` cut to its last ``width`` cells with a leading ``…`` (for paths: the file name stays)."""
    return text if len(text) <= width else ELLIPSIS + text[len(text) - max(width - 1, 0) :]


# ---- matrices and vectors as numbers ----------------------------------------------------------------------


def number_matrix(values: np.ndarray, precision: int, width: int, exponent: int = 0) -> list[Text]:
    """A 2-D array as right-aligned numbers with 1-based row and column labels.

    The numbers are ``value / 10**exponent`` (the caller shows :func:`factor_note`).  Columns that do
    not fit ``width`` continue in further blocks below, each with its own column header, so every value
    is shown and no line is wider than ``width``.
    """
    m = np.atleast_2d(np.asarray(values))
    h, w = m.shape
    cells = format_values(m, precision, exponent)
    label_w = len(str(h))
    cell_w = max(max((len(t) for t in cells.ravel()), default=1), len(str(w))) + 2
    per_block = max(1, (width - label_w) // cell_w)
    lines: list[Text] = []
    for start in range(0, w, per_block):
        stop = min(w, start + per_block)
        if start:
            lines.append(Text(""))
        header = " " * label_w + "".join(str(j + 1).rjust(cell_w) for j in range(start, stop))
        lines.append(Text(header, style="dim"))
        for i in range(h):
            row = Text()
            row.append(str(i + 1).rjust(label_w), style="dim")
            row.append("".join(cells[i, j].rjust(cell_w) for j in range(start, stop)))
            lines.append(row)
    return lines


def vector_lines(
    values: np.ndarray, precision: int, width: int, max_lines: int | None = None, exponent: int = 0
) -> list[Text]:
    """A 1-D array as rows of numbers, each row labelled with the 1-based index of its first value.

    The numbers are ``value / 10**exponent``.  With ``max_lines`` the rows stop there and a last line
    says how many values were left out.
    """
    v = np.ravel(np.asarray(values))
    n = v.size
    if n == 0:
        return [Text("(empty)", style="dim")]
    cells = format_values(v, precision, exponent)
    label_w = len(str(n)) + 1
    cell_w = max(len(t) for t in cells) + 2
    per_line = max(1, (width - label_w) // cell_w)
    lines: list[Text] = []
    for start in range(0, n, per_line):
        if max_lines is not None and len(lines) >= max_lines:
            left = n - start
            lines.append(Text(f"{ELLIPSIS} {left} more values (--full shows all)", style="dim"))
            break
        row = Text()
        row.append(f"{start + 1}:".rjust(label_w), style="dim")
        row.append("".join(t.rjust(cell_w) for t in cells[start : start + per_line]))
        lines.append(row)
    return lines


# ---- tables ---------------------------------------------------------------------------------------------


def text_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    right: Sequence[bool] | None = None,
    styles: Sequence[str] | None = None,
) -> list[Text]:
    """A plain table: a bold header, a rule, then the rows; columns two spaces apart (one when tight).

    ``right`` says which columns are right-aligned (numbers); ``styles`` gives each row a style.  A
    table that still does not fit ``width`` has its lines cut with ``…``.
    """
    n = len(headers)
    right = list(right) if right is not None else [False] * n
    widths = [max([len(headers[k])] + [len(r[k]) for r in rows]) for k in range(n)]
    gap = 2 if sum(widths) + 2 * (n - 1) <= width else 1

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return clip((" " * gap).join(parts).rstrip(), width)

    total = min(width, sum(widths) + gap * (n - 1))
    out = [Text(line(headers), style="bold"), Text("─" * total, style="dim")]
    for i, r in enumerate(rows):
        out.append(Text(line(r), style=styles[i] if styles else ""))
    return out


# ---- heatmaps ---------------------------------------------------------------------------------------------
#
# Palettes per colour system, each monotone in |value| and centred at 0 (SIGNED: blue < 0 < red; UNSIGNED:
# white → dark for values ≥ 0, as an input image).  A terminal's colour system is what rich detects
# (``Console.color_system``): ``truecolor`` gets RGB interpolated between the ends; ``256`` gets explicit
# xterm-256 indices (rich would otherwise round each RGB to the nearest of its 256 colours, and near-white
# RGB values land on greys, cyans and lavenders at random: a speckled map); ``standard`` (16 colours) gets
# the shade characters in blue or red; none gets the plain sign + shade characters.

PALETTE_LEVELS = 5  # colour steps on each side of 0 (256 colours)
#: xterm-256 indices from 0 outwards: the centre (white), then lighter to darker blue / red; every RGB
#: channel moves monotonically along each side (see tests/cli/render/test_termplot.py)
XTERM_CENTRE = 231  # (255, 255, 255)
XTERM_BLUES = (189, 153, 110, 68, 25)  # (215,215,255) (175,215,255) (135,175,215) (95,135,215) (0,95,175)
XTERM_REDS = (224, 217, 210, 167, 124)  # (255,215,215) (255,175,175) (255,135,135) (215,95,95) (175,0,0)
#: white to dark grey for unsigned maps: 231 (255) then the grey ramp 255 (238) … 237 (58)
XTERM_GREYS = (231, 255, 253, 251, 249, 247, 245, 243, 241, 239, 237)
_GREY_DARK = (40, 40, 40)


def color_mode(color: bool | str | None) -> str | None:
    """The palette family for a colour setting: ``truecolor``, ``256``, ``standard`` or None (plain).

    ``True`` is truecolor and ``False`` plain (the old boolean setting); a rich colour system name is
    taken as it is (``windows``, 16 colours, as ``standard``).
    """
    if color is True:
        return "truecolor"
    if not color:
        return None
    name = str(color).lower()
    if name in ("truecolor", "256"):
        return name
    return "standard"


def xterm_rgb(index: int) -> tuple[int, int, int]:
    """The RGB of an xterm-256 colour index from 16 up (the 6×6×6 cube, then the grey ramp)."""
    if index >= 232:
        v = 8 + 10 * (index - 232)
        return (v, v, v)
    i = index - 16
    levels = (0, 95, 135, 175, 215, 255)
    return (levels[i // 36], levels[(i // 6) % 6], levels[i % 6])


def heat_rgb(t: float) -> tuple[int, int, int]:
    """The diverging palette at ``t`` in [-1, 1]: blue for negative, near white at 0, red for positive."""
    t = max(-1.0, min(1.0, t))
    end = _BLUE if t < 0 else _RED
    a = abs(t)
    return tuple(round(w + (e - w) * a) for w, e in zip(_WHITE, end, strict=True))  # type: ignore[return-value]


def grey_rgb(t: float) -> tuple[int, int, int]:
    """The sequential palette at ``t`` in [0, 1]: white at 0, dark grey at 1."""
    t = max(0.0, min(1.0, t))
    return tuple(round(255 + (d - 255) * t) for d in _GREY_DARK)  # type: ignore[return-value]


def xterm_index(t: float, signed: bool = True) -> int:
    """The xterm-256 index of ``t`` (in [-1, 1] signed, [0, 1] unsigned): one of 11 steps, 0 in the centre."""
    if not signed:
        return XTERM_GREYS[round(max(0.0, min(1.0, t)) * (len(XTERM_GREYS) - 1))]
    k = round(max(-1.0, min(1.0, t)) * PALETTE_LEVELS)
    if k == 0:
        return XTERM_CENTRE
    return (XTERM_BLUES if k < 0 else XTERM_REDS)[abs(k) - 1]


def shade(value: float, scale: float, signed: bool = True) -> str:
    """Two plain characters for one heatmap cell: the sign and a shade of ``|value| / scale`` (unsigned:
    the shade twice)."""
    if not math.isfinite(value):
        return " ?"
    if value == 0 or scale <= 0:
        return "  "
    level = min(4, max(1, math.ceil(abs(value) / scale * 4)))
    if not signed:
        return SHADES[level] * 2
    return ("-" if value < 0 else "+") + SHADES[level]


def heat_cell(value: float, scale: float, mode: str | None, signed: bool = True) -> tuple[str, str]:
    """One heatmap cell as (two characters, rich style) in the palette of colour system ``mode``."""
    if not math.isfinite(value):
        return " ?", "bold" if mode else ""
    if mode is None:
        return shade(value, scale, signed), ""
    t = value / scale if scale > 0 else 0.0
    if mode == "standard":
        text = shade(value, scale, signed)
        return text, ("" if not signed or value == 0 else "blue" if value < 0 else "red")
    if mode == "256":
        return "  ", f"on color({xterm_index(t, signed)})"
    r, g, b = heat_rgb(t) if signed else grey_rgb(t)
    return "  ", f"on rgb({r},{g},{b})"


def heat_scale(values: np.ndarray) -> float:
    """The largest finite |value| of an array (0 when there is none): the heatmap's full-colour point."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def heatmap(
    values: np.ndarray,
    *,
    scale: float,
    color: bool | str | None,
    width: int,
    max_rows: int | None = None,
    signed: bool = True,
) -> list[Text]:
    """A 2-D array as a heatmap, two cells per value, rows and columns labelled from 1.

    ``scale`` is the |value| drawn at full strength (share it between maps to compare them).  ``color``
    is the terminal's colour system (see :func:`color_mode`): a diverging palette, blue < 0 < red (a
    sequential white → dark one when not ``signed``); without colour, a sign and a shade from ``░▒▓█``.
    Columns beyond ``width`` and rows beyond ``max_rows`` are cut, with a line saying how many.
    """
    mode = color_mode(color)
    m = np.atleast_2d(np.asarray(values, dtype=np.float64))
    h, w = m.shape
    label_w = len(str(h))
    fit = max(1, (width - label_w - 1) // 2)
    cols = min(w, fit)
    rows = h if max_rows is None else min(h, max_rows)
    lines = [Text(" " * (label_w + 1) + _column_ticks(cols), style="dim")]
    for i in range(rows):
        line = Text()
        line.append(str(i + 1).rjust(label_w) + " ", style="dim")
        for j in range(cols):
            text, style = heat_cell(float(m[i, j]), scale, mode, signed)
            line.append(text, style=style)
        lines.append(line)
    cut = []
    if cols < w:
        cut.append(f"{w - cols} more columns")
    if rows < h:
        cut.append(f"{h - rows} more rows")
    if cut:
        lines.append(
            Text(clip(f"{ELLIPSIS} {', '.join(cut)} (--full prints every value)", width), style="dim")
        )
    return lines


def _column_ticks(cols: int) -> str:
    """Column numbers 1, 5, 10, 15, … placed over two-cell-wide heatmap columns."""
    out = [" "] * (2 * cols)
    marks = [1] + list(range(5, cols + 1, 5))
    for j in marks:
        label = str(j)
        pos = 2 * (j - 1)
        if pos + len(label) <= len(out) and all(c == " " for c in out[max(pos - 1, 0) : pos + len(label)]):
            out[pos : pos + len(label)] = list(label)
    return "".join(out).rstrip()


def heat_legend(
    scale: float, precision: int, color: bool | str | None, width: int, signed: bool = True
) -> list[Text]:
    """One line explaining a heatmap's colours or shades and its scale."""
    mode = color_mode(color)
    top = scalar(scale, precision)
    if scale <= 0:
        return [Text("scale: every value is 0 (blank map)")]
    if mode in ("truecolor", "256"):
        line = Text("scale ")
        line.append(f"-{top} " if signed else "0 ")
        for k in range(-5 if signed else 0, 6):
            _, style = heat_cell(k / 5 * scale, scale, mode, signed)
            line.append("  ", style=style)
        line.append(f" +{top}" if signed else f" {top}")
        if len(line.plain) > width:
            text = f"scale: blue -{top} … 0 … red +{top}" if signed else f"scale: white 0 … dark {top}"
            line = Text(clip(text, width))
        return [line]
    if not signed:
        return [Text(clip(f"scale: shade of value/{top}: ░ ≤¼ ▒ ≤½ ▓ ≤¾ █ ≤1, blank = 0", width))]
    if mode == "standard":
        text = f"scale: sign (- blue, + red) and shade of |value|/{top}: ░ ≤¼ ▒ ≤½ ▓ ≤¾ █ ≤1"
    else:
        text = f"scale: sign, then shade of |value|/{top}: ░ ≤¼ ▒ ≤½ ▓ ≤¾ █ ≤1, blank = 0"
    return [Text(clip(text, width))]


# ---- layout ---------------------------------------------------------------------------------------------


def side_by_side(blocks: Sequence[Sequence[Text]], width: int, gap: int = 3) -> list[Text]:
    """Lay blocks of lines in rows across ``width``, as many per row as fit (at least one)."""
    out: list[Text] = []
    row: list[Sequence[Text]] = []
    row_w = 0
    for block in blocks:
        bw = block_width(block)
        need = bw if not row else row_w + gap + bw
        if row and need > width:
            out.extend(_join(row, gap))
            out.append(Text(""))
            row, row_w = [], 0
            need = bw
        row.append(block)
        row_w = need
    if row:
        out.extend(_join(row, gap))
    return out


def block_width(block: Sequence[Text]) -> int:
    return max((len(line.plain) for line in block), default=0)


def _join(row: Sequence[Sequence[Text]], gap: int) -> list[Text]:
    if len(row) == 1:
        return list(row[0])
    widths = [block_width(b) for b in row]
    height = max(len(b) for b in row)
    lines = []
    for i in range(height):
        line = Text()
        for k, block in enumerate(row):
            part = block[i] if i < len(block) else Text("")
            if k:
                line.append(" " * gap)
            piece = part.copy()
            if k < len(row) - 1:
                piece.pad_right(widths[k] - len(piece.plain))
            line.append_text(piece)
        line.rstrip()
        lines.append(line)
    return lines


# ---- line charts ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One curve: points ``(x, y)`` (non-finite y skipped), drawn with ``marker`` in ``style``.

    ``band``: raw points drawn as a band (each column from the smallest to the largest value that falls
    in it) under the lines, which are drawn over it.
    """

    label: str
    x: Sequence[float]
    y: Sequence[float]
    marker: str
    style: str = ""
    band: bool = False


OVERLAP = "#"  # a chart cell where two curves meet
ABOVE, BELOW = "↑", "↓"  # a point beyond the axis (``y_fit`` or ``y_range`` leaves it out)


def line_chart(
    series: Sequence[Series],
    *,
    width: int,
    height: int = 9,
    title: str = "",
    y_format: Callable[[float], str] = lambda v: format(v, ".4g"),
    x_label: str = "epoch",
    color: bool = True,
    log_y: bool = False,
    max_plot_width: int = 64,
    y_range: tuple[float, float] | None = None,
    y_fit: Sequence[float] | None = None,
) -> list[Text]:
    """A character chart of one or more curves over a shared x axis (points joined by interpolation).

    The title line carries a legend (marker and label per series, ``#`` where curves share a cell); the y
    axis is labelled with round numbers (1, 2, 5 × 10^k; on a log axis, ``log_y``, powers of ten or
    1-2-5 steps) at rows of their own, its ends rounded out to ticks; the x axis gets a few round ticks.
    The axis covers the data, or ``y_fit`` (the values it must show, so that one outlier — the initial
    loss — does not flatten the rest), or exactly ``y_range``; a point beyond it is drawn at the edge as
    ``↑`` or ``↓``.  Non-positive values are skipped on a log axis.
    """
    pts = []
    for s in series:
        x = np.asarray(s.x, dtype=np.float64)
        y = np.asarray(s.y, dtype=np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        pts.append((s, x[keep], np.log10(y[keep]) if log_y else y[keep]))
    head = Text(title + ("  (log scale)" if log_y else ""), style="bold")
    if not any(x.size for _, x, _ in pts):
        head.append("  (no data)", style="dim")
        return [head]
    fit = None
    if y_fit is not None:
        f = np.asarray(y_fit, dtype=np.float64)
        f = f[np.isfinite(f) & ((f > 0) if log_y else True)]
        fit = np.log10(f) if log_y else f
    chart = _Chart(pts, width, height, y_format, log_y, max_plot_width, y_range, fit)
    for k in sorted(range(len(pts)), key=lambda k: not pts[k][0].band):  # bands first, lines over them
        chart.plot(k, *pts[k])
    return [chart.title_line(head, color), *chart.body(color), *chart.x_axis(x_label)]


def nice_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 × 10^k apart) from at or below ``lo`` to at or above ``hi``, at most
    ``most`` of them (at least two)."""
    if not hi > lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    span = hi - lo
    for k in range(math.floor(math.log10(span / most)) - 1, math.floor(math.log10(span)) + 2):
        for m in (1, 2, 5):
            step = m * 10.0**k
            first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
            if last - first + 1 <= most:
                return [_round(i * step, step) for i in range(first, last + 1)]
    return [lo, hi]  # pragma: no cover - the loop always finds a step


def _round(value: float, step: float) -> float:
    """A tick value without floating-point noise (0.30000000000000004 → 0.3)."""
    digits = max(0, -math.floor(math.log10(step))) + 1
    return round(value, digits) + 0.0


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks of a log axis between 10^lo and 10^hi (given as exponents), returned as exponents: from the
    1-2-5 value at or below the data to the one at or above it, with the 1-2-5 values between when they
    are at most five, else the powers of ten between."""
    k0, k1 = math.floor(lo + 1e-9), math.ceil(hi - 1e-9)
    marks = [math.log10(m) + k for k in range(k0 - 1, k1 + 1) for m in (1, 2, 5)]
    below = max([v for v in marks if v <= lo + 1e-9], default=float(k0))
    above = min([v for v in marks if v >= hi - 1e-9], default=float(k1))
    ticks = [v for v in marks if below - 1e-9 <= v <= above + 1e-9]
    if len(ticks) > 5:
        ticks = [v for i, v in enumerate(ticks) if i in (0, len(ticks) - 1) or abs(v - round(v)) < 1e-9]
    return ticks


class _Chart:
    """The grid of a :func:`line_chart`: its scales, the plotted cells and the lines drawn from them."""

    def __init__(
        self,
        pts: list,
        width: int,
        height: int,
        y_format: Callable[[float], str],
        log_y: bool,
        max_plot_width: int,
        y_range: tuple[float, float] | None = None,
        y_fit: np.ndarray | None = None,
    ) -> None:
        self.pts, self.width, self.height = pts, width, height
        xs = np.concatenate([x for _, x, _ in pts if x.size])
        ys = np.concatenate([y for _, _, y in pts if y.size])
        self.x0, self.x1 = float(xs.min()), float(xs.max())
        if y_range is not None:
            lo, hi = (math.log10(v) for v in y_range) if log_y else y_range
            ticks = nice_ticks(lo, hi) if not log_y else log_ticks(lo, hi)
            ticks = [t for t in ticks if lo - 1e-12 <= t <= hi + 1e-12] or [lo, hi]
            self.y0, self.y1 = lo, hi
        else:
            data = y_fit if y_fit is not None and y_fit.size else ys
            lo, hi = float(data.min()), float(data.max())
            ticks = log_ticks(lo, hi) if log_y else nice_ticks(lo, hi)
            self.y0, self.y1 = ticks[0], ticks[-1]
        if self.y1 == self.y0:
            self.y0, self.y1 = self.y0 - 0.5, self.y1 + 0.5

        def shown(v: float) -> str:
            return y_format(10.0**v if log_y else v)

        self.labels: dict[int, str] = {}
        for t in ticks:
            self.labels.setdefault(self.row_of(t), shown(t))
        self.label_w = max(len(s) for s in self.labels.values())
        self.cols = max(2, min(max_plot_width, width - self.label_w - 2))
        self.grid: list[list[tuple[str, str, int]]] = [[(" ", "", -1)] * self.cols for _ in range(height)]
        self.overlap = self.beyond = False

    def col_of(self, x: float) -> int:
        return 0 if self.x1 == self.x0 else round((x - self.x0) / (self.x1 - self.x0) * (self.cols - 1))

    def row_of(self, y: float) -> int:
        return round((self.y1 - y) / (self.y1 - self.y0) * (self.height - 1))

    def put(self, y: float, c: int, k: int, s: Series) -> None:
        """Mark curve ``k`` at value ``y`` in column ``c`` (an arrow at the edge when ``y`` is beyond it)."""
        r, marker = self.row_of(y), s.marker
        tiny = 1e-9 * (self.y1 - self.y0)
        if y > self.y1 + tiny or y < self.y0 - tiny:  # beyond the end ticks, even by less than a row
            r, marker, self.beyond = (0, ABOVE, True) if y > self.y1 else (self.height - 1, BELOW, True)
        owner = self.grid[r][c][2]
        if owner in (-1, k) or self.pts[owner][0].band:  # a line covers a band
            if self.grid[r][c][0] != OVERLAP:
                self.grid[r][c] = (marker, s.style, k)
        elif not s.band:
            self.grid[r][c] = (OVERLAP, "bold", k)
            self.overlap = True

    def plot(self, k: int, s: Series, x: np.ndarray, y: np.ndarray) -> None:
        """Curve ``k``: one cell per column between its first and last point, interpolated; a band: every
        row between the smallest and the largest value of the points in each column."""
        if not x.size:
            return
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
        if s.band:
            cols = np.array([self.col_of(float(v)) for v in x])
            for c in np.unique(cols):
                vals = y[cols == c]
                lo, hi = self.row_of(float(vals.max())), self.row_of(float(vals.min()))
                for r in range(max(lo, 0), min(hi, self.height - 1) + 1):
                    value = self.y1 - r * (self.y1 - self.y0) / (self.height - 1)
                    self.put(value, int(c), k, s)
            return
        x0, x1, cols = self.x0, self.x1, self.cols
        for c in range(self.col_of(float(x[0])), self.col_of(float(x[-1])) + 1):
            xc = x0 + (x1 - x0) * c / (cols - 1) if x1 != x0 else x0
            self.put(float(np.interp(xc, x, y)), c, k, s)

    def title_line(self, head: Text, color: bool) -> Text:
        """The title with the legend: each series' marker and label, ``#`` where curves meet, the arrows
        of points beyond the axis."""
        head.append("  ")
        for s, x, _ in self.pts:
            if x.size:
                head.append(f"  {s.marker} ", style=s.style if color else "")
                head.append(s.label)
        if self.overlap:
            head.append(f"  {OVERLAP} both")
        if self.beyond:
            head.append(f"  {ABOVE}{BELOW} off the axis")
        return Text(clip(head.plain, self.width)) if len(head.plain) > self.width else head

    def body(self, color: bool) -> list[Text]:
        """The plot rows, the y axis labelled at the rows of its ticks."""
        lines = []
        for r in range(self.height):
            label = self.labels.get(r, "")
            line = Text()
            line.append(label.rjust(self.label_w) + " " + ("┤" if label else "│"), style="dim")
            for ch, style, _ in self.grid[r]:
                line.append(ch, style=style if color else "")
            line.rstrip()
            lines.append(line)
        return lines

    def x_axis(self, x_label: str) -> list[Text]:
        """The x axis with a few round ticks, and their values under it."""
        axis = ["─"] * self.cols
        under = [" "] * (self.cols + 8)
        for t in _x_ticks(self.x0, self.x1):
            c = self.col_of(t)
            axis[c] = "┬"
            text = format(t, "g")
            if all(ch == " " for ch in under[max(c - 1, 0) : c + len(text) + 1]):
                under[c : c + len(text)] = list(text)
        xl = "".join(under).rstrip()
        lw = self.label_w
        tail = f"  {x_label}" if lw + 2 + len(xl) + 2 + len(x_label) <= self.width else ""
        return [
            Text(" " * lw + " └" + "".join(axis), style="dim"),
            Text(clip(" " * (lw + 2) + xl + tail, self.width), style="dim"),
        ]


def _x_ticks(x0: float, x1: float, most: int = 6) -> list[float]:
    """Round tick values between x0 and x1 (steps of 1, 2, 5 × 10^k), at most ``most`` of them."""
    if x1 <= x0:
        return [x0]
    span = x1 - x0
    step = 1.0
    for k in range(0, 12):
        for m in (1, 2, 5):
            step = m * 10.0**k
            if span / step + 1 <= most:
                break
        else:
            continue
        break
    first = math.ceil(x0 / step) * step
    ticks = list(np.arange(first, x1 + step / 2, step))
    return [float(t) for t in ticks if t <= x1 + step * 1e-9]


def smooth(values: Sequence[float], weight: float) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average s_t = w·s_(t−1) + (1 − w)·v_t, debiased
    by 1 − w^t so the first points are not pulled towards 0; non-finite values are skipped."""
    out = np.full(len(values), np.nan)
    acc, n = 0.0, 0
    for i, v in enumerate(values):
        if not math.isfinite(v):
            continue
        n += 1
        acc = weight * acc + (1 - weight) * v
        out[i] = acc / (1 - weight**n) if weight < 1 else v
    return out


# ---- distributions ----------------------------------------------------------------------------------------

BARS = " ▁▂▃▄▅▆▇█"  # a bin's count over the row's largest: blank for none, then eighths


def bar_row(counts: Sequence[float]) -> str:
    """One histogram as a row of bar characters, each bin's height its count over the row's largest
    (a bin with any value gets at least ``▁``, an empty one stays blank)."""
    c = np.asarray(counts, dtype=np.float64)
    top = float(c.max()) if c.size else 0.0
    if top <= 0:
        return " " * len(c)
    levels = np.where(c > 0, np.maximum(1, np.ceil(c / top * 8)), 0).astype(int)
    return "".join(BARS[k] for k in levels)


def histogram_rows(
    labels: Sequence[str],
    counts: Sequence[Sequence[float]],
    edges: Sequence[float],
    notes: Sequence[str],
    *,
    width: int,
    value_format: Callable[[float], str] = lambda v: format(v, ".3g"),
) -> list[Text]:
    """Distributions stacked one row each over a shared axis (TensorBoard's histogram view, flattened).

    ``counts[i]`` are the bin counts of row ``labels[i]`` over the bins between ``edges`` (len(bins) + 1);
    ``notes[i]`` is printed after the row (its mean and spread, say).  Under the rows: the axis with round
    ticks.  Every line fits ``width`` (the caller chooses as many bins as fit).
    """
    label_w = max(len(x) for x in labels) if labels else 0
    bins = len(edges) - 1
    lines = []
    for label, row, note in zip(labels, counts, notes, strict=True):
        line = Text(label.rjust(label_w) + " │", style="dim")
        line.append(bar_row(row))
        if note:
            line.append("  " + note, style="dim")
        lines.append(Text(clip(line.plain, width)) if len(line.plain) > width else line)
    lo, hi = float(edges[0]), float(edges[-1])
    axis = ["─"] * bins
    under = [" "] * (bins + 12)
    for t in [v for v in nice_ticks(lo, hi, most=7) if lo <= v <= hi]:
        c = min(bins - 1, int((t - lo) / (hi - lo) * bins)) if hi > lo else 0
        axis[c] = "┬"
        text = value_format(t)
        pos = max(0, c - len(text) // 2)
        if all(ch == " " for ch in under[max(pos - 1, 0) : pos + len(text) + 1]):
            under[pos : pos + len(text)] = list(text)
    pad = " " * (label_w + 1)
    lines.append(Text(pad + "└" + "".join(axis), style="dim"))
    lines.append(Text(clip(pad + " " + "".join(under).rstrip(), width), style="dim"))
    return lines
