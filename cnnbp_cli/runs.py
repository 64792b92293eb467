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

Crash safety: ``config.yaml`` is written to ``config.yaml.tmp`` and renamed into place, so it is whole
or absent.  A ``kill -9`` while a metrics row is being written can leave a torn last line (one without
its final newline): :func:`read_metrics` ignores it, and ``cnnbp train --resume`` rewrites
``metrics.csv`` from the checkpoint it resumes (whose ``/metrics`` holds every row up to it), dropping
rows of epochs that will run again.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path

from cnnbp.checkpoint import CHECKPOINTS, checkpoint_name
from cnnbp.errors import UserError

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
    """Store the resolved config YAML as ``config.yaml`` (atomically: ``.tmp``, fsync, rename)."""
    path = Path(run_dir) / CONFIG
    _write_atomic(path, text)
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a crash) sees the old file or the new, whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
        raise


def remove_stale_run_tmp(run_dir: Path) -> list[Path]:
    """Delete the ``*.tmp`` files an interrupted write left in a run folder (not in ``checkpoints/``)."""
    removed = []
    for name in (CONFIG, METRICS_CSV):
        p = Path(run_dir) / f"{name}.tmp"
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class MetricsLog:
    """``metrics.csv`` opened for appending: header first, then one flushed row per epoch.

    It also keeps the columns in memory (``history``) for the checkpoints' ``/metrics`` group.
    With ``history`` (a resumed run: the columns of the checkpoint it resumes) the file is first
    rewritten atomically to hold exactly those rows, repairing a torn last line and dropping rows of
    epochs after the checkpoint; new rows are then appended as usual.
    """

    def __init__(self, path: Path, history: Mapping[str, Sequence[float]] | None = None) -> None:
        self.path = Path(path)
        self.history: dict[str, list[float]] = {c: [] for c in METRIC_COLUMNS}
        if history is not None:
            for c in METRIC_COLUMNS:
                self.history[c] = [int(v) if c in _INT_COLUMNS else float(v) for v in history[c]]
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(METRIC_COLUMNS)
            for values in zip(*(self.history[c] for c in METRIC_COLUMNS), strict=True):
                writer.writerow(_cells(values))
            _write_atomic(self.path, buf.getvalue())
        new = not self.path.exists() or self.path.stat().st_size == 0
        try:
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
        except OSError as e:
            raise UserError(f"{self.path}: cannot write ({e.strerror or e})") from None
        self._writer = csv.writer(self._fh, lineterminator="\n")
        if new:
            self._writer.writerow(METRIC_COLUMNS)
            self._sync()

    def append(self, row: Mapping[str, float]) -> None:
        """Write one epoch's row (missing values as ``nan``) and make it durable before returning."""
        values = [row.get(c, math.nan) for c in METRIC_COLUMNS]
        for c, v in zip(METRIC_COLUMNS, values, strict=True):
            self.history[c].append(v)
        try:
            self._writer.writerow(_cells(values))
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


def _cells(values: Sequence[float]) -> list[str]:
    """One row's values, in ``METRIC_COLUMNS`` order, as the cells of a ``metrics.csv`` line."""
    return [_cell(c, v) for c, v in zip(METRIC_COLUMNS, values, strict=True)]


def _cell(column: str, value: float) -> str:
    if column in _INT_COLUMNS:
        return str(int(value))
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return repr(float(value))


def read_metrics(run_dir: Path) -> dict[str, list[float]]:
    """The columns of a run's ``metrics.csv`` (``nan`` for missing values); a UserError when unreadable.

    A last line without its newline is a row torn by a crash mid-write: it is ignored.
    """
    path = Path(run_dir) / METRICS_CSV
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte offset {e.start})") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # drop the torn last line
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise UserError(f"{path}: not a valid CSV file ({e})") from None
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
