"""Tests of :mod:`cnnbp.checking`, the library behind ``cnnbp gradcheck``: ``cnnbp.gradcheck(target, ...)``
on every kind of target, the documented sample draw, the probe fallback, overrides, layer selection,
complex-step refusal, the report's ``passed`` / ``ok(strict)`` / ``to_dict`` and one-line UserErrors.

Targets: the built-in digits config, small inline configs (tests/cli/conftest.py: an analytic conv net, a
relu net with a pre-activation exactly at 0) and runs trained with ``cnnbp train`` into temporary folders.
A wrong gradient is made by patching ``Dense.backward`` (one element of ``grads["W"]`` off by 1e-4,
fixture ``wrong_dense_w``); the check must name the layer, the tensor and that element.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

import cnnbp
from cnnbp.checking import SAMPLE_STREAM, GradcheckReport, prepare
from cnnbp.config import load_config
from cnnbp.data import load_dataset
from cnnbp.errors import UserError
from tests.cli.conftest import (
    DIGITS_LAYERS,
    DIGITS_NON_ANALYTIC,
    DIGITS_PARAMS,
    INJECT,
    analytic_config,
    kink_config,
    rewrite_checkpoint,
    write_config,
)

#: the keys of ``to_dict()`` (README, "--json")
REPORT_KEYS = {
    "rows", "method", "requested_method", "eps", "rtol", "atol_floor", "samples", "sample_indices", "inputs",
    "seconds", "cast_from", "strict", "verdict", "counts", "target", "kind", "weights", "epoch",
    "unchecked", "mode", "directions",
}  # fmt: skip
ROW_KEYS = {
    "layer", "tensor", "shape", "checked", "total", "max_rel_error", "worst_index", "analytic", "numeric",
    "status", "n_fail", "n_kink", "n_unchecked", "n_rough", "backward", "forward", "mode", "directions",
    "directions_failed", "fallback",
}  # fmt: skip
#: the README's "cnnbp gradcheck" example: 1,438 training samples of digits, seed 0
DIGITS_TRAIN = 1438
DIGITS_INDICES = [73, 586, 721, 1048]
#: the names ``layers=`` accepts on the digits network, as an unknown-layer error lists them
DIGITS_NAMES = "input, conv1, conv1.relu, pool2, conv3, conv3.relu, pool4, flatten5, dense6"


def as_json(report: GradcheckReport, strict: bool = False) -> dict[str, Any]:
    """``report.to_dict(strict)`` through a strict JSON round trip (NaN or Infinity would raise)."""
    return json.loads(json.dumps(report.to_dict(strict), allow_nan=False))


def rows_by_key(report: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["layer"], r["tensor"]): r for r in report["rows"]}


def documented_draw(n: int, k: int, seed: int) -> list[int]:
    """The README's draw: ``min(k, n)`` of ``n`` without replacement, from
    ``default_rng([seed, "gradcheck" in ASCII])``, sorted."""
    rng = np.random.default_rng([seed, int.from_bytes(b"gradcheck", "big")])
    return sorted(int(i) for i in rng.choice(n, size=min(k, n), replace=False))


def analytic_yaml(folder: Path, dtype: str = "float64") -> Path:
    return write_config(folder, analytic_config(dtype), "analytic.yaml")


@pytest.fixture(scope="module")
def digits_report() -> GradcheckReport:
    """``cnnbp.gradcheck()`` with every default: the built-in digits config, every element, 4 samples."""
    return cnnbp.gradcheck()


# ---- the default config -------------------------------------------------------------------------------
def test_default_config_checks_every_param_delta_and_the_input(digits_report: GradcheckReport) -> None:
    report = as_json(digits_report)
    assert set(report) == REPORT_KEYS and all(set(r) == ROW_KEYS for r in report["rows"])
    rows = rows_by_key(report)
    expected = DIGITS_PARAMS | {(layer, "delta") for layer in DIGITS_LAYERS} | {("input", "input")}
    assert set(rows) == expected and len(report["rows"]) == len(expected)
    assert report["verdict"] == "PASS" and report["method"] == "central"
    assert report["requested_method"] == "auto"  # the library's default; relu and max pool rule out complex
    assert report["cast_from"] == "float32" and report["samples"] == 4 and report["kind"] == "config"
    assert report["target"] == "the built-in default config" and report["epoch"] is None
    assert report["weights"] == "initial weights (seed 0), float32"
    assert report["counts"]["FAIL"] == 0 and report["strict"] is False
    assert all(r["checked"] == r["total"] for r in report["rows"])  # 6,090 parameters: every element
    assert rows[("conv1", "W")]["shape"] == [16, 1, 3, 3]
    assert rows[("conv1", "delta")]["shape"] == [4, 16, 8, 8]
    assert len(report["sample_indices"]) == 4 and report["inputs"] == "data"
    assert report["mode"] == "elements" and report["directions"] == 0 and report["unchecked"] == 0
    # every element is checked, those whose perturbation crosses a kink (relu at exactly 0 where a digit
    # has an all-zero 3×3 patch and the biases start at 0, max-pool ties there) at the kink: none fails,
    # none is left unchecked, and every one is within rtol
    for r in report["rows"]:
        assert r["status"] in ("PASS", "KINK"), r
        assert r["max_rel_error"] < 1e-6 and r["n_fail"] == r["n_unchecked"] == 0
        assert (r["n_kink"] >= 1) == (r["status"] == "KINK")
        assert (r["backward"] is None) == (r["status"] == "PASS")  # the one-sided values of a KINK row
    assert rows[("conv1", "b")]["n_kink"] == 16  # every perturbation of conv1's bias crosses a kink
    assert digits_report.passed and digits_report.ok() and digits_report.ok(strict=True)
    assert digits_report.subject.non_analytic == DIGITS_NON_ANALYTIC


def test_default_config_draws_the_documented_samples(digits_report: GradcheckReport) -> None:
    """4 of the training split, drawn with ``default_rng([seed, SAMPLE_STREAM])`` and sorted; the batch is
    those training samples, loaded as train loads them (float32, scaled, split)."""
    assert SAMPLE_STREAM == int.from_bytes(b"gradcheck", "big")
    assert documented_draw(DIGITS_TRAIN, 4, 0) == DIGITS_INDICES
    subject = digits_report.subject
    assert subject.sample_indices == DIGITS_INDICES
    assert subject.inputs_text == (
        "4 of 1,438 training samples of digits (UCI, 1797 images 8×8), drawn with seed 0; "
        "indices 73, 586, 721, 1048"
    )
    cfg = load_config(None)
    data = load_dataset(cfg.data, cfg.model.input_shape, 10, np.dtype(cfg.dtype), cfg.seed, cfg.base_dir)
    assert data.x_train.shape[0] == DIGITS_TRAIN
    assert subject.x.dtype == np.float32 and subject.x.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(subject.x, data.x_train[DIGITS_INDICES])
    np.testing.assert_array_equal(subject.y, data.y_train[DIGITS_INDICES])


# ---- a wrong gradient -----------------------------------------------------------------------------------
def test_a_wrong_dense_gradient_fails_naming_layer_tensor_and_element(
    wrong_dense_w: dict[str, tuple[int, ...]],
) -> None:
    result = cnnbp.gradcheck(layers=["dense6"])
    assert not result.passed and not result.ok() and not result.ok(strict=True)
    report = as_json(result)
    assert report["verdict"] == "FAIL" and report["counts"]["FAIL"] == 1
    row = rows_by_key(report)[("dense6", "W")]
    assert row["status"] == "FAIL" and row["n_fail"] == 1
    assert tuple(row["worst_index"]) == wrong_dense_w["index"]
    assert row["max_rel_error"] == pytest.approx(INJECT, rel=0.01)
    assert row["numeric"] == pytest.approx(row["analytic"] / (1 + INJECT), rel=1e-6)
    others = [r for r in report["rows"] if (r["layer"], r["tensor"]) != ("dense6", "W")]
    assert {r["status"] for r in others} == {"PASS"}
    assert result.row("dense6", "W").status == "FAIL"
    assert [(r.layer, r.tensor) for r in result.rows if r.status == "FAIL"] == [("dense6", "W")]


# ---- complex step ---------------------------------------------------------------------------------------
def test_complex_step_is_refused_on_relu_and_max_pool_naming_them() -> None:
    with pytest.raises(UserError) as caught:
        cnnbp.gradcheck(method="complex")
    line = str(caught.value)
    assert line == (
        "--method complex: needs every layer to be analytic, and these are not: conv1.relu (ReLU), "
        "pool2 (MaxPool), conv3.relu (ReLU), pool4 (MaxPool); use --method auto (complex where possible, "
        "else central), central or richardson"
    )
    for name in DIGITS_NON_ANALYTIC:
        assert name in line
    assert "conv1 " not in line and "dense6" not in line
    # auto falls back to central on the same network
    auto = as_json(cnnbp.gradcheck(method="auto", per_tensor=2))
    assert auto["method"] == "central" and auto["requested_method"] == "auto"


def test_complex_step_on_an_analytic_network_is_exact_to_rounding(tmp_path: Path) -> None:
    config = analytic_yaml(tmp_path)
    report = as_json(cnnbp.gradcheck(config, method="complex"))
    assert report["method"] == "complex" and report["eps"] == 1e-20 and report["verdict"] == "PASS"
    assert report["cast_from"] is None  # a float64 config is checked as it is
    assert all(r["checked"] == r["total"] for r in report["rows"])
    worst = max(r["max_rel_error"] for r in report["rows"])
    assert worst <= 1e-12, worst
    assert as_json(cnnbp.gradcheck(config, method="auto"))["method"] == "complex"
    default = cnnbp.gradcheck(config)  # the library's default method is auto
    assert default.result.method == "complex" and default.subject.requested_method == "auto"
    assert default.subject.non_analytic == []


# ---- kinks, passed and ok(strict) -------------------------------------------------------------------------
def test_relu_at_exactly_zero_is_a_kink_checked_at_the_kink(tmp_path: Path) -> None:
    config = write_config(tmp_path, kink_config(), "kink.yaml")
    result = cnnbp.gradcheck(config)
    report = as_json(result)
    kinks = {key for key, r in rows_by_key(report).items() if r["status"] == "KINK"}
    assert kinks == {("hidden", "W"), ("hidden", "b"), ("hidden", "delta")}
    assert report["counts"]["FAIL"] == 0 and report["verdict"] == "PASS"
    assert report["counts"] == {"PASS": len(report["rows"]) - 3, "FAIL": 0, "KINK": 3, "UNCHECKED": 0}
    b = rows_by_key(report)[("hidden", "b")]
    assert b["worst_index"] == [1] and b["n_kink"] == 1 and b["n_fail"] == 0
    assert b["analytic"] == 0.0 and b["backward"] == pytest.approx(0.0, abs=1e-10) and b["forward"] > 0

    assert result.passed is True and result.ok() is True and result.ok(strict=True) is True
    strict = as_json(result, strict=True)
    assert strict["verdict"] == "PASS" and strict["strict"] is True  # KINK rows are checked
    assert strict["rows"] == report["rows"]  # --strict changes the verdict, not the rows


def test_strict_fails_unchecked_elements(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without the relu's frozen forward, W[1, ·] (features of both signs) moves the samples' dead
    pre-activations in opposite directions: those elements cannot be decided, and --strict fails them."""
    from cnnbp.core.layers import ReLU

    monkeypatch.setattr(ReLU, "frozen_forward", None)
    result = cnnbp.gradcheck(write_config(tmp_path, kink_config(), "kink.yaml"))
    report, strict = as_json(result), as_json(result, strict=True)
    w = rows_by_key(report)[("hidden", "W")]
    assert w["status"] == "UNCHECKED" and w["n_unchecked"] >= 1 and w["n_fail"] == 0
    assert report["unchecked"] == w["n_unchecked"] and report["counts"]["UNCHECKED"] == 1
    assert report["verdict"] == "PASS" and strict["verdict"] == "FAIL"
    assert result.passed and not result.ok(strict=True)


# ---- sampling and seeds ---------------------------------------------------------------------------------
def test_per_tensor_checks_k_elements_of_each_tensor() -> None:
    report = as_json(cnnbp.gradcheck(per_tensor=3))
    assert len(report["rows"]) == 15
    for r in report["rows"]:
        assert r["checked"] == min(3, r["total"]), r
    assert any(r["total"] > 3 for r in report["rows"])


def test_seed_picks_the_samples_and_never_the_weights() -> None:
    a = as_json(cnnbp.gradcheck(layers=["dense6"], seed=1))
    again = as_json(cnnbp.gradcheck(layers=["dense6"], seed=1))
    b = as_json(cnnbp.gradcheck(layers=["dense6"], seed=2, samples=6))
    assert a["sample_indices"] == again["sample_indices"] and a["rows"] == again["rows"]
    assert len(b["sample_indices"]) == 6 and b["sample_indices"] != a["sample_indices"][:6]
    assert a["sample_indices"] == sorted(a["sample_indices"])
    assert a["weights"] == b["weights"] == "initial weights (seed 0), float32"
    assert a["sample_indices"] == documented_draw(DIGITS_TRAIN, 4, 1)
    assert b["sample_indices"] == documented_draw(DIGITS_TRAIN, 6, 2)


def test_seed_override_builds_another_network_and_draws_with_it() -> None:
    """``overrides=["seed=S"]`` (``--set seed=S``) is the config's seed: other weights, and the draw's
    default seed."""
    other = cnnbp.gradcheck(layers=["dense6"], overrides=["seed=5"])
    assert other.subject.weights == "initial weights (seed 5), float32"
    assert other.subject.sample_indices == documented_draw(DIGITS_TRAIN, 4, 5)
    assert "drawn with seed 5;" in other.subject.inputs_text
    same_draw = cnnbp.gradcheck(layers=["dense6"], seed=5)
    assert same_draw.subject.sample_indices == other.subject.sample_indices
    assert as_json(same_draw)["rows"] != as_json(other)["rows"]  # same samples, other weights


def test_samples_are_drawn_from_the_training_split_of_a_small_config(tmp_path: Path) -> None:
    report = cnnbp.gradcheck(analytic_yaml(tmp_path), layers=["dense5"], samples=10)
    assert report.subject.sample_indices == [0, 1, 2, 3, 4, 5]  # all six: min(samples, n)
    assert report.result.samples == 6
    three = cnnbp.gradcheck(analytic_yaml(tmp_path), layers=["dense5"], samples=3, seed=9)
    assert three.subject.sample_indices == documented_draw(6, 3, 9)
    x = np.array(analytic_config()["data"]["x"])  # val_fraction 0: the training split is the data, in order
    np.testing.assert_array_equal(three.subject.x, x[three.subject.sample_indices])


# ---- targets: config path, dict, run folder, Run, checkpoint file, Checkpoint ------------------------------
def test_run_folder_and_checkpoint_file_of_a_float32_run(float32_run: Path) -> None:
    last = as_json(cnnbp.gradcheck(float32_run))
    assert last["kind"] == "checkpoint" and last["epoch"] == 2
    assert last["target"].endswith("0002.h5") and last["cast_from"] == "float32"
    assert last["verdict"] == "PASS" and last["inputs"] == "data"
    assert last["weights"] == "run analytic, epoch 2, float32"

    first = as_json(cnnbp.gradcheck(float32_run, checkpoint=0))
    assert first["epoch"] == 0 and first["target"].endswith("0000.h5")
    assert first["rows"] != last["rows"]  # other weights, other gradients
    assert as_json(cnnbp.gradcheck(float32_run, checkpoint="last"))["target"] == last["target"]

    file = float32_run / "checkpoints" / "0001.h5"
    one = cnnbp.gradcheck(file)
    assert one.subject.target == str(file) and one.subject.kind == "checkpoint" and one.subject.epoch == 1
    assert one.subject.weights == "run analytic, epoch 1, float32"
    assert one.result.cast_from == "float32"


def test_every_target_kind_of_a_run_checks_the_same_network(float32_run: Path) -> None:
    """A run folder, a ``cnnbp.Run``, a checkpoint file and a ``cnnbp.Checkpoint`` of the same epoch."""
    file = float32_run / "checkpoints" / "0001.h5"
    reports = [
        cnnbp.gradcheck(float32_run, checkpoint=1, layers=["dense5"]),
        cnnbp.gradcheck(cnnbp.load_run(float32_run), checkpoint=1, layers=["dense5"]),
        cnnbp.gradcheck(str(file), layers=["dense5"]),
        cnnbp.gradcheck(cnnbp.read_checkpoint(file), layers=["dense5"]),
        cnnbp.gradcheck(cnnbp.Run(float32_run).checkpoint(1), layers=["dense5"]),
    ]
    first = as_json(reports[0])
    for report in reports:
        d = as_json(report)
        assert d["target"] == str(file) and d["kind"] == "checkpoint" and d["epoch"] == 1
        assert d["sample_indices"] == first["sample_indices"] and d["rows"] == first["rows"]


def test_a_config_dict_is_checked_like_its_file(tmp_path: Path) -> None:
    from_file = as_json(cnnbp.gradcheck(analytic_yaml(tmp_path), layers=["dense5"]))
    from_dict = as_json(cnnbp.gradcheck(analytic_config(), layers=["dense5"]))
    assert from_dict["kind"] == "config" and from_dict["target"] == "a config dict"
    assert from_dict["weights"] == from_file["weights"] == "initial weights (seed 1), float64"
    assert from_dict["sample_indices"] == from_file["sample_indices"]
    assert from_dict["rows"] == from_file["rows"]
    # overrides apply to a dict as to a file, and the dict itself is left alone
    cfg = analytic_config()
    changed = cnnbp.gradcheck(cfg, layers=["dense5"], overrides=["dtype=float32"])
    assert changed.subject.weights == "initial weights (seed 1), float32" and cfg["dtype"] == "float64"
    assert changed.result.cast_from == "float32"


def test_checkpoint_initial_weights_match_the_config(float32_run: Path) -> None:
    """Checkpoint 0 holds the weights a config target builds (default_rng(seed), as train does)."""
    from_checkpoint = as_json(cnnbp.gradcheck(float32_run, checkpoint=0, layers=["dense5"]))
    from_config = as_json(cnnbp.gradcheck(float32_run.parents[1] / "analytic.yaml", layers=["dense5"]))
    assert from_config["sample_indices"] == from_checkpoint["sample_indices"]
    assert from_config["rows"] == from_checkpoint["rows"]


def test_a_config_with_init_from_checks_those_weights(float32_run: Path, tmp_path: Path) -> None:
    cfg = analytic_config("float32")
    cfg["model"]["init_from"] = str(float32_run)  # its last checkpoint
    report = as_json(cnnbp.gradcheck(write_config(tmp_path, cfg, "analytic.yaml"), layers=["dense5"]))
    assert report["weights"].startswith("weights of model.init_from") and "0002.h5" in report["weights"]
    assert report["rows"] == as_json(cnnbp.gradcheck(float32_run, layers=["dense5"]))["rows"]


def test_a_checkpoint_network_comes_from_its_model_record(float32_run: Path, tmp_path: Path) -> None:
    """The network is rebuilt from ``/model`` with ``/weights``; ``/config`` only says where the data is."""
    copy = Path(shutil.copy(float32_run / "checkpoints" / "0001.h5", tmp_path / "loose.h5"))

    def other_model(f: Any) -> None:
        cfg = yaml.safe_load(f["config"].asstr()[()])
        cfg["model"]["layers"][0]["filters"] = 5  # a network these weights do not fit
        cfg["model"]["layers"][4]["activation"] = "tanh"
        del f["config"]
        f["config"] = yaml.safe_dump(cfg)

    rewrite_checkpoint(copy, other_model)
    assert "filters: 5" in cnnbp.read_checkpoint(copy).config  # intact, re-sealed, saying another network
    edited = as_json(cnnbp.gradcheck(copy))
    original = as_json(cnnbp.gradcheck(float32_run, checkpoint=1))
    assert edited["rows"] == original["rows"] and edited["sample_indices"] == original["sample_indices"]
    assert rows_by_key(edited)[("conv1", "W")]["shape"] == [3, 1, 3, 3]
    assert ("dense5.sigmoid", "delta") in rows_by_key(edited)
    assert edited["weights"] == "run analytic, epoch 1, float32" and edited["target"] == str(copy)


# ---- inputs: the probe fallback and the data ---------------------------------------------------------------
def test_checkpoint_without_its_data_falls_back_to_probe_samples(moved_data_run: tuple[Path, Path]) -> None:
    run, moved = moved_data_run
    missing = str(moved.parent / "images.npz")
    ck = cnnbp.read_checkpoint(run / "checkpoints" / "0002.h5")
    assert ck.probe_x.shape[0] == 3

    result = cnnbp.gradcheck(run, samples=2)
    report = as_json(result)
    assert report["inputs"] == "probe" and report["samples"] == 2 and report["verdict"] == "PASS"
    pick = documented_draw(3, 2, 1)  # drawn the same way, with the config's seed 1
    assert report["sample_indices"] == [int(i) for i in ck.probe_index[pick]]
    np.testing.assert_array_equal(result.subject.x, ck.probe_x[pick])
    np.testing.assert_array_equal(result.subject.y, ck.probe_y[pick])
    assert result.subject.inputs_text == (
        f"2 of the checkpoint's 3 probe samples (data not found here: {missing}), drawn with seed 1; "
        f"training-set indices {', '.join(str(i) for i in report['sample_indices'])}"
    )
    probe = as_json(cnnbp.gradcheck(run, samples=10))  # only 3 probe samples were recorded
    assert probe["samples"] == 3 and len(probe["sample_indices"]) == 3
    assert probe["sample_indices"] == [int(i) for i in ck.probe_index]

    found = as_json(cnnbp.gradcheck(run, overrides=[f"data.path={moved}"]))
    assert found["inputs"] == "data" and found["samples"] == 4

    # a config whose data is missing is an error, not a fallback
    with pytest.raises(UserError) as caught:
        cnnbp.gradcheck(run.parents[1] / "elsewhere.yaml")
    line = str(caught.value)
    assert "images.npz" in line and "not found" in line
    assert line == f"{missing}: file not found"


def test_checkpoint_data_that_exists_but_cannot_be_loaded_is_an_error(
    moved_data_run: tuple[Path, Path], tmp_path: Path
) -> None:
    run, _ = moved_data_run
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(UserError, match=r"junk\.npz: not an \.npz archive"):
        cnnbp.gradcheck(run, overrides=[f"data.path={junk}"])


def test_overrides_on_a_checkpoint_change_only_the_data(
    float32_run: Path, moved_data_run: tuple[Path, Path]
) -> None:
    with pytest.raises(UserError) as caught:
        cnnbp.gradcheck(float32_run, overrides=["model.layers[2].mode=max"])
    assert str(caught.value) == (
        "--set model.layers[2].mode=max: a checkpoint's network is fixed; only data.* can be changed here"
    )
    assert "only data.*" in str(caught.value)
    for key in ("seed=3", "dtype=float64", "loss=softmax_cross_entropy"):
        with pytest.raises(UserError, match="only data"):
            cnnbp.gradcheck(float32_run, overrides=[key])
    # data.* keys apply: a local copy of the data, limited to 5 of its 9 training samples
    run, moved = moved_data_run
    limited = cnnbp.gradcheck(run, overrides=[f"data.path={moved}", "data.limit=5"], layers=["dense5"])
    assert limited.subject.inputs == "data"
    assert limited.subject.inputs_text.startswith(f"4 of 5 training samples of npz: {moved} (12 samples)")
    assert limited.subject.sample_indices == documented_draw(5, 4, 1)


# ---- layers and options ---------------------------------------------------------------------------------
def test_layers_restrict_the_rows(tmp_path: Path) -> None:
    report = cnnbp.gradcheck(analytic_yaml(tmp_path), layers=["dense5", "input", "dense5"])
    assert [(r.layer, r.tensor) for r in report.rows] == [
        ("input", "input"), ("dense5", "W"), ("dense5", "b"), ("dense5", "delta"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["conv9"], f"--layer conv9: no such layer; the layers are {DIGITS_NAMES}"),
        (["dense6", "conv9", "fc", "conv9"],
         f"--layer conv9, fc: no such layers; the layers are {DIGITS_NAMES}"),
    ],
)  # fmt: skip
def test_unknown_layers_are_a_user_error_listing_the_layers(layers: list[str], message: str) -> None:
    with pytest.raises(UserError) as caught:
        cnnbp.gradcheck(layers=layers)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("target", "kwargs", "message"),
    [
        ("no/such.yaml", {}, "no/such.yaml: no such config file, run folder or checkpoint file"),
        (None, {"checkpoint": 1}, "--checkpoint: selects a checkpoint of a run folder, not a config"),
        (None, {"method": "fwd"}, "--method: expected one of central, richardson, complex, auto, got 'fwd'"),
        (None, {"samples": 0}, "--samples: expected an integer ≥ 1, got 0"),
        (None, {"eps": -1e-5, "layers": ["dense6"]}, "--eps: expected 'auto' or a number > 0, got -1e-05"),
        (None, {"rtol": float("nan")}, "--rtol: expected a number > 0, got nan"),
        (None, {"rtol": 0.0}, "--rtol: expected a number > 0, got 0.0"),
        (None, {"check_all": True, "per_tensor": 3}, "--all and --per-tensor: use one or the other"),
        (None, {"mode": "random"}, "--mode: expected one of elements, directional, got 'random'"),
        (None, {"directions": 8}, "--directions: only with --mode directional"),
        (None, {"mode": "directional", "directions": 0}, "--directions: expected an integer ≥ 1, got 0"),
        (None, {"mode": "directional", "check_all": True},
         "--mode directional: checks whole tensors; drop --all"),
        (None, {"mode": "directional", "per_tensor": 5},
         "--mode directional: checks whole tensors; drop --per-tensor"),
    ],
)  # fmt: skip
def test_user_errors(target: str | None, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        cnnbp.gradcheck(target, **kwargs)
    assert str(caught.value) == message


def test_checkpoint_selects_nothing_on_a_config_file(tmp_path: Path, float32_run: Path) -> None:
    config = analytic_yaml(tmp_path)
    with pytest.raises(UserError) as caught:
        cnnbp.gradcheck(config, checkpoint=1)
    message = f"--checkpoint: selects a checkpoint of a run folder, but {config} is a config"
    assert str(caught.value) == message
    with pytest.raises(UserError, match=r"no checkpoint for epoch 7 \(have 0, 1, 2\)"):
        cnnbp.gradcheck(float32_run, checkpoint=7)


# ---- to_dict ------------------------------------------------------------------------------------------
def test_to_dict_writes_non_finite_numbers_as_strict_json(tmp_path: Path) -> None:
    """NaN → null and ±inf → "inf" / "-inf" (``cnnbp.files.json_number``), so the document is strict JSON."""
    report = cnnbp.gradcheck(write_config(tmp_path, kink_config(), "kink.yaml"))
    first, second, *rest = report.rows
    odd = [
        replace(first, max_rel_error=math.inf, analytic=math.nan, numeric=-math.inf),
        replace(second, max_rel_error=math.nan, analytic=math.inf, numeric=0.25),
        *rest,
    ]
    weird = GradcheckReport(report.subject, replace(report.result, rows=odd))
    d = as_json(weird)
    numbers = [(r["max_rel_error"], r["analytic"], r["numeric"]) for r in d["rows"]]
    assert numbers[:2] == [("inf", None, "-inf"), (None, "inf", 0.25)]
    assert d["rows"][2:] == as_json(report)["rows"][2:]
    assert d["rows"][0]["shape"] == list(first.shape)
    assert d["rows"][0]["worst_index"] == list(first.worst_index)
    assert set(d) == REPORT_KEYS
    assert d["eps"] == report.result.eps and d["rtol"] == 1e-6 and d["atol_floor"] == report.result.atol_floor
    assert d["counts"] == {"PASS": 5, "FAIL": 0, "KINK": 3, "UNCHECKED": 0} and d["verdict"] == "PASS"


def test_prepare_then_run_check_is_gradcheck(tmp_path: Path) -> None:
    """The command's two steps (network and batch first, then the check) give the library's report."""
    from cnnbp.checking import run_check

    config = analytic_yaml(tmp_path)
    subject, selected, rng = prepare(config, method="central", layers=["dense5"], seed=4)
    assert selected == ["dense5"] and subject.requested_method == "central"
    two_steps = run_check(subject, selected, rng, per_tensor=5)
    one_call = cnnbp.gradcheck(config, "central", layers=["dense5"], seed=4, per_tensor=5)
    assert as_json(two_steps)["rows"] == as_json(one_call)["rows"]
    assert two_steps.subject.sample_indices == one_call.subject.sample_indices == documented_draw(6, 4, 4)


# ---- the directional mode and progress ---------------------------------------------------------------
def test_directional_mode_on_the_default_config(wrong_dense_w: dict[str, tuple[int, ...]]) -> None:
    """Along 6 directions per tensor: a wrong dense6.W (one element off by 1e-4, the largest) fails its
    directions and is checked element by element, which names the element; tensors whose directions cross
    the digits' kinks are checked on a sample of their elements; the rest stay directional."""
    calls: list[tuple[int, int]] = []
    result = cnnbp.gradcheck(mode="directional", directions=6, progress=lambda d, t: calls.append((d, t)))
    report = as_json(result)
    assert report["mode"] == "directional" and report["directions"] == 6 and report["verdict"] == "FAIL"
    rows = rows_by_key(report)
    w = rows[("dense6", "W")]
    assert (w["status"], w["mode"], w["fallback"], w["checked"]) == ("FAIL", "elements", "FAIL", 1280)
    assert w["directions_failed"] >= 1 and tuple(w["worst_index"]) == wrong_dense_w["index"]
    assert [(r["layer"], r["tensor"]) for r in report["rows"] if r["status"] == "FAIL"] == [("dense6", "W")]
    kinked = rows[("conv1", "b")]
    assert kinked["fallback"] == "KINK" and kinked["status"] == "KINK" and kinked["checked"] == 16
    plain = rows[("dense6", "b")]
    assert (plain["mode"], plain["checked"], plain["status"]) == ("directional", 6, "PASS")
    assert plain["fallback"] == ""
    assert calls[-1][0] == calls[-1][1] > 6 * len(report["rows"])  # the fallbacks' elements add to the total


def test_progress_counts_the_elements_checked(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    report = cnnbp.gradcheck(analytic_yaml(tmp_path), progress=lambda d, t: calls.append((d, t)))
    total = sum(r.checked for r in report.rows)
    assert calls and calls[-1] == (total, total)
    assert all(t == total for _, t in calls) and [d for d, _ in calls] == sorted(d for d, _ in calls)
