"""``cnnbp evaluate``: a trained network's loss, accuracy and confusion matrix on a data set.

The network is a checkpoint's (:func:`choose_checkpoint`: the one ``--checkpoint`` names, by default
the run's best, or its last when the run has no validation metrics), rebuilt with
:meth:`~cnnbp.checkpoint.Checkpoint.network` and run in the ``eval`` phase, as validation runs.

The samples are, without ``data``, the run's own validation split (the source's test split when it
has one): exactly those ``val_loss`` and ``val_acc`` were measured on, so ``evaluate`` of the checkpoint
of epoch E gives that epoch's row of ``metrics.csv`` again.  With ``data``, another source: a config
file (its ``data`` section, paths relative to it), an ``.npz`` or HDF5 file (keys ``x_train``,
``y_train``[, ``x_test``, ``y_test``]) or an IDX folder (the four MNIST files), scaled by the run's
``data.scale``; then the source's test split when it has one, else all of its samples.

The class of an output row is its arg-max (a single output: ``> 0.5``), the true class a label or
the arg-max of a target vector, as training counts accuracy (:func:`cnnbp.core.trainer.correct_count`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.config import RunConfig, config_from_dict
from cnnbp.core.losses import LOSSES
from cnnbp.core.network import Sequential
from cnnbp.data import DataSpec, load_dataset, sniff
from cnnbp.errors import UserError
from cnnbp.files import json_number
from cnnbp.inspection import dataset_text
from cnnbp.runs import NoBestEpoch, Run, resolve_checkpoint, run_folder, run_monitor
from cnnbp.yamlio import read_yaml

__all__ = ["Evaluation", "choose_checkpoint", "evaluate", "predicted_class", "true_class"]



@dataclass
class Evaluation:
    """What :func:`evaluate` measured; ``confusion[i, j]`` counts samples of true class i predicted j."""

    checkpoint: Path
    epoch: int
    chosen: str  # how the checkpoint was chosen: "best (lowest val_loss)", "last", "epoch 3", ...
    data: str  # where the samples come from
    split: str  # "val", "test" or "all"
    samples: int
    loss_name: str
    loss: float  # mean per-sample loss
    accuracy: float
    confusion: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` document (numbers by the one JSON number rule)."""
        return {
            "checkpoint": str(self.checkpoint), "epoch": self.epoch, "chosen": self.chosen,
            "data": self.data, "split": self.split, "samples": self.samples, "loss_name": self.loss_name,
            "loss": json_number(self.loss), "accuracy": json_number(self.accuracy), "correct": self.correct,
            "confusion": self.confusion.tolist(), "notes": self.notes,
        }  # fmt: skip


# ---- the checkpoint -----------------------------------------------------------------------------------


def choose_checkpoint(target: Path | str | Run, checkpoint: str | int | None) -> tuple[Checkpoint, str]:
    """The checkpoint ``--checkpoint`` names (by the one resolver), and how it was chosen.

    Without one: a checkpoint file itself; a run's best (``record.monitor``), or its last when it has
    no validation metrics to pick the best by.
    """
    path = Path(target.path if isinstance(target, Run) else target)
    if checkpoint is not None:
        text = str(checkpoint).strip().lower()
        found = resolve_checkpoint(path, text)
        chosen = _best_words(path) if text == "best" else ("last" if text == "last" else f"epoch {text}")
        return read_checkpoint(found), chosen
    if path.is_file():
        return read_checkpoint(path), "the file given"
    run_dir = run_folder(path) or path
    try:
        return read_checkpoint(resolve_checkpoint(path, "best")), _best_words(run_dir)
    except NoBestEpoch:
        return read_checkpoint(resolve_checkpoint(path, "last")), "last (the run has no validation data)"


def _best_words(run_dir: Path) -> str:
    monitor = run_monitor(run_folder(Path(run_dir)) or run_dir)
    return f"best ({'lowest' if monitor == 'val_loss' else 'highest'} {monitor})"


def run_config(ck: Checkpoint) -> RunConfig:
    """The validated config of the run a checkpoint belongs to (its plugins loaded)."""
    return config_from_dict(ck.config_dict(), source=f"{ck.path}:/config")


# ---- the data -------------------------------------------------------------------------------------------


def source_of(path: Path) -> str | None:
    """The data source a path holds: ``idx`` (a folder), ``npz``, ``hdf5``; None for anything else (a
    YAML config).  Told apart by content, then by suffix."""
    if path.is_dir():
        return "idx"
    kind = sniff(path)
    if kind in ("npz", "hdf5"):
        return kind
    return {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5"}.get(path.suffix.lower())


def _data_config(cfg: RunConfig, data: Path | str) -> RunConfig:
    """The run's config with its data section replaced by ``data``'s (validated as a whole again)."""
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"--data: {path}: no such config, data file or folder")
    raw = dict(cfg.resolved)
    source = source_of(path)
    if source is not None:
        raw["data"] = {"source": source, "path": str(path.absolute()), "scale": cfg.data.scale}
        return config_from_dict(raw, source=str(path))
    other = read_yaml(path)
    if not isinstance(other.get("data"), dict):
        raise UserError(f"--data: {path}: a config needs a data section (data.source, ...)")
    raw["data"] = other["data"]
    return config_from_dict(raw, source=str(path), base_dir=path.parent)


def load_samples(cfg: RunConfig, net: Sequential, other: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """``(x, y, split)``: the validation/test split of ``cfg``'s data, or of other data (``other``)
    its test split, else all of it."""
    spec: DataSpec = cfg.data if not other else replace(cfg.data, val_fraction=0.0, limit=None)
    n_out = int(np.prod(net.output_shape))
    data = load_dataset(spec, cfg.model.input_shape, n_out, np.dtype(cfg.dtype), cfg.seed, cfg.base_dir)
    if data.val_is_test:
        return data.x_val, data.y_val, "test"
    if other:
        return data.x_train, data.y_train, "all"
    if not data.x_val.shape[0]:
        raise UserError(
            f"{dataset_text(cfg.resolved)}: the run has no validation split (data.val_fraction is 0); "
            "give --data to evaluate on other data"
        )
    return data.x_val, data.y_val, "val"


# ---- the numbers -------------------------------------------------------------------------------------


def predicted_class(out: np.ndarray) -> np.ndarray:
    """The class of each output row: its arg-max, or ``out > 0.5`` for a single output."""
    return (out[:, 0] > 0.5).astype(np.int64) if out.shape[1] == 1 else out.argmax(axis=1)


def true_class(y: np.ndarray) -> np.ndarray:
    """The class of each target: a label, the arg-max of a target vector, or ``y > 0.5`` for one output."""
    if y.ndim == 1:
        return y.astype(np.int64)
    return (y[:, 0] > 0.5).astype(np.int64) if y.shape[1] == 1 else y.argmax(axis=1)


def measure(net: Sequential, loss_name: str, x: np.ndarray, y: np.ndarray, batch: int = 256) -> tuple:
    """``(mean loss, accuracy, confusion)`` of ``net`` (eval phase) on ``(x, y)``, in batches."""
    loss = LOSSES[loss_name]()
    k = max(2, int(np.prod(net.output_shape)))
    confusion = np.zeros((k, k), dtype=np.int64)
    total = 0.0
    with net.in_phase("eval"), np.errstate(over="ignore", invalid="ignore"):
        for lo in range(0, x.shape[0], batch):
            out = net.forward(x[lo : lo + batch])
            total += float(loss.forward(out, y[lo : lo + batch]).sum())
            np.add.at(confusion, (true_class(y[lo : lo + batch]), predicted_class(out)), 1)
    n = x.shape[0]
    return total / n, float(np.trace(confusion)) / n, confusion


def evaluate(
    target: Path | str | Run, checkpoint: str | int | None = None, data: Path | str | None = None
) -> Evaluation:
    """Loss, accuracy and confusion matrix of a run's network (see the module docstring)."""
    ck, chosen = choose_checkpoint(target, checkpoint)
    cfg = run_config(ck)
    if data is not None:
        cfg = _data_config(cfg, data)
    net = ck.network()
    x, y, split = load_samples(cfg, net, data is not None)
    # the batches validation used (Trainer.evaluate), so the sums add up in the same order
    loss, accuracy, confusion = measure(net, ck.loss, x, y, max(cfg.train.batch_size, 256))
    notes = []
    if ck.interrupted:
        notes.append(f"checkpoint {ck.epoch} was written mid-epoch (interrupted)")
    return Evaluation(
        ck.path, ck.epoch, chosen, dataset_text(cfg.resolved), split, int(x.shape[0]), ck.loss, loss,
        accuracy, confusion, notes,
    )  # fmt: skip
