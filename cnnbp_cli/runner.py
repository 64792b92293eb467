"""The training runner: a config (or a run to resume) → a run folder, driven by callbacks.

The loop over epochs, the checkpoint schedule, the probe batch, resuming and signal-safe saving live
here; nothing here prints or knows about terminals (the CLI and :func:`cnnbp.train` pass callbacks).

A run: :meth:`Session.new` (or :meth:`Session.resumed`) validates the config, loads the data, builds
the network and optimiser — everything that can be wrong is found before anything is written — and
:meth:`Session.run` creates the run folder and trains.

The probe batch is chosen once per run: ``np.random.default_rng([seed, PROBE_STREAM]).choice(N, n_probe,
replace=False)``, sorted, over the N training samples (after ``data.limit``); PROBE_STREAM is "probe" in
ASCII, so the probe draw never shares a stream with an epoch's shuffle (``default_rng([seed, epoch])``).

Every optimiser step is appended to ``steps.csv`` (its loss and the learning rate it used: ``train.lr``,
or ``train.schedule``'s rate of that (epoch, step), set on the optimiser before the step).  After every
epoch the best epoch (``record.monitor``) is updated, ``train.early_stopping`` may end the run (its
epoch is checkpointed), and ``record.keep`` drops checkpoints.  ``status.json`` says how the run stands
and, at the end, why it stopped.

Stopping: SIGINT (Ctrl-C) and SIGTERM set a flag that is read after every batch and at every epoch's
end; the run then saves its exact state as an ``interrupted`` checkpoint (unless the last checkpoint
already holds it) and raises :class:`Interrupted`.  A second signal stops at once, writing nothing
more but ``status.json`` (a checkpoint being written is abandoned, its temporary file removed).  Once
the last epoch's checkpoint is written the run is done: a signal then changes nothing.  Divergence (a
non-finite loss or gradient, or ``train.divergence_factor``) raises :class:`~cnnbp.core.trainer.Diverged`
with nothing written for the failing epoch.

Failing: a write that fails (a full or read-only disk, the folder removed) and a MemoryError end the
run with a one-line UserError, anything else with an :class:`~cnnbp.errors.InternalError` whose
traceback is appended to ``train.log``; ``status.json`` says ``failed`` when it still can be written.
Every checkpoint written before stays whole; a new run that fails before its checkpoint 0 is removed.
"""

from __future__ import annotations

import copy
import math
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnnbp.checkpoint import Checkpoint, ResumeRecord, checkpoint_bytes, read_checkpoint
from cnnbp.config import (
    EarlyStoppingSpec,
    RunConfig,
    build_loss,
    build_network,
    build_optimizer,
    build_schedule,
    check_memory,
    check_model,
    dump_config,
    load_config,
)
from cnnbp.core.errors import ParameterError, ShapeError
from cnnbp.core.losses import Loss
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.core.trainer import Diverged, EpochProgress, Trainer
from cnnbp.data import Dataset, load_dataset
from cnnbp.errors import InternalError, UserError, describe, out_of_memory, write_crash_log
from cnnbp.exporters import load_json, load_npz, params_file_kind
from cnnbp.files import write_atomic
from cnnbp.plugins import check_api
from cnnbp.resuming import (
    StartState,
    check_config,
    data_fingerprint,
    find_run,
    last_checkpoint,
    restore,
    run_lock,
    start_state,
)
from cnnbp.runs import (
    CONFIG,
    METRICS_CSV,
    MONITOR_MODES,
    STEPS_CSV,
    TRAIN_LOG,
    MetricsLog,
    StepsLog,
    best_epoch,
    checkpoint_path,
    create_run_dir,
    find_checkpoints,
    prune_checkpoints,
    read_status,
    remove_stale_tmp,
    resolve_checkpoint,
    write_config,
    write_status,
)

PROBE_STREAM = int.from_bytes(b"probe", "big")  # 0x70726f6265
#: the exit code of a run stopped by a signal: 128 + the signal number, as a shell reports it
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def check_smallest_batch(net: Sequential, n_train: int, batch_size: int) -> None:
    """UserError, before anything is written, when a layer that couples the samples of a batch cannot
    train on the smallest batch an epoch has (batchnorm on a last batch of one vector)."""
    if not any(layer.couples_batch for layer in net.layers) or n_train < 1:
        return
    smallest = min(batch_size, n_train, n_train % batch_size or batch_size)
    trial = copy.deepcopy(net)  # a training forward pass moves running statistics: not on the real one
    trial.set_rng(np.random.default_rng(0))
    try:
        with trial.in_phase("train"):
            trial.forward(np.zeros((smallest, *net.input_shape), dtype=net.dtype))
    except ShapeError as e:
        which = "each batch has" if smallest == batch_size else "the last batch of each epoch has"
        raise UserError(
            f"train.batch_size: {which} {smallest} sample{'s' * (smallest != 1)} ({n_train} training "
            f"samples in batches of {batch_size}), and layer {e}; choose another batch size"
        ) from None


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    """The optimiser updates of one epoch: the last batch may be short."""
    return -(-n_train // batch_size)


def choose_probe(n_train: int, n_probe: int, seed: int) -> np.ndarray:
    """Indices of the probe samples in the training set (sorted; at most ``n_train`` of them)."""
    rng = np.random.default_rng([seed, PROBE_STREAM])
    return np.sort(rng.choice(n_train, size=min(n_probe, n_train), replace=False)).astype(np.int64)


def n_outputs(output_shape: tuple[int, ...]) -> int:
    """The number of network outputs a target vector must have."""
    return int(np.prod(output_shape))


# ---- callbacks --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartInfo:
    """What a run is about to do, given to :meth:`Callback.on_start`."""

    run_dir: Path
    epochs: int  # the total the run trains to
    batches: int  # per epoch
    first_epoch: int  # the first epoch that still has work
    start: StartState | None  # where a resumed run continues (None: a new run)
    samples: int = 0  # training samples per epoch
    val_samples: int = 0  # validation samples (0: no validation data)
    scheduled: bool = False  # the learning rate follows train.schedule


@dataclass(frozen=True)
class StepInfo:
    """One optimiser step as :meth:`Callback.on_step` sees it, with the epoch's running means so far."""

    epoch: int
    batch: int  # counts from 1 within the epoch
    batches: int
    step: int  # counts from 1 over the whole run
    loss: float  # this batch's mean loss (before the update)
    lr: float  # the learning rate the update used
    mean_loss: float  # sample-weighted mean of the epoch's batch losses so far
    mean_acc: float  # fraction of the epoch's samples so far classified right


class Callback:
    """Receives training events; every method is optional.  An exception raised by a callback stops
    the run like any other error (a KeyboardInterrupt like Ctrl-C: the state is saved)."""

    def on_start(self, info: StartInfo) -> None:
        """Before epoch 1 (after checkpoint 0 of a new run)."""

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        """After each optimiser update; ``batch`` counts from 1, ``step`` over the whole run."""

    def on_step(self, info: StepInfo) -> None:
        """After each optimiser update (after ``on_batch``), with the lr and the epoch's running means."""

    def on_validate(self, epoch: int, samples: int) -> None:
        """Before the validation set is evaluated at the end of ``epoch`` (not without validation data)."""

    def on_epoch(self, row: dict[str, float]) -> None:
        """After each epoch's metrics row is logged (row 0: the initial state of a new run)."""

    def on_stop(self) -> None:
        """When training ends, normally or not (before the checkpoint of a stop is written)."""


# ---- signals ----------------------------------------------------------------------------------------


class _StopNow(BaseException):
    """Raised by the signal handler on a second signal: leave at once, save nothing more."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopAfterBatch(Exception):
    """Raised after a batch when a stop was requested, to unwind the training loop."""


class StopFlag:
    """The first SIGINT/SIGTERM sets ``signum``; the second raises :class:`_StopNow` at once.

    Should that exception land where Python swallows it (a finaliser, a weakref callback, a C library's
    callback), it is not reported there (:meth:`installed` filters it from ``sys.unraisablehook``) and
    the second signal is still noted: :meth:`check`, called after every batch and around every
    checkpoint write, raises it again.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.second: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        else:
            self.second = signum
            raise _StopNow(signum)

    def check(self) -> None:
        """Raise :class:`_StopNow` when a second signal came."""
        if self.second is not None:
            raise _StopNow(self.second)

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only), then restore the old."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals go to the main thread; a bare KeyboardInterrupt is still handled
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        old_hook = sys.unraisablehook

        def hook(unraisable: object) -> None:
            if not isinstance(getattr(unraisable, "exc_value", None), _StopNow):  # check() raises it
                old_hook(unraisable)

        sys.unraisablehook = hook
        for s in old:
            signal.signal(s, self.handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            sys.unraisablehook = old_hook


class Interrupted(Exception):
    """Training was stopped (Ctrl-C, SIGTERM); the state at that moment was saved when there was any new.

    ``checkpoint`` is the checkpoint written for the stop (None when nothing new needed saving, or when
    a second signal stopped at once: ``at_once``); ``signum`` the signal (SIGINT for a bare Ctrl-C).
    """

    def __init__(
        self,
        run_dir: Path | None,
        epoch: int,
        step: int,
        checkpoint: Path | None,
        signum: int,
        at_once: bool = False,
    ) -> None:
        if run_dir is None:
            text = "stopped at once (second signal) before the run folder was made; nothing was written"
        elif at_once:
            found = find_checkpoints(run_dir)
            last = f"; the last checkpoint is {found[-1][1]}" if found else "; no checkpoint was written"
            text = f"stopped at once (second signal){last}"
        else:
            saved = f"; saved {checkpoint}" if checkpoint else ""
            text = f"interrupted in epoch {epoch} at step {step}{saved}"
        super().__init__(text)
        self.run_dir, self.epoch, self.step = run_dir, epoch, step
        self.checkpoint, self.signum, self.at_once = checkpoint, signum, at_once

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


# ---- the end of a run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSummary:
    """What a finished run reports."""

    run_dir: Path
    epochs: int  # the total the config trains to
    first_epoch: int  # the first epoch this call ran (whole, or the rest of an interrupted one)
    last_epoch: int  # the last epoch finished (< epochs when the run stopped early)
    steps: int  # optimiser updates of the whole run
    steps_run: int  # of this call
    seconds: float  # wall time of this call
    train_seconds: float  # time spent in training passes only
    samples: int  # training samples processed by this call
    final: dict[str, float]  # the last epoch's metrics row
    best_val_acc: tuple[float, int]  # (value, epoch)
    best_val_loss: tuple[float, int]
    has_val: bool
    val_is_test: bool
    resumed: bool = False  # this call continued a run from a checkpoint
    stopped: str | None = None  # why the run stopped before its total (early stopping), else None
    monitor: str = "val_loss"  # record.monitor: which of the bests makes the best epoch

    @property
    def epochs_run(self) -> int:
        """Epochs (whole or the rest of one) run by this call."""
        return max(0, self.last_epoch - self.first_epoch + 1)


def best(
    rows: Sequence[dict[str, float]], key: str, pick: Callable[[Iterable[float]], float]
) -> tuple[float, int]:
    """The best finite value of a metric and its epoch (the earliest on ties); (nan, 0) when none."""
    finite = [(r[key], int(r["epoch"])) for r in rows if math.isfinite(r[key])]
    if not finite:
        return math.nan, 0
    value = pick(v for v, _ in finite)
    return value, next(e for v, e in finite if v == value)


def early_stop(rows: Sequence[dict[str, float]], spec: EarlyStoppingSpec) -> str | None:
    """Why the run should stop after its last row, by ``train.early_stopping`` (None: go on).

    Keras' and Lightning's rule over the trained epochs (epoch 0, the initial state, is not watched):
    an epoch improves when its ``monitor`` beats the best so far by more than ``min_delta`` (lower for
    val_loss, higher for val_acc; the first trained epoch always does); the run stops once ``patience``
    epochs in a row have not improved.
    """
    lower = MONITOR_MODES[spec.monitor] is min
    top, top_epoch, wait = math.nan, 0, 0
    for r in rows:
        if int(r["epoch"]) < 1:
            continue
        v = r[spec.monitor]
        gain = (top - v if lower else v - top) if math.isfinite(top) else math.inf
        if math.isfinite(v) and gain > spec.min_delta:
            top, top_epoch, wait = v, int(r["epoch"]), 0
        else:
            wait += 1
    if wait < spec.patience:
        return None
    by = f" by more than {spec.min_delta:g}" if spec.min_delta else ""
    shown = f"{100 * top:.1f}%" if spec.monitor.endswith("_acc") else f"{top:.4g}"
    epochs = "epoch" if wait == 1 else "epochs"
    return f"{spec.monitor} has not improved{by} for {wait} {epochs} (best {shown} at epoch {top_epoch})"


class _EarlyStop(Exception):
    """Raised after an epoch when ``train.early_stopping`` says the run is done."""


# ---- the loop ---------------------------------------------------------------------------------------


class _Fit:
    """One call of training a run folder: the epochs, the metrics and steps rows, the learning rate of
    every step, the checkpoints (and which stay), the status file, the stops."""

    def __init__(
        self, session: Session, run_dir: Path, callbacks: Sequence[Callback], stop: StopFlag
    ) -> None:
        cfg, data, start = session.cfg, session.data, session.start
        t = cfg.train
        self.cfg, self.data, self.run_dir, self.callbacks, self.stop = cfg, data, run_dir, callbacks, stop
        self.trainer = Trainer(
            session.net, session.loss, session.optimizer, batch_size=t.batch_size, shuffle=t.shuffle,
            seed=cfg.seed, divergence_factor=t.divergence_factor, threads=t.threads,
        )  # fmt: skip
        self.schedule, self.base_lr = build_schedule(cfg), t.lr
        self.n = data.x_train.shape[0]
        self.batches = batches_per_epoch(self.n, t.batch_size)
        self.probe = choose_probe(self.n, cfg.record.probe, cfg.seed)
        self.config_text = dump_config(cfg)
        self.sha = session.data_sha256
        remove_stale_tmp(run_dir)
        self.log = MetricsLog(run_dir / METRICS_CSV, history=None if start is None else start.history)
        self.steps_log = StepsLog(run_dir / STEPS_CSV, upto=None if start is None else start.step)
        self.rows = self.log.rows()
        self.fresh = start is None or start.checkpoint is None
        self.saved_step, self.first, self.replace, self.resume = -1, 1, -1, None
        self.carried = 0.0  # seconds an interrupted epoch had run before the stop (status.json)
        if not self.fresh:
            self.trainer.step, self.trainer.first_loss = start.step, start.first_loss
            self.saved_step, self.first = start.step, start.next_epoch
            self.replace = start.epoch if start.replace else -1
            self.resume = start.progress
            if start.progress is not None:
                self.carried = interrupted_seconds(run_dir, start.epoch, start.step)
        self.epoch, self.train_seconds, self.samples, self.steps_at_start = (
            self.first,
            0.0,
            0,
            self.trainer.step,
        )
        self.epoch_t0, self.last_lr, self.stopped = time.perf_counter(), math.nan, None
        self.done = False  # every epoch trained and checkpointed (or stopped early): signals change nothing
        self.doing = "at the start"  # what the run is doing, for a message about running out of memory
        self.best = best_epoch(self.log.history, cfg.record.monitor)
        self.start_info = StartInfo(
            run_dir, t.epochs, self.batches, self.first, start, self.n, data.x_val.shape[0],
            self.schedule is not None,
        )  # fmt: skip

    # ---- the learning rate ----------------------------------------------------------------------------
    def lr_for(self, epoch: int, step: int) -> float:
        """The learning rate of step ``step`` in epoch ``epoch`` (``train.schedule``, else ``train.lr``)."""
        return self.base_lr if self.schedule is None else self.schedule.lr(self.base_lr, epoch, step)

    def _set_lr(self, epoch: int, step: int) -> None:
        if self.schedule is not None:
            self.trainer.optimizer.lr = self.lr_for(epoch, step)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self, epoch: int, row: dict[str, float], *, interrupted: bool = False,
             progress: EpochProgress | None = None) -> Path:  # fmt: skip
        """Probe at the current weights and write checkpoint ``epoch``; then drop the checkpoints
        ``record.keep`` does not keep.

        ``progress`` (mid-epoch only) is where inside ``epoch`` the state stands; without it the state
        is the end of ``epoch``, whose metrics row is already logged.
        """
        t = self.trainer
        doing, self.doing = self.doing, f"while writing checkpoint {epoch} ({len(self.probe)} probe samples)"
        x, y = self.data.x_train[self.probe], self.data.y_train[self.probe]
        if len(self.probe):
            probe = t.probe(x, y)
            grads, deltas, activations = probe.grads, probe.deltas, probe.activations
        else:
            grads = {}
            deltas = {
                info.name: np.zeros((0, *info.output_shape), dtype=t.net.dtype) for info in t.net.summary()
            }
            activations = deltas
        if progress is None:
            done, loss_sum, n_correct = (self.batches if epoch else 0), 0.0, 0
        else:
            done, loss_sum, n_correct = progress.batches_done, progress.loss_sum, progress.n_correct
        resume = ResumeRecord(
            done, self.batches, progress is None, loss_sum, n_correct, t.first_loss, self.sha
        )
        self.steps_log.sync()  # every step up to this checkpoint is on disk before the checkpoint is
        # built in HDF5's memory without calls back into Python: a second signal stops it at once
        self.stop.check()
        data = checkpoint_bytes(
            run_name=self.run_dir.name, epoch=epoch, step=t.step, seed=self.cfg.seed, loss=self.cfg.loss,
            config=self.config_text, net=t.net, optimizer=t.optimizer, probe_x=x, probe_y=y,
            probe_index=self.probe, grads=grads, deltas=deltas, metrics=row, history=self.log.history,
            interrupted=interrupted, resume=resume, activations=activations,
        )  # fmt: skip
        self.stop.check()
        path = write_atomic(checkpoint_path(self.run_dir, epoch), data)
        del data
        self.saved_step = t.step
        if self.cfg.record.keep != "all":
            prune_checkpoints(self.run_dir, self.log.history, self.cfg.record.monitor, self.cfg.record.keep)
        self.doing = doing
        return path

    def save_stop(self) -> Path | None:
        """Save the state reached, if it is whole and not in the last checkpoint already."""
        t = self.trainer
        if t.mid_update or t.step == self.saved_step or not self.rows:
            return None
        logged = int(self.rows[-1]["epoch"])
        p = t.progress
        if p is None or p.epoch == logged:  # at the end of epoch `logged`, its row written
            return self.save(logged, self.rows[-1], interrupted=True)
        return self.save(p.epoch, {}, interrupted=True, progress=p)

    def status(self, state: str, reason: str | None = None, **fields: object) -> None:
        """Rewrite ``status.json``: the state, why it stopped, where it stands, the best epoch, and the
        shards each batch is cut into (``train.threads``)."""
        monitor = self.cfg.record.monitor
        top = {"monitor": monitor, "epoch": self.best[0], "value": self.best[1]} if self.best else None
        epoch = int(self.rows[-1]["epoch"]) if self.rows else 0
        val = {"samples": int(self.data.x_val.shape[0]), "test_split": bool(self.data.val_is_test)}
        fields = {"epoch": epoch, "step": self.trainer.step, "epochs": self.cfg.train.epochs, "best": top,
                  "val": val, "shards": self.trainer.shards, **fields}  # fmt: skip
        write_status(self.run_dir, state, reason=reason, **fields)

    # ---- epochs ---------------------------------------------------------------------------------------
    def on_batch(self, i: int, nb: int, batch_loss: float) -> None:
        t, bs = self.trainer, self.cfg.train.batch_size
        lr = float(t.optimizer.lr)
        self.samples += min(bs, self.n - (i - 1) * bs)
        self.steps_log.append(t.step, self.epoch, batch_loss, lr)
        self.last_lr = lr
        if i < nb:
            self._set_lr(self.epoch, t.step + 1)
        p = t.progress
        seen = min(p.batches_done * bs, self.n)
        info = StepInfo(self.epoch, i, nb, t.step, batch_loss, lr, p.loss_sum / seen, p.n_correct / seen)
        for c in self.callbacks:
            c.on_batch(self.epoch, i, nb, batch_loss, t.step)
            c.on_step(info)
        self.stop.check()
        if self.stop.signum is not None:
            raise _StopAfterBatch

    def initial(self) -> None:
        """Checkpoint 0 and the metrics row of epoch 0 of a new run: its initial state."""
        t0 = time.perf_counter()
        self.doing = "while evaluating the initial weights"
        val_loss, val_acc = self.trainer.evaluate(self.data.x_val, self.data.y_val)
        row = {
            "epoch": 0, "step": 0, "train_loss": math.nan, "train_acc": math.nan, "val_loss": val_loss,
            "val_acc": val_acc, "lr": self.lr_for(1, 1), "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        self.log.append(row)
        self.rows.append(row)
        self.best = best_epoch(self.log.history, self.cfg.record.monitor)
        self.save(0, row)

    def one_epoch(self, epoch: int) -> None:
        t = self.trainer
        self.epoch, self.last_lr, self.doing = epoch, math.nan, f"in epoch {epoch}"
        t0 = time.perf_counter()
        progress, self.resume = self.resume, None
        self.epoch_t0, self.carried = t0 - (self.carried if progress is not None else 0.0), 0.0
        self._set_lr(epoch, t.step + 1)
        stats = t.run_epoch(self.data.x_train, self.data.y_train, epoch, self.on_batch, progress)
        self.train_seconds += time.perf_counter() - t0
        if self.data.x_val.shape[0]:
            for c in self.callbacks:
                c.on_validate(epoch, self.data.x_val.shape[0])
        val_loss, val_acc = t.evaluate(self.data.x_val, self.data.y_val)
        lr = self.last_lr if math.isfinite(self.last_lr) else self.lr_for(epoch, t.step)
        row = {"epoch": epoch, "step": t.step, "train_loss": stats.train_loss, "train_acc": stats.train_acc,
               "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
               "seconds": time.perf_counter() - self.epoch_t0}  # fmt: skip
        self.log.append(row)
        self.rows.append(row)
        self.best = best_epoch(self.log.history, self.cfg.record.monitor)
        stopping = self.cfg.train.early_stopping
        reason = early_stop(self.rows, stopping) if stopping is not None else None
        epochs, every = self.cfg.train.epochs, max(1, self.cfg.record.every)
        if epoch % every == 0 or epoch == epochs or epoch == self.replace or reason:
            self.save(epoch, row)
        if reason is not None and epoch < epochs:
            self.stopped = f"stopped early at epoch {epoch}: {reason}"
        # the run's last checkpoint is written: a signal from now on changes nothing
        self.done = epoch == epochs or self.stopped is not None
        for c in self.callbacks:
            c.on_epoch(row)
        if self.stopped is not None:
            raise _EarlyStop
        if self.stop.signum is not None and not self.done:
            raise _StopAfterBatch

    def run(self) -> RunSummary:
        """Train to ``train.epochs``; see the module docstring for stops and divergence.

        Once the last epoch's checkpoint is written (or early stopping ended the run) the run is done:
        a signal after that changes nothing, and the summary is returned.  A failure records
        ``state: failed`` in ``status.json`` when it still can and is raised as a UserError (a
        MemoryError one too, naming the epoch); the status of a stop is written when it can be, and
        never replaces the stop itself.
        """
        started = self.started = time.perf_counter()
        try:
            try:
                self._train()
                self.done = True
                self.status("finished")
            except _EarlyStop:
                self.done = True
                self.status("early_stopped", self.stopped)
        except (_StopAfterBatch, KeyboardInterrupt):
            self._stopped()
        except _StopNow as e:
            if not self.done:
                self.quiet_status("interrupted", "stopped at once (second signal)")
                raise Interrupted(
                    self.run_dir, self.epoch, self.trainer.step, None, e.signum, at_once=True
                ) from None
            self.quiet_status("early_stopped" if self.stopped else "finished", self.stopped)
        except Diverged as e:
            self.quiet_status("diverged", str(e), epoch=e.epoch, step=e.step)
            raise
        except Exception as e:  # a write that failed (a UserError), no memory, or a bug
            error = self._failed(e)
            if error is e:
                raise
            raise error from None
        finally:
            for c in self.callbacks:
                c.on_stop()
            self.log.close()
            self.steps_log.close()
        return self.summary(time.perf_counter() - started)

    def _train(self) -> None:
        self.status("training")
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is checked
            if self.fresh:
                self.initial()
            for c in self.callbacks:
                c.on_start(self.start_info)
            if self.fresh:
                for c in self.callbacks:
                    c.on_epoch(self.rows[0])
            if self.stop.signum is not None and self.first <= self.cfg.train.epochs:
                raise _StopAfterBatch
            for epoch in range(self.first, self.cfg.train.epochs + 1):
                self.one_epoch(epoch)

    def _failed(self, e: Exception) -> Exception:
        """The error a failure ends the run with (a MemoryError becomes a UserError saying what the run
        was doing), recorded as ``failed`` in ``status.json`` when it can be."""
        error = out_of_memory(e, self.doing) if isinstance(e, MemoryError) else e
        self.quiet_status("failed", str(error) if isinstance(error, UserError) else describe(error))
        return error

    def quiet_status(self, state: str, reason: str | None = None, **fields: object) -> None:
        """:meth:`status`, when it can be written: a stop or failure is reported whatever the disk says."""
        try:
            self.status(state, reason, **fields)
        except UserError:
            pass

    def _stopped(self) -> None:
        """Save the state of a stop, record it in ``status.json`` and raise :class:`Interrupted`."""
        step = self.trainer.step
        try:
            for c in self.callbacks:
                c.on_stop()
            path = self.save_stop()
        except _StopNow as e:  # a second signal while saving: the temporary file is gone, earlier ones intact
            self.quiet_status("interrupted", "stopped at once (second signal)")
            raise Interrupted(self.run_dir, self.epoch, step, None, e.signum, at_once=True) from None
        except Exception as e:  # the state could not be saved: a full disk, no memory
            error = self._failed(e)
            if error is e:
                raise
            raise error from None
        error = Interrupted(self.run_dir, self.epoch, step, path, self.stop.signum or signal.SIGINT)
        p = self.trainer.progress
        logged = int(self.rows[-1]["epoch"]) if self.rows else -1
        mid = p is not None and p.epoch == self.epoch and logged < self.epoch
        extra = {"epoch_seconds": time.perf_counter() - self.epoch_t0} if mid else {}
        self.quiet_status("interrupted", str(error), epoch=self.epoch, step=step, **extra)
        raise error from None

    def summary(self, seconds: float) -> RunSummary:
        return RunSummary(
            run_dir=self.run_dir,
            epochs=self.cfg.train.epochs,
            first_epoch=self.first,
            last_epoch=int(self.rows[-1]["epoch"]),
            steps=self.trainer.step,
            steps_run=self.trainer.step - self.steps_at_start,
            seconds=seconds,
            train_seconds=self.train_seconds,
            samples=self.samples,
            final=self.rows[-1],
            best_val_acc=best(self.rows, "val_acc", max),
            best_val_loss=best(self.rows, "val_loss", min),
            has_val=self.data.x_val.shape[0] > 0,
            val_is_test=self.data.val_is_test,
            resumed=not self.fresh,
            stopped=self.stopped,
            monitor=self.cfg.record.monitor,
        )


def interrupted_seconds(run_dir: Path, epoch: int, step: int) -> float:
    """Seconds epoch ``epoch`` had run when the run was interrupted at ``step`` (``status.json``), so the
    resumed epoch's ``seconds`` counts both parts; 0 when the status file says otherwise."""
    status = read_status(run_dir) or {}
    same = (status.get("state"), status.get("epoch"), status.get("step")) == ("interrupted", epoch, step)
    value = status.get("epoch_seconds")
    return float(value) if same and isinstance(value, (int, float)) and math.isfinite(value) else 0.0


# ---- sessions: everything checked, then trained -----------------------------------------------------


def _unsharded_if_older(cfg: RunConfig, ck: Checkpoint) -> RunConfig:
    """A run from before ``train.threads`` existed computed every batch whole: it goes on with one
    shard (``threads: 1``), so it continues bit for bit; ``auto`` could cut its batches in two."""
    train = ck.config_dict().get("train")
    if not isinstance(train, dict) or "threads" in train:
        return cfg
    cfg.resolved["train"]["threads"] = 1
    return replace(cfg, train=replace(cfg.train, threads=1))


@dataclass
class Session:
    """A run ready to train: config, data, network and optimiser built and checked, nothing written.

    ``run_dir`` is None for a new run until :meth:`run` creates it; ``complete`` is True when a resumed
    run already reached its total (``run`` then does nothing).  Use it as a context manager (a resumed
    run's folder is locked from the moment it is opened until the session closes).
    """

    cfg: RunConfig
    infos: list[LayerInfo]
    data: Dataset
    net: Sequential
    loss: Loss
    optimizer: Optimizer
    start: StartState | None = None
    run_dir: Path | None = None
    complete: bool = False
    complete_reason: str = ""  # why a resumed run has nothing to do (its total reached, or it stopped early)
    data_sha256: str = ""
    _locks: ExitStack | None = None

    @classmethod
    def new(
        cls, config: Path | dict | None = None, overrides: Sequence[str] = (), *, name: str | None = None,
        epochs: int | None = None, seed: int | None = None, plugins: Sequence[str] = (),
    ) -> Session:  # fmt: skip
        """A new run of ``config`` (a YAML path, a dict in the config format, or None: the default)."""
        if isinstance(config, dict):
            cfg = _config_of_dict(config, overrides, name=name, epochs=epochs, seed=seed, plugins=plugins)
        else:
            cfg = load_config(config, list(overrides), name=name, epochs=epochs, seed=seed, plugins=plugins)
        session = cls._build(cfg)
        if cfg.model.init_from:
            load_initial_weights(session.net, cfg.model.init_from)
        return session

    @classmethod
    def resumed(cls, run: str | Path, out: Path = Path("runs"), *, epochs: int | None = None,
                force: bool = False) -> Session:  # fmt: skip
        """The run ``run`` (a folder, or a name under ``out``), continued from its last checkpoint."""
        run_dir = find_run(str(run), Path(out))
        locks = ExitStack()
        try:
            locks.enter_context(run_lock(run_dir))  # refuse a run another process is training
            cfg = load_config(run_dir / CONFIG, epochs=epochs)
            ck = last_checkpoint(run_dir)
            if ck is not None:
                check_config(ck, cfg.resolved, force)
                cfg = _unsharded_if_older(cfg, ck)
            session = cls._build(cfg)
            session.run_dir, session._locks = run_dir, locks
            batches = batches_per_epoch(session.data.x_train.shape[0], cfg.train.batch_size)
            session.start = start_state(ck, batches, session.data_sha256, force)
            if ck is not None:
                restore(session.net, session.optimizer, ck)
            elif cfg.model.init_from:  # resumed before checkpoint 0: the run starts over
                load_initial_weights(session.net, cfg.model.init_from)
            session._check_total(epochs)
            if session.complete:  # nothing to train; what a run killed mid-write left is cleared all the same
                remove_stale_tmp(run_dir)
            return session
        except BaseException:
            locks.close()
            raise

    @classmethod
    def _build(cls, cfg: RunConfig) -> Session:
        infos = check_model(cfg)
        if cfg.record.tensorboard:
            from cnnbp.tensorboard import require_tensorboardx

            require_tensorboardx("record.tensorboard")
        dtype = np.dtype(cfg.dtype)
        data = load_dataset(cfg.data, cfg.model.input_shape, n_outputs(infos[-1].output_shape), dtype,
                            cfg.seed, cfg.base_dir)  # fmt: skip
        check_memory(cfg, infos, data.x_train.shape[0], data.x_val.shape[0])  # the probe's size is known now
        net = build_network(cfg).build(np.random.default_rng(cfg.seed), dtype)
        check_api(net, {layer.name: spec.path for spec in cfg.model.layers for layer in net.layers
                        if layer.name.split(".")[0] == spec.name})  # fmt: skip
        check_smallest_batch(net, data.x_train.shape[0], cfg.train.batch_size)
        stopping = cfg.train.early_stopping
        if stopping is not None and data.x_val.shape[0] == 0:
            raise UserError(
                f"train.early_stopping: watches {stopping.monitor}, but the run has no validation data "
                f"(data.val_fraction is 0 and {data.description} has no test split)"
            )
        return cls(
            cfg, infos, data, net, build_loss(cfg), build_optimizer(cfg), data_sha256=data_fingerprint(data)
        )

    def _check_total(self, epochs: int | None) -> None:
        start, total, stopping = self.start, self.cfg.train.epochs, self.cfg.train.early_stopping
        if start is None or start.checkpoint is None:
            return
        if start.progress is None and stopping is not None and 1 <= start.epoch < total:
            columns = start.history
            rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
            reason = early_stop(rows, stopping)
            if reason is not None:
                self.complete = True
                self.complete_reason = f"stopped early at epoch {start.epoch}: {reason}"
                return
        if start.next_epoch <= total:
            return
        if start.epoch > total:
            raise UserError(
                f"--epochs: {self.run_dir} is already at epoch {start.epoch}; give a total of at least "
                f"{start.epoch} epochs"
            )
        self.complete = True
        self.complete_reason = f"complete at epoch {start.epoch} of {total}"

    def run(
        self, out: Path = Path("runs"), callbacks: Sequence[Callback] = (), stop: StopFlag | None = None
    ) -> RunSummary | None:
        """Create the run folder (a new run) and train; None when a resumed run had nothing to do.

        Raises :class:`Interrupted` (state saved) on a signal, ``Diverged`` on divergence, a UserError
        for a failure the user can act on (a write that failed: a full or read-only disk; too little
        memory: a MemoryError becomes one) and :class:`~cnnbp.errors.InternalError` for anything else,
        a bug (its traceback is appended to the run's ``train.log``).  A new run that fails before its
        checkpoint 0 leaves no folder behind: it never started.
        """
        if self.complete:
            return None
        if self._locks is None:
            self._locks = ExitStack()
        stop = stop or StopFlag()
        if self.cfg.record.tensorboard:  # the live TensorBoard writer is one more callback
            from cnnbp.tensorboard import LiveWriter

            callbacks = [*callbacks, LiveWriter()]
        created, fit = self.run_dir is None, None
        try:
            with stop.installed():
                self._open_folder(out)
                fit = _Fit(self, self.run_dir, callbacks, stop)
                return fit.run()
        except _StopNow as e:  # a second signal outside the training loop (just before or after it)
            if fit is not None and fit.done:
                return fit.summary(time.perf_counter() - fit.started)
            raise Interrupted(self.run_dir, 0, 0, None, e.signum, at_once=True) from None
        except (Interrupted, Diverged):
            raise
        except Exception as e:  # noqa: BLE001 - every failure ends as a UserError or an InternalError
            raise self._failure(e, created) from None

    def _open_folder(self, out: Path) -> None:
        """Create a new run's folder (locked, with its ``config.yaml``), or bring a resumed run's
        ``config.yaml`` up to date (the new total of --epochs, or a change made with --force)."""
        config_text = dump_config(self.cfg)
        if self.run_dir is None:
            self.run_dir = create_run_dir(out, self.cfg.name)
            self._locks.enter_context(run_lock(self.run_dir))
            write_config(self.run_dir, config_text)
            return
        try:
            same = (self.run_dir / CONFIG).read_text(encoding="utf-8") == config_text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:
            write_config(self.run_dir, config_text)

    def _failure(self, e: Exception, created: bool) -> Exception:
        """What a run that failed with ``e`` raises (see :meth:`run`); a new run's folder without a
        checkpoint is removed first."""
        run_dir = self.run_dir
        found = find_checkpoints(run_dir) if run_dir is not None and run_dir.is_dir() else []
        if created and run_dir is not None and not found:
            shutil.rmtree(run_dir, ignore_errors=True)
            self.run_dir = run_dir = None
        if isinstance(e, MemoryError):
            e = out_of_memory(e)
        elif isinstance(e, OSError):
            e = UserError(f"{e.filename or run_dir}: {e.strerror or e}")
        if isinstance(e, UserError):
            return UserError(f"{e}; the last checkpoint is {found[-1][1]}") if found else e
        return InternalError(e, write_crash_log(e, None if run_dir is None else run_dir / TRAIN_LOG))

    def close(self) -> None:
        if self._locks is not None:
            self._locks.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _config_of_dict(raw: dict, overrides: Sequence[str], *, name: str | None, epochs: int | None,
                    seed: int | None, plugins: Sequence[str] = ()) -> RunConfig:  # fmt: skip
    """A config given as a dict (relative paths against the current folder), overrides and flags applied."""
    import copy

    from cnnbp.config import config_from_dict
    from cnnbp.yamlio import apply_override

    raw = copy.deepcopy(raw)
    for text in overrides:
        apply_override(raw, text)
    for key, value in (("name", name), ("seed", seed)):
        if value is not None:
            raw[key] = value
    if epochs is not None:
        raw.setdefault("train", {})
        if not isinstance(raw["train"], dict):
            raise UserError("train: expected a mapping of keys")
        raw["train"]["epochs"] = epochs
    return config_from_dict(raw, source="<dict>", base_dir=Path.cwd(), plugins=plugins)


def load_initial_weights(net: Sequential, source: str) -> Path:
    """Copy every parameter of ``net`` from ``model.init_from``, and its buffers when the source has
    them, and return the file read.

    ``source`` is a checkpoint file, a run folder (its last checkpoint; ``RUN:best``, ``RUN:last`` or
    ``RUN:N`` another, by the one resolver), or an ``.npz`` / ``.json`` parameter file from ``cnnbp
    export`` (told apart by content, then suffix).  Buffers (batchnorm's
    running statistics) are copied from a source that holds any: checkpoints and exports do; an export
    written before buffers were exported holds none, and the network keeps its initial ones.  Names and
    shapes are checked before anything is copied (all or nothing); a mismatch is a UserError naming the
    layer and both shapes.  Values are cast to the network's dtype.
    """
    path, which = Path(source), None
    head, sep, tail = str(source).rpartition(":")
    if sep and not path.exists() and (tail in ("best", "last") or tail.isdigit()):
        path, which = Path(head), tail  # RUN:best, RUN:last, RUN:N
    try:
        kind = params_file_kind(path) if which is None else None
        if kind is not None:
            params, state, _ = load_npz(path) if kind == "npz" else load_json(path)
        else:
            path = resolve_checkpoint(path, which)
            ck = read_checkpoint(path)
            params, state = ck.weights, ck.state
    except UserError as e:
        raise UserError(f"model.init_from: {e}") from None
    before = {l: {k: v.copy() for k, v in g.items()} for l, g in net.parameters().items()}
    try:
        net.set_parameters(params)  # first: its messages name a wrong architecture best
        if state:
            net.set_state(state)
    except ParameterError as e:
        net.set_parameters(before)  # all or nothing: the buffers did not fit, put the parameters back
        raise UserError(f"model.init_from: {path}: {e}") from None
    return path
