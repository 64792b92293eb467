"""Run folders: ``<out>/<name>/`` with ``config.yaml``, ``metrics.csv``, ``steps.csv``, ``status.json``,
``train.log`` and ``checkpoints/NNNN.h5``, the one resolver from a run or a path to a checkpoint file
(``last``, ``best`` or an epoch), and :class:`Run`, a run as Python objects.

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

``steps.csv`` gets one row per optimiser step, appended and flushed as the step ends:

    step,epoch,loss,lr

``loss`` is the batch's mean loss before the update, ``lr`` the learning rate the update used (full
precision).  Rows are flushed to the operating system every step and fsynced before every checkpoint
is written, so every step up to a checkpoint is on disk whenever the checkpoint is.

``status.json`` says how the run stands: ``state`` (``training``, ``finished``, ``early_stopped``,
``diverged``, ``interrupted``, ``failed``), a one-line ``reason`` for a stop, the epoch and step
reached and the best epoch; it is rewritten atomically at the start and the end of every call of
training.

Checkpoints are named by epoch, zero-padded to four digits (more when the epoch needs them).  The
**best** epoch is the one with the lowest ``val_loss`` (``record.monitor: val_acc``: the highest
``val_acc``), the earliest on ties; ``--checkpoint best`` is the checkpoint of the best epoch among
those on disk (every epoch's with the default ``record.every: 1``).

Crash safety: every whole file is written with :func:`cnnbp.files.write_atomic` (a temporary file
renamed into place), so it is whole or absent; a left-over temporary file is removed by the next run.
A ``kill -9`` while a metrics row is being written can leave a torn last line (one without its final
newline): :func:`read_metrics` ignores it, and ``cnnbp train --resume`` rewrites ``metrics.csv`` from
the checkpoint it resumes (whose ``/metrics`` holds every row up to it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cnnbp.errors import UserError
from cnnbp.files import json_number, write_atomic

CONFIG = "config.yaml"
METRICS_CSV = "metrics.csv"
STEPS_CSV = "steps.csv"
STATUS = "status.json"
TRAIN_LOG = "train.log"
CHECKPOINTS = "checkpoints"
STEP_COLUMNS: tuple[str, ...] = ("step", "epoch", "loss", "lr")
#: how ``record.monitor`` picks the best epoch: the lowest val_loss, the highest val_acc
MONITOR_MODES = {"val_loss": min, "val_acc": max}
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
_NAME = re.compile(r"^(\d{4,})\.h5$")


# ---- names and places ------------------------------------------------------------------------------


def checkpoint_name(epoch: int) -> str:
    """``NNNN.h5`` for an epoch (zero-padded to four digits)."""
    return f"{epoch:04d}.h5"


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    """``<run>/checkpoints/NNNN.h5`` for an epoch."""
    return Path(run_dir) / CHECKPOINTS / checkpoint_name(epoch)


def find_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every finished checkpoint in a run folder, by epoch (temporary files ignored)."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def run_folder(target: Path) -> Path | None:
    """The run folder a target belongs to: itself, the parent of its ``checkpoints`` folder or of a
    checkpoint file in one, or None (a loose checkpoint file)."""
    target = Path(target)
    if target.is_dir():
        if target.name == CHECKPOINTS and not (target / CHECKPOINTS).is_dir():
            return target.parent
        return target
    if target.parent.name == CHECKPOINTS:
        return target.parent.parent
    return None


def resolve_checkpoint(target: Path, checkpoint: str | int | None = None) -> Path:
    """The checkpoint file a command should read: the one resolver of runs and checkpoints.

    ``target`` is a run folder (its last checkpoint, or the one ``checkpoint`` names), a run's
    ``checkpoints`` folder (the same), or a ``.h5`` file (itself; ``checkpoint`` must then be None).
    ``checkpoint`` may be an epoch number, its digits, ``"last"`` or ``"best"`` (the best epoch by
    ``record.monitor`` among the checkpoints on disk; see :func:`best_checkpoint`).
    """
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run folder or checkpoint file")
    text = str(checkpoint).strip().lower() if checkpoint is not None else "last"
    if target.is_file():
        if text != "last":
            raise UserError(f"{target}: --checkpoint selects a checkpoint of a run folder, not of a file")
        return target
    run_dir = run_folder(target) or target
    found = find_checkpoints(run_dir)
    if not found:
        raise UserError(f"{target}: no checkpoints found (expected {CHECKPOINTS}/NNNN.h5 in a run folder)")
    if text == "last":
        return found[-1][1]
    if text == "best":
        return best_checkpoint(run_dir, found)
    if not text.isdigit():
        raise UserError(f"--checkpoint: expected an epoch number, 'last' or 'best', got {checkpoint!r}")
    epoch = int(text)
    for e, p in found:
        if e == epoch:
            return p
    have = ", ".join(str(e) for e, _ in found)
    raise UserError(f"{run_dir}: no checkpoint for epoch {epoch} (have {have})")


def run_monitor(run_dir: Path) -> str:
    """``record.monitor`` of a run's ``config.yaml`` (``val_loss`` when the config does not say)."""
    from cnnbp.yamlio import read_yaml

    try:
        record = read_yaml(Path(run_dir) / CONFIG).get("record")
    except UserError:
        return "val_loss"
    monitor = record.get("monitor") if isinstance(record, dict) else None
    return monitor if monitor in MONITOR_MODES else "val_loss"


def best_epoch(
    columns: Mapping[str, Sequence[float]], monitor: str = "val_loss", among: Iterable[int] | None = None
) -> tuple[int, float] | None:
    """``(epoch, value)`` of the best epoch by ``monitor`` (lowest val_loss, highest val_acc; the earliest
    on ties), among the epochs ``among`` when given; None when no epoch has a finite value."""
    allowed = None if among is None else set(among)
    pairs = [
        (int(e), float(v))
        for e, v in zip(columns.get("epoch", ()), columns.get(monitor, ()), strict=False)
        if math.isfinite(v) and (allowed is None or int(e) in allowed)
    ]
    if not pairs:
        return None
    top = MONITOR_MODES[monitor](v for _, v in pairs)
    return next((e, v) for e, v in pairs if v == top)


class NoBestEpoch(UserError):
    """``best`` asked of a run that has no validation metric to pick it by."""


def best_checkpoint(run_dir: Path, found: Sequence[tuple[int, Path]] | None = None) -> Path:
    """The checkpoint of the run's best epoch (:func:`best_epoch`) among those on disk.

    The metrics come from ``metrics.csv`` (or, without one, the last checkpoint's ``/metrics``); a run
    without validation data has no best epoch (a UserError says so).
    """
    found = find_checkpoints(run_dir) if found is None else found
    monitor = run_monitor(run_dir)
    if (Path(run_dir) / METRICS_CSV).is_file():
        columns: Mapping[str, Sequence[float]] = read_metrics(run_dir)
    else:
        from cnnbp.checkpoint import read_checkpoint

        columns = {k: list(v) for k, v in read_checkpoint(found[-1][1]).history.items()}
    pick = best_epoch(columns, monitor, [e for e, _ in found])
    if pick is None:
        raise NoBestEpoch(
            f"--checkpoint best: {run_dir} has no {monitor} to compare (no validation data); "
            "give an epoch or 'last'"
        )
    return dict(found)[pick[0]]


def keep_epochs(epochs: Sequence[int], best: int | None, keep: str) -> set[int]:
    """The checkpoint epochs ``record.keep`` keeps: all of them (``all``), or checkpoint 0, the best
    and the last with nothing else (``best``) or with the last K (``last-K``)."""
    if keep == "all" or not epochs:
        return set(epochs)
    ordered = sorted(epochs)
    kept = {ordered[0], ordered[-1]} | ({best} if best is not None else set())
    if keep.startswith("last-"):
        kept |= set(ordered[-int(keep.removeprefix("last-")) :])
    return kept & set(epochs)


def prune_checkpoints(
    run_dir: Path, columns: Mapping[str, Sequence[float]], monitor: str, keep: str
) -> list[Path]:
    """Delete the checkpoints ``record.keep`` does not keep (see :func:`keep_epochs`; the best is the
    best of the epochs on disk by ``columns``, the metrics); return them."""
    found = find_checkpoints(run_dir)
    epochs = [e for e, _ in found]
    pick = best_epoch(columns, monitor, epochs)
    kept = keep_epochs(epochs, pick[0] if pick else None, keep)
    removed = [p for e, p in found if e not in kept]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def is_checkpoint_target(path: Path) -> bool:
    """A folder (a run) or an HDF5 file is a checkpoint target; anything else is read as a config."""
    if path.is_dir():
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(520)
    except OSError:
        return path.suffix.lower() == ".h5"
    return head.startswith(b"cnnbp-checkpoint") or b"\x89HDF\r\n\x1a\n" in head[:8] + head[512:520]


# ---- creating a run ----------------------------------------------------------------------------------


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
    try:
        (run_dir / CHECKPOINTS).mkdir()
    except OSError as e:
        raise UserError(f"{run_dir}: cannot create the run folder ({e.strerror or e})") from None
    return run_dir


def _check_name(out: Path, name: str) -> None:
    """Refuse names that are empty or path tricks: the name must be one plain folder name in ``out``.

    The check is on the words, not on what is on disk: a symlink already at ``<out>/<name>`` is a taken
    name like any other, and the run goes to ``<name>-2``.
    """
    plain = os.path.normpath(os.path.join("out", name))
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UserError(f"name: {name!r} is not a plain folder name")
    if os.path.dirname(plain) != "out":
        raise UserError(f"name: {name!r} would place the run outside {out}")


def write_config(run_dir: Path, text: str) -> Path:
    """Store the resolved config YAML as ``config.yaml`` (atomically)."""
    return write_atomic(Path(run_dir) / CONFIG, text)


def remove_stale_tmp(run_dir: Path) -> list[Path]:
    """Delete the temporary files an interrupted write left in a run folder and its checkpoints."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINTS):
        if folder.is_dir():
            for p in folder.glob("*.tmp"):
                try:
                    p.unlink(missing_ok=True)
                except OSError:
                    continue  # a read-only folder: the file is harmless (readers ignore *.tmp)
                removed.append(p)
    return removed


# ---- metrics.csv -------------------------------------------------------------------------------------


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
            write_atomic(self.path, buf.getvalue())
        try:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
            self._writer = csv.writer(self._fh, lineterminator="\n")
            if new:
                self._writer.writerow(METRIC_COLUMNS)
                self._sync()
        except OSError as e:
            raise UserError(f"{self.path}: cannot write ({e.strerror or e})") from None

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

    def rows(self) -> list[dict[str, float]]:
        """The rows logged so far, as dicts."""
        cols = [self.history[c] for c in METRIC_COLUMNS]
        return [dict(zip(METRIC_COLUMNS, values, strict=True)) for values in zip(*cols, strict=True)]

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass


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


# ---- steps.csv -------------------------------------------------------------------------------------------


class StepsLog:
    """``steps.csv`` opened for appending: one row per optimiser step (``step, epoch, loss, lr``).

    Each row is flushed to the operating system as it is written (a killed process loses none); the
    file is fsynced by :meth:`sync`, which the runner calls before it writes a checkpoint.  With
    ``upto`` (a resumed run: the step of the checkpoint it resumes) the file is first rewritten
    atomically to hold the rows of steps 1 … ``upto`` only, dropping a torn last line and the steps
    run after that checkpoint (they are run again).
    """

    def __init__(self, path: Path, upto: int | None = None) -> None:
        self.path = Path(path)
        try:
            if upto is not None:
                kept = [r for r in _step_rows(self.path) if r[0] <= upto] if self.path.exists() else []
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                writer.writerow(STEP_COLUMNS)
                writer.writerows([str(s), str(e), _cell("loss", v), _cell("lr", lr)] for s, e, v, lr in kept)
                write_atomic(self.path, buf.getvalue())
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._fh = open(self.path, "a", encoding="utf-8", newline="")
            self._writer = csv.writer(self._fh, lineterminator="\n")
            if new:
                self._writer.writerow(STEP_COLUMNS)
                self.sync()
        except OSError as e:
            raise UserError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def append(self, step: int, epoch: int, loss: float, lr: float) -> None:
        """One step's row, flushed (not fsynced: see :meth:`sync`)."""
        try:
            self._writer.writerow([str(int(step)), str(int(epoch)), _cell("loss", loss), _cell("lr", lr)])
            self._fh.flush()
        except OSError as e:
            raise UserError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def sync(self) -> None:
        """Make every row written so far durable."""
        try:
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as e:
            raise UserError(f"{self.path}: cannot write ({e.strerror or e})") from None

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass


def _step_rows(path: Path) -> list[tuple[int, int, float, float]]:
    """The rows of a ``steps.csv`` as (step, epoch, loss, lr); a torn last line is ignored, and so is
    any line that does not parse (a reader of a live run must not fail on it)."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = []
    for row in csv.DictReader(io.StringIO(text, newline="")):
        try:
            rows.append((int(row["step"]), int(row["epoch"]), float(row["loss"]), float(row["lr"])))
        except (KeyError, TypeError, ValueError):
            continue
    return rows


def read_steps(run_dir: Path) -> dict[str, list[float]]:
    """The columns of a run's ``steps.csv`` (empty columns when the run has none)."""
    path = Path(run_dir) / STEPS_CSV
    rows = _step_rows(path) if path.is_file() else []
    return {c: [r[i] for r in rows] for i, c in enumerate(STEP_COLUMNS)}


# ---- status.json ---------------------------------------------------------------------------------------


def write_status(run_dir: Path, state: str, **fields: Any) -> Path:
    """Rewrite ``status.json`` atomically: ``state``, the time, and ``fields`` (numbers by the one JSON
    number rule)."""
    doc = {"state": state, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
    text = json.dumps(_plain_json(doc), indent=2, ensure_ascii=False) + "\n"
    return write_atomic(Path(run_dir) / STATUS, text)


def _plain_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, float):
        return json_number(value)
    return value


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """``status.json`` of a run as a dict (None when there is none or it cannot be read)."""
    try:
        doc = json.loads((Path(run_dir) / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def inspect_command(run_dir: Path) -> str:
    """The shell command that opens a run in ``cnnbp inspect``."""
    return f"cnnbp inspect {shlex.quote(str(run_dir))}"


def resume_command(run_dir: Path) -> str:
    """The shell command that continues a run."""
    return f"cnnbp train --resume {shlex.quote(str(run_dir))}"


# ---- a run as Python objects ---------------------------------------------------------------------------


class Run:
    """A run folder as Python objects (``cnnbp.load_run(path)``, or what ``cnnbp.train`` returns).

    ``path`` is the folder, ``config`` its resolved config (a dict), ``metrics`` the rows of
    ``metrics.csv`` (one dict per epoch, epoch 0 the initial state), ``epochs`` the epochs that have a
    checkpoint, and ``checkpoint(n)`` loads one (``"last"`` the newest).  Everything is read when asked
    for, so a Run of a run still training shows what has been written so far.
    """

    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: no such run folder")
        if not (path / CONFIG).is_file():
            raise UserError(f"{path}: not a run folder (no {CONFIG})")
        self.path = path

    @property
    def config(self) -> dict[str, Any]:
        from cnnbp.yamlio import read_yaml

        return read_yaml(self.path / CONFIG)

    @property
    def metrics(self) -> list[dict[str, float]]:
        columns = read_metrics(self.path)
        rows = []
        for values in zip(*(columns[c] for c in METRIC_COLUMNS), strict=True):
            row = dict(zip(METRIC_COLUMNS, values, strict=True))
            rows.append({k: int(v) if k in _INT_COLUMNS else v for k, v in row.items()})
        return rows

    @property
    def steps(self) -> list[dict[str, float]]:
        """The rows of ``steps.csv``: one dict per optimiser step (``step, epoch, loss, lr``)."""
        columns = read_steps(self.path)
        rows = zip(*(columns[c] for c in STEP_COLUMNS), strict=True)
        return [dict(zip(STEP_COLUMNS, values, strict=True)) for values in rows]

    @property
    def status(self) -> dict[str, Any] | None:
        """``status.json``: how the run stands (``state``, ``reason``, ``epoch``, ``step``, ``best``)."""
        return read_status(self.path)

    @property
    def epochs(self) -> list[int]:
        return [e for e, _ in find_checkpoints(self.path)]

    def checkpoint(self, epoch: int | str = "last") -> Any:
        """The checkpoint of ``epoch`` (an int, ``"last"`` or ``"best"``) as a :class:`cnnbp.Checkpoint`."""
        from cnnbp.checkpoint import read_checkpoint

        return read_checkpoint(resolve_checkpoint(self.path, epoch))

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, epochs={self.epochs})"


def load_run(path: Path | str) -> Run:
    """The run in folder ``path``; a UserError when it is not one."""
    return Run(path)
