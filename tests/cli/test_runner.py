"""The library runner: callbacks see the run as it goes, a stop saves a marked checkpoint, and the
summary counts what one call did."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cnnbp.checkpoint import read_checkpoint
from cnnbp.runner import Callback, Interrupted, Session, StartInfo
from cnnbp.runs import find_checkpoints, read_metrics
from tests.cli.conftest import tiny_config, write_config


class Recorder(Callback):
    """Keeps every event, in order."""

    def __init__(self, stop_at: tuple[int, int] | None = None) -> None:
        self.events: list[tuple] = []
        self.stop_at = stop_at

    def on_start(self, info: StartInfo) -> None:
        self.events.append(("start", info.epochs, info.batches, info.first_epoch))

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        self.events.append(("batch", epoch, batch, step))
        if (epoch, batch) == self.stop_at:
            raise KeyboardInterrupt  # as Ctrl-C would

    def on_epoch(self, row: dict[str, float]) -> None:
        self.events.append(("epoch", int(row["epoch"])))

    def on_stop(self) -> None:
        self.events.append(("stop",))


def test_callbacks_see_every_batch_and_epoch_in_order(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=2, every=1))
    rec = Recorder()
    with Session.new(config) as session:
        summary = session.run(tmp_path / "runs", [rec])
    # 6 training images in batches of 4: 2 batches per epoch
    assert rec.events == [
        ("start", 2, 2, 1), ("epoch", 0),
        ("batch", 1, 1, 1), ("batch", 1, 2, 2), ("epoch", 1),
        ("batch", 2, 1, 3), ("batch", 2, 2, 4), ("epoch", 2),
        ("stop",),
    ]  # fmt: skip
    assert (summary.epochs, summary.epochs_run, summary.steps, summary.steps_run) == (2, 2, 4, 4)
    assert summary.run_dir == session.run_dir == tmp_path / "runs" / "tiny"


def test_interrupt_saves_a_marked_checkpoint(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=5, every=5))
    with Session.new(config) as session, pytest.raises(Interrupted) as info:
        session.run(tmp_path / "runs", [Recorder(stop_at=(3, 1))])
    run_dir = session.run_dir
    assert (info.value.epoch, info.value.step) == (3, 5)
    assert str(info.value) == f"interrupted in epoch 3 at step 5; saved {run_dir / 'checkpoints' / '0003.h5'}"
    assert info.value.exit_code == 130
    assert [e for e, _ in find_checkpoints(run_dir)] == [0, 3]
    ck = read_checkpoint(run_dir / "checkpoints" / "0003.h5")
    assert ck.interrupted and ck.step == 5 and math.isnan(ck.metrics["train_loss"])
    assert [int(e) for e in read_metrics(run_dir)["epoch"]] == [0, 1, 2]


def test_resumed_summary_counts_only_this_call(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=2, every=1))
    with Session.new(config) as session:
        session.run(tmp_path / "runs")
    with Session.resumed(session.run_dir, epochs=5) as resumed:
        summary = resumed.run()
    assert (summary.epochs, summary.epochs_run, summary.steps, summary.steps_run) == (5, 3, 10, 6)
    assert summary.samples == 3 * 6


def test_a_left_over_temporary_file_is_removed_when_the_run_continues(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=1, every=1))
    with Session.new(config) as session:
        session.run(tmp_path / "runs")
    stale = session.run_dir / "checkpoints" / ".0009.h5.x1y2.tmp"
    stale.write_bytes(b"left over by a kill -9")
    with Session.resumed(session.run_dir, epochs=2) as resumed:
        resumed.run()
    assert not stale.exists()


# ---- model.init_from: the weights copied in, all or nothing, mismatches named ------------------------------


import numpy as np  # noqa: E402

from cnnbp.core.layers import Conv2D, Dense, Flatten, Sigmoid  # noqa: E402
from cnnbp.core.network import Sequential  # noqa: E402
from cnnbp.errors import UserError  # noqa: E402
from cnnbp.runner import load_initial_weights  # noqa: E402
from tests.cli.conftest import random_net  # noqa: E402


def _small(filters: int, kernel: int) -> Sequential:
    return random_net([Conv2D(filters, kernel, name="conv1"), Sigmoid(name="sig"), Flatten(name="flat"),
                       Dense(3, name="dense1")], (1, 12, 12), np.float64)  # fmt: skip


def _params_file(path: Path, params: dict[str, dict[str, np.ndarray]]) -> Path:
    """``params`` as a hand-made parameter file: ``<layer>/<param>`` arrays (.npz) or the export's JSON."""
    if path.suffix == ".npz":
        np.savez(path, **{f"{l}/{k}": np.asarray(v) for l, g in params.items() for k, v in g.items()})
    else:
        rows = [{"name": l, "type": "?", "params": {k: np.asarray(v).tolist() for k, v in g.items()}}
                for l, g in params.items()]  # fmt: skip
        path.write_text(json.dumps({"config": {}, "layers": rows}), encoding="utf-8")
    return path


def test_init_from_wrong_shape_names_layer_and_both_shapes(tmp_path: Path) -> None:
    model = _small(8, 3)
    before = {l: {k: v.copy() for k, v in g.items()} for l, g in model.parameters().items()}
    params = {l: dict(g) for l, g in _small(6, 5).parameters().items()}
    params["dense1"] = {k: v.copy() for k, v in model.parameters()["dense1"].items()}
    params["dense1"]["W"] = params["dense1"]["W"] + 1
    path = _params_file(tmp_path / "old.npz", params)
    with pytest.raises(UserError) as info:
        load_initial_weights(model, str(path))
    assert str(info.value) == (
        f"model.init_from: {path}: layer conv1 parameter W has shape 6×1×5×5, the model expects 8×1×3×3"
    )
    for lname, group in before.items():  # all or nothing
        for key, value in group.items():
            np.testing.assert_array_equal(model.layer(lname).params[key], value)


@pytest.mark.parametrize("fmt", ["npz", "json"])
def test_init_from_missing_and_extra_names(tmp_path: Path, fmt: str) -> None:
    model = _small(8, 3)
    good = {l: {k: v.copy() for k, v in g.items()} for l, g in model.parameters().items()}

    def message(params: dict[str, dict[str, np.ndarray]], name: str) -> str:
        path = _params_file(tmp_path / f"{name}.{fmt}", params)
        with pytest.raises(UserError) as info:
            load_initial_weights(model, str(path))
        prefix = f"model.init_from: {path}: "
        assert str(info.value).startswith(prefix)
        return str(info.value).removeprefix(prefix)

    missing = {"conv1": good["conv1"]}
    assert message(missing, "missing") == "has no parameters for layer dense1 (it has: conv1)"

    extra = {**good, "conv9": {"W": np.zeros((1, 1, 1, 1))}}
    assert message(extra, "extra") == (
        "layer conv9 is not a parametric layer of the model (those are: conv1, dense1)"
    )

    no_bias = {**good, "dense1": {"W": good["dense1"]["W"]}}
    assert message(no_bias, "no_bias") == "layer dense1 has no parameter b (it has: W)"

    extra_param = {**good, "dense1": {**good["dense1"], "gamma": np.ones(3)}}
    assert message(extra_param, "extra_param") == (
        "layer dense1 parameter gamma is not in the model (it expects W, b)"
    )

    text = {**good, "dense1": {**good["dense1"], "b": np.array(["a", "b", "c"])}}
    if fmt == "npz":
        assert message(text, "text") == "layer dense1 parameter b is not a real numeric array (<U1)"
    else:  # the JSON reader refuses it first
        assert message(text, "text") == "layers[1].params.b is not a rectangular array of numbers"

    for lname, group in good.items():  # none of these copied anything
        for key, value in group.items():
            np.testing.assert_array_equal(model.layer(lname).params[key], value)


# ---- per-step records, learning-rate schedules, the status file --------------------------------------------

import csv  # noqa: E402

from cnnbp.config import (  # noqa: E402
    EarlyStoppingSpec,  # noqa: E402
    build_loss,
    build_network,
    build_optimizer,
    load_config,
)
from cnnbp.core.trainer import Trainer  # noqa: E402
from cnnbp.render.console import trained_text  # noqa: E402
from cnnbp.runner import StepInfo, early_stop  # noqa: E402


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows, read with the csv module (not through cnnbp)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class Steps(Callback):
    """Keeps every on_step's info."""

    def __init__(self) -> None:
        self.infos: list[StepInfo] = []

    def on_step(self, info: StepInfo) -> None:
        self.infos.append(info)


def scheduled(name: str = "sched", epochs: int = 3) -> dict:
    """The tiny config (2 batches per epoch, plain SGD at lr 0.1) halving the lr every epoch after a
    warm-up of 3 steps."""
    cfg = tiny_config(name, epochs=epochs, every=1)
    cfg["train"]["schedule"] = {"type": "step", "step_size": 1, "gamma": 0.5, "warmup": 3}
    return cfg


# the rates of steps 1..6 from the formulas: warm-up × s/3 over epoch 1's 0.1, then 0.1 · 0.5^(e − 1)
SCHEDULED_LRS = [0.1 * 1 / 3, 0.1 * 2 / 3, 0.05, 0.05, 0.025, 0.025]


def test_steps_csv_records_every_step_its_loss_and_the_lr_it_used(tmp_path: Path) -> None:
    steps, rec = Steps(), Recorder()
    with Session.new(scheduled()) as session:
        session.run(tmp_path / "runs", [rec, steps])
    run = session.run_dir
    rows = read_rows(run / "steps.csv")
    assert list(rows[0]) == ["step", "epoch", "loss", "lr"]
    assert [(int(r["step"]), int(r["epoch"])) for r in rows] == [(s, (s + 1) // 2) for s in range(1, 7)]
    assert [float(r["lr"]) for r in rows] == pytest.approx(SCHEDULED_LRS, rel=1e-15)
    assert [float(r["loss"]) for r in rows] == [i.loss for i in steps.infos]  # full precision, as trained
    assert [i.lr for i in steps.infos] == [float(r["lr"]) for r in rows]
    # each epoch's last step carries the epoch's means, and metrics.csv has the lr of its last step
    metrics = read_rows(run / "metrics.csv")
    for info in (steps.infos[1], steps.infos[3], steps.infos[5]):
        row = metrics[info.epoch]
        assert (info.mean_loss, info.mean_acc) == (float(row["train_loss"]), float(row["train_acc"]))
    assert [float(r["lr"]) for r in metrics] == pytest.approx([SCHEDULED_LRS[i] for i in (0, 1, 3, 5)])


def test_the_weights_are_those_of_sgd_at_the_scheduled_rates(tmp_path: Path) -> None:
    """The same network trained by the engine's Trainer, the lr set from the formula before each step,
    ends bit for bit where the run ends."""
    with Session.new(scheduled()) as session:
        session.run(tmp_path / "runs")
    ck = read_checkpoint(session.run_dir / "checkpoints" / "0003.h5")
    cfg = load_config(session.run_dir / "config.yaml")
    net = build_network(cfg).build(np.random.default_rng(cfg.seed), np.dtype(cfg.dtype))
    opt = build_optimizer(cfg)
    trainer = Trainer(net, build_loss(cfg), opt, batch_size=4, seed=cfg.seed)
    x, y = session.data.x_train, session.data.y_train
    for epoch in (1, 2, 3):

        def next_lr(batch: int, batches: int, loss: float) -> None:
            opt.lr = SCHEDULED_LRS[min(trainer.step, len(SCHEDULED_LRS) - 1)]

        opt.lr = SCHEDULED_LRS[trainer.step]
        trainer.run_epoch(x, y, epoch, next_lr)
    for lname, group in net.parameters().items():
        for key, w in group.items():
            np.testing.assert_array_equal(ck.weights[lname][key], w)


def test_a_resumed_scheduled_run_repeats_the_same_steps_and_times_the_whole_epoch(tmp_path: Path) -> None:
    with Session.new(scheduled("straight", epochs=3)) as session:
        session.run(tmp_path / "runs")
    straight = session.run_dir
    with Session.new(scheduled("cut", epochs=3)) as session, pytest.raises(Interrupted):
        session.run(tmp_path / "runs", [Recorder(stop_at=(2, 1))])  # step 3, mid-epoch 2
    run = session.run_dir
    status = json.loads((run / "status.json").read_text())
    assert (status["state"], status["epoch"], status["step"]) == ("interrupted", 2, 3)
    assert status["epoch_seconds"] > 0 and status["reason"].startswith("interrupted in epoch 2 at step 3")
    with Session.resumed(run) as resumed:
        summary = resumed.run()
    assert read_rows(run / "steps.csv") == read_rows(straight / "steps.csv")  # losses and lrs, bit for bit
    assert [float(r["lr"]) for r in read_rows(run / "steps.csv")] == pytest.approx(SCHEDULED_LRS, rel=1e-15)
    a = read_checkpoint(run / "checkpoints" / "0003.h5")
    b = read_checkpoint(straight / "checkpoints" / "0003.h5")
    for lname, group in a.weights.items():
        for key, w in group.items():
            np.testing.assert_array_equal(w, b.weights[lname][key])
    # the resumed epoch's seconds count the part before the interrupt too
    assert float(read_rows(run / "metrics.csv")[2]["seconds"]) >= status["epoch_seconds"]
    assert (summary.first_epoch, summary.last_epoch, summary.steps_run, summary.resumed) == (2, 3, 3, True)
    assert trained_text(summary).startswith("epochs 2–3 of 3 (resumed), 3 steps in ")


def test_status_json_says_how_the_run_ended(tmp_path: Path) -> None:
    with Session.new(tiny_config(epochs=2, every=1)) as session:
        summary = session.run(tmp_path / "runs")
    status = json.loads((session.run_dir / "status.json").read_text())
    metrics = read_rows(session.run_dir / "metrics.csv")
    best = min(metrics, key=lambda r: (float(r["val_loss"]), int(r["epoch"])))
    assert (status["state"], status["reason"], status["epoch"], status["step"]) == ("finished", None, 2, 4)
    want = {"monitor": "val_loss", "epoch": int(best["epoch"]), "value": float(best["val_loss"])}
    assert status["best"] == want
    assert status["val"] == {"samples": 2, "test_split": False}
    assert trained_text(summary).startswith("2 epochs, 4 steps in ")


# ---- early stopping ------------------------------------------------------------------------------------


def rows_of(values: list[float], key: str = "val_loss") -> list[dict[str, float]]:
    return [{"epoch": e, key: v} for e, v in enumerate(values)]


def test_the_early_stopping_rule_is_keras() -> None:
    spec = EarlyStoppingSpec("val_loss", patience=2, min_delta=0.1)
    # epoch 0 is not watched; epoch 1 sets the best (1.0); 0.95 is no improvement by more than 0.1
    assert early_stop(rows_of([0.1, 1.0, 0.95]), spec) is None
    reason = early_stop(rows_of([0.1, 1.0, 0.95, 0.91]), spec)
    assert reason == "val_loss has not improved by more than 0.1 for 2 epochs (best 1 at epoch 1)"
    assert early_stop(rows_of([9, 1.0, 0.95, 0.85]), spec) is None  # 0.85 < 1.0 − 0.1: improved, wait 0
    acc = EarlyStoppingSpec("val_acc", patience=1, min_delta=0.0)
    assert early_stop(rows_of([0.1, 0.5, 0.6], "val_acc"), acc) is None
    assert early_stop(rows_of([0.1, 0.5, 0.6, 0.6], "val_acc"), acc) == (
        "val_acc has not improved for 1 epoch (best 60.0% at epoch 2)"
    )


def test_early_stopping_ends_the_run_keeps_its_checkpoint_and_says_why(tmp_path: Path) -> None:
    cfg = tiny_config("es", epochs=6, every=5)
    cfg["train"].update(lr=1e-9, early_stopping={"monitor": "val_loss", "patience": 2, "min_delta": 0.01})
    with Session.new(cfg) as session:
        summary = session.run(tmp_path / "runs")
    run = session.run_dir
    assert [int(r["epoch"]) for r in read_rows(run / "metrics.csv")] == [0, 1, 2, 3]  # lr 1e-9: no change
    assert [e for e, _ in find_checkpoints(run)] == [0, 3]  # the stop epoch is written, off the schedule
    assert summary.last_epoch == 3
    assert summary.stopped.startswith("stopped early at epoch 3: val_loss has not improved by more than 0.01")
    status = json.loads((run / "status.json").read_text())
    assert (status["state"], status["reason"]) == ("early_stopped", summary.stopped)
    with Session.resumed(run) as resumed:  # nothing left: it stopped, not paused
        assert resumed.complete and resumed.complete_reason == summary.stopped


def test_early_stopping_needs_validation_data(tmp_path: Path) -> None:
    cfg = tiny_config()
    cfg["data"]["val_fraction"] = 0
    cfg["train"]["early_stopping"] = {}
    with pytest.raises(UserError, match="train.early_stopping: watches val_loss, but the run has no"):
        Session.new(cfg)


# ---- the best checkpoint and the ones kept -------------------------------------------------------------


@pytest.mark.parametrize(("keep", "extra"), [("best", 0), ("last-2", 2)])
def test_record_keep_leaves_checkpoint_0_the_best_and_the_last(tmp_path: Path, keep: str, extra: int) -> None:
    cfg = tiny_config("keep", epochs=6, every=1)
    cfg["train"].update(lr=3.0, divergence_factor=None)  # a rate that makes val_loss go down and up
    cfg["record"]["keep"] = keep
    with Session.new(cfg) as session:
        session.run(tmp_path / "runs")
    metrics = read_rows(session.run_dir / "metrics.csv")
    best = int(min(metrics, key=lambda r: (float(r["val_loss"]), int(r["epoch"])))["epoch"])
    assert 0 < best < 6  # the case that matters: the best is neither the first nor the last
    want = {0, best, 6} | set(range(6 - extra + 1, 7))
    assert {e for e, _ in find_checkpoints(session.run_dir)} == want
    from cnnbp.runs import resolve_checkpoint

    assert resolve_checkpoint(session.run_dir, "best").name == f"{best:04d}.h5"
