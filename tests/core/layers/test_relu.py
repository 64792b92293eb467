"""ReLU (``core/layers/relu.py``): g = max(z, 0), g' = [z > 0] (0 at the kink)."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers import ReLU
from tests.core.conftest import ElementwiseLayerTests


class TestReLU(ElementwiseLayerTests):
    make = ReLU
    label = "relu"


def test_kink_nan_and_signature() -> None:
    """relu'(0) = 0; a NaN input stays NaN; a non-finite dy at a dead input gives NaN, a finite one 0;
    the kink signature is the mask of positive inputs."""
    layer = ReLU()
    x = np.array([[-1.0, 0.0, 2.0, np.nan]])
    y = layer.forward(x)
    np.testing.assert_array_equal(y[0, :3], [0.0, 0.0, 2.0])
    assert np.isnan(y[0, 3])
    np.testing.assert_array_equal(layer.backward(np.array([[5.0, 5.0, 5.0, 5.0]])), [[0.0, 0.0, 5.0, 0.0]])
    with np.errstate(invalid="ignore"):  # inf · 0
        dx = layer.backward(np.array([[np.inf, 1.0, 1.0, 1.0]]))
    assert np.isnan(dx[0, 0]) and dx[0, 1] == 0.0
    np.testing.assert_array_equal(layer.kink_signature(), [[False, False, True, False]])


def test_not_analytic_and_he_normal_before_it() -> None:
    """A kink, so not analytic; a parametric layer followed by a relu defaults to He-normal weights."""
    assert not ReLU.analytic and ReLU.init_before == "he_normal"
    assert (ReLU.onnx_op, ReLU.torch_op) == ("Relu", "ReLU")


def test_derivative_at_zero_is_the_left_one_sided_derivative() -> None:
    """relu'(0) = 0, asserted against the one-sided difference quotients of max(z, 0) at 0 (written here):
    the left one is 0, the right one 1, and the engine returns the left one — for a dy of any sign, in a
    batch, and whatever the dtype."""
    h = 1e-3
    left = (max(0.0, 0.0) - max(-h, 0.0)) / h
    right = (max(h, 0.0) - max(0.0, 0.0)) / h
    assert (left, right) == (0.0, 1.0)
    for dtype in (np.float64, np.float32):
        layer = ReLU()
        x = np.array([[0.0, -0.0, 1e-30, -1e-30], [0.0, 2.0, 0.0, -2.0]], dtype=dtype)
        layer.forward(x)
        dy = np.array([[3.0, -3.0, 5.0, 5.0], [-7.0, 1.0, 0.5, 1.0]], dtype=dtype)
        dx = layer.backward(dy)
        expected = np.where(x > 0, dy, left * dy)  # the left derivative at exactly 0
        np.testing.assert_array_equal(dx, expected)
        assert dx[0, 0] == 0.0 and dx[1, 0] == 0.0 and dx[1, 2] == 0.0
