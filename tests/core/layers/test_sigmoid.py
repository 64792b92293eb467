"""Sigmoid (``core/layers/sigmoid.py``): g = 1 / (1 + e^{−z}), g' = g (1 − g)."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers import Sigmoid
from tests.core.conftest import ElementwiseLayerTests


class TestSigmoid(ElementwiseLayerTests):
    make = Sigmoid
    label = "sigmoid"


def test_saturates_without_overflow_and_casts_integers() -> None:
    """e^{−z} → inf at z = −1000 gives exactly 0 with no warning; integer inputs become float64."""
    layer = Sigmoid()
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        y = layer.forward(np.array([[-1000.0, 0.0, 1000.0]]))
    np.testing.assert_array_equal(y, [[0.0, 0.5, 1.0]])
    np.testing.assert_array_equal(layer.backward(np.array([[2.0, 2.0, 2.0]])), [[0.0, 0.5, 0.0]])
    assert layer.forward(np.array([[0, 1]])).dtype == np.float64


def test_analytic_and_exported_as_sigmoid() -> None:
    """Holomorphic (complex step applies); ONNX and torch have it as ``Sigmoid``."""
    assert Sigmoid.analytic and Sigmoid.init_before is None
    assert (Sigmoid.onnx_op, Sigmoid.torch_op) == ("Sigmoid", "Sigmoid")
