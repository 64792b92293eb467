"""Faults cnnbp must survive with one line, a true exit code, and nothing broken left behind: errors
nobody expected (a bug: exit 70 and a log), running out of memory mid-run, a full, read-only or vanished
disk (a real small tmpfs where this test may mount one), Ctrl-C at awkward moments (while loading,
inside a checkpoint write, after the last checkpoint), and a symlink where a run folder would go.

Generated inputs for the same contract (configs, data files, checkpoints, ``--set`` values, signal
moments) are in tests/cli/test_fuzz.py; memory caps in tests/cli/test_memory.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnnbp.app import app
from cnnbp.checkpoint import read_checkpoint
from cnnbp.runner import Callback
from cnnbp.runs import find_checkpoints, read_metrics, read_status
from tests.cli.conftest import tiny_config, write_config

REPO = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux")
runner = CliRunner()


@pytest.fixture(autouse=True)
def crash_logs_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Crash logs of the internal errors these tests cause go to a temporary cache folder."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache


def invoke(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "80", "NO_COLOR": "1"})


def one_line(result: object) -> str:
    """The one stderr line of a failed command (and nothing on the terminal looks like a traceback)."""
    assert "Traceback" not in result.output, result.output
    (line,) = result.stderr.strip().splitlines()
    return line


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: Callback) -> None:
    """The next in-process ``cnnbp train`` gets ``callback`` too."""
    from cnnbp.commands import train as train_command

    original = train_command._callbacks
    monkeypatch.setattr(train_command, "_callbacks", lambda *a, **k: [*original(*a, **k), callback])


def intact(run: Path) -> list[int]:
    """The epochs of a run's checkpoints, after reading every one whole; no temporary file is left."""
    assert not list(run.rglob("*.tmp"))
    return [read_checkpoint(p).epoch for _, p in find_checkpoints(run)]


class Raise(Callback):
    """Raises ``error`` in ``on_epoch`` of epoch ``epoch`` (after that epoch's checkpoint is written)."""

    def __init__(self, epoch: int, error: BaseException) -> None:
        self.epoch, self.error = epoch, error

    def on_epoch(self, row: dict[str, float]) -> None:
        if int(row["epoch"]) == self.epoch:
            raise self.error


# ---- errors nobody expected: exit 70, one line, the details in a log ----------------------------------


def test_a_bug_inside_a_run_is_exit_70_with_the_traceback_in_train_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, tiny_config(epochs=3, every=1))
    with_callback(monkeypatch, Raise(2, ZeroDivisionError("the callback divided by zero")))
    result = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 70
    run = tmp_path / "runs" / "tiny"
    log = run / "train.log"
    assert one_line(result) == (
        "error: internal error, a bug in cnnbp (please report it): ZeroDivisionError: the callback "
        f"divided by zero; the details are in {log}"
    )
    text = log.read_text(encoding="utf-8")
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError" in text
    assert intact(run) == [0, 1, 2]
    assert read_status(run)["state"] == "failed"
    assert invoke("train", "--resume", run, "--quiet").exit_code == 0  # the run goes on from there
    assert intact(run) == [0, 1, 2, 3]


def test_a_bug_outside_a_run_is_logged_in_the_cache_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_logs_in_tmp: Path
) -> None:
    from cnnbp.commands import train as train_command

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(train_command.Session, "new", broken)
    result = invoke("train", "--dry-run")
    assert result.exit_code == 70
    (log,) = (crash_logs_in_tmp / "cnnbp").glob("cnnbp-crash-*.log")
    assert one_line(result).endswith(f"RuntimeError: a bug; the details are in {log}")
    assert "Traceback" in log.read_text() and "a bug" in log.read_text()


@pytest.mark.parametrize(
    ("error", "code", "line"),
    [
        (MemoryError("Unable to allocate 3.2 GiB for an array"), 2,
         "error: out of memory: Unable to allocate 3.2 GiB for an array; free memory, or make the model, "
         "train.batch_size, record.probe or the data (data.limit) smaller"),
        (PermissionError(13, "Permission denied", "/data/x.npz"), 2, "error: /data/x.npz: Permission denied"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)  # fmt: skip
def test_what_escapes_a_command_is_one_line_and_a_true_exit_code(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, code: int, line: str
) -> None:
    from cnnbp.commands import train as train_command

    def fails(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(train_command.Session, "new", fails)
    result = invoke("train", "--dry-run")
    assert (result.exit_code, one_line(result)) == (code, line)


def test_the_console_entry_point_ends_the_same_way(monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    from cnnbp import app as app_module
    from cnnbp.commands import train as train_command

    monkeypatch.setattr(train_command.Session, "new", lambda *a, **k: {}["missing"])
    monkeypatch.setattr(sys, "argv", ["cnnbp", "train", "--dry-run"])
    with pytest.raises(SystemExit) as e:
        app_module.main()
    assert e.value.code == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: internal error, a bug in cnnbp")


# ---- memory mid-run ----------------------------------------------------------------------------------


def test_running_out_of_memory_mid_run_names_the_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, tiny_config(epochs=3, every=1))
    with_callback(monkeypatch, Raise(2, MemoryError("Unable to allocate 1.0 GiB")))
    result = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    run = tmp_path / "runs" / "tiny"
    assert result.exit_code == 2
    assert one_line(result) == (
        "error: out of memory in epoch 2: Unable to allocate 1.0 GiB; free memory, or make the model, "
        "train.batch_size, record.probe or the data (data.limit) smaller; the last checkpoint is "
        f"{run / 'checkpoints' / '0002.h5'}"
    )
    assert intact(run) == [0, 1, 2]
    assert read_status(run)["state"] == "failed"


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnbp.core.trainer import Trainer

    def no_memory(*args: object, **kwargs: object) -> None:
        raise MemoryError("Unable to allocate 6.1 GiB")

    monkeypatch.setattr(Trainer, "evaluate", no_memory)
    config = write_config(tmp_path, tiny_config())
    result = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 2
    assert one_line(result).startswith("error: out of memory while evaluating the initial weights: Unable")
    assert list((tmp_path / "runs").iterdir()) == []


def test_a_crash_log_that_cannot_be_written_falls_back_to_the_cache(crash_logs_in_tmp: Path) -> None:
    from cnnbp.errors import InternalError, write_crash_log

    try:
        raise ValueError("deep inside")
    except ValueError as e:
        path = write_crash_log(e, Path("/nonexistent/folder/train.log"))
        error = InternalError(e, path)
    assert path is not None and path.parent == crash_logs_in_tmp / "cnnbp"
    assert "deep inside" in path.read_text() and "Traceback" in path.read_text()
    assert str(error).endswith(f"ValueError: deep inside; the details are in {path}")


# ---- HDF5 never writes a file, never calls back into Python -------------------------------------------


def test_hdf5_works_in_its_own_memory_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every checkpoint is built by HDF5's core driver without a backing file, and read from an image
    in memory: HDF5 is never given a path in a run folder to write, nor a Python file object (whose
    methods it would call back, where Ctrl-C is swallowed)."""
    import h5py

    from cnnbp import checkpoint

    calls: list[tuple] = []
    real = h5py.File

    def spy(name: object, mode: str = "r", **kwargs: object) -> object:
        calls.append((name, mode, kwargs.get("driver"), kwargs.get("backing_store")))
        return real(name, mode, **kwargs)

    monkeypatch.setattr(checkpoint.h5py, "File", spy)
    config = write_config(tmp_path, tiny_config(epochs=2, every=1))
    assert invoke("train", config, "--out", tmp_path / "runs", "--quiet").exit_code == 0
    assert invoke("inspect", tmp_path / "runs" / "tiny").exit_code == 0
    written = [c for c in calls if c[1] == "w"]
    read = [c for c in calls if c[1] == "r"]
    assert len(written) == 3 and read  # checkpoints 0, 1, 2; inspect reads them
    assert all(isinstance(name, str) and (d, b) == ("core", False) for name, _, d, b in written)
    assert all(isinstance(name, h5py.h5f.FileID) for name, *_ in read)  # opened from an image
    assert not any(Path(name).exists() for name, *_ in written)
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny" / "checkpoints").iterdir()) == [
        "0000.h5", "0001.h5", "0002.h5"
    ]  # fmt: skip


# ---- a symlink where the run folder would go -----------------------------------------------------------


def test_a_symlink_at_the_run_name_is_a_taken_name(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    (out / "tiny").symlink_to(tmp_path)  # a folder elsewhere
    (out / "tiny-2").symlink_to(tmp_path / "nowhere")  # a dangling link
    config = write_config(tmp_path, tiny_config(epochs=1))
    result = invoke("train", config, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert intact(out / "tiny-3") == [0, 1]
    assert (out / "tiny").is_symlink() and not (tmp_path / "checkpoints").exists()


# ---- a full, read-only or vanished disk -----------------------------------------------------------------

PAGE = 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs of its own (skipped where this process may not mount one)."""
    if not LINUX or shutil.which("mount") is None:
        pytest.skip("needs Linux and mount(8) for a small tmpfs")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not permitted'})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, free_pages: int) -> None:
    """Leave ``free_pages`` pages of the disk free (a filler file takes the rest)."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    stat = os.statvfs(disk)
    take = max(0, stat.f_bavail * stat.f_frsize - free_pages * PAGE)
    with open(filler, "wb") as fh:
        fh.write(b"\0" * take)


DISK_RUN = ["--set", "data.limit=150", "--set", "record.probe=2", "--epochs", "3", "--quiet"]


@pytest.mark.slow
@settings(derandomize=True, database=None, deadline=None, max_examples=12,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(free=st.integers(0, 160))
@example(free=0)  # config.yaml cannot be written
@example(free=1)  # config.yaml fits, metrics.csv does not
@example(free=2)
@example(free=3)
@example(free=4)
def test_a_full_disk_is_one_line_and_every_checkpoint_before_it_is_whole(small_disk: Path, free: int) -> None:
    """Whatever write the disk runs out at (config, metrics, steps, status, a checkpoint), the run ends
    with one line and exit 2; every checkpoint written before it reads back whole and no temporary file
    is left; a run that wrote no checkpoint leaves no folder; with space again, resume completes it."""
    out = small_disk / "runs"
    shutil.rmtree(out, ignore_errors=True)
    fill(small_disk, free)
    result = invoke("train", "--out", out, *DISK_RUN)
    run = out / "digits"
    if result.exit_code == 0:
        assert intact(run) == [0, 1, 2, 3]
        return
    assert result.exit_code == 2, result.output
    line = one_line(result)
    assert "No space left on device" in line
    if not run.exists():
        return
    epochs = intact(run)
    assert epochs, "a run folder without a checkpoint was left behind"
    assert line.endswith(f"; the last checkpoint is {run / 'checkpoints' / f'{epochs[-1]:04d}.h5'}")
    assert read_metrics(run)["epoch"][: len(epochs)] == [float(e) for e in range(len(epochs))]
    (small_disk / "filler").unlink()
    resumed = invoke("train", "--resume", run, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    assert intact(run) == [0, 1, 2, 3]


class ReadOnly(Callback):
    """Makes the run's checkpoints folder read-only (a read-only bind mount of itself) after epoch 1's
    checkpoint; the files the run holds open elsewhere stay writable, as on a disk remounted read-only
    under a folder."""

    def on_start(self, info: object) -> None:
        self.folder = str(info.run_dir / "checkpoints")

    def on_epoch(self, row: dict[str, float]) -> None:
        if int(row["epoch"]) == 1:
            for args in (["--bind", self.folder, self.folder], ["-o", "remount,bind,ro", self.folder]):
                done = subprocess.run(["mount", *args], capture_output=True)
                assert done.returncode == 0, done.stderr


def test_a_folder_that_turns_read_only(small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_callback(monkeypatch, ReadOnly())
    result = invoke("train", "--out", small_disk / "runs", *DISK_RUN)
    run = small_disk / "runs" / "digits"
    try:
        assert result.exit_code == 2
        line = one_line(result)
        assert line == (
            f"error: {run / 'checkpoints' / '0002.h5'}: cannot write (Read-only file system); the last "
            f"checkpoint is {run / 'checkpoints' / '0001.h5'}"
        )
        assert intact(run) == [0, 1]
    finally:
        subprocess.run(["umount", str(run / "checkpoints")], capture_output=True)


class Remove(Callback):
    """Deletes the run folder after epoch 1's checkpoint."""

    def on_start(self, info: object) -> None:
        self.run = info.run_dir

    def on_epoch(self, row: dict[str, float]) -> None:
        if int(row["epoch"]) == 1:
            shutil.rmtree(self.run)


def test_a_run_folder_removed_mid_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with_callback(monkeypatch, Remove())
    config = write_config(tmp_path, tiny_config(epochs=3, every=1))
    result = invoke("train", config, "--out", tmp_path / "runs", "--quiet")
    assert result.exit_code == 2
    assert "No such file or directory" in one_line(result)
    assert not (tmp_path / "runs" / "tiny").exists()


# ---- signals in a real process --------------------------------------------------------------------------


def start(*args: object, importtime: bool = False) -> subprocess.Popen[str]:
    """``cnnbp ARGS`` in the background; ``importtime``: as the console script starts it (importing
    ``cnnbp.__main__``, then calling its ``main``), with ``-X importtime`` reporting each module loaded."""
    how = ["-m", "cnnbp"]
    if importtime:
        how = ["-X", "importtime", "-c", "from cnnbp.__main__ import main; main()"]
    return subprocess.Popen(
        [sys.executable, *how, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip


@pytest.mark.skipif(not LINUX, reason="POSIX signals")
@pytest.mark.parametrize("after", [0.0, 0.05, 0.15])
def test_ctrl_c_while_cnnbp_loads_is_no_traceback(after: float) -> None:
    """Once the entry point runs (before it, the interpreter starts up and finds the module: Python's
    own), Ctrl-C while the command's modules load ends it with ``interrupted`` and 130, or it has
    already finished."""
    proc = start("train", "--dry-run", "--set", "data.limit=50", importtime=True)
    try:
        line = ""
        while line.split("|")[-1].strip() != "cnnbp.__main__":  # -X importtime reports each module
            line = proc.stderr.readline()
            assert line, "the command ended before loading cnnbp"
        time.sleep(after)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    said = [ln for ln in err.splitlines() if not ln.startswith("import time:")]
    assert "Traceback" not in err and proc.returncode in (0, 130), err
    if proc.returncode == 130:
        assert said == ["interrupted"]


@pytest.mark.skipif(not LINUX, reason="POSIX pipes")
@pytest.mark.parametrize("args", [["schema"], ["train", "--dry-run", "--set", "data.limit=50"]])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(args: list[str]) -> None:
    proc = start(*args)
    proc.stdout.close()  # gone before cnnbp prints its first line
    err = proc.stderr.read()
    proc.wait(timeout=60)
    assert (proc.returncode, err) == (141, "")


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="POSIX signals")
def test_a_second_ctrl_c_during_a_large_checkpoint_stops_at_once(tmp_path: Path) -> None:
    """The first Ctrl-C asks for a checkpoint of 1400 probe samples (half a second or more to build); a
    second one a moment later stops the process at once (not after the checkpoint, not at the end of
    the epoch), with every earlier checkpoint whole and no temporary file."""
    out, run = tmp_path / "runs", tmp_path / "runs" / "big"
    proc = start("train", "--out", out, "--name", "big", "--epochs", "200", "--set", "record.probe=1400",
                 "--set", "record.every=100")  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoints" / "0000.h5").exists() or len(read_metrics(run)["epoch"]) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        second = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - second
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert "stopped at once (second signal); the last checkpoint is " in err
    assert took < 5, f"{took:.1f} s after the second signal"
    assert intact(run)[0] == 0
    assert json.loads((run / "status.json").read_text())["state"] == "interrupted"
