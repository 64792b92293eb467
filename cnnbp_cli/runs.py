"""Run folders: ``<out>/<name>/`` with ``config.yaml``, ``metrics.csv`` and ``checkpoints/``.

A new run never overwrites: when ``<out>/<name>`` exists it becomes ``<name>-2``, ``<name>-3``, …
(the folder is created with ``mkdir`` that fails on an existing name, so two runs started at the same
moment cannot share a folder).  ``config.yaml`` is the resolved config: ``cnnbp train
runs/<name>/config.yaml`` repeats the run (into ``<name>-2``, since the name is taken).

``metrics.csv`` gets one row per epoch, appended, flushed and fsynced as the epoch ends:

    epoch,step,train_loss,train_acc,val_loss,val_acc,lr,seconds

``step`` counts optimiser updates so far; ``train_*`` are sample-weighted means over the epoch's batches
(taken while the weights moved); ``val_*`` are measured at the end of the epoch; accuracies are
fractions in [0, 1]; ``seconds`` is the wall time of the epoch's training pass plus validation.  Row 0
is the initial state: validation metrics only, ``nan`` for the training ones (and for ``val_*`` when
there is no validation data).
"""

from __future__ import annotations

import csv
import math
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

from cnnbp_cli.checkpoint import CHECKPOINTS, checkpoint_name
from cnnbp_cli.errors import UserError

CONFIG = "config.yaml"
METRICS_CSV = "metrics.csv"
METRIC_COLUMNS: tuple[str, ...] = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
)
_INT_COLUMNS = ("epoch", "step")


def create_run_dir(out: Path, name: str) -> Path:
    """Create a fresh ``<out>/<name>`` (``<name>-2``, ``-3``, … when taken) with ``checkpoints/``; return it.

    The name must be one plain folder name: a name that would land outside ``out`` is a UserError.
    """
    out = Path(out)
    _check_name(out, name)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    candidate, n = name, 1
    while True:
        run_dir = out / candidate
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            n += 1
            candidate = f"{name}-{n}"
        except OSError as e:
            raise UserError(f"{run_dir}: cannot create the run folder ({e.strerror or e})") from None
    (run_dir / CHECKPOINTS).mkdir()
    return run_dir


def _check_name(out: Path, name: str) -> None:
    """Refuse names that are empty, hidden path tricks, or resolve outside ``out`` (belt and braces)."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"name: {name!r} is not a plain folder name")
    base = out.resolve()
    if (base / name).resolve().parent != base:
        raise UserError(f"name: {name!r} would place the run outside {out}")


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    """``<run>/checkpoints/NNNN.h5`` for an epoch."""
    return checkpoints_dir(run_dir) / checkpoint_name(epoch)


def write_config(run_dir: Path, text: str) -> Path:
    """Store the resolved config YAML as ``config.yaml``."""
    path = Path(run_dir) / CONFIG
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


class MetricsLog:
    """``metrics.csv`` opened for appending: header first, then one flushed row per epoch.

    It also keeps the columns in memory (``history``) for the checkpoints' ``/metrics`` group.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", encoding="utf-8", newline="")
        self._writer = csv.writer(self._fh, lineterminator="\n")
        self.history: dict[str, list[float]] = {c: [] for c in METRIC_COLUMNS}
        if new:
            self._writer.writerow(METRIC_COLUMNS)
            self._sync()

    def append(self, row: Mapping[str, float]) -> None:
        """Write one epoch's row (missing values as ``nan``) and make it durable before returning."""
        values = [row.get(c, math.nan) for c in METRIC_COLUMNS]
        for c, v in zip(METRIC_COLUMNS, values, strict=True):
            self.history[c].append(v)
        try:
            self._writer.writerow([_cell(c, v) for c, v in zip(METRIC_COLUMNS, values, strict=True)])
            self._sync()
        except OSError as e:
            raise UserError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cell(column: str, value: float) -> str:
    if column in _INT_COLUMNS:
        return str(int(value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return repr(float(value))


def read_metrics(run_dir: Path) -> dict[str, list[float]]:
    """The columns of a run's ``metrics.csv`` (``nan`` for missing values); a UserError when unreadable."""
    path = Path(run_dir) / METRICS_CSV
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    columns: dict[str, list[float]] = {c: [] for c in METRIC_COLUMNS}
    for i, row in enumerate(rows, start=2):
        for c in METRIC_COLUMNS:
            try:
                columns[c].append(float(row.get(c) or "nan"))
            except ValueError:
                raise UserError(f"{path}: line {i}: {c} is not a number ({row.get(c)!r})") from None
    return columns


def inspect_command(run_dir: Path) -> str:
    """The shell command that opens a run in ``cnnbp inspect``."""
    return f"cnnbp inspect {shlex.quote(str(run_dir))}"
