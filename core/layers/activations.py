"""Element-wise activations as their own layers: a = g(z), ∂L/∂z = ∂L/∂a · g'(z)."""

from __future__ import annotations

import numpy as np
from cnnbp.core.layers.base import Layer


class Sigmoid(Layer):
    """g(z) = 1 / (1 + e^{−z}),  g' = g (1 − g)."""

    kind = "sigmoid"

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
        return _times(dx, dy)


class Tanh(Layer):
    """g(z) = tanh z,  g' = 1 − g²."""

    kind = "tanh"

    def forward(self, x: np.ndarray) -> np.ndarray:
        y = np.tanh(x)
        self._x = y
        return y

    def backward(self, dy: np.ndarray) -> np.ndarray:
        y = self._saved()
        dx = y * y
        np.subtract(1.0, dx, out=dx)
        return _times(dx, dy)


class ReLU(Layer):
    """g(z) = max(z, 0),  g' = 1 for z > 0 else 0 (0 taken at the kink z = 0)."""

    kind = "relu"
    analytic = False

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


class Identity(Layer):
    """g(z) = z."""

    kind = "identity"

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._x = x
        return x

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self._saved()
        return dy


def _times(g: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """``g · dy`` into ``g`` (a new array of the layer's) when that keeps the result's dtype."""
    if np.result_type(g, dy) == g.dtype:
        g *= dy
        return g
    return g * dy


ACTIVATIONS: dict[str, type[Layer]] = {
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "relu": ReLU,
    "identity": Identity,
}
