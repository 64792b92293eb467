"""The logistic sigmoid as its own layer: a = g(z), ∂L/∂z = ∂L/∂a · g'(z)."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers.base import Layer, times
from cnnbp.core.registry import register_layer


@register_layer("sigmoid")
class Sigmoid(Layer):
    """g(z) = 1 / (1 + e^{−z}),  g' = g (1 − g)."""

    elementwise = True
    onnx_op = "Sigmoid"
    torch_op = "Sigmoid"

    def forward(self, x: np.ndarray) -> np.ndarray:
        if x.dtype.kind not in "fc":
            x = x.astype(np.float64)
        y = np.negative(x)  # one new array (x's dtype and memory layout), then in place
        with np.errstate(over="ignore"):  # e^{−z} → inf gives the right limit 0
            np.exp(y, out=y)
        y += 1.0
        np.reciprocal(y, out=y)
        self._x = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._saved()
        dx = 1.0 - y
        dx *= y
        return times(dx, dy)
