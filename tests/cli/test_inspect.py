"""End-to-end tests of ``cnnbp inspect``: the numbers it shows are the checkpoint's, the seeds' 3×3 / 2×2
example reads as in the seeds, output fits 80 columns without escape codes, and bad files end cleanly.

Runs are made with ``cnnbp train`` into temporary folders (small inline configs and 200 digits), and the
expected numbers come straight from the HDF5 files (h5py) or are worked out by hand, never from the
command's own helpers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml
from cnnbp.app import app
from cnnbp.render import termplot
from rich.console import Console
from typer.testing import CliRunner

runner = CliRunner()
PLAIN = {"COLUMNS": "80", "NO_COLOR": "1"}
ESC = "\x1b"

# the seeds' worked example (seed 000 §3.1.1, seed 004): X is 3×3, the filter F is 2×2, O = F ⋆ X + b
SEED_X = [[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 1.0, 1.0]]
SEED_F = [[0.5, -0.25], [0.125, 0.75]]
SEED_B = [[0.1, -0.1], [0.2, 0.0]]  # untied: one bias per output position (seed 004 §1)
SEED_Y = [1.0, 0.0, 0.0, 1.0]  # MSE targets for O11, O12, O21, O22 (flatten is row-major)
SEED_LR = 0.1


def invoke(*args: Any, env: dict[str, str] | None = None):  # noqa: ANN201 - typer's Result
    return runner.invoke(app, [str(a) for a in args], env=env or PLAIN)


def inspect_json(*args: Any) -> Any:
    result = invoke("inspect", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout, parse_constant=_reject)  # strict JSON: no NaN/Infinity


def _reject(token: str) -> None:
    raise AssertionError(f"non-standard JSON constant {token}")


def train(tmp: Path, cfg: dict[str, Any], *extra: str) -> Path:
    path = tmp / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    result = invoke("train", path, "--out", tmp / "runs", "--quiet", *extra)
    assert result.exit_code == 0, result.output
    return tmp / "runs" / cfg["name"]


def read_h5(path: Path, name: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[name][()]


# ---- runs ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 3×3 sample, one 2×2 filter with explicit W and an untied bias, flatten, MSE; one step."""
    cfg = {
        "name": "seeds",
        "seed": 0,
        "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0, "x": [SEED_X], "y": [SEED_Y]},
        "model": {
            "input_shape": [1, 3, 3],
            "layers": [
                {
                    "type": "conv",
                    "name": "conv1",
                    "filters": 1,
                    "kernel": 2,
                    "bias": "untied",
                    "init": {"W": [[SEED_F]], "b": [SEED_B]},
                },
                {"type": "flatten"},
            ],
        },  # fmt: skip
        "loss": "mse",
        "train": {"epochs": 1, "batch_size": 1, "lr": SEED_LR, "momentum": 0.0},
        "record": {"probe": 1, "every": 1},
    }
    return train(tmp_path_factory.mktemp("seeds"), cfg)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in digits config on 200 images for 2 epochs (checkpoints 0, 1, 2; probe of 4)."""
    tmp = tmp_path_factory.mktemp("digits")
    args = ["--epochs", "2", "--set", "data.limit=200", "--set", "record.probe=4", "--quiet"]
    result = invoke("train", "--out", tmp / "runs", *args)
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "digits"


@pytest.fixture(scope="module")
def dlt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DeepLearnToolbox's network (configs/dlt_mnist.yaml) on six random 28×28 images: 24×24 conv1 deltas."""
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs" / "dlt_mnist.yaml").read_text())
    rng = np.random.default_rng(5)
    x = np.round(rng.uniform(0, 1, size=(6, 28, 28)), 3).tolist()
    cfg.update(name="dlt", data={"source": "inline", "val_fraction": 0.34, "x": x, "y": [0, 1, 2, 3, 4, 5]})
    cfg["train"].update(batch_size=2)
    cfg["record"] = {"probe": 2, "every": 1}
    return train(tmp_path_factory.mktemp("dlt"), cfg)


def ck_path(run: Path, epoch: int) -> Path:
    return run / "checkpoints" / f"{epoch:04d}.h5"


# ---- --json equals the checkpoint file ----------------------------------------------------------------


def test_summary_json_norms_recomputed_from_h5(digits_run: Path) -> None:
    data = inspect_json(digits_run)
    path = ck_path(digits_run, 2)
    assert data["checkpoint"]["path"] == str(path) and data["checkpoint"]["epoch"] == 2
    assert data["run"]["checkpoints"] == [0, 1, 2] and data["run"]["name"] == "digits"
    with h5py.File(path, "r") as f:
        names = [str(n) for n in f["model"].attrs["layer_names"]]
        assert [r["name"] for r in data["layers"]] == names
        for row in data["layers"]:
            name = row["name"]
            assert list(f[f"model/{name}"].attrs["output_shape"]) == row["output_shape"]
            d = np.abs(f[f"deltas/{name}"][()].astype(np.float64))
            assert row["delta_mean_abs"] == pytest.approx(d.mean(), rel=1e-12)
            assert row["delta_max_abs"] == pytest.approx(d.max(), rel=1e-12)
            if name in f["weights"]:
                ws = [v[()].astype(np.float64) for v in f[f"weights/{name}"].values()]
                gs = [v[()].astype(np.float64) for v in f[f"grads/{name}"].values()]
                assert row["params"] == sum(w.size for w in ws) > 0
                assert row["param_norm"] == pytest.approx(math.sqrt(sum((w**2).sum() for w in ws)), rel=1e-12)
                assert row["grad_norm"] == pytest.approx(math.sqrt(sum((g**2).sum() for g in gs)), rel=1e-12)
            else:
                assert row["params"] == 0 and row["param_norm"] is None and row["grad_norm"] is None
        val_acc = f["metrics/val_acc"][()]
    assert data["run"]["best_val_acc"] == pytest.approx(float(val_acc.max()))
    assert data["metrics"]["epoch"] == [0, 1, 2]


def test_deltas_json_equals_h5(digits_run: Path) -> None:
    path = ck_path(digits_run, 1)
    data = inspect_json(digits_run, "--show", "deltas", "--checkpoint", "1", "--sample", "2")
    # default layers: those with parameters, in network order
    assert [e["name"] for e in data["layers"]] == ["conv1", "conv3", "dense6"]
    assert data["sample"]["index"] == 2
    assert data["sample"]["train_index"] == int(read_h5(path, "probe/index")[2])
    for entry in data["layers"]:
        stored = read_h5(path, f"deltas/{entry['name']}")[2]
        shown = np.asarray(entry["delta"], dtype=stored.dtype)
        assert shown.shape == stored.shape and np.array_equal(shown, stored)
        assert entry["stats"]["max"] == pytest.approx(float(stored.max()))
    # any layer by name, and one channel of it
    data = inspect_json(
        digits_run, "-s", "deltas", "-c", "1", "--layer", "pool2", "--sample", "3", "--channel", "5"
    )
    stored = read_h5(path, "deltas/pool2")[3, 5]
    assert np.array_equal(np.asarray(data["layers"][0]["delta"], dtype=stored.dtype), stored)


@pytest.mark.parametrize("view", ["grads", "weights"])
def test_params_json_equals_h5(digits_run: Path, view: str) -> None:
    for epoch in (0, 2):
        data = inspect_json(digits_run, "--show", view, "--checkpoint", str(epoch))
        with h5py.File(ck_path(digits_run, epoch), "r") as f:
            group = f[view]
            assert [e["name"] for e in data["layers"]] == list(group)
            for entry in data["layers"]:
                assert set(entry["params"]) == set(group[entry["name"]])
                for key, info in entry["params"].items():
                    stored = group[entry["name"]][key][()]
                    assert info["shape"] == list(stored.shape)
                    assert np.array_equal(np.asarray(info["values"], dtype=stored.dtype), stored)
    data = inspect_json(digits_run, "--show", view, "--layer", "conv3", "--channel", "7")
    stored = read_h5(ck_path(digits_run, 2), f"{view}/conv3/W")[7]
    assert np.array_equal(np.asarray(data["layers"][0]["params"]["W"]["values"], dtype=stored.dtype), stored)


def test_metrics_json_equals_csv_and_h5(digits_run: Path) -> None:
    data = inspect_json(digits_run, "--show", "metrics")
    with open(digits_run / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with h5py.File(ck_path(digits_run, 2), "r") as f:
        for column, values in data["metrics"].items():
            from_csv = [float(r[column]) for r in rows]
            from_h5 = f[f"metrics/{column}"][()].astype(np.float64)
            for shown, a, b in zip(values, from_csv, from_h5, strict=True):
                if shown is None:
                    assert math.isnan(a) and math.isnan(b)
                else:
                    assert shown == a == pytest.approx(b, rel=1e-12)


def test_checkpoint_all_norms_equal_h5(digits_run: Path) -> None:
    for view in ("deltas", "grads"):
        data = inspect_json(digits_run, "--show", view, "--checkpoint", "all")
        assert [c["epoch"] for c in data["checkpoints"]] == [0, 1, 2]
        for k, epoch in enumerate((0, 1, 2)):
            with h5py.File(ck_path(digits_run, epoch), "r") as f:
                names = [str(n) for n in f["model"].attrs["layer_names"]]
                if view == "grads":
                    names = [n for n in names if n in f["grads"]]
                assert [r["name"] for r in data["layers"]] == names[::-1]  # output → input
                for row in data["layers"]:
                    if view == "deltas":
                        d = f[f"deltas/{row['name']}"][()].astype(np.float64)
                        want = np.mean([np.linalg.norm(d[i].ravel()) for i in range(d.shape[0])])
                    else:
                        gs = [g[()].astype(np.float64) for g in f[f"grads/{row['name']}"].values()]
                        want = math.sqrt(sum((g**2).sum() for g in gs))
                    assert row["values"][k] == pytest.approx(want, rel=1e-12)


# ---- the seeds' worked example ------------------------------------------------------------------------


def seed_forward(F: np.ndarray, b: np.ndarray, X: np.ndarray) -> np.ndarray:
    """O_ij written out term by term as in seed 000 §3.1.1 (indices from 1 in the comments)."""
    O = np.empty((2, 2))
    O[0, 0] = F[0, 0] * X[0, 0] + F[0, 1] * X[0, 1] + F[1, 0] * X[1, 0] + F[1, 1] * X[1, 1] + b[0, 0]  # O11
    O[0, 1] = F[0, 0] * X[0, 1] + F[0, 1] * X[0, 2] + F[1, 0] * X[1, 1] + F[1, 1] * X[1, 2] + b[0, 1]  # O12
    O[1, 0] = F[0, 0] * X[1, 0] + F[0, 1] * X[1, 1] + F[1, 0] * X[2, 0] + F[1, 1] * X[2, 1] + b[1, 0]  # O21
    O[1, 1] = F[0, 0] * X[1, 1] + F[0, 1] * X[1, 2] + F[1, 0] * X[2, 1] + F[1, 1] * X[2, 2] + b[1, 1]  # O22
    return O


def seed_filter_grad(d: np.ndarray, X: np.ndarray) -> np.ndarray:
    """∂E/∂F_ij = Σ ∂E/∂O_kl · X_(k+i−1)(l+j−1), each of the four sums written out as in the seed."""
    g = np.empty((2, 2))
    g[0, 0] = d[0, 0] * X[0, 0] + d[0, 1] * X[0, 1] + d[1, 0] * X[1, 0] + d[1, 1] * X[1, 1]  # ∂E/∂F11
    g[0, 1] = d[0, 0] * X[0, 1] + d[0, 1] * X[0, 2] + d[1, 0] * X[1, 1] + d[1, 1] * X[1, 2]  # ∂E/∂F12
    g[1, 0] = d[0, 0] * X[1, 0] + d[0, 1] * X[1, 1] + d[1, 0] * X[2, 0] + d[1, 1] * X[2, 1]  # ∂E/∂F21
    g[1, 1] = d[0, 0] * X[1, 1] + d[0, 1] * X[1, 2] + d[1, 0] * X[2, 1] + d[1, 1] * X[2, 2]  # ∂E/∂F22
    return g


def seed_expected() -> dict[int, dict[str, np.ndarray]]:
    """δ, ∂L/∂F and ∂L/∂b at checkpoint 0 (the explicit init) and 1 (after one step of lr 0.1)."""
    X, Y = np.array(SEED_X), np.array(SEED_Y).reshape(2, 2)
    F, b = np.array(SEED_F), np.array(SEED_B)
    out = {}
    for epoch in (0, 1):
        delta = seed_forward(F, b, X) - Y  # MSE with identity output: δ = a − y
        grad = seed_filter_grad(delta, X)  # m = 1: the batch mean is the sample's own gradient
        out[epoch] = {"delta": delta, "grad_F": grad, "grad_b": delta, "F": F, "b": b}
        F, b = F - SEED_LR * grad, b - SEED_LR * delta
    return out


MATRIX_ROW = re.compile(r"^\s*([12])\s+(-?\d+\.\d{4})\s+(-?\d+\.\d{4})\s*$")


def printed_matrices(text: str) -> list[np.ndarray]:
    """The 2×2 number matrices in the output, checking each has the column header ``1  2`` above it."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        m = MATRIX_ROW.match(line)
        if m and m.group(1) == "1":
            m2 = MATRIX_ROW.match(lines[i + 1])
            assert m2 and m2.group(1) == "2", lines[i : i + 2]
            assert lines[i - 1].split() == ["1", "2"], lines[i - 1]  # column labels 1..W
            found.append(
                np.array([[float(m.group(2)), float(m.group(3))], [float(m2.group(2)), float(m2.group(3))]])
            )
    return found


@pytest.mark.parametrize("epoch", [0, 1])
def test_seed_example_deltas_as_in_the_seeds(seeds_run: Path, epoch: int) -> None:
    want = seed_expected()[epoch]
    path = ck_path(seeds_run, epoch)
    result = invoke("inspect", seeds_run, "--show", "deltas", "--layer", "conv1", "--checkpoint", epoch)
    assert result.exit_code == 0, result.output
    assert "conv1 (conv) · δ · 1×2×2" in result.stdout
    [shown] = printed_matrices(result.stdout)
    np.testing.assert_array_equal(shown, np.round(want["delta"], 4))
    stored = read_h5(path, "deltas/conv1")[0, 0]
    np.testing.assert_allclose(stored, want["delta"], rtol=0, atol=1e-12)
    data = inspect_json(seeds_run, "--show", "deltas", "--layer", "conv1", "--checkpoint", epoch)
    assert np.array_equal(np.asarray(data["layers"][0]["delta"]), read_h5(path, "deltas/conv1")[0])
    np.testing.assert_allclose(np.asarray(data["layers"][0]["delta"])[0], want["delta"], atol=1e-12)


@pytest.mark.parametrize("epoch", [0, 1])
def test_seed_example_grads_and_weights(seeds_run: Path, epoch: int) -> None:
    want = seed_expected()[epoch]
    result = invoke("inspect", seeds_run, "--show", "grads", "--checkpoint", epoch)
    assert result.exit_code == 0, result.output
    assert "conv1.W (conv) · ∂L/∂W · 1×1×2×2" in result.stdout and "conv1.b (conv) · ∂L/∂b" in result.stdout
    grad_F, grad_b = printed_matrices(result.stdout)  # W first, then the untied bias map
    np.testing.assert_array_equal(grad_F, np.round(want["grad_F"], 4))
    np.testing.assert_array_equal(grad_b, np.round(want["grad_b"], 4))
    data = inspect_json(seeds_run, "--show", "grads", "--checkpoint", epoch)
    params = data["layers"][0]["params"]
    np.testing.assert_allclose(np.asarray(params["W"]["values"])[0, 0], want["grad_F"], atol=1e-12)
    np.testing.assert_allclose(np.asarray(params["b"]["values"])[0], want["grad_b"], atol=1e-12)
    data = inspect_json(seeds_run, "--show", "weights", "--checkpoint", epoch)
    params = data["layers"][0]["params"]
    np.testing.assert_allclose(np.asarray(params["W"]["values"])[0, 0], want["F"], atol=1e-12)
    np.testing.assert_allclose(np.asarray(params["b"]["values"])[0], want["b"], atol=1e-12)


# ---- rendering ----------------------------------------------------------------------------------------


def assert_plain_80(text: str) -> None:
    assert ESC not in text
    long = [line for line in text.splitlines() if len(line) > 80]
    assert not long, long[:3]


VIEWS: list[list[str]] = [
    [],
    ["--show", "deltas"],
    ["--show", "deltas", "--layer", "conv1", "--full"],
    ["--show", "grads"],
    ["--show", "weights"],
    ["--show", "weights", "--full", "--layer", "conv1,dense6"],
    ["--show", "metrics"],
    ["--show", "deltas", "--checkpoint", "all"],
    ["--show", "grads", "--checkpoint", "all", "--precision", "8"],
]


@pytest.mark.parametrize("args", VIEWS, ids=lambda a: " ".join(a) or "summary")
@pytest.mark.parametrize(
    "env", [PLAIN, {"COLUMNS": "80", "NO_COLOR": "1", "FORCE_COLOR": "1"}], ids=["pipe", "tty"]
)
def test_views_fit_80_columns_without_escape_codes(
    digits_run: Path, dlt_run: Path, args: list[str], env: dict
) -> None:
    """NO_COLOR, in a pipe or on a (forced) terminal: plain text, no line over 80 columns."""
    for run in (digits_run, dlt_run):
        result = invoke("inspect", run, *args, env=env)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip()
        assert_plain_80(result.stdout)


def test_large_maps_render_as_shades(dlt_run: Path) -> None:
    result = invoke("inspect", dlt_run, "--show", "deltas", "--layer", "conv1")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert_plain_80(out)
    assert "conv1 (conv) · δ · 6×24×24" in out and "scale: sign, then shade" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s*\d+ [ +\-?░▒▓█]{2,}$", line)]
    assert len(rows) == 6 * 24  # six channels of 24 rows
    assert all(len(line) <= 3 + 2 * 24 for line in rows)  # two characters (sign, shade) per value
    assert any(ch in out for ch in "▓█")
    # a matrix too wide for 80 columns is cut with a marker: dense6.W is 10×192
    out = invoke("inspect", dlt_run, "--show", "weights", "--layer", "dense6").stdout
    assert "… 154 more columns" in out
    assert_plain_80(out)


def test_colour_heatmap_is_styled_and_fits() -> None:
    """With colour the same map is drawn with background colours (and the plain text stays 80 wide)."""
    values = np.linspace(-1, 1, 28 * 40).reshape(28, 40)
    console = Console(
        file=io.StringIO(), width=80, force_terminal=True, color_system="truecolor", record=True
    )
    for line in termplot.heatmap(values, scale=1.0, color=True, width=80):
        console.print(line, soft_wrap=True)
    text = console.export_text(styles=False, clear=False)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "more columns" in text
    styled = console.file.getvalue()  # what a colour terminal receives
    assert "48;2;" in styled  # truecolor backgrounds
    plain = termplot.heatmap(values, scale=1.0, color=False, width=80)
    assert {s.style for line in plain for s in line.spans} <= {"dim"}  # no colours without colour


def test_number_matrix_blocks_keep_every_value() -> None:
    values = np.arange(1, 13 * 13 + 1, dtype=float).reshape(13, 13) * -1000.5
    lines = [line.plain for line in termplot.number_matrix(values, 4, 80)]
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    for v in values.ravel():
        assert f"{v:.4f}" in text
    assert termplot.exponent_for(np.array([3e-5, -1e-4])) == -4
    assert termplot.format_values(np.array([3e-5, -1e-4]), 2, -4).tolist() == ["0.30", "-1.00"]


# ---- bad targets -----------------------------------------------------------------------------------------


def one_error_line(result: Any, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert ESC not in result.stderr
    return lines[0]


def test_bad_files_exit_2_with_one_line(tmp_path: Path, digits_run: Path) -> None:
    one_error_line(invoke("inspect", tmp_path / "nope"), "nope", "no such run folder or checkpoint file")

    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    one_error_line(invoke("inspect", foreign), "foreign.h5", "not a cnnbp checkpoint")

    noise = tmp_path / "noise.h5"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    one_error_line(invoke("inspect", noise), "noise.h5", "not an HDF5 file")

    real = ck_path(digits_run, 2)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    one_error_line(invoke("inspect", cut, "--show", "deltas"), "cut.h5", "truncated or corrupt")

    newer = tmp_path / "newer.h5"
    shutil.copyfile(real, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    one_error_line(invoke("inspect", newer), "newer.h5", "newer cnnbp (format 99)")

    # a run folder whose last checkpoint is damaged reports that file
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copyfile(cut, run / "checkpoints" / "0003.h5")
    one_error_line(invoke("inspect", run, "--show", "metrics"), "0003.h5", "truncated or corrupt")
    one_error_line(invoke("inspect", tmp_path, "--show", "grads"), "no checkpoints found")


def test_bad_choices_list_what_exists(digits_run: Path) -> None:
    line = one_error_line(invoke("inspect", digits_run, "--show", "deltas", "--layer", "conv9"), "conv9")
    assert "conv1, conv1.relu, pool2, conv3, conv3.relu, pool4, flatten5, dense6" in line
    one_error_line(invoke("inspect", digits_run, "--checkpoint", "7"), "epoch 7", "have 0, 1, 2")
    one_error_line(
        invoke("inspect", digits_run, "-s", "grads", "-l", "pool2"),
        "layers with parameters: conv1, conv3, dense6",
    )
    one_error_line(invoke("inspect", digits_run, "-s", "deltas", "--sample", "4"), "has 4 samples (0..3)")
    one_error_line(invoke("inspect", digits_run, "-s", "deltas", "--channel", "16"), "conv1 has 16 channels")
    one_error_line(invoke("inspect", digits_run, "--checkpoint", "all"), "--checkpoint all")
    one_error_line(
        invoke("inspect", ck_path(digits_run, 1), "--checkpoint", "all", "-s", "grads"), "needs a run folder"
    )
    # a checkpoint file itself is a target, and so is the checkpoints folder
    data = inspect_json(ck_path(digits_run, 1))
    assert data["checkpoint"]["epoch"] == 1 and data["run"]["checkpoints"] == [0, 1, 2]
    assert inspect_json(digits_run / "checkpoints", "-s", "metrics")["metrics"]["epoch"] == [0, 1, 2]
