"""``cnnbp train``: validate a config, load the data, build the network, train with checkpoints, report.

The probe batch is chosen once per run: ``np.random.default_rng([seed, PROBE_STREAM]).choice(N, n_probe,
replace=False)``, sorted, over the N training samples (after ``data.limit``); PROBE_STREAM is "probe" in
ASCII, so the probe draw never shares a stream with an epoch's shuffle (``default_rng([seed, epoch])``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from cnnbp_cli.checkpoint import read_checkpoint, remove_stale_tmp, resolve_target, write_checkpoint
from cnnbp_cli.config import build_loss, build_network, check_model, dump_config, load_config
from cnnbp_cli.data import Dataset, load_dataset
from cnnbp_cli.errors import UserError
from cnnbp_cli.render import (
    EpochLines,
    JsonLines,
    LiveProgress,
    Reporter,
    RunSummary,
    model_table,
    print_summary,
    stderr_console,
    stdout_console,
)
from cnnbp_cli.runs import (
    METRICS_CSV,
    MetricsLog,
    checkpoint_path,
    checkpoints_dir,
    create_run_dir,
    write_config,
)
from cnnbp_cli.spec import RunConfig
from core.losses import Loss
from core.network import Sequential
from core.optim import SGD
from core.trainer import Trainer

PROBE_STREAM = int.from_bytes(b"probe", "big")  # 0x70726f6265


def choose_probe(n_train: int, n_probe: int, seed: int) -> np.ndarray:
    """Indices of the probe samples in the training set (sorted; at most ``n_train`` of them)."""
    rng = np.random.default_rng([seed, PROBE_STREAM])
    return np.sort(rng.choice(n_train, size=min(n_probe, n_train), replace=False)).astype(np.int64)


class Interrupted(Exception):
    """Training was stopped with Ctrl-C; the state at that moment was saved (when there was any new)."""

    def __init__(self, epoch: int, step: int, checkpoint: Path | None) -> None:
        super().__init__(f"interrupted in epoch {epoch} at step {step}")
        self.epoch = epoch
        self.step = step
        self.checkpoint = checkpoint


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

    def save(self, epoch: int, row: dict[str, float], interrupted: bool = False) -> Path:
        """Probe at the current weights and write checkpoint ``epoch``."""
        t = self.trainer
        if len(self.probe_index):
            probe = t.probe(self.probe_x, self.probe_y)
            grads, deltas = probe.grads, probe.deltas
        else:
            grads = {}
            deltas = {
                info.name: np.zeros((0, *info.output_shape), dtype=t.net.dtype) for info in t.net.summary()
            }
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
) -> RunSummary:
    """Train for ``cfg.train.epochs`` epochs, logging metrics.csv and writing checkpoints into ``run_dir``.

    Checkpoint 0 and the metrics row of epoch 0 hold the initial state and its validation metrics.
    Raises :class:`Interrupted` on Ctrl-C after saving the state reached.
    """
    started = time.perf_counter()
    t = cfg.train
    trainer = Trainer(net, loss, optimizer, batch_size=t.batch_size, shuffle=t.shuffle, seed=cfg.seed)
    probe = choose_probe(data.x_train.shape[0], cfg.record.probe, cfg.seed)
    remove_stale_tmp(checkpoints_dir(run_dir))
    log = MetricsLog(run_dir / METRICS_CSV)
    run = _Run(cfg, run_dir, config_text, trainer, probe, data.x_train[probe], data.y_train[probe], log)

    epochs, every = cfg.train.epochs, max(1, cfg.record.every)
    n = data.x_train.shape[0]
    batches = -(-n // cfg.train.batch_size)
    lr = optimizer.lr
    watchers = [r for r in reporters if r.wants_batches]
    epoch, saved_step, train_seconds = 0, -1, 0.0
    rows: list[dict[str, float]] = []
    try:
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
            r.epoch(row)

        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            on_batch = None
            if watchers:

                def on_batch(i: int, nb: int, batch_loss: float, e: int = epoch) -> None:
                    for w in watchers:
                        w.batch(e, i, nb, batch_loss)

            stats = trainer.run_epoch(data.x_train, data.y_train, epoch, on_batch)
            train_seconds += time.perf_counter() - t0
            val_loss, val_acc = trainer.evaluate(data.x_val, data.y_val)
            row = {
                "epoch": epoch, "step": trainer.step,
                "train_loss": stats.train_loss, "train_acc": stats.train_acc,
                "val_loss": val_loss, "val_acc": val_acc, "lr": lr, "seconds": time.perf_counter() - t0,
            }  # fmt: skip
            log.append(row)
            rows.append(row)
            if epoch % every == 0 or epoch == epochs:
                run.save(epoch, row)
                saved_step = trainer.step
            for r in reporters:
                r.epoch(row)
    except KeyboardInterrupt:
        for r in reporters:
            r.stop()
        path = None
        if trainer.step != saved_step:
            # the weights moved since the last checkpoint: keep them, marked as mid-epoch
            path = run.save(epoch, {}, interrupted=True)
        raise Interrupted(epoch, trainer.step, path) from None
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
        samples=n * epochs,
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
    """Copy every parameter of ``net`` from a checkpoint (a file, or a run folder's last one)."""
    path = resolve_target(Path(source))
    ck = read_checkpoint(path)
    for lname, group in net.parameters().items():
        saved = ck.weights.get(lname)
        if saved is None:
            have = ", ".join(ck.weights) or "none"
            raise UserError(f"model.init_from: {path} has no weights for layer {lname} (it has: {have})")
        for key, w in group.items():
            src = saved.get(key)
            if src is None or src.shape != w.shape:
                got = "nothing" if src is None else f"shape {tuple(src.shape)}"
                need = f"the model needs shape {tuple(w.shape)}"
                raise UserError(f"model.init_from: {path} has {got} for {lname}.{key}; {need}")
        net.layer(lname).set_params(saved)
    return path


def n_outputs(output_shape: tuple[int, ...]) -> int:
    """The number of network outputs a target vector must have."""
    return int(np.prod(output_shape))


_CONFIG_HELP = "Run config (YAML). Default: the built-in digits config."
_SET_HELP = "Override a config value, VALUE read as YAML, e.g. train.lr=0.05 (repeatable)."


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
) -> None:
    """Train a network from a config; write metrics, config and checkpoints to a new run folder."""
    out_con, err_con = stdout_console(), stderr_console()
    # everything that can be wrong with the config is found before any data is read or folder made
    cfg = load_config(config, list(sets or []), name=name, epochs=epochs, seed=seed)
    infos = check_model(cfg)
    dtype = np.dtype(cfg.dtype)
    data = load_dataset(
        cfg.data, cfg.model.input_shape, n_outputs(infos[-1].output_shape), dtype, cfg.seed, cfg.base_dir
    )
    if not (json_lines or quiet):
        out_con.print(model_table(infos, cfg.model.input_shape, title=f"model · {cfg.name}"))
        split = "test" if data.val_is_test else "val"
        out_con.print(
            f"data: {data.description} · {data.x_train.shape[0]:,} train, {data.x_val.shape[0]:,} {split}",
            markup=False,
            soft_wrap=True,
            highlight=False,
        )
    net = build_network(cfg).build(np.random.default_rng(cfg.seed), dtype)
    if cfg.model.init_from:
        load_initial_weights(net, cfg.model.init_from)
    if dry_run:
        if not quiet:
            err_con.print("dry run: config, model and data are valid; nothing was written", markup=False)
        return

    loss = build_loss(cfg)
    t = cfg.train
    optimizer = SGD(t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    run_dir = create_run_dir(out, cfg.name)
    config_text = dump_config(cfg)
    write_config(run_dir, config_text)

    reporters: list[Reporter] = []
    if not quiet:
        if err_con.is_terminal:
            reporters.append(LiveProgress(err_con, epoch_lines=not json_lines))
        elif not json_lines:
            reporters.append(EpochLines(err_con))
        if not json_lines:
            err_con.print(f"run folder: {run_dir}", markup=False, highlight=False, soft_wrap=True)
    if json_lines:
        reporters.append(JsonLines())

    try:
        summary = fit(cfg, net, loss, optimizer, data, run_dir, config_text=config_text, reporters=reporters)
    except Interrupted as e:
        saved = f"; saved {e.checkpoint}" if e.checkpoint else ""
        err_con.print(f"interrupted in epoch {e.epoch} at step {e.step}{saved}", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None

    # the summary is data, except in --json mode where stdout carries only the JSON lines
    print_summary(err_con if json_lines else out_con, summary)
