"""Tanh (``core/layers/tanh.py``): g = tanh z, g' = 1 − g²."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers import Tanh
from tests.core.conftest import ElementwiseLayerTests


class TestTanh(ElementwiseLayerTests):
    make = Tanh
    label = "tanh"


def test_derivative_is_one_minus_the_square_of_the_output(rng: np.random.Generator) -> None:
    """backward(dy) is dy · (1 − a²) with a the output, to the last bit, and dy is left alone."""
    layer = Tanh()
    x, dy = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    dy_copy = dy.copy()
    a = layer.forward(x)
    np.testing.assert_array_equal(a, np.tanh(x))
    np.testing.assert_array_equal(layer.backward(dy), (1.0 - a * a) * dy)
    np.testing.assert_array_equal(dy, dy_copy)
    assert Tanh.analytic and (Tanh.onnx_op, Tanh.torch_op, Tanh.init_before) == ("Tanh", "Tanh", None)
