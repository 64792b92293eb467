"""The training runner: a config (or a run to resume) → a run folder, driven by callbacks.

The loop over epochs, the checkpoint schedule, the probe batch, resuming and signal-safe saving live
here; nothing here prints or knows about terminals (the CLI and :func:`cnnbp.train` pass callbacks).

A run: :meth:`Session.new` (or :meth:`Session.resumed`) validates the config, loads the data, builds
the network and optimiser — everything that can be wrong is found before anything is written — and
:meth:`Session.run` creates the run folder and trains.

The probe batch is chosen once per run: ``np.random.default_rng([seed, PROBE_STREAM]).choice(N, n_probe,
replace=False)``, sorted, over the N training samples (after ``data.limit``); PROBE_STREAM is "probe" in
ASCII, so the probe draw never shares a stream with an epoch's shuffle (``default_rng([seed, epoch])``).

Stopping: SIGINT (Ctrl-C) and SIGTERM set a flag that is read after every batch and at every epoch's
end; the run then saves its exact state as an ``interrupted`` checkpoint (unless the last checkpoint
already holds it) and raises :class:`Interrupted`.  A second signal stops at once, writing nothing
more (a checkpoint being written is abandoned, its temporary file removed).  Divergence (a non-finite
loss or gradient, or ``train.divergence_factor``) raises :class:`~cnnbp.core.trainer.Diverged` with
nothing written for the failing epoch.
"""

from __future__ import annotations

import copy
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnbp.checkpoint import ResumeRecord, checkpoint_bytes, read_checkpoint
from cnnbp.config import (
    RunConfig,
    build_loss,
    build_network,
    build_optimizer,
    check_model,
    dump_config,
    load_config,
)
from cnnbp.core.errors import ParameterError, ShapeError
from cnnbp.core.losses import Loss
from cnnbp.core.network import LayerInfo, Sequential
from cnnbp.core.optim import Optimizer
from cnnbp.core.trainer import EpochProgress, Trainer
from cnnbp.data import Dataset, load_dataset
from cnnbp.errors import UserError
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
    MetricsLog,
    checkpoint_path,
    create_run_dir,
    find_checkpoints,
    remove_stale_tmp,
    resolve_checkpoint,
    write_config,
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


class Callback:
    """Receives training events; every method is optional.  An exception raised by a callback stops
    the run like any other error (a KeyboardInterrupt like Ctrl-C: the state is saved)."""

    def on_start(self, info: StartInfo) -> None:
        """Before epoch 1 (after checkpoint 0 of a new run)."""

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        """After each optimiser update; ``batch`` counts from 1, ``step`` over the whole run."""

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
    """The first SIGINT/SIGTERM sets ``signum``; the second raises :class:`_StopNow` at once (or, inside
    :meth:`deferred`, as soon as the block ends)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._defer = 0
        self._pending: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        elif self._defer:
            self._pending = signum
        else:
            raise _StopNow(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block a second signal must not interrupt from inside (h5py's C callbacks would swallow
        the exception); the stop happens right after it."""
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
            if not self._defer and self._pending is not None:
                raise _StopNow(self._pending)

    @contextmanager
    def installed(self) -> Iterator[StopFlag]:
        """Handle SIGINT and SIGTERM while the block runs (main thread only), then restore the old."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals go to the main thread; a bare KeyboardInterrupt is still handled
            return
        old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in old:
            signal.signal(s, self.handle)
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Interrupted(Exception):
    """Training was stopped (Ctrl-C, SIGTERM); the state at that moment was saved when there was any new.

    ``checkpoint`` is the checkpoint written for the stop (None when nothing new needed saving, or when
    a second signal stopped at once: ``at_once``); ``signum`` the signal (SIGINT for a bare Ctrl-C).
    """

    def __init__(
        self,
        run_dir: Path,
        epoch: int,
        step: int,
        checkpoint: Path | None,
        signum: int,
        at_once: bool = False,
    ) -> None:
        if at_once:
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
    epochs: int  # the total trained to
    epochs_run: int  # epochs (whole or the rest of one) run by this call
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


def best(
    rows: Sequence[dict[str, float]], key: str, pick: Callable[[Iterable[float]], float]
) -> tuple[float, int]:
    """The best finite value of a metric and its epoch (the earliest on ties); (nan, 0) when none."""
    finite = [(r[key], int(r["epoch"])) for r in rows if math.isfinite(r[key])]
    if not finite:
        return math.nan, 0
    value = pick(v for v, _ in finite)
    return value, next(e for v, e in finite if v == value)


# ---- the loop ---------------------------------------------------------------------------------------


class _Fit:
    """One call of training a run folder: the epochs, the metrics rows, the checkpoints, the stops."""

    def __init__(
        self, session: Session, run_dir: Path, callbacks: Sequence[Callback], stop: StopFlag
    ) -> None:
        cfg, data, start = session.cfg, session.data, session.start
        t = cfg.train
        self.cfg, self.data, self.run_dir, self.callbacks, self.stop = cfg, data, run_dir, callbacks, stop
        self.trainer = Trainer(
            session.net, session.loss, session.optimizer, batch_size=t.batch_size, shuffle=t.shuffle,
            seed=cfg.seed, divergence_factor=t.divergence_factor,
        )  # fmt: skip
        self.n = data.x_train.shape[0]
        self.batches = batches_per_epoch(self.n, t.batch_size)
        self.probe = choose_probe(self.n, cfg.record.probe, cfg.seed)
        self.config_text = dump_config(cfg)
        self.sha = session.data_sha256
        remove_stale_tmp(run_dir)
        self.log = MetricsLog(run_dir / METRICS_CSV, history=None if start is None else start.history)
        self.rows = self.log.rows()
        self.fresh = start is None or start.checkpoint is None
        self.saved_step, self.first, self.replace, self.resume = -1, 1, -1, None
        if not self.fresh:
            self.trainer.step, self.trainer.first_loss = start.step, start.first_loss
            self.saved_step, self.first = start.step, start.next_epoch
            self.replace = start.epoch if start.replace else -1
            self.resume = start.progress
        self.epoch, self.train_seconds, self.samples, self.steps_at_start = (
            self.first,
            0.0,
            0,
            self.trainer.step,
        )
        self.start_info = StartInfo(run_dir, t.epochs, self.batches, self.first, start)

    # ---- checkpoints -----------------------------------------------------------------------------
    def save(self, epoch: int, row: dict[str, float], *, interrupted: bool = False,
             progress: EpochProgress | None = None) -> Path:  # fmt: skip
        """Probe at the current weights and write checkpoint ``epoch``.

        ``progress`` (mid-epoch only) is where inside ``epoch`` the state stands; without it the state
        is the end of ``epoch``, whose metrics row is already logged.
        """
        t = self.trainer
        x, y = self.data.x_train[self.probe], self.data.y_train[self.probe]
        if len(self.probe):
            probe = t.probe(x, y)
            grads, deltas = probe.grads, probe.deltas
        else:
            grads = {}
            deltas = {
                info.name: np.zeros((0, *info.output_shape), dtype=t.net.dtype) for info in t.net.summary()
            }
        if progress is None:
            done, loss_sum, n_correct = (self.batches if epoch else 0), 0.0, 0
        else:
            done, loss_sum, n_correct = progress.batches_done, progress.loss_sum, progress.n_correct
        resume = ResumeRecord(
            done, self.batches, progress is None, loss_sum, n_correct, t.first_loss, self.sha
        )
        with self.stop.deferred():  # h5py builds the file in memory through callbacks a signal must not hit
            data = checkpoint_bytes(
                run_name=self.run_dir.name, epoch=epoch, step=t.step, seed=self.cfg.seed, loss=self.cfg.loss,
                config=self.config_text, net=t.net, optimizer=t.optimizer, probe_x=x, probe_y=y,
                probe_index=self.probe, grads=grads, deltas=deltas, metrics=row, history=self.log.history,
                interrupted=interrupted, resume=resume,
            )  # fmt: skip
        path = write_atomic(checkpoint_path(self.run_dir, epoch), data)
        self.saved_step = t.step
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

    # ---- epochs ---------------------------------------------------------------------------------------
    def on_batch(self, i: int, nb: int, batch_loss: float) -> None:
        self.samples += min(self.cfg.train.batch_size, self.n - (i - 1) * self.cfg.train.batch_size)
        for c in self.callbacks:
            c.on_batch(self.epoch, i, nb, batch_loss, self.trainer.step)
        if self.stop.signum is not None:
            raise _StopAfterBatch

    def initial(self) -> None:
        """Checkpoint 0 and the metrics row of epoch 0 of a new run: its initial state."""
        t0 = time.perf_counter()
        val_loss, val_acc = self.trainer.evaluate(self.data.x_val, self.data.y_val)
        row = {
            "epoch": 0, "step": 0, "train_loss": math.nan, "train_acc": math.nan, "val_loss": val_loss,
            "val_acc": val_acc, "lr": self.trainer.optimizer.lr, "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        self.log.append(row)
        self.rows.append(row)
        self.save(0, row)

    def one_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        t0 = time.perf_counter()
        progress, self.resume = self.resume, None
        stats = self.trainer.run_epoch(self.data.x_train, self.data.y_train, epoch, self.on_batch, progress)
        self.train_seconds += time.perf_counter() - t0
        val_loss, val_acc = self.trainer.evaluate(self.data.x_val, self.data.y_val)
        row = {"epoch": epoch, "step": self.trainer.step, "train_loss": stats.train_loss,
               "train_acc": stats.train_acc, "val_loss": val_loss, "val_acc": val_acc,
               "lr": self.trainer.optimizer.lr, "seconds": time.perf_counter() - t0}  # fmt: skip
        self.log.append(row)
        self.rows.append(row)
        epochs, every = self.cfg.train.epochs, max(1, self.cfg.record.every)
        if epoch % every == 0 or epoch == epochs or epoch == self.replace:
            self.save(epoch, row)
        for c in self.callbacks:
            c.on_epoch(row)
        if self.stop.signum is not None:
            raise _StopAfterBatch

    def run(self) -> RunSummary:
        """Train to ``train.epochs``; see the module docstring for stops and divergence."""
        started = time.perf_counter()
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is checked
                if self.fresh:
                    self.initial()
                for c in self.callbacks:
                    c.on_start(self.start_info)
                if self.fresh:
                    for c in self.callbacks:
                        c.on_epoch(self.rows[0])
                if self.stop.signum is not None:
                    raise _StopAfterBatch
                for epoch in range(self.first, self.cfg.train.epochs + 1):
                    self.one_epoch(epoch)
        except (_StopAfterBatch, KeyboardInterrupt):
            self._stopped()
        except _StopNow as e:
            raise Interrupted(
                self.run_dir, self.epoch, self.trainer.step, None, e.signum, at_once=True
            ) from None
        finally:
            for c in self.callbacks:
                c.on_stop()
            self.log.close()
        return self.summary(time.perf_counter() - started)

    def _stopped(self) -> None:
        """Save the state of a stop and raise :class:`Interrupted`."""
        step = self.trainer.step
        try:
            for c in self.callbacks:
                c.on_stop()
            path = self.save_stop()
        except (
            _StopNow
        ) as e:  # a second signal while saving: the temporary file is gone, earlier files intact
            raise Interrupted(self.run_dir, self.epoch, step, None, e.signum, at_once=True) from None
        raise Interrupted(self.run_dir, self.epoch, step, path, self.stop.signum or signal.SIGINT) from None

    def summary(self, seconds: float) -> RunSummary:
        return RunSummary(
            run_dir=self.run_dir,
            epochs=self.cfg.train.epochs,
            epochs_run=max(0, self.cfg.train.epochs - self.first + 1),
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
        )


# ---- sessions: everything checked, then trained -----------------------------------------------------


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
            session = cls._build(cfg)
            session.run_dir, session._locks = run_dir, locks
            batches = batches_per_epoch(session.data.x_train.shape[0], cfg.train.batch_size)
            session.start = start_state(ck, batches, session.data_sha256, force)
            if ck is not None:
                restore(session.net, session.optimizer, ck)
            elif cfg.model.init_from:  # resumed before checkpoint 0: the run starts over
                load_initial_weights(session.net, cfg.model.init_from)
            session._check_total(epochs)
            return session
        except BaseException:
            locks.close()
            raise

    @classmethod
    def _build(cls, cfg: RunConfig) -> Session:
        infos = check_model(cfg)
        dtype = np.dtype(cfg.dtype)
        data = load_dataset(cfg.data, cfg.model.input_shape, n_outputs(infos[-1].output_shape), dtype,
                            cfg.seed, cfg.base_dir)  # fmt: skip
        net = build_network(cfg).build(np.random.default_rng(cfg.seed), dtype)
        check_api(net, {layer.name: spec.path for spec in cfg.model.layers for layer in net.layers
                        if layer.name.split(".")[0] == spec.name})  # fmt: skip
        check_smallest_batch(net, data.x_train.shape[0], cfg.train.batch_size)
        return cls(
            cfg, infos, data, net, build_loss(cfg), build_optimizer(cfg), data_sha256=data_fingerprint(data)
        )

    def _check_total(self, epochs: int | None) -> None:
        start, total = self.start, self.cfg.train.epochs
        if start is None or start.next_epoch <= total:
            return
        if start.epoch > total:
            raise UserError(
                f"--epochs: {self.run_dir} is already at epoch {start.epoch}; give a total of at least "
                f"{start.epoch} epochs"
            )
        self.complete = True

    def run(
        self, out: Path = Path("runs"), callbacks: Sequence[Callback] = (), stop: StopFlag | None = None
    ) -> RunSummary | None:
        """Create the run folder (a new run) and train; None when a resumed run had nothing to do.

        Raises :class:`Interrupted` (state saved) on a signal and ``Diverged`` on divergence.
        """
        if self.complete:
            return None
        if self._locks is None:
            self._locks = ExitStack()
        config_text = dump_config(self.cfg)
        if self.run_dir is None:
            self.run_dir = create_run_dir(out, self.cfg.name)
            self._locks.enter_context(run_lock(self.run_dir))
            write_config(self.run_dir, config_text)
        elif (self.run_dir / CONFIG).read_text(encoding="utf-8") != config_text:
            write_config(
                self.run_dir, config_text
            )  # the new total of --epochs, or a change made with --force
        stop = stop or StopFlag()
        try:
            with stop.installed():
                return _Fit(self, self.run_dir, callbacks, stop).run()
        except _StopNow as e:  # a second signal outside the training loop (just before or after it)
            raise Interrupted(self.run_dir, 0, 0, None, e.signum, at_once=True) from None

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

    ``source`` is a checkpoint file, a run folder (its last checkpoint), or an ``.npz`` / ``.json``
    parameter file from ``cnnbp export`` (told apart by content, then suffix).  Buffers (batchnorm's
    running statistics) are copied from a source that holds any: checkpoints and exports do; an export
    written before buffers were exported holds none, and the network keeps its initial ones.  Names and
    shapes are checked before anything is copied (all or nothing); a mismatch is a UserError naming the
    layer and both shapes.  Values are cast to the network's dtype.
    """
    path = Path(source)
    try:
        kind = params_file_kind(path)
        if kind is not None:
            params, state, _ = load_npz(path) if kind == "npz" else load_json(path)
        else:
            path = resolve_checkpoint(path)
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
