"""Memory: what is available (``cnnbp.memory``), the estimate of a run's peaks against it (cnnbp.config),
and real runs under a memory cap (``RLIMIT_AS`` in a separate process): a run that cannot fit is one
line naming what to change, before anything is written; a MemoryError that still happens is one line
and exit 2, and a run that never started leaves no folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cnnbp import config as config_mod
from cnnbp import memory
from cnnbp.config import check_memory, check_model, load_config, memory_need
from cnnbp.errors import UserError

REPO = Path(__file__).resolve().parents[2]
LINUX = sys.platform.startswith("linux") and Path("/proc/self/status").exists()


def run(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO, timeout=timeout,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "80"},
    )  # fmt: skip


def test_fmt_bytes() -> None:
    assert [memory.fmt_bytes(n) for n in (999, 1000, 12_345_678, 3.2e9, 4e12)] == [
        "1.0 kB", "1.0 kB", "12.3 MB", "3.2 GB", "4.0 TB"
    ]  # fmt: skip


def test_check_fits_says_what_and_what_to_change() -> None:
    memory.check_fits(10, "x", "y", "z", budget=10)  # exactly the budget fits
    with pytest.raises(UserError) as e:
        memory.check_fits(3_200_000_000, "record.probe", "recording 9 samples", "lower it", budget=10**9)
    assert str(e.value) == (
        "record.probe: recording 9 samples needs about 3.2 GB, more than the 1.0 GB of memory available; "
        "lower it"
    )


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_available_counts_the_address_space_limit() -> None:
    """Under ``ulimit -v`` (RLIMIT_AS) what is available is at most the limit less the address space in
    use, however much memory the machine has."""
    code = textwrap.dedent("""
        import resource
        from cnnbp import memory
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))
        print(memory.available())
    """)
    done = run("-c", code)
    assert done.returncode == 0, done.stderr
    assert 0 < int(done.stdout) <= 300 * 2**20


# ---- the estimate ----------------------------------------------------------------------------------------

DLT = REPO / "configs" / "dlt_mnist.yaml"


def test_the_probe_batch_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--set record.probe=60000`` on configs/dlt_mnist.yaml: a checkpoint then holds every layer's
    deltas and outputs for 60000 samples, 2 × 60000 × (784 + 3456·2 + 864 + 768·2 + 192·2 + 10·2) float32
    = 5.0 GB in the file alone — refused before anything is written, naming record.probe."""
    monkeypatch.setattr(config_mod, "_memory_budget", lambda: 8_000_000_000)
    cfg = load_config(DLT, ["record.probe=60000"])
    infos = check_model(cfg)  # training and evaluation fit
    file_bytes = 2 * 60000 * (784 + 3456 * 2 + 864 + 768 * 2 + 192 + 192 + 10 * 2) * 4
    assert file_bytes > 5.0e9
    need = memory_need(cfg, infos, n_train=60000, n_val=10000)["probe"][0]
    assert need > file_bytes
    with pytest.raises(UserError) as e:
        check_memory(cfg, infos, n_train=60000, n_val=10000)
    assert str(e.value).startswith("record.probe: recording 60000 probe samples at every checkpoint needs")
    assert str(e.value).endswith("; lower record.probe (default 8)")
    check_memory(cfg, infos, n_train=100, n_val=10)  # the probe is at most the training set


def test_evaluation_batches_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide first conv with batch 1 trains in little memory but evaluates in batches of 256: 2000
    filters × 28 × 28 float32 outputs (and their relu) are 12.5 MB a sample, 3.2 GB for 256 samples."""
    monkeypatch.setattr(config_mod, "_memory_budget", lambda: 2_000_000_000)
    sets = ["train.batch_size=1", "model.layers[0]={type: conv, filters: 2000, kernel: 5, padding: 2}"]
    cfg = load_config(DLT, sets)
    with pytest.raises(UserError) as e:
        check_model(cfg)
    assert str(e.value).startswith("model: evaluation (256 samples at once) needs about")
    assert str(e.value).endswith("use a smaller model (evaluation runs batches of at least 256)")


MEASURE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from cnnbp.config import memory_need
    from cnnbp.runner import Session, _Fit, StopFlag
    from cnnbp.runs import create_run_dir

    def hwm():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))

    def rss():
        return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS:"))

    def measure(work):
        open("/proc/self/clear_refs", "w").write("5")  # the peak starts again from here
        before = rss()
        work()
        return hwm() - before

    out, sets = sys.argv[1], sys.argv[2:]
    s = Session.new(None, sets, name="m")
    s.run_dir = create_run_dir(out, "m")
    fit = _Fit(s, s.run_dir, [], StopFlag())
    d, t = s.data, fit.trainer
    row = {"epoch": 0, "step": 0}
    fit.log.append(row)
    fit.rows.append(row)
    need = memory_need(s.cfg, s.infos, d.x_train.shape[0], d.x_val.shape[0])
    got = {
        "train": measure(lambda: t.run_epoch(d.x_train[: t.batch_size], d.y_train[: t.batch_size], 1)),
        "evaluate": measure(lambda: t.evaluate(d.x_val, d.y_val)),
        "probe": measure(lambda: fit.save(0, row)),
    }
    print(json.dumps({k: [got[k], need[k][0]] for k in got}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not LINUX or not os.access("/proc/self/clear_refs", os.W_OK), reason="reads VmHWM")
@pytest.mark.parametrize(
    "sets",
    [
        ["train.batch_size=1400", "record.probe=8"],  # the training batch is the largest
        ["train.batch_size=4", "record.probe=1400"],  # the probe batch and its checkpoint
        ["train.batch_size=4", "record.probe=600", "dtype=float64"],
    ],
)
def test_the_estimate_covers_the_measured_peaks(tmp_path: Path, sets: list[str]) -> None:
    """Each phase's peak resident memory (VmHWM, reset before it) stays under its estimate."""
    import json

    done = run("-c", MEASURE, tmp_path, *sets, timeout=300)
    assert done.returncode == 0, done.stderr
    for phase, (measured, estimate) in json.loads(done.stdout).items():
        assert measured <= estimate, f"{phase}: measured {measured} bytes, estimated {estimate}"


# ---- under a real memory cap ----------------------------------------------------------------------------


def capped(tmp_path: Path, megabytes: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``cnnbp train`` with ``megabytes`` more address space than it has once loaded."""
    return run("-m", "tests.cli.capped_cli", megabytes, *args, "--out", tmp_path / "runs", "--quiet")


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc")
def test_a_run_that_cannot_fit_is_refused_in_one_line(tmp_path: Path) -> None:
    done = capped(tmp_path, 150, "train", "--set", "record.probe=1400", "--set", "train.batch_size=1")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: record.probe: recording 1400 probe samples at every checkpoint needs ")
    assert line.endswith("; lower record.probe (default 8)")
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not LINUX, reason="RLIMIT_AS and /proc")
@pytest.mark.parametrize("megabytes", [60, 120])
def test_a_memory_error_is_one_line_exit_2_and_no_folder(tmp_path: Path, megabytes: int) -> None:
    """With cnnbp's own checks off the allocation itself fails: one line, exit 2, and the run, which
    never wrote its checkpoint 0, leaves no folder."""
    # batch_size 1: one thread (worker threads under the cap fail inside OpenBLAS, not in Python)
    sets = ["--set", "record.probe=1400", "--set", "train.batch_size=1"]
    done = capped(tmp_path, megabytes, "--unchecked", "train", *sets)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: out of memory ") and "Traceback" not in done.stderr
    assert line.endswith("free memory, or make the model, train.batch_size, record.probe or the data "
                         "(data.limit) smaller")  # fmt: skip
    out = tmp_path / "runs"
    assert not out.exists() or not list(out.iterdir())
