"""The library runner: callbacks see the run as it goes, a stop saves a marked checkpoint, and the
summary counts what one call did."""

from __future__ import annotations

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

import json  # noqa: E402

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
