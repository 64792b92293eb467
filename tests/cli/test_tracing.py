"""``cnnbp.trace``: the derivation of one sample for a config, a run or a checkpoint.

The seeds' worked examples are checked against the notes: seed 000 §3.1.1's term-by-term sums for
∂E/∂F_ij, seed 004 §2's for ∂E/∂x_ij and §3–4's max pool (3×3 map, 2×2 windows, stride 1) that sends
δ back through its mask.  The expected numbers come from the notes' formulas evaluated here on the
configs' own numbers (tests/cli/conftest.py writes them out as the seeds do), never from the engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import cnnbp
from cnnbp.checking import resolve_network
from cnnbp.config import build_loss
from cnnbp.data import load_dataset
from cnnbp.errors import UserError
from tests.cli.conftest import (
    SEED_B,
    SEED_F,
    SEED_LR,
    SEED_X,
    SEED_Y,
    seed_expected,
    seed_filter_grad,
    seed_forward,
    write_config,
)
from tests.core.conftest import check_exact, engine_numbers

EXAMPLES = Path(__file__).resolve().parents[2] / "configs" / "examples"


def seeds_config(name: str = "seeds") -> dict:
    """Seed 000 §3.1.1 / seed 004: X 3×3, F 2×2, an untied bias b_ij, MSE on the four outputs."""
    conv = {"type": "conv", "name": "conv1", "filters": 1, "kernel": 2, "bias": "untied",
            "init": {"W": [[SEED_F]], "b": [SEED_B]}}  # fmt: skip
    return {
        "name": name, "seed": 0, "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0, "x": [SEED_X], "y": [SEED_Y]},
        "model": {"input_shape": [1, 3, 3], "layers": [conv, {"type": "flatten"}]},
        "loss": "mse", "train": {"epochs": 1, "batch_size": 1, "lr": SEED_LR}, "record": {"probe": 1},
    }  # fmt: skip


def steps_of(report: cnnbp.TraceReport, layer: str, tensor: str) -> dict[tuple[int, ...], object]:
    return {s.index: s for s in report.steps if (s.layer, s.tensor) == (layer, tensor)}


def terms_match(step: object, expected: list[list[float]]) -> None:
    assert len(step.terms) == len(expected), step.formula
    for got, want in zip(step.terms, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-15, abs=0), step.formula


# ---- seed 000 §3.1.1 and seed 004 §1–2: the 3×3 input and the 2×2 kernel --------------------------------


def test_the_seeds_conv_example_term_by_term() -> None:
    report = cnnbp.trace(seeds_config())
    X, F, b = np.array(SEED_X), np.array(SEED_F), np.array(SEED_B)
    O = seed_forward(F, b, X)
    d = O - np.array(SEED_Y).reshape(2, 2)  # MSE, no activation: δ = O − y
    # forward, seed 004 §1: y_ij = w11 x_(i)(j) + w12 x_(i)(j+1) + w21 x_(i+1)(j) + w22 x_(i+1)(j+1) + b_ij
    z = steps_of(report, "conv1", "z")
    for i in range(2):
        for j in range(2):
            step = z[(0, i, j)]
            r, c = "₁₂₃"[i : i + 2], "₁₂₃"[j : j + 2]  # rows i, i+1 and columns j, j+1 of X (subscripts)
            assert step.formula == (
                f"z{r[0]}{c[0]} = F₁₁X{r[0]}{c[0]} + F₁₂X{r[0]}{c[1]} + F₂₁X{r[1]}{c[0]} + F₂₂X{r[1]}{c[1]}"
                f" + b{r[0]}{c[0]}"
            )
            terms_match(step, [[F[0, 0], X[i, j]], [F[0, 1], X[i, j + 1]], [F[1, 0], X[i + 1, j]],
                               [F[1, 1], X[i + 1, j + 1]], [b[i, j]]])  # fmt: skip
            assert step.value == pytest.approx(O[i, j], rel=1e-15)
    # seed 000 §3.1.1: ∂E/∂F11 = ∂E/∂O11 X11 + ∂E/∂O12 X12 + ∂E/∂O21 X21 + ∂E/∂O22 X22, and so on
    gF = steps_of(report, "conv1", "grad:W")
    expected_grad = seed_filter_grad(d, X)
    assert gF[(0, 0, 0, 0)].formula == "∂E/∂F₁₁ = δ₁₁X₁₁ + δ₁₂X₁₂ + δ₂₁X₂₁ + δ₂₂X₂₂"
    assert gF[(0, 0, 1, 1)].formula == "∂E/∂F₂₂ = δ₁₁X₂₂ + δ₁₂X₂₃ + δ₂₁X₃₂ + δ₂₂X₃₃"
    for a in range(2):
        for c in range(2):
            step = gF[(0, 0, a, c)]
            terms_match(step, [[d[0, 0], X[a, c]], [d[0, 1], X[a, c + 1]], [d[1, 0], X[a + 1, c]],
                               [d[1, 1], X[a + 1, c + 1]]])  # fmt: skip
            assert step.value == pytest.approx(expected_grad[a, c], rel=1e-14)
    assert gF[(0, 0, 0, 0)].value == pytest.approx(6.025, rel=1e-14)  # the README's hand computation
    # seed 004 §2: ∂L/∂b_ij = ∂L/∂y_ij for the untied bias
    for (_, i, j), step in steps_of(report, "conv1", "grad:b").items():
        assert step.formula == f"∂E/∂b{'₁₂'[i]}{'₁₂'[j]} = δ{'₁₂'[i]}{'₁₂'[j]}"
        assert step.value == pytest.approx(d[i, j], rel=1e-15)


# seed 004 §2, ∂L/∂x_ij written out: (δ index, kernel index) pairs in the seed's order, 1-based
SEED_004_DX = {
    (1, 1): [((1, 1), (1, 1))],
    (1, 2): [((1, 1), (1, 2)), ((1, 2), (1, 1))],
    (1, 3): [((1, 2), (1, 2))],
    (2, 1): [((1, 1), (2, 1)), ((2, 1), (1, 1))],
    (2, 2): [((1, 1), (2, 2)), ((1, 2), (2, 1)), ((2, 1), (1, 2)), ((2, 2), (1, 1))],
    (2, 3): [((1, 2), (2, 2)), ((2, 2), (1, 2))],
    (3, 1): [((2, 1), (2, 1))],
    (3, 2): [((2, 1), (2, 2)), ((2, 2), (2, 1))],
    (3, 3): [((2, 2), (2, 2))],
}


def test_the_seeds_input_gradient_term_by_term() -> None:
    report = cnnbp.trace(seeds_config())
    X, F, b = np.array(SEED_X), np.array(SEED_F), np.array(SEED_B)
    d = seed_forward(F, b, X) - np.array(SEED_Y).reshape(2, 2)
    dx = steps_of(report, "input", "input_grad")
    assert dx[(0, 1, 1)].formula == "∂E/∂X₂₂ = δ₁₁F₂₂ + δ₁₂F₂₁ + δ₂₁F₁₂ + δ₂₂F₁₁"
    for (r, q), pairs in SEED_004_DX.items():
        step = dx[(0, r - 1, q - 1)]
        expected = [[d[i - 1, j - 1], F[m - 1, n - 1]] for (i, j), (m, n) in pairs]
        terms_match(step, expected)
        assert step.value == pytest.approx(sum(a * w for a, w in expected), rel=1e-14)


def test_a_checkpoint_is_traced_at_its_weights_on_its_probe_sample(seeds_run: Path) -> None:
    after = seed_expected()[1]  # F and b after one step of lr 0.1, and δ, ∂E/∂F there
    report = cnnbp.trace(seeds_run, checkpoint=1)
    assert report.kind == "checkpoint" and report.epoch == 1 and report.train_index == 0
    assert "probe sample 0 of 1" in report.sample_text
    for (_, i, j), step in steps_of(report, "conv1", "delta").items():
        assert step.value == pytest.approx(after["delta"][i, j], rel=1e-13)
    for (_, _, a, c), step in steps_of(report, "conv1", "grad:W").items():
        assert step.value == pytest.approx(after["grad_F"][a, c], rel=1e-13)
    for (_, _, a, c), step in steps_of(report, "conv1", "update:W").items():
        assert step.value == pytest.approx(after["F"][a, c] - SEED_LR * after["grad_F"][a, c], rel=1e-13)
    # and the initial state, checkpoint 0, is the config's own
    first = cnnbp.trace(seeds_run, checkpoint=0)
    assert steps_of(first, "conv1", "grad:W")[(0, 0, 0, 0)].value == pytest.approx(6.025, rel=1e-14)


# ---- seed 004 §3–4: max pooling with 2×2 windows at stride 1 over a 3×3 map -----------------------------

POOL_X = [[0.1, 0.5, 0.2], [0.4, 0.3, 0.6], [0.0, 0.8, 0.7]]
POOL_Y = [0.0, 1.0, 0.0, 1.0]


def pool_config() -> dict:
    return {
        "name": "seed-pool", "seed": 0, "dtype": "float64",
        "data": {"source": "inline", "val_fraction": 0, "x": [[POOL_X]], "y": [POOL_Y]},
        "model": {"input_shape": [1, 3, 3],
                  "layers": [{"type": "pool", "mode": "max", "size": 2, "stride": 1}, {"type": "flatten"}]},
        "loss": "mse", "train": {"epochs": 1, "batch_size": 1, "lr": 0.1}, "record": {"probe": 1},
    }  # fmt: skip


def test_the_seeds_max_pool_sends_delta_back_through_the_mask() -> None:
    report = cnnbp.trace(pool_config())
    x = np.array(POOL_X)
    # the windows X'_1 … X'_4 of seed 004 §3 and their maxima: y = max(X'_k)
    windows = {
        (0, 0): [(0, 0), (0, 1), (1, 0), (1, 1)], (0, 1): [(0, 1), (0, 2), (1, 1), (1, 2)],
        (1, 0): [(1, 0), (1, 1), (2, 0), (2, 1)], (1, 1): [(1, 1), (1, 2), (2, 1), (2, 2)],
    }  # fmt: skip
    top = {k: max(w, key=lambda p: x[p]) for k, w in windows.items()}  # no ties in POOL_X
    y = {k: x[top[k]] for k in windows}
    z = steps_of(report, "pool1", "z")
    for k, step in z.items():
        assert step.value == y[k[1:]]
        assert step.formula.startswith("z") and "max(X" in step.formula
    d = {k: y[k] - POOL_Y[2 * k[0] + k[1]] for k in windows}  # MSE: δ = y − target
    # seed 004 §4: ∂L/∂X = Σ_k ∂L/∂y_k · M_k, M_k 1 at the maximum of window k, else 0
    dx = steps_of(report, "input", "input_grad")
    for r in range(3):
        for q in range(3):
            covering = [k for k, w in windows.items() if (r, q) in w]
            expected = [[d[k], 1.0 if top[k] == (r, q) else 0.0] for k in covering]
            terms_match(dx[(0, r, q)], expected)
            assert dx[(0, r, q)].value == pytest.approx(sum(a * m for a, m in expected), rel=1e-15)
    assert dx[(0, 2, 1)].formula == "∂E/∂X₃₂ = δ₂₁M₂₁ + δ₂₂M₂₂"  # x32 is the maximum of X'_3 and X'_4


# ---- every example config: exact and the engine's -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_every_example_config_traces_exactly(name: str) -> None:
    path = EXAMPLES / f"{name}.yaml"
    sample = 0 if name == "dense" else 1  # the 2-2-2 example has one sample
    report = cnnbp.trace(path, sample=sample)
    found = resolve_network(path, None, ())
    cfg = found.cfg
    out = int(np.prod(found.net.output_shape))
    data = load_dataset(cfg.data, cfg.model.input_shape, out, np.dtype(cfg.dtype), cfg.seed, cfg.base_dir)
    ref = engine_numbers(found.net, build_loss(cfg), data.x_train[sample], data.y_train[sample], cfg.train.lr)
    check_exact(report.steps, ref)


def test_a_float32_config_is_traced_in_float64() -> None:
    report = cnnbp.trace(None, sample=3, layers=["dense6"])  # the built-in digits config is float32
    assert report.cast_from == "float32"
    notes = [s for s in report.to_dict()["notes"]]
    assert any("float64 (the network is float32)" in n for n in notes)
    assert any("momentum 0.9" in n for n in notes)  # the run's own step differs from the plain one
    # dense6's own tensors and what its rule gives: the δ of the flatten layer below it
    assert {(s.layer, s.tensor) for s in report.steps} == {
        ("dense6", "z"), ("dense6", "delta"), ("dense6", "grad:W"), ("dense6", "grad:b"),
        ("flatten5", "delta"), ("dense6", "update:W"), ("dense6", "update:b"),
        ("loss", "softmax"), ("loss", "loss"),
    }  # fmt: skip


def test_the_json_document_is_strict_json_with_every_step() -> None:
    report = cnnbp.trace(EXAMPLES / "dense.yaml")
    doc = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert len(doc["steps"]) == len(report.steps)
    for step in doc["steps"]:
        assert set(step) >= {"layer", "tensor", "index", "formula", "terms", "value"}
        assert math.isclose(sum(math.prod(t) for t in step["terms"]), step["value"], rel_tol=1e-12)
    assert doc["notes_naming"] and doc["loss"]["name"] == "mse"


def test_batchnorm_and_dropout_networks_say_how_they_are_traced() -> None:
    report = cnnbp.trace(EXAMPLES / "regularisers.yaml")
    assert any("running statistics" in n for n in report.to_dict()["notes"])


# ---- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample": 1}, "--sample 1: the training split has 1 sample (0–0)"),
        ({"at": ["conv1[1,3,1]"]}, "--at conv1[1,3,1]: conv1's output has shape 1×2×2; give 3 indices"),
        ({"at": ["conv1[0,1,1]"]}, "counted from 1"),
        ({"at": ["conv1"]}, "--at conv1: expected LAYER[i,j,...]"),
        ({"at": ["conv9[1]"]}, "--at conv9[1]: no layer or parameter 'conv9'; the layers are input, conv1"),
        ({"at": ["conv1.W[1,1,1]"]}, "conv1.W has shape 1×1×2×2"),
        ({"layers": ["nope"]}, "--layer nope: no such layer"),
        ({"checkpoint": 1}, "--checkpoint: selects a checkpoint of a run folder"),
    ],
)
def test_bad_options_are_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=None) as e:
        cnnbp.trace(seeds_config(), **kwargs)
    assert message in str(e.value)


def test_a_probe_sample_out_of_range_is_an_error(seeds_run: Path) -> None:
    with pytest.raises(UserError, match=r"--sample 3: the checkpoint has 1 probe sample \(0–0\)"):
        cnnbp.trace(seeds_run, sample=3)


def test_at_elements_of_a_parameter_and_of_the_input(tmp_path: Path) -> None:
    path = write_config(tmp_path, seeds_config())
    report = cnnbp.trace(path, at=["conv1.W[1,1,2,1]", "input[1,3,3]", "conv1[1,2,2]"])
    assert [s.index for s in report.steps if s.tensor == "grad:W"] == [(0, 0, 1, 0)]
    assert [s.index for s in report.steps if s.tensor == "input_grad"] == [(0, 2, 2)]
    assert [s.index for s in report.steps if s.tensor == "z" and s.layer == "conv1"] == [(0, 1, 1)]
