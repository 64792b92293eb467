"""``cnnbp train --resume``: bit-identical continuation (both dtypes, momentum, shuffling, mid-epoch
interrupts), config and data checks, metrics repair, a second Ctrl-C, and divergence.

Everything runs in-process through the Typer app; interrupts at an exact step add a callback that makes
the process send itself the signal right after that optimiser step (``signal_at``, tests/cli/conftest.py),
so the real signal handler is exercised deterministically.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnnbp.app import app
from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.config import build_network, config_from_dict
from cnnbp.core.optim import SGD
from cnnbp.core.parallel import shard_count
from cnnbp.runner import Callback, Interrupted, Session
from cnnbp.runs import METRIC_COLUMNS, find_checkpoints, read_metrics
from tests.cli.conftest import rewrite_checkpoint

runner = CliRunner()
BATCHES = 10  # 160 digits in batches of 16


def small_digits(dtype: str) -> dict:
    """160 digits, a small CNN, momentum and weight decay, shuffling on: every piece of state matters."""
    return {
        "name": "small",
        "seed": 7,
        "dtype": dtype,
        "data": {"source": "digits", "scale": 0.0625, "val_fraction": 0.1, "limit": 160},
        "model": {
            "input_shape": [1, 8, 8],
            "layers": [
                {"type": "conv", "filters": 4, "kernel": 3, "padding": 1, "activation": "relu"},
                {"type": "pool", "mode": "max", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 10},
            ],
        },
        "loss": "softmax_cross_entropy",
        "train": {
            "epochs": 10,
            "batch_size": 16,
            "lr": 0.05,
            "momentum": 0.9,
            "weight_decay": 1e-4,
            "shuffle": True,
        },  # fmt: skip
        "record": {"probe": 4, "every": 3},
    }


def invoke(*args: object, env: dict[str, str] | None = None):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args], env=env)


def write(folder: Path, cfg: dict, name: str = "cfg.yaml") -> Path:
    """``cfg`` as a YAML file in ``folder``."""
    path = folder / name
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def last(run: Path) -> Checkpoint:
    return read_checkpoint(find_checkpoints(run)[-1][1])


def assert_same_state(a: Checkpoint, b: Checkpoint) -> None:
    """Every weight and optimiser buffer bit-identical, same epoch, step and optimiser step count."""
    assert (a.epoch, a.step) == (b.epoch, b.step)
    assert set(a.weights) == set(b.weights) and set(a.optimizer.state) == set(b.optimizer.state)
    assert a.optimizer.state["t"] == b.optimizer.state["t"] == a.step
    for name, group in a.weights.items():
        for key, w in group.items():
            assert w.dtype == b.weights[name][key].dtype
            assert np.array_equal(w, b.weights[name][key]), f"{name}.{key} differs"
    for buffer in set(a.optimizer.state) - {"t"}:
        for name, group in a.optimizer.state[buffer].items():
            for key, v in group.items():
                other = b.optimizer.state[buffer][name][key]
                assert np.array_equal(v, other), f"{buffer} {name}.{key} differs"


def metric_rows(run: Path) -> list[dict[str, str]]:
    """metrics.csv without the wall-time column (the only one allowed to differ)."""
    with open(run / "metrics.csv", newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module", params=["float32", "float64"])
def straight(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """An uninterrupted 10-epoch run of :func:`small_digits`."""
    folder = tmp_path_factory.mktemp(f"straight-{request.param}")
    config = write(folder, small_digits(request.param))
    result = invoke("train", config, "--out", folder / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "runs" / "small", request.param


def test_resume_after_4_epochs_to_10_is_bit_identical(straight: tuple[Path, str], tmp_path: Path) -> None:
    reference, dtype = straight
    config = write(tmp_path, small_digits(dtype))
    out = tmp_path / "runs"
    assert invoke("train", config, "--out", out, "--epochs", "4", "--quiet").exit_code == 0
    run = out / "small"
    assert [e for e, _ in find_checkpoints(run)] == [0, 3, 4]
    result = invoke("train", "--resume", run, "--epochs", "10")
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.stderr and "0004.h5" in result.stderr
    assert [e for e, _ in find_checkpoints(run)] == [0, 3, 4, 6, 9, 10]
    assert_same_state(last(run), last(reference))
    assert last(run).weights["conv1"]["W"].dtype == np.dtype(dtype)
    # the same metrics.csv, appended to: identical rows (but for wall time) to the straight run's
    assert metric_rows(run) == metric_rows(reference)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 10
    assert last(run).config == (run / "config.yaml").read_text()


def test_resume_from_a_mid_epoch_interrupt_is_bit_identical(
    straight: tuple[Path, str], tmp_path: Path, signal_at
) -> None:
    reference, dtype = straight
    config = write(tmp_path, small_digits(dtype))
    out = tmp_path / "runs"
    signal_at("43")  # epoch 5, batch 3
    result = invoke("train", config, "--out", out, "--quiet")
    assert result.exit_code == 130, result.output
    run = out / "small"
    assert "interrupted in epoch 5 at step 43" in result.stderr
    assert f"resume with: cnnbp train --resume {run}" in result.stderr
    assert [e for e, _ in find_checkpoints(run)] == [0, 3, 5]
    ck = read_checkpoint(run / "checkpoints" / "0005.h5")
    assert ck.interrupted and ck.step == 43 and ck.resume is not None
    assert (ck.resume.batches_done, ck.resume.batches_per_epoch, ck.resume.epoch_complete) == (3, 10, False)
    assert math.isnan(ck.metrics["train_loss"]) and list(ck.history["epoch"]) == [0, 1, 2, 3, 4]
    assert [int(r["epoch"]) for r in metric_rows(run)] == [0, 1, 2, 3, 4]

    result = invoke("train", "--resume", run)  # no --epochs: the config's total, 10
    assert result.exit_code == 0, result.output
    assert "epoch 5, batch 3 of 10, step 43" in result.stderr
    # the interrupted 0005 was replaced by the complete checkpoint of epoch 5
    assert [e for e, _ in find_checkpoints(run)] == [0, 3, 5, 6, 9, 10]
    assert not read_checkpoint(run / "checkpoints" / "0005.h5").interrupted
    assert_same_state(last(run), last(reference))
    assert metric_rows(run) == metric_rows(reference)  # train_loss of epoch 5 too: the sums were saved


def test_sigterm_at_an_epoch_end_and_a_second_interrupt(tmp_path: Path, signal_at) -> None:
    """SIGTERM after the last batch of an off-schedule epoch saves that epoch, marked; resume goes on."""
    cfg = small_digits("float64")
    cfg["train"]["epochs"] = 3
    config = write(tmp_path, cfg)
    run = tmp_path / "runs" / "small"
    signal_at("10:TERM")
    result = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 143, result.output
    assert "interrupted in epoch 1 at step 10" in result.stderr
    ck = read_checkpoint(run / "checkpoints" / "0001.h5")
    assert ck.interrupted and ck.resume is not None
    assert (ck.resume.batches_done, ck.resume.epoch_complete) == (10, False)
    # a second signal right after the first: out at once, nothing new written, earlier files intact
    signal_at("15:INT:INT")
    result = invoke("train", "--resume", run)
    assert result.exit_code == 130, result.output
    assert "stopped at once" in result.stderr and "resume with:" in result.stderr
    assert [e for e, _ in find_checkpoints(run)] == [0, 1]
    assert read_checkpoint(run / "checkpoints" / "0001.h5").step == 10
    assert not list(run.rglob("*.tmp"))
    result = invoke("train", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert [int(r["epoch"]) for r in metric_rows(run)] == [0, 1, 2, 3]
    assert last(run).step == 30


def test_nothing_to_do_and_a_total_below_the_run(tmp_path: Path) -> None:
    cfg = small_digits("float32")
    cfg["train"]["epochs"] = 2
    assert invoke("train", write(tmp_path, cfg), "--out", tmp_path / "runs", "--quiet").exit_code == 0
    run = tmp_path / "runs" / "small"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    # a run killed after its last checkpoint, while rewriting status.json, left a temporary file
    (run / ".status.json.abc123.tmp").write_text("{", encoding="utf-8")
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0 and "nothing to do" in result.stderr
    assert not list(run.rglob("*.tmp"))  # cleared all the same
    result = invoke("train", "--resume", run, "--epochs", "1")
    assert result.exit_code == 2 and "already at epoch 2" in result.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before
    # by name under --out, too
    result = invoke("train", "--resume", "small", "--out", tmp_path / "runs", "--epochs", "3", "--quiet")
    assert result.exit_code == 0, result.output
    assert last(run).epoch == 3


def test_a_changed_config_is_refused_unless_forced(tmp_path: Path) -> None:
    cfg = small_digits("float32")
    cfg["train"]["epochs"] = 2
    assert invoke("train", write(tmp_path, cfg), "--out", tmp_path / "runs", "--quiet").exit_code == 0
    run = tmp_path / "runs" / "small"
    stored = yaml.safe_load((run / "config.yaml").read_text())
    stored["train"]["lr"] = 0.01
    stored["model"]["layers"][3]["name"] = "head"
    stored["train"]["epochs"] = 3  # the total may change freely
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    before = (run / "metrics.csv").read_bytes()
    result = invoke("train", "--resume", run)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "config.yaml: changed since checkpoint 0002.h5: model.layers[3].name, train.lr;" in line
    assert "--force" in line
    assert (run / "metrics.csv").read_bytes() == before
    # a renamed layer cannot take the saved weights, even forced
    result = invoke("train", "--resume", run, "--force")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.endswith("0002.h5: /weights: has no parameters for layer head (it has: conv1, dense4)")
    assert (run / "metrics.csv").read_bytes() == before
    del stored["model"]["layers"][3]["name"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    result = invoke("train", "--resume", run, "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert last(run).epoch == 3 and yaml.safe_load(last(run).config)["train"]["lr"] == 0.01


def test_resume_options_that_do_not_combine(tmp_path: Path) -> None:
    for args, fragment in (
        (["--resume", tmp_path, "--seed", "3"], "--seed"),
        (["--resume", tmp_path, "--set", "train.lr=1"], "--set"),
        (["--resume", tmp_path / "nope"], "no such run folder"),
        (["--resume", tmp_path], "not a run folder"),
        (["--force"], "only used with --resume"),
    ):
        result = invoke("train", *args)
        assert result.exit_code == 2, result.output
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: ") and fragment in line


def test_changed_data_is_refused_and_a_damaged_last_checkpoint_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (40, 4)), rng.integers(0, 2, 40)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    cfg = {"name": "npz", "data": {"source": "npz", "path": str(tmp_path / "d.npz")},
           "model": {"input_shape": [4], "layers": [{"type": "dense", "units": 2}]},
           "train": {"epochs": 2, "batch_size": 8}}  # fmt: skip
    assert invoke("train", write(tmp_path, cfg), "--out", tmp_path / "runs", "--quiet").exit_code == 0
    run = tmp_path / "runs" / "npz"
    x[3, 1] += 0.5
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    result = invoke("train", "--resume", run, "--epochs", "3")
    assert result.exit_code == 2 and "training data differs" in result.stderr
    # the last checkpoint truncated: named, and the one before it suggested
    last_file = run / "checkpoints" / "0002.h5"
    last_file.write_bytes(last_file.read_bytes()[:3000])
    result = invoke("train", "--resume", run, "--epochs", "3")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "0002.h5" in line and "truncated or corrupt" in line and "resume from 0001.h5" in line


def test_a_torn_metrics_line_is_ignored_and_repaired(tmp_path: Path) -> None:
    cfg = small_digits("float32")
    cfg["train"]["epochs"] = 2
    assert invoke("train", write(tmp_path, cfg), "--out", tmp_path / "runs", "--quiet").exit_code == 0
    run = tmp_path / "runs" / "small"
    good = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text(good + "3,30,0.12")  # a row cut short by kill -9
    assert read_metrics(run)["epoch"] == [0.0, 1.0, 2.0]
    (run / "checkpoints" / "0002.h5.tmp").write_bytes(b"half")
    (run / "config.yaml.tmp").write_bytes(b"half")
    result = invoke("train", "--resume", run, "--epochs", "3", "--quiet")
    assert result.exit_code == 0, result.output
    text = (run / "metrics.csv").read_text()
    assert text.startswith(good) and text.endswith("\n") and "0.12\n" not in text
    assert [int(r["epoch"]) for r in metric_rows(run)] == [0, 1, 2, 3]
    assert text.splitlines()[0] == ",".join(METRIC_COLUMNS)
    assert not list(run.rglob("*.tmp"))


def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path: Path) -> None:
    cfg = small_digits("float32")
    cfg["train"]["epochs"] = 1
    assert invoke("train", write(tmp_path, cfg), "--out", tmp_path / "a", "--quiet").exit_code == 0
    run = tmp_path / "a" / "small"
    reference = last(run)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    (run / "metrics.csv").write_text("epoch,st")
    result = invoke("train", "--resume", run)
    assert result.exit_code == 0, result.output
    assert "starts over" in result.stderr
    assert_same_state(last(run), reference)
    assert [int(r["epoch"]) for r in metric_rows(run)] == [0, 1]


def test_a_newer_checkpoint_format_is_refused(tmp_path: Path) -> None:
    cfg = small_digits("float32")
    cfg["train"]["epochs"] = 1
    assert invoke("train", write(tmp_path, cfg), "--out", tmp_path / "runs", "--quiet").exit_code == 0
    run = tmp_path / "runs" / "small"
    rewrite_checkpoint(run / "checkpoints" / "0001.h5", lambda f: f.attrs.__setitem__("format_version", 99))
    result = invoke("train", "--resume", run, "--epochs", "2")
    assert result.exit_code == 2 and "newer cnnbp (format 99)" in result.stderr


# ---- divergence ------------------------------------------------------------------------------------------


def exploding(lr: float, factor: float | None = None) -> dict:
    """A linear-ish MSE regression on inline data that a large lr drives to Inf within a few epochs."""
    return {
        "name": "boom",
        "dtype": "float32",
        "data": {"source": "inline", "val_fraction": 0.0,
                 "x": [[0.1 * i, 1 - 0.1 * i, 0.5] for i in range(8)], "y": [i % 2 for i in range(8)]},
        "model": {"input_shape": [3], "layers": [{"type": "dense", "units": 4, "activation": "relu"},
                                                 {"type": "dense", "units": 2}]},
        "loss": "mse",
        "train": {"epochs": 30, "batch_size": 4, "lr": lr, "momentum": 0.9, "divergence_factor": factor},
        "record": {"every": 2},
    }  # fmt: skip


def test_a_huge_lr_stops_with_epoch_step_and_layer(tmp_path: Path) -> None:
    result = invoke("train", write(tmp_path, exploding(1.0e5)), "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: diverged in epoch 2 at step 4 (batch 2 of 2): loss is +Inf;")
    assert "first non-finite delta at layer dense1.relu" in line
    run = tmp_path / "runs" / "boom"
    assert f"the last good checkpoint is {run / 'checkpoints' / '0000.h5'}" in line
    assert [e for e, _ in find_checkpoints(run)] == [0]  # epoch 1 was off the every-2 schedule
    assert [int(r["epoch"]) for r in metric_rows(run)] == [0, 1]
    # the loss overflows while every delta is still finite: the output layer is named
    result = invoke("train", write(tmp_path, exploding(1.0e3)), "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 1
    assert "epoch 4 at step 7" in result.stderr and "outputs of layer dense2" in result.stderr
    ck = last(tmp_path / "runs" / "boom-2")
    assert ck.epoch == 2 and all(np.isfinite(w).all() for g in ck.weights.values() for w in g.values())


def test_divergence_factor_stops_a_growing_loss(tmp_path: Path) -> None:
    result = invoke(
        "train", write(tmp_path, exploding(10.0, factor=3.0)), "--out", tmp_path / "runs", "--quiet"
    )
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert "is over divergence_factor 3 × the first batch's loss" in line and "diverged in epoch" in line
    # off with divergence_factor: null: the same lr runs until the loss is Inf
    result = invoke("train", write(tmp_path, exploding(10.0)), "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 1 and "loss is +Inf" in result.stderr


# ---- a bare KeyboardInterrupt at awkward moments (no signal handler: fit called directly) -------------


class _RaiseAt(Callback):
    """Raises KeyboardInterrupt when epoch ``at`` has been logged (and maybe saved)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_epoch(self, row: Mapping[str, float]) -> None:
        if int(row["epoch"]) == self.at:
            raise KeyboardInterrupt


def _session(tmp_path: Path, cfg_dict: dict) -> Session:
    return Session.new(write(tmp_path, cfg_dict))


def test_an_interrupt_after_an_unsaved_epoch_saves_it_whole(tmp_path: Path) -> None:
    cfg_dict = small_digits("float64")
    cfg_dict["train"]["epochs"] = 4
    with _session(tmp_path, cfg_dict) as session, pytest.raises(Interrupted) as info:
        session.run(tmp_path / "runs", [_RaiseAt(2)])
    run_dir = session.run_dir
    ck = read_checkpoint(run_dir / "checkpoints" / "0002.h5")  # epoch 2 is off the every-3 schedule
    assert info.value.checkpoint == ck.path
    assert ck.interrupted and ck.resume is not None and ck.resume.epoch_complete
    assert ck.step == 2 * BATCHES and list(ck.history["epoch"]) == [0, 1, 2]
    result = invoke("train", "--resume", run_dir, "--quiet")
    assert result.exit_code == 0, result.output
    reference = tmp_path / "ref"
    assert invoke("train", write(tmp_path, cfg_dict), "--out", reference, "--quiet").exit_code == 0
    assert_same_state(last(run_dir), last(reference / "small"))


def test_an_interrupt_in_the_middle_of_an_update_saves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = _session(tmp_path, small_digits("float32"))
    real_step, calls = SGD.step, []

    def half_step(self: SGD, params: dict, grads: dict) -> None:
        calls.append(1)
        if len(calls) == 15:  # some layers updated, the rest not: a state that matches no step
            first = next(iter(params))
            real_step(self, {first: params[first]}, grads)
            raise KeyboardInterrupt
        real_step(self, params, grads)

    monkeypatch.setattr(SGD, "step", half_step)
    with session, pytest.raises(Interrupted) as info:
        session.run(tmp_path / "runs")
    run_dir = session.run_dir
    assert info.value.checkpoint is None and info.value.step == 14
    assert [e for e, _ in find_checkpoints(run_dir)] == [0]  # epoch 1 is off the every-3 schedule


def test_two_shards_train_the_same_bits_twice_and_resume_bit_identically(tmp_path: Path, signal_at) -> None:
    """``train.threads: 2``: the batch cut in two shards (recorded in status.json); two runs give the
    same checkpoints, and a run interrupted mid-epoch, resumed from its config.yaml, the same state."""
    cfg = small_digits("float32")
    cfg["train"].update(epochs=3, threads=2)
    config = write(tmp_path, cfg)
    runs = [tmp_path / f"runs{i}" for i in range(3)]
    for out in runs[:2]:
        assert invoke("train", config, "--out", out, "--quiet").exit_code == 0
    a, b = (out / "small" for out in runs[:2])
    assert json.loads((a / "status.json").read_text(encoding="utf-8"))["shards"] == 2
    assert [e for e, _ in find_checkpoints(a)] == [e for e, _ in find_checkpoints(b)] == [0, 3]
    for (_, one), (_, two) in zip(find_checkpoints(a), find_checkpoints(b), strict=True):
        assert_same_state(read_checkpoint(one), read_checkpoint(two))
        assert np.array_equal(read_checkpoint(one).deltas["conv1"], read_checkpoint(two).deltas["conv1"])
    signal_at("15")  # epoch 2, batch 5 of 10
    assert invoke("train", config, "--out", runs[2], "--quiet").exit_code == 130
    run = runs[2] / "small"
    assert yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["train"]["threads"] == 2
    result = invoke("train", "--resume", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["shards"] == 2
    assert_same_state(last(run), last(a))
    assert metric_rows(run) == metric_rows(a)


def test_a_run_from_before_shards_resumes_whole_batches(tmp_path: Path) -> None:
    """A run whose config has no ``train.threads`` (cnnbp before shards) computed whole batches; resumed,
    it goes on with one shard and ends bit-identical to an uninterrupted one-shard run, even where
    ``auto`` would cut this network's batches in two."""
    cfg = small_digits("float64")
    cfg["model"]["layers"][0]["filters"] = 96  # 48 × (55,296 + 15,360) multiply-adds per half batch
    cfg["train"].update(epochs=4, batch_size=96, threads=1)
    assert shard_count("auto", build_network(config_from_dict(cfg)), 96) == 2  # auto would cut in two
    straight_out, old_out = tmp_path / "straight", tmp_path / "old"
    assert invoke("train", write(tmp_path, cfg), "--out", straight_out, "--quiet").exit_code == 0
    cfg["train"]["epochs"] = 2
    assert invoke("train", write(tmp_path, cfg), "--out", old_out, "--quiet").exit_code == 0
    run = old_out / "small"

    def forget_threads(text: str) -> str:
        saved = yaml.safe_load(text)
        del saved["train"]["threads"]
        return yaml.safe_dump(saved)

    config_yaml = run / "config.yaml"
    config_yaml.write_text(forget_threads(config_yaml.read_text(encoding="utf-8")), encoding="utf-8")
    def edit(f: h5py.File) -> None:
        text = forget_threads(f["config"][()].decode())
        del f["config"]
        f.create_dataset("config", data=text, dtype=h5py.string_dtype())

    for _, path in find_checkpoints(run):
        rewrite_checkpoint(path, edit)
    result = invoke("train", "--resume", run, "--epochs", "4", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["shards"] == 1
    assert_same_state(last(run), last(straight_out / "small"))
    result = invoke("train", "--resume", run, "--epochs", "5", "--quiet")  # and again, from its own record
    assert result.exit_code == 0, result.output
    assert json.loads((run / "status.json").read_text(encoding="utf-8"))["shards"] == 1
