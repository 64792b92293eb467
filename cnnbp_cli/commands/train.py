"""``cnnbp train``: validate a config, load the data, build the network, train with checkpoints, report.

The probe batch is chosen once per run: ``np.random.default_rng([seed, PROBE_STREAM]).choice(N, n_probe,
replace=False)``, sorted, over the N training samples (after ``data.limit``); PROBE_STREAM is "probe" in
ASCII, so the probe draw never shares a stream with an epoch's shuffle (``default_rng([seed, epoch])``).

Stopping: SIGINT (Ctrl-C) and SIGTERM set a flag that is read after every batch and at every epoch's
end; the run then saves its exact state as an ``interrupted`` checkpoint (unless the last checkpoint
already holds it), prints the resume command and exits 130 (SIGINT) or 143 (SIGTERM).  A second signal
stops at once, writing nothing more (a checkpoint being written is abandoned, its ``.tmp`` removed).
``cnnbp train --resume RUN`` continues (see :mod:`cnnbp_cli.resume`).  Divergence (a non-finite loss
or gradient, or ``train.divergence_factor``) stops at once with exit code 1 and writes nothing.

Testing hook: with ``CNNBP_SIGNAL_AFTER_STEP=K[:SIG[:SIG...]]`` in the environment the process sends
itself those signals (INT or TERM, default INT) right after optimiser step K, which makes an
interrupt at an exact point reproducible.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from cnnbp.checkpoint import (
    ResumeRecord,
    find_checkpoints,
    read_checkpoint,
    remove_stale_tmp,
    resolve_target,
    write_checkpoint,
)
from cnnbp.config import build_loss, build_network, check_model, dump_config, load_config
from cnnbp.core.losses import Loss
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD
from cnnbp.core.trainer import Diverged, EpochProgress, Trainer
from cnnbp.data import Dataset, load_dataset
from cnnbp.errors import UserError
from cnnbp.exporters import apply_params, load_json, load_npz, params_file_kind
from cnnbp.render.console import (
    EpochLines,
    JsonLines,
    LiveProgress,
    Reporter,
    RunSummary,
    model_table,
    print_error,
    print_summary,
    stderr_console,
    stdout_console,
)
from cnnbp.resume import (
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
    checkpoints_dir,
    create_run_dir,
    remove_stale_run_tmp,
    write_config,
)
from cnnbp.spec import RunConfig

PROBE_STREAM = int.from_bytes(b"probe", "big")  # 0x70726f6265
SIGNAL_HOOK = "CNNBP_SIGNAL_AFTER_STEP"
EXIT_DIVERGED = 1
#: the exit code of a run stopped by a signal: 128 + the signal number, as a shell reports it
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def batches_per_epoch(n_train: int, batch_size: int) -> int:
    """The optimiser updates of one epoch: the last batch may be short."""
    return -(-n_train // batch_size)


def choose_probe(n_train: int, n_probe: int, seed: int) -> np.ndarray:
    """Indices of the probe samples in the training set (sorted; at most ``n_train`` of them)."""
    rng = np.random.default_rng([seed, PROBE_STREAM])
    return np.sort(rng.choice(n_train, size=min(n_probe, n_train), replace=False)).astype(np.int64)


class Interrupted(Exception):
    """Training was stopped (Ctrl-C, SIGTERM); the state at that moment was saved (when there was any new).

    ``checkpoint`` is the checkpoint written for the stop (None when nothing new needed saving, or when
    a second signal stopped at once: ``at_once``); ``signum`` the signal (SIGINT for a bare Ctrl-C).
    """

    def __init__(
        self,
        epoch: int,
        step: int,
        checkpoint: Path | None,
        signum: int = signal.SIGINT,
        at_once: bool = False,
    ) -> None:
        super().__init__(f"interrupted in epoch {epoch} at step {step}")
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint
        self.signum = signum
        self.at_once = at_once

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


class _StopNow(BaseException):
    """Raised by the signal handler on a second signal: leave at once, save nothing more."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopAfterBatch(Exception):
    """Raised after a batch when a stop was requested, to unwind the training loop."""


class StopFlag:
    """The first SIGINT/SIGTERM sets ``signum``; the second raises :class:`_StopNow` at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise _StopNow(self.signum)
        self.signum = signum

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


def _signal_hook() -> tuple[int, list[int]] | None:
    """``CNNBP_SIGNAL_AFTER_STEP=K[:INT|TERM...]`` → (K, signals); None when unset."""
    text = os.environ.get(SIGNAL_HOOK, "").strip()
    if not text:
        return None
    step, *names = text.split(":")
    sigs = {"INT": signal.SIGINT, "TERM": signal.SIGTERM}
    try:
        return int(step), [sigs[n.upper()] for n in names] or [signal.SIGINT]
    except (ValueError, KeyError):
        raise UserError(f"{SIGNAL_HOOK}: expected STEP[:INT|TERM...], got {text!r}") from None


@dataclass
class _Run:
    """What every checkpoint of a run shares."""

    cfg: RunConfig
    run_dir: Path
    config_text: str
    trainer: Trainer
    probe_index: np.ndarray
    probe_x: np.ndarray
    probe_y: np.ndarray
    log: MetricsLog
    batches: int
    data_sha256: str

    def save(
        self,
        epoch: int,
        row: dict[str, float],
        *,
        interrupted: bool = False,
        progress: EpochProgress | None = None,
    ) -> Path:
        """Probe at the current weights and write checkpoint ``epoch``.

        ``progress`` (mid-epoch only) is where inside ``epoch`` the state stands; without it the state
        is the end of ``epoch``, whose metrics row is already logged.
        """
        t = self.trainer
        if len(self.probe_index):
            probe = t.probe(self.probe_x, self.probe_y)
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
            batches_done=done,
            batches_per_epoch=self.batches,
            epoch_complete=progress is None,
            loss_sum=loss_sum,
            n_correct=n_correct,
            first_loss=t.first_loss,
            data_sha256=self.data_sha256,
        )
        return write_checkpoint(
            checkpoint_path(self.run_dir, epoch),
            run_name=self.run_dir.name,
            epoch=epoch,
            step=t.step,
            seed=self.cfg.seed,
            loss=self.cfg.loss,
            config=self.config_text,
            net=t.net,
            optimizer=t.optimizer,
            probe_x=self.probe_x,
            probe_y=self.probe_y,
            probe_index=self.probe_index,
            grads=grads,
            deltas=deltas,
            metrics=row,
            history=self.log.history,
            interrupted=interrupted,
            resume=resume,
        )


def fit(
    cfg: RunConfig,
    net: Sequential,
    loss: Loss,
    optimizer: SGD,
    data: Dataset,
    run_dir: Path,
    *,
    config_text: str,
    reporters: list[Reporter],
    start: StartState | None = None,
    stop: StopFlag | None = None,
    data_sha256: str | None = None,
) -> RunSummary:
    """Train up to epoch ``cfg.train.epochs``, logging metrics.csv and writing checkpoints into ``run_dir``.

    A new run (``start`` None, or a ``start`` without a checkpoint) begins with checkpoint 0 and the
    metrics row of epoch 0: the initial state and its validation metrics.  A resumed run continues from
    ``start`` (weights and optimiser state already restored by the caller).  With a ``start``,
    metrics.csv is first rewritten to hold exactly the rows ``start`` holds.

    ``stop`` is read after every batch and every epoch: once it holds a signal, the state reached is
    saved and :class:`Interrupted` raised; so it is on a bare KeyboardInterrupt.  :class:`Diverged`
    propagates with nothing written for the failing epoch.
    """
    started = time.perf_counter()
    t = cfg.train
    trainer = Trainer(
        net, loss, optimizer, batch_size=t.batch_size, shuffle=t.shuffle, seed=cfg.seed,
        divergence_factor=t.divergence_factor,
    )  # fmt: skip
    n = data.x_train.shape[0]
    batches = batches_per_epoch(n, t.batch_size)
    probe = choose_probe(n, cfg.record.probe, cfg.seed)
    remove_stale_tmp(checkpoints_dir(run_dir))
    remove_stale_run_tmp(run_dir)
    log = MetricsLog(run_dir / METRICS_CSV, history=None if start is None else start.history)
    sha = data_sha256 or data_fingerprint(data)
    run = _Run(cfg, run_dir, config_text, trainer, probe, data.x_train[probe], data.y_train[probe], log,
               batches, sha)  # fmt: skip

    epochs, every = t.epochs, max(1, cfg.record.every)
    lr = optimizer.lr
    watchers = [r for r in reporters if r.wants_batches]
    hook = _signal_hook()
    stop = stop or StopFlag()
    # the metrics rows logged so far (a resumed run's history, else none yet)
    cols = list(log.history.values())
    rows = [dict(zip(log.history, values, strict=True)) for values in zip(*cols, strict=True)]
    saved_step, first, replace = -1, 1, -1
    fresh = start is None or start.checkpoint is None
    if start is not None and not fresh:
        trainer.step, trainer.first_loss = start.step, start.first_loss
        saved_step = start.step
        first = start.next_epoch
        replace = start.epoch if start.replace else -1
    epoch, train_seconds, samples = first, 0.0, 0
    resume = None if fresh or start is None else start.progress

    def on_batch(i: int, nb: int, batch_loss: float) -> None:
        nonlocal samples
        samples += min(t.batch_size, n - (i - 1) * t.batch_size)
        for w in watchers:
            w.batch(epoch, i, nb, batch_loss)
        if hook is not None and trainer.step == hook[0]:
            for s in hook[1]:
                signal.raise_signal(s)  # the handler runs before raise_signal returns
        if stop.signum is not None:
            raise _StopAfterBatch

    def save_stop() -> Path | None:
        """Save the state reached, if it is whole and not in the last checkpoint already."""
        if trainer.mid_update or trainer.step == saved_step or not rows:
            return None
        logged = int(rows[-1]["epoch"])
        p = trainer.progress
        if p is None or p.epoch == logged:  # at the end of epoch `logged`, its row written
            return run.save(logged, rows[-1], interrupted=True)
        return run.save(p.epoch, {}, interrupted=True, progress=p)

    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # divergence is checked
            if fresh:
                t0 = time.perf_counter()
                val_loss, val_acc = trainer.evaluate(data.x_val, data.y_val)
                row = {
                    "epoch": 0, "step": 0, "train_loss": math.nan, "train_acc": math.nan,
                    "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - t0,
                }  # fmt: skip
                log.append(row)
                rows.append(row)
                run.save(0, row)
                saved_step = trainer.step
            for r in reporters:
                r.start(epochs, batches)
            if fresh:
                for r in reporters:
                    r.epoch(rows[0])
            if stop.signum is not None:
                raise _StopAfterBatch

            for epoch in range(first, epochs + 1):
                t0 = time.perf_counter()
                progress, resume = resume, None
                stats = trainer.run_epoch(data.x_train, data.y_train, epoch, on_batch, progress)
                train_seconds += time.perf_counter() - t0
                val_loss, val_acc = trainer.evaluate(data.x_val, data.y_val)
                row = {
                    "epoch": epoch, "step": trainer.step,
                    "train_loss": stats.train_loss, "train_acc": stats.train_acc,
                    "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - t0,
                }  # fmt: skip
                log.append(row)
                rows.append(row)
                if epoch % every == 0 or epoch == epochs or epoch == replace:
                    run.save(epoch, row)
                    saved_step = trainer.step
                for r in reporters:
                    r.epoch(row)
                if stop.signum is not None:
                    raise _StopAfterBatch
    except (_StopAfterBatch, KeyboardInterrupt):
        try:
            for r in reporters:
                r.stop()
            path = save_stop()
        except _StopNow as e:  # a second signal while saving: the .tmp is gone, earlier files intact
            raise Interrupted(epoch, trainer.step, None, e.signum, at_once=True) from None
        raise Interrupted(epoch, trainer.step, path, stop.signum or signal.SIGINT) from None
    except _StopNow as e:
        raise Interrupted(epoch, trainer.step, None, e.signum, at_once=True) from None
    finally:
        for r in reporters:
            r.stop()
        log.close()

    has_val = data.x_val.shape[0] > 0
    return RunSummary(
        run_dir=run_dir,
        epochs=epochs,
        steps=trainer.step,
        seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        samples=samples,
        final=rows[-1],
        best_val_acc=_best(rows, "val_acc", max),
        best_val_loss=_best(rows, "val_loss", min),
        has_val=has_val,
        val_is_test=data.val_is_test,
    )


def _best(
    rows: list[dict[str, float]], key: str, pick: Callable[[Iterable[float]], float]
) -> tuple[float, int]:
    """The best finite value of a metric and its epoch (the earliest on ties); (nan, 0) when none."""
    finite = [(r[key], int(r["epoch"])) for r in rows if math.isfinite(r[key])]
    if not finite:
        return math.nan, 0
    value = pick(v for v, _ in finite)
    return value, next(e for v, e in finite if v == value)


def load_initial_weights(net: Sequential, source: str) -> Path:
    """Copy every parameter of ``net`` from ``model.init_from`` and return the file read.

    ``source`` is a checkpoint file, a run folder (its last checkpoint), or an ``.npz`` / ``.json``
    parameter file from ``cnnbp export`` (told apart by content, then suffix).  Names and shapes are
    checked before anything is copied; a mismatch is a UserError naming the layer and both shapes.
    Values are cast to the network's dtype.
    """
    path = Path(source)
    try:
        kind = params_file_kind(path)
        if kind == "npz":
            params = load_npz(path)[0]
        elif kind == "json":
            params = load_json(path)[0]
        else:
            path = resolve_target(path)
            params = read_checkpoint(path).weights
    except UserError as e:
        raise UserError(f"model.init_from: {e}") from None
    apply_params(net, params, source=f"model.init_from: {path}")
    return path


def n_outputs(output_shape: tuple[int, ...]) -> int:
    """The number of network outputs a target vector must have."""
    return int(np.prod(output_shape))


def resume_command(run_dir: Path) -> str:
    """The shell command that continues a run."""
    return f"cnnbp train --resume {shlex.quote(str(run_dir))}"


_CONFIG_HELP = "Run config (YAML). Default: the built-in digits config."
_SET_HELP = "Override a config value, VALUE read as YAML, e.g. train.lr=0.05 (repeatable)."
_RESUME_HELP = "Continue the run in this folder from its last checkpoint (--epochs sets a new total)."
_FORCE_HELP = "With --resume: continue even though config.yaml or the data changed since the checkpoint."


def train(
    config: Annotated[Path | None, typer.Argument(help=_CONFIG_HELP, show_default=False)] = None,
    epochs: Annotated[
        int | None, typer.Option("--epochs", help="Override train.epochs.", show_default=False)
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Override the seed.", show_default=False)] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Run name: the folder under --out.", show_default=False)
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder that holds the run folders.")] = Path("runs"),
    sets: Annotated[
        list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help=_SET_HELP, show_default=False)
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, print the model and exit; write nothing.")
    ] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per epoch on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the final summary.")] = False,
    resume: Annotated[
        str | None, typer.Option("--resume", metavar="RUN", help=_RESUME_HELP, show_default=False)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help=_FORCE_HELP)] = False,
) -> None:
    """Train a network from a config; write metrics, config and checkpoints to a new run folder."""
    with ExitStack() as locks:  # the run folder stays locked until the command ends
        _train(config, epochs, seed, name, out, sets, dry_run, json_lines, quiet, resume, force, locks)


def _train(
    config: Path | None,
    epochs: int | None,
    seed: int | None,
    name: str | None,
    out: Path,
    sets: list[str] | None,
    dry_run: bool,
    json_lines: bool,
    quiet: bool,
    resume: str | None,
    force: bool,
    locks: ExitStack,
) -> None:
    out_con, err_con = stdout_console(), stderr_console()
    if resume is not None:
        given = [flag for flag, v in (("CONFIG", config), ("--seed", seed), ("--name", name),
                                      ("--set", sets)) if v]  # fmt: skip
        if given:
            raise UserError(
                f"--resume: cannot be combined with {', '.join(given)}: a resumed run keeps its config "
                f"(edit its {CONFIG} and pass --force to change it)"
            )
    elif force:
        raise UserError("--force: only used with --resume")

    # everything that can be wrong with the config, a checkpoint or the data is found before any
    # data is read or any file written
    start: StartState | None = None
    ck = None
    if resume is not None:
        run_dir = find_run(resume, out)
        locks.enter_context(run_lock(run_dir))  # refuse a run another process is training
        cfg = load_config(run_dir / CONFIG, epochs=epochs)
        ck = last_checkpoint(run_dir)
        if ck is not None:
            check_config(ck, cfg.resolved, force)
    else:
        cfg = load_config(config, list(sets or []), name=name, epochs=epochs, seed=seed)
    infos = check_model(cfg)
    dtype = np.dtype(cfg.dtype)
    data = load_dataset(
        cfg.data, cfg.model.input_shape, n_outputs(infos[-1].output_shape), dtype, cfg.seed, cfg.base_dir
    )
    net = build_network(cfg).build(np.random.default_rng(cfg.seed), dtype)
    t = cfg.train
    optimizer = SGD(t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    sha = None
    if resume is not None:
        batches = batches_per_epoch(data.x_train.shape[0], t.batch_size)
        sha = data_fingerprint(data)
        start = start_state(ck, batches, sha, force)
        if ck is not None:
            restore(net, optimizer, ck)
        if start.next_epoch > t.epochs:
            if start.epoch > t.epochs:
                raise UserError(
                    f"--epochs: {run_dir} is already at epoch {start.epoch}; give a total of at least "
                    f"{start.epoch} epochs"
                )
            if not quiet:
                err_con.print(
                    f"{run_dir} is complete at epoch {start.epoch} of {t.epochs}; nothing to do "
                    "(pass --epochs to train further)",
                    markup=False, soft_wrap=True, highlight=False,
                )  # fmt: skip
            return
    if (ck is None) and cfg.model.init_from:  # a new run, or one resumed before checkpoint 0
        load_initial_weights(net, cfg.model.init_from)
    if not (json_lines or quiet):
        out_con.print(model_table(infos, cfg.model.input_shape, title=f"model · {cfg.name}"))
        split = "test" if data.val_is_test else "val"
        out_con.print(
            f"data: {data.description} · {data.x_train.shape[0]:,} train, {data.x_val.shape[0]:,} {split}",
            markup=False,
            soft_wrap=True,
            highlight=False,
        )
    if dry_run:
        if not quiet:
            err_con.print("dry run: config, model and data are valid; nothing was written", markup=False)
        return

    loss = build_loss(cfg)
    config_text = dump_config(cfg)
    if resume is None:
        run_dir = create_run_dir(out, cfg.name)
        locks.enter_context(run_lock(run_dir))
        write_config(run_dir, config_text)
    elif (run_dir / CONFIG).read_text(encoding="utf-8") != config_text:
        write_config(run_dir, config_text)  # the new total of --epochs, or a change made with --force

    reporters: list[Reporter] = []
    if not quiet:
        if err_con.is_terminal:
            reporters.append(LiveProgress(err_con, epoch_lines=not json_lines))
        elif not json_lines:
            reporters.append(EpochLines(err_con))
        if not json_lines:
            err_con.print(f"run folder: {run_dir}", markup=False, highlight=False, soft_wrap=True)
            if start is not None and start.checkpoint is None:
                err_con.print("no checkpoint yet: the run starts over", markup=False, highlight=False)
            elif start is not None:
                where = (
                    f"epoch {start.epoch}, batch {start.progress.batches_done} of {batches}"
                    if start.progress is not None
                    else f"the end of epoch {start.epoch}"
                )
                err_con.print(f"resuming from {start.checkpoint} ({where}, step {start.step})",
                              markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    if json_lines:
        reporters.append(JsonLines())

    stop = StopFlag()
    try:
        try:
            with stop.installed():
                summary = fit(cfg, net, loss, optimizer, data, run_dir, config_text=config_text,
                              reporters=reporters, start=start, stop=stop, data_sha256=sha)  # fmt: skip
        except _StopNow as e:  # a second signal outside the training loop (just before or after it)
            raise Interrupted(0, 0, None, e.signum, at_once=True) from None
    except Interrupted as e:
        found = find_checkpoints(run_dir)
        if e.at_once:
            last = f"; the last checkpoint is {found[-1][1]}" if found else "; no checkpoint was written"
            what = f"stopped at once (second signal){last}"
        else:
            saved = f"; saved {e.checkpoint}" if e.checkpoint else ""
            what = f"interrupted in epoch {e.epoch} at step {e.step}{saved}"
        err_con.print(what, markup=False, soft_wrap=True, highlight=False)
        err_con.print(
            f"resume with: {resume_command(run_dir)}", markup=False, soft_wrap=True, highlight=False
        )
        raise typer.Exit(e.exit_code) from None
    except Diverged as e:
        found = find_checkpoints(run_dir)
        last = f"; the last good checkpoint is {found[-1][1]}" if found else ""
        print_error(f"{e}{last}", err_con)
        raise typer.Exit(EXIT_DIVERGED) from None

    # the summary is data, except in --json mode where stdout carries only the JSON lines
    print_summary(err_con if json_lines else out_con, summary)
