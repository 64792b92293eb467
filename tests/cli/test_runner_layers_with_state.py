"""Runs with a dropout (masks drawn from (seed, step)) or a batchnorm (running statistics saved under /state)
resume from a Ctrl-C bit for bit: the same weights, optimiser buffers and buffers as a straight run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import cnnbp
from cnnbp import resume
from cnnbp.checkpoint import Checkpoint
from cnnbp.runner import Callback, Interrupted

EPOCHS = 4
BATCHES = 5  # 160 training digits (the limit applies after the validation split) in batches of 32
STOP = (2, 3)  # Ctrl-C after epoch 2's third batch

MODELS = {
    "dropout": [
        {"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "activation": "relu"},
        {"type": "dropout", "rate": 0.25},
        {"type": "pool", "mode": "max", "size": 2},
        {"type": "flatten"},
        {"type": "dropout", "rate": 0.5},
        {"type": "dense", "units": 10},
    ],
    "batchnorm": [
        {"type": "conv", "filters": 4, "kernel": 3, "padding": 1},
        {"type": "batchnorm", "momentum": 0.2, "activation": "relu"},
        {"type": "pool", "mode": "max", "size": 2},
        {"type": "flatten"},
        {"type": "dense", "units": 10},
    ],
}


def config(model: str, dtype: str) -> dict:
    return {
        "name": model,
        "seed": 3,
        "dtype": dtype,
        "data": {"source": "digits", "limit": 160, "scale": 0.0625},
        "model": {"input_shape": [1, 8, 8], "layers": MODELS[model]},
        "loss": "softmax_cross_entropy",
        "train": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.1, "momentum": 0.9, "shuffle": True},
        "record": {"probe": 4, "every": 1},
    }


class CtrlC(Callback):
    """Raises KeyboardInterrupt (as Ctrl-C would) after batch ``at = (epoch, batch)``."""

    def __init__(self, at: tuple[int, int]) -> None:
        self.at = at

    def on_batch(self, epoch: int, batch: int, batches: int, loss: float, step: int) -> None:
        assert batches == BATCHES
        if (epoch, batch) == self.at:
            raise KeyboardInterrupt


def assert_same_state(a: Checkpoint, b: Checkpoint) -> None:
    """Every weight, optimiser buffer and layer buffer bit for bit, at the same epoch and step."""
    assert (a.epoch, a.step) == (b.epoch, b.step) == (EPOCHS, EPOCHS * BATCHES)
    groups = [("weights", a.weights, b.weights), ("state", a.state, b.state),
              ("velocity", a.optimizer.state["velocity"], b.optimizer.state["velocity"])]  # fmt: skip
    for kind, ours, theirs in groups:
        assert set(ours) == set(theirs), kind
        for lname, group in ours.items():
            assert set(group) == set(theirs[lname])
            for key, value in group.items():
                assert value.dtype == theirs[lname][key].dtype
                assert np.array_equal(value, theirs[lname][key]), f"{kind} {lname}.{key} differs"
    assert a.optimizer.state["t"] == b.optimizer.state["t"]
    for name, delta in a.deltas.items():
        assert np.array_equal(delta, b.deltas[name]), f"probe delta {name} differs"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("model", sorted(MODELS))
def test_an_interrupted_run_resumes_to_the_straight_runs_state(
    model: str, dtype: str, tmp_path: Path
) -> None:
    straight = cnnbp.train(config(model, dtype), out=tmp_path / "straight")
    with pytest.raises(Interrupted) as info:
        cnnbp.train(config(model, dtype), out=tmp_path / "stopped", callbacks=[CtrlC(STOP)])
    assert (info.value.epoch, info.value.step) == (2, BATCHES + STOP[1])
    stopped = cnnbp.load_run(tmp_path / "stopped" / model)
    mid = stopped.checkpoint("last")
    assert mid.interrupted and mid.step == BATCHES + STOP[1]
    resumed = resume(stopped, out=tmp_path / "stopped")
    assert_same_state(resumed.checkpoint("last"), straight.checkpoint("last"))
    epochs = [row["epoch"] for row in resumed.metrics]
    assert epochs == list(range(EPOCHS + 1))
    for ours, theirs in zip(resumed.metrics, straight.metrics, strict=True):
        keys = sorted(set(ours) - {"seconds"})
        assert keys == sorted(set(theirs) - {"seconds"})
        np.testing.assert_array_equal([ours[k] for k in keys], [theirs[k] for k in keys])  # NaN = NaN


def test_the_buffers_are_what_training_made_them(tmp_path: Path) -> None:
    """The batchnorm's running statistics moved away from (0, 1) and are saved in every checkpoint; the
    initial checkpoint holds the initial ones; the dropout run has no /state."""
    run = cnnbp.train(config("batchnorm", "float64"), out=tmp_path)
    first, last = run.checkpoint(0), run.checkpoint("last")
    np.testing.assert_array_equal(first.state["batchnorm2"]["running_mean"], 0.0)
    np.testing.assert_array_equal(first.state["batchnorm2"]["running_var"], 1.0)
    assert not np.allclose(last.state["batchnorm2"]["running_var"], 1.0)
    np.testing.assert_array_equal(last.network().layer("batchnorm2").state["running_mean"],
                                  last.state["batchnorm2"]["running_mean"])  # fmt: skip
    assert cnnbp.train(config("dropout", "float64"), out=tmp_path).checkpoint("last").state == {}


@pytest.mark.parametrize(("limit", "batch_size", "which"), [
    (161, 32, "the last batch of each epoch has 1 sample (161 training samples in batches of 32)"),
    (160, 1, "each batch has 1 sample (160 training samples in batches of 1)"),
])  # fmt: skip
def test_a_batch_a_batchnorm_cannot_train_on_is_refused_before_anything_is_written(
    tmp_path: Path, limit: int, batch_size: int, which: str
) -> None:
    cfg = config("batchnorm", "float64")
    cfg["model"] = {"input_shape": [64], "layers": [{"type": "dense", "units": 5}, {"type": "batchnorm"},
                                                    {"type": "dense", "units": 10}]}  # fmt: skip
    cfg["data"] = {"source": "digits", "limit": limit, "scale": 0.0625}
    cfg["train"]["batch_size"] = batch_size
    with pytest.raises(cnnbp.UserError) as e:
        cnnbp.train(cfg, out=tmp_path / "runs")
    assert str(e.value) == (
        f"train.batch_size: {which}, and layer batchnorm2: needs more than one value per channel in "
        "training (a batch of 1); choose another batch size"
    )
    assert not (tmp_path / "runs").exists()
    cfg["train"].update(batch_size=batch_size + 1, epochs=1)  # batches of 2 or more: it trains
    assert cnnbp.train(cfg, out=tmp_path / "runs").epochs == [0, 1]
