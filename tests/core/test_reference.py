"""The fast layers against the loop references of ``reference.py``, to 1e-12 in float64.

Same grids as the finite-difference tests.  The measure is ``max |fast − ref| / max |ref|``
(the maximum absolute difference relative to the scale of the reference values).
"""

from __future__ import annotations

import numpy as np
import pytest
from cnnbp.core.layers import Conv2D, Layer, MaxPool, Pool, Subsample

from tests.core import reference as ref
from tests.core.test_layers_fd import (
    CONV_CASES,
    LP_POWERS,
    POOL_CASES,
    SUBSAMPLE_CASES,
    away_from_zero,
    build,
    conv_id,
    pool_id,
)

TOL = 1e-12


def assert_matches(fast: np.ndarray, slow: np.ndarray, what: str) -> None:
    """Max absolute difference relative to the reference's scale is ≤ 1e-12."""
    assert fast.shape == slow.shape, f"{what}: shape {fast.shape} vs reference {slow.shape}"
    scale = max(float(np.abs(slow).max()), 1e-300)
    err = float(np.abs(fast - slow).max()) / scale
    assert err <= TOL, f"{what}: max |fast − reference| / scale = {err:.3e}"


def run(layer: Layer, x: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Forward, then backward of ``d``: (y, dx, grads)."""
    y = layer.forward(x)
    dx = layer.backward(d)
    return y, dx, {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_id)
def test_conv_matches_reference(case: tuple, rng: np.random.Generator) -> None:
    """Conv forward, ∂L/∂X (full conv of dilated δ with rot180 F, cropped), ∂L/∂F, ∂L/∂b."""
    c, h, w, f, k, s, p, bias, n = case
    layer = build(Conv2D(f, k, stride=s, padding=p, bias=bias), (c, h, w), rng)
    assert isinstance(layer, Conv2D)
    x = rng.standard_normal((n, c, h, w))
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    y, dx, grads = run(layer, x, d)
    W, b = layer.params["W"], layer.params["b"]
    dW, db = np.zeros_like(W), np.zeros_like(b)
    for i in range(n):
        assert_matches(y[i], ref.conv_forward(x[i], W, b, layer.stride, layer.padding), "forward")
        rdx, rdW, rdb = ref.conv_backward(x[i], W, d[i], layer.stride, layer.padding, bias == "tied")
        assert_matches(dx[i], rdx, "dX")
        dW += rdW
        db += rdb
    assert_matches(grads["W"], dW, "dW")
    assert_matches(grads["b"], db, "db")


POOL_MODES = [("max", 2.0), ("mean", 2.0)] + [("lp", p) for p in LP_POWERS]


@pytest.mark.parametrize(("mode", "p"), POOL_MODES, ids=lambda v: str(v))
@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_pool_matches_reference(case: tuple, mode: str, p: float, rng: np.random.Generator) -> None:
    """Max (first-maximum mask), mean (δ/k²) and Lp pools: forward and ∂L/∂X."""
    c, h, w, k, s, n = case
    layer = build(Pool(mode, k, s, p=p), (c, h, w), rng)
    x = away_from_zero((n, c, h, w), rng) if mode == "lp" else rng.standard_normal((n, c, h, w))
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    y, dx, _ = run(layer, x, d)
    for i in range(n):
        assert_matches(y[i], ref.pool_forward(x[i], mode, layer.size, layer.stride, p), "forward")
        assert_matches(dx[i], ref.pool_backward(x[i], d[i], mode, layer.size, layer.stride, p), "dX")


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_max_pool_ties_match_reference(case: tuple, rng: np.random.Generator) -> None:
    """With many ties (integer inputs), the gradient goes to the first maximum in row-major order."""
    c, h, w, k, s, n = case
    layer = build(MaxPool(k, s), (c, h, w), rng)
    x = rng.integers(0, 3, size=(n, c, h, w)).astype(np.float64)
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    _, dx, _ = run(layer, x, d)
    for i in range(n):
        assert_matches(dx[i], ref.pool_backward(x[i], d[i], "max", layer.size, layer.stride), "dX")


def test_max_pool_tie_goes_to_first_in_row_major_order() -> None:
    """An all-equal 2×3 window sends its whole gradient to its top-left entry."""
    layer = MaxPool((2, 3))
    layer.build((1, 2, 3), np.random.default_rng(0), np.float64)
    layer.forward(np.full((1, 1, 2, 3), 5.0))
    dx = layer.backward(np.array([[[[7.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[7.0, 0, 0], [0, 0, 0]])
    # a tie between the second and fifth entries (row-major) goes to the second
    layer.forward(np.array([[[[1.0, 9.0, 2.0], [3.0, 9.0, 4.0]]]]))
    np.testing.assert_array_equal(layer.backward(np.array([[[[7.0]]]]))[0, 0], [[0, 7.0, 0], [0, 0, 0]])


@pytest.mark.parametrize("case", SUBSAMPLE_CASES, ids=lambda c: f"c{c[0]}_{c[1]}x{c[2]}_k{c[3]}_n{c[4]}")
def test_subsample_matches_reference(case: tuple, rng: np.random.Generator) -> None:
    """Subsample: β·down(x) + b, β·up(δ), ∂L/∂β = Σ δ∘down(x), ∂L/∂b = Σ δ."""
    c, h, w, k, n = case
    layer = build(Subsample(k), (c, h, w), rng)
    x = rng.standard_normal((n, c, h, w))
    d = rng.standard_normal((n, *layer.output_shape((c, h, w))))
    y, dx, grads = run(layer, x, d)
    beta, b = layer.params["beta"], layer.params["b"]
    dbeta, db = np.zeros(c), np.zeros(c)
    for i in range(n):
        assert_matches(y[i], ref.subsample_forward(x[i], beta, b, k), "forward")
        rdx, rdbeta, rdb = ref.subsample_backward(x[i], d[i], beta, k)
        assert_matches(dx[i], rdx, "dX")
        dbeta += rdbeta
        db += rdb
    assert_matches(grads["beta"], dbeta, "dbeta")
    assert_matches(grads["b"], db, "db")


def test_reference_full_convolution_is_the_seed_formula() -> None:
    """The reference's full convolution reproduces seed 000's term-by-term ∂E/∂X for a 2×2 δ and kernel."""
    d = np.array([[1.0, 2.0], [3.0, 4.0]])
    F = np.array([[5.0, 6.0], [7.0, 8.0]])
    (d11, d12), (d21, d22) = d
    (f11, f12), (f21, f22) = F
    expected = np.array(
        [
            [d11 * f11, d11 * f12 + d12 * f11, d12 * f12],
            [d11 * f21 + d21 * f11, d11 * f22 + d12 * f21 + d21 * f12 + d22 * f11, d12 * f22 + d22 * f12],
            [d21 * f21, d21 * f22 + d22 * f21, d22 * f22],
        ]
    )
    np.testing.assert_array_equal(ref.conv_full(d, F), expected)
