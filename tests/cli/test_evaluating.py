"""``cnnbp.evaluating``: a checkpoint's loss and accuracy on the run's validation split are that epoch's
row of metrics.csv, the confusion matrix adds up, other data (a file with or without a test split)
is read and scaled as training reads it, and the default checkpoint is the best one."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from cnnbp.config import load_config
from cnnbp.data import load_dataset
from cnnbp.errors import UserError
from cnnbp.evaluating import evaluate


def metric_rows(run: Path) -> list[dict[str, float]]:
    """metrics.csv read with the csv module (not through cnnbp)."""
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def val_split(run: Path, scale: float | None = None):  # noqa: ANN201 - a Dataset
    """The run's data as training loaded it (``scale`` None: the raw digits values, 0-16)."""
    cfg = load_config(run / "config.yaml")
    spec = cfg.data if scale is not None else type(cfg.data)(**{**cfg.data.__dict__, "scale": None})
    return load_dataset(spec, cfg.model.input_shape, 10, np.dtype(cfg.dtype), cfg.seed)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_each_checkpoint_reproduces_its_validation_metrics(digits_run: Path, epoch: int) -> None:
    row = metric_rows(digits_run)[epoch]
    result = evaluate(digits_run, checkpoint=epoch)
    assert (result.loss, result.accuracy) == (row["val_loss"], row["val_acc"])  # bit for bit
    assert (result.epoch, result.split, result.samples) == (epoch, "val", 359)
    assert result.chosen == f"epoch {epoch}"
    labels = val_split(digits_run).y_val
    assert result.confusion.sum() == 359 and result.correct == round(row["val_acc"] * 359)
    np.testing.assert_array_equal(result.confusion.sum(axis=1), np.bincount(labels, minlength=10))


def test_the_default_is_the_best_checkpoint(digits_run: Path) -> None:
    rows = metric_rows(digits_run)
    best = min(rows, key=lambda r: (r["val_loss"], r["epoch"]))
    result = evaluate(digits_run)
    assert (result.epoch, result.chosen) == (int(best["epoch"]), "best (lowest val_loss)")
    assert result.loss == best["val_loss"]


def test_other_data_is_scaled_like_training_and_uses_a_test_split(digits_run: Path, tmp_path: Path) -> None:
    raw = val_split(digits_run)  # the validation images, unscaled
    own = evaluate(digits_run, checkpoint=2)
    np.savez(tmp_path / "val.npz", x_train=raw.x_val, y_train=raw.y_val)  # no test split: all of it
    other = evaluate(digits_run, checkpoint=2, data=tmp_path / "val.npz")
    assert (other.split, other.samples) == ("all", 359)
    assert (other.loss, other.accuracy) == (own.loss, own.accuracy)
    np.testing.assert_array_equal(other.confusion, own.confusion)
    np.savez(tmp_path / "split.npz", x_train=raw.x_train[:5], y_train=raw.y_train[:5],
             x_test=raw.x_val[:40], y_test=raw.y_val[:40])  # fmt: skip
    test = evaluate(digits_run, checkpoint=2, data=tmp_path / "split.npz")
    assert (test.split, test.samples, test.confusion.sum()) == ("test", 40, 40)
    assert test.data == f"npz · {tmp_path / 'split.npz'}"


def test_a_config_given_as_data_brings_its_own_data_section(digits_run: Path, tmp_path: Path) -> None:
    (tmp_path / "other.yaml").write_text("data: {source: digits, scale: 0.0625}\n", encoding="utf-8")
    result = evaluate(digits_run, checkpoint=1, data=tmp_path / "other.yaml")
    assert (result.split, result.samples) == ("all", 1797)  # every digit: the source has no test split


def test_a_run_without_validation_data(seeds_run: Path) -> None:
    with pytest.raises(UserError, match="the run has no validation split .*give --data"):
        evaluate(seeds_run)
    with pytest.raises(UserError, match="--data: .*nowhere: no such config, data file or folder"):
        evaluate(seeds_run, data="nowhere")
