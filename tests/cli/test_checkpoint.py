"""Tests for the HDF5 checkpoint layout: round trip, atomic writes, finding files, every bad-file error."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnbp import __version__
from cnnbp.checkpoint import FORMAT, FORMAT_VERSION, ResumeRecord, read_checkpoint, write_checkpoint
from cnnbp.core.layers import Conv2D, Dense, Flatten, MaxPool, ReLU
from cnnbp.core.losses import SoftmaxCrossEntropy
from cnnbp.core.network import Sequential
from cnnbp.core.optim import SGD, Adam, Optimizer
from cnnbp.core.trainer import Trainer
from cnnbp.errors import UserError
from tests.cli.conftest import rewrite_checkpoint

CONFIG_TEXT = "name: tiny\nseed: 3\n"


def tiny_net(dtype: type = np.float32) -> Sequential:
    net = Sequential(
        [
            Conv2D(2, 3, name="conv1"),
            ReLU(name="conv1.relu"),
            MaxPool(2, stride=1, name="pool2"),
            Flatten(name="flatten3"),
            Dense(3, name="dense4"),
        ],
        (1, 5, 5),
    )
    return net.build(np.random.default_rng(0), dtype)


RESUME = ResumeRecord(batches_done=1, batches_per_epoch=1, epoch_complete=True, loss_sum=0.0, n_correct=0,
                      first_loss=1.5, data_sha256="0" * 64)  # fmt: skip


def write_example(
    path: Path, dtype: type = np.float32, momentum: float = 0.9, opt: Optimizer | None = None
) -> dict:
    """Train one step, probe, and write a checkpoint; returns what was written for comparison."""
    rng = np.random.default_rng(1)
    net = tiny_net(dtype)
    opt = opt or SGD(0.05, momentum=momentum, weight_decay=1e-4)
    x = rng.standard_normal((6, 1, 5, 5)).astype(dtype)
    y = rng.integers(0, 3, size=6)
    trainer = Trainer(net, SoftmaxCrossEntropy(), opt, batch_size=6, seed=3)
    trainer.run_epoch(x, y, 1)
    index = np.array([1, 4])
    probe = trainer.probe(x[index], y[index])
    history = {
        "epoch": [0, 1],
        "step": [0, 1],
        "train_loss": [math.nan, 1.5],
        "train_acc": [math.nan, 0.5],
        "val_loss": [2.0, 1.25],
        "val_acc": [0.25, 0.75],
        "lr": [0.05, 0.05],
        "seconds": [0.01, 0.5],
    }
    metrics = {"train_loss": 1.5, "train_acc": 0.5, "val_loss": 1.25, "val_acc": 0.75}
    write_checkpoint(
        path,
        run_name="tiny",
        epoch=1,
        step=trainer.step,
        seed=3,
        loss="softmax_cross_entropy",
        config=CONFIG_TEXT,
        net=net,
        optimizer=opt,
        probe_x=x[index],
        probe_y=y[index],
        probe_index=index,
        grads=probe.grads,
        deltas=probe.deltas,
        metrics=metrics,
        history=history,
        resume=RESUME,
    )
    return {"net": net, "opt": opt, "probe": probe, "x": x[index], "y": y[index], "index": index,
            "history": history, "metrics": metrics}  # fmt: skip


def test_round_trip_keeps_every_group_and_attribute(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    w = write_example(path)
    ck = read_checkpoint(path)

    assert ck.path == path
    assert ck.format_version == FORMAT_VERSION and ck.cnnbp_version == __version__
    assert ck.created.endswith("Z") and "T" in ck.created
    assert (ck.run_name, ck.epoch, ck.step, ck.seed) == ("tiny", 1, 1, 3)
    assert (ck.dtype, ck.loss, ck.interrupted) == ("float32", "softmax_cross_entropy", False)
    assert ck.metrics == w["metrics"]
    assert ck.config == CONFIG_TEXT

    net: Sequential = w["net"]
    assert ck.input_shape == (1, 5, 5)
    assert ck.layer_names == ["conv1", "conv1.relu", "pool2", "flatten3", "dense4"]
    for rec, info, layer in zip(ck.layers, net.summary(), net.layers, strict=True):
        assert (rec.type, rec.input_shape) == (info.kind, info.input_shape)
        assert rec.output_shape == info.output_shape
        assert rec.hyper == layer.hyper()
    assert ck.layers[0].hyper == {"filters": 2, "kernel": [3, 3], "stride": [1, 1], "padding": [0, 0],
                                  "bias": "tied"}  # fmt: skip
    assert ck.layers[2].hyper == {"mode": "max", "size": [2, 2], "stride": [1, 1]}

    assert set(ck.weights) == {"conv1", "dense4"}
    for lname, group in net.parameters().items():
        for key, value in group.items():
            assert ck.weights[lname][key].dtype == np.float32
            np.testing.assert_array_equal(ck.weights[lname][key], value)
            np.testing.assert_array_equal(ck.grads[lname][key], w["probe"].grads[lname][key])
            np.testing.assert_array_equal(
                ck.optimizer.state["velocity"][lname][key], w["opt"].state["velocity"][lname][key]
            )
    assert list(ck.deltas) == ck.layer_names
    for info in net.summary():
        assert ck.deltas[info.name].shape == (2, *info.output_shape)
        assert ck.deltas[info.name].dtype == np.float32
        np.testing.assert_array_equal(ck.deltas[info.name], w["probe"].deltas[info.name])

    np.testing.assert_array_equal(ck.probe_x, w["x"])
    np.testing.assert_array_equal(ck.probe_y, w["y"])
    np.testing.assert_array_equal(ck.probe_index, w["index"])
    assert ck.probe_y.dtype.kind == "i"
    assert ck.optimizer.type == "sgd" and ck.optimizer.state["t"] == 1
    assert ck.optimizer.hyper == {"lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    assert ck.resume == RESUME
    assert set(ck.history) == set(w["history"])
    for column, values in w["history"].items():
        np.testing.assert_array_equal(ck.history[column], np.asarray(values))
    assert ck.history["epoch"].dtype == np.int64


def test_the_file_follows_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == FORMAT
        assert int(f.attrs["format_version"]) == 2
        for key in ("cnnbp_version", "created", "run_name", "epoch", "step", "seed", "dtype", "loss",
                    "interrupted", "train_loss", "train_acc", "val_loss", "val_acc"):  # fmt: skip
            assert key in f.attrs
        assert f["config"].asstr()[()] == CONFIG_TEXT
        assert list(f["model"].attrs["layer_names"]) == ["conv1", "conv1.relu", "pool2", "flatten3", "dense4"]
        assert f["model/conv1.relu"].attrs["type"] == "relu"
        assert f["weights/conv1/W"].shape == (2, 1, 3, 3)
        assert f["grads/dense4/b"].shape == (3,)
        assert f["deltas/pool2"].shape == (2, 2, 2, 2)
        for name in ("probe/x", "probe/y", "probe/index", "optimizer/velocity/conv1/W", "metrics/val_acc"):
            assert name in f
        assert f["optimizer"].attrs["lr"] == 0.05 and f["optimizer"].attrs["type"] == "sgd"
        assert f["optimizer"].attrs["t"] == 1 and f["resume"].attrs["first_loss"] == 1.5


def test_float64_runs_store_float64_and_no_momentum_means_empty_state(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path, dtype=np.float64, momentum=0.0)
    ck = read_checkpoint(path)
    assert ck.dtype == "float64"
    assert ck.weights["conv1"]["W"].dtype == np.float64
    assert ck.optimizer.state == {"t": 1, "velocity": {}}


def test_adam_state_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    w = write_example(path, dtype=np.float64, opt=Adam(1e-2, betas=(0.8, 0.99), eps=1e-7))
    ck = read_checkpoint(path)
    assert ck.optimizer.type == "adam" and ck.optimizer.state["t"] == 1
    assert ck.optimizer.hyper == {"lr": 1e-2, "betas": [0.8, 0.99], "eps": 1e-7, "weight_decay": 0.0}
    for buffer in ("exp_avg", "exp_avg_sq"):
        for lname, group in w["opt"].state[buffer].items():
            for key, v in group.items():
                assert np.array_equal(ck.optimizer.state[buffer][lname][key], v)
    fresh = Adam.from_hyper(ck.optimizer.hyper)
    fresh.load_state_dict(ck.optimizer.state)
    assert fresh.t == 1 and fresh.betas == (0.8, 0.99)


def test_network_rebuilds_the_recorded_model_at_its_weights(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    w = write_example(path)
    net = read_checkpoint(path).network()
    assert [type(layer) for layer in net.layers] == [type(layer) for layer in w["net"].layers]
    assert [layer.hyper() for layer in net.layers] == [layer.hyper() for layer in w["net"].layers]
    x = np.random.default_rng(5).standard_normal((3, 1, 5, 5)).astype(np.float32)
    assert np.array_equal(net.forward(x), w["net"].forward(x))


def test_format_1_still_loads(tmp_path: Path) -> None:
    """Checkpoints of cnnbp 0.1 (format 1): SGD only, its velocity at /optimizer/state."""
    path = tmp_path / "0001.h5"
    w = write_example(path)

    def as_format_1(f: h5py.File) -> None:
        f.attrs["format_version"] = 1
        f["optimizer"].move("velocity", "state")
        del f["optimizer"].attrs["t"]

    rewrite_checkpoint(path, as_format_1)
    ck = read_checkpoint(path)
    assert ck.format_version == 1 and ck.optimizer.type == "sgd"
    velocity = w["opt"].state["velocity"]
    assert set(ck.optimizer.state["velocity"]) == set(velocity)
    assert np.array_equal(ck.optimizer.state["velocity"]["conv1"]["W"], velocity["conv1"]["W"])


def test_atomic_write_leaves_no_tmp_and_cleans_up_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0001.h5"]

    net = tiny_net()
    with pytest.raises(ValueError):  # a layer name HDF5 cannot hold: the write fails half-way
        write_checkpoint(
            tmp_path / "0002.h5", run_name="x", epoch=2, step=0, seed=0, loss="mse", config="",
            net=net, optimizer=SGD(0.1), probe_x=np.zeros((0, 1, 5, 5)), probe_y=np.zeros(0, dtype=np.int64),
            probe_index=np.zeros(0, dtype=np.int64), grads={}, deltas={"bad/name": np.zeros(1)},
            metrics={}, history={}, resume=RESUME,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0001.h5"]


def test_a_write_that_fails_is_a_user_error(tmp_path: Path) -> None:
    target = tmp_path / "gone" / "0001.h5"
    with pytest.raises(UserError, match=r"0001\.h5: cannot write \("):
        write_example(target)


# ---- every bad file is one UserError naming the path ------------------------------------------------


def assert_user_error(path: Path, fragment: str) -> None:
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert fragment in message, message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    assert_user_error(tmp_path / "0003.h5", "no such checkpoint file")


def test_foreign_hdf5_file(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(3))
    assert_user_error(path, "not a cnnbp checkpoint")
    with h5py.File(path, "a") as f:
        f.attrs["format"] = "something-else"
    assert_user_error(path, "not a cnnbp checkpoint")


def test_not_hdf5_bytes(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    path.write_bytes(b"this is plain text, not HDF5\n" * 20)
    assert_user_error(path, "not a cnnbp checkpoint (not an HDF5 file)")


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert_user_error(path, "truncated or corrupt")


def test_newer_format_version(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path)
    rewrite_checkpoint(path, lambda f: f.attrs.__setitem__("format_version", 3))
    assert_user_error(path, "written by a newer cnnbp (format 3); this cnnbp reads formats 1, 2")


def test_missing_group(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path)
    rewrite_checkpoint(path, lambda f: f.__delitem__("deltas/pool2"))
    assert_user_error(path, "/deltas/pool2 is missing")


def test_an_edit_with_another_hdf5_tool_breaks_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "0001.h5"
    write_example(path)
    with h5py.File(path, "a") as f:
        f.attrs["epoch"] = 7
    assert_user_error(path, "truncated or corrupt file (its content does not match its checksum)")


def test_a_folder_is_not_a_file(tmp_path: Path) -> None:
    assert_user_error(tmp_path, "is a folder")
