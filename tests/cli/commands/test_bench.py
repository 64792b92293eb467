"""``cnnbp bench``: the command on a tiny config — the per-layer table, ``--json``, the options, the exit
codes, and (when PyTorch is installed) ``--vs torch``.  No timing assertions: only that timings exist."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnnbp import bench as bench_lib
from cnnbp.app import app
from cnnbp.commands import bench as bench_command
from cnnbp.core.parallel import usable_cpus

runner = CliRunner()
LAYERS = ("conv1", "conv1.relu", "pool2", "conv3", "conv3.tanh", "pool4", "flatten5", "dense6",
          "dense6.sigmoid", "dense7")  # fmt: skip


def tiny_config(dtype: str = "float64", loss: str = "softmax_cross_entropy") -> dict:
    """8×8 inputs through conv (padded) → relu → max pool → conv → tanh → mean pool → dense → dense."""
    return {
        "name": "tiny",
        "seed": 3,
        "dtype": dtype,
        "data": {"source": "digits", "scale": 0.0625},  # not read: bench uses random data
        "model": {
            "input_shape": [1, 8, 8],
            "layers": [
                {"type": "conv", "filters": 3, "kernel": 3, "padding": 1, "activation": "relu"},
                {"type": "pool", "mode": "max", "size": 2},
                {"type": "conv", "filters": 4, "kernel": 2, "activation": "tanh"},
                {"type": "pool", "mode": "mean", "size": 3},
                {"type": "flatten"},
                {"type": "dense", "units": 5, "activation": "sigmoid"},
                {"type": "dense", "units": 3},
            ],
        },
        "loss": loss,
        "train": {"batch_size": 6, "lr": 0.1, "momentum": 0.9},
    }


def write_config(folder: Path, cfg: dict) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def invoke(*args: str | Path):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args])


def test_prints_the_per_layer_table(tmp_path: Path) -> None:
    result = invoke("bench", write_config(tmp_path, tiny_config("float32")), "--steps", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith("tiny · batch 6 · float32 · 2 steps · threads 1 (1 shard, BLAS ")
    assert "engine step: median" in out and "images/s" in out
    for header in ("layer", "kind", "forward ms", "backward ms", "share"):
        assert header in out
    for layer in LAYERS:
        assert layer in out
    assert "loss, gradient scaling and SGD update:" in out
    assert "PyTorch" not in out and "ratio" not in out


def test_json(tmp_path: Path) -> None:
    path = write_config(tmp_path, tiny_config("float32"))
    result = invoke("bench", path, "--steps", "3", "--batch", "4", "--dtype", "float64", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["config"], data["batch"], data["dtype"], data["steps"]) == ("tiny", 4, "float64", 3)
    e = data["engine"]
    assert 0 < e["min_ms"] <= e["median_ms"] <= e["max_ms"]
    assert e["images_per_s"] > 0
    assert [row["name"] for row in data["layers"]] == list(LAYERS)
    assert all(row["forward_ms"] >= 0 and row["backward_ms"] >= 0 for row in data["layers"])
    assert 0 < sum(row["share"] for row in data["layers"]) <= 1.0 + 1e-9
    assert data["other_ms"] >= 0 and data["optimizer"] == "SGD"
    assert data["torch"] is None and data["agreement"] is None and data["ratio"] is None


def test_optimizer_and_overrides_come_from_the_config(tmp_path: Path) -> None:
    cfg = tiny_config()
    cfg["train"] = {"batch_size": 6, "optimizer": "adam", "lr": 0.01}
    path = write_config(tmp_path, cfg)
    result = invoke("bench", path, "--steps", "1", "--set", "train.batch_size=5")
    assert result.exit_code == 0, result.output
    assert "batch 5" in result.stdout and "loss, gradient scaling and Adam update:" in result.stdout


def test_default_config() -> None:
    result = invoke("bench", "--steps", "1", "--batch", "2", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["batch"] == 2


def test_threads_option(tmp_path: Path) -> None:
    before = bench_lib.blas_threads()
    try:
        result = invoke(
            "bench", write_config(tmp_path, tiny_config()), "--steps", "1", "--threads", "1", "--json"
        )
    finally:
        if before is not None:
            bench_lib.limit_threads(before)
    assert result.exit_code == 0, result.output
    threads = json.loads(result.stdout)["threads"]
    assert threads["blas"] in (1, None)  # None: a BLAS that cannot be asked
    assert threads["engine"] == threads["shards"] == 1


def test_threads_auto_follows_the_network() -> None:
    """``auto`` (the default) cuts a batch only when each half has enough work: the digits network at
    batch 2 does not, at batch 96 (48 × 84,224 multiply-adds a half) it does."""
    small = json.loads(invoke("bench", "--steps", "1", "--batch", "2", "--json").stdout)["threads"]
    assert small["shards"] == 1 and small["engine"] == 1
    big = invoke("bench", "--steps", "1", "--batch", "96", "--threads", "auto", "--json")
    assert big.exit_code == 0, big.output
    threads = json.loads(big.stdout)["threads"]
    assert threads["shards"] == 2 and threads["engine"] == min(2, usable_cpus())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float16"], "--dtype: expected float32 or float64, got 'float16'"),
        (["--vs", "jax"], "--vs: the only comparison is 'torch', got 'jax'"),
        (["--set", "train.batch_size=0"], "train.batch_size"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("bench", write_config(tmp_path, tiny_config()), *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_bad_numbers_are_refused_by_the_parser(tmp_path: Path) -> None:
    for args in (["--steps", "0"], ["--batch", "0"], ["--threads", "0"], ["--threads", "two"]):
        result = invoke("bench", write_config(tmp_path, tiny_config()), *args)
        assert result.exit_code == 2 and "Traceback" not in result.output
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--threads", "two")
    assert "--threads: expected auto or a positive integer, got 'two'" in result.output


def test_vs_torch_without_torch_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed: find_spec reports none
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--vs", "torch")
    assert result.exit_code == 2
    assert "PyTorch is not installed: pip install 'cnnbp[torch]'" in result.output


def test_disagreement_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result whose gradients disagree is printed, then the command exits 1."""

    def disagreeing(*args: object, **kwargs: object) -> bench_lib.BenchResult:
        timing = bench_lib.Timing(1.0, 1.0, 1.0, 6000.0)
        return bench_lib.BenchResult(
            config="tiny", batch=6, dtype="float64", steps=1, engine=timing,
            threads={"engine": 1, "shards": 1, "blas": 1, "torch": 1},
            layers=[], other_ms=0.1, optimizer="SGD", torch=timing, ratio=1.0,
            agreement=bench_lib.Agreement(1e-3, {"conv1.W": 0.5}, tolerance=1e-10),
        )  # fmt: skip

    monkeypatch.setattr(bench_command, "run_bench", disagreeing)
    monkeypatch.setattr(bench_command, "have_torch", lambda: True)
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--vs", "torch")
    assert result.exit_code == 1
    disagree = "loss and 1 gradients DISAGREE\n  largest relative error 5.00e-01 (tolerance 1e-10)"
    assert disagree in result.stdout
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--vs", "torch", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["agreement"]["ok"] is False


def test_vs_torch_agrees_in_float64(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--steps", "2", "--vs", "torch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    agreement = data["agreement"]
    assert agreement["ok"] and agreement["tolerance"] == 1e-10
    assert agreement["max_rel_err"] <= 1e-10
    layers = ("conv1", "conv3", "dense6", "dense7")
    assert set(agreement["grad_rel_err"]) == {f"{layer}.{key}" for layer in layers for key in "Wb"}
    assert data["torch"]["median_ms"] > 0 and data["ratio"] > 0 and data["threads"]["torch"] >= 1


def test_vs_torch_table(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    path = write_config(tmp_path, tiny_config("float64", "mse"))
    result = invoke("bench", path, "--steps", "2", "--vs", "torch")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "PyTorch (threads: " in out and "loss and 8 gradients agree\n  largest relative error" in out
    assert "torch step: median" in out
    assert "ratio engine / torch at 1 thread each (medians, alternating):" in out  # one thread: step by step
    assert max(len(line) for line in out.splitlines()) <= 80


def test_vs_torch_at_matched_threads(tmp_path: Path) -> None:
    """``--threads 2``: the engine cuts the batch in two shards, run on up to two threads, and PyTorch is
    timed on as many threads; the text says which."""
    pytest.importorskip("torch", reason="PyTorch is not installed")
    path = write_config(tmp_path, tiny_config("float64", "mse"))
    result = invoke("bench", path, "--steps", "2", "--threads", "2", "--vs", "torch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    threads = data["threads"]
    assert threads["shards"] == 2 and threads["engine"] == threads["torch"] == min(2, usable_cpus())
    assert data["agreement"]["ok"] and data["profile_batch"] == 3
    n = min(2, usable_cpus())
    # threads running: each side times a block of steps in a row (PyTorch's workers spin after its ops)
    assert data["block"] == (bench_lib.BLOCK if n > 1 else 1)
    result = invoke("bench", path, "--steps", "2", "--threads", "2", "--vs", "torch")
    each, how = ("1 thread each", "alternating") if n == 1 else ("2 threads each", "in blocks of 10 steps")
    assert f"· threads {n} (2 shards, BLAS " in result.stdout
    assert "per layer (medians; one shard of 3, one thread)" in result.stdout
    assert f"ratio engine / torch at {each} (medians, {how}):" in result.stdout


def test_vs_torch_with_adam(tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="PyTorch is not installed")
    cfg = tiny_config()
    cfg["train"] = {"batch_size": 6, "optimizer": "adam", "lr": 0.01, "weight_decay": 0.01}
    result = invoke("bench", write_config(tmp_path, cfg), "--steps", "2", "--vs", "torch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["optimizer"] == "Adam" and data["agreement"]["ok"]
