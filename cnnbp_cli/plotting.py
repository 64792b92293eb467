"""Figures of runs as PNG, SVG or PDF files, with matplotlib (the optional extra ``cnnbp[plot]``): what
``cnnbp plot`` draws.

Kinds (:data:`KINDS`):

* ``curves``: loss and accuracy per epoch (train dashed, validation solid) and the loss per step (raw
  and smoothed as TensorBoard does) of one run or several overlaid, one colour per run;
* ``deltas`` / ``activations``: one probe sample's input image and each layer's δ (or output) at one
  checkpoint;
* ``weights``: each parameter tensor at one checkpoint;
* ``histograms``: per layer, the distribution of its weights, gradients and deltas at every checkpoint,
  one line per checkpoint coloured by epoch;
* ``health``: ‖δ‖ per layer, the dead or saturated fraction per activation layer and the update ratio of
  every weight tensor across epochs (:mod:`cnnbp.health`).

Maps of at most 8×8 values are drawn as annotated matrices, their numbers in the cells, rows and columns
counted from 1 as in the notes (δ₁₁ top left); larger ones as heatmaps.  Signed values use a diverging
palette centred at 0 (blue < 0 < red, one scale for the maps of an array, with a colour bar); values that
are never negative (an image, relu and sigmoid outputs) a sequential one from 0.  Fonts are sized for a
slide shown at 100 % (14 pt text on figures 13–16 inches wide); ``bbox_inches="tight"`` keeps every
label inside the file.  The file is rendered in memory and written atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp import inspection as ins
from cnnbp.checkpoint import Checkpoint
from cnnbp.errors import UserError
from cnnbp.files import write_atomic
from cnnbp.render.termplot import smooth

__all__ = ["FORMATS", "INSTALL_HINT", "KINDS", "PlotReport", "plot"]

KINDS = ("curves", "deltas", "activations", "weights", "histograms", "health")
FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
INSTALL_HINT = "pip install 'cnnbp[plot]'"
DPI = 120  # PNG resolution: a 16-inch figure is 1,920 pixels wide, a projector's width at 100 %
ANNOTATE = 8  # maps up to 8×8 get their numbers in the cells
MAX_MAPS = 8  # maps drawn per array (``channel`` picks one filter or channel)
HIST_BINS = 60
SLIDE = {
    "font.size": 14,
    "axes.titlesize": 15,
    "axes.labelsize": 14,
    "xtick.labelsize": 12,
    "ytick.labelsize": 12,
    "legend.fontsize": 12,
    "figure.titlesize": 17,
    "lines.linewidth": 2.2,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
BELOW = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.16), "ncol": 2, "fontsize": 10, "frameon": False}
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")


def require_matplotlib() -> Any:
    """The ``matplotlib`` module, or a UserError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"cnnbp plot: needs matplotlib; {INSTALL_HINT}") from None
    return matplotlib


@contextmanager
def slide_style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(SLIDE):
        yield


@dataclass
class PlotReport:
    """What ``cnnbp plot`` wrote."""

    kind: str
    path: str
    format: str
    bytes: int
    runs: list[str]
    checkpoint: int | None  # the epoch drawn (deltas, activations, weights), None for the others
    width_in: float
    height_in: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def output_format(output: Path, force: bool) -> str:
    """png, svg or pdf from the output's suffix; an existing file only with ``force``."""
    fmt = FORMATS.get(output.suffix.lower())
    if fmt is None:
        raise UserError(f"-o {output}: the suffix must be .png, .svg or .pdf")
    if output.is_dir():
        raise UserError(f"-o {output}: is a folder; give a file name ending in .png, .svg or .pdf")
    if not output.parent.is_dir():
        raise UserError(f"-o {output}: the folder {output.parent} does not exist")
    if output.exists() and not force:
        raise UserError(f"{output}: already exists; --force overwrites it")
    return fmt


def plot(
    targets: Sequence[Path | str],
    kind: str,
    output: Path | str,
    *,
    layers: Sequence[str] | None = None,
    checkpoint: str | int | None = None,
    sample: int = 0,
    channel: int | None = None,
    force: bool = False,
) -> PlotReport:
    """Draw ``kind`` of the runs ``targets`` (run folders, a folder of runs, or checkpoint files) into
    ``output`` (.png, .svg or .pdf).  Every kind but ``curves`` draws one run."""
    if kind not in KINDS:
        raise UserError(f"--kind: expected one of {', '.join(KINDS)}, got {kind!r}")
    require_matplotlib()
    output = Path(output)
    fmt = output_format(output, force)
    paths = expand_targets(targets)
    if kind != "curves" and len(paths) > 1:
        raise UserError(f"--kind {kind}: draws one run; --kind curves draws several")
    with slide_style():
        fig, epoch = _figure(kind, paths, layers, checkpoint, sample, channel)
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.2)
    write_atomic(output, buf.getvalue())
    w, h = fig.get_size_inches()
    return PlotReport(kind, str(output), fmt, len(buf.getvalue()), [str(p) for p in paths], epoch,
                      float(w), float(h))  # fmt: skip


def expand_targets(targets: Sequence[Path | str]) -> list[Path]:
    """The targets, a folder holding runs replaced by its runs."""
    out: list[Path] = []
    for t in targets:
        p = Path(t)
        if not p.exists():
            raise UserError(f"{p}: no such run folder or checkpoint file")
        out.extend(ins.runs_in(p) if ins.is_runs_folder(p) else [p])
    if not out:
        raise UserError("no run to draw")
    return out


def _figure(kind: str, paths: list[Path], layers: Sequence[str] | None, checkpoint: str | int | None,
            sample: int, channel: int | None) -> tuple[Any, int | None]:  # fmt: skip
    if kind == "curves":
        return curves_figure(paths), None
    target = paths[0]
    if kind == "histograms":
        cks = ins.load_all(target) if checkpoint is None else [ins.load_checkpoint(target, checkpoint)]
        return histograms_figure(cks, layers), None
    if kind == "health":
        data = ins.health_data(target, "all" if checkpoint is None else checkpoint)
        history = data["checkpoints"] or [data["health"]]
        return health_figure(history, data["thresholds"], data["checkpoint"]["run_name"]), None
    ck = ins.load_checkpoint(target, "last" if checkpoint is None else checkpoint)
    if kind == "weights":
        chosen = ins.select_layers(ck, layers, params_only=True)
        arrays = {f"{c.name}.{k}": v for c in chosen for k, v in ck.weights.get(c.name, {}).items()}
        ins.check_channel(arrays, channel, "filter")
        return weights_figure(ck, chosen, channel), ck.epoch
    chosen = ins.select_layers(ck, layers, params_only=not layers)
    if kind == "activations":
        ins.check_activations(ck)
    ins.check_sample(ck, sample)
    source = ck.deltas if kind == "deltas" else ck.activations
    ins.check_channel({c.name: np.asarray(source[c.name][sample]) for c in chosen}, channel, "channel")
    return probe_figure(ck, chosen, sample, channel, kind), ck.epoch


# ---- curves ---------------------------------------------------------------------------------------------


def _run_series(path: Path) -> dict[str, Any]:
    """A run's name, metrics columns and steps (a checkpoint file: its /metrics, no steps)."""
    ck = ins.load_checkpoint(path, "last")
    metrics, _ = ins.load_metrics(path, ck)
    return {"name": ck.run_name, "metrics": metrics, "steps": ins.load_steps(path)}


def curves_figure(paths: Sequence[Path]) -> Any:
    """Loss and accuracy per epoch and the loss per step: train dashed and validation solid, one colour
    per run (one run: train and validation in two colours); the legend under the charts."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    runs = [_run_series(p) for p in paths]
    one = len(runs) == 1
    fig = Figure(figsize=(16, 5.6), layout="constrained")
    ax_loss, ax_acc, ax_step = fig.subplots(1, 3)
    for i, run in enumerate(runs):
        colour = RUN_COLOURS[i % len(RUN_COLOURS)]
        m = run["metrics"]
        epochs = np.asarray(m["epoch"], dtype=np.float64)
        for k, (key, style) in enumerate((("train", "--"), ("val", "-"))):
            c = RUN_COLOURS[k] if one else colour
            ax_loss.plot(epochs, m[f"{key}_loss"], style, color=c, marker="o", markersize=3.5)
            ax_acc.plot(epochs, 100 * np.asarray(m[f"{key}_acc"]), style, color=c, marker="o", markersize=3.5)
        steps = run["steps"]
        if len(steps.get("step", [])) >= 2:
            x, y = np.asarray(steps["step"], float), np.asarray(steps["loss"], float)
            ax_step.plot(x, y, color=colour, alpha=0.2, linewidth=1)
            ax_step.plot(x, smooth(y, 1 - 2 / (max(2.0, len(y) / 50) + 1)), color=colour)
    losses = np.concatenate([np.asarray(r["metrics"][k]) for r in runs for k in ("train_loss", "val_loss")])
    if ins.log_scale(losses):
        ax_loss.set_yscale("log")
    if ins.log_scale(np.concatenate([np.asarray(r["steps"].get("loss", []), float) for r in runs])):
        ax_step.set_yscale("log")
    ax_loss.set(title="loss per epoch", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="accuracy per epoch", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100.5))
    ax_step.set(title="loss per step (faint: every step)", xlabel="optimiser step", ylabel="batch loss")
    for ax in (ax_loss, ax_acc, ax_step):
        ax.grid(alpha=0.3)
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    grey = ("0.3", "0.3") if not one else RUN_COLOURS[:2]
    handles = [Line2D([], [], color=grey[0], linestyle="--", label="train"),
               Line2D([], [], color=grey[1], label="validation")]  # fmt: skip
    if not one:
        handles += [Line2D([], [], color=RUN_COLOURS[i % len(RUN_COLOURS)], label=r["name"])
                    for i, r in enumerate(runs)]  # fmt: skip
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), frameon=False)
    if not any(len(r["steps"].get("step", [])) for r in runs):
        ax_step.text(0.5, 0.5, "no steps.csv", ha="center", va="center", transform=ax_step.transAxes)
    fig.suptitle(runs[0]["name"] if one else f"{len(runs)} runs: " + ", ".join(r["name"] for r in runs))
    return fig


# ---- maps -------------------------------------------------------------------------------------------------


FIG_WIDTH = 15.0  # inches of the map figures
MIN_SLOTS = 4  # a row of maps has at least this many panel widths: one small map stays small
CELL_FOR_NUMBERS = 0.42  # inches a cell needs to carry its number


@dataclass(frozen=True)
class Row:
    """One array of a map figure: its title, values, axis names and palette (None: signed if it has a
    negative value)."""

    title: str
    values: np.ndarray
    names: tuple[str, ...] = ("channel",)
    signed: bool | None = None
    pick: bool = True  # ``channel`` applies (not to the probe input)


def number_format(values: np.ndarray) -> tuple[int, int]:
    """(exponent, decimals) for the numbers of an annotated array: four significant digits of the
    largest |value| (as the terminal's four decimals), in units of 10^exponent when it is below 0.1 or
    above 1,000."""
    finite = np.abs(values[np.isfinite(values)])
    top = float(finite.max()) if finite.size else 0.0
    if top == 0.0:
        return 0, 2
    k = math.floor(math.log10(top))
    exponent = k if top < 0.1 or top >= 1000 else 0
    return exponent, max(0, 3 - (k - exponent))


def draw_map(ax: Any, m: np.ndarray, scale: float, signed: bool, title: str,
             numbers: tuple[int, int] | None, cell: float) -> Any:  # fmt: skip
    """One map on ``ax``: a heatmap (RdBu, centred at 0, when ``signed``; viridis from 0 otherwise), rows
    and columns labelled from 1, and with ``numbers`` = (exponent, decimals) each value in its cell
    (``cell``: the cell's size in inches, for the font)."""
    m = np.atleast_2d(np.asarray(m, dtype=np.float64))
    h, w = m.shape
    scale = scale if scale > 0 else 1.0
    cmap, lo = ("RdBu_r", -scale) if signed else ("viridis", 0.0)
    image = ax.imshow(m, cmap=cmap, vmin=lo, vmax=scale, interpolation="nearest", aspect="auto")
    tick_size = 11 if cell >= 0.3 else 9
    for setter, n in ((ax.set_yticks, h), (ax.set_xticks, w)):
        marks = _ticks(n) if n > 1 or setter == ax.set_xticks else []
        setter([i - 1 for i in marks], [str(i) for i in marks], fontsize=tick_size)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=12)
    if numbers is not None:
        exponent, decimals = numbers
        size = float(np.clip(cell * 72 / 4.0, 7, 14))
        for i in range(h):
            for j in range(w):
                v = m[i, j]
                text = "nan" if not math.isfinite(v) else f"{v / 10.0**exponent:.{decimals}f}"
                text = text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"
                dark = abs(v) > 0.55 * scale if signed else v < 0.55 * scale
                ax.text(
                    j, i, text, ha="center", va="center", fontsize=size, color="white" if dark else "black"
                )
    return image


def _ticks(n: int) -> list[int]:
    """1-based tick positions: every index up to 12, else 1 and multiples of 5."""
    return list(range(1, n + 1)) if n <= 12 else [1] + list(range(5, n + 1, 5))


def _maps(arr: np.ndarray, channel: int | None, names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """The maps of an array to draw, titled: a vector as one row, a matrix itself, a stack by index."""
    if arr.ndim <= 1:
        return [("", arr.reshape(1, -1))]
    if arr.ndim == 2:
        return [("", arr)]
    offset = 0
    if channel is not None:
        arr, offset = arr[channel : channel + 1], channel
    out = []
    if arr.shape[:-2] == (1,) and channel is None:
        return [("", arr[0])]  # one channel (an image): no title
    for idx in list(np.ndindex(*arr.shape[:-2]))[:MAX_MAPS]:
        pairs = zip(names, idx, strict=False)
        out.append(
            (", ".join(f"{n} {i + (offset if k == 0 else 0)}" for k, (n, i) in enumerate(pairs)), arr[idx])
        )
    return out


def row_layout(arr: np.ndarray, channel: int | None, names: tuple[str, ...]) -> dict[str, Any]:
    """How a row is laid out: its maps, panel slots, panel size in inches, cell size and height."""
    maps = _maps(arr, channel, names)
    h, w = maps[0][1].shape
    wide = arr.ndim <= 1 or (arr.ndim == 2 and w > 3 * h)  # vectors and wide matrices: one full-width panel
    slots = 1 if wide else max(len(maps), MIN_SLOTS)
    panel_w = FIG_WIDTH / slots - (0.35 if not wide else 0.0)
    cell = panel_w / w
    if wide:
        cell = min(cell, 1.0)
        panel_h = max(0.7, cell * h) if arr.ndim <= 1 else float(np.clip(0.2 * h, 1.5, 4.0))
    else:
        panel_h = cell * h
    return {"maps": maps, "slots": slots, "panel_h": panel_h, "cell": min(cell, panel_h / h), "wide": wide}


def array_row(subfig: Any, arr: np.ndarray, row: Row, channel: int | None, layout: dict[str, Any]) -> None:
    """One array as a row of maps sharing one colour scale, with a colour bar, in ``subfig``."""
    maps, slots = layout["maps"], layout["slots"]
    total = int(np.prod(arr.shape[:-2])) if arr.ndim >= 3 else 1
    if channel is not None:  # one map of a stack: its own scale and numbers, as the terminal draws it
        arr, total = arr[channel], 1
    finite = arr[np.isfinite(arr)]
    signed = bool((finite < 0).any()) if row.signed is None else row.signed
    scale = float(np.abs(finite).max()) if finite.size else 1.0
    h, w = maps[0][1].shape
    small = h <= ANNOTATE and (w <= ANNOTATE or h == 1 and w <= 16)
    numbers = number_format(arr) if small and layout["cell"] >= CELL_FOR_NUMBERS else None
    axes = np.atleast_1d(subfig.subplots(1, slots))
    image = None
    for k, ax in enumerate(axes):
        if k >= len(maps):
            ax.set_visible(False)
            continue
        image = draw_map(ax, maps[k][1], scale, signed, maps[k][0], numbers, layout["cell"])
        if not layout["wide"]:
            ax.set_box_aspect(h / w)
    more = f" (first {len(maps)} of {total} maps)" if len(maps) < total else ""
    note = f" · numbers × 1e{numbers[0]:+03d}" if numbers and numbers[0] else ""
    subfig.suptitle(row.title + more + note, fontsize=14, x=0.005, ha="left")
    if image is not None:
        subfig.colorbar(image, ax=[a for a in axes if a.get_visible()], shrink=0.9, pad=0.01, aspect=15)


def stacked(rows: Sequence[Row], channel: int | None, title: str) -> Any:
    """A figure of arrays, one row each."""
    from matplotlib.figure import Figure

    arrays = [np.asarray(r.values, dtype=np.float64) for r in rows]
    picks = [channel if a.ndim >= 3 and r.pick else None for a, r in zip(arrays, rows, strict=True)]
    layouts = [row_layout(a, c, r.names) for a, c, r in zip(arrays, picks, rows, strict=True)]
    heights = [lay["panel_h"] + 0.9 for lay in layouts]
    fig = Figure(figsize=(FIG_WIDTH + 1.2, sum(heights) + 0.6), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(rows), 1, height_ratios=heights))
    for sub, arr, row, c, lay in zip(subfigs, arrays, rows, picks, layouts, strict=True):
        array_row(sub, arr, row, c, lay)
    fig.suptitle(title, x=0.01, ha="left")
    return fig


def probe_figure(ck: Checkpoint, layers: Sequence[Any], sample: int, channel: int | None, kind: str) -> Any:
    """The probe sample's input and each layer's δ (``deltas``) or output (``activations``)."""
    source = ck.deltas if kind == "deltas" else ck.activations
    symbol = "δ" if kind == "deltas" else "a"
    target = ck.probe_y[sample]
    label = (
        str(int(target))
        if np.ndim(target) == 0
        else "[" + ", ".join(f"{v:g}" for v in np.ravel(target)) + "]"
    )
    head = f"input · training sample {int(ck.probe_index[sample])} · target {label}"
    rows = [Row(head, ck.probe_x[sample], pick=False)]
    for layer in layers:
        signed = True if kind == "deltas" else None
        rows.append(Row(f"{layer.name} ({layer.type}) · {symbol}", source[layer.name][sample], signed=signed))
    what = "δ = ∂L/∂(layer output)" if kind == "deltas" else "layer outputs"
    title = f"{ck.run_name} · checkpoint {ck.epoch} · probe sample {sample} · {what}"
    return stacked(rows, channel, title)


def weights_figure(ck: Checkpoint, layers: Sequence[Any], channel: int | None) -> Any:
    """Every parameter tensor of the layers, conv kernels by filter and input channel."""
    rows = []
    for layer in layers:
        for key, value in ck.weights.get(layer.name, {}).items():
            rows.append(Row(f"{layer.name}.{key} ({layer.type})", value, ("filter", "input"), True))
    return stacked(rows, channel, f"{ck.run_name} · checkpoint {ck.epoch} · parameters")


# ---- distributions and health ------------------------------------------------------------------------------


def log_bins(arrays: Sequence[np.ndarray], bins: int) -> tuple[np.ndarray, float]:
    """Bins for the magnitudes of values spread over decades (gradients, deltas): logarithmic from the
    1st percentile of the non-zero |values| (at least 1e-6 of the largest) to the largest; and that
    smallest edge (the symlog axis' linear range)."""
    values = np.abs(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))
    values = values[np.isfinite(values) & (values > 0)]
    if not values.size:
        return np.logspace(-1, 0, bins + 1), 0.1
    top = float(values.max())
    lo = max(float(np.percentile(values, 1)), top * 1e-6)
    lo = top / 10 if lo >= top else lo
    return np.logspace(math.log10(lo), math.log10(top), bins + 1), lo


def _decade_ticks(ax: Any, lo: float, hi: float) -> None:
    """At most four decades on each side of 0 as ticks (``1e-3``, ``-1e-3``) and 0."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    step = max(1, math.ceil((k1 - k0 + 1) / 4))
    decades = [10.0**k for k in range(k1, k0 - 1, -step) if 10.0**k >= 3 * lo]  # none crowding 0
    ticks = [-d for d in decades] + decades[::-1]  # no 0: the gap in the middle is the zeros' place
    labels = [f"{t:.0e}".replace("e-0", "e-").replace("e+0", "e") for t in ticks]
    ax.set_xticks(ticks, labels)
    ax.tick_params(axis="x", labelsize=10)


def draw_log_histogram(ax: Any, series: Sequence[tuple[int, np.ndarray]], colour: Any) -> str:
    """Negative and positive values as mirrored histograms of their magnitudes on a symmetric log axis;
    returns the share of exact zeros (dead units, pooling) at the last checkpoint as text for the title,
    rather than a spike that would flatten the rest."""
    edges, lo = log_bins([a for _, a in series], HIST_BINS // 2)
    ax.set_xscale("symlog", linthresh=lo, linscale=0.6)
    centres = np.sqrt(edges[:-1] * edges[1:])
    for epoch, a in series:
        v = np.asarray(a, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        n = max(v.size, 1)
        for sign in (-1, 1):
            counts = np.histogram(sign * v[sign * v > 0], bins=edges)[0]
            ax.plot(sign * centres, counts / n, color=colour(epoch), linewidth=1.6, drawstyle="steps-mid")
    _decade_ticks(ax, lo, float(edges[-1]))
    last = np.asarray(series[-1][1], dtype=np.float64).ravel()
    zeros = float(np.mean(last == 0)) if last.size else 0.0
    return f" · {100 * zeros:.0f}% zeros" if zeros else ""


def _hist_blocks(cks: Sequence[Checkpoint], layers: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """Per layer, per quantity: the first array's name and its values at each checkpoint."""
    out: dict[str, dict[str, Any]] = {}
    for layer in ins.select_layers(cks[-1], layers, params_only=not layers):
        for q in ins.HIST_QUANTITIES:
            per_ck = [(ck.epoch, ins.hist_sources(ck, layer, q)) for ck in cks]
            names = list(per_ck[-1][1])
            if names:
                series = [(e, src[names[0]]) for e, src in per_ck if names[0] in src]
                out.setdefault(layer.name, {})[q] = {"name": names[0], "series": series}
    return out


def histograms_figure(cks: Sequence[Checkpoint], layers: Sequence[str] | None) -> Any:
    """Per layer (rows): its first parameter's values, their gradient and the layer's δ (columns), one
    line per checkpoint coloured by epoch over shared bins (gradients and deltas, which spread over
    decades, as magnitudes on a symmetric log axis)."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    blocks = _hist_blocks(cks, layers)
    names = {"weights": "θ", "grads": "∂L/∂θ", "deltas": "δ"}
    cols = [q for q in ins.HIST_QUANTITIES if any(q in s for s in blocks.values())]
    fig = Figure(figsize=(5.2 * len(cols) + 1.2, 3.3 * len(blocks) + 0.8), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(blocks), len(cols), squeeze=False))
    epochs = [c.epoch for c in cks]
    norm = Normalize(min(epochs), max(max(epochs), min(epochs) + 1))
    cmap = colormaps["viridis"]
    for r, slots in enumerate(blocks.values()):
        for c, q in enumerate(cols):
            ax, block = axes[r, c], slots.get(q)
            if block is None:
                ax.set_visible(False)
                continue
            zeros = ""
            if q == "weights":
                edges = ins.shared_edges([a for _, a in block["series"]], HIST_BINS)
                centres = (edges[:-1] + edges[1:]) / 2
                for epoch, a in block["series"]:
                    finite = np.asarray(a, dtype=np.float64).ravel()
                    counts = np.histogram(finite[np.isfinite(finite)], bins=edges)[0]
                    share = counts / max(counts.sum(), 1)
                    ax.plot(centres, share, color=cmap(norm(epoch)), linewidth=1.6, drawstyle="steps-mid")
            else:
                zeros = draw_log_histogram(ax, block["series"], lambda e: cmap(norm(e)))
            ax.set_title(f"{block['name']} · {names[q]}{zeros}", fontsize=13)
            ax.grid(alpha=0.3)
            ax.set_xlabel("value" if q == "weights" else "value (symmetric log axis)", fontsize=12)
            if c == 0:
                ax.set_ylabel("share of values")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label="epoch", shrink=0.8)
    fig.suptitle(f"{cks[-1].run_name} · distributions at checkpoints {ins.epoch_ranges(epochs)}")
    return fig


def health_figure(history: Sequence[dict[str, Any]], thresholds: dict[str, float], run: str) -> Any:
    """‖δ‖ per layer (output → input) at the first, middle and last checkpoint; the dead / saturated
    fraction of each activation layer and the update ratio of each weight tensor across epochs."""
    from matplotlib.figure import Figure

    n = max(len(history[-1]["units"]) + 1, sum(r["judged"] for r in history[-1]["params"]) + 2)
    fig = Figure(figsize=(16, 5.6 + 0.16 * n), layout="constrained")  # room for the legends below
    ax_flow, ax_units, ax_update = fig.subplots(1, 3)
    picks = ins.pick_evenly(list(history), 3)
    for k, h in enumerate(picks):
        flow = list(reversed(h["flow"]))
        ax_flow.plot(range(len(flow)), [r["delta_norm"] for r in flow], marker="o",
                     color=RUN_COLOURS[k], label=f"epoch {h['epoch']}")  # fmt: skip
        ax_flow.set_xticks(range(len(flow)), [r["name"] for r in flow], rotation=40, ha="right", fontsize=11)
    ax_flow.set(yscale="log", title="‖δ‖ per layer, output → input", ylabel="mean ‖δ_x‖")
    ax_flow.legend()
    epochs = [h["epoch"] for h in history]
    for k, r in enumerate(history[-1]["units"]):
        values = [100 * _find(h["units"], r["name"], "fraction") for h in history]
        ax_units.plot(epochs, values, marker="o", color=RUN_COLOURS[k % len(RUN_COLOURS)],
                      label=f"{r['name']} {'dead' if r['kind'] == 'dead' else 'saturated'}")  # fmt: skip
    for kind in dict.fromkeys(r["kind"] for r in history[-1]["units"]):
        ax_units.axhline(100 * thresholds[kind], color="0.4", linestyle=":", label=f"{kind}: flagged from")
    ax_units.set(title="dead / saturated units", xlabel="epoch", ylabel="% of units", ylim=(-2, 102))
    ax_units.legend(**BELOW)
    weights = [r for r in history[-1]["params"] if r["judged"]]
    for k, r in enumerate(weights):
        values = [_find(h["params"], r["name"], "update_ratio") for h in history]
        ax_update.plot(epochs, values, marker="o", color=RUN_COLOURS[k % len(RUN_COLOURS)], label=r["name"])
    ax_update.axhspan(thresholds["update_low"], thresholds["update_high"], color="0.92", zorder=0,
                      label="not flagged")  # fmt: skip
    ax_update.axhline(1e-3, color="0.4", linestyle=":", label="rule of thumb 1e-3")
    ax_update.set(yscale="log", title="update ratio lr·‖∂L/∂θ‖/‖θ‖", xlabel="epoch")
    ax_update.legend(**BELOW)
    for ax in (ax_flow, ax_units, ax_update):
        ax.grid(alpha=0.3)
    fig.suptitle(f"{run} · gradient health of the probe batch")
    return fig


def _find(rows: Sequence[dict[str, Any]], name: str, key: str) -> float:
    return next((r[key] for r in rows if r["name"] == name), math.nan)
