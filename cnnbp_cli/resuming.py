"""``cnnbp train --resume RUN``: continue a run from its last checkpoint, bit for bit.

What makes a resumed run identical to one that never stopped:

* weights and the optimiser's state (its type, step count and buffers) come from the checkpoint,
  exactly (same dtype);
* the step counter, the epoch and, for a checkpoint written mid-epoch (``interrupted``), the batches
  of that epoch already run and the epoch's running train-loss sum and correct count (``/resume``);
* the data order needs no saved state: epoch ``e`` visits ``default_rng([seed, e]).permutation(N)``,
  and the probe, the validation split and ``data.limit`` all derive from the seed too;
* the data itself is checked against the checkpoint's ``data_sha256``, and the config against the
  checkpoint's ``/config``.

The LAST checkpoint (highest epoch) is the source of truth.  A run folder without any checkpoint (a
run killed before checkpoint 0 was written) restarts from the beginning, which is the same thing.
Nothing in the run folder is written until the config, the checkpoint and the data are validated.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.config import config_from_dict
from cnnbp.core.errors import ParameterError
from cnnbp.core.network import Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.core.trainer import EpochProgress
from cnnbp.data import Dataset
from cnnbp.errors import UserError
from cnnbp.runs import CONFIG, METRIC_COLUMNS, find_checkpoints

#: config keys a resumed run may change without --force: the total number of epochs, and which
#: checkpoints stay on disk (neither changes a single number of the training)
FREE_KEYS = ("train.epochs", "record.keep")
_MAX_LISTED = 6


@dataclass
class StartState:
    """Where ``fit`` continues: the end of epoch ``epoch`` (``progress`` None) or inside it."""

    epoch: int
    step: int
    first_loss: float
    history: dict[str, list[float]]  # the metrics rows up to here (every column)
    progress: EpochProgress | None  # mid-epoch position; None: at the end of ``epoch``
    checkpoint: Path | None  # the checkpoint resumed from
    replace: bool  # that checkpoint is an interrupted one: write the complete one of its epoch

    @property
    def next_epoch(self) -> int:
        """The first epoch that still has work to do."""
        return self.epoch if self.progress is not None else self.epoch + 1


def find_run(target: str, out: Path) -> Path:
    """The run folder ``--resume`` names: a path, else a name under ``--out``."""
    path = Path(target).expanduser()
    if not path.exists() and not path.is_absolute() and (Path(out) / target).exists():
        path = Path(out) / target
    if not path.exists():
        raise UserError(f"--resume: {target}: no such run folder")
    if path.is_file() or path.name == "checkpoints":
        raise UserError(
            f"--resume: {target}: give the run folder (the one holding {CONFIG}), not what is in it"
        )
    if not (path / CONFIG).is_file():
        raise UserError(
            f"--resume: {path}: not a run folder (no {CONFIG}); a run killed before writing it never started"
        )
    return path


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on the run folder (``flock``; released when the process ends).

    Two processes training one run would interleave their checkpoints and metrics rows: resuming a
    run that is still training is refused.  Where ``flock`` is missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(run_dir, os.O_RDONLY)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot open the run folder ({e.strerror or e})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise UserError(
                f"{run_dir}: another cnnbp process is training this run right now; let it finish or stop "
                "it first"
            ) from None
        yield
    finally:
        os.close(fd)


def last_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The run's last checkpoint, fully read (None when there is none yet)."""
    found = find_checkpoints(run_dir)
    if not found:
        return None
    epoch, path = found[-1]
    try:
        ck = read_checkpoint(path)
    except UserError as e:
        before = f"; delete it to resume from {found[-2][1].name}" if len(found) > 1 else ""
        raise UserError(f"{e}{before}") from None
    if ck.epoch != epoch:
        raise UserError(f"{path}: damaged cnnbp checkpoint: it says epoch {ck.epoch}, its name says {epoch}")
    return ck


# ---- the config ----------------------------------------------------------------------------------------


def _flatten(value: Any, path: str, out: dict[str, Any]) -> None:
    """Key paths → leaf values; lists of mappings (layers) are walked, other lists are one value."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out[f"{path}#len"] = len(value)
        for i, v in enumerate(value):
            _flatten(v, f"{path}[{i}]", out)
    else:
        out[path] = value


def _same(a: Any, b: Any) -> bool:
    """Equal values: numbers by value (1 == 1.0, NaN == NaN), everything else by type and value."""
    if _number(a) and _number(b):
        return a == b or (math.isnan(a) and math.isnan(b))
    return type(a) is type(b) and a == b


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def config_changes(saved: dict, current: dict) -> list[str]:
    """The key paths whose values differ between two resolved configs, in a stable order."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten(saved, "", a)
    _flatten(current, "", b)
    changed = []
    for key in list(a) + [k for k in b if k not in a]:
        if key.endswith("#len"):
            if a.get(key) != b.get(key):
                changed.append(key[: -len("#len")])
            continue
        if key in a and key in b and _same(a[key], b[key]):
            continue
        changed.append(key)
    # a layer list of a new length already names itself; drop the entries that follow from it
    lists = [k for k in changed if f"{k}#len" in a or f"{k}#len" in b]
    changed = [k for k in changed if not any(k.startswith(f"{lst}[") for lst in lists)]
    return [k for k in changed if k not in FREE_KEYS]


def check_config(ck: Checkpoint, current: dict, force: bool) -> list[str]:
    """Refuse (unless ``force``) a config.yaml that differs from the checkpoint's; returns the changes.

    Both are compared as this cnnbp resolves them, so a key added since the checkpoint was written
    (``train.optimizer``, at its default) is no change.
    """
    saved = ck.config_dict()
    try:
        saved = config_from_dict(saved, source=f"{ck.path}:/config").resolved
    except UserError:
        pass  # a config this cnnbp no longer accepts: compare it as it was written
    changed = config_changes(saved, current)
    if changed and not force:
        listed = ", ".join(changed[:_MAX_LISTED])
        more = f" and {len(changed) - _MAX_LISTED} more" if len(changed) > _MAX_LISTED else ""
        raise UserError(
            f"{Path(ck.path).parent.parent / CONFIG}: changed since checkpoint {Path(ck.path).name}: "
            f"{listed}{more}; undo the change, or pass --force to resume with it (the run is then no "
            "longer reproducible from one config)"
        )
    return changed


# ---- the data -----------------------------------------------------------------------------------------


def data_fingerprint(data: Dataset) -> str:
    """SHA-256 over the shapes, dtypes and bytes of the training and validation arrays."""
    h = hashlib.sha256()
    for arr in (data.x_train, data.y_train, data.x_val, data.y_val):
        a = np.ascontiguousarray(arr)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        if a.size:
            h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


# ---- the state ----------------------------------------------------------------------------------------


def restore(net: Sequential, optimizer: Optimizer, ck: Checkpoint) -> None:
    """Copy the checkpoint's weights into ``net`` and its optimiser state into ``optimizer``, exactly.

    The optimiser must be of the checkpoint's type (its hyper-parameters may differ: a resume with
    ``--force`` after editing ``train.lr``), and every state buffer must fit the model.
    """
    try:
        net.set_parameters(ck.weights, same_dtype=True)
    except ParameterError as e:
        raise UserError(f"{ck.path}: /weights: {e}") from None
    try:
        net.set_state(ck.state)
    except ParameterError as e:
        raise UserError(f"{ck.path}: /state: {e}") from None
    saved = ck.optimizer
    if saved.type != optimizer.kind:
        raise UserError(
            f"{ck.path}: was trained with optimizer {saved.type}, the config now says {optimizer.kind}"
        )
    params = net.parameters()
    for name in optimizer.buffers:
        for lname, group in saved.state.get(name, {}).items():
            for key, v in group.items():
                w = params.get(lname, {}).get(key)
                if w is None or v.shape != w.shape or v.dtype != w.dtype:
                    raise UserError(
                        f"{ck.path}: optimizer {name} buffer {lname}.{key} does not match the model"
                    )
    optimizer.load_state_dict(saved.state)


def start_state(ck: Checkpoint | None, batches_per_epoch: int, data_sha256: str, force: bool) -> StartState:
    """Where a run resumed from ``ck`` continues (from the very start when ``ck`` is None)."""
    if ck is None:
        empty: dict[str, list[float]] = {c: [] for c in METRIC_COLUMNS}
        return StartState(-1, 0, math.nan, empty, None, None, False)
    where = f"{ck.path}: damaged cnnbp checkpoint"
    missing = [c for c in METRIC_COLUMNS if c not in ck.history]
    if missing:
        raise UserError(f"{where}: /metrics/{missing[0]} is missing")
    history = {c: [float(v) for v in np.asarray(ck.history[c]).ravel()] for c in METRIC_COLUMNS}
    epochs = [int(e) for e in history["epoch"]]
    if len({len(v) for v in history.values()}) != 1 or epochs != list(range(len(epochs))):
        raise UserError(f"{where}: /metrics does not hold one row per epoch from 0")
    r = ck.resume
    if r.data_sha256 != data_sha256 and not force:
        raise UserError(
            f"{ck.path}: the training data differs from the data this run was trained on (a data file "
            "changed since); restore it, or pass --force to resume on the new data"
        )
    if (not ck.interrupted) or r.epoch_complete:
        if len(epochs) != ck.epoch + 1:
            raise UserError(f"{where}: epoch {ck.epoch} but /metrics has {len(epochs)} rows")
        return StartState(ck.epoch, ck.step, r.first_loss, history, None, ck.path, ck.interrupted)
    # written in the middle of epoch ck.epoch: the remaining batches of that epoch run first
    if ck.epoch < 1 or len(epochs) != ck.epoch:
        raise UserError(f"{where}: interrupted in epoch {ck.epoch} but /metrics has {len(epochs)} rows")
    if r.batches_per_epoch != batches_per_epoch:
        raise UserError(
            f"{ck.path}: was written mid-epoch with {r.batches_per_epoch} batches per epoch, the run now "
            f"has {batches_per_epoch} (data or train.batch_size changed); cannot continue that epoch"
        )
    done = r.batches_done
    progress = EpochProgress(ck.epoch, done, r.loss_sum, r.n_correct)
    first = r.first_loss
    if not 0 <= done <= batches_per_epoch or ck.step != int(history["step"][-1]) + done:
        raise UserError(f"{where}: step {ck.step} does not match {done} batches into epoch {ck.epoch}")
    return StartState(ck.epoch, ck.step, first, history, progress, ck.path, True)
