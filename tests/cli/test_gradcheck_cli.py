"""End-to-end tests of ``cnnbp gradcheck`` through the Typer app.

Targets: the built-in digits config, small inline configs written here (an analytic conv net, a relu
net with a pre-activation exactly at 0), and runs trained with ``cnnbp train`` into temporary folders.
A wrong gradient is made by patching ``Dense.backward`` (one element of ``grads["W"]`` off by 1e-4);
the checker must name the layer, the tensor and that element.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from cnnbp.app import app
from cnnbp.core.gradcheck import DEFAULT_ATOL_FLOOR
from cnnbp.core.layers.dense import Dense
from typer.testing import CliRunner

runner = CliRunner()
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}
INJECT = 1e-4

# the built-in digits config: its layers and parameter tensors
DIGITS_LAYERS = [
    "conv1", "conv1.relu", "pool2", "conv3", "conv3.relu", "pool4", "flatten5", "dense6",
]  # fmt: skip
DIGITS_PARAMS = {(layer, tensor) for layer in ("conv1", "conv3", "dense6") for tensor in ("W", "b")}
DIGITS_NON_ANALYTIC = ["conv1.relu", "pool2", "conv3.relu", "pool4"]


def invoke(*args: Any, env: dict[str, str] | None = None):  # noqa: ANN201 - typer's Result
    """Run ``cnnbp`` in-process with string arguments (80 columns, no colour unless ``env`` says)."""
    return runner.invoke(app, [str(a) for a in args], env=env or PLAIN)


def gradcheck_json(*args: Any, code: int = 0) -> dict[str, Any]:
    """``cnnbp gradcheck ... --json``: the parsed object (strict JSON), after checking the exit code."""
    result = invoke("gradcheck", *args, "--json")
    assert result.exit_code == code, result.output
    return json.loads(result.stdout, parse_constant=_reject)


def _reject(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token}")


def one_error_line(result: Any) -> str:
    """The single ``error: ...`` line a user error prints on stderr."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def rows_by_key(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["layer"], r["tensor"]): r for r in report["rows"]}


def write_config(folder: Path, cfg: dict[str, Any]) -> Path:
    path = folder / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


def images(n: int, shape: tuple[int, ...], seed: int) -> list:
    return np.random.default_rng(seed).random((n, *shape)).round(3).tolist()


def analytic_config(dtype: str = "float64", data: dict[str, Any] | None = None) -> dict[str, Any]:
    """Conv → sigmoid → subsample → tanh → mean pool → dense → sigmoid, MSE: holomorphic throughout."""
    return {
        "name": "analytic",
        "seed": 1,
        "dtype": dtype,
        "data": data
        or {"source": "inline", "val_fraction": 0, "x": images(6, (1, 8, 8), 7), "y": [0, 1, 2, 0, 1, 2]},
        "model": {
            "input_shape": [1, 8, 8],
            "layers": [
                {"type": "conv", "filters": 3, "kernel": 3, "padding": 1, "activation": "sigmoid"},
                {"type": "subsample", "scale": 2, "activation": "tanh"},
                {"type": "pool", "mode": "mean", "size": 2},
                {"type": "flatten"},
                {"type": "dense", "units": 3, "activation": "sigmoid"},
            ],
        },
        "loss": "mse",
        "train": {"epochs": 2, "batch_size": 3, "lr": 0.5},
        "record": {"probe": 3},
    }


def kink_config() -> dict[str, Any]:
    """A relu layer whose unit 1 has zero weights and bias: its pre-activation is 0 for every input."""
    return {
        "name": "kink",
        "seed": 0,
        "dtype": "float64",
        "data": {
            "source": "inline",
            "val_fraction": 0,
            "x": [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0], [-1.0, 0.3, 0.7], [2.0, 1.0, -1.0]],
            "y": [0, 1, 0, 1],
        },
        "model": {
            "input_shape": [3],
            "layers": [
                {
                    "type": "dense",
                    "units": 3,
                    "name": "hidden",
                    "activation": "relu",
                    "init": {
                        "W": [[0.5, -0.2, 0.1], [0.0, 0.0, 0.0], [-0.1, 0.2, 0.6]],
                        "b": [0.1, 0.0, 0.2],
                    },
                },
                {"type": "dense", "units": 2, "name": "out"},
            ],
        },
        "loss": "softmax_cross_entropy",
    }


def train_run(folder: Path, cfg: dict[str, Any]) -> Path:
    """Write ``cfg`` into ``folder``, train it with ``cnnbp train`` and return the run folder."""
    result = invoke("train", write_config(folder, cfg), "--out", folder / "runs", "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "runs" / cfg["name"]


def npz_data(folder: Path) -> dict[str, Any]:
    """An npz data file of 12 random 1×8×8 images in ``folder``, as a config's data section."""
    rng = np.random.default_rng(3)
    path = folder / "images.npz"
    np.savez(path, x_train=rng.random((12, 1, 8, 8)), y_train=rng.integers(0, 3, 12))
    return {"source": "npz", "path": str(path), "val_fraction": 0.25}


@pytest.fixture(scope="module")
def float32_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float32 run of the analytic net on inline data, trained for 2 epochs (checkpoints 0, 1, 2)."""
    return train_run(tmp_path_factory.mktemp("run32"), analytic_config("float32"))


@pytest.fixture(scope="module")
def digits_json() -> dict[str, Any]:
    """``cnnbp gradcheck --json`` on the built-in default config (every element, 4 samples)."""
    return gradcheck_json()


# ---- the default config -------------------------------------------------------------------------------
def test_default_config_passes_with_a_row_per_tensor_in_the_table() -> None:
    result = invoke("gradcheck")
    assert result.exit_code == 0, result.output
    out = result.stdout
    table_layers = {line.split()[0] for line in out.splitlines() if line.split()}
    assert set(DIGITS_LAYERS) | {"input"} <= table_layers
    for layer, tensor in DIGITS_PARAMS:
        assert re.search(rf"^{re.escape(layer)}\s+{tensor}\s", out, re.M), (layer, tensor)
    assert "checked in float64 (network is float32)" in out
    assert re.search(r"method\s+central, eps 6\.06e-06", out)
    assert re.search(r"verdict\s+PASS", out)
    assert "\x1b" not in out  # NO_COLOR / not a terminal: plain text
    assert max(len(line) for line in out.splitlines()) <= 80


def test_default_config_json_has_every_param_delta_and_the_input(digits_json: dict[str, Any]) -> None:
    report = digits_json
    rows = rows_by_key(report)
    expected = DIGITS_PARAMS | {(layer, "delta") for layer in DIGITS_LAYERS} | {("input", "input")}
    assert set(rows) == expected and len(report["rows"]) == len(expected)
    assert report["verdict"] == "PASS" and report["method"] == "central"
    assert report["cast_from"] == "float32" and report["samples"] == 4 and report["kind"] == "config"
    assert report["counts"]["FAIL"] == 0
    assert all(r["checked"] == r["total"] for r in report["rows"])  # 6,090 parameters: every element
    assert rows[("conv1", "W")]["shape"] == [16, 1, 3, 3]
    assert rows[("conv1", "delta")]["shape"] == [4, 16, 8, 8]
    assert len(report["sample_indices"]) == 4 and report["inputs"] == "data"
    # every genuine comparison is far inside rtol: the errors over it are kinks (relu at exactly 0
    # where a digit has an all-zero 3×3 patch and the biases start at 0)
    for r in report["rows"]:
        assert r["status"] in ("PASS", "KINK"), r
        if r["status"] == "PASS":
            assert r["max_rel_error"] < 1e-6
        else:
            assert r["n_fail"] == 0 and r["n_kink"] >= 1


@pytest.mark.parametrize("columns", [40, 80, 200])
def test_table_fits_the_terminal_width(columns: int) -> None:
    result = invoke("gradcheck", "--per-tensor", "3", env={"COLUMNS": str(columns), "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns
    assert "verdict" in result.stdout
    # however narrow, every row keeps its layer, tensor and status
    rows = re.findall(r"^(\S+) +(W|b|delta|input) .*\b(PASS|KINK)\s*$", result.stdout, re.M)
    assert [layer for layer, _, _ in rows][:2] == ["input", "conv1"] and len(rows) == 15
    if columns == 40:
        assert "(left out to fit the terminal: shape, analytic, numeric" in " ".join(result.stdout.split())
    if columns == 200:  # room for the full table: shapes and (n,c,h,w) indices
        assert re.search(r"^conv3\s+W\s+32×16×3×3\s+3/4608\s", result.stdout, re.M)
        assert re.search(r"\(\d+,\d+,\d+,\d+\)", result.stdout)


# ---- a wrong gradient -----------------------------------------------------------------------------------
@pytest.fixture
def wrong_dense_w(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[int, ...]]:
    """Patch ``Dense.backward`` to scale the largest |element| of ``grads["W"]`` by (1 + 1e-4)."""
    original = Dense.backward
    hit: dict[str, tuple[int, ...]] = {}

    def wrong(self: Dense, dy: np.ndarray) -> np.ndarray:
        dx = original(self, dy)
        g = self.grads["W"]
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(g))), g.shape))
        g[index] *= 1 + INJECT
        hit["index"] = index
        return dx

    monkeypatch.setattr(Dense, "backward", wrong)
    return hit


def test_a_wrong_dense_gradient_fails_naming_layer_tensor_and_element(
    wrong_dense_w: dict[str, tuple[int, ...]],
) -> None:
    report = gradcheck_json("--layer", "dense6", code=1)
    assert report["verdict"] == "FAIL" and report["counts"]["FAIL"] == 1
    row = rows_by_key(report)[("dense6", "W")]
    assert row["status"] == "FAIL" and row["n_fail"] == 1
    assert tuple(row["worst_index"]) == wrong_dense_w["index"]
    assert row["max_rel_error"] == pytest.approx(INJECT, rel=0.01)
    assert row["numeric"] == pytest.approx(row["analytic"] / (1 + INJECT), rel=1e-6)
    others = [r for r in report["rows"] if (r["layer"], r["tensor"]) != ("dense6", "W")]
    assert {r["status"] for r in others} == {"PASS"}

    result = invoke("gradcheck", "--layer", "dense6")
    assert result.exit_code == 1, result.output
    i, j = wrong_dense_w["index"]
    assert re.search(rf"^dense6\s+W\s.*\(?{i},{j}\)?\s.*FAIL", result.stdout, re.M), result.stdout
    assert re.search(r"verdict\s+FAIL: 1 row over rtol 1e-06 \(dense6\.W\)", result.stdout)


# ---- complex step ---------------------------------------------------------------------------------------
def test_complex_step_is_refused_on_relu_and_max_pool_naming_them() -> None:
    line = one_error_line(invoke("gradcheck", "--method", "complex"))
    for name in DIGITS_NON_ANALYTIC:
        assert name in line
    assert "conv1 " not in line and "dense6" not in line
    # auto falls back to central on the same network
    auto = gradcheck_json("--method", "auto", "--per-tensor", "2")
    assert auto["method"] == "central" and auto["requested_method"] == "auto"


def test_complex_step_on_an_analytic_network_is_exact_to_rounding(tmp_path: Path) -> None:
    config = write_config(tmp_path, analytic_config())
    report = gradcheck_json(config, "--method", "complex")
    assert report["method"] == "complex" and report["eps"] == 1e-20 and report["verdict"] == "PASS"
    assert report["cast_from"] is None  # a float64 config is checked as it is
    assert all(r["checked"] == r["total"] for r in report["rows"])
    worst = max(r["max_rel_error"] for r in report["rows"])
    assert worst <= 1e-12, worst
    assert gradcheck_json(config, "--method", "auto")["method"] == "complex"


# ---- kinks ----------------------------------------------------------------------------------------------
def test_relu_at_exactly_zero_is_a_kink_and_strict_fails_it(tmp_path: Path) -> None:
    config = write_config(tmp_path, kink_config())
    report = gradcheck_json(config)
    kinks = {key for key, r in rows_by_key(report).items() if r["status"] == "KINK"}
    assert kinks == {("hidden", "W"), ("hidden", "b"), ("hidden", "delta")}
    assert report["counts"]["FAIL"] == 0 and report["verdict"] == "PASS"
    b = rows_by_key(report)[("hidden", "b")]
    assert b["worst_index"] == [1] and b["n_kink"] == 1 and b["n_fail"] == 0

    result = invoke("gradcheck", config)
    assert result.exit_code == 0, result.output
    assert re.search(r"^hidden\s+b\s.*KINK", result.stdout, re.M)

    strict = invoke("gradcheck", config, "--strict")
    assert strict.exit_code == 1, strict.output
    assert re.search(r"verdict\s+FAIL \(--strict\): 3 KINK rows", strict.stdout)
    assert gradcheck_json(config, "--strict", code=1)["verdict"] == "FAIL"


# ---- sampling and seeds ---------------------------------------------------------------------------------
def test_per_tensor_checks_k_elements_of_each_tensor() -> None:
    report = gradcheck_json("--per-tensor", "3")
    assert len(report["rows"]) == 15
    for r in report["rows"]:
        assert r["checked"] == min(3, r["total"]), r
    assert any(r["total"] > 3 for r in report["rows"])


def test_seed_picks_the_samples_and_never_the_weights() -> None:
    a = gradcheck_json("--layer", "dense6", "--seed", "1")
    again = gradcheck_json("--layer", "dense6", "--seed", "1")
    b = gradcheck_json("--layer", "dense6", "--seed", "2", "--samples", "6")
    assert a["sample_indices"] == again["sample_indices"] and a["rows"] == again["rows"]
    assert len(b["sample_indices"]) == 6 and b["sample_indices"] != a["sample_indices"][:6]
    assert a["sample_indices"] == sorted(a["sample_indices"])
    assert a["weights"] == b["weights"] == "initial weights (seed 0), float32"


# ---- run folders and checkpoint files ------------------------------------------------------------------
def test_run_folder_and_checkpoint_file_of_a_float32_run(float32_run: Path) -> None:
    last = gradcheck_json(float32_run)
    assert last["kind"] == "checkpoint" and last["epoch"] == 2
    assert last["target"].endswith("0002.h5") and last["cast_from"] == "float32"
    assert last["verdict"] == "PASS" and last["inputs"] == "data"

    first = gradcheck_json(float32_run, "--checkpoint", "0")
    assert first["epoch"] == 0 and first["target"].endswith("0000.h5")
    assert first["rows"] != last["rows"]  # other weights, other gradients

    file = float32_run / "checkpoints" / "0001.h5"
    result = invoke("gradcheck", file)
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())  # a long path wraps the header line
    assert f"{file} · run analytic, epoch 1, float32" in text
    assert "checked in float64 (network is float32)" in text


def test_checkpoint_initial_weights_match_the_config(float32_run: Path) -> None:
    """Checkpoint 0 holds the weights a config target builds (default_rng(seed), as train does)."""
    from_checkpoint = gradcheck_json(float32_run, "--checkpoint", "0", "--layer", "dense5")
    from_config = gradcheck_json(float32_run.parents[1] / "analytic.yaml", "--layer", "dense5")
    assert from_config["sample_indices"] == from_checkpoint["sample_indices"]
    assert from_config["rows"] == from_checkpoint["rows"]


def test_a_config_with_init_from_checks_those_weights(float32_run: Path, tmp_path: Path) -> None:
    cfg = analytic_config("float32")
    cfg["model"]["init_from"] = str(float32_run)  # its last checkpoint
    report = gradcheck_json(write_config(tmp_path, cfg), "--layer", "dense5")
    assert report["weights"].startswith("weights of model.init_from") and "0002.h5" in report["weights"]
    assert report["rows"] == gradcheck_json(float32_run, "--layer", "dense5")["rows"]


def test_checkpoint_without_its_data_falls_back_to_probe_samples(tmp_path: Path) -> None:
    data = npz_data(tmp_path)
    run = train_run(tmp_path, {**analytic_config("float32", data), "name": "elsewhere"})
    moved = tmp_path / "moved.npz"
    shutil.move(data["path"], moved)

    report = gradcheck_json(run, "--samples", "2")
    assert report["inputs"] == "probe" and report["samples"] == 2 and report["verdict"] == "PASS"
    probe = gradcheck_json(run, "--samples", "10")  # only 3 probe samples were recorded
    assert probe["samples"] == 3 and len(probe["sample_indices"]) == 3
    text = invoke("gradcheck", run).stdout
    assert "probe samples (data not found here:" in " ".join(text.split())

    found = gradcheck_json(run, "--set", f"data.path={moved}")
    assert found["inputs"] == "data" and found["samples"] == 4

    # a config whose data is missing is an error, not a fallback
    line = one_error_line(invoke("gradcheck", run.parents[1] / "elsewhere.yaml"))
    assert "images.npz" in line and "not found" in line


# ---- user errors: one line, exit 2 --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["no/such/config.yaml"], ["no/such/config.yaml", "no such"]),
        (["--layer", "conv9"], ["--layer conv9", "input, conv1, conv1.relu", "dense6"]),
        (["--eps", "tiny"], ["--eps", "'tiny'"]),
        (["--eps", "-1e-5"], ["--eps", "> 0"]),
        (["--rtol", "0"], ["--rtol"]),
        (["--all", "--per-tensor", "3"], ["--all", "--per-tensor"]),
        (["--checkpoint", "1"], ["--checkpoint", "config"]),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args: list[str], words: list[str]) -> None:
    line = one_error_line(invoke("gradcheck", *args))
    for word in words:
        assert word in line, line


def test_a_checkpoint_network_cannot_be_changed_with_set(float32_run: Path) -> None:
    line = one_error_line(invoke("gradcheck", float32_run, "--set", "model.layers[2].mode=max"))
    assert "only data.*" in line


def test_help_states_the_floors_core_uses() -> None:
    result = invoke("gradcheck", "--help", env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    assert "|a − n| / max(|a|, |n|, floor), floor = F·max(1, |L|)" in text
    for method, floor in DEFAULT_ATOL_FLOOR.items():
        assert f"{floor:.0e}".replace("e-0", "e-") + f" for {method}" in text
