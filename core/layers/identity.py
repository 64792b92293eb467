"""The identity as its own layer (a = z): a named point in the network whose δ is recorded."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers.base import Layer
from cnnbp.core.registry import register_layer


@register_layer("identity")
class Identity(Layer):
    """g(z) = z."""

    elementwise = True
    onnx_op = "Identity"
    torch_op = "Identity"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._saved()
        return dy
