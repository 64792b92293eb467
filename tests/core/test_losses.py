"""Losses: per-sample values from the SPEC §2 formulas and per-sample deltas by finite differences.

``backward()`` must be ``∂L_x/∂out`` for each sample's own loss ``L_x`` (not divided by the
batch size), for class-index, one-hot and soft targets.
"""

from __future__ import annotations

import numpy as np
import pytest

from cnnbp.core.losses import LOSSES, MSE, Loss, SoftmaxCrossEntropy
from tests.fd import assert_fd_close, fd_gradient


def make_targets(kind: str, loss_name: str, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Class indices, one-hot rows, or soft targets (probability rows; any reals for MSE)."""
    idx = rng.integers(0, k, size=n)
    if kind == "index":
        return idx
    if kind == "onehot":
        return np.eye(k)[idx]
    if kind == "soft" and loss_name == "mse":
        return rng.standard_normal((n, k))
    if kind == "soft":
        w = rng.uniform(0.05, 1.0, size=(n, k))
        return w / w.sum(axis=1, keepdims=True)
    assert kind == "unnormalised" and loss_name == "softmax_cross_entropy"
    return rng.uniform(0.0, 1.5, size=(n, k))  # rows do not sum to 1: L = −Σ y ln softmax still


def dense_targets(target: np.ndarray, k: int) -> np.ndarray:
    """Target rows as float64 vectors (indices become one-hot), built here without the engine."""
    target = np.asarray(target)
    if target.ndim == 1:
        out = np.zeros((target.shape[0], k))
        for i, c in enumerate(target):
            out[i, int(c)] = 1.0
        return out
    return target.astype(np.float64)


def expected_losses(name: str, out: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SPEC §2 per-sample losses written with plain loops over samples and classes."""
    res = np.zeros(out.shape[0])
    for i in range(out.shape[0]):
        if name == "mse":
            res[i] = 0.5 * sum((y[i, j] - out[i, j]) ** 2 for j in range(out.shape[1]))
        else:
            z = sum(np.exp(out[i, j]) for j in range(out.shape[1]))
            res[i] = -sum(y[i, j] * np.log(np.exp(out[i, j]) / z) for j in range(out.shape[1]))
    return res


CASES = [
    ("mse", "index"),
    ("mse", "onehot"),
    ("mse", "soft"),
    ("softmax_cross_entropy", "index"),
    ("softmax_cross_entropy", "onehot"),
    ("softmax_cross_entropy", "soft"),
    ("softmax_cross_entropy", "unnormalised"),
]


@pytest.mark.parametrize(("n", "k"), [(1, 3), (4, 5), (3, 2)])
@pytest.mark.parametrize(("name", "target_kind"), CASES)
def test_loss_delta_fd(name: str, target_kind: str, n: int, k: int, rng: np.random.Generator) -> None:
    """Each sample's FD ∂L_x/∂out equals row x of backward(), and is zero on other rows."""
    loss: Loss = LOSSES[name]()
    out = 2.0 * rng.standard_normal((n, k))
    target = make_targets(target_kind, name, n, k, rng)
    values = loss.forward(out, target)
    assert values.shape == (n,)
    np.testing.assert_allclose(values, expected_losses(name, out, dense_targets(target, k)), rtol=1e-13)
    delta = np.array(loss.backward(), copy=True)
    assert delta.shape == out.shape

    for x in range(n):

        def sample_loss(x: int = x) -> float:
            return float(loss.forward(out, target)[x])

        numeric = fd_gradient(sample_loss, out)
        expected = np.zeros_like(delta)
        expected[x] = delta[x]
        assert_fd_close(f"loss:{name}", expected, numeric)


def test_mse_delta_formula(rng: np.random.Generator) -> None:
    """MSE delta is a − y, undivided by the batch size."""
    out, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    loss = MSE()
    loss.forward(out, y)
    np.testing.assert_array_equal(loss.backward(), out - y)


def test_softmax_ce_delta_formula(rng: np.random.Generator) -> None:
    """Softmax CE delta is softmax(s) − y for one-hot and index targets alike."""
    out = rng.standard_normal((4, 6))
    idx = np.array([0, 5, 2, 2])
    y = np.eye(6)[idx]
    p = np.exp(out) / np.exp(out).sum(axis=1, keepdims=True)
    loss = SoftmaxCrossEntropy()
    loss.forward(out, idx)
    np.testing.assert_allclose(loss.backward(), p - y, rtol=0, atol=1e-15)
    loss.forward(out, y)
    np.testing.assert_allclose(loss.backward(), p - y, rtol=0, atol=1e-15)


def test_softmax_ce_is_stable_for_large_logits() -> None:
    """Logits of ±1000 give finite losses and deltas (the row maximum is subtracted)."""
    out = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -999.0, -1000.0]])
    loss = SoftmaxCrossEntropy()
    values = loss.forward(out, np.array([0, 2]))
    delta = loss.backward()
    assert np.isfinite(values).all() and np.isfinite(delta).all()
    assert values[0] == pytest.approx(0.0, abs=1e-300)
    # row 2: softmax of (−1, 0, −1) after the shift; L = −ln p_2
    z = 2 * np.exp(-1.0) + 1.0
    assert values[1] == pytest.approx(-np.log(np.exp(-1.0) / z), rel=1e-14)
    np.testing.assert_allclose(delta[1], [np.exp(-1.0) / z, 1.0 / z, np.exp(-1.0) / z - 1.0], rtol=1e-14)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_backward_before_forward(name: str) -> None:
    """A loss's backward() before forward() raises RuntimeError too (not an AttributeError)."""
    with pytest.raises(RuntimeError):
        LOSSES[name]().backward()
