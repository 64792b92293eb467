"""The epoch table: one header, one row per epoch, the names of metrics.csv, 80 columns whatever the
numbers (a loss of 4e9, 1000 epochs, an hour-long epoch)."""

from __future__ import annotations

import math

from cnnbp.render.progress import EpochTable, duration, loss_text

ROW = {"epoch": 10, "train_loss": 0.0057, "train_acc": 1.0, "val_loss": 0.0721, "val_acc": 0.983,
       "lr": 0.05, "seconds": 0.1}  # fmt: skip


def test_the_issue_example_fits_80_columns() -> None:
    """``epoch 10/15  train_loss 0.0057 ... 0.1s`` wrapped at 80 columns before."""
    table = EpochTable(15)
    assert table.header().split() == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "time"]
    assert table.row(ROW).split() == ["10/15", "0.0057", "100.0%", "0.0721", "98.3%", "0.1s"]
    assert len(table.header()) <= 80 and len(table.row(ROW)) <= 80


def test_extreme_rows_stay_aligned_within_80_columns() -> None:
    table = EpochTable(1000, lr=True)
    rows = [
        {**ROW, "epoch": 0, "train_loss": math.nan, "train_acc": math.nan},  # the initial state
        {**ROW, "epoch": 1000, "train_loss": 4146260520.0, "val_loss": 123456.789, "lr": 1.2345678e-5,
         "seconds": 7384.0},
    ]  # fmt: skip
    lines = [table.header(), *(table.row(r) for r in rows)]
    assert all(len(line) <= 80 and line == line.rstrip() for line in lines)
    assert lines[1].split() == ["0/1000", "-", "-", "0.0721", "98.3%", "0.05", "0.1s"]
    big = ["1000/1000", "4.146e+09", "100.0%", "1.235e+05", "98.3%", "1.235e-05", "2h03m"]
    assert lines[2].split() == big
    ends = {len(line) for line in lines}
    assert len(ends) == 1  # right-aligned columns: every line ends at the same place


def test_number_formats() -> None:
    losses = (0.12345, 9999.5, 12345.0, math.nan)
    assert [loss_text(v) for v in losses] == ["0.1235", "9999.5000", "1.234e+04", "-"]
    times = (0.04, 99.94, 125.0, 5999.0, 6000.0, 7384.0)
    assert [duration(s) for s in times] == ["0.0s", "99.9s", "2m05s", "99m59s", "1h40m", "2h03m"]
