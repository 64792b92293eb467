"""The rectifier as its own layer: a = max(z, 0), with relu'(0) = 0 at the kink."""

from __future__ import annotations

import numpy as np

from cnnbp.core.layers.base import Layer
from cnnbp.core.registry import register_layer


@register_layer("relu")
class ReLU(Layer):
    """g(z) = max(z, 0),  g' = 1 for z > 0 else 0 (0 taken at the kink z = 0)."""

    analytic = False
    elementwise = True
    init_before = "he_normal"
    onnx_op = "Relu"
    torch_op = "ReLU"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        self._mask = x > 0
        return np.maximum(x, 0, dtype=x.dtype)  # a NaN input stays NaN

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """``dy · [x > 0]``; a non-finite ``dy`` at a dead input gives NaN there (finite dy: 0).

        Arithmetic rather than ``np.where``: a data-dependent branch per element is ~10× slower.
        """
        self._saved()
        return np.multiply(dy, self._mask, dtype=dy.dtype)

    def kink_signature(self) -> np.ndarray:
        """Which inputs are positive: a change between two points means a kink."""
        return self._mask

    def frozen_forward(self, x: np.ndarray, signature: np.ndarray) -> np.ndarray:
        """``x · m`` for the reference mask m = [x_ref > 0]: the piece the signature selects."""
        return x * signature
