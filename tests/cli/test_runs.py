"""Run folders: names, the one checkpoint resolver, stale temporary files, and ``Run`` (``load_run``)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import cnnbp
from cnnbp.errors import UserError
from cnnbp.runs import find_checkpoints, remove_stale_tmp, resolve_checkpoint, run_folder
from tests.cli.conftest import tiny_config, write_config


def test_find_checkpoints_and_stale_tmp_files(tmp_path: Path) -> None:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    for name in ("0000.h5", "0010.h5", "0002.h5", "10000.h5", "0003.h5.tmp", "notes.txt", "12.h5"):
        (folder / name).write_bytes(b"")
    assert [e for e, _ in find_checkpoints(tmp_path / "run")] == [0, 2, 10, 10000]
    assert find_checkpoints(tmp_path / "nothing") == []
    (folder / ".0004.h5.k2j3.tmp").write_bytes(b"")  # the atomic writer's temporary name
    (folder.parent / ".config.yaml.x8.tmp").write_bytes(b"")
    removed = remove_stale_tmp(folder.parent)
    assert sorted(p.name for p in removed) == [".0004.h5.k2j3.tmp", ".config.yaml.x8.tmp", "0003.h5.tmp"]
    assert not list(folder.parent.rglob("*.tmp"))


def test_resolve_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for e in (0, 1, 5):
        (run / "checkpoints" / f"{e:04d}.h5").write_bytes(b"")
    assert resolve_checkpoint(run).name == "0005.h5"
    assert resolve_checkpoint(run, "last").name == "0005.h5"
    assert resolve_checkpoint(run, 1).name == "0001.h5"
    assert resolve_checkpoint(run, "0").name == "0000.h5"
    assert resolve_checkpoint(run / "checkpoints").name == "0005.h5"
    file = run / "checkpoints" / "0001.h5"
    assert resolve_checkpoint(file) == file
    with pytest.raises(UserError, match=r"no checkpoint for epoch 3 \(have 0, 1, 5\)"):
        resolve_checkpoint(run, 3)
    with pytest.raises(UserError, match="expected an epoch number"):
        resolve_checkpoint(run, "best")
    with pytest.raises(UserError, match="no such run folder"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no checkpoints found"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(UserError, match="not of a file"):
        resolve_checkpoint(file, 2)


def test_run_folder_of_a_target(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "0001.h5").write_bytes(b"")
    (tmp_path / "loose.h5").write_bytes(b"")
    assert run_folder(run) == run
    assert run_folder(run / "checkpoints") == run
    assert run_folder(run / "checkpoints" / "0001.h5") == run
    assert run_folder(tmp_path / "loose.h5") is None


def test_load_run_gives_config_metrics_epochs_and_checkpoints(tmp_path: Path) -> None:
    config = write_config(tmp_path, tiny_config(epochs=3, every=2))
    run = cnnbp.train(config, out=tmp_path / "runs")
    again = cnnbp.load_run(run.path)
    assert again.path == run.path == tmp_path / "runs" / "tiny"
    assert again.config["name"] == "tiny" and again.config["train"]["epochs"] == 3
    assert [row["epoch"] for row in again.metrics] == [0, 1, 2, 3]
    assert isinstance(again.metrics[0]["step"], int) and math.isnan(again.metrics[0]["train_loss"])
    assert again.epochs == [0, 2, 3]
    last = again.checkpoint("last")
    assert (last.epoch, again.checkpoint(2).epoch) == (3, 2)
    assert set(last.weights) == {"conv", "out"} and last.deltas["conv"].shape[1:] == (1, 2, 2)
    with pytest.raises(UserError, match="no checkpoint for epoch 1"):
        again.checkpoint(1)


def test_load_run_of_something_else_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        cnnbp.load_run(tmp_path / "nothing")
    with pytest.raises(UserError, match=r"not a run folder \(no config.yaml\)"):
        cnnbp.load_run(tmp_path)
