"""Tests of :mod:`cnnbp.health`, the gradient health of a run: networks built to have dead relus (a large
negative bias) and to vanish (a deep sigmoid stack) are flagged, the default run after training is not,
and every figure equals the one worked out by hand from the HDF5 file (h5py, not cnnbp's reader).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cnnbp import inspection as ins
from cnnbp.errors import UserError
from cnnbp.health import Thresholds, checkpoint_health, parse_thresholds, run_health
from tests.cli.conftest import ck_path, read_h5, train_run

LR = 0.1


def inline_config(name: str, layers: list[dict], n_in: int, *, lr: float = LR, epochs: int = 2) -> dict:
    """Twelve seeded inputs in [0.5, 1) of ``n_in`` features, three classes, a dense network."""
    rng = np.random.default_rng(3)
    x = np.round(rng.uniform(0.5, 1.0, size=(12, n_in)), 3).tolist()
    return {
        "name": name,
        "seed": 0,
        "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0.25, "x": x, "y": [i % 3 for i in range(12)]},
        "model": {"input_shape": [n_in], "layers": [*layers, {"type": "dense", "units": 3, "name": "out"}]},
        "loss": "softmax_cross_entropy",
        "train": {"epochs": epochs, "batch_size": 3, "lr": lr, "momentum": 0.0},
        "record": {"probe": 6, "every": 1},
    }


@pytest.fixture(scope="module")
def dead_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A relu after a dense layer whose bias is −10: z = Wx − 10 < 0 for every input in [0.5, 1)⁶
    (|Wx| ≤ 6 · max|W| < 6 with glorot_uniform's |W| < 0.87), so every unit is dead and stays so (its
    gradient is 0)."""
    layer = {"type": "dense", "name": "hidden", "units": 8, "activation": "relu", "init": {"b": -10.0}}
    return train_run(tmp_path_factory.mktemp("dead"), inline_config("dead", [layer], 6))


@pytest.fixture(scope="module")
def sigmoid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten dense + sigmoid layers of 8 units: each sigmoid multiplies δ by g′ ≤ ¼."""
    layers = [{"type": "dense", "name": f"d{i}", "units": 8, "activation": "sigmoid"} for i in range(10)]
    return train_run(tmp_path_factory.mktemp("sigmoid"), inline_config("deep", layers, 8, epochs=1))


@pytest.fixture(scope="module")
def saturated_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sigmoid after a dense layer with every W = 3: z = 3 Σ x ≥ 3 · 4 · 0.5 = 6 > 4, saturated."""
    layer = {"type": "dense", "name": "hidden", "units": 5, "activation": "sigmoid", "init": {"W": 3.0}}
    return train_run(tmp_path_factory.mktemp("sat"), inline_config("sat", [layer], 4, epochs=1))


def mean_norm(d: np.ndarray) -> float:
    """Mean over the samples (axis 0) of the L2 norm of each sample's array, by hand."""
    return float(np.mean([math.sqrt(float(np.sum(np.asarray(s, dtype=np.float64) ** 2))) for s in d]))


def flags(h: dict) -> set[tuple[str, str]]:
    rows = [*h["flow"], *h["units"], *h["params"]]
    found = {(r["name"], r["flag"]) for r in rows if r["flag"]}
    if h["total"]["flag"]:
        found.add(("total", h["total"]["flag"]))
    return found


# ---- the three networks --------------------------------------------------------------------------


def test_dead_relus_are_flagged(dead_run: Path) -> None:
    a = read_h5(ck_path(dead_run, 2), "activations/hidden.relu")
    assert a.shape == (6, 8) and not a.any()  # the construction: every unit zero for every probe sample
    data = ins.health_data(dead_run)
    units = {r["name"]: r for r in data["health"]["units"]}
    assert units["hidden.relu"]["fraction"] == 1.0 and units["hidden.relu"]["flag"] == "dead"
    texts = [v["text"] for v in data["verdicts"]]
    assert "hidden.relu: 100% of units dead (zero for all 6 probe samples) since epoch 0" in texts
    # below a dead relu nothing flows back: ‖δ‖ of hidden is 0, so 0 × out's, and the total too
    assert ("hidden", "vanishing") in flags(data["health"]) and ("total", "vanishing") in flags(
        data["health"]
    )


def test_a_deep_sigmoid_stack_is_flagged_as_vanishing(sigmoid_run: Path) -> None:
    path = ck_path(sigmoid_run, 1)
    first, last = mean_norm(read_h5(path, "deltas/d0")), mean_norm(read_h5(path, "deltas/out"))
    assert first / last < 1e-4  # ten factors g′ ≤ ¼: the construction vanishes
    h = ins.health_data(sigmoid_run)
    assert h["health"]["total"]["ratio"] == pytest.approx(first / last, rel=1e-12)
    assert h["health"]["total"]["flag"] == "vanishing"
    text = next(v["text"] for v in h["verdicts"] if v["subject"] == "total")
    assert text.startswith("δ from output to input: ‖δ‖ of d0 is ") and "(vanishing: below 0.0001)" in text


def test_the_default_run_after_training_flags_nothing(default_run: Path) -> None:
    data = ins.health_data(default_run)
    assert data["checkpoint"]["epoch"] == 15
    assert data["verdicts"] == [] and flags(data["health"]) == set()
    assert ins.health_data(default_run, "all")["verdicts"] == []


def test_saturated_sigmoids_are_flagged(saturated_run: Path) -> None:
    path = ck_path(saturated_run, 1)
    z, a = read_h5(path, "activations/hidden"), read_h5(path, "activations/hidden.sigmoid")
    by_hand = float(np.mean((np.abs(z) > 4) | (a < 1e-3) | (a > 1 - 1e-3)))
    assert by_hand == 1.0
    h = ins.health_data(saturated_run)["health"]
    unit = next(r for r in h["units"] if r["name"] == "hidden.sigmoid")
    assert (unit["kind"], unit["fraction"], unit["flag"]) == ("saturated", by_hand, "saturated")


# ---- every figure by hand --------------------------------------------------------------------------------


def test_figures_equal_the_h5_by_hand(digits_run: Path) -> None:
    path = ck_path(digits_run, 2)
    names = ["conv1", "conv1.relu", "pool2", "conv3", "conv3.relu", "pool4", "flatten5", "dense6"]
    norms = [mean_norm(read_h5(path, f"deltas/{n}")) for n in names]
    h = checkpoint_health(ins.load_checkpoint(digits_run))
    assert [r["name"] for r in h["flow"]] == names
    for i, row in enumerate(h["flow"]):
        assert row["delta_norm"] == pytest.approx(norms[i], rel=1e-12)
        if i + 1 < len(names):
            assert row["ratio"] == pytest.approx(norms[i] / norms[i + 1], rel=1e-12)
    assert h["total"]["ratio"] == pytest.approx(norms[0] / norms[-1], rel=1e-12)
    for row in h["units"]:  # a unit of a conv relu is a channel: dead when zero everywhere, every sample
        a = read_h5(path, f"activations/{row['name']}")
        dead = [not a[:, c].any() for c in range(a.shape[1])]
        assert row["fraction"] == sum(dead) / len(dead) and row["units"] == a.shape[1]
    lr = 0.05  # the digits config's train.lr, no schedule
    assert h["lr"] == lr
    for row in h["params"]:
        w = read_h5(path, f"weights/{row['layer']}/{row['param']}").astype(np.float64)
        g = read_h5(path, f"grads/{row['layer']}/{row['param']}").astype(np.float64)
        ratio = math.sqrt(float((g**2).sum())) / math.sqrt(float((w**2).sum()))
        assert row["ratio"] == pytest.approx(ratio, rel=1e-6)
        assert row["update_ratio"] == pytest.approx(lr * ratio, rel=1e-6)
        assert row["judged"] == (w.ndim >= 2)


def test_thresholds_are_settable_and_verdicts_say_since_when(digits_run: Path) -> None:
    a = read_h5(ck_path(digits_run, 2), "activations/conv3.relu")
    dead = float(np.mean([not a[:, c].any() for c in range(a.shape[1])]))
    assert 0 < dead < 1  # the premise: some conv3 filters are dead for all 4 probe samples
    below, above = parse_thresholds([f"dead={dead / 2}"]), parse_thresholds([f"dead={(1 + dead) / 2}"])
    flagged = ins.health_data(digits_run, thresholds=below)["verdicts"]
    assert any(v["subject"] == "conv3.relu" and v["kind"] == "dead" for v in flagged)
    assert not any(v["kind"] == "dead" for v in ins.health_data(digits_run, thresholds=above)["verdicts"])
    # since when: the first epoch of the unbroken run of flagged checkpoints up to the shown one
    history = run_health(ins.load_all(digits_run), below)
    per_ck = [
        any(r["name"] == "conv3.relu" and r["flag"] for r in h["units"]) for h in history["checkpoints"]
    ]
    since = history["checkpoints"][max(i for i in range(len(per_ck)) if all(per_ck[i:]))]["epoch"]
    verdict = next(v for v in history["verdicts"] if v["subject"] == "conv3.relu")
    assert verdict["since"] == since


def test_parse_thresholds_names_the_problem() -> None:
    t = parse_thresholds(["dead=0.3, update_low=1e-6", "tanh_z=1.5"])
    assert (t.dead, t.update_low, t.tanh_z, t.vanish_ratio) == (0.3, 1e-6, 1.5, Thresholds().vanish_ratio)
    for items, message in (
        (["ded=0.3"], "--threshold: no threshold 'ded' (did you mean 'dead'?); they are: vanish_ratio"),
        (["dead"], "--threshold: takes KEY=VALUE, got 'dead'"),
        (["dead=lots"], "--threshold: dead needs a number, got 'lots'"),
        (["dead=-1"], "--threshold: dead must be a finite number ≥ 0, got '-1'"),
    ):
        with pytest.raises(UserError) as info:
            parse_thresholds(items)
        assert str(info.value).startswith(message)
