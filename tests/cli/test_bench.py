"""``cnnbp bench``: runs on a tiny config, prints the per-layer table, emits JSON, and (when PyTorch is
installed) agrees with the same network in PyTorch.  No timing assertions: only that timings exist."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from cnnbp.app import app
from cnnbp.commands import bench as bench_mod
from cnnbp.core import MSE, SGD, Sequential, SoftmaxCrossEntropy
from cnnbp.core.layers import ACTIVATIONS, Conv2D, Dense, Flatten, Pool, Subsample
from typer.testing import CliRunner

runner = CliRunner()


def tiny_config(dtype: str = "float64", loss: str = "softmax_cross_entropy") -> dict:
    """8×8 digits-shaped inputs through conv (padded) → relu → max pool → conv → tanh → mean pool → dense."""
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


def test_bench_prints_the_per_layer_table(tmp_path: Path) -> None:
    result = invoke("bench", write_config(tmp_path, tiny_config("float32")), "--steps", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "engine step: median" in out and "images/s" in out
    for header in ("layer", "forward ms", "backward ms", "share"):
        assert header in out
    for layer in ("conv1", "conv1.relu", "pool2", "conv3", "pool4", "flatten5", "dense6", "dense7"):
        assert layer in out
    assert "batch 6" in out and "float32" in out


def test_bench_json_parses(tmp_path: Path) -> None:
    path = write_config(tmp_path, tiny_config("float32"))
    result = invoke("bench", path, "--steps", "3", "--batch", "4", "--dtype", "float64", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["config"], data["batch"], data["dtype"], data["steps"]) == ("tiny", 4, "float64", 3)
    e = data["engine"]
    assert 0 < e["min_ms"] <= e["median_ms"] <= e["max_ms"]
    assert e["images_per_s"] > 0
    names = [row["name"] for row in data["layers"]]
    assert names[0] == "conv1" and names[-1] == "dense7" and len(names) == 10
    assert all(row["forward_ms"] >= 0 and row["backward_ms"] >= 0 for row in data["layers"])
    assert 0 < sum(row["share"] for row in data["layers"]) <= 1.0 + 1e-9
    assert data["torch"] is None and data["ratio"] is None


def test_bench_threads_option(tmp_path: Path) -> None:
    path = write_config(tmp_path, tiny_config())
    result = invoke("bench", path, "--steps", "1", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    threads = json.loads(result.stdout)["threads"]["blas"]
    assert threads in (1, None)  # None: a BLAS whose thread count cannot be asked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float16"], "--dtype"),
        (["--vs", "jax"], "--vs"),
    ],
)
def test_bench_bad_options_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = invoke("bench", write_config(tmp_path, tiny_config()), *args)
    assert result.exit_code == 2
    assert message in result.output


def test_vs_torch_without_torch_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_mod, "have_torch", lambda: False)
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--vs", "torch")
    assert result.exit_code == 2
    assert "pip install 'cnnbp[torch]'" in result.output


def test_vs_torch_agrees_in_float64(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    result = invoke("bench", write_config(tmp_path, tiny_config()), "--steps", "2", "--vs", "torch", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    agreement = data["agreement"]
    assert agreement["ok"] and agreement["tolerance"] == 1e-10
    assert agreement["max_rel_err"] <= 1e-10
    layers = ("conv1", "conv3", "dense6", "dense7")
    assert set(agreement["grad_rel_err"]) == {f"{layer}.{key}" for layer in layers for key in "Wb"}
    assert data["torch"]["median_ms"] > 0 and data["ratio"] > 0


def test_vs_torch_table(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    path = write_config(tmp_path, tiny_config("float64", "mse"))
    result = invoke("bench", path, "--steps", "2", "--vs", "torch")
    assert result.exit_code == 0, result.output
    assert "gradients agree" in result.stdout and "ratio engine / torch" in result.stdout


def test_torch_mirror_covers_every_layer_kind() -> None:
    """Strides, untied bias, Lp and overlapping pools, subsample, soft targets: float64 agreement ≤ 1e-10."""
    pytest.importorskip("torch")
    layers = [
        Conv2D(3, 3, stride=2, padding=1, bias="untied", name="c1"),
        ACTIVATIONS["tanh"](name="t1"),
        Pool("lp", 2, stride=1, p=3.0, name="lp"),
        Subsample(2, name="sub"),
        ACTIVATIONS["sigmoid"](name="s1"),
        Conv2D(2, 1, name="c2"),
        ACTIVATIONS["identity"](name="id"),
        Pool("max", 2, stride=1, name="mx"),
        Flatten(name="f"),
        Dense(4, name="d"),
    ]
    net = Sequential(layers, (2, 11, 11)).build(np.random.default_rng(0), np.float64)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 2, 11, 11))
    soft = rng.random((5, 4))
    soft /= soft.sum(axis=1, keepdims=True)
    for loss, y in [(SoftmaxCrossEntropy(), soft), (MSE(), rng.integers(0, 4, 5))]:
        mirror = bench_mod.TorchMirror(net, loss)
        agreement = bench_mod.check_agreement(net, loss, mirror, x, y)
        assert agreement.ok, agreement
        assert agreement.max_rel_err <= 1e-10


def test_run_bench_library_call() -> None:
    net = Sequential([Conv2D(2, 3, name="c"), Flatten(name="f"), Dense(3, name="d")], (1, 6, 6))
    result = bench_mod.run_bench(
        net, MSE(), SGD(0.1), name="lib", batch=4, dtype=np.float32, steps=2, warmup=1
    )
    assert result.engine.median_ms > 0 and [r.name for r in result.layers] == ["c", "f", "d"]
    assert result.torch is None and result.agreement is None
