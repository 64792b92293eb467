"""Real signals to a real ``python -m cnnbp train`` process: SIGINT and SIGTERM mid-training (exit
codes 130/143, a marked checkpoint, the resume command, a bit-identical resume) and SIGKILL at seeded
random moments (every finished checkpoint stays readable, metrics.csv parseable, resume completes and
matches a run that was never killed).

Every leg runs as ``python -m cnnbp`` (the reference runs too): bit-identity holds for one BLAS
set-up, and the command pins BLAS to one thread before NumPy loads, which the test process cannot.
These take a few seconds each; they are marked ``slow`` but run by default.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cnnbp.checkpoint import Checkpoint, read_checkpoint
from cnnbp.runs import find_checkpoints, read_metrics

REPO = Path(__file__).resolve().parents[2]
# the built-in digits config on 800 images: ~25 batches and a checkpoint per epoch, a few epochs a second
ARGS = ["--set", "data.limit=800", "--set", "record.probe=4"]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1"}


def start(*args: str | Path) -> subprocess.Popen[str]:
    """``cnnbp train ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "cnnbp", "train", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env(),
    )  # fmt: skip


def train(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``cnnbp train ARGS`` to the end."""
    return subprocess.run(
        [sys.executable, "-m", "cnnbp", "train", *map(str, args)],
        capture_output=True, text=True, cwd=REPO, env=_env(), timeout=120,
    )  # fmt: skip


def wait_for(predicate, proc: subprocess.Popen[str], timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (exit {proc.returncode}) before the moment to signal it:\n{err}")
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting for the run to get going")
        time.sleep(0.01)


def metrics_rows(run: Path) -> int:
    path = run / "metrics.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def same_weights(a: Checkpoint, b: Checkpoint) -> bool:
    return (a.epoch, a.step) == (b.epoch, b.step) and all(
        np.array_equal(w, b.weights[name][key]) for name, g in a.weights.items() for key, w in g.items()
    )


def straight_run(out: Path, epochs: int) -> Checkpoint:
    done = train("--out", out, "--name", "straight", "--epochs", epochs, "--quiet", *ARGS)
    assert done.returncode == 0, done.stderr
    return read_checkpoint(find_checkpoints(out / "straight")[-1][1])


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_marked_checkpoint_and_resume(tmp_path: Path, sig: int, code: int) -> None:
    out, run = tmp_path / "runs", tmp_path / "runs" / "sig"
    proc = start("--out", out, "--name", "sig", "--epochs", "500", "--set", "record.every=1000", *ARGS)
    try:
        wait_for(lambda: metrics_rows(run) >= 2, proc)  # epoch 1 done: the state moved since checkpoint 0
        if sig == signal.SIGINT:  # while it trains, the run cannot be resumed by another process
            busy = train("--resume", run)
            assert busy.returncode == 2 and "another cnnbp process is training this run" in busy.stderr
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1] == f"resume with: cnnbp train --resume {run}"
    said = lines[-2]
    assert said.startswith("interrupted in epoch ") and "; saved " in said
    saved = Path(said.split("; saved ")[1])
    ck = read_checkpoint(saved)
    assert ck.interrupted and ck.resume is not None
    assert f"at step {ck.step};" in said and saved.name == f"{ck.epoch:04d}.h5"
    assert ck.step == int(ck.history["step"][-1]) + (
        0 if ck.resume.epoch_complete else ck.resume.batches_done
    )
    assert [e for e, _ in find_checkpoints(run)] == [0, ck.epoch]
    assert not list(run.rglob("*.tmp"))

    # resume to the end of the next epoch and compare with a run that was never stopped
    done = train("--resume", run, "--epochs", ck.epoch + 1, "--quiet")
    assert done.returncode == 0, done.stderr
    complete = read_checkpoint(run / "checkpoints" / f"{ck.epoch + 1:04d}.h5")
    assert not complete.interrupted
    if not ck.resume.epoch_complete:  # the interrupted checkpoint was replaced by its epoch's own
        assert not read_checkpoint(saved).interrupted
    assert same_weights(complete, straight_run(tmp_path / "ref", ck.epoch + 1))


def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(20240607)
    out, run, epochs = tmp_path / "runs", tmp_path / "runs" / "kill", 16
    kills = 5
    for i in range(kills):
        if i == 0:
            proc = start("--out", out, "--name", "kill", "--epochs", epochs, *ARGS)
        else:
            proc = start("--resume", run)
        try:
            if i == 0:  # a run killed before it wrote config.yaml never started: give it that long
                wait_for(lambda: (run / "config.yaml").exists(), proc)
            time.sleep(rng.uniform(0.05, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            proc.kill()
        # every checkpoint that was finished opens whole; a .tmp may be left for the next run to remove
        for _, path in find_checkpoints(run):
            read_checkpoint(path)
        cols = read_metrics(run)
        assert cols["epoch"] == [float(e) for e in range(len(cols["epoch"]))]
    done = train("--resume", run, "--quiet")
    assert done.returncode == 0, done.stderr
    assert not list(run.rglob("*.tmp"))
    final = read_checkpoint(find_checkpoints(run)[-1][1])
    assert final.epoch == epochs and not final.interrupted
    assert read_metrics(run)["epoch"] == [float(e) for e in range(epochs + 1)]
    assert same_weights(final, straight_run(tmp_path / "ref", epochs))
