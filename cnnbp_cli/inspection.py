"""Looking inside a run: the data behind ``cnnbp inspect``, as plain Python values.

Checkpoints are found with :mod:`cnnbp.runs` (the one resolver) and read with
:func:`cnnbp.checkpoint.read_checkpoint`.  The ``*_data`` functions build the dict of one view:
``summary`` (run header, one row per layer, metrics), ``deltas`` / ``activations`` (one probe sample's δ
or output per layer), ``grads`` / ``weights`` (each layer's ``/grads`` or ``/weights``), ``histograms``
(distributions over checkpoints), ``health`` (:mod:`cnnbp.health`), for ``--checkpoint all`` one norm
per layer and checkpoint, and ``compare`` (several runs side by side: their metrics, steps and the config
keys that differ).  Those dicts hold NumPy arrays and NaN; :func:`to_json` turns them into strict
JSON data (nested lists; non-finite numbers through :func:`cnnbp.files.json_number`).

Nothing here prints: a note (``metrics.csv`` unreadable, so the checkpoint's ``/metrics`` is used) goes
to the ``warn`` callback.  Every problem the user can fix is a one-line :class:`~cnnbp.errors.UserError`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.checkpoint import Checkpoint, LayerRecord, read_checkpoint
from cnnbp.errors import UserError
from cnnbp.files import json_number
from cnnbp.runs import (
    CHECKPOINTS,
    CONFIG,
    METRIC_COLUMNS,
    METRICS_CSV,
    best_epoch,
    find_checkpoints,
    read_metrics,
    read_status,
    read_steps,
    resolve_checkpoint,
    run_folder,
)

__all__ = [
    "DELTA_NORM_CAPTION",
    "HIST_QUANTITIES",
    "NORM_VIEWS",
    "activations_data",
    "array_stats",
    "best",
    "check_activations",
    "check_channel",
    "check_sample",
    "checkpoint_info",
    "compare_data",
    "compare_json",
    "config_differences",
    "dataset_text",
    "delta_norm",
    "deltas_data",
    "health_data",
    "histograms_data",
    "is_runs_folder",
    "runs_in",
    "epoch_ranges",
    "layer_row",
    "load_all",
    "load_checkpoint",
    "load_metrics",
    "load_steps",
    "run_status",
    "log_scale",
    "metric_column",
    "metric_rows",
    "metrics_data",
    "metrics_json",
    "norm",
    "norms_data",
    "params_data",
    "planned_epochs",
    "probe_count",
    "run_config",
    "select_layers",
    "summary_data",
    "to_json",
]

Warn = Callable[[str], None]

NORM_VIEWS = ("deltas", "grads", "weights")  # the views ``--checkpoint all`` tabulates
DELTA_NORM_CAPTION = "mean over the probe samples of ‖δ_x‖ (L2 norm of one sample's δ)"
_MEASURES = {
    "deltas": DELTA_NORM_CAPTION,
    "grads": "‖∂L/∂θ‖: L2 norm of the gradient of all the layer's parameters (probe batch)",
    "weights": "‖θ‖: L2 norm of all the layer's parameters",
}
LOG_SCALE_SPAN = 30.0  # a loss curve spanning more than this factor is drawn on a log scale


# ---- finding and reading --------------------------------------------------------------------------------


def load_checkpoint(target: Path, checkpoint: str | int = "last") -> Checkpoint:
    """Read the checkpoint ``checkpoint`` names (``last`` or an epoch) of a run folder or file."""
    return read_checkpoint(resolve_checkpoint(target, checkpoint))


def load_all(target: Path) -> list[Checkpoint]:
    """Every checkpoint of a run folder (or its ``checkpoints`` folder), by epoch."""
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run folder or checkpoint file")
    if target.is_file():
        raise UserError(f"{target}: --checkpoint all needs a run folder, not one checkpoint file")
    found = find_checkpoints(run_folder(target) or target)
    if not found:
        raise UserError(f"{target}: no checkpoints found (expected {CHECKPOINTS}/NNNN.h5 in a run folder)")
    return [read_checkpoint(path) for _, path in found]


def load_metrics(target: Path, ck: Checkpoint, warn: Warn | None = None) -> tuple[dict[str, np.ndarray], str]:
    """The run's metrics columns and where they came from.

    ``metrics.csv`` of the run folder when there is one (the whole run, even when an earlier checkpoint
    is shown); otherwise, or when it cannot be read (``warn`` gets a note), the checkpoint's own
    ``/metrics`` (the history up to that checkpoint).
    """
    run_dir = run_folder(target)
    if run_dir is not None and (run_dir / METRICS_CSV).is_file():
        try:
            cols = read_metrics(run_dir)
            return {k: np.asarray(v, dtype=np.float64) for k, v in cols.items()}, str(run_dir / METRICS_CSV)
        except UserError as e:
            if warn is not None:
                warn(f"note: {e}; showing the checkpoint's /metrics instead")
    cols = {k: np.asarray(ck.history.get(k, []), dtype=np.float64) for k in METRIC_COLUMNS}
    return cols, f"{ck.path} /metrics"


def load_steps(target: Path) -> dict[str, list[float]]:
    """The run's ``steps.csv`` columns (``step, epoch, loss, lr``); empty columns for a checkpoint file
    outside a run folder, or a run without one."""
    run_dir = run_folder(target)
    if run_dir is None:
        return {"step": [], "epoch": [], "loss": [], "lr": []}
    return read_steps(run_dir)


def run_status(target: Path) -> dict[str, Any] | None:
    """The run's ``status.json`` (how it stands or why it stopped), None without one."""
    run_dir = run_folder(target)
    return read_status(run_dir) if run_dir is not None else None


def select_layers(ck: Checkpoint, names: Sequence[str] | None, *, params_only: bool) -> list[LayerRecord]:
    """The layers ``names`` lists (each entry one name or comma-separated names), in network order.

    Without names: the layers with parameters when ``params_only``, else every layer.  An unknown name,
    or a layer without parameters when ``params_only``, is a UserError listing the layers there are.
    """
    by_name = {layer.name: layer for layer in ck.layers}
    wanted: list[str] = []
    for raw in names or []:
        wanted.extend([raw] if raw in by_name else [p.strip() for p in raw.split(",") if p.strip()])
    for name in wanted:
        if name not in by_name:
            raise UserError(f"--layer: no layer {name!r} in {ck.path}; its layers: {', '.join(by_name)}")
    param_names = [n for n in ck.weights if ck.weights[n]]
    if params_only:
        for name in wanted:
            if name not in param_names:
                have = ", ".join(param_names) or "none"
                raise UserError(f"--layer: {name} has no parameters; layers with parameters: {have}")
    if not wanted:
        return [layer for layer in ck.layers if not params_only or layer.name in param_names]
    chosen = set(wanted)
    return [layer for layer in ck.layers if layer.name in chosen]


def probe_count(ck: Checkpoint) -> int:
    """How many probe samples the checkpoint recorded."""
    return int(ck.probe_index.shape[0])


def check_sample(ck: Checkpoint, sample: int) -> None:
    """``sample`` must be one of the checkpoint's probe samples (a UserError otherwise)."""
    n = probe_count(ck)
    if n == 0:
        raise UserError(f"{ck.path}: the run recorded no probe samples (record.probe: 0), so no deltas")
    if not 0 <= sample < n:
        raise UserError(f"--sample {sample}: the probe batch of {ck.path} has {n} samples (0..{n - 1})")


def check_channel(arrays: dict[str, np.ndarray], channel: int | None, noun: str) -> None:
    """``channel`` must exist in every array that has maps (3 or more dimensions); None always does."""
    if channel is None:
        return
    for name, arr in arrays.items():
        if arr.ndim >= 3 and not 0 <= channel < arr.shape[0]:
            n = arr.shape[0]
            raise UserError(f"--channel {channel}: {name} has {n} {noun}{'' if n == 1 else 's'} (0..{n - 1})")


# ---- numbers ------------------------------------------------------------------------------------------


def norm(arrays: Sequence[np.ndarray]) -> float:
    """The L2 norm of several arrays taken together (NaN when there are none)."""
    if not arrays:
        return math.nan
    return float(np.sqrt(sum(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)) for a in arrays)))


def delta_norm(d: np.ndarray) -> float:
    """Mean over probe samples (the first axis) of ‖δ_x‖ (NaN without samples)."""
    if d.shape[0] == 0:
        return math.nan
    flat = np.asarray(d, dtype=np.float64).reshape(d.shape[0], -1)
    return float(np.mean(np.sqrt(np.sum(flat * flat, axis=1))))


def array_stats(values: np.ndarray) -> dict[str, float]:
    """min, max, mean and the L2 norm ‖·‖ of an array, in float64 (NaN for an empty one)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return {"min": math.nan, "max": math.nan, "mean": math.nan, "norm": math.nan}
    with np.errstate(invalid="ignore", over="ignore"):  # inf − inf in the mean is NaN, silently
        return {
            "min": float(arr.min()),
            "max": float(arr.max()),
            "mean": float(arr.mean()),
            "norm": float(np.sqrt(np.sum(arr * arr))),
        }


def layer_row(ck: Checkpoint, layer: LayerRecord) -> dict[str, Any]:
    """One summary row: shapes, parameter count, norms and |δ| statistics of a layer."""
    weights = list(ck.weights.get(layer.name, {}).values())
    grads = list(ck.grads.get(layer.name, {}).values())
    d = np.abs(np.asarray(ck.deltas[layer.name], dtype=np.float64))
    return {
        "name": layer.name,
        "type": layer.type,
        "input_shape": list(layer.input_shape),
        "output_shape": list(layer.output_shape),
        "params": int(sum(w.size for w in weights)),
        "param_norm": norm(weights),
        "grad_norm": norm(grads),
        "delta_mean_abs": float(d.mean()) if d.size else math.nan,
        "delta_max_abs": float(d.max()) if d.size else math.nan,
    }


def best(metrics: dict[str, np.ndarray], key: str) -> tuple[float, int | None]:
    """The highest finite value of a column and its epoch (the earliest on ties); NaN, None without one."""
    values, epochs = metrics.get(key, np.zeros(0)), metrics.get("epoch", np.zeros(0))
    finite = [(float(v), int(e)) for v, e in zip(values, epochs, strict=False) if math.isfinite(v)]
    if not finite:
        return math.nan, None
    top = max(v for v, _ in finite)
    return top, next(e for v, e in finite if v == top)


def metric_column(metrics: dict[str, Any], key: str) -> np.ndarray:
    """One metrics column as float64 (None, as :func:`metrics_json` writes NaN epochs, becomes NaN)."""
    return np.asarray([math.nan if v is None else v for v in metrics.get(key, [])], dtype=np.float64)


def metric_rows(metrics: dict[str, Any]) -> list[list[float]]:
    """One row per epoch of the ``METRIC_COLUMNS`` values (NaN where a column is missing or short)."""
    columns = [metric_column(metrics, c) for c in METRIC_COLUMNS]
    n = len(columns[0])  # the epoch column
    return [[float(col[i]) if i < len(col) else math.nan for col in columns] for i in range(n)]


def log_scale(*columns: np.ndarray) -> bool:
    """Whether curves of these columns want a log axis: all finite values positive, spanning > 30×."""
    values = np.concatenate([np.asarray(c, dtype=np.float64).ravel() for c in columns] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    return bool(values.size and values.min() > 0 and values.max() / values.min() > LOG_SCALE_SPAN)


# ---- JSON ---------------------------------------------------------------------------------------------


def to_json(value: Any) -> Any:
    """Plain JSON data, recursively: arrays as nested lists, non-finite floats by ``json_number``."""
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return json_number(value)
    return value


def metrics_json(metrics: dict[str, np.ndarray]) -> dict[str, list[Any]]:
    """Metric columns as lists: epoch and step as integers (None when missing), the rest as floats."""
    out: dict[str, list[Any]] = {}
    for key, values in metrics.items():
        if key in ("epoch", "step"):
            out[key] = [int(v) if math.isfinite(v) else None for v in values]
        else:
            out[key] = [float(v) for v in values]
    return out


# ---- the run --------------------------------------------------------------------------------------------


def checkpoint_info(ck: Checkpoint) -> dict[str, Any]:
    """Which checkpoint a view shows: its path, run, epoch, step and format."""
    return {
        "path": str(ck.path),
        "run_name": ck.run_name,
        "epoch": ck.epoch,
        "step": ck.step,
        "interrupted": ck.interrupted,
        "dtype": ck.dtype,
        "loss": ck.loss,
        "format_version": ck.format_version,
    }


def run_config(ck: Checkpoint) -> dict[str, Any]:
    """The checkpoint's resolved config as a dict (empty when it cannot be parsed)."""
    try:
        return ck.config_dict()
    except UserError:
        return {}


def plugin_records(cfg: dict[str, Any]) -> list[dict[str, str]]:
    """The plugins (users' layers) the run used, as its config records them: ``{path, sha256}``."""
    value = cfg.get("plugins")
    if not isinstance(value, list):
        return []
    return [p for p in value if isinstance(p, dict) and isinstance(p.get("path"), str)]


def dataset_text(cfg: dict[str, Any]) -> str:
    """The data source of a run from its config: ``digits``, ``idx · data/mnist · limit 3000``, …"""
    data = cfg.get("data")
    if not isinstance(data, dict):
        return "?"
    parts = [str(data.get("source", "?"))]
    if data.get("path"):
        parts.append(str(data["path"]))
    if data.get("limit"):
        parts.append(f"limit {data['limit']}")
    return " · ".join(parts)


def planned_epochs(cfg: dict[str, Any]) -> int | None:
    """``train.epochs`` of a run's config, when it is there."""
    train = cfg.get("train")
    value = train.get("epochs") if isinstance(train, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def epoch_ranges(epochs: Sequence[int]) -> str:
    """``0–5, 8, 10–12`` for a sorted list of epochs."""
    parts, i = [], 0
    while i < len(epochs):
        j = i
        while j + 1 < len(epochs) and epochs[j + 1] == epochs[j] + 1:
            j += 1
        parts.append(str(epochs[i]) if i == j else f"{epochs[i]}–{epochs[j]}")
        i = j + 1
    return ", ".join(parts)


# ---- views --------------------------------------------------------------------------------------------


def summary_data(
    target: Path, ck: Checkpoint, layers: list[LayerRecord], warn: Warn | None = None
) -> dict[str, Any]:
    """The ``summary`` view: the run, the checkpoint, one :func:`layer_row` per layer and the metrics."""
    metrics, source = load_metrics(target, ck, warn)
    run_dir = run_folder(target)
    present = [e for e, _ in find_checkpoints(run_dir)] if run_dir is not None else []
    if not present:  # a checkpoint file outside a run folder
        present = [ck.epoch]
    top, top_epoch = best(metrics, "val_acc")
    cfg = run_config(ck)
    record = cfg.get("record") if isinstance(cfg.get("record"), dict) else {}
    monitor = record["monitor"] if record.get("monitor") in ("val_loss", "val_acc") else "val_loss"
    chosen = best_epoch(metrics, monitor)
    epochs = metrics.get("epoch", np.zeros(0))
    return {
        "view": "summary",
        "run": {
            "name": ck.run_name,
            "folder": str(run_dir) if run_dir is not None else None,
            "dataset": dataset_text(cfg),
            "plugins": plugin_records(cfg),
            "dtype": ck.dtype,
            "loss": ck.loss,
            "epochs": int(epochs.max()) if epochs.size else ck.epoch,
            "epochs_planned": planned_epochs(cfg),
            "best_val_acc": top,
            "best_val_acc_epoch": top_epoch,
            "best": best_row(metrics, monitor, chosen),
            "status": run_status(target),
            "checkpoints": present,
            "probe_samples": probe_count(ck),
        },
        "checkpoint": checkpoint_info(ck),
        "layers": [layer_row(ck, layer) for layer in layers],
        "metrics_source": source,
        "metrics": metrics_json(metrics),
        "steps": load_steps(target),
    }


def best_row(
    metrics: dict[str, np.ndarray], monitor: str, chosen: tuple[int, float] | None
) -> dict[str, Any]:
    """The best epoch by ``monitor`` and its validation metrics (epoch None without validation data)."""
    if chosen is None:
        return {"monitor": monitor, "epoch": None, "val_loss": math.nan, "val_acc": math.nan}
    at = list(metrics["epoch"]).index(chosen[0])
    row = {k: float(metrics[k][at]) for k in ("val_loss", "val_acc")}
    return {"monitor": monitor, "epoch": chosen[0], **row}


def metrics_data(target: Path, ck: Checkpoint, warn: Warn | None = None) -> dict[str, Any]:
    """The ``metrics`` view: the run's metrics columns (see :func:`load_metrics`) and their source."""
    metrics, source = load_metrics(target, ck, warn)
    steps = load_steps(target)
    return {"view": "metrics", "source": source, "metrics": metrics_json(metrics), "steps": steps}


def check_activations(ck: Checkpoint) -> None:
    """UserError when the checkpoint has no ``/activations`` (one written before cnnbp recorded them)."""
    if not ck.activations:
        raise UserError(
            f"{ck.path}: has no /activations (written before cnnbp recorded them); --show deltas, grads "
            "and weights work, and a new run records them"
        )


def deltas_data(
    ck: Checkpoint, layers: list[LayerRecord], sample: int, channel: int | None
) -> dict[str, Any]:
    """The ``deltas`` view: probe sample ``sample``'s δ of each layer (one channel of maps if given)."""
    return probe_arrays_data(ck, layers, sample, channel, "deltas")


def activations_data(
    ck: Checkpoint, layers: list[LayerRecord], sample: int, channel: int | None
) -> dict[str, Any]:
    """The ``activations`` view: probe sample ``sample``'s output of each layer (one channel if given)."""
    check_activations(ck)
    return probe_arrays_data(ck, layers, sample, channel, "activations")


def probe_arrays_data(
    ck: Checkpoint, layers: list[LayerRecord], sample: int, channel: int | None, view: str
) -> dict[str, Any]:
    """One probe sample's per-layer arrays (``view``: ``deltas`` or ``activations``), stats included."""
    check_sample(ck, sample)
    source = ck.deltas if view == "deltas" else ck.activations
    key = "delta" if view == "deltas" else "activation"
    arrays = {layer.name: np.asarray(source[layer.name][sample]) for layer in layers}
    check_channel(arrays, channel, "channel")
    out = []
    for layer in layers:
        d = arrays[layer.name]
        sliced = channel is not None and d.ndim >= 3
        shown = d[channel] if sliced else d
        out.append({
            "name": layer.name,
            "type": layer.type,
            "shape": list(d.shape),
            "channel": channel if sliced else None,
            key: shown,
            "stats": array_stats(shown),
        })  # fmt: skip
    return {
        "view": view,
        "checkpoint": checkpoint_info(ck),
        "sample": {"index": sample, "train_index": int(ck.probe_index[sample]), "target": ck.probe_y[sample]},
        "layers": out,
    }


def params_data(ck: Checkpoint, layers: list[LayerRecord], which: str, channel: int | None) -> dict[str, Any]:
    """The ``grads`` or ``weights`` view (``which``): each layer's arrays (one filter of maps if given)."""
    source = ck.grads if which == "grads" else ck.weights
    arrays = {f"{layer.name}.{k}": v for layer in layers for k, v in source.get(layer.name, {}).items()}
    check_channel(arrays, channel, "filter")
    out = []
    for layer in layers:
        params = {}
        for key, arr in source.get(layer.name, {}).items():
            sliced = channel is not None and arr.ndim >= 3
            shown = arr[channel] if sliced else arr
            params[key] = {
                "shape": list(arr.shape),
                "channel": channel if sliced else None,
                "values": shown,
                "stats": array_stats(shown),
            }
        out.append({"name": layer.name, "type": layer.type, "params": params})
    return {"view": which, "checkpoint": checkpoint_info(ck), "layers": out}


def norms_data(cks: list[Checkpoint], names: Sequence[str] | None, which: str) -> dict[str, Any]:
    """One norm per layer and checkpoint (``which``: deltas, grads or weights); rows output → input.

    The layers are those of the last checkpoint (all of them for deltas, else those with parameters).
    """
    layers = select_layers(cks[-1], names, params_only=which != "deltas")
    rows = []
    for layer in reversed(layers):
        values = []
        for ck in cks:
            if which == "deltas":
                d = ck.deltas.get(layer.name)
                values.append(delta_norm(np.asarray(d)) if d is not None else math.nan)
            else:
                group = (ck.grads if which == "grads" else ck.weights).get(layer.name, {})
                values.append(norm(list(group.values())))
        rows.append({"name": layer.name, "type": layer.type, "values": values})
    return {
        "view": which,
        "measure": _MEASURES[which],
        "checkpoints": [{"epoch": c.epoch, "step": c.step, "interrupted": c.interrupted} for c in cks],
        "layers": rows,
    }


# ---- distributions over checkpoints -------------------------------------------------------------------

HIST_QUANTITIES = ("weights", "grads", "deltas")


def pick_evenly(items: Sequence[Any], most: int | None) -> list[Any]:
    """At most ``most`` of ``items``, evenly spread, the first and the last always among them."""
    items = list(items)
    if most is None or len(items) <= most:
        return items
    if most <= 1:
        return items[-1:]
    picks = sorted({round(i * (len(items) - 1) / (most - 1)) for i in range(most)})
    return [items[i] for i in picks]


def shared_edges(arrays: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """``bins`` equal bins over the finite values of every array together (a width of 1 around a
    constant)."""
    finite = [a[np.isfinite(a)] for a in (np.asarray(x, dtype=np.float64).ravel() for x in arrays)]
    values = np.concatenate(finite) if finite else np.zeros(0)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if hi <= lo:
        pad = abs(lo) * 0.5 or 0.5
        lo, hi = lo - pad, hi + pad
    return np.linspace(lo, hi, bins + 1)


def distribution(values: np.ndarray, edges: np.ndarray) -> dict[str, Any]:
    """Bin counts of the finite values over ``edges``, their mean, standard deviation and range, and how
    many values were not finite."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    finite = arr[np.isfinite(arr)]
    counts = np.histogram(finite, bins=edges)[0] if finite.size else np.zeros(len(edges) - 1, dtype=np.int64)
    stats = {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    if finite.size:
        stats = {"mean": float(finite.mean()), "std": float(finite.std()), "min": float(finite.min()),
                 "max": float(finite.max())}  # fmt: skip
    return {"counts": counts, "count": int(arr.size), "non_finite": int(arr.size - finite.size), **stats}


def hist_sources(ck: Checkpoint, layer: LayerRecord, quantity: str) -> dict[str, np.ndarray]:
    """The arrays of one quantity of a layer in a checkpoint, by display name (``conv1.W``, ``conv1``)."""
    if quantity == "deltas":
        d = ck.deltas.get(layer.name)
        return {} if d is None else {layer.name: np.asarray(d)}
    if quantity == "activations":
        a = ck.activations.get(layer.name)
        return {} if a is None else {layer.name: np.asarray(a)}
    group = (ck.weights if quantity == "weights" else ck.grads).get(layer.name, {})
    return {f"{layer.name}.{k}": np.asarray(v) for k, v in group.items()}


def histograms_data(
    cks: Sequence[Checkpoint], names: Sequence[str] | None, bins: int = 48,
    quantities: Sequence[str] = HIST_QUANTITIES,
) -> dict[str, Any]:  # fmt: skip
    """Per layer and quantity (weights, grads, deltas: per parameter tensor for the first two), the
    distribution at each checkpoint over one shared axis (``bins`` equal bins over every value of every
    checkpoint, so drift and collapse show).  Layers: ``names``, else those with parameters."""
    layers = select_layers(cks[-1], names, params_only=not names)
    blocks = []
    for layer in layers:
        for quantity in quantities:
            per_ck = [hist_sources(ck, layer, quantity) for ck in cks]
            for name in per_ck[-1]:
                arrays = [src.get(name) for src in per_ck]
                edges = shared_edges([a for a in arrays if a is not None], bins)
                rows = [
                    {"epoch": ck.epoch, "interrupted": ck.interrupted, **distribution(a, edges)}
                    for ck, a in zip(cks, arrays, strict=True) if a is not None
                ]  # fmt: skip
                blocks.append({"name": name, "layer": layer.name, "type": layer.type, "quantity": quantity,
                               "edges": edges, "rows": rows})  # fmt: skip
    return {
        "view": "histograms",
        "checkpoints": [{"epoch": c.epoch, "step": c.step, "interrupted": c.interrupted} for c in cks],
        "bins": bins,
        "histograms": blocks,
    }


# ---- several runs side by side -------------------------------------------------------------------------


def is_run_folder(path: Path) -> bool:
    """A folder with a ``config.yaml`` (a run folder, finished or not)."""
    return Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def runs_in(folder: Path) -> list[Path]:
    """The run folders directly inside ``folder`` (a sweep folder's trials, or ``runs/``), by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_run_folder(p)), key=lambda p: p.name)


def is_runs_folder(path: Path) -> bool:
    """A folder that is not itself a run (no ``config.yaml`` nor ``checkpoints/``) but holds runs."""
    path = Path(path)
    if not path.is_dir() or is_run_folder(path) or (path / CHECKPOINTS).is_dir() or path.name == CHECKPOINTS:
        return False
    return bool(runs_in(path))


def run_labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short distinct names for runs: the folder names, or the paths when two folder names are the same."""
    names = [Path(d).name for d in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(d) for d in run_dirs]


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.lr": 0.05, "model.layers[0].filters": 16, …}``: every leaf of a config by its dotted key
    (a list of plain values, such as ``input_shape``, is one leaf)."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten_config(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        for i, v in enumerate(value):
            out.update(flatten_config(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


MISSING = object()  # a config key one run does not have


def config_differences(configs: Sequence[dict[str, Any]], ignore: Sequence[str] = ("name",)) -> list[dict]:
    """The config keys whose values are not the same in every config: ``{key, values}`` (one value per
    config, :data:`MISSING` where a config lacks the key), in the order the keys first appear."""
    flat = [flatten_config(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = []
    for key in keys:
        if key in ignore:
            continue
        values = [f.get(key, MISSING) for f in flat]
        if any(v is MISSING for v in values) or any(v != values[0] for v in values[1:]):
            out.append({"key": key, "values": values})
    return out


def run_record(run_dir: Path, warn: Warn | None = None) -> dict[str, Any]:
    """One run of a comparison: its config, metrics, steps, status, final row and best epoch."""
    from cnnbp.yamlio import read_yaml

    run_dir = Path(run_dir)
    if not is_run_folder(run_dir):
        raise UserError(f"{run_dir}: not a run folder (no {CONFIG})")
    cfg = read_yaml(run_dir / CONFIG)
    try:
        cols = {k: np.asarray(v, dtype=np.float64) for k, v in read_metrics(run_dir).items()}
    except UserError as e:
        if warn is not None:
            warn(f"note: {e}; its curves are left out")
        cols = {k: np.zeros(0) for k in METRIC_COLUMNS}
    record = cfg.get("record") if isinstance(cfg.get("record"), dict) else {}
    monitor = record["monitor"] if record.get("monitor") in ("val_loss", "val_acc") else "val_loss"
    epochs = cols.get("epoch", np.zeros(0))
    final = {k: float(v[-1]) if v.size else math.nan for k, v in cols.items()}
    return {
        "folder": str(run_dir),
        "config": cfg,
        "status": read_status(run_dir),
        "epochs": int(epochs.max()) if epochs.size else 0,
        "epochs_planned": planned_epochs(cfg),
        "final": final,
        "best": best_row(cols, monitor, best_epoch(cols, monitor)),
        "metrics": metrics_json(cols),
        "steps": read_steps(run_dir),
        "checkpoints": [e for e, _ in find_checkpoints(run_dir)],
    }


def compare_data(run_dirs: Sequence[Path], warn: Warn | None = None) -> dict[str, Any]:
    """Several runs side by side: each run's record (:func:`run_record`) under a short label, and the
    config keys that differ between them."""
    records = [run_record(d, warn) for d in run_dirs]
    for label, r in zip(run_labels(run_dirs), records, strict=True):
        r["label"] = label
    diffs = config_differences([r["config"] for r in records])
    return {"view": "compare", "runs": records, "differences": diffs}


def compare_json(data: dict[str, Any]) -> dict[str, Any]:
    """A comparison as JSON data (a missing config value as null, configs left out: the keys that differ
    are there)."""
    runs = [{k: v for k, v in r.items() if k != "config"} for r in data["runs"]]
    diffs = [{"key": d["key"], "values": [None if v is MISSING else v for v in d["values"]]}
             for d in data["differences"]]  # fmt: skip
    return to_json({**data, "runs": runs, "differences": diffs})


# ---- health -------------------------------------------------------------------------------------------


def health_data(target: Path, checkpoint: str | int = "last", thresholds: Any = None) -> dict[str, Any]:
    """The ``health`` view (:mod:`cnnbp.health`) of one checkpoint, or of every one (``all``).

    The verdicts say since when a problem holds: they look at the run's checkpoints up to the one shown
    (just that one for a loose checkpoint file).
    """
    from cnnbp.health import Thresholds, run_health

    t = thresholds or Thresholds()
    text = str(checkpoint).strip().lower()
    if text == "all":
        cks = load_all(target)
        shown = cks
    else:
        path = resolve_checkpoint(target, text)
        ck = read_checkpoint(path)
        run_dir = run_folder(path)
        found = find_checkpoints(run_dir) if run_dir is not None else []
        cks = [read_checkpoint(p) for e, p in found if e < ck.epoch and p != path] + [ck]
        shown = [ck]
    result = run_health(cks, t)
    return {
        "view": "health",
        "checkpoint": checkpoint_info(cks[-1]),
        "thresholds": result["thresholds"],
        "health": result["checkpoints"][-1],
        "checkpoints": result["checkpoints"][-len(shown):] if text == "all" else [],
        "verdicts": result["verdicts"],
    }
