"""The hyperbolic tangent as its own layer: a = tanh z, ∂L/∂z = ∂L/∂a · (1 − a²)."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers.base import Layer, times
from cnnbp.core.registry import register_layer


@register_layer("tanh")
class Tanh(Layer):
    """g(z) = tanh z,  g' = 1 − g²."""

    elementwise = True
    onnx_op = "Tanh"
    torch_op = "Tanh"

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = np.tanh(x)
        self._x = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._saved()
        dx = y * y
        np.subtract(1.0, dx, out=dx)
        return times(dx, dy)
