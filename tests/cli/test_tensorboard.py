"""Tests of :mod:`cnnbp.tensorboard`: a run exported (``cnnbp export --format tensorboard``) or written live
(``record.tensorboard: true``) reads back with TensorBoard's own event reader (``EventAccumulator``) with
every per-step and per-epoch scalar, a histogram of every layer's weights, gradients, deltas and
activations at every checkpoint, and the config as text.  The expected values come from the run's CSV
files (csv) and checkpoints (h5py), not from cnnbp's readers.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from cnnbp.app import app
from tests.cli.conftest import tiny_config, train_run, unwrapped

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}


def invoke(*args: object):  # noqa: ANN201 - typer's Result
    return CliRunner().invoke(app, [str(a) for a in args], env=PLAIN)


def accumulate(folder: Path):  # noqa: ANN201 - an EventAccumulator, loaded
    acc = event_accumulator.EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0}
    )
    acc.Reload()
    return acc


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def expected_scalars(run: Path) -> dict[str, dict[int, float]]:
    """Every finite value of steps.csv (by step) and metrics.csv (by epoch), by tag."""
    out: dict[str, dict[int, float]] = {}
    for row in csv_rows(run / "steps.csv"):
        for col in ("loss", "lr"):
            out.setdefault(f"step/{col}", {})[int(row["step"])] = float(row[col])
    for row in csv_rows(run / "metrics.csv"):
        for col in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
            if math.isfinite(float(row[col])):
                out.setdefault(f"epoch/{col}", {})[int(row["epoch"])] = float(row[col])
    return out


def expected_histograms(run: Path) -> dict[str, dict[int, tuple[int, float, float]]]:
    """(count, min, max) of every array of every checkpoint by tag and epoch, read with h5py."""
    out: dict[str, dict[int, tuple[int, float, float]]] = {}
    for path in sorted((run / "checkpoints").glob("*.h5")):
        with h5py.File(path, "r") as f:
            epoch = int(f.attrs["epoch"])
            arrays = {}
            for group in ("weights", "grads"):
                for layer in f[group]:
                    for key in f[group][layer]:
                        arrays[f"{group}/{layer}/{key}"] = f[group][layer][key][()]
            for group in ("deltas", "activations"):
                for layer in f[group]:
                    arrays[f"{group}/{layer}"] = f[group][layer][()]
        for tag, a in arrays.items():
            a = a.astype(np.float64).ravel()
            out.setdefault(tag, {})[epoch] = (a.size, float(a.min()), float(a.max()))
    return out


def assert_complete(folder: Path, run: Path) -> None:
    """Every scalar and histogram the run has, in the event files of ``folder``, with its value."""
    acc = accumulate(folder)
    tags = acc.Tags()
    scalars, histograms = expected_scalars(run), expected_histograms(run)
    assert set(tags["scalars"]) == set(scalars)
    for tag, points in scalars.items():
        got = {e.step: e.value for e in acc.Scalars(tag)}
        assert set(got) == set(points), tag
        for step, value in points.items():
            assert got[step] == pytest.approx(value, rel=1e-6), (tag, step)  # stored as float32
    assert set(tags["histograms"]) == set(histograms)
    for tag, points in histograms.items():
        got = {e.step: e.histogram_value for e in acc.Histograms(tag)}
        assert set(got) == set(points), tag
        for epoch, (n, lo, hi) in points.items():
            h = got[epoch]
            assert (h.num, h.min, h.max) == (n, pytest.approx(lo), pytest.approx(hi)), (tag, epoch)
    assert "config/text_summary" in tags["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode("utf-8")
    assert "record:" in text and "    loss: softmax_cross_entropy" in text  # the YAML as a code block


def test_export_reads_back_with_tensorboards_reader(digits_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "digits"
    shutil.copytree(digits_run, run)
    result = invoke("export", run, "--format", "tensorboard")
    assert result.exit_code == 0, result.output
    lines = unwrapped(result.stdout)  # and every line fits 80 columns but a long temporary path
    assert lines[0].startswith(f"exported    {run / 'tensorboard'} (TensorBoard, 1 event file, ")
    assert lines[-1] == f"view        tensorboard --logdir {run / 'tensorboard'}"
    assert_complete(run / "tensorboard", run)
    # an existing export is kept unless --force, which replaces its files
    again = invoke("export", run, "--format", "tensorboard")
    assert (
        again.exit_code == 2
        and "already holds TensorBoard event files; --force replaces them" in again.output
    )
    forced = invoke("export", run, "--format", "tensorboard", "--force", "--json")
    assert forced.exit_code == 0, forced.output
    report = json.loads(forced.stdout)
    assert (report["ok"], report["verified"], report["files"], report["epochs"]) == (True, True, 1, [0, 1, 2])
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_export_options_and_targets(digits_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tb"
    result = invoke("export", digits_run / "checkpoints" / "0001.h5", "--format", "tensorboard", "-o", out)
    assert result.exit_code == 0, result.output
    acc = accumulate(out)  # one checkpoint file: its histograms at its epoch, its /metrics
    assert {e.step for e in acc.Histograms("weights/conv1/W")} == {1}
    assert {e.step for e in acc.Scalars("epoch/val_loss")} == {0, 1}
    for args, message in (
        (["--checkpoint", "1"], "error: --checkpoint: does not apply to --format tensorboard"),
        (["-o", tmp_path / "missing" / "tb"], "does not exist"),
    ):
        bad = invoke("export", digits_run, "--format", "tensorboard", *args)
        assert bad.exit_code == 2 and bad.output.count("\n") == 1 and message in bad.output, bad.output


def test_live_events_during_training(tmp_path: Path) -> None:
    cfg = tiny_config("live", epochs=3, every=1)
    cfg["record"]["tensorboard"] = True
    run = train_run(tmp_path, cfg)
    assert_complete(run / "tensorboard", run)


def test_live_events_of_a_resumed_run_are_rewritten(tmp_path: Path) -> None:
    cfg = tiny_config("again", epochs=2, every=1)
    cfg["record"]["tensorboard"] = True
    run = train_run(tmp_path, cfg)
    result = invoke("train", "--resume", run, "--epochs", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # one file, no duplicates
    assert_complete(run / "tensorboard", run)


def test_without_tensorboardx_one_line_and_exit_2(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    result = invoke("export", digits_run, "--format", "tensorboard", "-o", tmp_path / "tb")
    assert result.exit_code == 2
    assert result.output == (
        "error: --format tensorboard: needs the tensorboardX package; pip install 'cnnbp[tensorboard]'\n"
    )
    cfg = tiny_config("needs", epochs=1)
    cfg["record"]["tensorboard"] = True
    config = tmp_path / "needs.yaml"
    config.write_text(json.dumps(cfg), encoding="utf-8")
    train = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert train.exit_code == 2 and not (tmp_path / "runs").exists()
    assert (
        train.output
        == "error: record.tensorboard: needs the tensorboardX package; pip install 'cnnbp[tensorboard]'\n"
    )
