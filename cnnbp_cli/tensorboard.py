"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow needed): ``cnnbp export RUN
--format tensorboard`` and, with ``record.tensorboard: true``, live as the run trains.

What is written (``tensorboard --logdir DIR`` shows it):

* scalars per optimiser step (x = the step): ``step/loss`` (the batch's mean loss before the update) and
  ``step/lr`` (the rate the update used), from ``steps.csv``;
* scalars per epoch (x = the epoch): ``epoch/train_loss``, ``epoch/train_acc``, ``epoch/val_loss``,
  ``epoch/val_acc``, ``epoch/lr`` and ``epoch/seconds``, from ``metrics.csv`` (a value that was not
  measured, such as epoch 0's training loss, is left out rather than written as NaN);
* histograms at every checkpoint (x = its epoch): ``weights/<layer>/<param>``, ``grads/<layer>/<param>``,
  ``deltas/<layer>`` and ``activations/<layer>`` (the probe batch's, every layer; non-finite values left
  out; activations only from checkpoints that recorded them);
* the resolved config as text (``config``, step 0).

An export is written into a temporary folder beside its destination, read back (every event file's
records and checksums; every scalar and histogram written must be there with its value), and only then
moved into place: a failed or interrupted export leaves the destination as it was.

The live writer is a :class:`~cnnbp.runner.Callback` (:class:`LiveWriter`) writing into
``<run>/tensorboard/``; a resumed run rewrites that folder from the run's files up to its checkpoint
(``steps.csv`` is cut back there too), then goes on live.
"""

from __future__ import annotations

import math
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.errors import UserError
from cnnbp.runner import Callback, StartInfo, StepInfo
from cnnbp.runs import (
    CONFIG,
    METRIC_COLUMNS,
    checkpoint_path,
    find_checkpoints,
    read_metrics,
    read_steps,
    run_folder,
)

__all__ = [
    "INSTALL_HINT",
    "TB_FOLDER",
    "LiveWriter",
    "TensorBoardReport",
    "export_tensorboard",
    "read_events",
    "require_tensorboardx",
]

INSTALL_HINT = "pip install 'cnnbp[tensorboard]'"
TB_FOLDER = "tensorboard"  # the live writer's folder inside a run, and the export's default
EVENTS_PREFIX = "events.out.tfevents."
HIST_BINS = 64  # buckets of a histogram (tensorboardX merges its exponential ones down to these)
EPOCH_COLUMNS = tuple(c for c in METRIC_COLUMNS if c not in ("epoch", "step"))


def require_tensorboardx(what: str) -> Any:
    """The ``tensorboardX`` module, or a UserError saying how to install it (``what``: the option)."""
    try:
        import tensorboardX
    except ImportError:
        raise UserError(f"{what}: needs the tensorboardX package; {INSTALL_HINT}") from None
    return tensorboardX


# ---- writing -----------------------------------------------------------------------------------------


@dataclass
class Written:
    """What was written, to check it against what reads back: scalars by tag → {step: value}, histograms
    by tag → {step: number of values}, text tags."""

    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    histograms: dict[str, dict[int, int]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)


class EventWriter:
    """A tensorboardX ``SummaryWriter`` that writes cnnbp's steps, epochs and checkpoints (see the module
    docstring for the tags) and remembers what it wrote."""

    def __init__(self, folder: Path) -> None:
        tbx = require_tensorboardx("tensorboard")
        self.writer = tbx.SummaryWriter(logdir=str(folder), flush_secs=10)
        self.written = Written()

    def scalar(self, tag: str, value: float, step: int) -> None:
        if value is None or not math.isfinite(value):
            return  # not measured: TensorBoard draws NaN as a gap at best
        self.writer.add_scalar(tag, float(value), int(step))
        self.written.scalars.setdefault(tag, {})[int(step)] = float(value)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        arr = np.asarray(values, dtype=np.float64).ravel()
        arr = arr[np.isfinite(arr)]
        if not arr.size:
            return
        self.writer.add_histogram(tag, arr, int(step), max_bins=HIST_BINS)
        self.written.histograms.setdefault(tag, {})[int(step)] = int(arr.size)

    def step(self, step: int, loss: float, lr: float) -> None:
        self.scalar("step/loss", loss, step)
        self.scalar("step/lr", lr, step)

    def epoch(self, row: dict[str, float]) -> None:
        for column in EPOCH_COLUMNS:
            self.scalar(f"epoch/{column}", row.get(column, math.nan), int(row["epoch"]))

    def checkpoint(self, ck: Checkpoint) -> None:
        """Histograms of every layer's weights, gradients, deltas and activations at the checkpoint."""
        for group, source in (("weights", ck.weights), ("grads", ck.grads)):
            for layer, params in source.items():
                for key, value in params.items():
                    self.histogram(f"{group}/{layer}/{key}", value, ck.epoch)
        for group, arrays in (("deltas", ck.deltas), ("activations", ck.activations)):
            for layer in ck.layer_names:
                if layer in arrays:
                    self.histogram(f"{group}/{layer}", arrays[layer], ck.epoch)

    def config(self, text: str) -> None:
        body = "\n".join("    " + line for line in text.splitlines())  # a Markdown code block
        self.writer.add_text("config", body, 0)
        self.written.texts.append("config")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@dataclass(frozen=True)
class Source:
    """What an export writes: a run folder's files, or one checkpoint file on its own."""

    path: Path
    run_dir: Path | None
    checkpoints: list[Path]
    rows: list[dict[str, float]]
    steps: dict[str, list[float]]
    config: str


def load_source(target: Path | str) -> Source:
    """A run folder (its checkpoints, ``metrics.csv``, ``steps.csv``, ``config.yaml``), its checkpoints
    folder, or one checkpoint file (its ``/metrics`` and ``/config``)."""
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such run folder or checkpoint file")
    run_dir = run_folder(target)
    if target.is_file() or run_dir is None:
        ck = read_checkpoint(target)
        n = len(ck.history.get("epoch", []))
        rows = [{c: float(ck.history[c][i]) for c in METRIC_COLUMNS if c in ck.history} for i in range(n)]
        return Source(target, None, [target], rows, {}, ck.config)
    found = [p for _, p in find_checkpoints(run_dir)]
    if not found:
        raise UserError(f"{run_dir}: no checkpoints found (expected checkpoints/NNNN.h5 in a run folder)")
    columns = read_metrics(run_dir)
    rows = [dict(zip(METRIC_COLUMNS, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    config = (run_dir / CONFIG).read_text(encoding="utf-8") if (run_dir / CONFIG).is_file() else ""
    return Source(run_dir, run_dir, found, rows, read_steps(run_dir), config)


def write_source(writer: EventWriter, src: Source) -> list[Checkpoint]:
    """Everything of ``src`` into ``writer``; returns the checkpoints read (the last describes the run)."""
    if src.config:
        writer.config(src.config)
    steps = src.steps
    for s, loss, lr in zip(steps.get("step", []), steps.get("loss", []), steps.get("lr", []), strict=False):
        writer.step(int(s), loss, lr)
    for row in src.rows:
        writer.epoch(row)
    cks = []
    for path in src.checkpoints:
        ck = read_checkpoint(path)
        writer.checkpoint(ck)
        cks.append(ck)
    return cks


# ---- reading back ------------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file, each checked against its masked CRC-32C (UserError if damaged)."""
    from tensorboardX.record_writer import masked_crc32c

    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        if pos + 12 > len(data):
            raise UserError(f"{path}: truncated event file")
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        (len_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
        body = data[pos + 12 : pos + 12 + length]
        if masked_crc32c(data[pos : pos + 8]) != len_crc or len(body) != length:
            raise UserError(f"{path}: damaged event file (record at byte {pos})")
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])
        if masked_crc32c(body) != body_crc:
            raise UserError(f"{path}: damaged event file (record at byte {pos})")
        yield body
        pos += 16 + length


def read_events(folder: Path) -> Written:
    """Every scalar, histogram and text tag of the event files in ``folder`` (tensorboardX's protobufs)."""
    from tensorboardX.proto.event_pb2 import Event

    got = Written()
    for path in sorted(Path(folder).glob(EVENTS_PREFIX + "*")):
        for record in _records(path):
            event = Event.FromString(record)
            for v in event.summary.value:
                if v.HasField("histo"):
                    got.histograms.setdefault(v.tag, {})[int(event.step)] = int(v.histo.num)
                elif v.HasField("simple_value"):
                    got.scalars.setdefault(v.tag, {})[int(event.step)] = float(v.simple_value)
                elif v.tag.startswith("config"):
                    got.texts.append("config")
    return got


def verify(written: Written, got: Written) -> str | None:
    """None when every scalar (to float32), histogram (its number of values) and text written reads back;
    else what is missing or different."""
    for tag, points in written.scalars.items():
        for step, value in points.items():
            back = got.scalars.get(tag, {}).get(step)
            if back is None or np.float32(value) != np.float32(back):
                return f"scalar {tag} at step {step}: wrote {value!r}, read {back!r}"
    for tag, points in written.histograms.items():
        for step, n in points.items():
            if got.histograms.get(tag, {}).get(step) != n:
                return f"histogram {tag} at step {step}: {n} values written, not read back"
    if set(written.texts) - set(got.texts):
        return "the config text was not read back"
    return None


# ---- the export --------------------------------------------------------------------------------------


@dataclass
class TensorBoardReport:
    """What ``cnnbp export --format tensorboard`` did; ``--json`` prints it as one object."""

    format: str
    path: str
    bytes: int
    written: bool
    source: str
    run: str
    epochs: list[int]
    dtype: str
    files: int = 0
    scalars: int = 0
    scalar_tags: int = 0
    histograms: int = 0
    histogram_tags: int = 0
    steps: int = 0
    verified: bool = False
    problem: str | None = None
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_output(src: Source) -> Path:
    """``<run>/tensorboard``, or ``<checkpoint>-tensorboard`` beside a loose checkpoint file."""
    if src.run_dir is not None:
        return src.run_dir / TB_FOLDER
    return src.path.with_name(f"{src.path.stem}-{TB_FOLDER}")


def event_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob(EVENTS_PREFIX + "*")) if Path(folder).is_dir() else []


def check_output(path: Path, force: bool) -> None:
    """The destination must be a folder (or not exist, in an existing folder); event files already in it
    are replaced only with ``force``."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: is a file; --format tensorboard writes a folder of event files")
    if not path.parent.is_dir():
        raise UserError(f"{path}: the folder {path.parent} does not exist")
    if event_files(path) and not force:
        raise UserError(f"{path}: already holds TensorBoard event files; --force replaces them")


def export_tensorboard(
    target: Path | str, output: Path | str | None = None, *, force: bool = False, verify_files: bool = True
) -> TensorBoardReport:
    """Write a run (or one checkpoint) as TensorBoard event files into ``output`` (a folder; default
    ``<run>/tensorboard``), read them back, and move them into place.  ``report.ok`` is False (nothing
    moved) when they do not read back."""
    require_tensorboardx("--format tensorboard")
    src = load_source(target)
    dest = Path(output) if output is not None else default_output(src)
    check_output(dest, force)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        writer = EventWriter(tmp)
        try:
            cks = write_source(writer, src)
        finally:
            writer.close()
        report = _report(src, dest, cks, writer.written, event_files(tmp))
        if verify_files:
            report.problem = verify(writer.written, read_events(tmp))
            report.verified, report.ok = True, report.problem is None
        if report.ok:
            _move_into(tmp, dest)
            report.written = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _report(
    src: Source, dest: Path, cks: Sequence[Checkpoint], written: Written, files: list[Path]
) -> TensorBoardReport:
    last = cks[-1]
    return TensorBoardReport(
        format="tensorboard",
        path=str(dest),
        bytes=sum(p.stat().st_size for p in files),
        written=False,
        source=str(src.path),
        run=last.run_name,
        epochs=[ck.epoch for ck in cks],
        dtype=last.dtype,
        files=len(files),
        scalars=sum(len(v) for v in written.scalars.values()),
        scalar_tags=len(written.scalars),
        histograms=sum(len(v) for v in written.histograms.values()),
        histogram_tags=len(written.histograms),
        steps=len(src.steps.get("step", [])),
    )


def _move_into(tmp: Path, dest: Path) -> None:
    """The new event files into ``dest`` (created if needed), the old ones there removed first."""
    dest.mkdir(exist_ok=True)
    for old in event_files(dest):
        old.unlink()
    for new in event_files(tmp):
        os.replace(new, dest / new.name)


# ---- live: record.tensorboard ------------------------------------------------------------------------


class LiveWriter(Callback):
    """Writes a run's TensorBoard events as it trains (``record.tensorboard: true``): every step, every
    epoch, and the histograms of every checkpoint as it is written."""

    def __init__(self) -> None:
        self.writer: EventWriter | None = None
        self.run_dir: Path | None = None

    def on_start(self, info: StartInfo) -> None:
        self.run_dir = Path(info.run_dir)
        folder = self.run_dir / TB_FOLDER
        for old in event_files(folder):  # a resumed run: rewritten from its files, then live
            old.unlink()
        self.writer = EventWriter(folder)
        if info.start is not None and find_checkpoints(self.run_dir):
            write_source(self.writer, load_source(self.run_dir))
        else:
            config = self.run_dir / CONFIG
            if config.is_file():
                self.writer.config(config.read_text(encoding="utf-8"))
        self.writer.flush()

    def on_step(self, info: StepInfo) -> None:
        if self.writer is not None:
            self.writer.step(info.step, info.loss, info.lr)

    def on_epoch(self, row: dict[str, float]) -> None:
        if self.writer is None or self.run_dir is None:
            return
        self.writer.epoch(row)
        path = checkpoint_path(self.run_dir, int(row["epoch"]))
        if path.is_file():
            ck = read_checkpoint(path)
            if ck.step == int(row["step"]):  # the checkpoint of this very epoch end
                self.writer.checkpoint(ck)
        self.writer.flush()

    def on_stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
