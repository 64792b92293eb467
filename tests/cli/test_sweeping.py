"""The sweep library: the sweep file, the trial list and names, checks before any worker starts, and sweeps
run on an in-process Dask cluster (folders, trials.csv, skipping, resuming, failures, retries).

Expected trial lists and names are written out by hand from the sweep files; metrics are compared with
each trial's own metrics.csv read here with the csv module.  Ctrl-C on real worker processes is tested
in tests/cli/commands/test_sweep.py.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cnnbp.errors import UserError
from cnnbp.sweeping import (
    SWEEP_FILE,
    TRIALS_CSV,
    dask_client,
    prepare,
    read_sweep,
    sample_space,
    short_keys,
    sweep,
    sweep_summary,
    trial_names,
    trial_values,
)
from tests.cli.conftest import tiny_config, write_config

pytest.importorskip("distributed")


def base_file(folder: Path, **train: Any) -> Path:
    """The tiny inline-data config (conv + dense, explicit init, 3 epochs) as ``folder/tiny.yaml``."""
    cfg = tiny_config()
    cfg["train"].update(train)
    return write_config(folder, cfg)


def spec(folder: Path, **keys: Any) -> dict[str, Any]:
    return {"name": "sw", "base": str(base_file(folder)), **keys}


def csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ---- the trial list ------------------------------------------------------------------------------------


def test_trials_are_the_grid_in_order_then_random_samples_each_once_per_seed(tmp_path: Path) -> None:
    grid = {"train.lr": [0.1, 0.3], "model.layers[0].init": ["zeros", "he_normal"]}
    random = {"n": 2, "space": {"train.batch_size": {"int": [2, 3]}}}
    s = read_sweep(spec(tmp_path, grid=grid, seeds=[7, 8], random=random))
    values = trial_values(s)
    grid = [(0.1, "zeros"), (0.1, "he_normal"), (0.3, "zeros"), (0.3, "he_normal")]  # the last key fastest
    expected = [
        {"train.lr": lr, "model.layers[0].init": init, "seed": seed} for lr, init in grid for seed in (7, 8)
    ]
    assert values[:8] == expected
    assert len(values) == 8 + 2 * 2 and [v["seed"] for v in values[8:]] == [7, 8, 7, 8]
    assert all(set(v) == {"train.batch_size", "seed"} for v in values[8:])
    assert values[8]["train.batch_size"] == values[9]["train.batch_size"]  # one sample, each seed
    assert trial_names(values)[:3] == ["lr_0.1-init_zeros-seed_7", "lr_0.1-init_zeros-seed_8",
                                       "lr_0.1-init_he_normal-seed_7"]  # fmt: skip
    assert trial_values(read_sweep(spec(tmp_path, seeds=[0, 1, 2]))) == [
        {"seed": 0},
        {"seed": 1},
        {"seed": 2},
    ]


def test_random_samples_are_deterministic_in_bounds_and_follow_their_distribution() -> None:
    space = {"a": ("loguniform", [1e-4, 1.0]), "b": ("uniform", [0.0, 0.95]), "c": ("int", [1, 3]),
             "d": ("choice", ["x", [1, 2]])}  # fmt: skip
    points = sample_space(space, 400, seed=5)
    assert points == sample_space(space, 400, seed=5)
    assert points != sample_space(space, 400, seed=6)
    a = [p["a"] for p in points]
    assert all(1e-4 <= x <= 1.0 and x == float(f"{x:.4g}") for x in a)  # 4 significant digits
    # log-uniform: each decade of the four holds about a quarter (uniform would put ~90 % in the last)
    for lo in (1e-4, 1e-3, 1e-2, 1e-1):
        assert 0.15 < sum(lo <= x < 10 * lo for x in a) / len(a) < 0.35
    b = [p["b"] for p in points]
    assert all(0.0 <= x <= 0.95 for x in b) and 0.4 < sum(x < 0.475 for x in b) / len(b) < 0.6
    assert {p["c"] for p in points} == {1, 2, 3}  # both ends included
    assert {str(p["d"]) for p in points} == {"x", "[1, 2]"}


def test_trial_names_short_unique_and_usable_as_folders() -> None:
    keys = ["model.layers[0].init", "model.layers[2].init", "train.lr", "data.scale"]
    assert list(short_keys(keys).values()) == ["layers0.init", "layers2.init", "lr", "scale"]
    names = trial_names([{"train.lr": 0.1}, {"train.lr": 0.1}, {"model.layers[0].kernel": [3, 2]},
                         {"x": "a" * 150}, {"data.path": "../up/../x.npz"}])  # fmt: skip
    assert names[:3] == ["lr_0.1", "lr_0.1-2", "kernel_3_2"]
    assert len(names[3]) <= 100 and names[3] != trial_names([{"x": "a" * 151}])[0]
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._-]+", name) and ".." not in name


# ---- checks before anything runs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"grid": {"train.lrr": [0.1]}}, "{f}: grid: train.lrr=0.1: unknown key (did you mean 'lr'?)"),
        ({"grid": {"train.lr": [0.1, -1]}}, "{f}: grid: train.lr=-1: expected a number > 0, got -1"),
        ({"grid": {"model.layers[7].init": ["zeros"]}},
         "{f}: grid: model.layers[7].init=zeros: model.layers has 3 entries, so there is no index 7"),
        ({"random": {"n": 2, "space": {"data.limit": {"int": [0, 0]}}}},
         "{f}: random.space: data.limit=0: expected an integer ≥ 1 (or null), got 0"),
        ({"set": {"train.epochs": 0}, "seeds": [1]},
         "{f}: set: train.epochs=0: expected an integer ≥ 1, got 0"),
        ({"grid": {"train.lr": 0.1}}, "{f}: grid.train.lr: expected a non-empty list of values, got 0.1"),
        ({"grid": {"train.lr": [0.1, 0.1]}}, "{f}: grid.train.lr: 0.1 is listed twice"),
        ({"gird": {"train.lr": [0.1]}}, "{f}: gird: unknown key (did you mean 'grid'?)"),
        ({"metric": "acc", "seeds": [1]},
         "{f}: metric: must be one of val_acc, val_loss, train_acc, train_loss, got 'acc' (did you mean "
         "'val_acc'?)"),
        ({"random": {"n": 3, "space": {"train.lr": {"loguniform": [0, 1]}}}},
         "{f}: random.space.train.lr: expected loguniform: [low, high] with low > 0, got [0, 1]"),
        ({"seeds": [1], "grid": {"seed": [2]}},
         "{f}: grid.seed: the seeds list already sets the seed; remove one"),
        ({"seeds": [1], "base": "nowhere.yaml"}, "{f}: base: {d}/nowhere.yaml: file not found"),
        ({"set": {"train.lr": 1}, "grid": {"train.lr": [2]}},
         "{f}: set.train.lr: also in grid; a key is either fixed or swept"),
        ({}, "{f}: nothing to sweep: give a grid, seeds or random samples"),
    ],
)  # fmt: skip
def test_a_bad_sweep_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, keys: dict[str, Any], message: str
) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": str(base_file(tmp_path)), **keys}), encoding="utf-8")
    with pytest.raises(UserError) as e:
        prepare(path, tmp_path / "runs")
    assert str(e.value) == message.format(f=path, d=tmp_path)
    assert not (tmp_path / "runs").exists()


def test_keys_are_judged_by_the_trials_they_make(tmp_path: Path) -> None:
    """A key that only works with another swept key is fine; a combination that does not work names
    the trial, when neither of its keys fails alone."""
    fits = prepare(spec(tmp_path, grid={"train.optimizer": ["adam"], "train.betas": [[0.8, 0.9]]}), tmp_path)
    assert [p.trial.name for p in fits.trials] == ["optimizer_adam-betas_0.8_0.9"]  # betas alone: sgd's error
    with pytest.raises(UserError) as e:
        prepare(spec(tmp_path, grid={"train.optimizer": ["sgd", "adam"], "train.momentum": [0.5]}), tmp_path)
    assert str(e.value) == (
        "<sweep>: trial optimizer_adam-momentum_0.5 (train.optimizer=adam train.momentum=0.5): "
        "train.momentum: only used with optimizer sgd, not adam; remove it"
    )


def test_without_dask_running_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed → ImportError
    plan = prepare(spec(tmp_path, seeds=[0]), tmp_path / "runs")
    with pytest.raises(
        UserError, match=r"^dask\.distributed: not installed; .*pip install 'cnnbp\[sweep\]'$"
    ):
        plan.run()
    assert not (tmp_path / "runs").exists()


# ---- running ----------------------------------------------------------------------------------------------


def test_a_sweep_writes_a_run_folder_per_trial_and_trials_csv(tmp_path: Path, dask_scheduler: str) -> None:
    out = tmp_path / "runs"
    result = sweep(
        spec(tmp_path, grid={"train.lr": [0.05, 0.2]}, seeds=[1, 2]), out, scheduler=dask_scheduler
    )
    folder = out / "sw"
    names = ["lr_0.05-seed_1", "lr_0.05-seed_2", "lr_0.2-seed_1", "lr_0.2-seed_2"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([SWEEP_FILE, TRIALS_CSV, *names])
    assert result.exit_code == 0 and result.ran == 4 and [r.trial for r in result.rows] == names
    stored = yaml.safe_load((folder / SWEEP_FILE).read_text(encoding="utf-8"))
    assert stored["grid"] == {"train.lr": [0.05, 0.2]} and stored["seeds"] == [1, 2]
    assert stored["metric"] == "val_acc" and stored["mode"] == "max"
    rows = csv_rows(folder / TRIALS_CSV)
    assert list(rows[0]) == ["trial", "overrides", "status", "final_val_acc", "best_val_acc", "best_epoch",
                             "epochs", "seconds", "attempts", "worker", "reason"]  # fmt: skip
    for row, name, (lr, seed) in zip(rows, names, [(0.05, 1), (0.05, 2), (0.2, 1), (0.2, 2)], strict=True):
        run = folder / name
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
        assert (config["name"], config["train"]["lr"], config["seed"]) == (name, lr, seed)
        assert config["train"]["epochs"] == 3 and sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "0000.h5", "0002.h5", "0003.h5"]  # fmt: skip
        metrics = csv_rows(run / "metrics.csv")
        acc = [float(m["val_acc"]) for m in metrics]
        assert row["trial"] == name and row["overrides"] == f"train.lr={lr} seed={seed}"
        assert row["status"] == "finished" and row["attempts"] == "1" and row["reason"] == ""
        assert float(row["final_val_acc"]) == acc[-1] and float(row["best_val_acc"]) == max(acc)
        assert int(row["best_epoch"]) == acc.index(max(acc)) and row["epochs"] == "3"
        assert float(row["seconds"]) > 0 and row["worker"].startswith("inproc://")
    finals = [float(r["final_val_acc"]) for r in rows]
    assert [r.final for r in result.ranked()] == sorted(finals, reverse=True)


def test_a_second_run_skips_finished_trials_and_runs_only_what_is_new(
    tmp_path: Path, dask_scheduler: str
) -> None:
    out, keys = tmp_path / "runs", {"grid": {"train.lr": [0.05, 0.2]}}
    sweep(spec(tmp_path, **keys), out, scheduler=dask_scheduler)
    files = {p: p.stat().st_mtime_ns for p in (out / "sw").rglob("*") if p.is_file() and p.name != TRIALS_CSV}
    again = sweep(spec(tmp_path, **keys), out, scheduler=dask_scheduler)
    assert again.ran == 0 and again.exit_code == 0 and [r.status for r in again.rows] == ["finished"] * 2
    assert all(p.stat().st_mtime_ns == t for p, t in files.items() if p.name != SWEEP_FILE)  # untouched
    keys["grid"]["train.lr"].append(0.1)  # one more value: only its trial runs
    more = sweep(spec(tmp_path, **keys), out, scheduler=dask_scheduler)
    assert more.ran == 1 and [r.attempts for r in more.rows] == [1, 1, 1]
    assert all(p.stat().st_mtime_ns == t for p, t in files.items() if p.name != SWEEP_FILE)


def test_more_epochs_continue_the_finished_trials_and_another_change_is_refused(
    tmp_path: Path, dask_scheduler: str
) -> None:
    out = tmp_path / "runs"
    sweep(spec(tmp_path, seeds=[0]), out, scheduler=dask_scheduler)
    longer = sweep(spec(tmp_path, seeds=[0], set={"train.epochs": 5}), out, scheduler=dask_scheduler)
    assert longer.ran == 1 and longer.rows[0].epochs == 5 and longer.rows[0].attempts == 2
    assert [m["epoch"] for m in csv_rows(out / "sw" / "seed_0" / "metrics.csv")] == list("012345")
    with pytest.raises(UserError, match=r"^<sweep>: trial seed_0: .*config\.yaml holds another config "
                                        r"\(changed: train\.lr\); delete that folder"):  # fmt: skip
        prepare(spec(tmp_path, seeds=[0], set={"train.epochs": 5, "train.lr": 0.3}), out)


def test_a_diverged_trial_is_recorded_and_the_others_finish(tmp_path: Path, dask_scheduler: str) -> None:
    s = spec(tmp_path, set={"train.divergence_factor": 3}, grid={"train.lr": [0.1, 1000]})
    result = sweep(s, tmp_path / "runs", scheduler=dask_scheduler)
    ok, bad = result.rows
    assert (ok.status, bad.status) == ("finished", "diverged") and result.exit_code == 1
    assert bad.reason.startswith("diverged in epoch 1 at step 2") and "\n" not in bad.reason
    assert bad.epochs == 0 and math.isfinite(bad.final)  # the last good metrics: the initial state
    assert [r.trial for r in result.ranked()] == ["lr_0.1"]
    again = sweep(s, tmp_path / "runs", scheduler=dask_scheduler)  # the same config diverges the same way
    assert again.ran == 0 and again.rows[1].status == "diverged" and again.rows[1].attempts == 1


def test_a_trial_keeps_its_shards_but_runs_them_on_one_cpu_with_the_numbers_of_a_plain_train(
    tmp_path: Path, dask_scheduler: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train.threads: 2``: a trial cuts each batch in two shards as ``cnnbp train`` does, but runs them
    one after the other on its worker's thread (the workers already share out the CPUs): no helper
    process, no thread.  Its weights are bit for bit those of a plain train of the same config."""
    from cnnbp.api import train
    from cnnbp.checkpoint import read_checkpoint
    from cnnbp.core.parallel import Shards
    from cnnbp.runs import find_checkpoints

    threads: list[int] = []  # the threads (or processes) each step's shards were given
    real = Shards.gradients

    def spy(self: Shards, x: Any, y: Any, n: int, record: Any = None) -> Any:
        threads.append(n)
        return real(self, x, y, n, record)

    monkeypatch.setattr(Shards, "gradients", spy)  # the in-process cluster's workers see it too
    base = tiny_config()
    base["train"]["threads"] = 2
    result = sweep({"name": "sw", "base": str(write_config(tmp_path, base)), "seeds": [0]}, tmp_path / "runs",
                   scheduler=dask_scheduler)  # fmt: skip
    assert result.exit_code == 0 and threads == [1] * 6  # 3 epochs of 2 batches (6 training samples)
    trial = tmp_path / "runs" / "sw" / "seed_0"
    assert json.loads((trial / "status.json").read_text(encoding="utf-8"))["shards"] == 2
    plain = train({**base, "seed": 0}, out=tmp_path / "plain")
    assert json.loads((plain.path / "status.json").read_text(encoding="utf-8"))["shards"] == 2
    ours, theirs = (read_checkpoint(find_checkpoints(run)[-1][1]) for run in (trial, plain.path))
    assert ours.step == theirs.step == 6
    for name, group in theirs.weights.items():
        for key, w in group.items():
            assert np.array_equal(ours.weights[name][key], w), f"{name}.{key}"


def test_a_failed_trial_is_tried_once_more_then_left(tmp_path: Path, dask_scheduler: str) -> None:
    missing = tmp_path / "nowhere.h5"  # found missing only when the trial starts
    s = spec(tmp_path, grid={"model.init_from": [None, str(missing)]})
    attempts = []
    for _ in range(3):
        result = sweep(s, tmp_path / "runs", scheduler=dask_scheduler)
        assert result.exit_code == 1 and result.rows[0].status == "finished"
        failed = result.rows[1]
        assert failed.status == "failed" and failed.reason.startswith(f"model.init_from: {missing}")
        attempts.append((result.ran, failed.attempts))
    assert attempts == [(2, 1), (1, 2), (0, 2)]


def test_a_folder_left_by_a_trial_killed_before_its_config_is_replaced(
    tmp_path: Path, dask_scheduler: str
) -> None:
    (tmp_path / "runs" / "sw" / "seed_0" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "sw" / SWEEP_FILE).write_text("name: sw\n", encoding="utf-8")
    result = sweep(spec(tmp_path, seeds=[0]), tmp_path / "runs", scheduler=dask_scheduler)
    assert result.rows[0].status == "finished" and not (tmp_path / "runs" / "sw" / "seed_0-2").exists()


def test_a_folder_that_is_not_a_sweep_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs" / "sw").mkdir(parents=True)
    (tmp_path / "runs" / "sw" / "config.yaml").write_text("x: 1\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"runs/sw: exists and is not a sweep folder \(no sweep\.yaml\)"):
        prepare(spec(tmp_path, seeds=[0]), tmp_path / "runs")


def test_the_summary_ranks_trials_and_holds_the_best_curves(tmp_path: Path, dask_scheduler: str) -> None:
    s = spec(tmp_path, set={"train.divergence_factor": 3}, grid={"train.lr": [0.02, 0.1, 0.5, 0.3, 1000]})
    sweep(s, tmp_path / "runs", scheduler=dask_scheduler)
    summary = sweep_summary(tmp_path / "runs" / "sw")
    rows = {r["trial"]: r for r in summary["trials"]}
    finished = [n for n, r in rows.items() if r["status"] == "finished"]
    assert summary["ranked"] == sorted(finished, key=lambda n: -rows[n]["final"])  # the sweep's order on ties
    assert summary["counts"] == {"finished": 4, "diverged": 1}
    assert [c["trial"] for c in summary["curves"]] == summary["ranked"][:3]
    first = summary["curves"][0]
    metrics = csv_rows(tmp_path / "runs" / "sw" / first["trial"] / "metrics.csv")
    assert first["val_acc"] == [float(m["val_acc"]) for m in metrics]
    assert first["val_loss"] == [float(m["val_loss"]) for m in metrics]


def test_local_workers_use_one_blas_thread_and_ignore_a_terminals_ctrl_c() -> None:
    with dask_client(workers=1) as client:
        env = client.submit(
            lambda: {v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
        )
        handler = client.submit(lambda: signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
        assert env.result() == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        assert handler.result() is True
        assert list(client.nthreads().values()) == [1]


def test_two_sweeps_never_run_in_one_folder(tmp_path: Path, dask_scheduler: str) -> None:
    from cnnbp.resuming import run_lock

    folder = tmp_path / "runs" / "sw"
    folder.mkdir(parents=True)
    (folder / SWEEP_FILE).write_text("name: sw\n", encoding="utf-8")
    with (
        run_lock(folder),
        pytest.raises(UserError, match=r"runs/sw: another cnnbp sweep is running in this folder"),
    ):
        sweep(spec(tmp_path, seeds=[0]), tmp_path / "runs", scheduler=dask_scheduler)
    assert not (folder / "seed_0").exists()
