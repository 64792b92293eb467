"""Tests of :mod:`cnnbp.inspection`, the data behind ``cnnbp inspect``: the numbers of every view are the
checkpoint's own, the seeds' 3×3 / 2×2 example gives the seeds' numbers, and bad choices are one-line
UserErrors.

Runs are made with ``cnnbp train`` (tests/cli/conftest.py); the expected numbers come straight from the
HDF5 files (h5py) and ``metrics.csv`` (csv), or are worked out by hand, never from cnnbp's own helpers.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnbp import inspection as ins
from cnnbp.errors import UserError
from tests.cli.conftest import SEED_X, ck_path, read_h5, rewrite_checkpoint, seed_expected, seed_forward


def strict_json(data: object) -> object:
    """``to_json(data)`` through a strict JSON round trip (no NaN or Infinity allowed)."""
    return json.loads(json.dumps(ins.to_json(data), allow_nan=False))


def h5_norm(group: h5py.Group) -> float:
    return math.sqrt(sum(float((v[()].astype(np.float64) ** 2).sum()) for v in group.values()))


# ---- finding and reading --------------------------------------------------------------------------------


def test_load_checkpoint_targets(digits_run: Path) -> None:
    assert ins.load_checkpoint(digits_run).path == ck_path(digits_run, 2)
    assert ins.load_checkpoint(digits_run, "1").epoch == 1
    assert ins.load_checkpoint(digits_run, 0).epoch == 0
    assert ins.load_checkpoint(digits_run / "checkpoints", "last").epoch == 2
    assert ins.load_checkpoint(ck_path(digits_run, 1)).epoch == 1
    with pytest.raises(UserError, match=r"no checkpoint for epoch 7 \(have 0, 1, 2\)"):
        ins.load_checkpoint(digits_run, "7")


def test_load_all(digits_run: Path, tmp_path: Path) -> None:
    assert [ck.epoch for ck in ins.load_all(digits_run)] == [0, 1, 2]
    assert [ck.epoch for ck in ins.load_all(digits_run / "checkpoints")] == [0, 1, 2]
    with pytest.raises(UserError, match="needs a run folder, not one checkpoint file"):
        ins.load_all(ck_path(digits_run, 1))
    with pytest.raises(UserError, match="no checkpoints found"):
        ins.load_all(tmp_path)
    with pytest.raises(UserError, match="no such run folder"):
        ins.load_all(tmp_path / "nope")


def test_load_metrics_falls_back_to_the_checkpoint_with_a_note(digits_run: Path, tmp_path: Path) -> None:
    ck = ins.load_checkpoint(digits_run)
    notes: list[str] = []
    metrics, source = ins.load_metrics(digits_run, ck, notes.append)
    assert source == str(digits_run / "metrics.csv") and notes == []
    assert metrics["epoch"].tolist() == [0.0, 1.0, 2.0]

    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "metrics.csv").write_text("epoch,step,train_loss\n0,0,oops\n", encoding="utf-8")
    ck = ins.load_checkpoint(run)
    metrics, source = ins.load_metrics(run, ck, notes.append)
    assert source == f"{ck_path(run, 2)} /metrics"
    assert len(notes) == 1 and "metrics.csv" in notes[0] and "checkpoint's /metrics instead" in notes[0]
    np.testing.assert_array_equal(metrics["val_acc"], read_h5(ck_path(run, 2), "metrics/val_acc"))
    # a loose checkpoint file has only its own /metrics
    loose = tmp_path / "loose.h5"
    shutil.copyfile(ck_path(digits_run, 1), loose)
    metrics, source = ins.load_metrics(loose, ins.load_checkpoint(loose))
    assert source == f"{loose} /metrics" and metrics["epoch"].tolist() == [0.0, 1.0]


def test_select_layers(digits_run: Path) -> None:
    ck = ins.load_checkpoint(digits_run)
    names = ["conv1", "conv1.relu", "pool2", "conv3", "conv3.relu", "pool4", "flatten5", "dense6"]
    assert [x.name for x in ins.select_layers(ck, None, params_only=False)] == names
    assert [x.name for x in ins.select_layers(ck, None, params_only=True)] == ["conv1", "conv3", "dense6"]
    # repeated or comma-separated, always in network order
    chosen = ins.select_layers(ck, ["dense6,conv1", "pool2"], params_only=False)
    assert [x.name for x in chosen] == ["conv1", "pool2", "dense6"]
    with pytest.raises(UserError) as e:
        ins.select_layers(ck, ["conv9"], params_only=False)
    assert str(e.value) == f"--layer: no layer 'conv9' in {ck.path}; its layers: {', '.join(names)}"
    with pytest.raises(UserError) as e:
        ins.select_layers(ck, ["pool2"], params_only=True)
    assert str(e.value) == "--layer: pool2 has no parameters; layers with parameters: conv1, conv3, dense6"


def test_sample_and_channel_checks(digits_run: Path) -> None:
    ck = ins.load_checkpoint(digits_run)
    assert ins.probe_count(ck) == 4
    ins.check_sample(ck, 3)
    with pytest.raises(UserError, match=r"has 4 samples \(0\.\.3\)"):
        ins.check_sample(ck, 4)
    ins.check_channel({"x": np.zeros((2, 3, 3))}, None, "channel")
    ins.check_channel({"x": np.zeros((2, 3, 3)), "v": np.zeros(9)}, 1, "channel")  # vectors have no maps
    with pytest.raises(UserError, match=r"--channel 2: x has 2 filters \(0\.\.1\)"):
        ins.check_channel({"x": np.zeros((2, 3, 3))}, 2, "filter")
    with pytest.raises(UserError, match=r"x has 1 channel \(0\.\.0\)"):
        ins.check_channel({"x": np.zeros((1, 3, 3))}, 1, "channel")


# ---- numbers --------------------------------------------------------------------------------------------


def test_norms_by_hand() -> None:
    assert ins.norm([np.array([3.0]), np.array([[4.0]])]) == 5.0
    assert math.isnan(ins.norm([]))
    d = np.array([[[3.0, 4.0]], [[0.0, 1.0]]])  # two samples: ‖δ‖ 5 and 1
    assert ins.delta_norm(d) == 3.0
    assert math.isnan(ins.delta_norm(np.zeros((0, 2))))
    assert ins.array_stats(np.array([[1.0, -3.0], [0.0, 0.0]], dtype=np.float32)) == {
        "min": -3.0, "max": 1.0, "mean": -0.5, "norm": math.sqrt(10.0)
    }  # fmt: skip
    assert all(math.isnan(v) for v in ins.array_stats(np.zeros(0)).values())


def test_best_ranges_and_scales() -> None:
    metrics = {"epoch": np.array([0.0, 1, 2, 3]), "val_acc": np.array([math.nan, 0.5, 0.9, 0.9])}
    assert ins.best(metrics, "val_acc") == (0.9, 2)  # the earliest of a tie
    top, epoch = ins.best(metrics, "val_loss")
    assert math.isnan(top) and epoch is None
    assert ins.epoch_ranges([0, 1, 2, 3, 4, 5, 8, 10, 11, 12]) == "0–5, 8, 10–12"
    assert ins.epoch_ranges([]) == ""
    assert ins.log_scale(np.array([3.0, math.nan]), np.array([0.09])) is True
    assert ins.log_scale(np.array([3.0, 0.2])) is False
    assert ins.log_scale(np.array([3.0, 0.0, 0.001])) is False  # zero: no log axis
    assert ins.log_scale(np.zeros(0)) is False
    rows = ins.metric_rows({"epoch": [0, None], "step": [0, 5], "lr": [0.1]})
    assert len(rows) == 2 and rows[0][:2] == [0.0, 0.0] and rows[0][6] == 0.1
    assert math.isnan(rows[1][0]) and rows[1][1] == 5.0 and math.isnan(rows[1][6])


def test_run_config_reads_yaml_12_numbers(digits_run: Path) -> None:
    ck = ins.load_checkpoint(digits_run)
    cfg = ins.run_config(ck)
    assert ins.dataset_text(cfg) == "digits · limit 200"
    assert ins.planned_epochs(cfg) == 2
    ck = replace(ck, config="train: {lr: 1e-3, epochs: 4}\ndata: {source: idx}")
    cfg = ins.run_config(ck)
    assert cfg["train"]["lr"] == 0.001 and ins.planned_epochs(cfg) == 4 and ins.dataset_text(cfg) == "idx"
    ck = replace(ck, config="a: [unclosed")
    assert ins.run_config(ck) == {} and ins.dataset_text({}) == "?" and ins.planned_epochs({}) is None


def test_to_json_is_strict_with_one_number_policy() -> None:
    data = {
        "a": np.array([[1.0, math.nan], [math.inf, -math.inf]], dtype=np.float32),
        "b": (np.int64(3), np.bool_(True), np.float64(0.5)),
        2: [None, "text", {"c": math.nan}],
    }
    assert strict_json(data) == {
        "a": [[1.0, None], ["inf", "-inf"]],
        "b": [3, True, 0.5],
        "2": [None, "text", {"c": None}],
    }
    metrics = ins.metrics_json({"epoch": np.array([0.0, math.nan]), "val_acc": np.array([0.25, math.nan])})
    assert strict_json(metrics) == {"epoch": [0, None], "val_acc": [0.25, None]}


# ---- the views equal the checkpoint file ------------------------------------------------------------------


def test_summary_norms_recomputed_from_h5(digits_run: Path) -> None:
    ck = ins.load_checkpoint(digits_run)
    data = strict_json(ins.summary_data(digits_run, ck, ins.select_layers(ck, None, params_only=False)))
    path = ck_path(digits_run, 2)
    assert data["checkpoint"]["path"] == str(path) and data["checkpoint"]["epoch"] == 2
    assert data["run"]["checkpoints"] == [0, 1, 2] and data["run"]["name"] == "digits"
    assert data["run"]["epochs"] == 2 and data["run"]["epochs_planned"] == 2
    assert data["run"]["probe_samples"] == 4 and data["run"]["folder"] == str(digits_run)
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
                assert row["params"] == sum(v.size for v in f[f"weights/{name}"].values()) > 0
                assert row["param_norm"] == pytest.approx(h5_norm(f[f"weights/{name}"]), rel=1e-12)
                assert row["grad_norm"] == pytest.approx(h5_norm(f[f"grads/{name}"]), rel=1e-12)
            else:
                assert row["params"] == 0 and row["param_norm"] is None and row["grad_norm"] is None
        val_acc = f["metrics/val_acc"][()]
    assert data["run"]["best_val_acc"] == pytest.approx(float(val_acc.max()))
    assert data["metrics"]["epoch"] == [0, 1, 2]
    # a checkpoint file as the target: the run's folder and checkpoints are still found
    ck = ins.load_checkpoint(ck_path(digits_run, 1))
    data = ins.summary_data(ck_path(digits_run, 1), ck, [])
    assert data["checkpoint"]["epoch"] == 1 and data["run"]["checkpoints"] == [0, 1, 2]


def test_deltas_equal_h5(digits_run: Path) -> None:
    path = ck_path(digits_run, 1)
    ck = ins.load_checkpoint(digits_run, "1")
    data = strict_json(ins.deltas_data(ck, ins.select_layers(ck, None, params_only=True), 2, None))
    assert [e["name"] for e in data["layers"]] == ["conv1", "conv3", "dense6"]
    assert data["sample"]["index"] == 2
    assert data["sample"]["train_index"] == int(read_h5(path, "probe/index")[2])
    assert data["sample"]["target"] == int(read_h5(path, "probe/y")[2])
    for entry in data["layers"]:
        stored = read_h5(path, f"deltas/{entry['name']}")[2]
        shown = np.asarray(entry["delta"], dtype=stored.dtype)
        assert shown.shape == stored.shape and np.array_equal(shown, stored)
        assert entry["channel"] is None and entry["shape"] == list(stored.shape)
        assert entry["stats"]["max"] == pytest.approx(float(stored.max()))
    # any layer by name, and one channel of it
    data = strict_json(ins.deltas_data(ck, ins.select_layers(ck, ["pool2"], params_only=False), 3, 5))
    stored = read_h5(path, "deltas/pool2")[3, 5]
    assert data["layers"][0]["channel"] == 5
    assert np.array_equal(np.asarray(data["layers"][0]["delta"], dtype=stored.dtype), stored)
    with pytest.raises(UserError, match="conv1 has 16 channels"):
        ins.deltas_data(ck, ins.select_layers(ck, ["conv1"], params_only=False), 0, 16)


@pytest.mark.parametrize("view", ["grads", "weights"])
def test_params_equal_h5(digits_run: Path, view: str) -> None:
    for epoch in (0, 2):
        ck = ins.load_checkpoint(digits_run, epoch)
        data = strict_json(ins.params_data(ck, ins.select_layers(ck, None, params_only=True), view, None))
        with h5py.File(ck_path(digits_run, epoch), "r") as f:
            group = f[view]
            assert [e["name"] for e in data["layers"]] == list(group)
            for entry in data["layers"]:
                assert set(entry["params"]) == set(group[entry["name"]])
                for key, info in entry["params"].items():
                    stored = group[entry["name"]][key][()]
                    assert info["shape"] == list(stored.shape)
                    assert np.array_equal(np.asarray(info["values"], dtype=stored.dtype), stored)
    data = strict_json(ins.params_data(ck, ins.select_layers(ck, ["conv3"], params_only=True), view, 7))
    stored = read_h5(ck_path(digits_run, 2), f"{view}/conv3/W")[7]
    assert np.array_equal(np.asarray(data["layers"][0]["params"]["W"]["values"], dtype=stored.dtype), stored)
    assert data["layers"][0]["params"]["b"]["channel"] is None  # a tied bias is a vector: not sliced


def test_metrics_equal_csv_and_h5(digits_run: Path) -> None:
    data = strict_json(ins.metrics_data(digits_run, ins.load_checkpoint(digits_run)))
    assert data["source"] == str(digits_run / "metrics.csv")
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


def test_norms_across_checkpoints_equal_h5(digits_run: Path) -> None:
    cks = ins.load_all(digits_run)
    for view in ("deltas", "grads"):
        data = strict_json(ins.norms_data(cks, None, view))
        assert [c["epoch"] for c in data["checkpoints"]] == [0, 1, 2]
        assert data["measure"].startswith("mean over the probe samples" if view == "deltas" else "‖∂L/∂θ‖")
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
                        want = h5_norm(f[f"grads/{row['name']}"])
                    assert row["values"][k] == pytest.approx(want, rel=1e-12)
    data = ins.norms_data(cks, ["conv1"], "weights")
    assert [r["name"] for r in data["layers"]] == ["conv1"]


def test_non_finite_values_follow_the_json_policy(digits_run: Path, tmp_path: Path) -> None:
    """A gradient holding inf and NaN: ``"inf"`` and null in the arrays, and in the norms they make."""
    path = tmp_path / "odd.h5"
    shutil.copyfile(ck_path(digits_run, 2), path)

    def edit(f: h5py.File) -> None:
        w = f["grads/dense6/W"][()]
        w[0, 0], w[0, 1] = np.inf, np.nan
        f["grads/dense6/W"][...] = w
        b = f["grads/conv1/b"][()]
        b[0] = -np.inf
        f["grads/conv1/b"][...] = b

    rewrite_checkpoint(path, edit)
    ck = ins.load_checkpoint(path)
    layers = ins.select_layers(ck, ["dense6"], params_only=True)
    data = strict_json(ins.params_data(ck, layers, "grads", None))
    assert data["layers"][0]["params"]["W"]["values"][0][:2] == ["inf", None]
    assert data["layers"][0]["params"]["W"]["stats"]["min"] is None  # NaN wins in min/max/mean
    rows = strict_json(ins.summary_data(path, ck, ins.select_layers(ck, None, params_only=True)))["layers"]
    assert [r["grad_norm"] for r in rows] == ["inf", rows[1]["grad_norm"], None]
    assert isinstance(rows[1]["grad_norm"], float)


# ---- the seeds' worked example ------------------------------------------------------------------------


@pytest.mark.parametrize("epoch", [0, 1])
def test_seed_example_as_in_the_seeds(seeds_run: Path, epoch: int) -> None:
    want = seed_expected()[epoch]
    ck = ins.load_checkpoint(seeds_run, epoch)
    layers = ins.select_layers(ck, ["conv1"], params_only=False)
    data = strict_json(ins.deltas_data(ck, layers, 0, None))
    delta = np.asarray(data["layers"][0]["delta"])
    assert np.array_equal(delta, read_h5(ck_path(seeds_run, epoch), "deltas/conv1")[0])
    np.testing.assert_allclose(delta[0], want["delta"], rtol=0, atol=1e-12)
    assert data["sample"]["target"] == [1.0, 0.0, 0.0, 1.0]
    grads = strict_json(ins.params_data(ck, layers, "grads", None))["layers"][0]["params"]
    np.testing.assert_allclose(np.asarray(grads["W"]["values"])[0, 0], want["grad_F"], atol=1e-12)
    np.testing.assert_allclose(np.asarray(grads["b"]["values"])[0], want["grad_b"], atol=1e-12)
    weights = strict_json(ins.params_data(ck, layers, "weights", None))["layers"][0]["params"]
    np.testing.assert_allclose(np.asarray(weights["W"]["values"])[0, 0], want["F"], atol=1e-12)
    np.testing.assert_allclose(np.asarray(weights["b"]["values"])[0], want["b"], atol=1e-12)


@pytest.mark.parametrize("epoch", [0, 1])
def test_seed_activations_are_the_seeds_forward_pass(seeds_run: Path, epoch: int) -> None:
    """/activations holds each layer's output: O = F ⋆ X + b for conv1, written out term by term in the
    seed, and O flattened row by row for flatten2."""
    want = seed_expected()[epoch]
    O = seed_forward(want["F"], want["b"], np.array(SEED_X))
    ck = ins.load_checkpoint(seeds_run, epoch)
    data = strict_json(ins.activations_data(ck, ck.layers, 0, None))
    conv, flat = (np.asarray(layer["activation"]) for layer in data["layers"])
    np.testing.assert_allclose(conv[0], O, rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat, O.ravel(), rtol=0, atol=1e-12)
    assert np.array_equal(conv, read_h5(ck_path(seeds_run, epoch), "activations/conv1")[0])


# ---- distributions and several runs ------------------------------------------------------------------


def test_histograms_share_bins_over_every_checkpoint(digits_run: Path) -> None:
    cks = ins.load_all(digits_run)
    data = ins.histograms_data(cks, ["dense6"], bins=10)
    assert [(b["name"], b["quantity"]) for b in data["histograms"]] == [
        ("dense6.W", "weights"), ("dense6.b", "weights"), ("dense6.W", "grads"), ("dense6.b", "grads"),
        ("dense6", "deltas"),
    ]  # fmt: skip
    deltas = [read_h5(ck_path(digits_run, e), "deltas/dense6").astype(np.float64) for e in range(3)]
    block = data["histograms"][-1]
    lo, hi = min(d.min() for d in deltas), max(d.max() for d in deltas)
    np.testing.assert_allclose(block["edges"], np.linspace(lo, hi, 11))
    for row, d in zip(block["rows"], deltas, strict=True):
        assert list(row["counts"]) == list(np.histogram(d, bins=np.linspace(lo, hi, 11))[0])
        assert row["mean"] == pytest.approx(d.mean()) and row["std"] == pytest.approx(d.std())
    assert ins.pick_evenly(list(range(16)), 4) == [0, 5, 10, 15]
    assert ins.pick_evenly([1, 2], 4) == [1, 2]


def test_config_differences_name_the_keys_that_differ() -> None:
    def config(name: str, filters: int, **train: float) -> dict:
        return {"name": name, "train": {"epochs": 3, **train}, "model": {"layers": [{"filters": filters}]}}

    a, b, c = config("a", 8, lr=0.1), config("b", 16, lr=0.2), config("c", 8, lr=0.1, momentum=0.9)
    diffs = ins.config_differences([a, b, c])
    assert [(d["key"], d["values"]) for d in diffs] == [
        ("train.lr", [0.1, 0.2, 0.1]),
        ("model.layers[0].filters", [8, 16, 8]),
        ("train.momentum", [ins.MISSING, ins.MISSING, 0.9]),
    ]


def test_compare_data_reads_each_runs_files(digits_run: Path, seeds_run: Path) -> None:
    data = ins.compare_data([digits_run, seeds_run])
    digits, seeds = data["runs"]
    assert (digits["label"], seeds["label"]) == ("digits", "seeds")
    rows = list(csv.DictReader((digits_run / "metrics.csv").open(encoding="utf-8")))
    assert digits["final"]["val_acc"] == float(rows[-1]["val_acc"]) and digits["epochs"] == 2
    assert digits["steps"]["step"] == list(range(1, 15)) and digits["status"]["state"] == "finished"
    assert {"key": "loss", "values": ["softmax_cross_entropy", "mse"]} in data["differences"]
    doc = json.loads(json.dumps(ins.compare_json(data), allow_nan=False))
    assert "config" not in doc["runs"][0]
    with pytest.raises(UserError, match="not a run folder"):
        ins.compare_data([digits_run / "checkpoints"])
