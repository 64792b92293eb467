"""End-to-end tests of ``cnnbp sweep``: the plan, the progress and the ranked table, ``--json``, exit codes,
one-line errors, ``cnnbp inspect`` of a sweep folder, and Ctrl-C on a real local cluster of worker
processes (finished trials kept, the running ones saved and resumed bit for bit by the next run).

Most runs use the session's in-process Dask cluster (``--scheduler``); the Ctrl-C test starts
``python -m cnnbp sweep --workers 2`` as a process group and signals it as a terminal does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnnbp.app import app
from cnnbp.checkpoint import read_checkpoint
from tests.cli.conftest import tiny_config, write_config

pytest.importorskip("distributed")

REPO = Path(__file__).resolve().parents[3]
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}
runner = CliRunner()


def invoke(*args: Any):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args], env=PLAIN)


def sweep_file(folder: Path, **keys: Any) -> Path:
    """``folder/s.yaml``: a sweep of the tiny inline-data config (3 epochs) with these keys."""
    write_config(folder, tiny_config())
    path = folder / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "sw", "base": "tiny.yaml", **keys}), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test works in its own folder, with relative paths (as people type them), so lines stay short."""
    monkeypatch.chdir(tmp_path)


def fits(text: str) -> bool:
    return all(len(line) <= 80 for line in text.splitlines()) and "\x1b" not in text


def test_help_lists_the_options() -> None:
    result = invoke("sweep", "--help")
    assert result.exit_code == 0
    for option in ("--workers", "--scheduler", "--out", "--json", "--dry-run"):
        assert option in result.stdout


def test_dry_run_lists_the_trials_and_writes_nothing(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"train.lr": [0.05, 0.2]}, seeds=[0, 1])
    result = invoke("sweep", path.name, "--out", "runs", "--dry-run")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "sweep sw: 4 trials"
    assert lines[1:3] == ["into  runs/sw", f"base  {tmp_path / 'tiny.yaml'}"]
    assert [line.split()[1] for line in lines[-4:]] == ["lr_0.05-seed_0", "lr_0.05-seed_1", "lr_0.2-seed_0",
                                                        "lr_0.2-seed_1"]  # fmt: skip
    assert lines[-1].split()[2:] == ["new", "train.lr=0.2", "seed=1"]
    assert result.stderr.startswith(
        "dry run: the sweep and its 4 trial configs are valid; nothing was written"
    )
    assert fits(result.stdout) and not (tmp_path / "runs").exists()


def test_a_bad_sweep_file_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    path = sweep_file(tmp_path, grid={"model.layers[0].filtres": [2]})
    result = invoke("sweep", path.name, "--out", "runs")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "error: s.yaml: grid: model.layers[0].filtres=2: unknown key (did you mean 'filters'?)"
    ]
    assert result.stdout == "" and not (tmp_path / "runs").exists()
    both = invoke("sweep", path, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1")
    assert both.exit_code == 2 and "--workers: not used with --scheduler" in both.stderr


def test_a_sweep_prints_a_line_per_trial_and_the_ranked_table(tmp_path: Path, dask_scheduler: str) -> None:
    path = sweep_file(tmp_path, grid={"train.lr": [0.05, 0.5]}, seeds=[0, 1])
    result = invoke("sweep", path.name, "--out", "runs", "--scheduler", dask_scheduler)
    assert result.exit_code == 0, result.output
    err = result.stderr.splitlines()
    assert err[0] == "sweep folder: runs/sw"
    assert err[1].startswith("4 trials; running 4 on 2 Dask workers at inproc://")
    trial_lines = [line for line in err if line.startswith("[")]
    assert [line[:6] for line in trial_lines] == ["[1/4] ", "[2/4] ", "[3/4] ", "[4/4] "]
    assert all(" finished  val_acc " in line for line in trial_lines)
    out = result.stdout.splitlines()
    assert out[0] == "sweep sw · ranked by the last epoch's val_acc (max)"
    assert out[1].split() == ["#", "trial", "status", "val_acc", "best", "(epoch)", "seconds"]
    assert [line.split()[0] for line in out[3:7]] == ["1", "2", "3", "4"]
    assert out[-2:] == ["trials   4: 4 finished", "inspect  cnnbp inspect runs/sw"]
    assert fits(result.stdout) and fits(result.stderr)
    again = invoke("sweep", path.name, "--out", "runs", "--scheduler", dask_scheduler)
    assert again.exit_code == 0 and "nothing to do: 4: 4 finished" in again.stderr


def test_json_prints_an_object_per_trial_then_the_summary(tmp_path: Path, dask_scheduler: str) -> None:
    path = sweep_file(tmp_path, set={"train.divergence_factor": 3}, grid={"train.lr": [0.1, 1000]})
    result = invoke("sweep", path.name, "--out", "runs", "--scheduler", dask_scheduler, "--json")
    assert result.exit_code == 1, result.output  # a trial diverged
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    trials, summary = objects[:-1], objects[-1]
    assert sorted((t["kind"], t["trial"], t["status"]) for t in trials) == [
        ("trial", "lr_0.1", "finished"), ("trial", "lr_1000", "diverged")]  # fmt: skip
    diverged = next(t for t in trials if t["status"] == "diverged")
    assert diverged["reason"].startswith("diverged in epoch 1 at step 2 (batch 2 of 2): loss ")
    assert summary["kind"] == "summary" and summary["trials"] == 2 and summary["ran"] == 2
    assert (summary["finished"], summary["diverged"], summary["failed"]) == (1, 1, 0)
    assert summary["best"]["trial"] == "lr_0.1"
    assert "sweep sw · ranked" in result.stderr  # the table goes to stderr: stdout is JSON only


def test_diverged_trials_are_shown_with_their_reason_and_exit_1(tmp_path: Path, dask_scheduler: str) -> None:
    path = sweep_file(tmp_path, set={"train.divergence_factor": 3}, grid={"train.lr": [0.1, 1000]})
    result = invoke("sweep", path.name, "--out", "runs", "--scheduler", dask_scheduler)
    assert result.exit_code == 1
    err = result.stderr.splitlines()
    at = next(i for i, line in enumerate(err) if "lr_1000" in line)
    assert "diverged" in err[at] and err[at + 1].strip().startswith("diverged in epoch 1 at step 2")
    rows = [line.split() for line in result.stdout.splitlines()[3:5]]
    assert [r[:3] for r in rows] == [["1", "lr_0.1", "finished"], ["-", "lr_1000", "diverged"]]
    assert fits(result.stdout)


def test_inspect_of_a_sweep_folder_ranks_the_trials_and_draws_the_best(
    tmp_path: Path, dask_scheduler: str
) -> None:
    path = sweep_file(tmp_path, grid={"train.lr": [0.02, 0.1, 0.5, 0.3]})
    assert invoke("sweep", path.name, "--out", "runs", "--scheduler", dask_scheduler).exit_code == 0
    folder = Path("runs") / "sw"
    result = invoke("inspect", folder)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        f"sweep   sw  ({folder})",
        "trials  4: 4 finished",
        "ranked  by the last epoch's val_acc (max)",
    ]
    assert sum(line.startswith(("val_acc of the best", "val_loss of the best")) for line in lines) == 2
    assert fits(result.stdout)
    data = json.loads(invoke("inspect", folder, "--json").stdout)
    assert len(data["trials"]) == 4 and [c["trial"] for c in data["curves"]] == data["ranked"][:3]
    table = [line.split()[1] for line in lines[6:10]]
    assert table == data["ranked"]


def test_without_dask_the_command_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    result = invoke("sweep", sweep_file(tmp_path, seeds=[0]).name, "--out", "runs")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: dask.distributed: not installed; cnnbp sweep runs trials on Dask: pip install 'cnnbp[sweep]'"
    )
    assert not Path("runs").exists()
    dry = invoke("sweep", "s.yaml", "--dry-run")  # checking a sweep needs no Dask
    assert dry.exit_code == 0 and "seed_0" in dry.stdout


# ---- Ctrl-C on a local cluster of worker processes ------------------------------------------------------


def _cli(*args: str | Path, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbp", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, cwd=REPO, env={**os.environ, **PLAIN}, **kwargs,
    )  # fmt: skip


def _rows(run: Path) -> int:
    path = run / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def _weights(path: Path) -> dict[str, np.ndarray]:
    ck = read_checkpoint(path)
    return {f"{layer}.{key}": w for layer, group in ck.weights.items() for key, w in group.items()}


@pytest.mark.slow
def test_ctrl_c_stops_every_worker_keeps_finished_trials_and_a_rerun_completes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "name": "stop", "base": str(REPO / "configs" / "digits.yaml"),
        "set": {"data.limit": 200, "record.every": 1000, "record.probe": 2},
        "grid": {"train.epochs": [2, 40]}, "seeds": [0, 1],
    }), encoding="utf-8")  # fmt: skip
    out = tmp_path / "runs"
    folder = out / "stop"
    short, long = ["epochs_2-seed_0", "epochs_2-seed_1"], ["epochs_40-seed_0", "epochs_40-seed_1"]
    proc = _cli("sweep", path, "--out", out, "--workers", "2", start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not all(_rows(folder / n) >= 3 for n in short) or not all(_rows(folder / n) >= 2 for n in long):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the client and its workers
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert stderr.splitlines()[-2:] == [
        "sweep interrupted: 2 of 4 trials finished; running trials saved their state",
        f"continue with: cnnbp sweep {path} --out {out}",
    ]
    deadline = time.monotonic() + 10
    while True:  # every process of the group is gone: no worker outlives the sweep
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a worker process outlived the sweep"
        time.sleep(0.1)
    rows = {r["trial"]: r for r in _csv(folder / "trials.csv")}
    assert [rows[n]["status"] for n in short + long] == ["finished", "finished", "interrupted", "interrupted"]
    stamps = {p: p.stat().st_mtime_ns for n in short for p in (folder / n).rglob("*") if p.is_file()}
    for n in long:  # the state at the stop is saved in a checkpoint marked interrupted
        ((epoch, saved),) = [
            (int(p.stem), p) for p in (folder / n / "checkpoints").glob("*.h5") if p.stem != "0000"
        ]
        assert read_checkpoint(saved).interrupted and epoch < 40
        assert rows[n]["reason"].startswith(f"interrupted in epoch {epoch}")

    again = _cli("sweep", path, "--out", out, "--workers", "2")
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert "left as they are: 2 finished" in stderr and "running 2 (2 resumed)" in stderr
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished trials untouched
    rows = {r["trial"]: r for r in _csv(folder / "trials.csv")}
    assert all(rows[n]["status"] == "finished" for n in short + long)
    assert [rows[n]["attempts"] for n in short + long] == ["1", "1", "2", "2"]
    # the resumed trial ends exactly where a run that never stopped ends
    ref = _cli(
        "train", folder / long[0] / "config.yaml", "--out", tmp_path / "ref", "--name", "ref", "--quiet"
    )
    assert ref.wait(timeout=120) == 0
    got = _weights(folder / long[0] / "checkpoints" / "0040.h5")
    want = _weights(tmp_path / "ref" / "ref" / "checkpoints" / "0040.h5")
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_a_sweep_folder_without_trials_shows_an_empty_table() -> None:
    from cnnbp.render.sweep import ranked_table

    lines = [line.plain.rstrip() for line in ranked_table([], "val_acc", "max", 80)]
    assert lines[0].split() == ["#", "trial", "status", "val_acc", "best", "(epoch)", "seconds"]
    assert len(lines) == 2 and set(lines[1]) == {"─"}
