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
    with pytest.raises(UserError, match="expected an epoch number, 'last' or 'best'"):
        resolve_checkpoint(run, "first")
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
    # 6 training images in batches of 4: steps 1..6, two per epoch
    assert [(r["step"], r["epoch"]) for r in again.steps] == [(s, (s + 1) // 2) for s in range(1, 7)]
    assert again.status["state"] == "finished" and again.status["step"] == 6
    best = min((r for r in again.metrics if r["epoch"] in again.epochs), key=lambda r: r["val_loss"])
    assert again.checkpoint("best").epoch == best["epoch"]
    log = (run.path / "train.log").read_text(encoding="utf-8")  # written by the library too, quiet or not
    assert "model · tiny" in log and " 3/3 " in log and "cnnbp inspect" in log


def test_load_run_of_something_else_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        cnnbp.load_run(tmp_path / "nothing")
    with pytest.raises(UserError, match=r"not a run folder \(no config.yaml\)"):
        cnnbp.load_run(tmp_path)


# ---- the best epoch, the checkpoints kept, steps.csv, status.json ---------------------------------------

from cnnbp.runs import (  # noqa: E402
    StepsLog,
    best_epoch,
    keep_epochs,
    read_status,
    read_steps,
    write_status,
)


def test_best_epoch_is_the_lowest_loss_or_highest_accuracy_earliest_on_ties() -> None:
    cols = {"epoch": [0, 1, 2, 3, 4], "val_loss": [3.0, 0.5, 0.2, 0.2, float("nan")],
            "val_acc": [0.1, 0.9, 0.95, 0.97, 0.97]}  # fmt: skip
    assert best_epoch(cols, "val_loss") == (2, 0.2)
    assert best_epoch(cols, "val_acc") == (3, 0.97)
    assert best_epoch(cols, "val_loss", among=[0, 1, 4]) == (1, 0.5)  # only checkpoints on disk count
    assert best_epoch({"epoch": [0], "val_loss": [float("nan")]}, "val_loss") is None


def test_keep_epochs() -> None:
    epochs = [0, 1, 2, 3, 4, 5, 6]
    assert keep_epochs(epochs, 2, "all") == set(epochs)
    assert keep_epochs(epochs, 2, "best") == {0, 2, 6}
    assert keep_epochs(epochs, 2, "last-3") == {0, 2, 4, 5, 6}
    assert keep_epochs(epochs, None, "best") == {0, 6}


def test_steps_log_appends_and_a_resume_cuts_it_back_to_its_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "steps.csv"
    log = StepsLog(path)
    for step in range(1, 6):
        log.append(step, 1 + (step - 1) // 2, 1.0 / step, 0.1 * step)
    log.close()
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("6,3,0.16")  # a line torn by a kill -9
    assert read_steps(tmp_path)["step"] == [1, 2, 3, 4, 5]  # readers ignore the torn line
    assert read_steps(tmp_path)["lr"] == [0.1 * s for s in range(1, 6)]  # full precision (repr)
    StepsLog(path, upto=3).close()  # resuming from the checkpoint at step 3
    assert path.read_text().splitlines() == [
        "step,epoch,loss,lr", "1,1,1.0,0.1", "2,1,0.5,0.2", f"3,2,{1 / 3!r},{0.1 * 3!r}"
    ]
    assert read_steps(tmp_path / "nowhere") == {"step": [], "epoch": [], "loss": [], "lr": []}


def test_status_json_round_trip(tmp_path: Path) -> None:
    assert read_status(tmp_path) is None
    write_status(tmp_path, "diverged", reason="loss is +Inf", epoch=2, step=7, best=None, value=float("nan"))
    status = read_status(tmp_path)
    assert {k: status[k] for k in ("state", "reason", "epoch", "step", "best", "value")} == {
        "state": "diverged", "reason": "loss is +Inf", "epoch": 2, "step": 7, "best": None, "value": None
    }
    (tmp_path / "status.json").write_text("{not json")
    assert read_status(tmp_path) is None
